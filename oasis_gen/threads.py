"""Torch's intra-op thread count, set for a block of work and restored after it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run torch with count intra-op threads inside the block, then restore the caller's setting.

    Work made of many tiny operations (building the demo cohort, incremental sampling) runs faster on one thread
    of a small CPU: waking and joining the thread pool costs more than it saves.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

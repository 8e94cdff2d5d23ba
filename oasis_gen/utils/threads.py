"""Torch's intra-op thread count, set for a block of work and restored after it."""

from __future__ import annotations

import os
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


@contextmanager
def sampling_threads(device: str | torch.device = "cpu", max_cores: int = 4) -> Iterator[None]:
    """
    Run torch single-threaded for the block on a CPU with at most ``max_cores`` usable cores, then restore.

    The incremental sampler makes many tiny operations, for which thread hand-offs cost more than they save:
    measured on a 2-core machine it is about 10x faster with one thread.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if torch.device(device).type != "cpu" or cores > max_cores:
        yield
        return
    with torch_threads(1):
        yield

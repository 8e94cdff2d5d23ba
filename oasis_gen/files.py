"""Crash-safe file writing: everything is written to a temporary name beside its target, then renamed."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

TEMPORARY_SUFFIX = ".partial"


def is_temporary(name: str) -> bool:
    """Whether a file name is a leftover of an interrupted atomic write (safe to delete)."""
    return name.startswith(".") and name.endswith(TEMPORARY_SUFFIX)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside path; on success it replaces path, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its files are private (0600) and stay so after the rename, while outputs must be
    # readable as the umask allows. The leading dot hides it from "*.png" globs; pid and random part keep two
    # writers apart.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TEMPORARY_SUFFIX}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write text atomically; readers see the old file or the new one, never half of one."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)

"""Crash-safe file writing: everything is written to a temporary name beside its target, synced, then renamed.

The rename alone keeps a crash of the process from leaving half a file; the syncs keep a crash of the machine (a
power loss) from doing so: the file's data reach the disk before the rename, and the rename (the folder's entry)
reaches it before the write counts as done. Without them a journaling file system may commit the rename before
the data, and leave an empty file under the target's name.
"""

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


def sync_file(path: str | Path) -> None:
    """Flush a written file's data and metadata to the disk (``fsync``)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def sync_folder(path: str | Path) -> None:
    """Flush a folder's entries (a rename into it) to the disk; a no-op where folders cannot be opened (Windows)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:  # some file systems refuse fsync on a folder: nothing more can be done there
        pass
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside path; on success it is synced and replaces path (the folder synced after), on
    failure it is removed and path is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its files are private (0600) and stay so after the rename, while outputs must be
    # readable as the umask allows. The leading dot hides it from "*.png" globs; pid and random part keep two
    # writers apart.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TEMPORARY_SUFFIX}")
    try:
        yield tmp
        sync_file(tmp)
        os.replace(tmp, path)
        sync_folder(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write text atomically; readers see the old file or the new one, never half of one."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)

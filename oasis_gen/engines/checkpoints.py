"""Finding the checkpoints a training run left behind."""

from __future__ import annotations

import logging
import re
from pathlib import Path

logger = logging.getLogger(__name__)
EPOCH = re.compile(r"=(\d+)\.pt$")


def latest_checkpoint(ckpt_dir: str | Path, prefix: str = "last") -> str | None:
    """The newest resumable checkpoint (``<prefix>_*.pt`` with the highest epoch) in a folder, or None."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    candidates = [p for p in folder.glob(f"{prefix}_*.pt") if EPOCH.search(p.name)]
    if not candidates:
        return None
    return str(max(candidates, key=lambda p: int(EPOCH.search(p.name)[1])))


def announce_resume(path: str | None) -> None:
    """Say which checkpoint a run resumes from (or that it starts afresh)."""
    if path:
        match = EPOCH.search(Path(path).name)
        logger.info("resuming from %s (epoch %s)", path, match[1] if match else "?")
    else:
        logger.info("no checkpoint to resume from: training starts at epoch 1")

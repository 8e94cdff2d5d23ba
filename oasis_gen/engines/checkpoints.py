"""Finding the checkpoints a training run left behind."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ignite.engine import Engine, Events

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


class KeepLatestCheckpoint:
    """After each epoch's save, delete older resumable checkpoints (an earlier process's saver leaves its own)."""

    def __init__(self, ckpt_dir: str | Path, prefix: str = "last"):
        self.ckpt_dir = Path(ckpt_dir)
        self.prefix = prefix

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        newest = latest_checkpoint(self.ckpt_dir, self.prefix)
        if newest is None:
            return
        for path in self.ckpt_dir.glob(f"{self.prefix}_*.pt"):
            if str(path) != newest and EPOCH.search(path.name):
                path.unlink(missing_ok=True)

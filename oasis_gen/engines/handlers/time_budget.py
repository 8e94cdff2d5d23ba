"""Training that stops within a time budget, kept across resumes."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from ignite.engine import Engine, Events

from oasis_gen.engines.distributed import rank_zero_decides

logger = logging.getLogger(__name__)


class TimeBudget:
    """Stop training at the end of the last epoch that fits in a time budget (validation and checkpoint included).

    Ends on an epoch boundary, so the run finishes validated and checkpointed like any other. Under DDP rank 0's
    clock decides for every rank (attach it on every rank), so they all stop after the same epoch. The seconds
    trained (and the longest epoch) are its state, kept in resumable checkpoints (through ``RunState``): a resumed
    run trains the minutes left of the budget, not the whole budget again, and one whose budget is spent stops
    before its first epoch.
    """

    def __init__(self, minutes: float | None = None):
        self.seconds = float(minutes) * 60.0 if minutes else None
        self.started: float | None = None
        self.epoch_started = 0.0
        self.longest_epoch = 0.0
        self.trained_before = 0.0  # seconds trained by the runs this one resumes
        self.resumed = False  # loaded from a checkpoint, first epoch not started yet

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_start)
        # after the other epoch-end handlers (validation, checkpoints) so their time counts
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._check)

    def trained_seconds(self) -> float:
        """Seconds trained so far, the resumed runs' included."""
        running = time.perf_counter() - self.started if self.started is not None else 0.0
        return self.trained_before + running

    def state_dict(self) -> dict[str, float]:
        return {"trained_seconds": self.trained_seconds(), "longest_epoch": self.longest_epoch}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.trained_before = float(state.get("trained_seconds", 0.0))
        self.longest_epoch = float(state.get("longest_epoch", 0.0))
        self.resumed = True
        if self.started is not None:  # loaded at the trainer's start: the clock restarts from the saved seconds
            self.started = time.perf_counter()
        if self.seconds is not None:
            logger.info("time budget: %.1f of %.1f min trained before this resume, %.1f min left",
                        self.trained_before / 60, self.seconds / 60,
                        max(self.seconds - self.trained_before, 0.0) / 60)

    def _start(self, engine: Engine) -> None:
        self.started = time.perf_counter()

    def _over(self) -> bool:
        """Whether another epoch as long as the longest one would overrun the budget."""
        return self.seconds is not None and self.trained_seconds() + self.longest_epoch > self.seconds

    def _epoch_start(self, engine: Engine) -> None:
        self.epoch_started = time.perf_counter()
        first_after_resume, self.resumed = self.resumed, False
        if first_after_resume and self.seconds is not None and rank_zero_decides(self._over()):
            logger.info("time budget of %.1f min already reached before this resume (%.1f min trained): stopping",
                        self.seconds / 60, self.trained_before / 60)
            engine.terminate()

    def _check(self, engine: Engine) -> None:
        now = time.perf_counter()
        self.longest_epoch = max(self.longest_epoch, now - self.epoch_started)
        over = self._over() and engine.state.epoch < engine.state.max_epochs
        if rank_zero_decides(over):
            logger.info("time budget of %.1f min reached after epoch %d: stopping", self.seconds / 60,
                        engine.state.epoch)
            engine.terminate()

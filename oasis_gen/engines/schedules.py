"""Learning-rate schedules that fit a time budget as well as an epoch count."""

from __future__ import annotations

import math
import time
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class BudgetCosineLR(LRScheduler):
    """Cosine decay over whichever runs out first: the iterations of ``max_epochs`` or ``minutes`` of wall time.

    A CPU run is usually stopped by its time budget long before ``max_epochs``; a cosine over epochs would then
    stop near the top of its curve and never anneal. Here the progress at each step is the larger of the two
    fractions used, so a time-limited run ends annealed at ``eta_min`` and an epoch-limited one is the usual
    cosine. Step it every iteration (``LrScheduleHandler(epoch_level=False)``). The wall time spent is saved in
    the state dict, so a resumed run continues the curve where it stopped.

    Args:
        optimizer: the wrapped optimizer.
        total_steps: iterations in the whole run (``max_epochs * epoch_length``).
        minutes: the time budget, or ``None`` for none (then this is a cosine over ``total_steps``).
        eta_min_ratio: the final learning rate as a fraction of each group's initial one.
        warmup_steps: linear warm-up iterations from a tenth of the learning rate.
    """

    def __init__(self, optimizer: Optimizer, total_steps: int, minutes: float | None = None,
                 eta_min_ratio: float = 0.05, warmup_steps: int = 0, last_epoch: int = -1):
        self.total_steps = max(int(total_steps), 1)
        self.seconds = float(minutes) * 60.0 if minutes else None
        self.eta_min_ratio = float(eta_min_ratio)
        self.warmup_steps = max(int(warmup_steps), 0)
        self.elapsed_before = 0.0  # wall time of earlier runs of the same training (restored on resume)
        self._clock_start: float | None = None
        super().__init__(optimizer, last_epoch)

    def progress(self) -> float:
        """The fraction of the run used so far, in [0, 1]: by steps, or by wall time when that is further."""
        by_steps = self.last_epoch / self.total_steps
        if self.seconds is None or self.last_epoch <= 0:
            return min(by_steps, 1.0)
        if self._clock_start is None:  # the first step, not construction: data caching is not training time
            self._clock_start = time.perf_counter()
        by_time = (self.elapsed_before + time.perf_counter() - self._clock_start) / self.seconds
        return min(max(by_steps, by_time), 1.0)

    def get_lr(self) -> list[float]:
        fraction = self.progress()
        factor = self.eta_min_ratio + (1 - self.eta_min_ratio) * 0.5 * (1 + math.cos(math.pi * fraction))
        if self.last_epoch < self.warmup_steps:
            factor *= 0.1 + 0.9 * self.last_epoch / self.warmup_steps
        return [base * factor for base in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.pop("_clock_start", None)
        if self._clock_start is not None:
            state["elapsed_before"] = self.elapsed_before + time.perf_counter() - self._clock_start
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._clock_start = None

"""The loss as training goes: its separate terms averaged over each epoch, the running loss in a progress bar."""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from torch import nn

from oasis_gen.engines.distributed import unwrap


class LossTerms:
    """Average the loss function's separate terms (reconstruction, quantization, ...) over each epoch.

    With ``network``, the terms the network keeps in its own ``last_terms`` are averaged too (a two-level VQ-VAE's
    ``top_image_loss``, part of the quantization loss it returns).
    """

    def __init__(self, loss_function: nn.Module, network: nn.Module | None = None):
        self.loss_function = loss_function
        self.network = network
        self.sums: dict[str, float] = {}
        self.count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._add)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)

    def _reset(self, engine: Engine) -> None:
        self.sums, self.count = {}, 0

    def _add(self, engine: Engine) -> None:
        terms = dict(getattr(self.loss_function, "last_terms", {}))
        if self.network is not None:
            terms.update(getattr(unwrap(self.network), "last_terms", {}))
        for key, value in terms.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.count += 1

    def _publish(self, engine: Engine) -> None:
        for key, total in self.sums.items():
            engine.state.metrics[key] = total / max(self.count, 1)


class LossProgressBar(ProgressBar):
    """Ignite's tqdm progress bar over each epoch's iterations, showing the running loss."""

    def __init__(self, output_transform: Any = None, **kwargs: Any):
        super().__init__(persist=False, **kwargs)
        self._output_transform = output_transform

    def attach(self, engine: Engine, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        kwargs.setdefault("output_transform", self._output_transform)
        super().attach(engine, *args, **kwargs)

"""How the VQ-VAE's codebooks are used, and keeping them used: health figures, per-epoch usage, dead-code restarts."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn

from oasis_gen.engines.distributed import all_reduce_sum
from oasis_gen.networks.vqvae import named_quantizers

logger = logging.getLogger(__name__)


def codebook_health(counts: torch.Tensor) -> dict[str, float]:
    """Perplexity (effective number of codes used) and the fraction of codes never used, from code counts."""
    total = float(counts.sum())
    if total == 0:
        return {"perplexity": 0.0, "unused": 1.0}
    probs = counts.double() / total
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
    return {"perplexity": float(entropy.exp()), "unused": float((counts == 0).double().mean())}


def metric_name(prefix: str, level: str, key: str) -> str:
    """``prefix_key`` for a single-level VQ-VAE's (or the bottom level's) codebook, ``prefix_level_key`` otherwise."""
    return f"{prefix}_{level}_{key}" if level else f"{prefix}_{key}"


class CodebookUsage:
    """Count the codes the quantizers pick during an epoch; publish perplexity and unused fraction as metrics.

    Counts only forward passes in the given mode ("train" or "eval"), so a validation run inside a training epoch
    does not mix into the training figures. Under DDP the counts of all ranks are summed (attach it on every rank).
    A two-level VQ-VAE's top codebook is published with ``top`` in the name (``codebook_top_perplexity``); the bottom
    one keeps the single-level names (``codebook_perplexity``).

    A codebook whose perplexity falls below ``collapse_perplexity`` is logged as a warning, once per level: its
    codes then say next to nothing about the image (a collapsed top level still lets the bottom one reconstruct
    well, so SSIM does not show it, but it leaves the top prior nothing to learn).
    """

    def __init__(self, network: nn.Module, mode: str = "train", prefix: str = "codebook",
                 collapse_perplexity: float = 2.0):
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', not {mode!r}")
        self.network = network
        self.training = mode == "train"
        self.prefix = prefix
        self.collapse_perplexity = float(collapse_perplexity)
        self.collapsed: set[str] = set()
        self.counts: dict[str, torch.Tensor] | None = None
        self.num_embeddings: dict[str, int] = {}
        self._hooks: list[Any] = []

    def attach(self, engine: Engine) -> None:
        for level, quantizer in named_quantizers(self.network).items():
            self.num_embeddings[level] = int(quantizer.num_embeddings)
            self._hooks.append(quantizer.register_forward_hook(functools.partial(self._count, level)))
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)

    def _reset(self, engine: Engine) -> None:
        self.counts = {level: torch.zeros(k, dtype=torch.long) for level, k in self.num_embeddings.items()}

    def _count(self, level: str, module: nn.Module, inputs: Any, output: tuple) -> None:
        if self.counts is None or module.training != self.training:
            return
        indices = output[2].detach().flatten()
        self.counts[level] += torch.bincount(indices, minlength=self.num_embeddings[level]).cpu()

    def _publish(self, engine: Engine) -> None:
        if self.counts is None:
            return
        for level, counts in self.counts.items():
            counts = all_reduce_sum(counts)  # every rank's, under DDP
            health = codebook_health(counts)
            for key, value in health.items():
                engine.state.metrics[metric_name(self.prefix, level, key)] = value
            if 0 < health["perplexity"] < self.collapse_perplexity and level not in self.collapsed:
                self.collapsed.add(level)
                logger.warning(
                    "the %s codebook has collapsed: %s uses %d of its %d codes (%s %.2f); its codes now carry "
                    "almost nothing about the image (a two-level VQ-VAE's top level did so on real scans without "
                    "top_image_weight: see the bundle docs)", level or "bottom", "training" if self.training else
                    "validation", int((counts > 0).sum()), int(counts.numel()),
                    metric_name(self.prefix, level, "perplexity"), health["perplexity"])


class _LevelRestart:
    """The restart state of one EMA quantizer: its latest training inputs and the codes picked since the last check."""

    def __init__(self, quantizer: nn.Module):
        self.quantizer = quantizer
        self.latest: torch.Tensor | None = None
        self.used: torch.Tensor | None = None
        self.restarted = 0
        quantizer.register_forward_pre_hook(self._keep_inputs)
        quantizer.register_forward_hook(self._count)

    def _keep_inputs(self, module: nn.Module, inputs: tuple) -> None:
        if module.training:
            self.latest = inputs[0].detach()

    def _count(self, module: nn.Module, inputs: tuple, output: tuple) -> None:
        if module.training:
            counts = torch.bincount(output[2].detach().flatten(), minlength=module.num_embeddings)
            self.used = counts if self.used is None else self.used + counts

    def restart(self) -> None:
        """Move every code unused since the last check onto a random latest input (then broadcast under DDP)."""
        if self.latest is None or self.used is None:
            return
        q = self.quantizer
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        with torch.no_grad():
            used = self.used.clone()
            if distributed:
                torch.distributed.all_reduce(used)
            dead = torch.nonzero(used == 0).flatten()
            if dead.numel():
                dim = self.latest.shape[1]
                vectors = self.latest.movedim(1, -1).reshape(-1, dim).float()
                picks = vectors[torch.randint(0, vectors.shape[0], (dead.numel(),), device=vectors.device)]
                q.embedding.weight.data[dead] = picks
                q.ema_w.data[dead] = picks  # with a usage of 1, the EMA's ratio ema_w / usage is the pick itself
                q.ema_cluster_size.data[dead] = 1.0
                self.restarted += int(dead.numel())
            if distributed:
                for tensor in (q.embedding.weight.data, q.ema_w.data, q.ema_cluster_size.data):
                    torch.distributed.broadcast(tensor, src=0)
        self.latest, self.used = None, None


class CodebookRestart:
    """Re-seed the codes of MONAI's EMA quantizers that went unused, from encoder outputs of the current batch.

    MONAI's EMA update divides each code's running sum by its smoothed usage; for an unused code that is about
    1e-5, so after one step every unused code sits far out (norms ~1e5) and can never be picked again: the codebook
    collapses to one or a few codes. Every ``interval`` training iterations, each code not picked at all during
    those iterations is moved onto a random encoder output of the latest batch (the first check, after the first
    iteration, doubles as a data-dependent initialisation). Under DDP the codebook is then broadcast from rank 0,
    so every rank keeps the same one. A two-level VQ-VAE's codebooks are restarted alike, each from its own level's
    inputs; the top level's count is published as ``codebook_top_restarted``. The usage counted since the last
    check is its state, kept in resumable checkpoints (through ``RunState``), so a resumed run restarts the same codes.
    """

    def __init__(self, network: nn.Module, interval: int = 20, enabled: bool = True):
        self.network = network
        self.interval = max(int(interval), 1)
        self.enabled = enabled
        self.levels: dict[str, _LevelRestart] = {}

    @property
    def restarted(self) -> int:
        """Codes restarted this epoch, all levels together."""
        return sum(level.restarted for level in self.levels.values())

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        self.levels = {name: _LevelRestart(q) for name, q in named_quantizers(self.network).items()}
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._restart)
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset_count)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._publish)

    def state_dict(self) -> dict[str, torch.Tensor | None]:
        return {name: None if level.used is None else level.used.detach().cpu() for name, level in self.levels.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor | None]) -> None:
        for name, level in self.levels.items():
            used = state.get(name)
            device = level.quantizer.embedding.weight.device
            level.used = None if used is None else torch.as_tensor(used).to(device)

    def _reset_count(self, engine: Engine) -> None:
        for level in self.levels.values():
            level.restarted = 0

    def _restart(self, engine: Engine) -> None:
        # check after the first iteration, then every `interval`
        if (engine.state.iteration - 1) % self.interval:
            return
        for level in self.levels.values():
            level.restart()

    def _publish(self, engine: Engine) -> None:
        for name, level in self.levels.items():
            engine.state.metrics[metric_name("codebook", name, "restarted")] = float(level.restarted)

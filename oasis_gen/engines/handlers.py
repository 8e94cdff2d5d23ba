"""Ignite handlers MONAI's engines lack for VQ-VAEs: codebook health, loss terms, pictures, run records, tables."""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from monai.handlers import MLFlowHandler
from torch import nn

from oasis_gen.engines.distributed import all_reduce_sum, rank_zero_decides
from oasis_gen.inferers.pixelcnn_inferer import VQVAEPixelCNNInferer
from oasis_gen.networks.vqvae import named_quantizers
from oasis_gen.tracking.mlflow_store import (
    log_artifact,
    log_datasets,
    log_model,
    log_picture,
    mark_model_training,
    run_id_of,
    update_run,
)
from oasis_gen.utils.errors import CheckpointError
from oasis_gen.utils.files import write_text
from oasis_gen.utils.pictures import code_map_picture, reconstruction_grid, save_png, tile, to_uint8
from oasis_gen.utils.plain import plain
from oasis_gen.utils.threads import sampling_threads

logger = logging.getLogger(__name__)


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (or the module itself)."""
    return getattr(network, "module", network)


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


class ReconstructionPictures:
    """After each evaluation, save a grid of original | reconstruction | difference and log it to MLflow."""

    def __init__(self, output_dir: str | Path, run_handler: MLFlowHandler | None = None, num_images: int = 8,
                 name: str = "reconstructions"):
        self.output_dir = Path(output_dir)
        self.run_handler = run_handler
        self.num_images = int(num_images)
        self.name = name
        self.originals: list[torch.Tensor] = []
        self.reconstructions: list[torch.Tensor] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._save)

    def _reset(self, engine: Engine) -> None:
        self.originals, self.reconstructions = [], []
        self.seen = 0
        # spread the pictured slices over the whole split (under DDP: this rank's share) rather than its first few
        loader = engine.data_loader
        size = len(getattr(loader, "sampler", None) or getattr(loader, "dataset", ())) or self.num_images
        self.stride = max(size // self.num_images, 1)

    def _collect(self, engine: Engine) -> None:
        for item in engine.state.output:
            picked = self.seen % self.stride == 0 and len(self.originals) < self.num_images
            self.seen += 1
            if picked:
                self.originals.append(torch.as_tensor(item["label"]).detach().cpu())
                self.reconstructions.append(torch.as_tensor(item["pred"]).detach().cpu())

    def _save(self, engine: Engine) -> None:
        if not self.originals:
            return
        path = self.output_dir / "pictures" / f"{self.name}_epoch{engine.state.epoch:03d}.png"
        picture = reconstruction_grid(self.originals, self.reconstructions)
        save_png(picture, path)
        log_picture(self.run_handler, path, picture, self.name, engine.state.epoch)


class RunRecorder:
    """Tag the MLflow run when it starts; at the end write the run's configuration and log it with the model.

    Args:
        run_handler: the MLFlowHandler whose run is recorded (None: only the files are written).
        output_dir: where ``config.yaml`` is written.
        config: the values the run used (after overrides), saved as ``config.yaml`` and logged.
        params: MLflow params; a resumed run keeps the values it has and logs only new ones (MLflow refuses
            to change a param).
        tags: tags set on the run (git commit, stage, ...).
        artifacts: files logged when the engine completes (e.g. the best checkpoint), if they exist.
        model: builds the trained network to log as an MLflow model when the engine completes (e.g. from the best
            checkpoint); None: no model is logged.
        model_checkpoint: the checkpoint ``model`` is built from (its SHA-256 tags the registered version).
        model_example: an input of ``model`` for its signature and input example.
        registered_model_name: the model registry name the model is registered under (None: not registered).
        tracking_uri: the store of the run (where the model and its registered version go).
        model_name: the logged model's name in the run (not ``model``: the run's ``model/`` artifacts hold the
            checkpoint).
        datasets: the slice records of each split the run trains on, logged as the run's inputs, named by split and
            data folder (``train:data/demo``) with MLflow's digest
            (:func:`oasis_gen.tracking.mlflow_store.log_datasets`).
        data_root: the data folder of ``datasets``.

    The run's experiment is marked as model training (MLflow 3's UI then opens it on its runs).
    """

    def __init__(self, run_handler: MLFlowHandler | None, output_dir: str | Path, config: Mapping[str, Any],
                 params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None,
                 artifacts: Sequence[str | Path] = (), model: Callable[[], torch.nn.Module] | None = None,
                 model_example: Any = None, registered_model_name: str | None = None,
                 tracking_uri: str | None = None, model_checkpoint: str | Path | None = None,
                 model_name: str = "network", datasets: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                 data_root: str | Path | None = None):
        self.run_handler = run_handler
        self.output_dir = Path(output_dir)
        self.config = dict(config)
        self.params = {k: str(v) for k, v in (params or {}).items()}
        self.run_id: str | None = None
        self.tags = dict(tags or {})
        self.artifacts = [Path(a) for a in artifacts]
        self.model, self.model_example = model, model_example
        self.registered_model_name = registered_model_name or None
        self.tracking_uri = tracking_uri
        self.model_checkpoint = model_checkpoint
        self.model_name = model_name
        self.datasets = dict(datasets or {})
        self.data_root = data_root

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.COMPLETED, self._complete)

    def _start(self, engine: Engine) -> None:
        config_file = write_text(self.output_dir / "config.yaml",
                                        yaml.safe_dump(plain(self.config), sort_keys=False))
        run_id = self.run_id = run_id_of(self.run_handler)
        if run_id is None:
            return
        client = self.run_handler.client
        update_run(client, run_id, self.tags, self.params)
        mark_model_training(client, client.get_run(run_id).info.experiment_id)
        if self.datasets and self.data_root is not None:
            log_datasets(client, run_id, self.datasets, self.data_root)
        log_artifact(self.run_handler, config_file)

    def _complete(self, engine: Engine) -> None:
        # the MLFlowHandler may already have closed its run (it forgets it then): use the id kept at start
        for path in self.artifacts:
            log_artifact(self.run_handler, path, artifact_path="model", run_id=self.run_id)
        if self.model is not None and self.run_id is not None:
            try:
                network = self.model()
            except CheckpointError as err:  # e.g. no validation ran, so no best checkpoint was saved
                logger.warning("no MLflow model logged: %s", err)
                return
            info = log_model(self.tracking_uri, self.run_id, network, self.model_example, name=self.model_name,
                             registered_model_name=self.registered_model_name, checkpoint=self.model_checkpoint,
                             description=f"trained by MLflow run {self.run_id} ({self.output_dir})")
            version = f" as {self.registered_model_name} version {info.registered_model_version}" \
                if self.registered_model_name else ""
            logger.info("logged the trained network as an MLflow model (%s)%s", info.model_uri, version)


class PerImageMetrics:
    """Write one row per evaluated slice (file, subject, slice, each metric) and a summary of each metric.

    Reads the per-image values MONAI metric handlers keep with ``save_details=True``; publishes the summary
    means and standard deviations as engine metrics (``<name>_mean``, ``<name>_std``) for StatsHandler and MLflow.
    """

    def __init__(self, output_dir: str | Path, metric_names: Sequence[str], run_handler: MLFlowHandler | None = None):
        self.output_dir = Path(output_dir)
        self.metric_names = list(metric_names)
        self.run_handler = run_handler
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def _collect(self, engine: Engine) -> None:
        # MONAI evaluators decollate the batch into one dict per slice
        for item in engine.state.batch:
            path = item["image"].meta.get("filename_or_obj", "") if hasattr(item["image"], "meta") else ""
            self.rows.append({"file": str(path), "subject": str(item["subject"]), "slice": int(item["slice"])})

    def _write(self, engine: Engine) -> None:
        details = getattr(engine.state, "metric_details", {}) or {}
        summary: dict[str, dict[str, float]] = {}
        for name in self.metric_names:
            values = torch.as_tensor(details[name]).float().reshape(len(self.rows), -1).mean(dim=1).numpy()
            for row, value in zip(self.rows, values, strict=True):
                row[name] = float(value)
            finite = values[np.isfinite(values)]
            summary[name] = {
                "mean": float(finite.mean()), "std": float(finite.std()), "median": float(np.median(finite)),
                "p05": float(np.percentile(finite, 5)), "p95": float(np.percentile(finite, 95)),
                "min": float(finite.min()), "max": float(finite.max()), "count": int(finite.size),
            }
            engine.state.metrics[f"{name}_mean"] = summary[name]["mean"]
            engine.state.metrics[f"{name}_std"] = summary[name]["std"]
        header = ["file", "subject", "slice", *self.metric_names]
        lines = [",".join(header)]
        lines += [",".join(_csv_cell(row[h]) for h in header) for row in self.rows]
        table = write_text(self.output_dir / "per_image.csv", "\n".join(lines) + "\n")
        summary_file = write_text(self.output_dir / "summary.json", json.dumps(summary, indent=2))
        for path in (table, summary_file):
            log_artifact(self.run_handler, path, artifact_path="evaluation")
        logger.info("evaluation of %d slices: %s", len(self.rows), ", ".join(
            f"{n} {s['mean']:.4f} ± {s['std']:.4f}" for n, s in summary.items()))


def _csv_cell(value: Any) -> str:
    """Format one CSV cell (quoting text that needs it)."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6f}"
    text = str(value)
    if any(c in text for c in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text




class LossProgressBar(ProgressBar):
    """Ignite's tqdm progress bar over each epoch's iterations, showing the running loss."""

    def __init__(self, output_transform: Any = None, **kwargs: Any):
        super().__init__(persist=False, **kwargs)
        self._output_transform = output_transform

    def attach(self, engine: Engine, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        kwargs.setdefault("output_transform", self._output_transform)
        super().attach(engine, *args, **kwargs)


class PriorSamples:
    """After each validation, draw code grids from the prior, decode them with the VQ-VAE and save a picture.

    The grids come from the incremental sampler with a fixed seed, so the pictures of successive epochs show the
    same random draws through a prior that learns. The picture (decoded samples, each with its code map below)
    goes to ``<output_dir>/pictures/<name>_epochNNN.png`` and to the MLflow run under ``<name>/``.

    Args:
        prior: the Gated PixelCNN being trained.
        vqvae: the VQ-VAE whose codes it models (decoded in eval mode, without gradients).
        output_dir: the run's output folder.
        grid_size: side of the code grids.
        num_samples: grids drawn each time (0: none).
        temperature: sampling temperature (``< 1`` sharper, ``> 1`` more diverse).
        num_classes: for a conditional prior, the number of slice-position buckets; the samples are spread
            evenly over them. None for an unconditional prior.
        seed: seed of the sampler's random generator.
        run_handler: the MLFlowHandler whose run receives the pictures (None: files only).
        name: file name prefix and artifact folder.
        columns: samples per row of the picture.
        cond: for the bottom prior of a two-level VQ-VAE, the top code grids ``[num_samples, h, w]`` it draws the
            bottom codes under (e.g. those of validation slices); the pictures decode both levels.
    """

    def __init__(self, prior: nn.Module, vqvae: nn.Module, output_dir: str | Path, grid_size: int,
                 num_samples: int = 8, temperature: float = 1.0, num_classes: int | None = None, seed: int = 0,
                 run_handler: MLFlowHandler | None = None, name: str = "samples", columns: int = 8,
                 cond: torch.Tensor | None = None):
        self.prior = prior
        self.vqvae = vqvae
        self.output_dir = Path(output_dir)
        self.grid_size = int(grid_size)
        self.num_samples = int(num_samples)
        self.temperature = float(temperature)
        self.num_classes = int(num_classes) if num_classes else None
        self.seed = int(seed)
        self.run_handler = run_handler
        self.name = name
        self.columns = max(int(columns), 1)
        self.cond = None if cond is None else torch.as_tensor(cond).long()
        if self.cond is not None and len(self.cond) < self.num_samples:
            self.num_samples = len(self.cond)  # as many pictures as top grids to draw under

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def labels(self) -> torch.Tensor | None:
        """Slice-position buckets of the samples, spread evenly from the first to the last (None: unconditional)."""
        if self.num_classes is None:
            return None
        return torch.arange(self.num_samples) * self.num_classes // self.num_samples

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample code grids and decode them: ``(images [N, 1, H, W] in [0, 1], codes [N, g, g])`` on the CPU."""
        prior = unwrap(self.prior)
        device = next(prior.parameters()).device
        generator = torch.Generator(device=device).manual_seed(self.seed)
        with sampling_threads(device):
            cond = None if self.cond is None else self.cond[:self.num_samples].to(device)
            images, codes = VQVAEPixelCNNInferer().sample(unwrap(self.vqvae), prior, self.num_samples,
                                                          (self.grid_size, self.grid_size), self.temperature,
                                                          generator, self.labels(), cond=cond)
        if isinstance(codes, tuple):  # (top, bottom): the pictures show the bottom codes the prior drew
            codes = codes[1]
        return images.cpu(), codes.cpu()

    def __call__(self, engine: Engine) -> None:
        if self.num_samples < 1:
            return
        images, codes = self.draw()
        num_embeddings = int(unwrap(self.prior).num_embeddings)
        path = self.output_dir / "pictures" / f"{self.name}_epoch{engine.state.epoch:03d}.png"
        picture = samples_grid(images, codes, num_embeddings, self.columns)
        save_png(picture, path)
        log_picture(self.run_handler, path, picture, self.name, engine.state.epoch)
        logger.info("%d prior samples drawn at temperature %g: %s", self.num_samples, self.temperature, path)


def samples_grid(images: torch.Tensor, codes: torch.Tensor, num_embeddings: int, columns: int = 8) -> np.ndarray:
    """An RGB picture of decoded samples, in rows of ``columns``, each row followed by the samples' code maps."""
    cells: list[np.ndarray] = []
    columns = max(1, min(int(columns), len(images)))
    for start in range(0, len(images), columns):
        chunk = range(start, min(start + columns, len(images)))
        pictures = [np.repeat(to_uint8(images[i])[..., None], 3, axis=2) for i in chunk]
        height, width = pictures[0].shape[:2]
        maps = [_stretch(code_map_picture(codes[i], num_embeddings, scale=1), height, width) for i in chunk]
        blank = [np.full_like(pictures[0], 255)] * (columns - len(pictures))
        cells += pictures + blank + maps + blank
    return tile(cells, columns=columns)


def _stretch(picture: np.ndarray, height: int, width: int) -> np.ndarray:
    """Enlarge a small picture to height x width by repeating its pixels (nearest neighbour)."""
    rows = np.arange(height) * picture.shape[0] // height
    cols = np.arange(width) * picture.shape[1] // width
    return picture[rows][:, cols]


"""Overhead of the real training pipeline: train.yaml through MONAI's ConfigParser, with every handler and a real
MLflow store, against the bare model loop (same network, optimizer, loss and batch size) on pre-loaded tensors.

Per-iteration time is measured inside epochs (from one iteration's end to the next, the first of each epoch
left out), so one-off work (imports, data check, caching, MLflow run creation) and per-epoch work (validation,
checkpoints) are reported apart from it. Ignite's HandlersTimeProfiler times every trainer handler; the
quantizer's forward hooks and the batch preparation are timed by wrapping them.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import HandlersTimeProfiler
from kit import ROOT, bundle_parser, config_imports
from monai.engines import IterationEvents

from oasis_gen.engines.distributed import unwrap
from speed_parts.training import TrainingStep, time_steps, vqvae_training

# events fired once per training iteration, outside the model step (its own events are inside "processing")
ITERATION_EVENTS = (Events.GET_BATCH_STARTED, Events.GET_BATCH_COMPLETED, Events.ITERATION_STARTED,
                    Events.ITERATION_COMPLETED)
STEP_EVENTS = tuple(IterationEvents)
LOG_EVERY_FORMER = 1  # train.yaml logged the loss every iteration until this benchmark showed its cost
INSTRUMENTS = ("IterationClock.", "CallTimer.")  # this benchmark's handlers: not part of what is measured


class IterationClock:
    """Record when each training iteration ends and when each epoch's end-of-epoch work is done.

    Its handlers are added when the engine starts, after every other handler is attached, so each recorded time
    falls after all the work of its event.
    """

    def __init__(self) -> None:
        self.started = 0.0
        self.epochs: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._arm)

    def _arm(self, engine: Engine) -> None:
        self.started = time.perf_counter()
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _epoch_started(self, engine: Engine) -> None:
        self.epochs.append({"started": time.perf_counter(), "iterations": [], "completed": None})

    def _iteration_completed(self, engine: Engine) -> None:
        self.epochs[-1]["iterations"].append(time.perf_counter())

    def _epoch_completed(self, engine: Engine) -> None:
        self.epochs[-1]["completed"] = time.perf_counter()

    def iteration_seconds(self) -> list[float]:
        """Seconds of each iteration but the first of every epoch (which also pays for starting the epoch)."""
        return [later - earlier for epoch in self.epochs
                for earlier, later in zip(epoch["iterations"][:-1], epoch["iterations"][1:], strict=True)]

    def first_iteration_seconds(self) -> list[float]:
        return [epoch["iterations"][0] - epoch["started"] for epoch in self.epochs if epoch["iterations"]]

    def epoch_end_seconds(self) -> list[float]:
        """Seconds from each epoch's last iteration to the end of its end-of-epoch handlers (validation, ...)."""
        return [epoch["completed"] - epoch["iterations"][-1] for epoch in self.epochs
                if epoch["iterations"] and epoch["completed"]]


class CallTimer:
    """Total seconds and calls of named callables, each replaced by a timing wrapper.

    Attached to an engine, it counts only calls made inside that engine's iterations (so a validation run between
    training epochs, which calls the same network hooks, is left out).
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.active = True

    def attach(self, engine: Engine) -> None:
        self.active = False
        engine.add_event_handler(Events.ITERATION_STARTED, self._set_active, True)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._set_active, False)

    def _set_active(self, engine: Engine, active: bool) -> None:
        self.active = active

    def wrap(self, name: str, function: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return function(*args, **kwargs)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
                self.calls[name] = self.calls.get(name, 0) + 1

        return timed

    def wrap_forward_hooks(self, network: torch.nn.Module) -> None:
        """Time every forward hook and pre-hook registered on the network's modules (e.g. the codebook's)."""
        for module in unwrap(network).modules():
            for hooks in (module._forward_pre_hooks, module._forward_hooks):
                for key, hook in list(hooks.items()):
                    hooks[key] = self.wrap(f"{getattr(hook, '__qualname__', type(hook).__name__)} (forward hook)",
                                           hook)


def pipeline_variants() -> dict[str, dict[str, Any]]:
    """Other settings of train.yaml, each run as another bundle run against the same bare loop: the former
    default of logging the loss to MLflow every iteration, and a trainer that does not decollate its batches (its
    loss readers then take the loss from the batch's output dict)."""
    return {f"log_every {LOG_EVERY_FORMER} (former default)": {"log_every": LOG_EVERY_FORMER},
            "trainer without decollation": undecollated_trainer()}


def undecollated_trainer() -> dict[str, Any]:
    """Overrides that turn the trainer's decollation off and point its loss readers at the undecollated output."""
    loss_reader = "$lambda output: output['loss']"
    config = bundle_parser("train.yaml")
    overrides: dict[str, Any] = {"train#trainer#decollate": False}
    readers = [("train#mlflow", config.get("train#mlflow"))]
    readers += [(f"train#handlers#{i}", item) for i, item in enumerate(config.get("train#handlers"))]
    for key, item in readers:
        if isinstance(item, dict) and "from_engine(['loss'], first=True)" in str(item.get("output_transform")):
            overrides[f"{key}#output_transform"] = loss_reader
    return overrides


def handler_seconds(profiler: HandlersTimeProfiler, events: tuple) -> dict[str, float]:
    """Total seconds per handler on the given events, keyed ``handler (EVENT)`` (this benchmark's own left out)."""
    totals: dict[str, float] = {}
    for event, handlers in profiler.event_handlers_times.items():
        if event in events:
            for name, times in handlers.items():
                if times and not name.startswith(INSTRUMENTS):
                    totals[f"{name} ({getattr(event, 'name', str(event))})"] = float(sum(times))
    return totals


def run_bundle_training(work: Path, dataset_dir: Path, store: Path, **overrides: Any) -> dict[str, Any]:
    """Run train.yaml's ``training`` in this process, with its handlers, writing to work and to the MLflow store.

    Returns the per-iteration and per-epoch times, the one-off times, the profile of every handler and the
    pre-loaded, decoded training batches (for the bare loop).
    """
    times: dict[str, float] = {}
    start = time.perf_counter()
    parser = bundle_parser("train.yaml", dataset_dir=str(dataset_dir), output_dir=str(work / "run"),
                           tracking_uri=str(store), **overrides)
    parser.get_parsed_content("initialize")
    times["parse_and_initialize"] = time.perf_counter() - start
    for key, label in (("records", "data_check"), ("train#dataset", "cache_train"),
                       ("validate#dataset", "cache_validate"), ("train#trainer", "build_engines")):
        mark = time.perf_counter()
        parser.get_parsed_content(key)
        times[label] = time.perf_counter() - mark
    trainer = parser.get_parsed_content("train#trainer")

    profiler, calls, clock = HandlersTimeProfiler(), CallTimer(), IterationClock()
    profiler.attach(trainer)
    calls.attach(trainer)
    calls.wrap_forward_hooks(trainer.network)
    trainer.prepare_batch = calls.wrap("batch preparation (uint8 -> float, to device)", trainer.prepare_batch)
    clock.attach(trainer)
    mark = time.perf_counter()
    parser.get_parsed_content("training")  # attaches the checkpoint handlers, then runs the trainer
    times["training_run"] = time.perf_counter() - mark
    times["total"] = time.perf_counter() - start

    iterations = len(profiler.processing_times)
    prepare = parser.get_parsed_content("prepare_batch")
    device = torch.device(parser.get_parsed_content("device"))
    batches = [prepare(batch, device)[0] for batch in trainer.data_loader]
    return {
        "times": times,
        "iterations": iterations,
        "epochs": len(clock.epochs),
        "batch_size": int(parser.get_parsed_content("batch_size")),
        "image_size": int(parser.get_parsed_content("image_size")),
        "train_slices": len(trainer.data_loader.dataset),
        "validate_slices": len(parser.get_parsed_content("validate#dataset")),
        "iteration_seconds": clock.iteration_seconds(),
        "first_iteration_seconds": clock.first_iteration_seconds(),
        "epoch_end_seconds": clock.epoch_end_seconds(),
        "run_start_seconds": clock.epochs[0]["started"] - clock.started if clock.epochs else None,
        "dataflow_seconds": float(sum(profiler.dataflow_times)),
        "processing_seconds": float(sum(profiler.processing_times)),
        "iteration_handlers": handler_seconds(profiler, ITERATION_EVENTS),
        "step_handlers": handler_seconds(profiler, STEP_EVENTS),
        "epoch_handlers": handler_seconds(profiler, (Events.EPOCH_STARTED, Events.EPOCH_COMPLETED)),
        "run_handlers": handler_seconds(profiler, (Events.STARTED, Events.COMPLETED)),
        "timed_calls": {name: {"seconds": calls.seconds[name], "calls": calls.calls[name]} for name in calls.seconds},
        "batches": batches,
    }


def bare_loop_seconds(batches: list[torch.Tensor], iterations: int, warmup: int = 2,
                      **overrides: Any) -> list[float]:
    """Per-iteration seconds of the bare loop: a fresh train.yaml network, optimizer and loss on pre-loaded batches."""
    training = vqvae_training(**overrides)
    return time_steps(TrainingStep(training), batches, iterations, warmup, training.device)


def import_seconds(config_name: str = "train.yaml") -> float:
    """Seconds a fresh interpreter takes to import what the config imports, plus monai.bundle and mlflow."""
    modules = [*config_imports(config_name), "monai.bundle", "mlflow"]
    code = "import time; t = time.perf_counter()\n" + "".join(f"import {m}\n" for m in modules)
    code += "print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def overhead_summary(bundle: dict[str, Any], bare_median: float) -> dict[str, Any]:
    """A bundle run's per-iteration time against the bare loop's, and its measured costs per iteration."""
    bundle_times = bundle["iteration_seconds"]
    bundle_median = statistics.median(bundle_times)
    count = bundle["iterations"]
    # measured costs per iteration, in seconds: data loading, each wrapped call, each per-iteration handler
    parts = {"data loading and collation (DataLoader over the CacheDataset)": bundle["dataflow_seconds"] / count}
    parts.update({name: value["seconds"] / count for name, value in bundle["timed_calls"].items()})
    parts.update({name: seconds / count for name, seconds in bundle["step_handlers"].items()})
    parts.update({name: seconds / count for name, seconds in bundle["iteration_handlers"].items()})
    parts = dict(sorted(parts.items(), key=lambda item: -item[1]))
    return {
        "bundle_iteration_median": bundle_median,
        "bundle_iteration_mean": statistics.mean(bundle_times),
        "overhead_share": 1.0 - bare_median / bundle_median,
        "parts_per_iteration": parts,
        "parts_share": sum(parts.values()) / bundle_median,
        "epoch_end_median": statistics.median(bundle["epoch_end_seconds"]) if bundle["epoch_end_seconds"] else None,
    }


def pipeline_overhead(work: Path, dataset_dir: Path, store: Path, warmup: int = 2,
                      variants: dict[str, dict] | None = None, **overrides: Any) -> dict[str, Any]:
    """The bundle's per-iteration time against the bare loop's over as many iterations, and where the rest goes.

    Each variant (a name and its extra overrides, e.g. ``{"log_every": 10}``) is another bundle run compared with
    the same bare loop: what a proposed change of the defaults would gain.
    """
    bundle = run_bundle_training(work / "default", dataset_dir, store, **overrides)
    batches = bundle.pop("batches")
    bare_times = bare_loop_seconds(batches, len(bundle["iteration_seconds"]), warmup, **overrides)
    bare_median = statistics.median(bare_times)
    result = {
        "overrides": overrides,
        "bundle": bundle,
        "bare_iteration_seconds": bare_times,
        "bare_iteration_median": bare_median,
        "bare_iteration_mean": statistics.mean(bare_times),
        **overhead_summary(bundle, bare_median),
        "import_seconds": import_seconds("train.yaml"),
        "variants": {},
    }
    for index, (name, extra) in enumerate((variants or {}).items()):
        run = run_bundle_training(work / f"variant{index}", dataset_dir, store, **{**overrides, **extra})
        run.pop("batches")
        result["variants"][name] = {"overrides": extra, "bundle": run, **overhead_summary(run, bare_median)}
    return result

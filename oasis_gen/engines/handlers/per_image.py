"""Per-image evaluation: one table row per evaluated slice and a summary of each metric."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import MLFlowHandler

from oasis_gen.tracking.mlflow_handler import log_artifact
from oasis_gen.utils.files import write_text

logger = logging.getLogger(__name__)


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

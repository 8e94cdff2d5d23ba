"""What an inference run reports: each scan's result, the run's figures, the summary files and the run's verdict.

:class:`ScanResult` is one scan's row (its scores, or why it was skipped), :class:`InferenceReport` every row in
input order with the time spent (:meth:`oasis_gen.inference.run.ScanInference.report` gathers it);
:func:`write_summary` writes ``summary.csv`` and ``summary.json``, :func:`run_artifacts` picks what the MLflow run
keeps, and :func:`check_report` fails the run when no scan (or, strictly, not every scan) finished.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oasis_gen.inference.writers import write_csv
from oasis_gen.utils.errors import DataError
from oasis_gen.utils.files import write_text
from oasis_gen.utils.plain import plain

__all__ = ["SUMMARY_COLUMNS", "InferenceReport", "ScanResult", "check_report", "run_artifacts", "write_summary"]

SUMMARY_COLUMNS = ("scan", "input", "kind", "slices", "ssim_mean", "psnr_mean", "atypicality_bits", "status",
                   "problem")


@dataclass
class ScanResult:
    """What became of one scan: its scores, or why it was skipped."""

    scan: str
    input: str
    kind: str
    slices: int | None = None
    ssim_mean: float | None = None
    psnr_mean: float | None = None
    atypicality_bits: float | None = None
    status: str = "ok"
    problem: str = ""
    output_dir: str | None = None
    comparison: str | None = None


@dataclass
class InferenceReport:
    """Every scan's result, in input order, and how long the work took."""

    results: list[ScanResult]
    seconds: float
    slices: int = 0
    typical: dict[str, Any] | None = field(default=None)

    @property
    def done(self) -> list[ScanResult]:
        """The scans that finished."""
        return [r for r in self.results if r.status == "ok"]

    @property
    def failed(self) -> list[ScanResult]:
        """The scans that were skipped."""
        return [r for r in self.results if r.status != "ok"]

    def metrics(self) -> dict[str, float]:
        """Run-level figures: counts, means over the finished scans (each scan counts once), speed."""
        metrics = {"scans": float(len(self.results)), "scans_done": float(len(self.done)),
                   "scans_failed": float(len(self.failed)), "slices": float(self.slices),
                   "seconds": self.seconds, "slices_per_second": self.slices / max(self.seconds, 1e-9)}
        for name in ("ssim_mean", "psnr_mean", "atypicality_bits"):
            values = [getattr(r, name) for r in self.done if getattr(r, name) is not None]
            values = [v for v in values if math.isfinite(v)]
            if values:
                metrics[name] = float(np.mean(values))
        if self.typical:
            metrics["typical_bits"] = float(self.typical["bits_mean"])
        return metrics


def write_summary(inference_dir: str | Path, report: InferenceReport, settings: Mapping[str, Any]
                  ) -> dict[str, Any]:
    """
    Write ``summary.csv`` (one row per scan) and ``summary.json`` (settings, run metrics, what is typical for
    the prior, every row) into ``inference_dir``.

    Returns:
        ``{"csv": path, "json": path, "metrics": {...}}``.
    """
    folder = Path(inference_dir)
    rows = [{k: v for k, v in asdict(r).items() if k in SUMMARY_COLUMNS} for r in report.results]
    metrics = report.metrics()
    table = write_csv(folder / "summary.csv", rows, SUMMARY_COLUMNS)
    document = {"settings": plain(settings), "metrics": plain(metrics), "typical": plain(report.typical),
                "scans": plain(rows)}
    summary = write_text(folder / "summary.json", json.dumps(document, indent=2) + "\n")
    return {"csv": table, "json": summary, "metrics": metrics}


def run_artifacts(report: InferenceReport, summary: Mapping[str, Any], max_pictures: int = 50) -> list:
    """What the MLflow run keeps: the summary files and the first ``max_pictures`` comparison pictures."""
    artifacts: list = [summary["csv"], summary["json"]]
    for result in report.done[:max(int(max_pictures), 0)]:
        if result.comparison:
            artifacts.append((result.comparison, f"comparisons/{result.scan}"))
    return artifacts


def check_report(report: InferenceReport, strict: bool = False, source: Any = "input") -> None:
    """Fail the run when no scan finished, or (``strict``) when any was skipped; the summary is written first."""
    if report.results and not report.done:
        raise DataError(source, f"none of the {len(report.results)} scans could be used (see summary.csv)")
    if strict and report.failed:
        names = ", ".join(r.input for r in report.failed[:10])
        more = f" and {len(report.failed) - 10} more" if len(report.failed) > 10 else ""
        raise DataError(source, f"{len(report.failed)} of {len(report.results)} scans were skipped: {names}{more}")

"""The sampling stage as one component: what ``bundle/configs/sample.yaml`` runs, in the order it runs it.

The config names the settings and the order (check the inputs, sample, complete, score, summarise, log); this
class does the work with :mod:`oasis_gen.generation.sampling` (drawing codes), :mod:`oasis_gen.generation.writers`
(the files) and :mod:`oasis_gen.generation.reference` (the plausibility figures against real slices).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from oasis_gen.generation.pair import ModelPair
from oasis_gen.generation.reference import heldout_nll, sample_plausibility
from oasis_gen.generation.sampling import complete_scan, generate, load_scan, region_mask
from oasis_gen.generation.writers import (
    Timed,
    timed,
    timing_metrics,
    write_completion,
    write_plausibility,
    write_samples,
    write_summary,
)
from oasis_gen.utils.config_values import optional

__all__ = ["SamplingRun"]


class SamplingRun:
    """
    Draw new slices from a (VQ-VAE, prior) pair, complete a region of a given slice, score the samples against
    real slices and write the results to ``output_dir``. The inputs (the slice to complete, its region, the real
    slices) are read and checked when the run is built, before any sampling.

    Args:
        models: the VQ-VAE and its prior(s) (:func:`oasis_gen.generation.pair.load_pair`).
        output_dir: samples, grid.png, summary.json, plausibility.md; completions in ``completion/``.
        num_samples: slices to draw.
        temperature: < 1 sharper, > 1 more varied.
        seed: same seed, same samples (``None``: unseeded).
        label: the class, for a prior trained with labels.
        top_k: keep the k most likely codes per level (``{top: .., bottom: ..}`` or one value).
        top_p: nucleus truncation per level, likewise.
        complete_scan: a slice or volume to complete (``None``: no completion).
        region: which region of ``complete_scan`` to complete (``bottom_half``, ``rows:A-B``, ...).
        num_completions: completions drawn for the region.
        real_records: slice records per split (``DataReport.usable()``) to score the samples against, or ``None``.
        plausibility_epochs: training epochs of the two-sample classifier.
        progress: show progress bars.
    """

    def __init__(self, models: ModelPair, output_dir: str | Path, num_samples: int = 16, temperature: float = 1.0,
                 seed: int | None = 0, label: int | None = None, top_k: Any = None, top_p: Any = None,
                 complete_scan: str | Path | None = None, region: str = "bottom_half", num_completions: int = 4,
                 real_records: Mapping[str, Sequence[Mapping[str, Any]]] | None = None, plausibility_epochs: int = 20,
                 progress: bool = True):
        self.models = models
        self.output_dir = Path(output_dir)
        self.num_samples, self.temperature, self.seed = num_samples, temperature, seed
        self.label, self.top_k, self.top_p = optional(label), top_k, top_p
        self.scan_path = optional(complete_scan)
        self.num_completions = num_completions
        self.real_records = real_records
        self.plausibility_epochs = plausibility_epochs
        self.progress = progress
        self.scan = load_scan(self.scan_path, models.image_size) if self.scan_path else None
        self.region_mask = region_mask(region, models.grid) if self.scan_path else None
        self.samples: Timed | None = None
        self.completion: Timed | None = None
        self.files: dict[str, Any] = {}
        self.scores: dict[str, float] = {}

    def sample(self) -> dict[str, Path]:
        """Draw ``num_samples`` slices and write them with their codes and a grid."""
        models = self.models
        self.samples = timed(generate, models.prior, models.vqvae, self.num_samples, self.temperature, self.seed,
                             self.label, self.progress, grid=models.grid, top_k=self.top_k, top_p=self.top_p)
        self.files["samples"] = write_samples(self.output_dir, *self.samples.value, models.num_embeddings)
        return self.files["samples"]

    def complete(self) -> dict[str, Path] | None:
        """Complete the region of the given slice ``num_completions`` times (nothing without ``complete_scan``)."""
        if self.scan is None:
            return None
        models = self.models
        self.completion = timed(complete_scan, models.prior, models.vqvae, self.scan, self.region_mask,
                                self.temperature, self.seed, self.num_completions, self.label, self.progress,
                                top_k=self.top_k, top_p=self.top_p)
        self.files["completion"] = write_completion(self.output_dir / "completion", self.scan, *self.completion.value,
                                                    self.region_mask, models.num_embeddings)
        return self.files["completion"]

    def score(self) -> Path | None:
        """The plausibility figures and the prior's held-out NLL against the real slices, in ``plausibility.md``."""
        if self.real_records is None:
            return None
        if self.samples is None:
            raise RuntimeError("score() needs the samples: call sample() first")
        models = self.models
        report = sample_plausibility(self.samples.value[1], self.real_records, models.image_size, seed=self.seed or 0,
                                     epochs=self.plausibility_epochs, progress=self.progress, vqvae=models.vqvae)
        heldout = heldout_nll(models.prior, models.vqvae, self.real_records["test"], models.image_size)
        self.scores = {**report, **heldout}
        self.files["plausibility"] = write_plausibility(self.output_dir, report, heldout)
        return self.files["plausibility"]

    @property
    def metrics(self) -> dict[str, float]:
        """Timings, plausibility figures and held-out NLL, as MLflow metrics."""
        if self.samples is None:
            return dict(self.scores)
        return {**timing_metrics(self.samples, self.completion), **self.scores}

    def write_summary(self, settings: Mapping[str, Any]) -> Path:
        """``summary.json``: the settings that ran and the metrics."""
        self.files["summary"] = write_summary(self.output_dir, settings, self.metrics)
        return self.files["summary"]

    def artifacts(self) -> list[Path | tuple[Path, str]]:
        """The files to log with the MLflow run: the grids under their folders, the summary and the plausibility."""
        logged: list[Path | tuple[Path, str]] = []
        if "samples" in self.files:
            logged.append((self.files["samples"]["grid"], "samples"))
        logged += [self.files[name] for name in ("summary", "plausibility") if name in self.files]
        if "completion" in self.files:
            logged.append((self.files["completion"]["grid"], "completion"))
        return logged

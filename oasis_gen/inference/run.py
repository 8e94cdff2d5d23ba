"""The loop of inference over a set of scans (the evaluator's iteration): groups of scans, their planes through
the networks together (:mod:`oasis_gen.inference.inferer`), each scan's outputs as soon as it is done; the
report and summary of the run are :mod:`oasis_gen.inference.report`'s.

Per scan, into ``<inference_dir>/<scan name>/``: the reconstruction in the input's format
(:mod:`oasis_gen.inference.writers`), ``codes.npy`` / ``codes.png``, ``metrics.csv`` (per plane: SSIM and PSNR
against the input as the VQ-VAE sees it, and bits per code), with a prior ``atypicality.npy`` (bits per code,
upsampled to the input's geometry), ``atypicality_codes.npy`` (on the code grid) and ``atypicality.png``, and
``comparison.png``. For a two-level VQ-VAE ``codes.npy``/``codes.png`` are the bottom codes, ``codes_top.npy``
the top ones, and the atypicality maps lie at the bottom grid with the top codes' bits shared out over it (a
slice's map still sums to its total bits). A scan that cannot be read or processed is reported (log line and
summary row) and skipped; the others finish. Nothing is deleted and every file is replaced atomically, so
earlier outputs survive.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from oasis_gen.inference import figures
from oasis_gen.inference.inferer import CodesInferer, NetworkOutputs, run_networks
from oasis_gen.inference.models import InferenceModels, prior_label
from oasis_gen.inference.report import InferenceReport, ScanResult
from oasis_gen.inference.scans import ModelView, ScanFile, ScanPlanes, read_planes, scan_labels, volume_labels
from oasis_gen.inference.writers import save_npy, write_csv, write_reconstruction
from oasis_gen.utils.errors import DataError, find_user_error
from oasis_gen.utils.pictures import save_png

logger = logging.getLogger(__name__)

__all__ = ["ScanInference", "scan_groups"]

SLICE_COLUMNS = ("slice", "scored", "ssim", "psnr", "bits_per_code")


def scan_groups(scans: Sequence[ScanFile], batch_size: int = 32) -> list[list[ScanFile]]:
    """What one iteration of inference takes: each volume alone (its planes make the batches), slice files
    together, up to ``batch_size`` of them."""
    return list(_groups(scans, max(int(batch_size), 1)))


def _groups(scans: Sequence[ScanFile], batch_size: int) -> Iterator[list[ScanFile]]:
    group: list[ScanFile] = []
    for scan in scans:
        if scan.kind == "volume":
            if group:
                yield group
                group = []
            yield [scan]
            continue
        group.append(scan)
        if len(group) >= batch_size:
            yield group
            group = []
    if group:
        yield group


def _problem(scan: ScanFile, error: Exception) -> str:
    """The one-line reason a scan was skipped (the user's error when there is one, else the exception)."""
    user_error = find_user_error(error)
    if isinstance(user_error, DataError) and user_error.path == str(scan.path):
        return user_error.problem
    if user_error is not None:
        return str(user_error)
    logger.error("unexpected error on %s", scan.path, exc_info=error)
    return f"{type(error).__name__}: {error}"


def _failed(scan: ScanFile, error: Exception) -> ScanResult:
    problem = _problem(scan, error)
    logger.warning("skipped %s: %s", scan.path, problem)
    return ScanResult(scan.name, str(scan.path), scan.kind, status="failed", problem=problem)


class ScanInference:
    """
    The inference evaluator's iteration (MONAI's ``iteration_update``): read a group of scans (from
    :func:`scan_groups`), pass all their planes through the engine's network with its inferer (a
    :class:`CodesInferer`) and the prior, and write each scan's outputs as soon as it is done. A bad scan is
    reported (log line, result row) and skipped; the others go on. :meth:`report` gathers the results.

    Args:
        scans: every scan of the run (from :func:`oasis_gen.inference.scans.find_inputs`): the report's order and
            the slice files' position buckets.
        models: from :func:`oasis_gen.inference.models.load_inference_models`.
        inference_dir: where each scan's folder goes.
        slice_axis, min_brain_fraction: how volumes are cut, and which planes count in their scores.
        batch_size: planes per pass through the networks (slice files are grouped by as many).
        amp: mixed precision on CUDA.
        label: a fixed slice-position bucket for a conditional prior (``None``: each plane's own).
        montage_slices, comparison_slices: how many planes of a volume its pictures show.
    """

    def __init__(self, scans: Sequence[ScanFile], models: InferenceModels, inference_dir: str | Path,
                 slice_axis: int | str = "axial", min_brain_fraction: float = 0.1, batch_size: int = 32,
                 amp: bool = False, label: Any = None, montage_slices: int = 16, comparison_slices: int = 3):
        self.scans = list(scans)
        self.models = models
        self.inference_dir = Path(inference_dir)
        self.view = ModelView(models.image_size)
        self.slice_axis = slice_axis
        self.min_brain_fraction = float(min_brain_fraction)
        self.batch_size = max(int(batch_size), 1)
        self.amp = bool(amp)
        self.fixed_label = prior_label(models.prior, label)
        self.slice_buckets = scan_labels(self.scans, models.prior.num_classes if models.prior is not None else None)
        self.montage_slices, self.comparison_slices = int(montage_slices), int(comparison_slices)
        self.results: dict[Path, ScanResult] = {}
        self.seconds = 0.0

    def __call__(self, engine: Any, batch: Sequence[Sequence[ScanFile]]) -> dict[Path, ScanResult]:
        started = time.perf_counter()
        inferer = getattr(engine, "inferer", None) or CodesInferer(self.batch_size, self.amp)
        done: dict[Path, ScanResult] = {}
        for group in batch:  # one group per iteration: the data loader's batch size is 1
            done.update(_process_group(self, group, inferer))
        self.results.update(done)
        self.seconds += time.perf_counter() - started
        return done

    def report(self) -> InferenceReport:
        """Every scan's result in input order (scans not reached are left out), and the time spent on them."""
        ordered = [self.results[s.path] for s in self.scans if s.path in self.results]
        slices = sum(r.slices or 0 for r in ordered if r.status == "ok")
        report = InferenceReport(ordered, self.seconds, slices, self.models.typical)
        logger.info("inference: %d of %d scans done (%d slices) in %.1f s, %d skipped; results in %s",
                    len(report.done), len(self.scans), report.slices, report.seconds, len(report.failed),
                    self.inference_dir)
        return report


def _process_group(settings: ScanInference, group: Sequence[ScanFile], inferer: CodesInferer
                   ) -> dict[Path, ScanResult]:
    """Read a group of scans, pass all their planes through the networks together, write each scan's outputs."""
    results: dict[Path, ScanResult] = {}
    loaded: list[tuple[ScanPlanes, torch.Tensor, list]] = []
    for scan in group:
        try:
            planes = read_planes(scan, settings.slice_axis, settings.min_brain_fraction)
            loaded.append((planes, *settings.view.to_model(planes.planes)))
        except Exception as err:  # a bad scan is reported and skipped; the others go on
            results[scan.path] = _failed(scan, err)
    if not loaded:
        return results
    try:
        outputs = run_networks(settings.models, torch.cat([inputs for _, inputs, _ in loaded]),
                               _labels(settings, [planes for planes, _, _ in loaded]), settings.batch_size,
                               settings.amp, inferer)
    except Exception as err:
        return {**results, **{planes.file.path: _failed(planes.file, err) for planes, _, _ in loaded}}
    start = 0
    for planes, inputs, geometry in loaded:
        part = slice(start, start + planes.count)
        start += planes.count
        try:
            results[planes.file.path] = _write_scan(settings, planes, inputs, geometry, outputs, part)
        except Exception as err:
            results[planes.file.path] = _failed(planes.file, err)
    return results


def _labels(settings: ScanInference, scans: Sequence[ScanPlanes]) -> torch.Tensor | None:
    """The conditional prior's slice-position bucket of every plane of the scans (None: unconditional prior)."""
    prior = settings.models.prior
    if prior is None or prior.num_classes is None:
        return None
    buckets = [np.full(s.count, settings.fixed_label) if settings.fixed_label is not None
               else volume_labels(s.scored, prior.num_classes) if s.volume is not None
               else np.full(1, settings.slice_buckets[s.file.path]) for s in scans]
    return torch.from_numpy(np.concatenate(buckets)).long()


def _mean(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


def _write_scan(settings: ScanInference, planes: ScanPlanes, inputs: torch.Tensor, geometry: list,
                outputs: NetworkOutputs, part: slice) -> ScanResult:
    """Turn one scan's share of the network outputs into its files; return its summary row."""
    models, view, size = settings.models, settings.view, settings.view.image_size
    folder = settings.inference_dir / planes.file.name
    is_volume = planes.volume is not None
    reconstructions = outputs.reconstructions[part, 0]
    codes = outputs.codes[part].numpy()
    ssim, psnr = outputs.ssim[part].numpy(), outputs.psnr[part].numpy()
    scored = planes.scored
    shown = figures.picture_slices(scored, settings.montage_slices)
    compared = figures.picture_slices(scored, settings.comparison_slices)
    top = models.uniform_bits  # the heat scale: what a prior that knows nothing pays per code

    # everything computed first, then written: a failure leaves the scan's earlier files as they were
    restored = view.to_input(reconstructions, geometry)
    files: dict[str, np.ndarray] = {"codes.npy": codes if is_volume else codes[0]}
    if outputs.top_codes is not None:
        top_codes = outputs.top_codes[part].numpy()
        files["codes_top.npy"] = top_codes if is_volume else top_codes[0]
    pictures = {"codes.png": figures.montage([figures.code_map(codes[k], models.num_embeddings, size)
                                              for k in shown])}
    bits_grid = bits_model = None
    score = None
    if outputs.bits is not None:
        bits_grid = outputs.bits[part]
        bits_model = F.interpolate(bits_grid[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        bits_input = view.to_input(bits_model, geometry)
        files["atypicality.npy"] = planes.to_volume(bits_input) if is_volume else bits_input[0]
        files["atypicality_codes.npy"] = bits_grid.numpy() if is_volume else bits_grid[0].numpy()
        pictures["atypicality.png"] = figures.montage([figures.heat_overlay(planes.planes[k], bits_input[k], top)
                                                       for k in shown])
        score = float(bits_grid[torch.from_numpy(scored)].mean())
    pictures["comparison.png"] = figures.comparison(
        inputs[compared, 0].numpy(), reconstructions[compared].numpy(), codes[compared], models.num_embeddings,
        None if bits_model is None else bits_model[compared].numpy(), top)
    per_slice = [{"slice": k, "scored": bool(scored[k]), "ssim": float(ssim[k]), "psnr": float(psnr[k]),
                  "bits_per_code": None if bits_grid is None else float(bits_grid[k].mean())}
                 for k in range(planes.count)]

    write_reconstruction(folder, planes, restored)
    for name, array in files.items():
        save_npy(folder / name, array.astype(np.float32) if name.startswith("atypicality") else array)
    for name, picture in pictures.items():
        save_png(picture, folder / name)
    write_csv(folder / "metrics.csv", per_slice, SLICE_COLUMNS if bits_grid is not None else SLICE_COLUMNS[:-1])
    return ScanResult(planes.file.name, str(planes.file.path), planes.file.kind, planes.count,
                      _mean(ssim[scored]), _mean(psnr[scored]), score, output_dir=str(folder),
                      comparison=str(folder / "comparison.png"))

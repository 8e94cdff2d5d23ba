"""Files of the generation stage: sampled and completed slices with their codes, the summary, the timings."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oasis_gen.generation.plausibility import format_report
from oasis_gen.utils.files import atomic_path, write_text
from oasis_gen.utils.pictures import code_map_picture, save_png, tile, to_uint8
from oasis_gen.utils.plain import plain

__all__ = ["Timed", "timed", "timing_metrics", "write_completion", "write_plausibility", "write_samples",
           "write_summary"]

logger = logging.getLogger(__name__)


@dataclass
class Timed:
    """A result and the wall-clock seconds it took."""

    value: Any
    seconds: float


def timed(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Timed:
    """Call ``function(*args, **kwargs)`` and time it (for config expressions, which cannot hold statements)."""
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return Timed(value, time.perf_counter() - start)


def _save_npy(path: Path, array: np.ndarray) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as stream:  # a file object: np.save would add ".npy" to tmp
        np.save(stream, array)
    return path


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _code_map(codes: np.ndarray, num_embeddings: int, shape: tuple[int, int]) -> np.ndarray:
    """Colour code map enlarged (nearest) to an image's ``(H, W)``, so it lines up with the slice."""
    coloured = code_map_picture(codes, num_embeddings, scale=1)
    rows = np.arange(shape[0]) * codes.shape[0] // shape[0]
    cols = np.arange(shape[1]) * codes.shape[1] // shape[1]
    return coloured[rows][:, cols]


def _pixel_mask(mask: torch.Tensor | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    mask = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask, dtype=bool)
    rows = np.arange(shape[0]) * mask.shape[0] // shape[0]
    cols = np.arange(shape[1]) * mask.shape[1] // shape[1]
    return mask[rows][:, cols]


def _remove_stale(out: Path, patterns: Sequence[str], count: int) -> None:
    """Remove numbered files of an earlier, larger run (``sample_020.png`` when 16 are written now)."""
    for pattern in patterns:
        for path in out.glob(pattern):
            index = re.search(r"_(\d+)\.[a-z]+$", path.name)
            if index and int(index[1]) >= count:
                path.unlink()


def write_samples(
    out_dir: str | Path, codes: torch.Tensor, images: torch.Tensor, num_embeddings: int, columns: int = 8
) -> dict[str, Any]:
    """
    Write generated slices and their codes, each file atomically.

    Files: ``sample_000.png`` ... (8-bit grayscale), ``codes_000.npy`` (int64 ``[h, w]``), ``codes_000.png`` (the
    code map, coloured by code and enlarged to the slice's size) and ``grid.png``: the slices on the top rows,
    their code maps below in the same order. Numbered files of an earlier, larger run in the folder are removed.

    Returns:
        ``{"samples": [...], "codes": [...], "code_maps": [...], "grid": path}``.
    """
    out = Path(out_dir)
    codes_np = codes.detach().cpu().numpy().astype(np.int64)
    if codes_np.ndim != 3 or images.dim() != 4 or images.shape[0] != codes_np.shape[0]:
        raise ValueError(f"expected codes [N, h, w] and images [N, 1, H, W], got {codes_np.shape} and "
                         f"{tuple(images.shape)}")
    shape = (int(images.shape[-2]), int(images.shape[-1]))
    files: dict[str, Any] = {"samples": [], "codes": [], "code_maps": []}
    pictures, maps = [], []
    for index, (grid, image) in enumerate(zip(codes_np, images, strict=True)):
        picture, code_map = to_uint8(image), _code_map(grid, num_embeddings, shape)
        files["samples"].append(save_png(picture, out / f"sample_{index:03d}.png"))
        files["codes"].append(_save_npy(out / f"codes_{index:03d}.npy", grid))
        files["code_maps"].append(save_png(code_map, out / f"codes_{index:03d}.png"))
        pictures.append(_rgb(picture))
        maps.append(code_map)
    _remove_stale(out, ("sample_*.png", "codes_*.npy", "codes_*.png"), len(pictures))
    columns = max(1, min(int(columns), len(pictures)))
    top, bottom = tile(pictures, columns), tile(maps, columns)
    gap = np.full((6, top.shape[1], 3), 255, dtype=np.uint8)
    files["grid"] = save_png(np.concatenate([top, gap, bottom]), out / "grid.png")
    return files


def write_completion(
    out_dir: str | Path,
    image: torch.Tensor,
    original_codes: torch.Tensor,
    completed_codes: torch.Tensor,
    images: torch.Tensor,
    region: torch.Tensor,
    num_embeddings: int,
) -> dict[str, Any]:
    """
    Write a completion, each file atomically.

    Files: ``original.png`` (the slice as the VQ-VAE sees it), ``masked.png`` (the region to complete in mid
    grey), ``completion_000.png`` ..., ``codes_original.npy``, ``codes_000.npy`` ... (the completed grids),
    ``region.npy`` (the bool code-grid mask) and ``grid.png``: original | masked | completions on the top row,
    the code maps of the same (the region in grey on the masked one) below.

    Returns:
        ``{"original", "masked", "codes_original", "region", "completions": [...], "codes": [...], "grid"}``.
    """
    out = Path(out_dir)
    original = to_uint8(image)
    hidden = _pixel_mask(region, original.shape)
    masked = np.where(hidden, np.uint8(128), original)
    given = original_codes.detach().cpu().numpy().astype(np.int64)
    completed = completed_codes.detach().cpu().numpy().astype(np.int64)
    files: dict[str, Any] = {
        "original": save_png(original, out / "original.png"),
        "masked": save_png(masked, out / "masked.png"),
        "codes_original": _save_npy(out / "codes_original.npy", given),
        "region": _save_npy(out / "region.npy", np.asarray(region.cpu(), dtype=bool)),
        "completions": [], "codes": [],
    }
    given_map = _code_map(given, num_embeddings, original.shape)
    pictures = [_rgb(original), _rgb(masked)]
    maps = [given_map, np.where(hidden[..., None], np.uint8(128), given_map)]
    for index, (grid, picture) in enumerate(zip(completed, images, strict=True)):
        cell = to_uint8(picture)
        files["completions"].append(save_png(cell, out / f"completion_{index:03d}.png"))
        files["codes"].append(_save_npy(out / f"codes_{index:03d}.npy", grid))
        pictures.append(_rgb(cell))
        maps.append(_code_map(grid, num_embeddings, original.shape))
    _remove_stale(out, ("completion_*.png", "codes_*.npy"), len(completed))
    files["grid"] = save_png(tile(pictures + maps, columns=len(pictures)), out / "grid.png")
    return files


def timing_metrics(samples: Timed, completion: Timed | None = None) -> dict[str, float]:
    """Seconds and rates of a sampling run (``samples`` from :func:`oasis_gen.generation.sampling.generate`,
    ``completion`` from :func:`oasis_gen.generation.sampling.complete_scan`, both through :func:`timed`), as MLflow
    metrics."""
    count = int(samples.value[0].shape[0])
    metrics = {"sampling_seconds": samples.seconds, "samples_per_second": count / max(samples.seconds, 1e-9)}
    if completion is not None:
        done = int(completion.value[1].shape[0])
        metrics["completion_seconds"] = completion.seconds
        metrics["completions_per_second"] = done / max(completion.seconds, 1e-9)
    return metrics


def write_summary(out_dir: str | Path, settings: Mapping[str, Any], metrics: Mapping[str, float]) -> Path:
    """Write ``summary.json`` (what ran and how fast) beside the samples, atomically."""
    summary = {"settings": plain(settings), "metrics": {k: round(float(v), 6) for k, v in metrics.items()}}
    path = write_text(Path(out_dir) / "summary.json", json.dumps(summary, indent=2) + "\n")
    logger.info("results in %s (grid.png, summary.json); %s", Path(out_dir),
                ", ".join(f"{k} {v:.3g}" for k, v in metrics.items()))
    return path


def write_plausibility(out_dir: str | Path, report: Mapping[str, float], heldout: Mapping[str, float]) -> Path:
    """Write ``plausibility.md``: the plausibility figures beside their real-vs-real floors, and the prior's held-out
    NLL; log the table too, so that the console shows it."""
    lines = ["# Do the samples look real?", "", format_report(dict(report))]
    if heldout:
        lines += ["", f"Held-out NLL of the prior on {int(heldout['nll_slices'])} test slices: "
                      f"{heldout['nll_bits_per_code']:.3f} bits per code, {heldout['nll_bits_per_slice']:.0f} bits "
                      f"per slice ({int(heldout['nll_codes_per_slice'])} codes per slice)."]
    text = "\n".join(lines) + "\n"
    path = write_text(Path(out_dir) / "plausibility.md", text)
    logger.info("plausibility of the samples (%s):\n%s", path, text)
    return path

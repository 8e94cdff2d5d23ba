"""The generation stage: new slices from a prior and its VQ-VAE, and completions of a region of a real slice.

The networks come as a pair (:func:`oasis_gen.generation.pair.load_pair`), the sampling itself from
:class:`oasis_gen.inferers.pixelcnn_inferer.VQVAEPixelCNNInferer` and :mod:`oasis_gen.inferers.pixelcnn_sampling`;
this module reads the stage's settings (with clear errors), the scan to complete and the region to resample.
:mod:`oasis_gen.generation.writers` writes the results; ``bundle/configs/sample.yaml`` runs them from the command
line.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from monai.utils import convert_to_tensor

from oasis_gen.inferers.pixelcnn_inferer import Codes, TwoLevelPrior, VQVAEPixelCNNInferer, encode_images
from oasis_gen.inferers.pixelcnn_truncation import check_truncation
from oasis_gen.networks.pixelcnn import GatedPixelCNN
from oasis_gen.utils.config_values import optional
from oasis_gen.utils.errors import ConfigError
from oasis_gen.utils.threads import sampling_threads

__all__ = ["REGIONS", "complete_scan", "generate", "load_scan", "region_mask"]

logger = logging.getLogger(__name__)

REGIONS = ("bottom_half", "top_half", "left_half", "right_half", "center", "rows:A-B")


def _model_device(model: GatedPixelCNN | TwoLevelPrior) -> torch.device:
    return next(model.parameters()).device


def _bottom(codes: Codes) -> torch.Tensor:
    """The finest code grids: those a single-level VQ-VAE has, the bottom ones of a two-level one."""
    return codes[1] if isinstance(codes, tuple) else codes


def _grid(grid: int | tuple[int, int]) -> tuple[int, int]:
    """``(h, w)`` of a code grid given as ``g`` or ``(h, w)``."""
    if isinstance(grid, int):
        return grid, grid
    height, width = grid
    return int(height), int(width)


def region_mask(name: str, grid: int | tuple[int, int]) -> torch.Tensor:
    """
    The code-grid positions a named region covers, as a bool ``[h, w]`` mask (True: resampled).

    Names: ``bottom_half``, ``top_half``, ``left_half``, ``right_half`` (an odd side gives the middle row or
    column to both halves), ``center`` (the middle half of the rows and of the columns: a quarter of the grid),
    and ``rows:A-B`` (code-grid rows A to B, both included, counted from 0 at the top; ``rows:A`` is one row).

    The prior fills positions in raster order, each from what lies above it and to its left, so a region's
    completion is informed by the given codes above it (and left of it on its rows), never by those below or
    right of it: ``bottom_half`` and ``rows:A-B`` use the most context, ``top_half`` none.

    Raises:
        ConfigError: unknown name, or rows outside the grid.
    """
    height, width = _grid(grid)
    text = str(name).strip().lower()
    mask = torch.zeros(height, width, dtype=torch.bool)
    if text == "bottom_half":
        mask[height // 2:] = True
    elif text == "top_half":
        mask[:(height + 1) // 2] = True
    elif text == "left_half":
        mask[:, :(width + 1) // 2] = True
    elif text == "right_half":
        mask[:, width // 2:] = True
    elif text == "center":
        mask[height // 4:height - height // 4, width // 4:width - width // 4] = True
    elif match := re.fullmatch(r"rows:\s*(\d+)\s*(?:-\s*(\d+))?", text):
        first, last = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if first > last or last >= height:
            raise ConfigError("region", f"{name!r} is outside the {height}-row code grid: use rows:A-B with "
                                        f"0 <= A <= B <= {height - 1}")
        mask[first:last + 1] = True
    else:
        raise ConfigError("region", f"unknown region {name!r}: use one of {', '.join(REGIONS)} (code-grid rows "
                                    f"A to B, 0-{height - 1})")
    return mask


def _as_int(value: Any, key: str, minimum: int | None = None) -> int:
    """A whole number from a config or command-line value (``16``, ``"16"``, ``16.0``), with a clear error."""
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a whole number, not {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        number = value if isinstance(value, int) else int(str(value).strip())
    except ValueError:
        raise ConfigError(key, f"expected a whole number, not {value!r}") from None
    if minimum is not None and number < minimum:
        raise ConfigError(key, f"must be at least {minimum}, not {number}")
    return number


def _as_temperature(value: Any) -> float:
    try:
        temperature = float(value)
    except (TypeError, ValueError):
        raise ConfigError("temperature", f"expected a number > 0, not {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(temperature) or temperature <= 0:
        raise ConfigError("temperature", f"expected a finite number > 0, not {value!r}")
    return temperature


def _label(prior: GatedPixelCNN, label: Any) -> int | None:
    """The class label for a conditional prior (``None`` for an unconditional one), with clear errors."""
    label = optional(label)
    if prior.num_classes is None:
        if label is not None:
            raise ConfigError("label", f"this prior is unconditional: leave label null (got {label!r})")
        return None
    if label is None:
        raise ConfigError("label", f"this prior is conditioned on {prior.num_classes} classes: pass --label "
                                   f"0..{prior.num_classes - 1}")
    number = _as_int(label, "label", minimum=0)
    if number >= prior.num_classes:
        raise ConfigError("label", f"this prior knows classes 0..{prior.num_classes - 1}, not {number}")
    return number


def _truncation(top_k: Any, top_p: Any) -> dict[str, dict[str, Any]]:
    """Checked ``top_k`` / ``top_p`` per level (each given once for every level or as ``{top: .., bottom: ..}``)."""
    settings: dict[str, dict[str, Any]] = {}
    for key, value in (("top_k", top_k), ("top_p", top_p)):
        per_level = dict(value) if isinstance(value, Mapping) else {"top": value, "bottom": value}
        unknown = sorted(set(per_level) - {"top", "bottom"})
        if unknown:
            raise ConfigError(key, f"per-level settings take the keys top and bottom, not {unknown}")
        for level, setting in per_level.items():
            try:
                per_level[level] = check_truncation(**{key: optional(setting)})[key == "top_p"]
            except ValueError as err:
                raise ConfigError(key, f"{level} level: {err}") from None
        settings[key] = per_level
    return settings


def _generator(prior: GatedPixelCNN, seed: Any) -> torch.Generator | None:
    seed = optional(seed)
    if seed is None:
        return None
    return torch.Generator(device=_model_device(prior)).manual_seed(_as_int(seed, "seed", minimum=0))


def generate(
    prior: GatedPixelCNN | TwoLevelPrior,
    vqvae: torch.nn.Module,
    num_samples: int = 16,
    temperature: float = 1.0,
    seed: int | None = 0,
    label: int | None = None,
    progress: bool = False,
    *,
    grid: int | tuple[int, int],
    top_k: Any = None,
    top_p: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Draw new slices: code grids from the prior (fast sampler), decoded by the VQ-VAE.

    Args:
        prior, vqvae: the two networks (see :func:`oasis_gen.generation.pair.load_pair`; their sizes are not
            checked here); for a two-level VQ-VAE a :class:`TwoLevelPrior` (top codes first, then the bottom).
        num_samples: number of slices.
        temperature: ``> 0``; below 1 sharper and more typical, above 1 more varied.
        seed: seed of the sampler's random generator (same seed, same samples); ``None``: not seeded.
        label: the class for a conditional prior, ``None`` for an unconditional one.
        progress: show a progress bar over code rows.
        grid: the code grid, ``g`` or ``(h, w)`` (``ModelPair.grid``); both networks are convolutional,
            so they cannot tell it themselves.
        top_k: draw each code from the k most likely (``None``: all); one value, or ``{top: k, bottom: k}`` per
            level of a two-level prior.
        top_p: draw each code from the smallest set of most likely codes holding p of the probability (nucleus;
            ``None``: all); per level as ``top_k``.

    Returns:
        ``(codes, images)``: int64 ``[N, h, w]`` (the bottom grids of a two-level VQ-VAE) and float32
        ``[N, 1, H, W]`` in [0, 1].
    """
    count = _as_int(num_samples, "num_samples", minimum=1)
    temperature = _as_temperature(temperature)
    label = _label(prior, label)
    truncation = _truncation(top_k, top_p)
    generator = _generator(prior, seed)
    with sampling_threads(_model_device(prior)):
        images, codes = VQVAEPixelCNNInferer().sample(vqvae, prior, count, _grid(grid), temperature, generator,
                                                      label, bool(progress), **truncation)
    return _bottom(codes), images


def complete_scan(
    prior: GatedPixelCNN | TwoLevelPrior,
    vqvae: torch.nn.Module,
    image: torch.Tensor,
    region: str | torch.Tensor = "bottom_half",
    temperature: float = 1.0,
    seed: int | None = 0,
    num_samples: int = 4,
    label: int | None = None,
    progress: bool = False,
    *,
    top_k: Any = None,
    top_p: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Complete a region of a real slice: encode it, resample the region's codes ``num_samples`` times (keeping
    all others exactly), decode.

    Args:
        image: the slice ``[1, H, W]`` (or ``[H, W]``) in [0, 1], at the VQ-VAE's size (see :func:`load_scan`).
        region: a name for :func:`region_mask` or a bool ``[h, w]`` mask of the code positions to resample (of
            the bottom grid of a two-level VQ-VAE: the top positions above it are resampled first).
        others: as :func:`generate`.

    Returns:
        ``(original_codes, completed_codes, images)``: int64 ``[h, w]``, int64 ``[N, h, w]`` and float32
        ``[N, 1, H, W]`` in [0, 1].
    """
    image = torch.as_tensor(image).float()
    if image.dim() == 2:
        image = image[None]
    if image.dim() != 3 or image.shape[0] != 1:
        raise ValueError(f"image must be one slice [1, H, W] or [H, W], got {tuple(image.shape)}")
    count = _as_int(num_samples, "num_completions", minimum=1)
    temperature = _as_temperature(temperature)
    label = _label(prior, label)
    truncation = _truncation(top_k, top_p)
    original = encode_images(vqvae, image[None])
    height, width = _bottom(original).shape[-2:]
    if isinstance(region, torch.Tensor):
        mask = region.bool()
        if mask.shape != (height, width):
            raise ValueError(f"region must be a bool mask of the code grid {height}x{width}, "
                             f"got {tuple(mask.shape)}")
    else:
        mask = region_mask(region, (height, width))
    device = _model_device(prior)
    generator = _generator(prior, seed)
    with sampling_threads(device):
        levels = original if isinstance(original, tuple) else (original,)
        given = tuple(level.to(device).expand(count, *level.shape[-2:]).contiguous() for level in levels)
        images, completed = VQVAEPixelCNNInferer().complete(vqvae, prior, given if len(given) == 2 else given[0],
                                                            mask.to(device), temperature, generator, label,
                                                            bool(progress), **truncation)
    return _bottom(original)[0], _bottom(completed), images


def load_scan(path: str | Path, image_size: int) -> torch.Tensor:
    """
    Read a slice for completion as the VQ-VAE sees it: ``[1, image_size, image_size]`` float32 in [0, 1].

    Image files (PNG/JPEG) go through the evaluation transforms (scale, pad to square, resize); for a volume
    (NIfTI/Analyze) the middle axial slice is used.

    Raises:
        DataError: missing, unreadable or unsupported file.
    """
    from oasis_gen.data import decode_intensity, eval_transforms
    from oasis_gen.data.readers import read_volume, resolve_axis, scan_kind
    from oasis_gen.utils.errors import DataError, find_user_error

    path = Path(str(path))
    if not path.is_file():
        raise DataError(path, "scan to complete not found")
    kind = scan_kind(path)
    if kind is None:
        raise DataError(path, "not a slice (PNG/JPEG) or volume (NIfTI/Analyze) by its name")
    record: dict[str, Any] = {"image": str(path)}
    if kind == "volume":
        axis = resolve_axis(path, "axial")
        record.update(axis=axis, slice=read_volume(str(path)).data.shape[axis] // 2)
        logger.info("completing the middle axial slice (%d) of %s", record["slice"], path)
    try:
        # the uint8 chain of the prior's training codes, so a training slice gets exactly its cached codes
        image = eval_transforms(int(image_size), "uint8")(record)["image"]
    except Exception as err:  # MONAI wraps transform errors: report the reader's own
        user_error = find_user_error(err)
        if user_error is not None:
            raise user_error from None
        raise
    image = decode_intensity(convert_to_tensor(image, track_meta=False))
    return image.reshape(1, int(image_size), int(image_size))

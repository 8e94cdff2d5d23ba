"""A synthetic demo cohort in the OASIS preprocessed-slices layout, built offline from the MNI152 template.

Real OASIS scans cannot be downloaded everywhere (and never inside tests), so every pseudo-subject here is
the skull-stripped MNI152 T1 template that ships inside the nilearn wheel, put through its own smooth random
deformation, bias field and intensity change with MONAI's random transforms. The slices are written exactly
like the ``keras_png_slices_*`` folders of the preprocessed OASIS release, so the same loader reads both.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import convert_to_tensor
from tqdm import tqdm

from oasis_gen import __version__
from oasis_gen.utils.files import is_temporary, write_text
from oasis_gen.utils.pictures import save_png
from oasis_gen.utils.threads import torch_threads

__all__ = ["build_demo_cohort", "demo_dataset", "SPLITS", "SPLIT_DIRS", "MANIFEST_NAME"]

logger = logging.getLogger(__name__)

SPLITS: tuple[str, str, str] = ("train", "validate", "test")
SPLIT_DIRS: dict[str, str] = {name: f"keras_png_slices_{name}" for name in SPLITS}
MANIFEST_NAME = "manifest.json"

# Bumped whenever the images change for the same arguments, so that an old cohort on disk is rebuilt.
_RECIPE_VERSION = 1
_CASE_PNG = re.compile(r"^case_\d{3,}_slice_\d+\.nii\.png$")

# Room around the brain's bounding box, as a fraction of its longer in-plane side, so that the random
# rotation, scaling and translation below do not push brain out of the frame (OASIS slices also keep a rim).
_MARGIN = 0.08
# Room above and below the brain in mm: only the small translation and tilt can move brain there.
_MARGIN_Z_MM = 10.0
# Spacing of the axial planes of the working volume in mm, whatever `size` is: fine enough to place the
# slices (interpolated between planes), coarse enough that the 3D resampling stays cheap (it dominates).
_PLANE_MM = 2.5
# A plane is "brain" when its brain area is at least this fraction of the largest plane's area; the tip of
# the cerebellum and the vertex hold too little brain to be useful training slices.
_MIN_AREA_FRACTION = 0.25

# Spatial transforms, applied to the whole volume (image and brain mask together, so the mask follows).
# The volume is held as (axial planes, rows, columns) so that a plane is contiguous in memory; the angles are
# radians about those axes in that order. The in-plane rotation is the largest, like the residual head turn
# left after OASIS's atlas registration.
_ROTATE = (0.12, 0.05, 0.05)
_SCALE = (0.08, 0.08, 0.08)
_TRANSLATE_MM = (4.0, 4.0, 4.0)
# Smooth non-linear deformation: random displacements on a coarse grid of control points, upsampled
# trilinearly; 0.04 of the half-width (about 4 mm here) changes sulci and ventricles without folding.
_DEFORM_CONTROL_POINTS = (6, 6, 6)
_DEFORM_RANGE = 0.04
# Intensity transforms, applied to the stack of chosen slices rather than the volume: they are voxel-wise or
# smooth across the stack, so the look is the same, and the stack has less than half the planes.
_BIAS_DEGREE = 3
_BIAS_COEFF = (0.0, 0.08)
# A gamma above one darkens grey matter and CSF relative to white matter: the template's contrast is flatter
# than that of a single T1 scan such as OASIS's MP-RAGE averages.
_GAMMA = (1.1, 1.7)
# Brain intensities are scaled so that this percentile lands at _TOP, leaving head-room for the random scale
# below so that almost nothing saturates at 255.
_NORM_PERCENTILE = 99.5
_TOP = 0.88
_SCALE_INTENSITY = 0.08
_NOISE_STD = 0.015


def build_demo_cohort(
    out_dir: str | Path,
    subjects: int = 60,
    size: int = 128,
    seed: int = 0,
    slices_per_subject: int = 32,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    progress: bool = True,
) -> Path:
    """Write an OASIS-layout PNG tree built from the MNI152 template; return the manifest path."""
    _check_args(subjects, size, seed, slices_per_subject, split)
    start = time.perf_counter()
    out = Path(out_dir)
    manifest_path = out / MANIFEST_NAME

    assignment = _assign_splits(subjects, split, seed)
    expected = {
        name: {_png_name(sid, k) for sid in ids for k in range(slices_per_subject)}
        for name, ids in assignment.items()
    }
    manifest = _manifest(subjects, size, seed, slices_per_subject, split, assignment)
    if _is_complete(out, manifest, expected):
        logger.info("demo cohort in %s already matches these arguments; not rebuilding", out)
        return manifest_path

    logger.info(
        "building demo cohort in %s: %d subjects x %d slices at %dx%d (seed %d)",
        out,
        subjects,
        slices_per_subject,
        size,
        size,
        seed,
    )
    out.mkdir(parents=True, exist_ok=True)
    # Drop the manifest first: it marks a cohort complete, and must not vouch for a half-rebuilt tree.
    manifest_path.unlink(missing_ok=True)
    _remove_stale(out, expected)

    # a subject is a few MB handled by many short ops: on 2 cores shared with other work, one thread built 12
    # subjects at 128 px in 6-7 s against 10-14 s with two, and a tiny test cohort in 0.14 s against 1.4 s
    with torch_threads(1), _no_meta():
        image, mask, voxel_mm = _load_template(size)
        transforms = _make_transforms(tuple(image.shape[1:]), voxel_mm)
        split_of = {sid: name for name, ids in assignment.items() for sid in ids}
        for index in tqdm(range(1, subjects + 1), desc="demo cohort", unit="subject", disable=not progress):
            sid = f"{index:03d}"
            slices = _make_subject(image, mask, transforms, seed, index, slices_per_subject)
            folder = out / SPLIT_DIRS[split_of[sid]]
            for k, pixels in enumerate(slices):
                save_png(pixels, folder / _png_name(sid, k))

    manifest["elapsed_seconds"] = round(time.perf_counter() - start, 3)
    write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    logger.info("demo cohort written in %.1f s: %s", manifest["elapsed_seconds"], manifest["slices"])
    return manifest_path


def _check_args(subjects: int, size: int, seed: int, slices_per_subject: int, split: Sequence[float]) -> None:
    """Raise ValueError naming the first argument that cannot make a cohort."""

    def is_int(value: Any) -> bool:
        # bool is an int subclass, but `subjects=True` is a bug, not a request for one subject.
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if not is_int(subjects) or subjects < 3:
        raise ValueError(
            f"subjects must be an integer >= 3 (one each for train, validate and test), got {subjects!r}"
        )
    if not is_int(size) or size < 16:
        raise ValueError(f"size must be an integer >= 16 pixels, got {size!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not is_int(slices_per_subject) or slices_per_subject < 1:
        raise ValueError(f"slices_per_subject must be an integer >= 1, got {slices_per_subject!r}")
    try:
        ratios = [float(r) for r in split]
    except (TypeError, ValueError):
        raise ValueError(f"split must be three numbers (train, validate, test), got {split!r}") from None
    if len(ratios) != 3 or any(not np.isfinite(r) or r <= 0 for r in ratios):
        raise ValueError(f"split must be three positive numbers (train, validate, test), got {split!r}")
    if abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"split ratios must add up to 1, got {split!r} (sum {sum(ratios):g})")


def _split_counts(subjects: int, split: Sequence[float]) -> list[int]:
    """Subjects per split by largest remainder, with at least one subject in every split."""
    quotas = [subjects * float(r) for r in split]
    counts = [int(q) for q in quotas]
    # Ties go to the earlier split so that the counts never depend on float noise in the ordering.
    by_remainder = sorted(range(3), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: subjects - sum(counts)]:
        counts[i] += 1
    for i in range(3):
        if counts[i] == 0:
            counts[max(range(3), key=lambda j: counts[j])] -= 1
            counts[i] = 1
    return counts


def _assign_splits(subjects: int, split: Sequence[float], seed: int) -> dict[str, list[str]]:
    """Shuffle the subject ids with a generator of their own and cut them into the three splits."""
    ids = [f"{i:03d}" for i in range(1, subjects + 1)]
    # A stream separate from the per-subject image streams (see _make_subject), never the global RNG.
    order = np.random.default_rng(np.random.SeedSequence([seed, 0xD5])).permutation(subjects)
    counts = _split_counts(subjects, split)
    assignment, start = {}, 0
    for name, count in zip(SPLITS, counts, strict=True):
        assignment[name] = sorted(ids[i] for i in order[start : start + count])
        start += count
    return assignment


def _png_name(sid: str, k: int) -> str:
    """The OASIS file name of slice `k` of subject `sid`."""
    return f"case_{sid}_slice_{k}.nii.png"


def _transform_record(size: int, slices_per_subject: int) -> list[dict[str, Any]]:
    """The transforms and their parameters, as recorded in (and compared through) the manifest."""
    return [
        {"name": "skull-strip", "how": "template x load_mni152_brain_mask(resolution=1)"},
        {
            "name": "crop-pad-resize",
            "how": "square in-plane box around the brain, then monai Resize (area down, trilinear up)",
            "margin": _MARGIN,
            "margin_z_mm": _MARGIN_Z_MM,
            "plane_mm": _PLANE_MM,
            "in_plane": [size, size],
        },
        {
            "name": "monai.transforms.RandAffine",
            "prob": 1.0,
            "rotate_range_rad": list(_ROTATE),
            "scale_range": list(_SCALE),
            "translate_range_mm": list(_TRANSLATE_MM),
            "mode": "bilinear",
            "padding_mode": "zeros",
        },
        {
            "name": "monai.transforms.RandSmoothDeform",
            "prob": 1.0,
            "rand_size": list(_DEFORM_CONTROL_POINTS),
            "def_range": _DEFORM_RANGE,
            "field_mode": "trilinear",
            "grid_mode": "bilinear",
            "grid_padding_mode": "zeros",
        },
        {
            "name": "axial-slices",
            "how": "evenly spaced, inferior to superior, linear interpolation between planes",
            "count": slices_per_subject,
            "min_area_fraction": _MIN_AREA_FRACTION,
        },
        {
            "name": "monai.transforms.RandBiasField",
            "prob": 1.0,
            "degree": _BIAS_DEGREE,
            "coeff_range": list(_BIAS_COEFF),
        },
        {"name": "monai.transforms.RandAdjustContrast", "prob": 1.0, "gamma": list(_GAMMA)},
        {"name": "percentile-scale", "percentile": _NORM_PERCENTILE, "to": _TOP},
        {"name": "monai.transforms.RandScaleIntensity", "prob": 1.0, "factors": _SCALE_INTENSITY},
        {"name": "monai.transforms.RandGaussianNoise", "prob": 1.0, "mean": 0.0, "std": _NOISE_STD},
        {
            "name": "re-mask-and-quantise",
            "how": "zero outside the deformed brain mask, clip to [0, 1], x255, round",
        },
    ]


def _manifest(
    subjects: int,
    size: int,
    seed: int,
    slices_per_subject: int,
    split: Sequence[float],
    assignment: dict[str, list[str]],
) -> dict[str, Any]:
    """Everything that determines the cohort, plus the per-split ids and counts (elapsed time added later)."""
    import monai
    import nilearn

    return {
        "generator": {"name": "oasis_gen.data.demo", "version": __version__, "recipe": _RECIPE_VERSION},
        # The random streams of MONAI and the resampling of torch may change between releases.
        "software": {
            "monai": monai.__version__,
            "torch": torch.__version__,
            "nilearn": nilearn.__version__,
            "numpy": np.__version__,
        },
        "template": {
            "name": "MNI152 T1 1 mm (nilearn.datasets.load_mni152_template, resolution=1)",
            "mask": "nilearn.datasets.load_mni152_brain_mask(resolution=1)",
            "shape": list(_template_shape()),
        },
        "seed": seed,
        "subjects": subjects,
        "size": size,
        "slices_per_subject": slices_per_subject,
        "orientation": "rows anterior to posterior, columns subject left to right (neurological)",
        "png": {"mode": "L", "bits": 8, "name": "case_<subject>_slice_<k>.nii.png"},
        "transforms": _transform_record(size, slices_per_subject),
        "split": {
            "ratios": dict(zip(SPLITS, (float(r) for r in split), strict=True)),
            "folders": SPLIT_DIRS,
            "subjects": assignment,
        },
        "slices": {name: len(ids) * slices_per_subject for name, ids in assignment.items()},
    }


def _template_shape() -> tuple[int, ...]:
    """Shape of the 1 mm template as nilearn loads it."""
    from nilearn.datasets import load_mni152_template

    return tuple(int(n) for n in load_mni152_template(resolution=1).shape)


def _is_complete(out: Path, manifest: dict[str, Any], expected: dict[str, set[str]]) -> bool:
    """True when `out` holds a cohort made with the same parameters and exactly its files."""
    try:
        on_disk = json.loads((out / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(on_disk, dict):
        return False
    on_disk.pop("elapsed_seconds", None)
    if on_disk != manifest:
        return False
    for name, files in expected.items():
        folder = out / SPLIT_DIRS[name]
        try:
            present = {entry.name for entry in os.scandir(folder) if _CASE_PNG.match(entry.name)}
        except OSError:
            return False
        if present != files:
            return False
    return True


def _remove_stale(out: Path, expected: dict[str, set[str]]) -> None:
    """Delete case PNGs and temp files of an earlier cohort that the new one will not overwrite."""
    for name in SPLITS:
        folder = out / SPLIT_DIRS[name]
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            stale_png = _CASE_PNG.match(entry.name) and entry.name not in expected[name]
            if entry.is_file() and (stale_png or is_temporary(entry.name)):
                os.unlink(entry.path)


@contextmanager
def _no_meta() -> Iterator[None]:
    """Turn MONAI's MetaTensor tracking off for the build: no metadata is needed and it costs time per op."""
    from monai.data import get_track_meta, set_track_meta

    before = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(before)


# Cached because tests and notebooks build several cohorts in one process; callers never modify the tensors.
@lru_cache(maxsize=2)
def _load_template(size: int) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float, float]]:
    """Skull-stripped template and mask, cropped around the brain and resized so that a plane is size x size.

    Returns (image, mask, voxel size in mm), both tensors shaped (1, depth, size, size): planes inferior to
    superior, rows anterior to posterior, columns left to right, i.e. each plane in display order.
    """
    from monai.transforms import Resize
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    template = load_mni152_template(resolution=1)
    mask = load_mni152_brain_mask(resolution=1)
    if not np.allclose(template.affine, mask.affine) or template.shape != mask.shape:
        raise RuntimeError("nilearn's MNI152 template and brain mask are not on the same grid")
    # The nilearn template is RAS with a diagonal affine: axis 0 runs left to right, axis 1 posterior to
    # anterior, axis 2 inferior to superior. Reversing the axes and flipping the rows puts anterior at the
    # top of each axial plane, as the OASIS slices show it.
    brain = np.asarray(mask.get_fdata(dtype=np.float32) > 0.5)
    volume = np.asarray(template.get_fdata(dtype=np.float32)) * brain
    volume = np.flip(volume.transpose(2, 1, 0), axis=1)
    brain = np.flip(brain.transpose(2, 1, 0), axis=1)
    spacing = np.abs(np.diag(template.affine)[:3])[[2, 1, 0]]

    # A square in-plane box centred on the brain (the 3D equivalent of padding every slice to a square and
    # resizing it), so that the brain fills the frame the way it does in the OASIS slices.
    where = np.argwhere(brain)
    lo, hi = where.min(axis=0), where.max(axis=0) + 1
    extent_mm = (hi - lo) * spacing
    side_mm = float(max(extent_mm[1], extent_mm[2]) * (1 + 2 * _MARGIN))
    box_mm = np.array([extent_mm[0] + 2 * _MARGIN_Z_MM, side_mm, side_mm])
    box = np.round(box_mm / spacing).astype(int)
    start = np.round((lo + hi) / 2 - box / 2).astype(int)
    stack = np.stack([volume, brain.astype(np.float32)])
    stack = _crop_or_pad(stack, start, box)

    in_plane_mm = side_mm / size
    depth = max(2, int(round(box_mm[0] / _PLANE_MM)))
    # "area" averages when shrinking (anti-aliased and fast); it would only repeat voxels when enlarging.
    mode = "area" if size <= box[1] else "trilinear"
    resized = Resize((depth, size, size), mode=mode)(torch.from_numpy(stack))
    resized = _plain(resized).contiguous()
    voxel_mm = (box_mm[0] / depth, in_plane_mm, in_plane_mm)
    return resized[:1].clone(), resized[1:].clone(), voxel_mm


def _crop_or_pad(stack: np.ndarray, start: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The `box`-shaped window of (C, D, H, W) `stack` starting at `start`, zero-filled outside the volume."""
    out = np.zeros((stack.shape[0], *box), dtype=np.float32)
    src, dst = [slice(None)], [slice(None)]
    for axis in range(3):
        begin, end = start[axis], start[axis] + box[axis]
        lo, hi = max(begin, 0), min(end, stack.shape[axis + 1])
        src.append(slice(lo, hi))
        dst.append(slice(lo - begin, hi - begin))
    out[tuple(dst)] = stack[tuple(src)]
    return out


def _make_transforms(shape: tuple[int, int, int], voxel_mm: Sequence[float]) -> dict[str, Any]:
    """The MONAI random transforms, built once per cohort and re-seeded for every subject."""
    from monai.transforms import (
        RandAdjustContrast,
        RandAffine,
        RandBiasField,
        RandGaussianNoise,
        RandScaleIntensity,
        RandSmoothDeform,
    )

    affine = RandAffine(
        prob=1.0,
        rotate_range=_ROTATE,
        scale_range=_SCALE,
        translate_range=tuple(mm / v for mm, v in zip(_TRANSLATE_MM, voxel_mm, strict=True)),
        mode="bilinear",
        padding_mode="zeros",
        # Every subject has the same grid, so the identity grid is built once.
        spatial_size=shape,
        cache_grid=True,
    )
    # RandAffine resamples in float64 by default; float32 is ample for 8-bit output and saves copying every
    # volume to float64 and back (about a tenth of the time per subject went there).
    affine.resampler.dtype = torch.float32
    return {
        "affine": affine,
        "deform": RandSmoothDeform(
            spatial_size=shape,
            rand_size=_DEFORM_CONTROL_POINTS,
            field_mode="trilinear",
            align_corners=True,
            prob=1.0,
            def_range=_DEFORM_RANGE,
            grid_mode="bilinear",
            grid_padding_mode="zeros",
            # With align_corners the sampling grid built from linspace(-1, 1) is the identity where the field
            # is zero; without it every subject would also be zoomed by one voxel's worth.
            grid_align_corners=True,
        ),
        "bias": RandBiasField(degree=_BIAS_DEGREE, coeff_range=_BIAS_COEFF, prob=1.0),
        "contrast": RandAdjustContrast(prob=1.0, gamma=_GAMMA),
        "scale": RandScaleIntensity(factors=_SCALE_INTENSITY, prob=1.0),
        "noise": RandGaussianNoise(prob=1.0, mean=0.0, std=_NOISE_STD),
    }


def _make_subject(
    image: torch.Tensor,
    mask: torch.Tensor,
    transforms: dict[str, Any],
    seed: int,
    index: int,
    slices: int,
) -> list[np.ndarray]:
    """The uint8 axial slices of pseudo-subject `index`, inferior to superior."""
    # One seed per transform from (cohort seed, subject): a subject's images do not depend on how many
    # subjects are built or in which order, and nothing touches the global numpy or torch state.
    states = np.random.SeedSequence([seed, index]).generate_state(len(transforms))
    for transform, state in zip(transforms.values(), states, strict=True):
        transform.set_random_state(seed=int(state))

    stack = torch.cat([image, mask])
    stack = _plain(transforms["affine"](stack))
    stack = _plain(transforms["deform"](stack))
    # The mask was resampled like the image, so it is fractional at the edge; half marks the boundary.
    planes = _slice_positions(stack[1] > 0.5, slices)
    picked = _interpolate_planes(stack[:1], planes)
    picked_brain = _interpolate_planes(stack[1:], planes) > 0.5
    picked = picked * picked_brain

    picked = _plain(transforms["bias"](picked)) * picked_brain
    picked = _plain(transforms["contrast"](picked))
    inside = picked[picked_brain]
    # kthvalue rather than quantile: a selection, not a full sort of every brain voxel.
    rank = int(round(_NORM_PERCENTILE / 100 * (inside.numel() - 1))) + 1
    reference = float(inside.kthvalue(rank).values) if inside.numel() else 1.0
    picked = picked * (_TOP / max(reference, 1e-6))
    picked = _plain(transforms["scale"](picked))
    picked = _plain(transforms["noise"](picked))
    # OASIS slices are masked: the background is exactly zero, noise included.
    picked = (picked * picked_brain).clamp(0.0, 1.0)
    pixels = torch.round(picked[0] * 255).to(torch.uint8).numpy()
    return list(pixels)


def _plain(data: Any) -> torch.Tensor:
    """A plain float32 tensor: MONAI returns MetaTensors, whose bookkeeping only slows the arithmetic down."""
    return convert_to_tensor(data, track_meta=False).float()


def _slice_positions(brain: torch.Tensor, count: int) -> np.ndarray:
    """`count` evenly spaced fractional plane indices spanning the planes that hold enough brain."""
    area = brain.sum(dim=(1, 2)).numpy()
    keep = np.flatnonzero(area >= _MIN_AREA_FRACTION * area.max()) if area.max() > 0 else np.array([0])
    first, last = int(keep[0]), int(keep[-1])
    return np.linspace(first, last, count) if count > 1 else np.array([(first + last) / 2])


def _interpolate_planes(volume: torch.Tensor, planes: np.ndarray) -> torch.Tensor:
    """The (C, len(planes), H, W) stack of axial planes at fractional indices, linear between neighbours."""
    below = np.clip(np.floor(planes).astype(np.int64), 0, volume.shape[1] - 1)
    above = np.clip(below + 1, 0, volume.shape[1] - 1)
    weight = torch.from_numpy((planes - below).astype(np.float32)).view(1, -1, 1, 1)
    # index_select copies whole planes; fancy indexing would gather element by element, many times slower.
    lower = volume.index_select(1, torch.from_numpy(below))
    upper = volume.index_select(1, torch.from_numpy(above))
    return torch.lerp(lower, upper, weight)


def demo_dataset(out_dir: str | Path = "data/demo") -> str:
    """The default dataset: the demo cohort in out_dir, built with the default settings if it is not there yet."""
    out = Path(out_dir)
    if not (out / MANIFEST_NAME).is_file():
        logger.info("no dataset given and no demo cohort in %s yet: building it (about half a minute)", out)
        build_demo_cohort(out)
    return str(out)

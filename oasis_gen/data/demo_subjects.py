"""The pseudo-subjects of the demo cohort: the MNI152 template, deformed and re-contrasted by MONAI's random transforms.

Each subject is the skull-stripped template put through its own smooth random deformation, bias field and
intensity change, then sliced axially; :mod:`oasis_gen.data.demo` writes the slices in the OASIS layout.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from monai.utils import convert_to_tensor

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


def transform_record(size: int, slices_per_subject: int) -> list[dict[str, Any]]:
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


def template_shape() -> tuple[int, ...]:
    """Shape of the 1 mm template as nilearn loads it."""
    from nilearn.datasets import load_mni152_template

    return tuple(int(n) for n in load_mni152_template(resolution=1).shape)


@contextmanager
def no_meta() -> Iterator[None]:
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
def load_template(size: int) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float, float]]:
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


def make_transforms(shape: tuple[int, int, int], voxel_mm: Sequence[float]) -> dict[str, Any]:
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


def make_subject(
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

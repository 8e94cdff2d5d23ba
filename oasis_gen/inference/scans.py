"""The scans a user points inference at: finding them, reading them as stacks of planes, and the VQ-VAE's view.

A scan is one file: a 2D slice (PNG/JPEG) or a 3D volume (NIfTI/Analyze). Either is read as planes
``[S, H, W]`` in [0, 1] (``S = 1`` for a slice), scaled and turned exactly as training reads them
(:mod:`oasis_gen.data.readers`), so the VQ-VAE sees what it was trained on. :class:`ModelView` resizes and pads
all planes of a scan in one call (planes as channels) and undoes that geometry on the way back.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor

from oasis_gen.data.layouts import parse_slice_name, parse_volume_subject
from oasis_gen.data.readers import (
    UPPER_PERCENTILE,
    Volume,
    brain_fractions,
    planes_to_volume,
    read_slice,
    read_volume,
    resolve_axis,
    scan_kind,
    volume_planes,
    volume_stem,
)
from oasis_gen.data.transforms import EncodeIntensity, decode_intensity, model_geometry
from oasis_gen.generation.codes import slice_labels
from oasis_gen.utils.errors import ConfigError, DataError

__all__ = ["ModelView", "ScanFile", "ScanPlanes", "find_inputs", "list_files", "read_planes", "scan_labels",
           "volume_labels"]

_SLICE_SUFFIX = re.compile(r"(\.nii)?\.(png|jpe?g)$", re.IGNORECASE)


@dataclass(frozen=True)
class ScanFile:
    """One input scan: its file, the output folder name under ``inference_dir``, and what kind it is."""

    path: Path
    name: str
    kind: str  # "slice" | "volume"
    subject: str
    index: int  # slice index from an OASIS-style slice name (0 for volumes and unknown names)

    @property
    def suffix(self) -> str:
        """The file's format suffix, lower case: .png, .jpg, .jpeg, .nii, .nii.gz, .img (an Analyze pair)."""
        name = self.path.name.lower()
        if name.endswith(".nii.gz"):
            return ".nii.gz"
        return ".img" if name.endswith(".hdr") else self.path.suffix.lower()


def _stem(path: Path) -> str:
    return volume_stem(path) if scan_kind(path) == "volume" else _SLICE_SUFFIX.sub("", path.name)


def list_files(root: Path) -> list[Path]:
    """Every slice and volume file under a folder, recursively, sorted; an Analyze pair counts once (its .img).

    Unlike :func:`oasis_gen.data.layouts.list_scans` nothing is chosen for training: every scan found is used
    (segmentation label folders ``keras_png_slices_seg_*`` apart).
    """
    files = []
    for path in root.rglob("*"):
        if not path.is_file() or scan_kind(path) is None:
            continue
        if any(part.lower().startswith("keras_png_slices_seg") for part in path.relative_to(root).parts):
            continue
        if path.suffix.lower() == ".hdr" and any(path.with_suffix(s).is_file() for s in (".img", ".IMG")):
            continue
        files.append(path)
    return sorted(files)


def find_inputs(source: Any, exclude: str | Path | None = None) -> list[ScanFile]:
    """
    The scans under ``source`` (a file, or a folder searched recursively; one entry per Analyze pair).

    Output names mirror the input tree (``sub/scan`` for ``<source>/sub/scan.nii.gz``); two files that would
    share a name (``a.png`` and ``a.nii``) are told apart by their suffix (``a_png``, ``a_nii``). Files under
    ``exclude`` (the output folder, when it lies inside the input) are left out.

    Raises:
        ConfigError: no input given.
        DataError: the input does not exist, is not a scan, or is a folder without scans.
    """
    if source is None or str(source).strip().lower() in ("", "null", "none"):
        raise ConfigError("input", "no scans given: pass --input path/to/scan-or-folder")
    root = Path(str(source)).expanduser()
    if not root.exists():
        raise DataError(root, "input not found")
    if root.is_file():
        if scan_kind(root) is None:
            raise DataError(root, "not a PNG/JPEG slice or a NIfTI/Analyze volume")
        files, base = [root], root.parent
    else:
        skip = Path(exclude).resolve() if exclude else None
        files = [p for p in list_files(root) if skip is None or not p.resolve().is_relative_to(skip)]
        if not files:
            raise DataError(root, "no PNG/JPEG slices or NIfTI/Analyze volumes found")
        base = root
    names = [(p.relative_to(base).parent / _stem(p)).as_posix() for p in files]
    repeated = {name for name, count in Counter(names).items() if count > 1}
    scans = []
    for path, name in zip(files, names, strict=True):
        if name in repeated:
            name = (path.relative_to(base).parent / path.name.replace(".", "_")).as_posix()
        if scan_kind(path) == "volume":
            scans.append(ScanFile(path, name, "volume", parse_volume_subject(path), 0))
        else:
            subject, index = parse_slice_name(path)
            scans.append(ScanFile(path, name, "slice", subject, index))
    return scans


@dataclass
class ScanPlanes:
    """A scan read as planes in [0, 1], with what is needed to write results back in its own space."""

    file: ScanFile
    planes: np.ndarray  # [S, H, W] float32 in [0, 1], top row first (as training reads them)
    scored: np.ndarray  # bool [S]: planes that count in the scan's scores (volumes: slices with enough brain)
    axis: int | None = None  # volumes: the array axis the planes are cut along
    volume: Volume | None = None
    image: Any = None  # volumes: the nibabel image (its class, header and affine are kept on writing)
    intensity_range: tuple[float, float] | None = None  # volumes: the raw values mapped to 0 and 1

    @property
    def count(self) -> int:
        """Number of planes ``S``."""
        return int(self.planes.shape[0])

    def to_volume(self, planes: np.ndarray) -> np.ndarray:
        """Stack planes ``[S, H, W]`` (as :attr:`planes` is turned) back into the file's own array layout and shape
        (its stored orientation), so that a result lines up with the input voxel for voxel."""
        if self.axis is None or self.volume is None:
            raise ValueError("only a volume has a 3D layout")
        return self.volume.to_stored(planes_to_volume(planes, self.axis))


def read_planes(scan: ScanFile, slice_axis: int | str = "axial", min_brain_fraction: float = 0.1) -> ScanPlanes:
    """
    Read a scan as planes scaled to [0, 1] exactly as training reads it.

    A volume is cut into every plane along ``slice_axis``; those with at least ``min_brain_fraction`` of brain
    (all, if none has) are the ones its scores count, as training keeps only those.

    Raises:
        DataError: unreadable, truncated, NaN/inf, empty (one value everywhere) or not 3D.
    """
    if scan.kind == "slice":
        plane = read_slice(scan.path)
        if float(plane.max()) <= float(plane.min()):
            raise DataError(scan.path, "empty image (every value is the same)")
        return ScanPlanes(scan, plane[None], np.ones(1, dtype=bool))
    volume = read_volume(str(scan.path))
    axis = resolve_axis(scan.path, slice_axis)
    fractions = brain_fractions(volume, axis)
    if float(fractions.max()) <= 0:
        raise DataError(scan.path, "empty volume (no voxel above background)")
    scored = fractions >= float(min_brain_fraction)
    planes = volume_planes(volume.data, axis)
    image = nib.load(str(scan.path))
    return ScanPlanes(scan, planes, scored if scored.any() else np.ones_like(scored), axis, volume, image,
                      _intensity_range(np.asarray(image.dataobj, dtype=np.float32)))


def _intensity_range(raw: np.ndarray) -> tuple[float, float]:
    """The raw values that :func:`oasis_gen.data.readers.scale_unit` maps to 0 and 1 (minimum, upper percentile)."""
    low, high = float(raw.min()), float(np.percentile(raw, UPPER_PERCENTILE))
    return low, (high if high > low else float(raw.max()))


def volume_labels(scored: np.ndarray, num_classes: int) -> np.ndarray:
    """Slice-position buckets of a volume's planes, as training assigns them over the planes it keeps."""
    kept = np.flatnonzero(scored)
    low, high = int(kept.min()), int(kept.max())
    position = (np.arange(len(scored)) - low) / (high - low + 1)
    return np.clip((position * num_classes).astype(int), 0, num_classes - 1)


def scan_labels(scans: list[ScanFile], num_classes: int | None) -> dict[Path, int]:
    """Slice-position buckets of the slice files, from each subject's range of slice indices (as training)."""
    slices = [s for s in scans if s.kind == "slice"]
    labels = slice_labels([{"subject": s.subject, "slice": s.index} for s in slices], num_classes)
    return {s.path: label for s, label in zip(slices, labels, strict=True)}


class ModelView:
    """
    The planes of a scan as the VQ-VAE sees them (training's :func:`~oasis_gen.data.transforms.model_geometry`,
    rounded to 8 bits like the training cache), and the way back to the planes' own size (MONAI's inverse of
    the same transforms).
    """

    def __init__(self, image_size: int):
        self.image_size = int(image_size)
        self.transform = model_geometry(self.image_size)  # training's own chain (all planes as channels at once)
        self.encode = EncodeIntensity("uint8")

    def to_model(self, planes: np.ndarray) -> tuple[torch.Tensor, list]:
        """Planes ``[S, H, W]`` -> model inputs ``[S, 1, size, size]`` in [0, 1], and the geometry to undo."""
        # all planes as the channels of one image: one resize and one pad for the whole scan
        resized = self.transform(MetaTensor(torch.from_numpy(np.ascontiguousarray(planes, dtype=np.float32))))
        inputs = decode_intensity(self.encode(resized.as_tensor()))
        return inputs[:, None], copy.deepcopy(resized.applied_operations)

    def to_input(self, images: torch.Tensor, geometry: list) -> np.ndarray:
        """Images ``[S, size, size]`` (or ``[S, 1, size, size]``) at the model's size -> ``[S, H, W]`` float32."""
        images = torch.as_tensor(images).detach().float().cpu()
        if images.dim() == 4:
            images = images[:, 0]
        restored = self.transform.inverse(MetaTensor(images, applied_operations=copy.deepcopy(geometry)))
        return np.asarray(restored.as_tensor().numpy(), dtype=np.float32)

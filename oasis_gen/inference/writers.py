"""Inference outputs on disk, each written atomically: images in the input's own format, arrays, tables.

A reconstruction goes back to the scan's format: a PNG slice gives an 8-bit PNG (a JPEG a JPEG) at the input's
size; a volume gives a NIfTI (``.nii`` or ``.nii.gz`` like the input) or an Analyze pair with the input's class,
shape, affine and header. Intensities return to the input's scale where the reading defined one (volumes:
``[0, 1]`` back to the raw range ``scale_unit`` mapped from); slices are written on the 8-bit scale of the
[0, 1] values training uses.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image

from oasis_gen.inference.scans import ScanPlanes
from oasis_gen.utils.files import TEMPORARY_SUFFIX, atomic_path, write_text
from oasis_gen.utils.pictures import save_png, to_uint8

__all__ = ["reconstruction_name", "save_npy", "write_csv", "write_reconstruction", "write_volume"]

JPEG_QUALITY = 95


def reconstruction_name(scan: ScanPlanes) -> str:
    """File name of a scan's reconstruction: ``reconstruction`` plus the input's suffix."""
    return "reconstruction" + scan.file.suffix


def write_reconstruction(folder: Path, scan: ScanPlanes, planes: np.ndarray) -> Path:
    """Write the reconstructed planes ``[S, H, W]`` (in [0, 1], the input's geometry) in the input's format."""
    target = folder / reconstruction_name(scan)
    if scan.volume is None:
        picture = to_uint8(planes[0])
        if scan.file.suffix in (".jpg", ".jpeg"):
            with atomic_path(target) as tmp:
                Image.fromarray(picture).save(tmp, format="JPEG", quality=JPEG_QUALITY)
            return target
        return save_png(picture, target)
    low, high = scan.intensity_range or (0.0, 1.0)
    values = scan.to_volume(np.clip(planes, 0.0, 1.0)) * (high - low) + low
    return write_volume(target, scan, values)


def write_volume(target: Path, scan: ScanPlanes, values: np.ndarray) -> Path:
    """
    Write a volume of raw values like the input volume: same image class, affine and header. Integer inputs
    without intensity scaling keep their data type (values rounded and clipped to it); float inputs keep theirs;
    scaled integers (NIfTI ``scl_slope``/``scl_inter``) are written as float32.
    """
    source = scan.image
    header = source.header.copy()
    dtype = np.dtype(header.get_data_dtype())
    # nibabel moves a file's intensity scaling from the header to the data proxy when it loads an image
    slope, inter = getattr(source.dataobj, "slope", 1.0), getattr(source.dataobj, "inter", 0.0)
    if np.issubdtype(dtype, np.integer) and slope == 1.0 and inter == 0.0:
        limits = np.iinfo(dtype)
        data = np.clip(np.rint(values), limits.min, limits.max).astype(dtype)
    elif np.issubdtype(dtype, np.floating):
        data = values.astype(dtype)
    else:  # scaled integers (stored = (value - inter) / slope): keep the values themselves, as floats
        header.set_data_dtype(np.float32)
        data = values.astype(np.float32)
    image = type(source)(data, source.affine, header)
    return _save_image(image, target)


def _save_image(image: Any, target: Path) -> Path:
    """Save a nibabel image through a temporary folder beside ``target``, then move each of its files in place.

    nibabel picks the format from the name and may write several files (Analyze: .hdr, .img and SPM's .mat),
    so the temporary name is a folder and the files keep their own names in it.
    """
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TEMPORARY_SUFFIX}"
    staging.mkdir()
    try:
        nib.save(image, str(staging / target.name))
        # the image data first, the header last: a reader that finds the new header finds the new data
        for written in sorted(staging.iterdir(), key=lambda p: p.suffix.lower() == ".hdr"):
            os.replace(written, folder / written.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def save_npy(path: Path, array: np.ndarray) -> Path:
    """Write a NumPy array atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as stream:  # a file object: np.save would add ".npy" to tmp
        np.save(stream, array)
    return path


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write rows as a CSV table with the given columns (floats with 6 significant digits; None as empty)."""
    def cell(value: Any) -> Any:
        if value is None:
            return ""
        if isinstance(value, (float, np.floating)):
            return f"{float(value):.6g}"
        return value

    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: cell(v) for k, v in row.items()} for row in rows)
    return write_text(path, stream.getvalue())

"""Read one scan from disk into a float32 array in [0, 1]: 2D slices (PNG/JPEG) and 3D volumes (NIfTI/Analyze)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image, UnidentifiedImageError

from oasis_gen.utils.errors import DataError

SLICE_SUFFIXES = (".png", ".jpg", ".jpeg")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".img")
# modes PIL decodes to 8-bit luminance without losing meaning; 16-bit and float modes are rescaled instead
COLOUR_MODES = {"RGB", "RGBA", "LA", "P", "PA", "CMYK", "YCbCr", "1"}
WIDE_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
AXIS_NAMES = {"sagittal": ("L", "R"), "coronal": ("A", "P"), "axial": ("S", "I")}
# upper percentile for intensity scaling of non-8-bit data: robust to a few hot voxels
UPPER_PERCENTILE = 99.5
# the smallest slice side the networks can use: one code of the default VQ-VAE's coarsest (top) grid covers 16x16
# pixels; a smaller slice would be stretched to image_size from less than one code's worth of pixels
MIN_SLICE_SIDE = 16


def scan_kind(path: str | Path) -> str | None:
    """Return "slice", "volume" or None for a path, from its suffix."""
    name = str(path).lower()
    if name.endswith(SLICE_SUFFIXES):
        return "slice"
    if name.endswith(VOLUME_SUFFIXES):
        return "volume"
    return None


def volume_stem(path: str | Path) -> str:
    """Return a volume's file name without its NIfTI/Analyze suffix."""
    name = Path(path).name
    return re.sub(r"(\.nii\.gz|\.nii|\.hdr|\.img)$", "", name, flags=re.IGNORECASE)


@dataclass(frozen=True)
class SliceInfo:
    """What a 2D image file holds: its PIL mode, (height, width) and how it will be converted."""

    mode: str
    shape: tuple[int, int]
    note: str | None


def inspect_slice(path: str | Path) -> SliceInfo:
    """Open and fully decode a 2D image; raise DataError if it is unreadable or truncated."""
    with _open_image(path) as image:
        note = None
        if image.mode in COLOUR_MODES:
            note = f"{image.mode} image: converted to grayscale (luminance)"
        elif image.mode in WIDE_MODES:
            note = f"{image.mode} ({'float' if image.mode == 'F' else '16/32-bit'}) image: " \
                   f"scaled to [0, 1] by its {UPPER_PERCENTILE} percentile"
        elif image.mode != "L":
            note = f"{image.mode} image: converted to grayscale"
        return SliceInfo(mode=image.mode, shape=(image.height, image.width), note=note)


def read_slice(path: str | Path) -> np.ndarray:
    """Read a 2D image as a (H, W) float32 array in [0, 1]."""
    with _open_image(path) as image:
        if image.mode in WIDE_MODES:
            data = np.asarray(image, dtype=np.float32)
            return scale_unit(data, path)
        if image.mode != "L":
            image = image.convert("L")
        return np.asarray(image, dtype=np.float32) / 255.0


def _open_image(path: str | Path) -> Image.Image:
    """Open an image and force its decoding now, so a truncated file fails here with its name."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        image = Image.open(path)
        image.load()
    except UnidentifiedImageError:
        raise DataError(path, "not a readable image (corrupt, or not PNG/JPEG)") from None
    except (OSError, SyntaxError, ValueError) as err:
        reason = "truncated image" if "truncated" in str(err).lower() else f"unreadable image ({err})"
        raise DataError(path, reason) from None
    check_slice_size(path, (image.height, image.width))
    return image


def check_slice_size(path: str | Path, shape: tuple[int, ...]) -> None:
    """Refuse a slice too small for the network (a DataError naming the file and its size)."""
    if max(shape[:2]) < MIN_SLICE_SIDE:  # the longer side: a narrow slice is padded to a square of it
        raise DataError(path, f"too small for the network: {shape[0]}x{shape[1]} pixels, the slices need at least "
                              f"{MIN_SLICE_SIDE}x{MIN_SLICE_SIDE} (a code of the VQ-VAE's coarsest grid covers "
                              f"{MIN_SLICE_SIDE}x{MIN_SLICE_SIDE} pixels of a 128x128 slice)")


def scale_unit(data: np.ndarray, path: str | Path) -> np.ndarray:
    """Map intensities to [0, 1]: minimum to 0, the upper percentile to 1, clipped."""
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise DataError(path, f"{bad} NaN/inf values")
    low = float(data.min())
    high = float(np.percentile(data, UPPER_PERCENTILE))
    if high <= low:
        high = float(data.max())
    if high <= low:
        raise DataError(path, "empty image (every value is the same)")
    return np.clip((data - low) / (high - low), 0.0, 1.0).astype(np.float32)


# every volume is sliced in this orientation, whatever its stored one: array axes running to the patient's Right,
# Anterior and Superior (nibabel's canonical orientation; the demo cohort's MNI152 template is stored so)
CANONICAL_AXES = ("R", "A", "S")


@dataclass(frozen=True)
class Volume:
    """
    A 3D scan scaled to [0, 1] and turned to the canonical orientation (:data:`CANONICAL_AXES`), with what is needed
    to write results back in its own stored orientation and space.

    Attributes:
        data: the voxels, float32 in [0, 1], axes R, A, S (flipped and transposed from the stored array).
        affine: the affine of ``data`` (the stored affine composed with the reorientation: same world space).
        header: the stored file's header.
        shape: the stored array's shape (with any trailing singleton axes).
        orientation: nibabel orientation ``[3, 2]`` from the stored array to ``data``
            (:func:`nibabel.orientations.io_orientation` of the stored affine).
    """

    data: np.ndarray
    affine: np.ndarray
    header: nib.spatialimages.SpatialHeader
    shape: tuple[int, ...]
    orientation: np.ndarray

    @property
    def stored_axes(self) -> tuple[str, ...]:
        """The stored array's axis codes, e.g. ``("P", "S", "R")`` for IXI's T1 scans."""
        return tuple(nib.orientations.ornt2axcodes(self.orientation))

    def to_stored(self, array: np.ndarray) -> np.ndarray:
        """An array laid out like :attr:`data` (e.g. a reconstruction) in the stored array's layout and shape."""
        back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(CANONICAL_AXES), self.orientation)
        return np.ascontiguousarray(nib.orientations.apply_orientation(array, back)).reshape(self.shape)


def analyze_partner(path: Path) -> Path:
    """Return the other half of an Analyze pair (.img for .hdr and back)."""
    suffix = path.suffix
    twin = {".img": ".hdr", ".hdr": ".img", ".IMG": ".HDR", ".HDR": ".IMG"}[suffix]
    return path.with_suffix(twin)


@functools.lru_cache(maxsize=4)
def read_volume(path: str) -> Volume:
    """Load a NIfTI/Analyze volume as float32 in [0, 1], turned to the canonical orientation (the nearest one where
    the affine is oblique), so that a head stored RAS, LPS or PSR gives the same array (cached: its slices are read
    one after another)."""
    file = Path(path)
    if not file.is_file():
        raise DataError(file, "file not found")
    if file.suffix.lower() in (".img", ".hdr") and not analyze_partner(file).is_file():
        raise DataError(file, f"Analyze volume without its {analyze_partner(file).suffix} partner")
    try:
        image = nib.load(str(file))
        raw = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel raises many types for truncated or corrupt files
        raise DataError(file, f"unreadable volume ({type(err).__name__}: {err})") from None
    original_shape = raw.shape
    # OASIS-1 Analyze volumes carry a trailing singleton time axis
    data = raw.reshape([s for s in raw.shape if s != 1]) if raw.ndim > 3 else raw
    if data.ndim != 3:
        raise DataError(file, f"expected a 3D volume, found shape {original_shape}")
    orientation = nib.orientations.io_orientation(image.affine)
    canonical = nib.orientations.apply_orientation(data, orientation)
    affine = image.affine @ nib.orientations.inv_ornt_aff(orientation, data.shape)
    return Volume(data=scale_unit(np.ascontiguousarray(canonical), file), affine=affine, header=image.header,
                  shape=original_shape, orientation=orientation)


def resolve_axis(path: str | Path, axis: int | str) -> int:
    """Turn "axial" / "coronal" / "sagittal" into the array axis of this volume as read (:func:`read_volume`: the
    canonical orientation, so axial is 2); an int (0, 1, 2: sagittal, coronal, axial) passes through."""
    if isinstance(axis, int) or str(axis).isdigit():
        axis = int(axis)
        if axis not in (0, 1, 2):
            raise DataError(path, f"slice axis must be 0, 1 or 2, not {axis}")
        return axis
    if axis not in AXIS_NAMES:
        raise DataError(path, f"slice axis must be one of {sorted(AXIS_NAMES)} or 0/1/2, not {axis!r}")
    codes = nib.aff2axcodes(read_volume(str(path)).affine)
    for index, code in enumerate(codes[:3]):
        if code in AXIS_NAMES[axis]:
            return index
    raise DataError(path, f"cannot tell the {axis} axis from the affine (axis codes {codes})")


def volume_planes(data: np.ndarray, axis: int) -> np.ndarray:
    """Every plane ``[S, H, W]`` of a canonical volume along ``axis``, turned as the slices are shown: for axial
    planes anterior at the top and the patient's left on the left, as the demo cohort's slices."""
    return np.ascontiguousarray(np.rot90(np.moveaxis(data, axis, 0), axes=(1, 2)))


def planes_to_volume(planes: np.ndarray, axis: int) -> np.ndarray:
    """The inverse of :func:`volume_planes`: planes ``[S, H, W]`` back into the canonical volume's layout."""
    return np.moveaxis(np.rot90(planes, k=-1, axes=(1, 2)), 0, axis)


def volume_slice(volume: Volume, axis: int, index: int) -> np.ndarray:
    """One 2D plane of a volume as :func:`volume_planes` turns it."""
    return volume_planes(np.take(volume.data, [index], axis=axis), axis)[0]


def brain_fractions(volume: Volume, axis: int, threshold: float = 0.05) -> np.ndarray:
    """Fraction of each plane along an axis whose intensity exceeds threshold (a proxy for brain area)."""
    other = tuple(a for a in range(3) if a != axis)
    return (volume.data > threshold).mean(axis=other)

"""MONAI transform chains: load a slice record, scale to [0, 1], pad to square, resize, encode compactly.

The geometry (:func:`model_geometry`: longest side resized to the model's size, padded to a square) is one chain
that training, evaluation and inference (:class:`oasis_gen.inference.scans.ModelView`, which also inverts it) all
apply, so what the VQ-VAE sees cannot drift between them.

Cached items hold intensities as uint8 (or float16): the full OASIS train split at 256x256 then takes about
0.6 GB instead of 2.5 GB in float32, and batches cross to the GPU four times lighter. The engines' batch
preparation (:func:`decode_intensity`) turns them back into float32 in [0, 1] on the device.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, MapTransform, RandFlipd, Resize, SpatialPad, Transform

from oasis_gen.data.readers import read_slice, read_volume, volume_slice

CACHE_DTYPES = {"uint8": torch.uint8, "float16": torch.float16, "float32": torch.float32}


class LoadScand(MapTransform):
    """Load the 2D slice a record names (an image file, or plane ``slice`` along ``axis`` of a volume).

    The result is a (1, H, W) float32 MetaTensor in [0, 1] whose meta data names the source file and slice.
    """

    def __init__(self, keys: KeysCollection = "image", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = str(d[key])
            if "axis" in d:
                plane = volume_slice(read_volume(path), int(d["axis"]), int(d["slice"]))
            else:
                plane = read_slice(path)
            meta = {"filename_or_obj": path, "slice": int(d.get("slice", 0)), "spatial_shape": plane.shape}
            d[key] = MetaTensor(torch.from_numpy(plane.copy())[None], meta=meta)
        return d


class EncodeIntensity(Transform):
    """Store [0, 1] intensities compactly: uint8 (rounded to 1/255 steps), float16 or float32."""

    def __init__(self, dtype: str = "uint8"):
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"cache dtype must be one of {sorted(CACHE_DTYPES)}, not {dtype!r}")
        self.dtype = CACHE_DTYPES[dtype]

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        img = torch.as_tensor(img).clamp(0.0, 1.0)
        if self.dtype == torch.uint8:
            return (img * 255.0).round().to(torch.uint8)
        return img.to(self.dtype)


class EncodeIntensityd(MapTransform):
    """Dictionary version of :class:`EncodeIntensity`."""

    def __init__(self, keys: KeysCollection = "image", dtype: str = "uint8", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.encoder = EncodeIntensity(dtype)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.encoder(d[key])
        return d


def decode_intensity(img: torch.Tensor) -> torch.Tensor:
    """Turn an encoded batch (uint8, float16 or float32) back into float32 in [0, 1]."""
    if img.dtype == torch.uint8:
        return img.float().div_(255.0)
    return img.float()


def model_geometry(image_size: int) -> Compose:
    """
    The VQ-VAE's view of a channel-first plane ``[C, H, W]``: the longest side resized to ``image_size``
    (bilinear, anti-aliased), then the other padded to a square (the same as padding to a square, then resizing).
    Invertible (MONAI records both operations on a ``MetaTensor``).
    """
    if int(image_size) < 8:
        raise ValueError(f"image_size must be at least 8, not {image_size}")
    size = int(image_size)
    return Compose([
        Resize(spatial_size=size, size_mode="longest", mode="bilinear", anti_aliasing=True),
        SpatialPad(spatial_size=(size, size)),
    ])


class ModelGeometryd(MapTransform):
    """:func:`model_geometry` on the images of a record."""

    def __init__(self, keys: KeysCollection, image_size: int, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.geometry = model_geometry(image_size)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.geometry(d[key])
        return d


def eval_transforms(image_size: int, cache_dtype: str = "uint8") -> Compose:
    """Deterministic chain for validation, evaluation and the prior's codes: load, the model's geometry, encode."""
    return Compose([
        LoadScand("image"),
        ModelGeometryd("image", image_size),
        EncodeIntensityd("image", dtype=cache_dtype),
    ])


def train_transforms(image_size: int, cache_dtype: str = "uint8", augment: bool = False) -> Compose:
    """Training chain: the evaluation chain, then optional light augmentation (left-right flips)."""
    chain = list(eval_transforms(image_size, cache_dtype).transforms)
    if augment:
        # a flip keeps the cached dtype; interpolating augmentations would turn uint8 into float
        chain.append(RandFlipd("image", prob=0.5, spatial_axis=1))
    return Compose(chain)


__all__ = ["LoadScand", "EncodeIntensity", "EncodeIntensityd", "ModelGeometryd", "decode_intensity",
           "eval_transforms", "model_geometry", "train_transforms"]

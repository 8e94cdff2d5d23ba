"""The VQ-VAE's discrete codes of every slice: what the PixelCNN prior learns from.

Each split is encoded once through the VQ-VAE (eval mode, no gradients: in train mode MONAI's EMA quantizer
would move its codebook) and cached as ``<cache_dir>/codes_<split>.pt``, tied to the VQ-VAE checkpoint by its
SHA-256: later runs reuse the cache while the checkpoint and the split's slices are unchanged, and encode again
when either changes. Grids are kept small (uint8 for codebooks of up to 256 codes, else int16).

A prior record is ``{"codes": [g, g] integer tensor, "image": path, "subject": id, "slice": k, "label": b}``,
where ``b`` is the slice-position bucket used by a conditional prior (0 for an unconditional one).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import DataLoader, Dataset
from monai.utils import convert_to_tensor
from tqdm.auto import tqdm

from oasis_gen.data.transforms import decode_intensity, eval_transforms
from oasis_gen.inferers.pixelcnn_inferer import Codes
from oasis_gen.networks.pixelcnn import pixelcnn_spec
from oasis_gen.networks.spec import ModelSpec, checkpoint_sha256, read_checkpoint
from oasis_gen.networks.vqvae import is_two_level, level_sizes, load_vqvae, named_quantizers
from oasis_gen.utils.errors import CheckpointError, ConfigError
from oasis_gen.utils.files import atomic_path

logger = logging.getLogger(__name__)

# 2: volumes are cut in the canonical orientation (oasis_gen.data.readers.CANONICAL_AXES); a cache of format 1 may
# hold codes of non-RAS volumes cut in their stored orientation, so it is encoded again
CACHE_FORMAT = 2

__all__ = ["class_count", "code_datasets", "code_dtype", "encode_codes", "prior_records", "prior_spec", "slice_labels"]


def code_dtype(num_embeddings: int) -> torch.dtype:
    """The smallest integer dtype that holds codes ``0 .. num_embeddings - 1`` (uint8, int16 or int32)."""
    if num_embeddings <= 256:
        return torch.uint8
    if num_embeddings <= 32768:
        return torch.int16
    return torch.int32


def encode_codes(
    vqvae: torch.nn.Module,
    dataset_or_records: torch.utils.data.Dataset | Sequence[Mapping[str, Any]],
    image_size: int,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Encode slices to code grids with a VQ-VAE, in order.

    Args:
        vqvae: MONAI's VQ-VAE or a two-level one; run in eval mode without gradients (its previous mode is
            restored after).
        dataset_or_records: slice records (``{"image": path, ...}``, loaded with the evaluation transforms at
            ``image_size``) or a dataset yielding dicts whose ``"image"`` is an encoded (1, H, W) slice.
        image_size: the VQ-VAE's input size.
        batch_size: slices encoded together.
        device: where the VQ-VAE runs.
        progress: show a progress bar.

    Returns:
        ``[N, g, g]`` code indices on the CPU, as :func:`code_dtype` of the codebook size; for a two-level VQ-VAE
        ``(top, bottom)`` grids.
    """
    if isinstance(dataset_or_records, torch.utils.data.Dataset):
        dataset = dataset_or_records
    else:
        dataset = Dataset(data=list(dataset_or_records), transform=eval_transforms(int(image_size), "uint8"))
    dtypes = {name: code_dtype(int(q.num_embeddings)) for name, q in named_quantizers(vqvae).items()}
    loader = DataLoader(dataset, batch_size=max(int(batch_size), 1), shuffle=False, num_workers=0)
    grids: list[Codes] = []
    was_training = vqvae.training
    vqvae.eval()
    try:
        with torch.no_grad():
            for batch in tqdm(loader, desc="encoding slices", unit="batch", disable=not progress):
                images = batch["image"]
                # plain tensors: the cache must load with weights_only
                images = convert_to_tensor(images, track_meta=False)
                codes = vqvae.index_quantize(decode_intensity(images.to(device)))
                if isinstance(codes, tuple):
                    grids.append((_plain(codes[0], dtypes["top"]), _plain(codes[1], dtypes[""])))
                else:
                    grids.append(_plain(codes, dtypes[""]))
    finally:
        vqvae.train(was_training)
    if "top" in dtypes:
        if not grids:
            return torch.zeros((0, 0, 0), dtype=dtypes["top"]), torch.zeros((0, 0, 0), dtype=dtypes[""])
        return torch.cat([g[0] for g in grids]), torch.cat([g[1] for g in grids])
    if not grids:
        return torch.zeros((0, 0, 0), dtype=dtypes[""])
    return torch.cat(grids)


def _plain(codes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.Tensor.as_subclass(codes, torch.Tensor).to("cpu", dtype)


def class_count(value: Any, key: str = "num_classes") -> int | None:
    """Read the number of slice-position buckets: None (or null/none/0 from the command line) or an int >= 1."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none", "0")):
        return None
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"expected null (unconditional) or a number of buckets, not {value!r}") from None
    if isinstance(value, bool) or count != float(value) or count < 0:
        raise ConfigError(key, f"expected null (unconditional) or a number of buckets >= 1, not {value!r}")
    return count or None


def slice_labels(records: Sequence[Mapping[str, Any]], num_classes: int | None) -> list[int]:
    """The slice-position bucket of each record: its slice index scaled to ``num_classes`` buckets.

    The scale is the range of slice indices of the record's subject (lowest: bucket 0, highest: bucket
    ``num_classes - 1``), so buckets mean the same relative position for every subject. All 0 when
    ``num_classes`` is None.
    """
    if not num_classes:
        return [0] * len(records)
    ranges: dict[str, tuple[int, int]] = {}
    for record in records:
        k = int(record.get("slice", 0))
        low, high = ranges.get(str(record["subject"]), (k, k))
        ranges[str(record["subject"])] = (min(low, k), max(high, k))
    labels = []
    for record in records:
        low, high = ranges[str(record["subject"])]
        position = (int(record.get("slice", 0)) - low) / (high - low + 1)
        labels.append(min(int(position * num_classes), num_classes - 1))
    return labels


def _identity(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """What ties cached codes to slices: each record's file, subject, slice (and axis, for volumes)."""
    kept = []
    for record in records:
        entry = {"image": str(record["image"]), "subject": str(record["subject"]),
                 "slice": int(record.get("slice", 0))}
        if "axis" in record:
            entry["axis"] = int(record["axis"])
        kept.append(entry)
    return kept


def _read_cache(path: Path) -> dict[str, Any] | None:
    """A cache file's content, or None when it is missing or unreadable (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: encode again
        logger.warning("ignoring unreadable codes cache %s (%s: %s)", path, type(err).__name__, err)
        return None
    return cache if isinstance(cache, dict) and cache.get("format") == CACHE_FORMAT else None


def prior_records(codes: Codes, slices: Sequence[Mapping[str, Any]], num_classes: int | None = None
                  ) -> list[dict[str, Any]]:
    """Pair code grids ``[N, g, g]`` (or ``(top, bottom)`` grids, kept as ``top_codes`` and ``codes``) with their
    slices' identity and slice-position bucket."""
    labels = slice_labels(slices, num_classes)
    top, codes = codes if isinstance(codes, tuple) else (None, codes)
    records = [{"codes": grid, "image": s["image"], "subject": s["subject"], "slice": s["slice"], "label": label}
               for grid, s, label in zip(codes, slices, labels, strict=True)]
    if top is not None:
        for record, grid in zip(records, top, strict=True):
            record["top_codes"] = grid
    return records


def code_datasets(
    vqvae_ckpt: str | Path,
    records_by_split: Mapping[str, Sequence[Mapping[str, Any]]],
    cache_dir: str | Path,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = True,
    num_classes: int | None = None,
    vqvae: torch.nn.Module | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """The prior's records of each split, encoding a split only when its cache is missing or stale.

    Args:
        vqvae_ckpt: the VQ-VAE checkpoint; its SHA-256 keys the cache.
        records_by_split: slice records per split (as the dataset check returns them).
        cache_dir: where ``codes_<split>.pt`` live.
        batch_size: slices encoded together.
        device: where the VQ-VAE runs.
        progress: show progress bars while encoding.
        num_classes: number of slice-position buckets for a conditional prior (None: every label is 0).
        vqvae: the network of ``vqvae_ckpt`` when already loaded (else it is loaded when a split needs it).

    Raises:
        CheckpointError: the VQ-VAE checkpoint is missing or unreadable.
    """
    ckpt = Path(vqvae_ckpt)
    sha256 = checkpoint_sha256(ckpt)
    spec: ModelSpec | None = None
    datasets: dict[str, list[dict[str, Any]]] = {}
    for split, records in records_by_split.items():
        path = Path(cache_dir) / f"codes_{split}.pt"
        slices = _identity(records)
        cache = _read_cache(path)
        if cache is not None and cache.get("vqvae_sha256") == sha256 and cache.get("records") == slices:
            logger.info("reusing cached codes of the %s split (%d grids) from %s", split, len(slices), path)
            cached = (cache["top_codes"], cache["codes"]) if "top_codes" in cache else cache["codes"]
            datasets[split] = prior_records(cached, slices, num_classes)
            continue
        if cache is None:
            reason = "no cache yet"
        elif cache.get("vqvae_sha256") != sha256:
            reason = "the VQ-VAE checkpoint changed since the cache was made"
        else:
            reason = "the split's slices changed since the cache was made"
        logger.info("encoding the %s split (%d slices) with %s into %s (%s)", split, len(slices), ckpt, path, reason)
        if vqvae is None:
            vqvae, spec = load_vqvae(ckpt, device)
        elif spec is None:
            spec = ModelSpec(**read_checkpoint(ckpt).get("spec", {}))
            if "image_size" not in spec.values:
                raise CheckpointError(ckpt, "not a VQ-VAE checkpoint of oasis-gen (no VQ-VAE spec saved)")
        codes = encode_codes(vqvae, records, spec["image_size"], batch_size, device, progress)
        levels = {"top_codes": codes[0], "codes": codes[1]} if isinstance(codes, tuple) else {"codes": codes}
        with atomic_path(path) as tmp:
            torch.save({"format": CACHE_FORMAT, **levels, "records": slices, "vqvae_checkpoint": str(ckpt),
                        "vqvae_sha256": sha256, "spec": spec.state_dict()}, tmp)
        datasets[split] = prior_records(codes, slices, num_classes)
    return datasets


def two_level_checkpoint(path: str | Path) -> bool:
    """Whether a VQ-VAE checkpoint holds a two-level VQ-VAE (False when it is missing or unreadable: the run that
    loads it says why)."""
    try:
        spec = read_checkpoint(path).get("spec")
    except (CheckpointError, OSError):
        return False
    return isinstance(spec, Mapping) and is_two_level(spec)


def prior_spec(vqvae_spec: ModelSpec | Mapping[str, Any], vqvae_checkpoint: str | Path, vqvae_sha256: str,
               level: str = "bottom", top_prior_checkpoint: str | Path | None = None, **architecture: Any
               ) -> ModelSpec:
    """The prior's spec for one level of a VQ-VAE's codes (its K and grid), with sizes that cannot work reported as
    a ConfigError.

    For a two-level VQ-VAE the spec records its ``level``; the bottom prior is conditioned on the whole top grid
    (``cond_num_embeddings``, ``cond_factor``) and may record the top prior's checkpoint, so that sampling and
    inference need only the bottom one. A single-level VQ-VAE's prior spec is as before (no level).
    """
    vq = vqvae_spec.values if isinstance(vqvae_spec, ModelSpec) else dict(vqvae_spec)
    if "num_classes" in architecture:
        architecture["num_classes"] = class_count(architecture["num_classes"])
    num_embeddings, grid_size = level_sizes(vq, level)
    two_level = is_two_level(vq)
    if two_level and level == "bottom":
        architecture.update(cond_num_embeddings=int(vq["top_num_embeddings"]),
                            cond_factor=int(vq["grid_size"]) // int(vq["top_grid_size"]))
    else:
        architecture.pop("cond_layers", None)  # only a bottom prior reads a conditioning grid
    try:
        spec = pixelcnn_spec(num_embeddings=num_embeddings, grid_size=grid_size,
                             vqvae_checkpoint=str(vqvae_checkpoint), vqvae_sha256=vqvae_sha256, **architecture)
    except (TypeError, ValueError) as err:
        # the network's checks start with the argument's name ("kernel_size must be ...")
        key = str(err).split()[0] if str(err).split() else "prior"
        raise ConfigError(key if key in architecture else "prior", str(err)) from None
    if two_level:
        spec.values["level"] = level
        if level == "bottom" and top_prior_checkpoint not in (None, "", "null", "None"):
            spec.values["top_prior_checkpoint"] = str(top_prior_checkpoint)
    return spec

"""The VQ-VAE: MONAI's network, built from a few sizes, with its architecture saved beside its weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import VQVAE

from oasis_gen.errors import ConfigError
from oasis_gen.networks.spec import ModelSpec, load_network

# stride 2, kernel 4, dilation 1, padding 1: each level halves the grid exactly
DOWNSAMPLE = (2, 4, 1, 1)
UPSAMPLE = (2, 4, 1, 1, 0)




def channel_list(channels: int | Sequence[int], num_downsamplings: int) -> list[int]:
    """Expand channels (one width for every level, or one per level) to one width per downsampling."""
    if isinstance(channels, int):
        return [int(channels)] * num_downsamplings
    widths = [int(c) for c in channels]
    if len(widths) != num_downsamplings:
        raise ConfigError("channels", f"{len(widths)} widths given for {num_downsamplings} downsamplings")
    return widths


def build_vqvae(**sizes: Any) -> VQVAE:
    """Build MONAI's 2D VQ-VAE for square one-channel slices from :func:`vqvae_spec`'s sizes (validated)."""
    return vqvae_from_spec(vqvae_spec(**sizes))


def vqvae_spec(
    image_size: int = 128,
    num_downsamplings: int = 2,
    channels: int | Sequence[int] = (32, 64),
    num_res_layers: int = 1,
    num_res_channels: int | Sequence[int] | None = None,
    num_embeddings: int = 256,
    embedding_dim: int = 32,
    commitment_cost: float = 0.25,
    decay: float = 0.99,
    output_act: str | None = None,
) -> ModelSpec:
    """Validate VQ-VAE sizes and return them as a spec (clear errors for sizes that cannot work)."""
    if int(num_downsamplings) < 1:
        raise ConfigError("num_downsamplings", f"must be at least 1, not {num_downsamplings}")
    factor = 2 ** int(num_downsamplings)
    if int(image_size) % factor or int(image_size) < factor:
        raise ConfigError("image_size", f"{image_size} is not divisible by 2**num_downsamplings = {factor}; "
                                        f"try {max(factor, int(image_size) // factor * factor)}")
    if int(num_embeddings) < 2:
        raise ConfigError("num_embeddings", f"the codebook needs at least 2 codes, not {num_embeddings}")
    if int(embedding_dim) < 1:
        raise ConfigError("embedding_dim", f"must be positive, not {embedding_dim}")
    widths = channel_list(channels, int(num_downsamplings))
    res_widths = widths if num_res_channels is None else channel_list(num_res_channels, int(num_downsamplings))
    return ModelSpec(
        image_size=int(image_size), num_downsamplings=int(num_downsamplings), channels=widths,
        num_res_layers=int(num_res_layers), num_res_channels=res_widths, num_embeddings=int(num_embeddings),
        embedding_dim=int(embedding_dim), commitment_cost=float(commitment_cost), decay=float(decay),
        output_act=output_act, grid_size=int(image_size) // factor,
    )


def vqvae_from_spec(spec: ModelSpec | Mapping[str, Any]) -> VQVAE:
    """Build the VQ-VAE a spec describes."""
    s = spec.values if isinstance(spec, ModelSpec) else dict(spec)
    levels = s["num_downsamplings"]
    return VQVAE(
        spatial_dims=2, in_channels=1, out_channels=1,
        channels=tuple(s["channels"]), num_res_layers=s["num_res_layers"],
        num_res_channels=tuple(s["num_res_channels"]),
        downsample_parameters=(DOWNSAMPLE,) * levels, upsample_parameters=(UPSAMPLE,) * levels,
        num_embeddings=s["num_embeddings"], embedding_dim=s["embedding_dim"],
        commitment_cost=s["commitment_cost"], decay=s["decay"], output_act=s["output_act"],
    )


def load_vqvae(path: str | Path, device: str | torch.device = "cpu") -> tuple[VQVAE, ModelSpec]:
    """Rebuild a trained VQ-VAE from its checkpoint (architecture and weights), in eval mode."""
    return load_network(path, vqvae_from_spec, "VQ-VAE", "num_downsamplings", device)

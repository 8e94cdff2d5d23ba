"""The VQ-VAE: MONAI's network (or the two-level one built from its blocks), its architecture saved with its weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.networks.layers.vector_quantizer import EMAQuantizer
from monai.networks.nets import VQVAE

from oasis_gen.networks.quantizer import quantizer_copy
from oasis_gen.networks.spec import ModelSpec, load_network, read_network_checkpoint
from oasis_gen.networks.vqvae2 import TwoLevelVQVAE
from oasis_gen.utils.errors import ConfigError

# the code levels of a two-level VQ-VAE, coarse to fine; a single-level one has only "bottom"
LEVELS = ("top", "bottom")
# stride 2, kernel 4, dilation 1, padding 1: each level halves the grid exactly
DOWNSAMPLE = (2, 4, 1, 1)
UPSAMPLE = (2, 4, 1, 1, 0)
VQVAE_MARKER = "num_downsamplings"  # a spec key only VQ-VAE checkpoints have


def channel_list(channels: int | Sequence[int], num_downsamplings: int) -> list[int]:
    """Expand channels (one width for every level, or one per level) to one width per downsampling."""
    if isinstance(channels, int):
        return [int(channels)] * num_downsamplings
    widths = [int(c) for c in channels]
    if len(widths) != num_downsamplings:
        raise ConfigError("channels", f"{len(widths)} widths given for {num_downsamplings} downsamplings")
    return widths


def build_vqvae(**sizes: Any) -> VQVAE | TwoLevelVQVAE:
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
    top_downsamplings: int = 0,
    top_num_embeddings: int | None = None,
    top_only_rate: float = 0.0,
    top_negative_slope: float = 0.1,
    top_image_weight: float = 0.25,
) -> ModelSpec:
    """
    Validate VQ-VAE sizes and return them as a spec (clear errors for sizes that cannot work).

    ``top_downsamplings`` 0 is MONAI's single-level VQ-VAE (its spec has no ``top_*`` key, as before two levels
    existed); more adds a top grid of ``grid_size / 2**top_downsamplings`` codes from a codebook of
    ``top_num_embeddings`` (None: ``num_embeddings``), recorded as ``top_downsamplings``, ``top_num_embeddings`` and
    ``top_grid_size`` (:class:`~oasis_gen.networks.vqvae2.TwoLevelVQVAE`), with ``top_only_rate`` (the share of
    training images decoded from the top codes alone) and ``top_negative_slope`` (LeakyReLU in the top encoder and
    decoder; checkpoints saved before it existed mean 0, ReLU) and ``top_image_weight`` (the weight of the top
    level's own coarse image in the loss; saved before it existed: 0, no such term).
    """
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
    grid = int(image_size) // factor
    values = dict(
        image_size=int(image_size), num_downsamplings=int(num_downsamplings), channels=widths,
        num_res_layers=int(num_res_layers), num_res_channels=res_widths, num_embeddings=int(num_embeddings),
        embedding_dim=int(embedding_dim), commitment_cost=float(commitment_cost), decay=float(decay),
        output_act=output_act, grid_size=grid,
    )
    return ModelSpec(**values, **_top_level(grid, top_downsamplings, top_num_embeddings, int(num_embeddings),
                                            top_only_rate, top_negative_slope, top_image_weight))


def _top_level(grid: int, top_downsamplings: Any, top_num_embeddings: Any, num_embeddings: int,
               top_only_rate: Any = 0.0, top_negative_slope: Any = 0.1, top_image_weight: Any = 0.25
               ) -> dict[str, Any]:
    """The spec keys of the top level (none for a single-level VQ-VAE), validated against the bottom grid."""
    try:
        levels = int(top_downsamplings or 0)
    except (TypeError, ValueError):
        raise ConfigError("top_downsamplings", f"expected a whole number, not {top_downsamplings!r}") from None
    if levels < 0:
        raise ConfigError("top_downsamplings", f"must be 0 (one level) or more, not {top_downsamplings}")
    if levels == 0:  # one level: top_num_embeddings (64 by default in train.yaml) has nothing to size
        return {}
    factor = 2 ** levels
    if grid % factor or grid < factor:
        raise ConfigError("top_downsamplings", f"the bottom code grid of {grid}x{grid} is not divisible by "
                                               f"2**top_downsamplings = {factor}; the top grid must be whole "
                                               f"(at most {_max_levels(grid)} top downsamplings here)")
    if isinstance(top_num_embeddings, str) and top_num_embeddings.strip().lower() in ("", "null", "none"):
        top_num_embeddings = None  # "null" from the command line
    try:
        top_k = num_embeddings if top_num_embeddings is None else int(top_num_embeddings)
    except (TypeError, ValueError):
        raise ConfigError("top_num_embeddings", f"expected null or a number of codes, not {top_num_embeddings!r}"
                          ) from None
    if top_k < 2:
        raise ConfigError("top_num_embeddings", f"the top codebook needs at least 2 codes, not {top_num_embeddings}")
    try:
        rate = float(top_only_rate)
    except (TypeError, ValueError):
        raise ConfigError("top_only_rate", f"expected a share in [0, 1), not {top_only_rate!r}") from None
    if not 0.0 <= rate < 1.0:
        raise ConfigError("top_only_rate", f"the share of images decoded from the top codes alone must be in [0, 1), "
                                           f"not {top_only_rate}")
    try:
        slope = float(top_negative_slope)
    except (TypeError, ValueError):
        raise ConfigError("top_negative_slope", f"expected a number, not {top_negative_slope!r}") from None
    if not 0.0 <= slope < 1.0:
        raise ConfigError("top_negative_slope", f"LeakyReLU's negative slope must be in [0, 1), not {slope}")
    try:
        image_weight = float(top_image_weight)
    except (TypeError, ValueError):
        raise ConfigError("top_image_weight", f"expected a number, not {top_image_weight!r}") from None
    if not image_weight >= 0.0:
        raise ConfigError("top_image_weight", f"the weight of the top level's image term must be 0 or more, "
                                              f"not {top_image_weight}")
    return {"top_downsamplings": levels, "top_num_embeddings": top_k, "top_grid_size": grid // factor,
            "top_only_rate": rate, "top_negative_slope": slope, "top_image_weight": image_weight}


def _max_levels(grid: int) -> int:
    levels = 0
    while grid % 2 == 0 and grid > 1:
        grid, levels = grid // 2, levels + 1
    return levels


def vqvae_from_spec(spec: ModelSpec | Mapping[str, Any]) -> VQVAE | TwoLevelVQVAE:
    """Build the VQ-VAE a spec describes (two-level when it has ``top_downsamplings`` >= 1)."""
    s = spec.values if isinstance(spec, ModelSpec) else dict(spec)
    levels = s["num_downsamplings"]
    if s.get("top_downsamplings", 0):
        return TwoLevelVQVAE(
            spatial_dims=2, in_channels=1, out_channels=1, channels=tuple(s["channels"]),
            num_res_layers=s["num_res_layers"], num_res_channels=tuple(s["num_res_channels"]),
            top_downsamplings=s["top_downsamplings"], num_embeddings=s["num_embeddings"],
            top_num_embeddings=s["top_num_embeddings"], embedding_dim=s["embedding_dim"],
            commitment_cost=s["commitment_cost"], decay=s["decay"], downsample_parameters=DOWNSAMPLE,
            upsample_parameters=UPSAMPLE, output_act=s["output_act"], top_only_rate=s.get("top_only_rate", 0.0),
            top_negative_slope=s.get("top_negative_slope", 0.0), top_image_weight=s.get("top_image_weight", 0.0),
        )
    network = VQVAE(
        spatial_dims=2, in_channels=1, out_channels=1,
        channels=tuple(s["channels"]), num_res_layers=s["num_res_layers"],
        num_res_channels=tuple(s["num_res_channels"]),
        downsample_parameters=(DOWNSAMPLE,) * levels, upsample_parameters=(UPSAMPLE,) * levels,
        num_embeddings=s["num_embeddings"], embedding_dim=s["embedding_dim"],
        commitment_cost=s["commitment_cost"], decay=s["decay"], output_act=s["output_act"],
    )
    # the same codebook, gathering its statistics by code index (no one-hot matrix per step)
    network.quantizer.quantizer = quantizer_copy(network.quantizer.quantizer)
    return network


def read_vqvae_spec(path: str | Path) -> ModelSpec:
    """The architecture saved in a VQ-VAE checkpoint (what :func:`vqvae_from_spec` builds), without its weights."""
    return ModelSpec(**read_network_checkpoint(path, "VQ-VAE", VQVAE_MARKER)["spec"])


def load_vqvae(path: str | Path, device: str | torch.device = "cpu") -> tuple[VQVAE | TwoLevelVQVAE, ModelSpec]:
    """Rebuild a trained VQ-VAE (one level or two) from its checkpoint (architecture and weights), in eval mode."""
    return load_network(path, vqvae_from_spec, "VQ-VAE", VQVAE_MARKER, device)


class VQVAEReconstruction(torch.nn.Module):
    """
    A VQ-VAE as an image-to-image network: ``forward(images)`` returns the reconstruction alone, clamped to [0, 1]
    as inference writes it. MONAI's ``verify_net_in_out`` and an MLflow model signature expect one output tensor;
    the VQ-VAE itself also returns its quantization loss.

    Args:
        vqvae: a VQ-VAE of one or two levels (:func:`vqvae_from_spec`).
    """

    def __init__(self, vqvae: torch.nn.Module):
        super().__init__()
        self.vqvae = vqvae

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstructions ``[N, 1, H, W]`` of images ``[N, 1, H, W]`` in [0, 1]."""
        output = self.vqvae(images)
        return (output[0] if isinstance(output, tuple) else output).clamp(0.0, 1.0)


def named_quantizers(network: torch.nn.Module) -> dict[str, EMAQuantizer]:
    """
    The EMA quantizers of a VQ-VAE (unwrapped from DDP) by level name: ``{"": q}`` for one level,
    ``{"top": q_top, "": q_bottom}`` for two (the bottom keeps the unnamed slot, so its metric names are the
    single-level ones).
    """
    network = getattr(network, "module", network)
    if isinstance(network, TwoLevelVQVAE):
        top, bottom = network.quantizers
        return {"top": top.quantizer, "": bottom.quantizer}
    return {"": network.quantizer.quantizer}


def is_two_level(spec: ModelSpec | Mapping[str, Any]) -> bool:
    """Whether a VQ-VAE spec describes a two-level model (a top grid above the bottom one)."""
    values = spec.values if isinstance(spec, ModelSpec) else dict(spec)
    return bool(values.get("top_downsamplings", 0))


def level_sizes(spec: ModelSpec | Mapping[str, Any], level: str = "bottom") -> tuple[int, int]:
    """``(K, grid side)`` of one level's codes: ``"bottom"`` (the only level of a single-level VQ-VAE) or ``"top"``.

    Raises:
        ConfigError: ``level`` is not one of the two, or ``"top"`` for a single-level VQ-VAE.
    """
    values = spec.values if isinstance(spec, ModelSpec) else dict(spec)
    if level not in LEVELS:
        raise ConfigError("level", f"must be one of {list(LEVELS)}, not {level!r}")
    if level == "bottom":
        return int(values["num_embeddings"]), int(values["grid_size"])
    if not is_two_level(values):
        raise ConfigError("level", "this VQ-VAE has one level (top_downsamplings 0): its codes are level 'bottom'")
    return int(values["top_num_embeddings"]), int(values["top_grid_size"])

"""Gated PixelCNN prior over the integer code grids of a VQ-VAE: the network, its saved spec, building and loading.

The network follows the gated architecture of van den Oord et al. (2016), "Conditional Image Generation with
PixelCNN Decoders", in the variant without blind spot; its layers (and how causality is built without masked
kernels) are in :mod:`oasis_gen.networks.pixelcnn_layers`.

Two kinds of conditioning enter every layer as biases of the gate pre-activations of both stacks: a class label
(``num_classes``: one bias per class) and, for the bottom prior of a two-level VQ-VAE, a spatial grid of codes
(``cond_num_embeddings``: the top code grid, ``cond_factor`` times coarser) turned into a per-position bias by the
stacks of :mod:`oasis_gen.networks.pixelcnn_conditioning`. The grid is fully given, so it is outside the raster
order: a logit may depend on any of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from oasis_gen.networks.pixelcnn_conditioning import ConditioningStack, local_features, local_stack
from oasis_gen.networks.pixelcnn_layers import GatedPixelCNNLayer, PixelCNNOutputHead, check_kernel_size
from oasis_gen.networks.spec import ModelSpec, load_network
from oasis_gen.utils.config_values import check_positive_int

__all__ = ["GatedPixelCNN", "load_pixelcnn", "pixelcnn_from_spec", "pixelcnn_spec"]


class GatedPixelCNN(nn.Module):
    """
    Gated PixelCNN (van den Oord et al., 2016) without blind spot: an autoregressive prior over ``K``-way
    integer code grids, such as the latent grids of a VQ-VAE, in raster order (row by row, left to right).

    The logits at (i, j) depend only on the codes before (i, j) in raster order: all rows above within reach
    of the receptive field and the codes to the left on row ``i``. With ``p = kernel_size // 2`` and
    ``L = num_layers``, they see ``L * p + 1`` rows above and ``L * p`` columns to each side (see
    :attr:`receptive_field`).

    Args:
        num_embeddings: number of codes ``K`` (the VQ-VAE codebook size); inputs must lie in ``[0, K)``.
        channels: number of feature channels of the code embedding and of both stacks. Defaults to 64.
        num_layers: number of gated layers; the first uses mask "A", the others mask "B". Defaults to 12.
        kernel_size: odd receptive field ``>= 3`` of each layer. Defaults to 3.
        num_classes: number of classes of an optional conditioning label (e.g. a slice-position bucket), added
            as a learned per-layer, per-class bias inside the gates. ``None`` (default) for an unconditional
            prior.
        dropout: dropout ratio on the gated horizontal features of each layer. Defaults to no dropout.
        out_channels_hidden: number of channels between the two 1x1 convolutions of the output head. Defaults
            to ``2 * channels``.
        cond_num_embeddings: number of codes of an optional spatial conditioning grid (e.g. the top code grid of
            a two-level VQ-VAE, for the bottom prior). The grid is fully given, so it is seen everywhere: it is
            embedded, enlarged (nearest) by ``cond_factor`` to the code grid, run through a small non-causal
            convolution stack, and added by each layer as a per-position bias inside the gates of both stacks.
            ``None`` (default) for a prior without spatial conditioning.
        cond_factor: how many codes of the modelled grid one conditioning code covers along each side: the
            conditioning grid of ``[H, W]`` codes is ``[H / cond_factor, W / cond_factor]``. Defaults to 2.
        cond_layers: the conditioning stack. ``0`` (default, the stack of earlier priors): the embedded grid is
            enlarged (nearest) and run through two 3x3 convolutions at the modelled grid's resolution, so a
            position sees the conditioning codes around it only. ``N >= 1``: a :class:`ConditioningStack` of ``N``
            dilated residual blocks at the conditioning grid's own resolution, with coordinate channels, then a
            learned enlargement: with 3 or more blocks every position sees the whole of an 8x8 grid (VQ-VAE-2's
            bottom prior reads the top grid through such a non-causal stack).
    """

    def __init__(
        self,
        num_embeddings: int,
        channels: int = 64,
        num_layers: int = 12,
        kernel_size: int = 3,
        num_classes: int | None = None,
        dropout: float = 0.0,
        out_channels_hidden: int | None = None,
        cond_num_embeddings: int | None = None,
        cond_factor: int = 2,
        cond_layers: int = 0,
    ) -> None:
        super().__init__()
        check_positive_int("num_embeddings", num_embeddings)
        check_positive_int("channels", channels)
        check_positive_int("num_layers", num_layers)
        check_kernel_size(kernel_size)
        if num_classes is not None:
            check_positive_int("num_classes", num_classes)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if out_channels_hidden is None:
            out_channels_hidden = 2 * channels
        check_positive_int("out_channels_hidden", out_channels_hidden)
        if cond_num_embeddings is not None:
            check_positive_int("cond_num_embeddings", cond_num_embeddings)
        check_positive_int("cond_factor", cond_factor)
        if isinstance(cond_layers, bool) or not isinstance(cond_layers, int) or cond_layers < 0:
            raise ValueError(f"cond_layers must be an integer >= 0, got {cond_layers!r}")

        self.num_embeddings = num_embeddings
        self.channels = channels
        self.num_layers = num_layers
        self.kernel_size = kernel_size
        self.num_classes = num_classes
        self.dropout = dropout
        self.out_channels_hidden = out_channels_hidden
        self.cond_num_embeddings = cond_num_embeddings
        self.cond_factor = cond_factor
        self.cond_layers = cond_layers

        self.embedding = nn.Embedding(num_embeddings, channels)
        self.cond_embedding: nn.Embedding | None = None
        self.cond_net: nn.Sequential | None = None
        self.cond_stack: ConditioningStack | None = None
        if cond_num_embeddings is not None and cond_layers > 0:
            self.cond_stack = ConditioningStack(cond_num_embeddings, channels, cond_layers, cond_factor)
        elif cond_num_embeddings is not None:
            self.cond_embedding, self.cond_net = local_stack(cond_num_embeddings, channels)
        self.layers = nn.ModuleList(
            GatedPixelCNNLayer(
                channels=channels,
                kernel_size=kernel_size,
                mask_type="A" if i == 0 else "B",
                num_classes=num_classes,
                dropout=dropout,
                output_stacks=i < num_layers - 1,
                cond_channels=None if cond_num_embeddings is None else channels,
            )
            for i in range(num_layers)
        )
        self.head = PixelCNNOutputHead(channels, out_channels_hidden, num_embeddings)

    @property
    def receptive_field(self) -> tuple[int, int]:
        """``(rows, cols)``: how many rows above and columns to each side the logits at a position can see."""
        reach = self.num_layers * (self.kernel_size // 2)
        return reach + 1, reach

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Code embedding, channels first: ``[B, H, W]`` integer codes -> ``[B, channels, H, W]``."""
        return self.embedding(codes).movedim(-1, 1)

    def check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """
        Validate a batch of code grids and return it as int64.

        Raises:
            TypeError: ``codes`` is not an integer tensor.
            ValueError: ``codes`` is not ``[B, H, W]`` or has values outside ``[0, num_embeddings)``.
        """
        return _check_indices(codes, "codes", self.num_embeddings, (None, None, None), "[batch, height, width]",
                              range_note=f" for a prior over {self.num_embeddings} codes")

    def check_labels(self, labels: torch.Tensor | int | None, batch_size: int) -> torch.Tensor | None:
        """
        Validate the conditioning labels for a batch of ``batch_size`` grids and return them as an int64
        ``[B]`` tensor on the model's device (an ``int`` is broadcast to the whole batch), or ``None`` for an
        unconditional model.

        Raises:
            ValueError: labels missing for a conditional model, given to an unconditional one, of the wrong
                shape, or outside ``[0, num_classes)``.
            TypeError: labels are not integers.
        """
        if self.num_classes is None:
            if labels is not None:
                raise ValueError(
                    "this GatedPixelCNN is unconditional (num_classes=None), so labels must be None"
                )
            return None
        if labels is None:
            raise ValueError(
                f"this GatedPixelCNN is conditioned on {self.num_classes} classes: labels of shape "
                f"[{batch_size}] are required"
            )
        device = self.embedding.weight.device
        if isinstance(labels, int) and not isinstance(labels, bool):
            labels = torch.full((batch_size,), labels, dtype=torch.long, device=device)
        return _check_indices(labels, "labels", self.num_classes, (batch_size,), f"[{batch_size}] (one per grid)",
                              indices="class indices", accepted="an int or an integer tensor", device=device)

    def check_cond(self, cond: torch.Tensor | None, batch_size: int, grid: tuple[int, int]) -> torch.Tensor | None:
        """
        Validate a spatial conditioning grid for ``batch_size`` code grids of ``grid`` ``(H, W)`` and return it as
        int64 ``[B, H / cond_factor, W / cond_factor]`` on the model's device (one ``[h, w]`` grid is broadcast
        to the batch), or ``None`` for a model without spatial conditioning.

        Raises:
            ValueError: cond missing for a conditioned model, given to another one, of the wrong shape, or
                outside ``[0, cond_num_embeddings)``.
            TypeError: cond is not an integer tensor.
        """
        if self.cond_num_embeddings is None:
            if cond is not None:
                raise ValueError("this GatedPixelCNN has no spatial conditioning (cond_num_embeddings=None), so "
                                 "cond must be None")
            return None
        height, width = grid
        shape = (batch_size, height // self.cond_factor, width // self.cond_factor)
        if height % self.cond_factor or width % self.cond_factor:
            raise ValueError(f"code grids of {height}x{width} cannot be conditioned on a grid {self.cond_factor} "
                             "times smaller: both sides must be multiples of cond_factor")
        if cond is None:
            raise ValueError(f"this GatedPixelCNN is conditioned on a grid of {self.cond_num_embeddings} codes: "
                             f"cond of shape {list(shape)} is required")
        if isinstance(cond, torch.Tensor) and cond.dim() == 2:
            cond = cond.expand(batch_size, *cond.shape)
        return _check_indices(cond, "cond", self.cond_num_embeddings, shape,
                              f"{list(shape)} (codes {height}x{width} / cond_factor {self.cond_factor})",
                              device=self.embedding.weight.device)

    def cond_features(self, cond: torch.Tensor | None) -> torch.Tensor | None:
        """
        Features of a checked conditioning grid ``[B, h, w]`` (see :meth:`check_cond`) at the codes' resolution:
        ``[B, channels, h * cond_factor, w * cond_factor]``, or ``None`` without conditioning.
        """
        if cond is None:
            return None
        if self.cond_stack is not None:
            return self.cond_stack(cond)
        if self.cond_embedding is None or self.cond_net is None:
            return None
        return local_features(self.cond_embedding, self.cond_net, cond, self.cond_factor)

    def forward(
        self, codes: torch.Tensor, labels: torch.Tensor | int | None = None, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Args:
            codes: integer code grids ``[B, H, W]`` with values in ``[0, num_embeddings)``.
            labels: class labels ``[B]`` (or one ``int`` for the whole batch) when the model was built with
                ``num_classes``; must be ``None`` otherwise.
            cond: integer conditioning grids ``[B, H / cond_factor, W / cond_factor]`` (or one ``[h, w]`` grid
                for the whole batch) when the model was built with ``cond_num_embeddings``; must be ``None``
                otherwise. Seen at every position (it is not part of the raster order).

        Returns:
            logits ``[B, num_embeddings, H, W]``; those at (i, j) depend only on the codes before (i, j) in
            raster order, so ``softmax`` over dim 1 models ``p(codes[:, i, j] | codes before (i, j))``.
        """
        codes = self.check_codes(codes)
        labels = self.check_labels(labels, codes.shape[0])
        features = self.cond_features(self.check_cond(cond, codes.shape[0], (codes.shape[1], codes.shape[2])))
        v = h = self.embed(codes)
        skip: torch.Tensor | None = None
        for layer in self.layers:
            v, h, layer_skip = layer(v, h, labels, features)
            skip = layer_skip if skip is None else skip + layer_skip
        assert skip is not None  # num_layers >= 1
        return self.head(skip)


def _check_indices(values: Any, name: str, size: int, shape: tuple[int | None, ...], shape_text: str, *,
                   indices: str = "code indices", accepted: str = "an integer tensor", range_note: str = "",
                   device: torch.device | None = None) -> torch.Tensor:
    """
    The four checks of an input of indices (codes, labels, a conditioning grid): a tensor, of an integer dtype, of
    ``shape`` (``None``: any size on that dimension; ``shape_text`` says it in the error), with values in
    ``[0, size)``. Returns it as int64, on ``device`` when one is given.

    Raises:
        TypeError: not a tensor, or not of an integer dtype.
        ValueError: the wrong shape, or values outside ``[0, size)``.
    """
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"{name} must be {accepted} of {indices}, got {type(values).__name__}")
    if values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of {indices}, got dtype {values.dtype}")
    if values.dim() != len(shape) or any(
        want is not None and got != want for got, want in zip(values.shape, shape, strict=True)
    ):
        raise ValueError(f"{name} must have shape {shape_text}, got {list(values.shape)}")
    # the range is checked on real data only: torch.export (MLflow's model format) cannot trace a branch on
    # values; an exported prior still fails on an index outside the range (its embedding lookup)
    if values.numel() > 0 and not torch.compiler.is_exporting():
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= size:
            raise ValueError(f"{name} must lie in [0, {size}){range_note}, got values in [{low}, {high}]")
    return values.to(device=device, dtype=torch.long)



def pixelcnn_spec(
    num_embeddings: int,
    grid_size: int,
    channels: int = 64,
    num_layers: int = 12,
    kernel_size: int = 3,
    num_classes: int | None = None,
    dropout: float = 0.0,
    out_channels_hidden: int | None = None,
    vqvae_checkpoint: str | None = None,
    vqvae_sha256: str | None = None,
    cond_num_embeddings: int | None = None,
    cond_factor: int = 2,
    cond_layers: int = 0,
) -> ModelSpec:
    """The prior's architecture plus the VQ-VAE it models (path and hash), as saved in its checkpoints.

    The spatial conditioning keys (``cond_num_embeddings``, ``cond_factor``) are written only for a conditioned
    prior, so the specs of other priors stay as they were.
    """
    spec = ModelSpec(num_embeddings=int(num_embeddings), grid_size=int(grid_size), channels=int(channels),
                     num_layers=int(num_layers), kernel_size=int(kernel_size),
                     num_classes=None if num_classes is None else int(num_classes), dropout=float(dropout),
                     out_channels_hidden=None if out_channels_hidden is None else int(out_channels_hidden),
                     vqvae_checkpoint=vqvae_checkpoint, vqvae_sha256=vqvae_sha256)
    if cond_num_embeddings is not None:
        spec.values.update(cond_num_embeddings=int(cond_num_embeddings), cond_factor=int(cond_factor))
        if cond_layers:  # written only when set, so a spec of the earlier stack reads as before
            spec.values.update(cond_layers=int(cond_layers))
    pixelcnn_from_spec(spec)  # validates the sizes now, with clear errors
    return spec


def pixelcnn_from_spec(spec: ModelSpec | dict) -> GatedPixelCNN:
    """Build the Gated PixelCNN a spec describes."""
    s = spec.values if isinstance(spec, ModelSpec) else dict(spec)
    return GatedPixelCNN(num_embeddings=s["num_embeddings"], channels=s["channels"], num_layers=s["num_layers"],
                         kernel_size=s["kernel_size"], num_classes=s["num_classes"], dropout=s["dropout"],
                         out_channels_hidden=s["out_channels_hidden"],
                         cond_num_embeddings=s.get("cond_num_embeddings"), cond_factor=s.get("cond_factor", 2),
                         cond_layers=s.get("cond_layers", 0))


def load_pixelcnn(path: str | Path, device: str | torch.device = "cpu") -> tuple[GatedPixelCNN, ModelSpec]:
    """Rebuild a trained prior from its checkpoint (architecture and weights), in eval mode."""
    return load_network(path, pixelcnn_from_spec, "Gated PixelCNN", "num_layers", device)

"""Gated PixelCNN prior over the integer code grids of a VQ-VAE.

The network follows the gated architecture of van den Oord et al. (2016), "Conditional Image Generation with
PixelCNN Decoders", in the variant without blind spot: a vertical stack that sees every row above the current
one, a horizontal stack that sees the current row up to the current position, and a link from the first to
the second.

Causality is built from padded, valid (unpadded) convolutions rather than masked kernels, so no weight is ever
multiplied by a masked zero. With ``p = kernel_size // 2``, the receptive fields of one layer at position
(i, j) are

* vertical stack: rows ``i - p .. i`` and columns ``j - p .. j + p`` (a ``(p + 1) x kernel_size`` kernel over
  the input padded by ``p`` rows on top and ``p`` columns each side). It does see its own row, so it is never
  used directly: the horizontal stack receives it shifted down by one row, i.e. at row ``i`` it receives what
  the vertical stack computed from rows ``< i`` only;
* horizontal stack, mask "B": columns ``j - p .. j`` of row ``i`` (a ``1 x (p + 1)`` kernel over the input
  padded by ``p`` columns on the left);
* horizontal stack, mask "A" (first layer only): columns ``j - p .. j - 1`` (a ``1 x p`` kernel over the input
  shifted right by one more column), so the logits at (i, j) never see the code at (i, j).

Stacking ``L`` layers, the logits at (i, j) depend on the codes at rows ``i - 1 - L * p .. i - 1`` within
columns ``j - L * p .. j + L * p`` and at columns ``j - L * p .. j - 1`` of row ``i``: a rectangle above, with
no blind spot.

Every layer can also be evaluated at a single row (vertical stack) or a single position (horizontal stack)
from cached inputs, see :meth:`GatedPixelCNNLayer.vertical_step` and
:meth:`GatedPixelCNNLayer.horizontal_step`; the fast sampler in
:mod:`oasis_gen.inferers.pixelcnn_sampling` is built on them.

Two kinds of conditioning enter every layer as biases of the gate pre-activations of both stacks: a class label
(``num_classes``: one bias per class) and, for the bottom prior of a two-level VQ-VAE, a spatial grid of codes
(``cond_num_embeddings``: the top code grid, ``cond_factor`` times coarser) turned into a per-position bias.
The grid is fully given, so it is outside the raster order: a logit may depend on any of it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from oasis_gen.networks.spec import ModelSpec, load_network
from oasis_gen.utils.config_values import check_positive_int

__all__ = ["ConditioningStack", "GatedPixelCNN", "GatedPixelCNNLayer", "PixelCNNOutputHead"]


def _gate(x: torch.Tensor) -> torch.Tensor:
    """Gated activation unit ``tanh(a) * sigmoid(b)`` over the two halves ``a, b`` of dim 1 (channels)."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def _shift_down(x: torch.Tensor) -> torch.Tensor:
    """Shift a ``[B, C, H, W]`` map down by one row: row ``i`` receives row ``i - 1``, row 0 zeros."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def _linear_conv(conv: nn.Conv2d, window: torch.Tensor) -> torch.Tensor:
    """
    Apply ``conv`` at a single output position, given the input window it covers there.

    Args:
        conv: a convolution without padding, stride or dilation.
        window: ``[N, C_in, kh, kw]`` (or ``[N, C_in, kw]`` when ``kh == 1``, or ``[N, C_in]`` for a 1x1
            conv).

    Returns:
        ``[N, C_out]``, equal to ``conv(window)`` squeezed.
    """
    return F.linear(window.flatten(1), conv.weight.flatten(1), conv.bias)


class GatedPixelCNNLayer(nn.Module):
    """
    One gated layer of a Gated PixelCNN without blind spot: a vertical and a horizontal stack with gated
    ``tanh * sigmoid`` units, a 1x1 link from the (down-shifted) vertical to the horizontal stack, a residual
    1x1 on the horizontal stack and a 1x1 skip output.

    Args:
        channels: number of feature channels of both stacks; the gates work on ``2 * channels``
            pre-activations.
        kernel_size: odd receptive field ``k >= 3`` of the layer; the vertical stack uses a
            ``(k // 2 + 1) x k`` kernel, the horizontal stack ``1 x (k // 2 + 1)`` (mask "B") or
            ``1 x (k // 2)`` (mask "A").
        mask_type: "A" for the first layer, whose horizontal stack excludes the current position (and which
            has no residual connection, since its input there is the current code); "B" for all later layers.
        num_classes: number of classes of the optional conditioning label, added as a learned per-class bias
            to the gate pre-activations of both stacks. ``None`` for an unconditional layer.
        dropout: dropout ratio on the gated horizontal features, before the residual and skip 1x1
            convolutions.
        output_stacks: whether the layer passes its stacks on to a next layer. The last layer of a network
            only produces its skip output and owns no residual convolution (so that every parameter gets a
            gradient).
        cond_channels: channels of an optional spatial conditioning feature map (same height and width as the
            codes), projected by 1x1 convolutions to a per-position bias of the gate pre-activations of both
            stacks. ``None`` for a layer without spatial conditioning.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        mask_type: str = "B",
        num_classes: int | None = None,
        dropout: float = 0.0,
        output_stacks: bool = True,
        cond_channels: int | None = None,
    ) -> None:
        super().__init__()
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
        _check_kernel_size(kernel_size)

        self.channels = channels
        self.kernel_size = kernel_size
        self.mask_type = mask_type
        self.num_classes = num_classes
        self.output_stacks = output_stacks
        self.pad = kernel_size // 2
        # mask "A" sees p columns strictly left of the position, mask "B" those p and the position itself
        self.horizontal_width = self.pad if mask_type == "A" else self.pad + 1
        self.residual = mask_type == "B"

        self.v_conv = nn.Conv2d(channels, 2 * channels, kernel_size=(self.pad + 1, kernel_size))
        self.h_conv = nn.Conv2d(channels, 2 * channels, kernel_size=(1, self.horizontal_width))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, kernel_size=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(channels, channels, kernel_size=1)
        self.h_out: nn.Conv2d | None = nn.Conv2d(channels, channels, kernel_size=1) if output_stacks else None

        self.v_class: nn.Embedding | None = None
        self.h_class: nn.Embedding | None = None
        if num_classes is not None:
            # small random biases: a fresh model depends (weakly) on the label, yet starts near unconditional
            self.v_class = nn.Embedding(num_classes, 2 * channels)
            self.h_class = nn.Embedding(num_classes, 2 * channels)
            nn.init.normal_(self.v_class.weight, std=0.1)
            nn.init.normal_(self.h_class.weight, std=0.1)

        self.v_cond: nn.Conv2d | None = None
        self.h_cond: nn.Conv2d | None = None
        if cond_channels is not None:
            self.v_cond = nn.Conv2d(cond_channels, 2 * channels, kernel_size=1)
            self.h_cond = nn.Conv2d(cond_channels, 2 * channels, kernel_size=1)

    def class_bias(self, labels: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """
        Per-sample biases of the vertical and horizontal gate pre-activations for ``labels`` ``[N]``, each of
        shape ``[N, 2 * channels, 1, 1]``; ``(None, None)`` for an unconditional layer.
        """
        if self.v_class is None or self.h_class is None or labels is None:
            return None, None
        return self.v_class(labels)[:, :, None, None], self.h_class(labels)[:, :, None, None]

    def cond_bias(self, features: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """
        Per-position biases of the vertical and horizontal gate pre-activations from spatial conditioning
        features ``[N, cond_channels, H, W]``, each ``[N, 2 * channels, H, W]``; ``(None, None)`` without.
        """
        if self.v_cond is None or self.h_cond is None or features is None:
            return None, None
        return self.v_cond(features), self.h_cond(features)

    def forward(
        self, v: torch.Tensor, h: torch.Tensor, labels: torch.Tensor | None = None, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """
        Args:
            v: vertical-stack input ``[B, C, H, W]``.
            h: horizontal-stack input ``[B, C, H, W]``.
            labels: class labels ``[B]`` of a conditional layer, else ``None``.
            cond: spatial conditioning features ``[B, cond_channels, H, W]`` of a layer built with
                ``cond_channels``, else ``None``.

        Returns:
            ``(v_out, h_out, skip)``, each ``[B, C, H, W]``; ``v_out`` and ``h_out`` are ``None`` for a layer
            built with ``output_stacks=False``.
        """
        v_bias, h_bias = self.class_bias(labels)
        v_cond, h_cond = self.cond_bias(cond)
        p = self.pad

        v_pre = self.v_conv(F.pad(v, (p, p, p, 0)))
        if v_bias is not None:
            v_pre = v_pre + v_bias
        if v_cond is not None:
            v_pre = v_pre + v_cond

        h_padded = F.pad(h, (p, 0))
        if self.mask_type == "A":
            h_padded = h_padded[..., :-1]  # one more column of shift: position j sees columns j - p .. j - 1
        h_pre = self.h_conv(h_padded) + self.v_to_h(_shift_down(v_pre))
        if h_bias is not None:
            h_pre = h_pre + h_bias
        if h_cond is not None:
            h_pre = h_pre + h_cond

        gated = self.dropout(_gate(h_pre))
        skip = self.skip(gated)
        if self.h_out is None:
            return None, None, skip
        h_out = self.h_out(gated)
        if self.residual:
            h_out = h_out + h
        return _gate(v_pre), h_out, skip

    def top_link(self, batch_size: int, width: int, like: torch.Tensor) -> torch.Tensor:
        """
        The vertical -> horizontal link entering row 0, where the down-shifted vertical stack holds zeros.

        Returns:
            ``[batch_size, 2 * channels, width]``, on the device and dtype of ``like``.
        """
        zeros = like.new_zeros(batch_size, 2 * self.channels, 1, width)
        return self.v_to_h(zeros)[:, :, 0]

    def vertical_step(
        self, window: torch.Tensor, v_bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """
        Evaluate the vertical stack on one row ``r``.

        Args:
            window: rows ``r - p .. r`` of the vertical input, zero-padded by ``p`` columns on each side (and
                zero for rows above the grid): ``[N, C, p + 1, W + 2 * p]``.
            v_bias: the vertical bias of row ``r``, broadcastable to ``[N, 2 * C, 1, W]`` (the class bias from
                :meth:`class_bias` and/or row ``r`` of the vertical conditioning bias from :meth:`cond_bias`), or
                ``None``.

        Returns:
            ``(v_out, link)``: the gated vertical output at row ``r`` ``[N, C, W]`` (``None`` for a last
            layer), and the link ``[N, 2 * C, W]`` that the horizontal stack adds at row ``r + 1``.
        """
        v_pre = self.v_conv(window)
        if v_bias is not None:
            v_pre = v_pre + v_bias
        link = self.v_to_h(v_pre)[:, :, 0]
        v_out = _gate(v_pre)[:, :, 0] if self.output_stacks else None
        return v_out, link

    def horizontal_step(
        self, window: torch.Tensor, link: torch.Tensor, h_bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """
        Evaluate the horizontal stack at one position (i, j).

        Args:
            window: the horizontal inputs the layer sees at (i, j), ``[N, C, horizontal_width]``: columns
                ``j - p .. j - 1`` (mask "A") or ``j - p .. j`` (mask "B") of row ``i`` (zero left of it).
            link: the vertical -> horizontal link at (i, j), ``[N, 2 * C]`` (a column of
                :meth:`vertical_step`'s link for row ``i - 1``, or of :meth:`top_link` for row 0).
            h_bias: a horizontal bias at (i, j), broadcastable to ``[N, 2 * C]``, or ``None`` (the samplers fold
                the class and conditioning biases into ``link`` instead).

        Returns:
            ``(h_out, skip)``, each ``[N, C]``; ``h_out`` is ``None`` for a last layer.
        """
        h_pre = _linear_conv(self.h_conv, window) + link
        if h_bias is not None:
            h_pre = h_pre + h_bias.flatten(1)
        gated = self.dropout(_gate(h_pre))
        skip = _linear_conv(self.skip, gated)
        if self.h_out is None:
            return None, skip
        h_out = _linear_conv(self.h_out, gated)
        if self.residual:
            h_out = h_out + window[:, :, -1]  # a mask "B" window ends at the current position
        return h_out, skip


class PixelCNNOutputHead(nn.Module):
    """
    Output head of a Gated PixelCNN: ``ReLU -> 1x1 conv -> ReLU -> 1x1 conv`` from the summed skip connections
    to one logit per code.

    Args:
        in_channels: number of channels of the summed skip connections.
        hidden_channels: number of channels between the two 1x1 convolutions.
        num_embeddings: number of codes ``K``, i.e. of output logits.
    """

    def __init__(self, in_channels: int, hidden_channels: int, num_embeddings: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden_channels, kernel_size=1)
        self.conv2 = nn.Conv2d(hidden_channels, num_embeddings, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_channels, H, W]`` -> logits ``[B, num_embeddings, H, W]``."""
        return self.conv2(F.relu(self.conv1(F.relu(x))))

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """The head at one position: ``[N, in_channels]`` -> logits ``[N, num_embeddings]``."""
        return _linear_conv(self.conv2, F.relu(_linear_conv(self.conv1, F.relu(x))))


class ConditioningStack(nn.Module):
    """
    Features of a fully given conditioning code grid (the top codes of a two-level VQ-VAE) for every position of a
    ``factor`` times finer grid: embedding plus coordinate channels, ``num_blocks`` non-causal residual blocks
    (ReLU, dilated 3x3, ReLU, 1x1) at the grid's own resolution with dilations 1, 2, 4, 1, 2, 4, ..., and a
    transposed convolution that gives each of the ``factor x factor`` fine positions under a code its own features.

    Args:
        num_embeddings: codes of the conditioning grid.
        channels: feature channels.
        num_blocks: residual blocks; each widens the reach by its dilation (3 blocks: 7 codes to each side).
        factor: how many fine positions one conditioning code spans along each side.
    """

    def __init__(self, num_embeddings: int, channels: int, num_blocks: int, factor: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, channels)
        self.coordinates = nn.Conv2d(2, channels, kernel_size=1)
        self.dilations = [2 ** (i % 3) for i in range(num_blocks)]
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=d, dilation=d), nn.ReLU(),
                          nn.Conv2d(channels, channels, 1))
            for d in self.dilations
        )
        self.enlarge = nn.ConvTranspose2d(channels, channels, kernel_size=factor, stride=factor)

    @property
    def reach(self) -> int:
        """How many conditioning codes to each side a feature sees."""
        return sum(self.dilations)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        """Integer grids ``[B, h, w]`` -> features ``[B, channels, h * factor, w * factor]``."""
        features = self.embedding(cond).movedim(-1, 1)
        height, width = cond.shape[-2:]
        rows = torch.linspace(-1.0, 1.0, height, device=features.device, dtype=features.dtype)
        cols = torch.linspace(-1.0, 1.0, width, device=features.device, dtype=features.dtype)
        grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"))[None]
        features = features + self.coordinates(grid)
        for block in self.blocks:
            features = features + block(features)
        return self.enlarge(F.relu(features))


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
        _check_kernel_size(kernel_size)
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
            self.cond_embedding = nn.Embedding(cond_num_embeddings, channels)
            # non-causal: the conditioning grid is fully given, so each position may see its neighbours
            self.cond_net = nn.Sequential(
                nn.Conv2d(channels, channels, kernel_size=3, padding=1),
                nn.ReLU(),
                nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            )
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
        if not isinstance(codes, torch.Tensor):
            raise TypeError(f"codes must be a torch.Tensor of code indices, got {type(codes).__name__}")
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise TypeError(f"codes must be an integer tensor of code indices, got dtype {codes.dtype}")
        if codes.dim() != 3:
            raise ValueError(f"codes must have shape [batch, height, width], got {tuple(codes.shape)}")
        # the range is checked on real data only: torch.export (MLflow's model format) cannot trace a branch on
        # values; an exported prior still fails on a code outside [0, K) (its embedding lookup)
        if codes.numel() > 0 and not torch.compiler.is_exporting():
            low, high = int(codes.min()), int(codes.max())
            if low < 0 or high >= self.num_embeddings:
                raise ValueError(
                    f"codes must lie in [0, {self.num_embeddings}) for a prior over {self.num_embeddings} "
                    f"codes, got values in [{low}, {high}]"
                )
        return codes.long()

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
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be an int or an integer tensor, got {type(labels).__name__}")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor of class indices, got dtype {labels.dtype}")
        if labels.shape != (batch_size,):
            raise ValueError(
                f"labels must have shape [{batch_size}] (one per grid), got {tuple(labels.shape)}"
            )
        if labels.numel() > 0 and not torch.compiler.is_exporting():  # values: on real data only (see check_codes)
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= self.num_classes:
                raise ValueError(f"labels must lie in [0, {self.num_classes}), got values in [{low}, {high}]")
        return labels.to(device=device, dtype=torch.long)

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
        if not isinstance(cond, torch.Tensor):
            raise TypeError(f"cond must be an integer tensor, got {type(cond).__name__}")
        if cond.dtype.is_floating_point or cond.dtype.is_complex or cond.dtype == torch.bool:
            raise TypeError(f"cond must be an integer tensor of code indices, got dtype {cond.dtype}")
        if cond.dim() == 2:
            cond = cond.expand(batch_size, *cond.shape)
        if tuple(cond.shape) != shape:
            raise ValueError(f"cond must have shape {list(shape)} (codes {height}x{width} / cond_factor "
                             f"{self.cond_factor}), got {list(cond.shape)}")
        if cond.numel() > 0 and not torch.compiler.is_exporting():  # values: on real data only (see check_codes)
            low, high = int(cond.min()), int(cond.max())
            if low < 0 or high >= self.cond_num_embeddings:
                raise ValueError(f"cond must lie in [0, {self.cond_num_embeddings}), got values in [{low}, {high}]")
        return cond.to(device=self.embedding.weight.device, dtype=torch.long)

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
        embedded = self.cond_embedding(cond).movedim(-1, 1)
        return self.cond_net(F.interpolate(embedded, scale_factor=self.cond_factor, mode="nearest"))

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


def _check_kernel_size(kernel_size: int) -> None:
    if (
        isinstance(kernel_size, bool)
        or not isinstance(kernel_size, int)
        or kernel_size < 3
        or kernel_size % 2 == 0
    ):
        raise ValueError(f"kernel_size must be an odd integer >= 3, got {kernel_size!r}")


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

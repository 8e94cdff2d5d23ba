"""The layers of a Gated PixelCNN: a gated layer with its vertical and horizontal stacks, and the output head.

The network (:class:`oasis_gen.networks.pixelcnn.GatedPixelCNN`) follows the gated architecture of van den Oord
et al. (2016), "Conditional Image Generation with PixelCNN Decoders", in the variant without blind spot: a
vertical stack that sees every row above the current one, a horizontal stack that sees the current row up to the
current position, and a link from the first to the second.

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
:meth:`GatedPixelCNNLayer.horizontal_step`; the fast sampler's caches
(:mod:`oasis_gen.inferers.pixelcnn_incremental`) are built on them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["GatedPixelCNNLayer", "PixelCNNOutputHead", "check_kernel_size"]


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
        check_kernel_size(kernel_size)

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


def check_kernel_size(kernel_size: int) -> None:
    """Raise ``ValueError`` unless ``kernel_size`` is an odd integer >= 3."""
    if (
        isinstance(kernel_size, bool)
        or not isinstance(kernel_size, int)
        or kernel_size < 3
        or kernel_size % 2 == 0
    ):
        raise ValueError(f"kernel_size must be an odd integer >= 3, got {kernel_size!r}")

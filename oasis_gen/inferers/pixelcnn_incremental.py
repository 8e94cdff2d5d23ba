"""The caches that let a :class:`~oasis_gen.networks.pixelcnn.GatedPixelCNN` generate a code grid one position
at a time in raster order, at about the cost of a single forward pass.

:class:`IncrementalState` computes the vertical stack once per row (from cached rows above) and the horizontal
stack once per position (from cached left neighbours), through the layers' single-row and single-position steps
(:meth:`~oasis_gen.networks.pixelcnn_layers.GatedPixelCNNLayer.vertical_step`,
:meth:`~oasis_gen.networks.pixelcnn_layers.GatedPixelCNNLayer.horizontal_step`). Its logits equal the network's
up to float rounding (see :func:`incremental_logits`), which is why the fast sampler of
:mod:`oasis_gen.inferers.pixelcnn_sampling` draws the same codes as the naive one.

A prior with spatial conditioning (``cond_num_embeddings``: the bottom prior of a two-level VQ-VAE, given the
top code grid) takes ``cond`` everywhere; the grid is fully given, so its per-position biases are computed once
and sliced per row (vertical stack) and per position (horizontal stack).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from oasis_gen.networks.pixelcnn import GatedPixelCNN
from oasis_gen.utils.config_values import check_positive_int

__all__ = ["IncrementalState", "check_grid", "evaluating", "incremental_logits"]


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for the duration of the block, then the model's previous mode back."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class IncrementalState:
    """
    The caches of a :class:`GatedPixelCNN` for generating code grids one position at a time in raster order.

    At each position call :meth:`step` for the logits there (optional), then :meth:`push` to fix the codes
    there and move on. Work is done lazily and only once:

    * the vertical stack of row ``r`` is computed (for every layer, from a rolling window of the ``p + 1``
      rows it needs) the first time a logit of row ``r + 1`` or later is asked for;
    * the horizontal stack at (i, j) is computed (for every layer, from the cached outputs left of it on row
      ``i``) the first time a logit at (i, j) or right of it on row ``i`` is asked for.

    Rows with no :meth:`step` call therefore cost only their vertical stack, and the horizontal stack of a row
    stops at its last wanted position. The model must already be in eval mode with gradients disabled (the
    samplers do that); the results equal ``model(codes, labels)`` up to float rounding.

    Args:
        model: the prior.
        num_samples: number of grids ``N`` generated together.
        grid: ``(height, width)`` of the code grids.
        labels: class labels ``[N]`` (or one ``int``) for a conditional model, else ``None``.
        cond: conditioning grids ``[N, H / cond_factor, W / cond_factor]`` (or one ``[h, w]``) for a model with
            spatial conditioning, else ``None``.
    """

    def __init__(
        self,
        model: GatedPixelCNN,
        num_samples: int,
        grid: tuple[int, int],
        labels: torch.Tensor | int | None = None,
        cond: torch.Tensor | None = None,
    ) -> None:
        check_positive_int("num_samples", num_samples)
        self.model = model
        self.num_samples = num_samples
        self.height, self.width = check_grid(grid)
        self.labels = model.check_labels(labels, num_samples)
        self.cond = model.check_cond(cond, num_samples, (self.height, self.width))

        weight = model.embedding.weight
        self.codes = torch.zeros(num_samples, self.height, self.width, dtype=torch.long, device=weight.device)
        self.position = 0  # raster index of the next position to push

        n, c, w, p = num_samples, model.channels, self.width, model.kernel_size // 2
        self._pad = p
        self._biases = [layer.class_bias(self.labels) for layer in model.layers]
        # conditioning features [N, C, H, W] (or None), computed once; each layer projects one row of them at a
        # time to its gate biases, so no [N, 2C, H, W] map per layer is ever held
        self._features = model.cond_features(self.cond)
        # vertical inputs of each layer at rows r - p .. r (r: last row computed), zero-padded by p columns
        self._windows = [weight.new_zeros(n, c, p + 1, w + 2 * p) for _ in model.layers]
        # vertical -> horizontal links of each layer for row `_link_row`, [N, 2C, W], with the horizontal
        # class and conditioning biases of that row folded in once per row
        self._links = [
            self._with_row_bias(layer.top_link(n, w, weight), index, 0)
            for index, layer in enumerate(model.layers)
        ]
        self._link_row = 0
        # horizontal inputs of each layer on row `_hidden_row`, zero-padded by p columns on the left; layer 0
        # reads the code embeddings, written by push()
        self._rows = [weight.new_zeros(n, c, w + p) for _ in model.layers]
        self._hidden_row = 0
        self._hidden_cols = 0  # columns of `_hidden_row` whose horizontal stacks are computed
        self._skip: torch.Tensor | None = None  # summed skip outputs at column `_hidden_cols - 1`

    @property
    def done(self) -> bool:
        """Whether every position of the grid has been pushed."""
        return self.position >= self.height * self.width

    @property
    def next_position(self) -> tuple[int, int]:
        """``(row, col)`` of the position that :meth:`step` and :meth:`push` act on next."""
        return divmod(self.position, self.width)

    def step(self) -> torch.Tensor:
        """Logits ``[N, K]`` at the next position, given the codes pushed so far."""
        if self.done:
            raise RuntimeError("the grid is complete: every position has been pushed")
        i, j = self.next_position
        if self._hidden_row != i:
            while self._link_row < i:
                self._vertical_row(self._link_row)
            self._hidden_row, self._hidden_cols = i, 0
        while self._hidden_cols <= j:
            self._skip = self._horizontal_position(self._hidden_cols)
            self._hidden_cols += 1
        assert self._skip is not None
        return self.model.head.step(self._skip)

    def push(self, codes: torch.Tensor) -> None:
        """Fix the codes ``[N]`` at the next position and move to the one after it."""
        if self.done:
            raise RuntimeError("the grid is complete: every position has been pushed")
        if codes.shape != (self.num_samples,):
            raise ValueError(
                f"push() takes one code per sample, shape [{self.num_samples}], got {tuple(codes.shape)}"
            )
        codes = self.model.check_codes(codes.to(self.codes.device)[:, None, None])[:, 0, 0]
        i, j = self.next_position
        self.codes[:, i, j] = codes
        self._rows[0][:, :, j + self._pad] = self.model.embedding(self.codes[:, i, j])
        self.position += 1

    def _vertical_row(self, r: int) -> None:
        """Run the vertical stack of all layers on row ``r`` (all pushed); keep the links to row ``r + 1``."""
        p = self._pad
        new_row: torch.Tensor | None = F.pad(self.model.embed(self.codes[:, r : r + 1]), (p, p))
        for index, layer in enumerate(self.model.layers):
            assert new_row is not None  # only the last layer has no vertical output
            window = torch.cat((self._windows[index][:, :, 1:], new_row), dim=2)
            self._windows[index] = window
            v_out, link = layer.vertical_step(window, self._vertical_bias(index, r))
            self._links[index] = self._with_row_bias(link, index, r + 1)
            new_row = None if v_out is None else F.pad(v_out.unsqueeze(2), (p, p))
        self._link_row = r + 1

    def _row_cond_bias(self, index: int, row: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Vertical and horizontal conditioning biases of layer ``index`` on one row, each ``[N, 2C, 1, W]``."""
        if self._features is None:
            return None, None
        return self.model.layers[index].cond_bias(self._features[:, :, row : row + 1])

    def _vertical_bias(self, index: int, r: int) -> torch.Tensor | None:
        """The vertical gate bias of layer ``index`` on row ``r``: class bias plus row ``r`` of the conditioning."""
        bias, cond = self._biases[index][0], self._row_cond_bias(index, r)[0]
        if cond is not None:
            bias = cond if bias is None else bias + cond
        return bias

    def _with_row_bias(self, link: torch.Tensor, index: int, row: int) -> torch.Tensor:
        """``link`` ``[N, 2C, W]`` of row ``row`` plus the horizontal class and conditioning biases there."""
        h_bias = self._biases[index][1]
        if h_bias is not None:
            link = link + h_bias[:, :, :, 0]
        if self._features is not None and row < self.height:  # the link past the last row is never used
            h_cond = self._row_cond_bias(index, row)[1]
            if h_cond is not None:
                link = link + h_cond[:, :, 0]
        return link

    def _horizontal_position(self, j: int) -> torch.Tensor:
        """Run the horizontal stack of every layer at column ``j`` of the current row; return the skip sum."""
        p = self._pad
        skip: torch.Tensor | None = None
        for index, layer in enumerate(self.model.layers):
            window = self._rows[index][:, :, j : j + layer.horizontal_width]
            h_out, layer_skip = layer.horizontal_step(window, self._links[index][:, :, j])
            if h_out is not None:
                self._rows[index + 1][:, :, j + p] = h_out
            skip = layer_skip if skip is None else skip + layer_skip
        assert skip is not None
        return skip


def incremental_logits(
    model: GatedPixelCNN,
    codes: torch.Tensor,
    labels: torch.Tensor | int | None = None,
    cond: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    All logits of a given batch of grids, computed position by position through :class:`IncrementalState`.

    Equals ``model(codes, labels, cond)`` in eval mode up to float rounding; it exists to check the fast sampler's
    path against the network's forward pass.

    Args:
        model: the prior (put in eval mode for the call, then restored).
        codes: integer code grids ``[N, H, W]``.
        labels: class labels ``[N]`` (or one ``int``) for a conditional model, else ``None``.
        cond: conditioning grids for a model with spatial conditioning, else ``None``.

    Returns:
        logits ``[N, K, H, W]``.
    """
    codes = model.check_codes(codes).to(model.embedding.weight.device)
    n, height, width = codes.shape
    with evaluating(model):
        state = IncrementalState(model, n, (height, width), labels, cond)
        logits = state.codes.new_empty((n, model.num_embeddings, height, width), dtype=torch.float32)
        for i in range(height):
            for j in range(width):
                logits[:, :, i, j] = state.step()
                state.push(codes[:, i, j])
    return logits


def check_grid(grid: tuple[int, int]) -> tuple[int, int]:
    """Validate a grid size: ``(height, width)``, two integers >= 1."""
    try:
        height, width = grid
    except (TypeError, ValueError):
        raise ValueError(f"grid must be (height, width), got {grid!r}") from None
    for size in (height, width):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"grid must be two integers >= 1 (height, width), got {grid!r}")
    return height, width

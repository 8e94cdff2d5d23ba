"""Sampling code grids from a :class:`~oasis_gen.networks.pixelcnn.GatedPixelCNN` prior.

A PixelCNN factorises ``p(codes)`` over raster order (row by row, left to right), so a grid is sampled one
position at a time, each from ``softmax(logits / temperature)`` given everything sampled before it.

* :func:`sample_codes_naive` is the reference: for every position it runs the whole network on the whole grid.
  Cost: ``H * W`` full forward passes.
* :func:`sample_codes` is the fast sampler. Built on :class:`IncrementalState`, it computes the vertical stack
  once per row (from cached rows above) and the horizontal stack once per position (from cached left
  neighbours), which is about the cost of a *single* forward pass plus Python overhead per position. Its
  logits equal the reference ones up to float rounding (see :func:`incremental_logits`), so both samplers draw
  the same codes from the same :class:`torch.Generator`.

A prior with spatial conditioning (``cond_num_embeddings``: the bottom prior of a two-level VQ-VAE, given the
top code grid) takes ``cond`` everywhere; the grid is fully given, so its per-position biases are computed once
and sliced per row (vertical stack) and per position (horizontal stack).

Completion (``initial`` + ``region``, or :func:`complete_codes`) resamples only the positions in ``region``
and keeps the others exactly. Each resampled position is conditioned on everything *before* it in raster order
-- the rows above and the codes to its left, whether given or resampled -- which is the PixelCNN's causal
context: codes below or to the right of a position (even if given) cannot inform it.

Images come in and go out through :class:`oasis_gen.inferers.pixelcnn_inferer.VQVAEPixelCNNInferer`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

from oasis_gen.networks.pixelcnn import GatedPixelCNN
from oasis_gen.utils.config_values import check_positive_int

__all__ = [
    "IncrementalState", "check_truncation", "complete_codes", "evaluating", "incremental_logits", "sample_codes",
    "sample_codes_naive", "truncate_logits",
]


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


def _model_device(model: GatedPixelCNN) -> torch.device:
    return model.embedding.weight.device


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
        self.height, self.width = _check_grid(grid)
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
    codes = model.check_codes(codes).to(_model_device(model))
    n, height, width = codes.shape
    with evaluating(model):
        state = IncrementalState(model, n, (height, width), labels, cond)
        logits = state.codes.new_empty((n, model.num_embeddings, height, width), dtype=torch.float32)
        for i in range(height):
            for j in range(width):
                logits[:, :, i, j] = state.step()
                state.push(codes[:, i, j])
    return logits


def sample_codes_naive(
    model: GatedPixelCNN,
    num_samples: int,
    grid: tuple[int, int],
    temperature: float = 1.0,
    labels: torch.Tensor | int | None = None,
    generator: torch.Generator | None = None,
    initial: torch.Tensor | None = None,
    region: torch.Tensor | None = None,
    cond: torch.Tensor | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """
    Reference sampler: for each position in raster order, run the whole network on the whole grid and sample
    that position. Slow (``H * W`` forward passes); use :func:`sample_codes`, which draws the same codes.

    Args: as :func:`sample_codes` (without ``progress``).

    Returns:
        int64 code grids ``[num_samples, H, W]`` on the model's device.
    """
    codes, region, active = _prepare(model, num_samples, grid, temperature, initial, region)
    top_k, top_p = check_truncation(top_k, top_p)
    with evaluating(model):
        labels = model.check_labels(labels, num_samples)
        cond = model.check_cond(cond, num_samples, (codes.shape[1], codes.shape[2]))
        for i, j in active:
            logits = model(codes, labels, cond)[:, :, i, j]
            sampled = _draw(logits, temperature, generator, top_k, top_p)
            codes[:, i, j] = torch.where(region[:, i, j], sampled, codes[:, i, j])
    return codes


def sample_codes(
    model: GatedPixelCNN,
    num_samples: int,
    grid: tuple[int, int],
    temperature: float = 1.0,
    labels: torch.Tensor | int | None = None,
    generator: torch.Generator | None = None,
    initial: torch.Tensor | None = None,
    region: torch.Tensor | None = None,
    progress: bool = False,
    cond: torch.Tensor | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """
    Sample code grids from the prior with the incremental sampler (about the cost of one forward pass per
    grid).

    Args:
        model: the prior; put in eval mode for the call (then restored) and run without gradients.
        num_samples: number of grids ``N``.
        grid: ``(height, width)`` of the code grids (the VQ-VAE latent shape).
        temperature: ``> 0``; logits are divided by it before the softmax (``< 1`` sharper, ``> 1`` more
            diverse).
        labels: class labels ``[N]`` (or one ``int`` for all) for a conditional model, else ``None``.
        generator: random generator on the model's device, for reproducible samples.
        initial: for completion, the given code grids ``[N, H, W]``; requires ``region``.
        region: for completion, a bool mask ``[H, W]`` or ``[N, H, W]`` of the positions to resample; requires
            ``initial``. Positions outside it keep ``initial`` exactly. Positions inside are sampled in raster
            order, each conditioned on everything before it (rows above, codes to the left): the PixelCNN's
            causal context does not include what lies below or to the right, even where it is given.
        progress: show a tqdm progress bar over rows.
        cond: for a prior with spatial conditioning, the conditioning grids ``[N, H / cond_factor,
            W / cond_factor]`` (or one ``[h, w]`` for all), seen at every position; else ``None``.
        top_k: draw each code from the ``top_k`` most likely codes only (``None``: all).
        top_p: draw each code from the smallest set of most likely codes holding ``top_p`` of the probability
            (nucleus sampling; ``None``: all). Truncation trades diversity for typical codes.

    Returns:
        int64 code grids ``[num_samples, H, W]`` on the model's device.
    """
    codes, region, active = _prepare(model, num_samples, grid, temperature, initial, region)
    top_k, top_p = check_truncation(top_k, top_p)
    if not active:
        return codes
    last_row = active[-1][0]
    wanted = [[False] * codes.shape[2] for _ in range(last_row + 1)]
    for i, j in active:
        wanted[i][j] = True
    with evaluating(model):
        state = IncrementalState(model, num_samples, (codes.shape[1], codes.shape[2]), labels, cond)
        for i in tqdm(range(last_row + 1), desc="sampling codes", unit="row", disable=not progress):
            for j in range(codes.shape[2]):
                if wanted[i][j]:
                    sampled = _draw(state.step(), temperature, generator, top_k, top_p)
                    codes[:, i, j] = torch.where(region[:, i, j], sampled, codes[:, i, j])
                state.push(codes[:, i, j])
    return codes


def complete_codes(
    model: GatedPixelCNN,
    codes: torch.Tensor,
    region: torch.Tensor,
    temperature: float = 1.0,
    labels: torch.Tensor | int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    cond: torch.Tensor | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """
    Resample the positions of ``codes`` ``[N, H, W]`` in ``region`` (bool ``[H, W]`` or ``[N, H, W]``) and
    keep the others exactly; each resampled position is conditioned on what lies above it and to its left (see
    :func:`sample_codes`). Returns new int64 grids; ``codes`` is not modified.
    """
    if not isinstance(codes, torch.Tensor) or codes.dim() != 3:
        shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise ValueError(f"codes must be a tensor of shape [batch, height, width], got {shape}")
    n, height, width = codes.shape
    return sample_codes(
        model,
        n,
        (height, width),
        temperature,
        labels,
        generator,
        initial=codes,
        region=region,
        progress=progress,
        cond=cond,
        top_k=top_k,
        top_p=top_p,
    )


def truncate_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """
    ``logits`` ``[N, K]`` with every code outside the kept set at ``-inf``: the ``top_k`` most likely codes of
    each row, then of those the smallest set of most likely codes that holds at least ``top_p`` of the
    probability (nucleus sampling). ``None`` keeps all; the most likely code is always kept.
    """
    logits = logits.float()
    if top_k is not None and top_k < logits.shape[-1]:
        kept = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(top_k, dim=-1).indices, True)
        logits = logits.masked_fill(~kept, -math.inf)
    if top_p is not None and top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        # a code is kept while the mass of the codes more likely than it is still short of top_p
        dropped_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        dropped = torch.zeros_like(dropped_sorted).scatter_(-1, order, dropped_sorted)
        logits = logits.masked_fill(dropped, -math.inf)
    return logits


def _draw(logits: torch.Tensor, temperature: float, generator: torch.Generator | None, top_k: int | None = None,
          top_p: float | None = None) -> torch.Tensor:
    """One code per row of ``logits`` ``[N, K]`` from ``softmax(logits / temperature)``, truncated to ``top_k`` /
    ``top_p`` (:func:`truncate_logits`)."""
    probs = torch.softmax(truncate_logits(logits.float() / temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def check_truncation(top_k: int | None = None, top_p: float | None = None) -> tuple[int | None, float | None]:
    """Validate the truncation of sampling: ``top_k`` an integer >= 1 or None, ``top_p`` in (0, 1] or None."""
    if top_k is not None:
        check_positive_int("top_k", top_k)
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")
        top_p = float(top_p)
    return top_k, top_p


def _prepare(
    model: GatedPixelCNN,
    num_samples: int,
    grid: tuple[int, int],
    temperature: float,
    initial: torch.Tensor | None,
    region: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """
    Validate the sampling arguments.

    Returns:
        ``(codes, region, active)``: the starting grids ``[N, H, W]`` (a copy of ``initial``, or zeros), the
        region to sample ``[N, H, W]`` (all ``True`` without completion), and the positions in raster order
        where at least one grid is to be sampled.
    """
    check_positive_int("num_samples", num_samples)
    height, width = _check_grid(grid)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    if not math.isfinite(temperature):
        raise ValueError(f"temperature must be finite, got {temperature!r}")
    if (initial is None) != (region is None):
        raise ValueError(
            "completion needs both initial (the given codes) and region (the positions to resample)"
        )

    device = _model_device(model)
    shape = (num_samples, height, width)
    if initial is None or region is None:
        codes = torch.zeros(shape, dtype=torch.long, device=device)
        mask = torch.ones(shape, dtype=torch.bool, device=device)
    else:
        codes = model.check_codes(initial).to(device=device, copy=True)
        if codes.shape != shape:
            raise ValueError(
                f"initial must have shape {list(shape)} (num_samples, *grid), got {list(codes.shape)}"
            )
        if not isinstance(region, torch.Tensor) or region.dtype != torch.bool:
            raise TypeError("region must be a bool tensor marking the positions to resample")
        if region.shape not in (shape, shape[1:]):
            raise ValueError(
                f"region must have shape {list(shape[1:])} or {list(shape)}, got {list(region.shape)}"
            )
        mask = region.to(device).expand(shape)
    active = [(int(i), int(j)) for i, j in mask.any(dim=0).nonzero().tolist()]
    return codes, mask, active


def _check_grid(grid: tuple[int, int]) -> tuple[int, int]:
    try:
        height, width = grid
    except (TypeError, ValueError):
        raise ValueError(f"grid must be (height, width), got {grid!r}") from None
    for size in (height, width):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"grid must be two integers >= 1 (height, width), got {grid!r}")
    return height, width

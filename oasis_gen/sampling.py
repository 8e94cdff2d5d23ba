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

Completion (``initial`` + ``region``, or :func:`complete_codes`) resamples only the positions in ``region``
and keeps the others exactly. Each resampled position is conditioned on everything *before* it in raster order
-- the rows above and the codes to its left, whether given or resampled -- which is the PixelCNN's causal
context: codes below or to the right of a position (even if given) cannot inform it.

The end of the module puts a prior and its VQ-VAE together (:func:`load_models` checks that they fit):
:func:`generate` draws new slices, :func:`complete_scan` completes a region (:func:`region_mask`) of a real one,
and :func:`write_samples` / :func:`write_completion` write the pictures and codes; ``bundle/configs/sample.yaml``
runs them from the command line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from oasis_gen.errors import CheckpointError, ConfigError
from oasis_gen.files import atomic_path, write_text
from oasis_gen.networks.pixelcnn import GatedPixelCNN
from oasis_gen.networks.spec import ModelSpec, file_sha256
from oasis_gen.pictures import code_map_picture, save_png, tile, to_uint8
from oasis_gen.threads import torch_threads

__all__ = [
    "IncrementalState", "complete_codes", "incremental_logits", "sample_codes", "sample_codes_naive",
    # generation: a prior and its VQ-VAE together
    "GenerationModels", "check_compatible", "complete_scan", "decode_codes", "encode_images", "generate",
    "load_models", "load_scan", "optional", "region_mask", "sampling_threads", "Timed", "timed", "timing_metrics",
    "write_completion", "write_samples", "write_summary",
]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _inference(model: torch.nn.Module) -> Iterator[None]:
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
    """

    def __init__(
        self,
        model: GatedPixelCNN,
        num_samples: int,
        grid: tuple[int, int],
        labels: torch.Tensor | int | None = None,
    ) -> None:
        _check_positive_int("num_samples", num_samples)
        self.model = model
        self.num_samples = num_samples
        self.height, self.width = _check_grid(grid)
        self.labels = model.check_labels(labels, num_samples)

        weight = model.embedding.weight
        self.codes = torch.zeros(num_samples, self.height, self.width, dtype=torch.long, device=weight.device)
        self.position = 0  # raster index of the next position to push

        n, c, w, p = num_samples, model.channels, self.width, model.kernel_size // 2
        self._pad = p
        self._biases = [layer.class_bias(self.labels) for layer in model.layers]
        # vertical inputs of each layer at rows r - p .. r (r: last row computed), zero-padded by p columns
        self._windows = [weight.new_zeros(n, c, p + 1, w + 2 * p) for _ in model.layers]
        # vertical -> horizontal links of each layer for row `_link_row`, [N, 2C, W], with the horizontal
        # class bias folded in once per row
        self._links = [
            self._with_class_bias(layer.top_link(n, w, weight), index)
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
            v_out, link = layer.vertical_step(window, self._biases[index][0])
            self._links[index] = self._with_class_bias(link, index)
            new_row = None if v_out is None else F.pad(v_out.unsqueeze(2), (p, p))
        self._link_row = r + 1

    def _with_class_bias(self, link: torch.Tensor, index: int) -> torch.Tensor:
        h_bias = self._biases[index][1]
        return link if h_bias is None else link + h_bias[:, :, :, 0]

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
    model: GatedPixelCNN, codes: torch.Tensor, labels: torch.Tensor | int | None = None
) -> torch.Tensor:
    """
    All logits of a given batch of grids, computed position by position through :class:`IncrementalState`.

    Equals ``model(codes, labels)`` in eval mode up to float rounding; it exists to check the fast sampler's
    path against the network's forward pass.

    Args:
        model: the prior (put in eval mode for the call, then restored).
        codes: integer code grids ``[N, H, W]``.
        labels: class labels ``[N]`` (or one ``int``) for a conditional model, else ``None``.

    Returns:
        logits ``[N, K, H, W]``.
    """
    codes = model.check_codes(codes).to(_model_device(model))
    n, height, width = codes.shape
    with _inference(model):
        state = IncrementalState(model, n, (height, width), labels)
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
) -> torch.Tensor:
    """
    Reference sampler: for each position in raster order, run the whole network on the whole grid and sample
    that position. Slow (``H * W`` forward passes); use :func:`sample_codes`, which draws the same codes.

    Args: as :func:`sample_codes` (without ``progress``).

    Returns:
        int64 code grids ``[num_samples, H, W]`` on the model's device.
    """
    codes, region, active = _prepare(model, num_samples, grid, temperature, initial, region)
    with _inference(model):
        labels = model.check_labels(labels, num_samples)
        for i, j in active:
            logits = model(codes, labels)[:, :, i, j]
            sampled = _draw(logits, temperature, generator)
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

    Returns:
        int64 code grids ``[num_samples, H, W]`` on the model's device.
    """
    codes, region, active = _prepare(model, num_samples, grid, temperature, initial, region)
    if not active:
        return codes
    last_row = active[-1][0]
    wanted = [[False] * codes.shape[2] for _ in range(last_row + 1)]
    for i, j in active:
        wanted[i][j] = True
    with _inference(model):
        state = IncrementalState(model, num_samples, (codes.shape[1], codes.shape[2]), labels)
        for i in tqdm(range(last_row + 1), desc="sampling codes", unit="row", disable=not progress):
            for j in range(codes.shape[2]):
                if wanted[i][j]:
                    sampled = _draw(state.step(), temperature, generator)
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
    )


def _draw(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """One code per row of ``logits`` ``[N, K]`` from ``softmax(logits / temperature)``."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


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
    _check_positive_int("num_samples", num_samples)
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


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_grid(grid: tuple[int, int]) -> tuple[int, int]:
    try:
        height, width = grid
    except (TypeError, ValueError):
        raise ValueError(f"grid must be (height, width), got {grid!r}") from None
    for size in (height, width):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"grid must be two integers >= 1 (height, width), got {grid!r}")
    return height, width


# ================================================================== generation: a prior and its VQ-VAE together
#
# Everything above works on code grids. What follows turns them into slices and files: load a prior with the
# VQ-VAE whose codes it models (checking that the two fit), draw new slices, complete a region of a real one,
# and write the results. bundle/configs/sample.yaml strings these steps together.

REGIONS = ("bottom_half", "top_half", "left_half", "right_half", "center", "rows:A-B")
_NULLS = ("", "none", "null")


@dataclass
class GenerationModels:
    """A prior and the VQ-VAE whose codes it models, loaded from their checkpoints and checked to fit."""

    prior: GatedPixelCNN
    prior_spec: ModelSpec
    prior_path: Path
    vqvae: torch.nn.Module
    vqvae_spec: ModelSpec
    vqvae_path: Path
    vqvae_hash_matches: bool | None = None  # None: the prior records no hash of its VQ-VAE

    @property
    def grid(self) -> tuple[int, int]:
        """``(height, width)`` of the code grids."""
        size = int(self.prior_spec["grid_size"])
        return size, size

    @property
    def num_embeddings(self) -> int:
        """``K``, the number of codes."""
        return int(self.prior_spec["num_embeddings"])

    @property
    def image_size(self) -> int:
        """Side of the square slices the VQ-VAE encodes and decodes."""
        return int(self.vqvae_spec["image_size"])

    def describe(self) -> dict[str, Any]:
        """Both checkpoints and architectures, as nested plain values (for run parameters)."""
        return {
            "prior_ckpt": str(self.prior_path), "vqvae_ckpt": str(self.vqvae_path),
            "vqvae_hash_matches": self.vqvae_hash_matches,
            "prior": {k: v for k, v in self.prior_spec.state_dict().items() if k not in ("vqvae_checkpoint",)},
            "vqvae": self.vqvae_spec.state_dict(),
        }


def optional(value: Any) -> Any:
    """``None`` for an unset command-line value (``null``, ``None`` or empty text), else the value."""
    if value is None or (isinstance(value, str) and value.strip().lower() in _NULLS):
        return None
    return value


def load_models(
    prior_ckpt: str | Path,
    vqvae_ckpt: str | Path | None = None,
    device: str | torch.device = "cpu",
    prior: tuple[GatedPixelCNN, ModelSpec] | None = None,
) -> GenerationModels:
    """
    Load a prior and its VQ-VAE (eval mode) and check that they fit (see :func:`check_compatible`).

    Args:
        prior_ckpt: the prior's checkpoint.
        vqvae_ckpt: the VQ-VAE's checkpoint; ``None`` (or ``"null"``): the one recorded in the prior's checkpoint.
        device: where both networks go.
        prior: the prior already loaded from ``prior_ckpt`` as ``(network, spec)``, so it is not read twice.

    Raises:
        CheckpointError: a checkpoint is missing, unreadable, or the two do not fit.
        ConfigError: no VQ-VAE given and none recorded in the prior.
    """
    from oasis_gen.networks.pixelcnn import load_pixelcnn
    from oasis_gen.networks.vqvae import load_vqvae

    prior_path = Path(str(prior_ckpt))
    network, prior_spec = prior if prior is not None else load_pixelcnn(prior_path, device)
    given = optional(vqvae_ckpt)
    recorded = prior_spec.get("vqvae_checkpoint")
    if given is None and recorded is None:
        raise ConfigError("vqvae_ckpt", f"the prior {prior_path} does not record which VQ-VAE it models: "
                                        "pass --vqvae_ckpt path/to/vqvae/model.pt")
    vqvae_path = Path(str(given if given is not None else recorded))
    if not vqvae_path.is_file() and str(vqvae_path) == str(recorded):
        raise CheckpointError(vqvae_path, f"VQ-VAE checkpoint recorded in the prior {prior_path} not found "
                                          "(moved or deleted? pass --vqvae_ckpt path/to/vqvae/model.pt)")
    vqvae, vqvae_spec = load_vqvae(vqvae_path, device)
    matches = check_compatible(prior_spec, vqvae_spec, prior_path, vqvae_path)
    return GenerationModels(network.to(device).eval(), prior_spec, prior_path, vqvae, vqvae_spec, vqvae_path,
                            matches)


def check_compatible(
    prior_spec: ModelSpec | Mapping[str, Any],
    vqvae_spec: ModelSpec | Mapping[str, Any],
    prior_path: str | Path = "prior",
    vqvae_path: str | Path | None = None,
) -> bool | None:
    """
    Check that a prior models the codes of a VQ-VAE: same ``K`` and same code grid.

    If the prior records the SHA-256 of its VQ-VAE's checkpoint and ``vqvae_path`` hashes differently, a warning
    is logged (the codebook may differ, e.g. a VQ-VAE trained further) and generation goes on.

    Returns:
        whether the hash matches, or ``None`` when there is nothing to compare.

    Raises:
        CheckpointError: ``K`` or the grid differ.
    """
    def sizes(spec: ModelSpec | Mapping[str, Any]) -> tuple[int, int]:
        return int(spec["num_embeddings"]), int(spec["grid_size"])

    (pk, pg), (vk, vg) = sizes(prior_spec), sizes(vqvae_spec)
    if (pk, pg) != (vk, vg):
        raise CheckpointError(prior_path, f"this prior models K={pk} codes on a {pg}x{pg} grid, but the VQ-VAE "
                                          f"{vqvae_path} has K={vk} on {vg}x{vg}: pass the VQ-VAE the prior was "
                                          "trained on (--vqvae_ckpt)")
    recorded = prior_spec.get("vqvae_sha256")
    if not recorded or vqvae_path is None or not Path(vqvae_path).is_file():
        return None
    if file_sha256(vqvae_path) != recorded:
        logger.warning("the VQ-VAE %s is not the file the prior %s was trained on (SHA-256 differs): its "
                       "codebook may differ, so samples may look wrong", vqvae_path, prior_path)
        return False
    return True


@contextlib.contextmanager
def sampling_threads(device: str | torch.device = "cpu", max_cores: int = 4) -> Iterator[None]:
    """
    Run torch single-threaded for the block on a CPU with at most ``max_cores`` usable cores, then restore.

    The incremental sampler makes many tiny operations, for which thread hand-offs cost more than they save:
    measured on a 2-core machine it is about 10x faster with one thread.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if torch.device(device).type != "cpu" or cores > max_cores:
        yield
        return
    with torch_threads(1):
        yield


@dataclass
class Timed:
    """A result and the wall-clock seconds it took."""

    value: Any
    seconds: float


def timed(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Timed:
    """Call ``function(*args, **kwargs)`` and time it (for config expressions, which cannot hold statements)."""
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return Timed(value, time.perf_counter() - start)


def _vqvae_device(vqvae: torch.nn.Module) -> torch.device:
    return next(vqvae.parameters()).device


def _single_level(vqvae: torch.nn.Module) -> None:
    from oasis_gen.networks.vqvae import require_single_level

    require_single_level(vqvae, "sampling and completion with a prior")


def encode_images(vqvae: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """
    Code indices of images ``[N, 1, H, W]`` in [0, 1]: int64 ``[N, h, w]`` on the VQ-VAE's device.

    Runs in eval mode without gradients (in train mode MONAI's EMA quantizer would update its codebook).
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor of shape [N, 1, H, W], got {shape}")
    _single_level(vqvae)
    device = _vqvae_device(vqvae)
    with _inference(vqvae):
        parts = [vqvae.index_quantize(images[start:start + batch_size].to(device).float())
                 for start in range(0, images.shape[0], batch_size)]
    return torch.cat(parts).long()


def decode_codes(vqvae: torch.nn.Module, codes: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """
    Slices of code grids ``[N, h, w]``: float32 ``[N, 1, H, W]`` clamped to [0, 1], on the VQ-VAE's device.

    Runs in eval mode without gradients.
    """
    if not isinstance(codes, torch.Tensor) or codes.dim() != 3:
        shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise ValueError(f"codes must be a tensor of shape [N, h, w], got {shape}")
    _single_level(vqvae)
    num_embeddings = int(vqvae.quantizer.quantizer.num_embeddings)
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= num_embeddings):
        raise ValueError(f"codes must lie in [0, {num_embeddings}) for this VQ-VAE, "
                         f"got values in [{int(codes.min())}, {int(codes.max())}]")
    device = _vqvae_device(vqvae)
    with _inference(vqvae):
        parts = [vqvae.decode_samples(codes[start:start + batch_size].to(device).long())
                 for start in range(0, codes.shape[0], batch_size)]
    return torch.cat(parts).float().clamp_(0.0, 1.0)


def region_mask(name: str, grid: int | tuple[int, int]) -> torch.Tensor:
    """
    The code-grid positions a named region covers, as a bool ``[h, w]`` mask (True: resampled).

    Names: ``bottom_half``, ``top_half``, ``left_half``, ``right_half`` (an odd side gives the middle row or
    column to both halves), ``center`` (the middle half of the rows and of the columns: a quarter of the grid),
    and ``rows:A-B`` (code-grid rows A to B, both included, counted from 0 at the top; ``rows:A`` is one row).

    The prior fills positions in raster order, each from what lies above it and to its left, so a region's
    completion is informed by the given codes above it (and left of it on its rows), never by those below or
    right of it: ``bottom_half`` and ``rows:A-B`` use the most context, ``top_half`` none.

    Raises:
        ConfigError: unknown name, or rows outside the grid.
    """
    height, width = (grid, grid) if isinstance(grid, int) else _check_grid(tuple(grid))
    text = str(name).strip().lower()
    mask = torch.zeros(height, width, dtype=torch.bool)
    if text == "bottom_half":
        mask[height // 2:] = True
    elif text == "top_half":
        mask[:(height + 1) // 2] = True
    elif text == "left_half":
        mask[:, :(width + 1) // 2] = True
    elif text == "right_half":
        mask[:, width // 2:] = True
    elif text == "center":
        mask[height // 4:height - height // 4, width // 4:width - width // 4] = True
    elif match := re.fullmatch(r"rows:\s*(\d+)\s*(?:-\s*(\d+))?", text):
        first, last = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if first > last or last >= height:
            raise ConfigError("region", f"{name!r} is outside the {height}-row code grid: use rows:A-B with "
                                        f"0 <= A <= B <= {height - 1}")
        mask[first:last + 1] = True
    else:
        raise ConfigError("region", f"unknown region {name!r}: use one of {', '.join(REGIONS)} (code-grid rows "
                                    f"A to B, 0-{height - 1})")
    return mask


def _as_int(value: Any, key: str, minimum: int | None = None) -> int:
    """A whole number from a config or command-line value (``16``, ``"16"``, ``16.0``), with a clear error."""
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a whole number, not {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        number = value if isinstance(value, int) else int(str(value).strip())
    except ValueError:
        raise ConfigError(key, f"expected a whole number, not {value!r}") from None
    if minimum is not None and number < minimum:
        raise ConfigError(key, f"must be at least {minimum}, not {number}")
    return number


def _as_temperature(value: Any) -> float:
    try:
        temperature = float(value)
    except (TypeError, ValueError):
        raise ConfigError("temperature", f"expected a number > 0, not {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(temperature) or temperature <= 0:
        raise ConfigError("temperature", f"expected a finite number > 0, not {value!r}")
    return temperature


def _label(prior: GatedPixelCNN, label: Any) -> int | None:
    """The class label for a conditional prior (``None`` for an unconditional one), with clear errors."""
    label = optional(label)
    if prior.num_classes is None:
        if label is not None:
            raise ConfigError("label", f"this prior is unconditional: leave label null (got {label!r})")
        return None
    if label is None:
        raise ConfigError("label", f"this prior is conditioned on {prior.num_classes} classes: pass --label "
                                   f"0..{prior.num_classes - 1}")
    number = _as_int(label, "label", minimum=0)
    if number >= prior.num_classes:
        raise ConfigError("label", f"this prior knows classes 0..{prior.num_classes - 1}, not {number}")
    return number


def _generator(prior: GatedPixelCNN, seed: Any) -> torch.Generator | None:
    seed = optional(seed)
    if seed is None:
        return None
    return torch.Generator(device=_model_device(prior)).manual_seed(_as_int(seed, "seed", minimum=0))


def generate(
    prior: GatedPixelCNN,
    vqvae: torch.nn.Module,
    num_samples: int = 16,
    temperature: float = 1.0,
    seed: int | None = 0,
    label: int | None = None,
    progress: bool = False,
    *,
    grid: int | tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Draw new slices: code grids from the prior (fast sampler), decoded by the VQ-VAE.

    Args:
        prior, vqvae: the two networks (see :func:`load_models`; their sizes are not checked here).
        num_samples: number of slices.
        temperature: ``> 0``; below 1 sharper and more typical, above 1 more varied.
        seed: seed of the sampler's random generator (same seed, same samples); ``None``: not seeded.
        label: the class for a conditional prior, ``None`` for an unconditional one.
        progress: show a progress bar over code rows.
        grid: the code grid, ``g`` or ``(h, w)`` (``GenerationModels.grid``); both networks are convolutional,
            so they cannot tell it themselves.

    Returns:
        ``(codes, images)``: int64 ``[N, h, w]`` and float32 ``[N, 1, H, W]`` in [0, 1].
    """
    count = _as_int(num_samples, "num_samples", minimum=1)
    temperature = _as_temperature(temperature)
    label = _label(prior, label)
    grid = (grid, grid) if isinstance(grid, int) else tuple(grid)
    generator = _generator(prior, seed)
    with sampling_threads(_model_device(prior)):
        codes = sample_codes(prior, count, grid, temperature, label, generator, progress=bool(progress))
        images = decode_codes(vqvae, codes)
    return codes, images


def complete_scan(
    prior: GatedPixelCNN,
    vqvae: torch.nn.Module,
    image: torch.Tensor,
    region: str | torch.Tensor = "bottom_half",
    temperature: float = 1.0,
    seed: int | None = 0,
    num_samples: int = 4,
    label: int | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Complete a region of a real slice: encode it, resample the region's codes ``num_samples`` times (keeping
    all others exactly), decode.

    Args:
        image: the slice ``[1, H, W]`` (or ``[H, W]``) in [0, 1], at the VQ-VAE's size (see :func:`load_scan`).
        region: a name for :func:`region_mask` or a bool ``[h, w]`` mask of the code positions to resample.
        others: as :func:`generate`.

    Returns:
        ``(original_codes, completed_codes, images)``: int64 ``[h, w]``, int64 ``[N, h, w]`` and float32
        ``[N, 1, H, W]`` in [0, 1].
    """
    image = torch.as_tensor(image).float()
    if image.dim() == 2:
        image = image[None]
    if image.dim() != 3 or image.shape[0] != 1:
        raise ValueError(f"image must be one slice [1, H, W] or [H, W], got {tuple(image.shape)}")
    count = _as_int(num_samples, "num_completions", minimum=1)
    temperature = _as_temperature(temperature)
    label = _label(prior, label)
    original = encode_images(vqvae, image[None])[0]
    height, width = original.shape
    if isinstance(region, torch.Tensor):
        mask = region.bool()
        if mask.shape != (height, width):
            raise ValueError(f"region must be a bool mask of the code grid {height}x{width}, "
                             f"got {tuple(mask.shape)}")
    else:
        mask = region_mask(region, (height, width))
    device = _model_device(prior)
    generator = _generator(prior, seed)
    with sampling_threads(device):
        given = original.to(device).expand(count, height, width).contiguous()
        completed = complete_codes(prior, given, mask.to(device), temperature, label, generator, bool(progress))
        images = decode_codes(vqvae, completed)
    return original, completed, images


def load_scan(path: str | Path, image_size: int) -> torch.Tensor:
    """
    Read a slice for completion as the VQ-VAE sees it: ``[1, image_size, image_size]`` float32 in [0, 1].

    Image files (PNG/JPEG) go through the evaluation transforms (scale, pad to square, resize); for a volume
    (NIfTI/Analyze) the middle axial slice is used.

    Raises:
        DataError: missing, unreadable or unsupported file.
    """
    from oasis_gen.bundle_checks import find_user_error
    from oasis_gen.data import decode_intensity, eval_transforms
    from oasis_gen.data.readers import read_volume, resolve_axis, scan_kind
    from oasis_gen.errors import DataError

    path = Path(str(path))
    if not path.is_file():
        raise DataError(path, "scan to complete not found")
    kind = scan_kind(path)
    if kind is None:
        raise DataError(path, "not a slice (PNG/JPEG) or volume (NIfTI/Analyze) by its name")
    record: dict[str, Any] = {"image": str(path)}
    if kind == "volume":
        axis = resolve_axis(path, "axial")
        record.update(axis=axis, slice=read_volume(str(path)).data.shape[axis] // 2)
        logger.info("completing the middle axial slice (%d) of %s", record["slice"], path)
    try:
        # the uint8 chain of the prior's training codes, so a training slice gets exactly its cached codes
        image = eval_transforms(int(image_size), "uint8")(record)["image"]
    except Exception as err:  # MONAI wraps transform errors: report the reader's own
        user_error = find_user_error(err)
        if user_error is not None:
            raise user_error from None
        raise
    image = decode_intensity(image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image))
    return image.reshape(1, int(image_size), int(image_size))


def _save_npy(path: Path, array: np.ndarray) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as stream:  # a file object: np.save would add ".npy" to tmp
        np.save(stream, array)
    return path


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _code_map(codes: np.ndarray, num_embeddings: int, shape: tuple[int, int]) -> np.ndarray:
    """Colour code map enlarged (nearest) to an image's ``(H, W)``, so it lines up with the slice."""
    coloured = code_map_picture(codes, num_embeddings, scale=1)
    rows = np.arange(shape[0]) * codes.shape[0] // shape[0]
    cols = np.arange(shape[1]) * codes.shape[1] // shape[1]
    return coloured[rows][:, cols]


def _pixel_mask(mask: torch.Tensor | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    mask = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask, dtype=bool)
    rows = np.arange(shape[0]) * mask.shape[0] // shape[0]
    cols = np.arange(shape[1]) * mask.shape[1] // shape[1]
    return mask[rows][:, cols]


def _remove_stale(out: Path, patterns: Sequence[str], count: int) -> None:
    """Remove numbered files of an earlier, larger run (``sample_020.png`` when 16 are written now)."""
    for pattern in patterns:
        for path in out.glob(pattern):
            index = re.search(r"_(\d+)\.[a-z]+$", path.name)
            if index and int(index[1]) >= count:
                path.unlink()


def write_samples(
    out_dir: str | Path, codes: torch.Tensor, images: torch.Tensor, num_embeddings: int, columns: int = 8
) -> dict[str, Any]:
    """
    Write generated slices and their codes, each file atomically.

    Files: ``sample_000.png`` ... (8-bit grayscale), ``codes_000.npy`` (int64 ``[h, w]``), ``codes_000.png`` (the
    code map, coloured by code and enlarged to the slice's size) and ``grid.png``: the slices on the top rows,
    their code maps below in the same order. Numbered files of an earlier, larger run in the folder are removed.

    Returns:
        ``{"samples": [...], "codes": [...], "code_maps": [...], "grid": path}``.
    """
    out = Path(out_dir)
    codes_np = codes.detach().cpu().numpy().astype(np.int64)
    if codes_np.ndim != 3 or images.dim() != 4 or images.shape[0] != codes_np.shape[0]:
        raise ValueError(f"expected codes [N, h, w] and images [N, 1, H, W], got {codes_np.shape} and "
                         f"{tuple(images.shape)}")
    shape = (int(images.shape[-2]), int(images.shape[-1]))
    files: dict[str, Any] = {"samples": [], "codes": [], "code_maps": []}
    pictures, maps = [], []
    for index, (grid, image) in enumerate(zip(codes_np, images, strict=True)):
        picture, code_map = to_uint8(image), _code_map(grid, num_embeddings, shape)
        files["samples"].append(save_png(picture, out / f"sample_{index:03d}.png"))
        files["codes"].append(_save_npy(out / f"codes_{index:03d}.npy", grid))
        files["code_maps"].append(save_png(code_map, out / f"codes_{index:03d}.png"))
        pictures.append(_rgb(picture))
        maps.append(code_map)
    _remove_stale(out, ("sample_*.png", "codes_*.npy", "codes_*.png"), len(pictures))
    columns = max(1, min(int(columns), len(pictures)))
    top, bottom = tile(pictures, columns), tile(maps, columns)
    gap = np.full((6, top.shape[1], 3), 255, dtype=np.uint8)
    files["grid"] = save_png(np.concatenate([top, gap, bottom]), out / "grid.png")
    return files


def write_completion(
    out_dir: str | Path,
    image: torch.Tensor,
    original_codes: torch.Tensor,
    completed_codes: torch.Tensor,
    images: torch.Tensor,
    region: torch.Tensor,
    num_embeddings: int,
) -> dict[str, Any]:
    """
    Write a completion, each file atomically.

    Files: ``original.png`` (the slice as the VQ-VAE sees it), ``masked.png`` (the region to complete in mid
    grey), ``completion_000.png`` ..., ``codes_original.npy``, ``codes_000.npy`` ... (the completed grids),
    ``region.npy`` (the bool code-grid mask) and ``grid.png``: original | masked | completions on the top row,
    the code maps of the same (the region in grey on the masked one) below.

    Returns:
        ``{"original", "masked", "codes_original", "region", "completions": [...], "codes": [...], "grid"}``.
    """
    out = Path(out_dir)
    original = to_uint8(image)
    hidden = _pixel_mask(region, original.shape)
    masked = np.where(hidden, np.uint8(128), original)
    given = original_codes.detach().cpu().numpy().astype(np.int64)
    completed = completed_codes.detach().cpu().numpy().astype(np.int64)
    files: dict[str, Any] = {
        "original": save_png(original, out / "original.png"),
        "masked": save_png(masked, out / "masked.png"),
        "codes_original": _save_npy(out / "codes_original.npy", given),
        "region": _save_npy(out / "region.npy", np.asarray(region.cpu(), dtype=bool)),
        "completions": [], "codes": [],
    }
    given_map = _code_map(given, num_embeddings, original.shape)
    pictures = [_rgb(original), _rgb(masked)]
    maps = [given_map, np.where(hidden[..., None], np.uint8(128), given_map)]
    for index, (grid, picture) in enumerate(zip(completed, images, strict=True)):
        cell = to_uint8(picture)
        files["completions"].append(save_png(cell, out / f"completion_{index:03d}.png"))
        files["codes"].append(_save_npy(out / f"codes_{index:03d}.npy", grid))
        pictures.append(_rgb(cell))
        maps.append(_code_map(grid, num_embeddings, original.shape))
    _remove_stale(out, ("completion_*.png", "codes_*.npy"), len(completed))
    files["grid"] = save_png(tile(pictures + maps, columns=len(pictures)), out / "grid.png")
    return files


def timing_metrics(samples: Timed, completion: Timed | None = None) -> dict[str, float]:
    """Seconds and rates of a sampling run (``samples`` from :func:`generate`, ``completion`` from
    :func:`complete_scan`, both through :func:`timed`), as MLflow metrics."""
    count = int(samples.value[0].shape[0])
    metrics = {"sampling_seconds": samples.seconds, "samples_per_second": count / max(samples.seconds, 1e-9)}
    if completion is not None:
        done = int(completion.value[1].shape[0])
        metrics["completion_seconds"] = completion.seconds
        metrics["completions_per_second"] = done / max(completion.seconds, 1e-9)
    return metrics


def write_summary(out_dir: str | Path, settings: Mapping[str, Any], metrics: Mapping[str, float]) -> Path:
    """Write ``summary.json`` (what ran and how fast) beside the samples, atomically."""
    def plain(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)

    summary = {"settings": plain(settings), "metrics": {k: round(float(v), 6) for k, v in metrics.items()}}
    path = write_text(Path(out_dir) / "summary.json", json.dumps(summary, indent=2) + "\n")
    logger.info("results in %s (grid.png, summary.json); %s", Path(out_dir),
                ", ".join(f"{k} {v:.3g}" for k, v in metrics.items()))
    return path

"""Time the naive and the incremental Gated PixelCNN samplers of one prior and report the speed-up: part 5 of
``speed.py`` and the measurement of ``sampling.py``.

The incremental sampler (:func:`oasis_gen.inferers.pixelcnn_sampling.sample_codes`) is timed over the full
grid. The naive one (:func:`oasis_gen.inferers.pixelcnn_sampling.sample_codes_naive`) runs the whole network on
the whole grid for every position, so each of its steps costs the same: it is timed over the first raster
positions (a completion whose region is exactly those positions) and extrapolated linearly to the full grid.
Both samplers are also checked to draw the same codes on the timed positions.
"""

from __future__ import annotations

import statistics
import time

import torch

from oasis_gen.inferers.pixelcnn_sampling import sample_codes, sample_codes_naive
from oasis_gen.networks.pixelcnn import GatedPixelCNN


def first_positions(grid: tuple[int, int], count: int) -> torch.Tensor:
    """Bool mask ``[H, W]`` of the first ``count`` positions in raster order."""
    height, width = grid
    region = torch.zeros(height * width, dtype=torch.bool)
    region[:count] = True
    return region.view(height, width)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def time_samplers(model: GatedPixelCNN, samples: int, grid: tuple[int, int], naive_positions: int | None = None,
                  repeats: int = 3, seed: int = 0, log: bool = True, cond: torch.Tensor | None = None
                  ) -> dict[str, object]:
    """Time both samplers of a prior on ``samples`` grids, on the prior's device: the incremental one over the full
    grid (median of ``repeats``), the naive one over its first ``naive_positions`` (default: one row), extrapolated
    linearly (each of its steps costs the same). ``cond``: the top code grids of a bottom prior (two levels)."""
    device = next(model.parameters()).device
    height, width = grid
    positions = height * width
    naive_positions = min(naive_positions or width, positions)

    def timed_on_device(fn) -> tuple[float, object]:
        def run_and_wait():
            result = fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return result

        return timed(run_and_wait)

    # warm-up: one-off allocations and kernel selection out of the timings
    if cond is None:
        sample_codes(model, samples, (1, min(width, 4)))
    else:
        factor = model.cond_factor
        sample_codes(model, samples, (factor, factor), cond=cond[:, :1, :1])
    with torch.no_grad():
        model(torch.zeros(samples, height, width, dtype=torch.long, device=device), cond=cond)

    incremental_times = []
    for repeat in range(repeats):
        generator = torch.Generator(device=device).manual_seed(seed)
        seconds, _ = timed_on_device(lambda g=generator: sample_codes(model, samples, grid, generator=g, cond=cond))
        incremental_times.append(seconds)
        if log:
            print(f"incremental, full grid, run {repeat + 1}/{repeats}: {seconds:.2f} s", flush=True)
    incremental = statistics.median(incremental_times)

    # the naive sampler over the first positions only: a completion whose region is exactly those positions
    zeros = torch.zeros(samples, height, width, dtype=torch.long, device=device)
    region = first_positions(grid, naive_positions).to(device)
    naive_seconds, naive_codes = timed_on_device(
        lambda: sample_codes_naive(model, samples, grid, generator=torch.Generator(device=device).manual_seed(seed),
                                   initial=zeros, region=region, cond=cond)
    )
    if log:
        print(f"naive, {naive_positions} positions: {naive_seconds:.2f} s", flush=True)
    naive_per_position = naive_seconds / naive_positions
    naive_full = naive_per_position * positions

    fast_codes = sample_codes(model, samples, grid, generator=torch.Generator(device=device).manual_seed(seed),
                              initial=zeros, region=region, cond=cond)
    return {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "incremental": {
            "positions_timed": positions,
            "seconds_median": incremental,
            "seconds_runs": incremental_times,
            "ms_per_position": 1000 * incremental / positions,
        },
        "naive": {
            "positions_timed": naive_positions,
            "seconds_timed": naive_seconds,
            "ms_per_position": 1000 * naive_per_position,
            "seconds_full_grid": naive_full,
            "extrapolated": naive_positions < positions,
        },
        "speedup": naive_full / incremental,
        "same_codes_on_timed_positions": bool(torch.equal(fast_codes, naive_codes)),
    }

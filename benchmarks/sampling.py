"""Time the naive and the incremental Gated PixelCNN samplers of a random prior and report the speed-up.

Usage::

    .venv/bin/python benchmarks/sampling.py [--samples 64 --grid 32 --K 256 --naive-positions 32 ...]

The incremental sampler (:func:`oasis_gen.inferers.pixelcnn_sampling.sample_codes`) is timed over the full
grid. The naive one (:func:`oasis_gen.inferers.pixelcnn_sampling.sample_codes_naive`) runs the whole network on
the whole grid for every position, so each of its steps costs the same: it is timed over the first
``--naive-positions`` raster positions (a completion whose region is exactly those positions) and extrapolated
linearly to the full grid, which the report states. Both samplers are also checked to draw the same codes on the
timed positions.

Writes ``<out-dir>/<name>.md`` (a Markdown table) and ``.json`` (``--name`` defaults to ``sampling``), and prints the
table. ``speed.py`` times the same samplers with the bundle's default prior (``speed_parts/sampling.py``).
"""

from __future__ import annotations

import argparse
import sys

import torch
from kit import command, machine_info, machine_summary, result_options, write_result
from speed_parts.sampling import time_samplers

from oasis_gen.networks.pixelcnn import GatedPixelCNN


def parse_grid(text: str) -> tuple[int, int]:
    """``"32"`` -> ``(32, 32)``; ``"32x24"`` -> ``(32, 24)``."""
    parts = text.lower().split("x")
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"grid must be N or HxW, got {text!r}") from None
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"grid must be N or HxW with sizes >= 1, got {text!r}")
    return sizes[0], sizes[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=64, help="grids sampled together (default: 64)")
    parser.add_argument("--grid", type=parse_grid, default=(32, 32), help="N or HxW code grid (default: 32)")
    parser.add_argument("--K", type=int, default=256, help="number of codes (default: 256)")
    parser.add_argument("--channels", type=int, default=64, help="GatedPixelCNN channels (default: 64)")
    parser.add_argument("--layers", type=int, default=12, help="GatedPixelCNN layers (default: 12)")
    parser.add_argument("--kernel-size", type=int, default=3, help="GatedPixelCNN kernel size (default: 3)")
    parser.add_argument(
        "--naive-positions",
        type=int,
        default=None,
        help="raster positions over which the naive sampler is timed, then extrapolated (default: one row; "
        "the full grid if >= H*W)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the incremental sampler")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as is)")
    parser.add_argument("--seed", type=int, default=0)
    result_options(parser, "sampling")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, object]:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    machine = machine_info("cpu")  # before the timings: the load average is the one they started under
    height, width = args.grid

    torch.manual_seed(args.seed)
    model = GatedPixelCNN(
        num_embeddings=args.K, channels=args.channels, num_layers=args.layers, kernel_size=args.kernel_size
    ).eval()
    parameters = sum(parameter.numel() for parameter in model.parameters())
    print(
        f"GatedPixelCNN K={args.K} channels={args.channels} layers={args.layers} kernel={args.kernel_size}: "
        f"{parameters:,} parameters; {args.samples} samples of {height}x{width}",
        flush=True,
    )
    timings = time_samplers(model, args.samples, args.grid, args.naive_positions, args.repeats, args.seed)
    return {
        "config": {
            "samples": args.samples,
            "grid": [height, width],
            "K": args.K,
            "channels": args.channels,
            "layers": args.layers,
            "kernel_size": args.kernel_size,
            "parameters": parameters,
            "seed": args.seed,
        },
        "machine": machine,
        **timings,
    }


def markdown(result: dict) -> str:
    config, machine = result["config"], result["machine"]
    incremental, naive = result["incremental"], result["naive"]
    height, width = config["grid"]
    positions = height * width
    naive_how = (
        f"naive extrapolated from {naive['positions_timed']} positions"
        if naive["extrapolated"]
        else "measured over the full grid"
    )
    runs = ", ".join(f"{seconds:.2f}" for seconds in incremental["seconds_runs"])
    lines = [
        "# PixelCNN sampling: naive vs incremental",
        "",
        f"{config['samples']} samples of a {height}x{width} code grid, K={config['K']}, GatedPixelCNN "
        f"channels={config['channels']}, layers={config['layers']}, kernel_size={config['kernel_size']} "
        f"({config['parameters']:,} parameters).",
        "",
        f"Command: `{result['command']}`",
        "",
        "| sampler | positions timed | time timed (s) | ms / position | full grid (s) | note |",
        "|---|---:|---:|---:|---:|---|",
        f"| naive (`sample_codes_naive`) | {naive['positions_timed']} | {naive['seconds_timed']:.2f} | "
        f"{naive['ms_per_position']:.1f} | {naive['seconds_full_grid']:.1f} | {naive_how} |",
        f"| incremental (`sample_codes`) | {positions} | {incremental['seconds_median']:.2f} | "
        f"{incremental['ms_per_position']:.2f} | {incremental['seconds_median']:.2f} | "
        f"median of {len(incremental['seconds_runs'])} runs ({runs} s) |",
        "",
        f"**Speed-up: {result['speedup']:.0f}x** (naive full grid / incremental full grid).",
        "",
        "Both samplers drew the same codes on the timed positions from the same seed: "
        f"{'yes' if result['same_codes_on_timed_positions'] else 'NO'}.",
        "",
        f"Machine: {machine_summary(machine)}",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = {"command": command(__file__, argv), **run(args)}
    report = markdown(result)
    print()
    print(report)
    write_result(args.out_dir, args.name, report, result, result["command"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

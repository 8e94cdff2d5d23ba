"""What the top level of two-level VQ-VAEs carries: a check that its codes describe the image, not the grid.

A top level can collapse: every slice gets the same top code map (a map of position, from the padding), and its
prior then has nothing to draw. For each checkpoint this prints, over the slices of one split of a dataset (read by
the project's data layer, as training reads them):

- the number of distinct top code maps;
- H(top code | position): the entropy of the top code at each top grid cell over the slices, averaged over cells
  (0 bits: the collapsed map; log2(K) at most);
- the L1 error of the full reconstruction, of the decoding from the top codes alone (bottom codes zeroed, as
  ``top_only_rate`` trains it) and of a black image (the floor a top-only decoding must beat to mean anything).

Usage::

    .venv/bin/python benchmarks/top_level_usage.py runs/demo/vqvae/checkpoints/model.pt --dataset-dir data/demo

Prints the table; with ``--out-dir`` also writes ``<out-dir>/<name>.md`` and ``.json`` (``--name`` defaults to
``top_level_usage``; benchmarks/results/top_level_usage_demo.md is one).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from kit import command, load_slices, result_options, split_records, write_result

from oasis_gen.networks.vqvae import load_vqvae
from oasis_gen.networks.vqvae2 import TwoLevelVQVAE


def read_split(dataset_dir: Path, split: str, image_size: int, limit: int, seed: int = 0) -> torch.Tensor:
    """Up to ``limit`` slices (chosen with ``seed``) of one split of a dataset, through the project's data layer."""
    records = split_records(dataset_dir, split, max_count=limit, choice_seed=seed)
    if not records:
        raise SystemExit(f"top_level_usage: no usable slices in the {split} split of {dataset_dir}")
    return load_slices(records, image_size)


def conditional_entropy(codes: torch.Tensor) -> float:
    """Mean over grid cells of the entropy (bits) of the code at that cell across the slices."""
    flat = codes.flatten(1).numpy()
    bits = []
    for cell in flat.T:
        _, counts = np.unique(cell, return_counts=True)
        p = counts / counts.sum()
        bits.append(float(-(p * np.log2(p)).sum()))
    return float(np.mean(bits))


@torch.no_grad()
def top_level_usage(network: TwoLevelVQVAE, images: torch.Tensor) -> dict[str, float]:
    """The figures above for one two-level VQ-VAE (eval mode) and a batch of slices."""
    top, bottom = network.index_quantize(images)
    full = network.decode_samples((top, bottom)).clamp(0, 1)
    top_only = network.decode_top_only(top).clamp(0, 1)
    return {
        "slices": int(images.shape[0]),
        "distinct_top_maps": len({row.tobytes() for row in top.flatten(1).numpy()}),
        "top_bits_given_position": conditional_entropy(top),
        "l1_full": float((full - images).abs().mean()),
        "l1_top_only": float((top_only - images).abs().mean()),
        "l1_black": float(images.abs().mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="two-level VQ-VAE checkpoints (model.pt)")
    parser.add_argument("--dataset-dir", type=Path, required=True, help="a dataset (OASIS PNG layout or volumes)")
    parser.add_argument("--split", default="validate")
    parser.add_argument("--limit", type=int, default=192, help="at most this many slices")
    result_options(parser, "top_level_usage", out_dir=None)
    args = parser.parse_args(argv)
    rows = []
    for path in args.checkpoints:
        network, spec = load_vqvae(path)
        if not isinstance(network, TwoLevelVQVAE):
            raise SystemExit(f"top_level_usage: {path} holds a single-level VQ-VAE (no top codes)")
        images = read_split(args.dataset_dir, args.split, spec["image_size"], args.limit)
        rows.append({"checkpoint": str(path), "top_only_rate": spec.get("top_only_rate", 0.0),
                     "top_negative_slope": spec.get("top_negative_slope", 0.0), **top_level_usage(network, images)})
    lines = ["| checkpoint | top_only_rate | slope | distinct top maps | H(top code given position), bits | L1 full | "
             "L1 top only | L1 black |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['checkpoint']} | {r['top_only_rate']:g} | {r['top_negative_slope']:g} | "
              f"{r['distinct_top_maps']} of {r['slices']} | {r['top_bits_given_position']:.2f} | {r['l1_full']:.4f} | "
              f"{r['l1_top_only']:.4f} | {r['l1_black']:.4f} |" for r in rows]
    text = "\n".join(lines)
    print(text)
    if args.out_dir is not None:
        line = command(__file__, argv)
        write_result(args.out_dir, args.name, f"# Top level usage\n\nCommand: `{line}`\n\n{text}\n", rows, line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

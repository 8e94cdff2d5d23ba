"""Does the atypicality score find an implausible patch? AUROC of the scan-level score, clean vs patched slices.

Usage::

    .venv/bin/python benchmarks/atypicality.py [--prior-ckpt runs/demo/prior/checkpoints/model.pt] \\
        [--top-prior-ckpt PATH] [--vqvae-ckpt PATH] [--dataset-dir data/demo] [--name atypicality_demo]
    .venv/bin/python benchmarks/atypicality.py --quick   # tiny random models and data: checks the plumbing only

Takes one split (default: test) of the dataset, pastes a bright square patch (``--patch-px`` at 128 px, scaled
to the VQ-VAE's size; intensity ``--patch-intensity``) at a random position inside the brain into a seeded
random half of the slices, and scores every slice with the score bundle inference gives a slice
(``atypicality_bits``: the mean over its codes of the prior's bits, from
:func:`oasis_gen.inference.inferer.run_networks`; for one slice that is its total NLL bits over the number of
codes, so the ranking is that of the total bits). Reports:

* the AUROC of that score, patched (positive) vs clean;
* the share of patched slices whose highest-scoring code cell of the NLL map overlaps the patch, beside the
  share a cell drawn at random would reach (the cells that overlap the patch over all cells);
* the mean score of each group.

A two-level VQ-VAE is scored with its top and bottom priors (:class:`~oasis_gen.inferers.pixelcnn_inferer.
TwoLevelPrior`), one map at the bottom grid that sums to the slice's total bits. Writes
``<out-dir>/<name>.md`` and ``.json`` (atomically; default ``atypicality_demo``, ``atypicality_quick`` with
``--quick``) with the machine and the command line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from kit import command, load_slices, machine_info, machine_summary, result_options, split_records, write_result

from oasis_gen.generation.codes import slice_labels
from oasis_gen.generation.pair import load_pair
from oasis_gen.inference.inferer import run_networks
from oasis_gen.inference.models import InferenceModels
from oasis_gen.utils.errors import OasisGenError

BRAIN_THRESHOLD = 0.05  # intensity in [0, 1] above which a pixel counts as brain (the demo's background is 0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prior-ckpt", "--prior_ckpt", default="runs/demo/prior/checkpoints/model.pt",
                        help="the prior (for a two-level VQ-VAE: its bottom prior)")
    parser.add_argument("--top-prior-ckpt", "--top_prior_ckpt", default=None,
                        help="two-level VQ-VAE: its top prior (default: the one the bottom prior records)")
    parser.add_argument("--vqvae-ckpt", "--vqvae_ckpt", default=None, help="default: the VQ-VAE the prior records")
    parser.add_argument("--dataset-dir", "--dataset_dir", default="data/demo")
    parser.add_argument("--split", default="test", choices=("train", "validate", "test"))
    parser.add_argument("--split-ratios", default="0.8,0.1,0.1", help="for folders without splits")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--slice-axis", default="axial")
    parser.add_argument("--min-brain-fraction", type=float, default=0.1)
    parser.add_argument("--max-slices", type=int, default=None, help="use at most this many slices (random)")
    parser.add_argument("--patch-px", type=float, default=12.0, help="side of the patch at 128 px (scaled)")
    parser.add_argument("--patch-intensity", type=float, default=1.0, help="in [0, 1], the slices' scale")
    parser.add_argument("--patched-share", type=float, default=0.5, help="share of the slices that get a patch")
    parser.add_argument("--seed", type=int, default=0, help="which slices get a patch, and where")
    parser.add_argument("--batch-size", type=int, default=32)
    result_options(parser, None, "atypicality_demo, or atypicality_quick with --quick")
    parser.add_argument("--quick", action="store_true", help="tiny random checkpoints and data in a temporary "
                                                             "folder: checks the plumbing, measures nothing")
    parser.add_argument("--quick-levels", type=int, default=2, choices=(1, 2), help="--quick: VQ-VAE levels")
    args = parser.parse_args(argv)
    if args.name is None:
        args.name = "atypicality_quick" if args.quick else "atypicality_demo"
    return args


# ------------------------------------------------------------------ the measurement


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the ``positive`` (bool) class: sklearn's when installed, else
    the Mann-Whitney rank formula (ties count a half)."""
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return float("nan")
    try:
        from sklearn.metrics import roc_auc_score
    except ImportError:
        return rank_auroc(scores, positive)
    return float(roc_auc_score(positive.astype(int), scores))


def rank_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """AUROC as the chance that a positive outscores a negative (ties a half), from average ranks."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):  # average ranks over ties
        stop = start
        while stop + 1 < len(scores) and sorted_scores[stop + 1] == sorted_scores[start]:
            stop += 1
        ranks[order[start:stop + 1]] = (start + stop) / 2.0 + 1.0
        start = stop + 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def patch_side(image_size: int, patch_px: float) -> int:
    """The patch's side at ``image_size``: ``patch_px`` at 128 px, scaled, at least 1 px."""
    return max(1, int(round(float(patch_px) * image_size / 128.0)))


def place_patch(image: torch.Tensor, side: int, generator: np.random.Generator) -> tuple[int, int, str]:
    """
    A random top-left corner for a ``side`` square patch on ``image`` ``[1, S, S]``: wholly inside the brain
    where it fits, else centred on a brain pixel, else anywhere. Returns ``(row, col, how)``.
    """
    mask = image[0].numpy() > BRAIN_THRESHOLD
    size = mask.shape[0]
    span = size - side + 1
    # brain pixels under each possible patch, from an integral image
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    inside = (integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side] + integral[:-side, :-side])
    corners = np.argwhere(inside[:span, :span] == side * side)
    how = "inside"
    if len(corners) == 0:
        centres = np.argwhere(mask)
        corners = np.clip(centres - side // 2, 0, size - side) if len(centres) else np.argwhere(np.ones((span, span)))
        how = "centred" if len(centres) else "anywhere"
    row, col = corners[generator.integers(len(corners))]
    return int(row), int(col), how


def cell_overlaps(grid: tuple[int, int], size: int, box: tuple[int, int, int]) -> np.ndarray:
    """Bool ``[h, w]``: which code cells (each ``size / h`` px square) share a pixel with the ``(row, col, side)``
    patch."""
    h, w = grid
    row, col, side = box
    rows = (np.arange(h) * size // h < row + side) & ((np.arange(h) + 1) * size // h > row)
    cols = (np.arange(w) * size // w < col + side) & ((np.arange(w) + 1) * size // w > col)
    return rows[:, None] & cols[None, :]


def run(args: argparse.Namespace, command: str) -> dict[str, object]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    machine = machine_info(device)
    started = time.perf_counter()
    pair = load_pair(args.prior_ckpt, args.vqvae_ckpt, device, "infer", top_prior_ckpt=args.top_prior_ckpt)
    models = InferenceModels(pair.vqvae, pair.vqvae_spec, pair.vqvae_path, device, pair.prior, pair.prior_spec,
                             pair.prior_path, None, pair.top_prior_spec, pair.top_prior_path)
    size = models.image_size
    print(f"prior {pair.prior_path}" + (f" + top prior {pair.top_prior_path}" if pair.two_level else "")
          + f", VQ-VAE {pair.vqvae_path} ({size}px, {'two levels' if pair.two_level else 'one level'})", flush=True)

    ratios = tuple(float(v) for v in args.split_ratios.split(","))
    records = split_records(args.dataset_dir, args.split, max_count=args.max_slices, choice_seed=args.seed,
                            split_ratios=ratios, seed=args.split_seed, axis=args.slice_axis,
                            min_brain_fraction=args.min_brain_fraction)
    if len(records) < 2:
        raise SystemExit(f"need at least 2 slices in the {args.split} split of {args.dataset_dir}, found "
                         f"{len(records)}")
    images = load_slices(records, size)

    # a seeded random share of the slices gets a patch, each at a random place inside its brain
    rng = np.random.default_rng(args.seed)
    count = len(records)
    n_patched = min(max(int(round(count * float(args.patched_share))), 1), count - 1)
    patched = np.zeros(count, dtype=bool)
    patched[rng.permutation(count)[:n_patched]] = True
    side = patch_side(size, args.patch_px)
    boxes: dict[int, tuple[int, int, int]] = {}
    placements = {"inside": 0, "centred": 0, "anywhere": 0}
    inputs = images.clone()
    for index in np.flatnonzero(patched):
        row, col, how = place_patch(images[index], side, rng)
        placements[how] += 1
        boxes[int(index)] = (row, col, side)
        inputs[index, :, row:row + side, col:col + side] = float(args.patch_intensity)

    # the inference stage's own pass: codes of both levels, the prior's bits on the (bottom) grid
    labels = None
    if models.prior.num_classes is not None:
        labels = torch.tensor(slice_labels(records, models.prior.num_classes), dtype=torch.long)
    outputs = run_networks(models, inputs, labels, args.batch_size)
    bits = outputs.bits.numpy()  # [N, h, w]
    grid = bits.shape[1:]
    scores = bits.reshape(count, -1).mean(1)  # atypicality_bits of each slice, as summary.csv has it
    totals = bits.reshape(count, -1).sum(1)

    hits, chance = [], []
    for index, box in boxes.items():
        overlap = cell_overlaps(grid, size, box)
        top_cell = np.unravel_index(int(np.argmax(bits[index])), grid)
        hits.append(bool(overlap[top_cell]))
        chance.append(float(overlap.mean()))
    area = auroc(scores, patched)
    print(f"{count} {args.split} slices ({n_patched} patched with {side}x{side} px): AUROC {area:.3f}, "
          f"top cell on the patch in {np.mean(hits):.1%} of patched slices", flush=True)
    return {
        "command": command,
        "machine": machine,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "models": pair.describe(),
        "two_level": pair.two_level,
        "data": {"split": args.split, "slices": count, "patched": n_patched, "clean": count - n_patched,
                 "image_size": size, "code_grid": list(grid), "patch_side_px": side,
                 "patch_intensity": float(args.patch_intensity), "placements": placements,
                 "brain_threshold": BRAIN_THRESHOLD},
        "score": "atypicality_bits: mean bits per (bottom) code of the slice (total NLL bits / codes)",
        "auroc": area,
        "auroc_method": "sklearn.metrics.roc_auc_score" if _has_sklearn() else "rank formula (Mann-Whitney)",
        "localisation": {"top_cell_on_patch": int(sum(hits)), "patched": len(hits),
                         "share": float(np.mean(hits)) if hits else float("nan"),
                         "chance_share": float(np.mean(chance)) if chance else float("nan")},
        "scores": {"clean_mean_bits_per_code": float(scores[~patched].mean()),
                   "patched_mean_bits_per_code": float(scores[patched].mean()),
                   "clean_mean_total_bits": float(totals[~patched].mean()),
                   "patched_mean_total_bits": float(totals[patched].mean()),
                   "uniform_bits_per_code": models.uniform_bits},
        "total_seconds": time.perf_counter() - started,
    }


def _has_sklearn() -> bool:
    try:
        import sklearn.metrics  # noqa: F401
    except ImportError:
        return False
    return True


def markdown(result: dict) -> str:
    data, local, scores, models = result["data"], result["localisation"], result["scores"], result["models"]
    top = f" + top prior `{models['top_prior_ckpt']}`" if result["two_level"] else ""
    lines = [
        "# Atypicality: does the scan-level score find a pasted patch?",
        "",
        f"Prior `{models['prior_ckpt']}`{top}; VQ-VAE `{models['vqvae_ckpt']}` ({data['image_size']}px, "
        f"{'two levels' if result['two_level'] else 'one level'}, code grid {data['code_grid'][0]}x"
        f"{data['code_grid'][1]}). Dataset `{result['settings']['dataset_dir']}`, {data['split']} split: "
        f"{data['slices']} slices, {data['patched']} of them (seed {result['settings']['seed']}) with a "
        f"{data['patch_side_px']}x{data['patch_side_px']} px patch of intensity {data['patch_intensity']} "
        f"(placed wholly inside the brain: {data['placements']['inside']}, centred on brain: "
        f"{data['placements']['centred']}, anywhere: {data['placements']['anywhere']}).",
        "",
        f"Score: {result['score']}, as bundle inference writes it. Machine: {machine_summary(result['machine'])}",
        "",
        "| measure | value |",
        "|---|---|",
        f"| AUROC, patched vs clean ({result['auroc_method']}) | {result['auroc']:.3f} |",
        f"| patched slices whose highest-scoring code cell overlaps the patch | {local['top_cell_on_patch']} of "
        f"{local['patched']} ({local['share']:.1%}) |",
        f"| the same for a cell drawn at random (chance) | {local['chance_share']:.1%} |",
        f"| mean score, clean slices (bits/code) | {scores['clean_mean_bits_per_code']:.3f} |",
        f"| mean score, patched slices (bits/code) | {scores['patched_mean_bits_per_code']:.3f} |",
        f"| uniform prior (bits/code) | {scores['uniform_bits_per_code']:.3f} |",
        "",
        f"Command: `{result['command']}` ({result['total_seconds']:.1f} s).",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------ --quick: tiny random models and data


def quick_inputs(folder: Path, levels: int) -> dict[str, Path]:
    """Tiny brain-like slices in the OASIS layout and random checkpoints of a VQ-VAE and its prior(s)."""
    from PIL import Image

    from oasis_gen.networks.pixelcnn import pixelcnn_from_spec, pixelcnn_spec
    from oasis_gen.networks.spec import file_sha256
    from oasis_gen.networks.vqvae import vqvae_from_spec, vqvae_spec

    rng = np.random.default_rng(0)
    data = folder / "data"
    subject = 0
    for split, subjects in (("train", 1), ("validate", 1), ("test", 3)):
        target = data / f"keras_png_slices_{split}"
        target.mkdir(parents=True)
        for _ in range(subjects):
            subject += 1
            for k in range(4):
                yy, xx = np.mgrid[0:40, 0:40]
                ry, rx = 40 * (0.3 + 0.1 * rng.random(2))
                inside = ((yy - 20) / ry) ** 2 + ((xx - 20) / rx) ** 2 < 1
                image = np.where(inside, 100 + 80 * rng.random((40, 40)), 0).astype(np.uint8)
                Image.fromarray(image).save(target / f"case_{subject:03d}_slice_{k}.nii.png")
    torch.manual_seed(0)
    two = {"top_downsamplings": 1, "top_num_embeddings": 8} if levels == 2 else {}
    spec = vqvae_spec(image_size=32, num_downsamplings=2, channels=[4, 8], num_embeddings=16, embedding_dim=4, **two)
    vqvae = folder / "vqvae.pt"
    torch.save({"model": vqvae_from_spec(spec).state_dict(), "spec": spec.state_dict()}, vqvae)
    record = {"vqvae_checkpoint": str(vqvae), "vqvae_sha256": file_sha256(vqvae)}
    paths = {"data": data, "vqvae": vqvae}
    cond = {}
    if levels == 2:
        top_spec = pixelcnn_spec(8, 4, channels=4, num_layers=2, **record)
        top_spec.values["level"] = "top"
        paths["top"] = folder / "prior_top.pt"
        torch.save({"model": pixelcnn_from_spec(top_spec).state_dict(), "spec": top_spec.state_dict()}, paths["top"])
        cond = {"cond_num_embeddings": 8, "cond_factor": 2}
    prior_spec = pixelcnn_spec(16, 8, channels=4, num_layers=2, **record, **cond)
    if levels == 2:
        prior_spec.values.update(level="bottom", top_prior_checkpoint=str(paths["top"]))
    paths["prior"] = folder / "prior.pt"
    torch.save({"model": pixelcnn_from_spec(prior_spec).state_dict(), "spec": prior_spec.state_dict()}, paths["prior"])
    return paths


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    line = command(__file__, argv)
    try:
        if args.quick:
            with tempfile.TemporaryDirectory(prefix="atypicality-quick-") as folder:
                paths = quick_inputs(Path(folder), args.quick_levels)
                args.prior_ckpt, args.vqvae_ckpt, args.dataset_dir = paths["prior"], paths["vqvae"], paths["data"]
                result = run(args, line)
        else:
            result = run(args, line)
    except OasisGenError as err:
        print(f"atypicality: error: {err}", file=sys.stderr)
        return 1
    text = markdown(result)
    print(text)
    write_result(args.out_dir, args.name, text, result, line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

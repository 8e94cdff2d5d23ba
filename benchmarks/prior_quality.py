"""How good is a trained prior? Likelihood of held-out codes, and samples compared with real slices.

Usage::

    .venv/bin/python benchmarks/prior_quality.py --prior_ckpt runs/prior/checkpoints/model.pt \\
        [--vqvae_ckpt runs/vqvae/checkpoints/model.pt] [--dataset_dir data/demo] [--num_samples 64 --split test]

Measures, on one split (default: test) of the dataset:

* the prior's negative log-likelihood of the split's codes (bits per code) and its top-1 accuracy, beside two
  references: a uniform prior (``log2 K``) and the unigram entropy of the split's codes (what a prior that
  ignores all context could reach at best);
* FID and MMD between ``--num_samples`` samples and real slices, in the feature space of the VQ-VAE's encoder
  (:func:`oasis_gen.metrics.encoder_features`). The real slices are shuffled and halved: half A is the
  reference; the other half B (a floor: what real slices score), the VQ-VAE's reconstructions of B (a ceiling for
  any prior over these codes) and the samples are each compared with A at the same set size, since both
  figures depend on it;
* MS-SSIM diversity (1 - mean pairwise MS-SSIM) of the samples and of as many real slices;
* the time to draw and decode the samples.

Writes ``<out-dir>/<name>.md`` and ``.json`` (atomically; ``--name`` defaults to ``prior_quality``) and prints the
table.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from kit import command, load_slices, machine_info, machine_summary, result_options, split_records, write_result

from oasis_gen.generation.codes import slice_labels
from oasis_gen.generation.pair import load_pair
from oasis_gen.inferers.pixelcnn_inferer import decode_codes, encode_images
from oasis_gen.inferers.pixelcnn_sampling import sample_codes
from oasis_gen.metrics import (
    CodeAccuracy,
    CodeNLL,
    encoder_features,
    fid,
    mmd,
    ms_ssim_diversity,
    ms_ssim_settings,
)
from oasis_gen.utils.errors import OasisGenError
from oasis_gen.utils.threads import sampling_threads

FEATURE_NOTE = ("VQ-VAE encoder output (before quantization), average- and max-pooled over the code grid: "
                "{dims} features. Chosen over Inception features because it needs no download (works offline), "
                "was trained on these very slices and takes any image size; figures compare priors of this "
                "VQ-VAE, not FIDs published elsewhere.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prior_ckpt", default="runs/prior/checkpoints/model.pt")
    parser.add_argument("--vqvae_ckpt", default=None, help="default: the VQ-VAE recorded in the prior")
    parser.add_argument("--dataset_dir", default="data/demo")
    parser.add_argument("--split", default="test", choices=("train", "validate", "test"))
    parser.add_argument("--split_ratios", default="0.8,0.1,0.1", help="for folders without splits")
    parser.add_argument("--split_seed", type=int, default=0)
    parser.add_argument("--slice_axis", default="axial")
    parser.add_argument("--min_brain_fraction", type=float, default=0.1)
    parser.add_argument("--max_real", type=int, default=None, help="use at most this many real slices (random)")
    parser.add_argument("--num_samples", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=32)
    result_options(parser, "prior_quality")
    return parser.parse_args(argv)


def code_likelihood(prior: torch.nn.Module, codes: torch.Tensor, labels: torch.Tensor | None,
                    batch_size: int) -> dict[str, float]:
    """NLL (bits/code) and top-1 accuracy of the prior on code grids ``[M, g, g]``."""
    nll, accuracy = CodeNLL(), CodeAccuracy()
    device = next(prior.parameters()).device
    prior.eval()
    with torch.no_grad():
        for start in range(0, codes.shape[0], batch_size):
            batch = codes[start:start + batch_size].to(device)
            logits = prior(batch, None if labels is None else labels[start:start + batch_size].to(device))
            nll(y_pred=logits, y=batch)
            accuracy(y_pred=logits, y=batch)
    counts = torch.bincount(codes.flatten().long(), minlength=prior.num_embeddings).double()
    probs = counts[counts > 0] / counts.sum()
    return {"nll_bits_per_code": float(nll.aggregate()), "top1_accuracy": float(accuracy.aggregate()),
            "uniform_bits_per_code": math.log2(prior.num_embeddings),
            "unigram_entropy_bits_per_code": max(0.0, float(-(probs * probs.log2()).sum())),
            "codes_used": int((counts > 0).sum())}


def run(args: argparse.Namespace, command: str) -> dict[str, object]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    machine = machine_info(device)
    started = time.perf_counter()
    models = load_pair(args.prior_ckpt, args.vqvae_ckpt, device)
    prior, vqvae, size = models.prior, models.vqvae, models.image_size
    print(f"prior {models.prior_path} (K={models.num_embeddings}, grid {models.grid[0]}), VQ-VAE {models.vqvae_path}",
          flush=True)

    ratios = tuple(float(v) for v in args.split_ratios.split(","))
    records = split_records(args.dataset_dir, args.split, split_ratios=ratios, seed=args.split_seed,
                            axis=args.slice_axis, min_brain_fraction=args.min_brain_fraction)
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(args.seed)).tolist()
    if args.max_real is not None:
        order = order[:args.max_real]
    records = [records[i] for i in order]  # a random order: halves A and B below are random halves
    if len(records) < 4:
        raise SystemExit(f"need at least 4 real slices in the {args.split} split, found {len(records)}")
    real = load_slices(records, size)  # through the same transforms (uint8 cache) as the prior's codes
    codes = encode_images(vqvae, real, args.batch_size).cpu()
    labels = None
    if prior.num_classes is not None:
        labels = torch.tensor(slice_labels(records, prior.num_classes))
    likelihood = code_likelihood(prior, codes, labels, args.batch_size)
    print(f"{len(records)} real {args.split} slices: NLL {likelihood['nll_bits_per_code']:.3f} bits/code, "
          f"top-1 {likelihood['top1_accuracy']:.3f}", flush=True)

    # samples: a conditional prior gets labels drawn from the real slices' own, so both sets cover the same positions
    sample_labels = None
    if labels is not None:
        pick = torch.randint(0, len(labels), (args.num_samples,), generator=torch.Generator().manual_seed(args.seed))
        sample_labels = labels[pick].to(device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    start = time.perf_counter()
    with sampling_threads(device):
        threads = torch.get_num_threads()
        sampled = sample_codes(prior, args.num_samples, models.grid, args.temperature, sample_labels, generator)
        code_seconds = time.perf_counter() - start
        samples = decode_codes(vqvae, sampled).cpu()
    sample_seconds = time.perf_counter() - start
    print(f"{args.num_samples} samples in {sample_seconds:.1f} s", flush=True)

    half = len(records) // 2
    set_a, set_b = slice(0, half), slice(half, len(records))
    m = min(args.num_samples, len(records) - half)
    feats_real = encoder_features(vqvae, real, args.batch_size)
    feats_samples = encoder_features(vqvae, samples, args.batch_size)
    reconstructions = decode_codes(vqvae, codes[set_b].to(device)).cpu()
    feats_recon = encoder_features(vqvae, reconstructions, args.batch_size)
    reference = feats_real[set_a]
    comparisons = {
        "real_B": feats_real[set_b][:m],
        "reconstructions_B": feats_recon[:m],
        "samples": feats_samples[:m],
    }
    distances = {name: {"fid": fid(reference, feats), "mmd": mmd(reference, feats)}
                 for name, feats in comparisons.items()}
    distances["samples_vs_all_real"] = {"fid": fid(feats_real, feats_samples), "mmd": mmd(feats_real, feats_samples)}
    diversity_count = min(args.num_samples, len(records))
    scales, kernel = ms_ssim_settings(size)
    diversity = {"samples": ms_ssim_diversity(samples), "real": ms_ssim_diversity(real[:diversity_count]),
                 "count": diversity_count, "ms_ssim_scales": scales, "ms_ssim_kernel": kernel}

    return {
        "command": command,
        "machine": machine,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "models": models.describe(),
        "data": {"split": args.split, "real_slices": len(records), "reference_A": half,
                 "compared_per_set": m, "image_size": size},
        "likelihood": likelihood,
        "features": FEATURE_NOTE.format(dims=feats_real.shape[1]),
        "feature_dims": int(feats_real.shape[1]),
        "distances": distances,
        "diversity": diversity,
        "sampling": {"samples": args.num_samples, "seconds": sample_seconds, "code_seconds": code_seconds,
                     "samples_per_second": args.num_samples / sample_seconds, "torch_threads": threads,
                     "temperature": args.temperature},
        "total_seconds": time.perf_counter() - started,
    }


def markdown(result: dict) -> str:
    like, dist, div, samp, data = (result["likelihood"], result["distances"], result["diversity"],
                                   result["sampling"], result["data"])
    models, machine = result["models"], result["machine"]
    prior = models["prior"]
    lines = [
        "# Prior quality",
        "",
        f"Prior `{models['prior_ckpt']}` (K={prior['num_embeddings']}, {prior['grid_size']}x{prior['grid_size']} "
        f"grid, {prior['num_layers']} layers x {prior['channels']} channels, classes: {prior['num_classes']}); "
        f"VQ-VAE `{models['vqvae_ckpt']}` ({data['image_size']}px). Dataset `{result['settings']['dataset_dir']}`, "
        f"{data['split']} split: {data['real_slices']} slices. Device {machine['device']}; {machine_summary(machine)}",
        "",
        f"Command: `{result['command']}` ({result['total_seconds']:.1f} s).",
        "",
        f"## Held-out codes ({data['split']} split, {data['real_slices']} slices)",
        "",
        "| measure | value |",
        "|---|---|",
        f"| prior NLL (bits/code, lower is better) | {like['nll_bits_per_code']:.3f} |",
        f"| prior top-1 accuracy | {like['top1_accuracy']:.3f} |",
        f"| uniform prior, log2 K (bits/code) | {like['uniform_bits_per_code']:.3f} |",
        f"| unigram entropy of the split's codes (bits/code; best without context) | "
        f"{like['unigram_entropy_bits_per_code']:.3f} |",
        f"| codes used in the split | {like['codes_used']} of {prior['num_embeddings']} |",
        "",
        f"## Samples vs real slices: FID and MMD in the VQ-VAE encoder's feature space ({result['feature_dims']} "
        "dims)",
        "",
        f"Features: {result['features']} MMD: Gaussian kernel (random Fourier features, median bandwidth). Each row "
        f"compares {data['compared_per_set']} images with the same reference half A of the real slices "
        f"({data['reference_A']} slices); lower is better."
        + (f" With {data['compared_per_set']} images and {result['feature_dims']} features the covariances are "
           "singular, so FID is a rough figure here (MMD holds up better at small sizes)."
           if data["compared_per_set"] <= result["feature_dims"] else ""),
        "",
        "| compared with real half A | FID | MMD |",
        "|---|---|---|",
        f"| real half B (floor: same distribution) | {dist['real_B']['fid']:.4g} | {dist['real_B']['mmd']:.4g} |",
        f"| VQ-VAE reconstructions of B (best any prior over these codes can do) | "
        f"{dist['reconstructions_B']['fid']:.4g} | {dist['reconstructions_B']['mmd']:.4g} |",
        f"| prior samples (T={samp['temperature']}) | {dist['samples']['fid']:.4g} | {dist['samples']['mmd']:.4g} |",
        f"| all {samp['samples']} samples vs all {data['real_slices']} real slices | "
        f"{dist['samples_vs_all_real']['fid']:.4g} | {dist['samples_vs_all_real']['mmd']:.4g} |",
        "",
        f"## Diversity: 1 - mean pairwise MS-SSIM ({div['ms_ssim_scales']} scales, Gaussian kernel "
        f"{div['ms_ssim_kernel']}; {div['count']} images each)",
        "",
        "| set | diversity |",
        "|---|---|",
        f"| prior samples | {div['samples']:.4f} |",
        f"| real slices | {div['real']:.4f} |",
        "",
        "## Sampling time",
        "",
        f"{samp['samples']} samples (codes and decoding) in {samp['seconds']:.2f} s ({samp['samples_per_second']:.2f} "
        f"samples/s; codes alone {samp['code_seconds']:.2f} s), {samp['torch_threads']} torch thread(s) on "
        f"{machine['device']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args, command(__file__, argv))
    except OasisGenError as err:
        print(f"prior_quality: error: {err}", file=sys.stderr)
        return 1
    text = markdown(result)
    print(text)
    write_result(args.out_dir, args.name, text, result, result["command"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

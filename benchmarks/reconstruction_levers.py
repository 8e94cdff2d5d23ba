"""Screening of the VQ-VAE's levers at equal wall time, before the bundle benchmark confirms a choice.

Each candidate (train.yaml's default network and training with some settings changed) trains for the same wall
time on the same slices by a plain loop that does what the bundle's training step does (the network, VQVAELoss,
AdamW, the budget's cosine schedule, codebook restarts every 20 steps), without the bundle's start-up, data
caching and validations, so that many levers fit in an hour. Candidates are scored on the *validation* split
(the test split is left for benchmarks/reconstruction_ixi.py, which runs the chosen ones through the bundle).

    python benchmarks/reconstruction_levers.py --minutes 2.5 --candidates default channels_last lr4e-3
    python benchmarks/reconstruction_levers.py --dataset demo --minutes 2.5

Writes ``<out-dir>/<name>.md`` and ``.json`` (``--name`` defaults to ``reconstruction_levers_<dataset>_<minutes>min``,
e.g. ``reconstruction_levers_ixi_2.5min``) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
from baseline_vqvae import evaluate
from kit import (
    DEMO_DIR,
    IXI_DIR,
    IXI_READER,
    bundle_report,
    command,
    config_settings,
    load_slices,
    machine_info,
    machine_summary,
    result_options,
    write_result,
)

from oasis_gen.data.demo import demo_dataset
from oasis_gen.data.transforms import decode_intensity
from oasis_gen.engines.handlers.codebook import _LevelRestart, codebook_health
from oasis_gen.engines.schedules import BudgetCosineLR
from oasis_gen.engines.steps import VQVAELoss
from oasis_gen.networks.vqvae import named_quantizers, vqvae_from_spec, vqvae_spec

# each candidate: the train.yaml keys it changes from train.yaml as it stands ("default": batch 8, lr 0.001, the top
# image term, since 2026-12-03); the others were measured when train.yaml had batch 16 and lr 0.002, which are
# written out (LR2) so the rows in benchmarks/results keep meaning what they measured whatever train.yaml becomes
LR2 = {"learning_rate": 2e-3}
B16 = {"batch_size": 16, **LR2}
CANDIDATES: dict[str, dict[str, object]] = {
    "default": {},
    "former_default": {**B16, "channels_last": False},
    "channels_last": dict(B16),
    "lr4e-3": {**B16, "learning_rate": 4e-3},
    "lr1e-3": {**B16, "learning_rate": 1e-3},
    "batch8": {**LR2, "batch_size": 8},
    "batch32": {**LR2, "batch_size": 32},
    "batch4": {**LR2, "batch_size": 4},
    "batch2": {**LR2, "batch_size": 2},
    "batch4-lr1e-3": {"batch_size": 4, "learning_rate": 1e-3},
    "batch8-lr1e-3": {"batch_size": 8, "learning_rate": 1e-3},
    "batch8-lr3e-3": {"batch_size": 8, "learning_rate": 3e-3},
    "K512": {**B16, "num_embeddings": 512},
    "K1024": {**B16, "num_embeddings": 1024},
    "mse": {**B16, "reconstruction_loss": "mse"},
    "ssim0.5": {**B16, "ssim_loss_weight": 0.5},
    "ch16-48": {**B16, "channels": [16, 48]},
    "ch24-48": {**B16, "channels": [24, 48]},
    "ch8-32": {**B16, "channels": [8, 32]},
    "res2": {**B16, "num_res_layers": 2},
    "D64": {**B16, "embedding_dim": 64},
    "D16": {**B16, "embedding_dim": 16},
    # the top level's coarse image term (top_image_weight, 0.25 since 2026-12-03) against none, as before it
    "no_top_image": {**B16, "top_image_weight": 0.0},
    "batch8-no_top_image": {**LR2, "batch_size": 8, "top_image_weight": 0.0},
    "batch4-no_top_image": {**LR2, "batch_size": 4, "top_image_weight": 0.0},
    "top_image1": {**B16, "top_image_weight": 1.0},
    "batch8-top_image0.1": {**LR2, "batch_size": 8, "top_image_weight": 0.1},
    "batch8-top_image0.05": {**LR2, "batch_size": 8, "top_image_weight": 0.05},
    "batch4-top_image0.1": {**LR2, "batch_size": 4, "top_image_weight": 0.1},
}
SPEC_KEYS = ("image_size", "num_downsamplings", "channels", "num_res_layers", "num_res_channels", "num_embeddings",
             "embedding_dim", "commitment_cost", "top_downsamplings", "top_num_embeddings", "top_only_rate",
             "top_negative_slope", "top_image_weight")


def top_perplexity(network: torch.nn.Module, images: torch.Tensor) -> float | None:
    """Perplexity of the top codes of some slices (None for a single-level VQ-VAE); leaves the network training."""
    if "top" not in named_quantizers(network):
        return None
    network.eval()
    with torch.no_grad():
        top_codes = network.index_quantize(images)[0]
    network.train()
    return codebook_health(torch.bincount(top_codes.flatten()))["perplexity"]


def run_candidate(name: str, train: torch.Tensor, validate: torch.Tensor, minutes: float, seed: int,
                  schedule_minutes: float | None = None, watch_every: int = 250) -> dict:
    """Train one candidate for a wall-time budget; return its validation scores and what the budget allowed.

    Args:
        schedule_minutes: the budget the learning-rate cosine anneals over (default ``minutes``): a longer one
            trains the first minutes of a longer run, where a top codebook that collapses does so.
        watch_every: every so many steps, the top codebook's perplexity on 128 validation slices is taken (its
            last and lowest values are reported).
    """
    settings = {**config_settings("train.yaml"), **CANDIDATES[name]}
    torch.manual_seed(seed)
    spec = vqvae_spec(**{key: settings[key] for key in SPEC_KEYS}, decay=settings["ema_decay"])
    network = vqvae_from_spec(spec)
    layout = torch.channels_last if settings.get("channels_last") else torch.contiguous_format
    network = network.to(memory_format=layout)
    loss_function = VQVAELoss(settings["reconstruction_loss"], ssim_weight=float(settings["ssim_loss_weight"]))
    optimizer = torch.optim.AdamW(network.parameters(), lr=float(settings["learning_rate"]),
                                  weight_decay=float(settings["weight_decay"]))
    batch_size = int(settings["batch_size"])
    steps_per_epoch = math.ceil(train.shape[0] / batch_size)
    schedule = BudgetCosineLR(optimizer, total_steps=10_000 * steps_per_epoch, minutes=schedule_minutes or minutes,
                              eta_min_ratio=0.05)
    watched = decode_intensity(validate[:: max(1, len(validate) // 128)][:128]).contiguous(memory_format=layout)
    perplexities = []
    interval = int(settings["codebook_restart_interval"])
    levels = [_LevelRestart(q) for q in named_quantizers(network).values()]  # what CodebookRestart does per level
    generator = torch.Generator().manual_seed(seed)
    network.train()
    steps = 0
    start = time.perf_counter()
    done = False
    while not done:
        order = torch.randperm(train.shape[0], generator=generator)
        for first in range(0, train.shape[0], batch_size):
            batch = decode_intensity(train[order[first:first + batch_size]]).contiguous(memory_format=layout)
            loss = loss_function(network(batch), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            steps += 1
            if (steps - 1) % interval == 0:
                for level in levels:
                    level.restart()
            if steps % watch_every == 0:
                perplexities.append(top_perplexity(network, watched))
            if time.perf_counter() - start >= minutes * 60.0:
                done = True
                break
    seconds = time.perf_counter() - start
    perplexities.append(top_perplexity(network, watched))
    scores = evaluate(network, validate)
    ssim = np.asarray(scores["ssim"], dtype=float)
    psnr = np.asarray(scores["psnr"], dtype=float)
    return {"model": name, "settings": CANDIDATES[name], "minutes": minutes, "steps": steps,
            "epochs": round(steps / steps_per_epoch, 2), "images_per_s": round(steps * batch_size / seconds, 1),
            "parameters": sum(p.numel() for p in network.parameters()),
            "ssim": round(float(np.nanmean(ssim)), 4), "ssim_std": round(float(np.nanstd(ssim)), 4),
            "psnr": round(float(np.nanmean(psnr)), 2),
            "top_perplexity": None if perplexities[-1] is None else round(perplexities[-1], 1),
            "top_perplexity_lowest": None if perplexities[-1] is None else round(min(perplexities), 1)}


def top_cell(row: dict) -> str:
    """The table's top-perplexity cell: last (lowest), or '-' for one level."""
    if row["top_perplexity"] is None:
        return "-"
    return f"{row['top_perplexity']} ({row['top_perplexity_lowest']})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ixi", choices=["ixi", "demo"])
    parser.add_argument("--minutes", type=float, default=2.5)
    parser.add_argument("--schedule-minutes", type=float, default=None,
                        help="anneal the learning rate over this budget (default: --minutes), e.g. 30 to train the "
                             "first minutes of a 30-minute run")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--seed", type=int, default=0)
    result_options(parser, None, "reconstruction_levers_<dataset>_<minutes>min")
    args = parser.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    machine = machine_info("cpu")
    defaults = config_settings("train.yaml")
    dataset, reader = (str(IXI_DIR), IXI_READER) if args.dataset == "ixi" else (demo_dataset(str(DEMO_DIR)), {})
    records = bundle_report(dataset, reader, ["train", "validate"]).usable()
    train = load_slices(records["train"], int(defaults["image_size"]), encoded=True)
    validate = load_slices(records["validate"], int(defaults["image_size"]), encoded=True)
    rows = []
    for name in args.candidates:
        rows.append(run_candidate(name, train, validate, args.minutes, args.seed, args.schedule_minutes))
        print(json.dumps(rows[-1]), flush=True)
    line = command(__file__, argv)
    stem = args.name or f"reconstruction_levers_{args.dataset}_{args.minutes:g}min"
    schedule = (f"; the learning rate anneals over {args.schedule_minutes:g} minutes (the start of a run of that "
                "budget)" if args.schedule_minutes else "")
    lines = [f"# VQ-VAE levers at equal wall time ({args.minutes:g} min each), {args.dataset}, validation split",
             "", f"Machine: {machine_summary(machine)}",
             f"Slices: train {len(train)}, validate {len(validate)}. Plain training loop (no bundle start-up, "
             "caching or validations); per-image SSIM (data range 1) and PSNR of clamped reconstructions"
             f"{schedule}. Top perplexity: of the top codes of 128 validation slices at the end, and the lowest "
             "taken every 250 steps (1: the top codebook collapsed to one code).",
             f"Command: `{line}`", "",
             "| candidate | settings | parameters | images/s | epochs | SSIM | PSNR | top perplexity (lowest) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['settings'] or 'train.yaml'} | {r['parameters']:,} | {r['images_per_s']} | "
              f"{r['epochs']} | {r['ssim']:.4f} ± {r['ssim_std']:.4f} | {r['psnr']:.2f} | "
              f"{top_cell(r)} |"
              for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    write_result(args.out_dir, stem, text, {"machine": machine, "minutes": args.minutes, "rows": rows}, line)


if __name__ == "__main__":
    main()

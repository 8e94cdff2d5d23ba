"""Reconstruction on real anatomy: the project's VQ-VAE candidates beside a published-style baseline, per time budget.

Every model gets the same wall time of training on the same train slices, then is scored on the same held-out test
slices with per-image SSIM (data range 1) and PSNR:

- the project's candidates run the real bundle: ``python -m monai.bundle run training`` (train.yaml, the budget as
  ``--time_limit_minutes``, ``--max_epochs`` high so that time is the limit), then ``evaluating`` (evaluate.yaml) on
  the test split;
- the baseline (benchmarks/baseline_vqvae.py) is trained by a plain loop on the slices the project's data layer
  yields for the same dataset, split and reader settings (check_dataset(...).usable(), eval_transforms), and scored
  with the MONAI metric classes evaluate.yaml uses, on reconstructions clamped to [0, 1].
- a scale for reading the figures, trained on nothing: the test slices under a Gaussian blur of 0.5, 0.75 and 1
  pixel, scored the same way (a per-image SSIM between two of them is what a reconstruction that fine reaches).

The default dataset is the 60 IXI T1 volumes beside the project (../shared/data/ixi_t1, split 80/10/10 by subject,
axial slices, slices with under 25 % head dropped); ``--dataset demo`` uses the demo cohort.

    python benchmarks/reconstruction_ixi.py --minutes 3 10 30                 # IXI, every candidate and budget
    python benchmarks/reconstruction_ixi.py --dataset demo --minutes 3 10 30  # the demo cohort
    python benchmarks/reconstruction_ixi.py --quick --out-dir /tmp/q          # tiny sizes, seconds (for the tests)
    python benchmarks/reconstruction_ixi.py --blur-only                       # the blur scale alone, seconds

Writes ``<out-dir>/<name>.md`` and ``.json`` (atomically) and prints the table; ``--name`` defaults to
``reconstruction_ixi`` (IXI), ``reconstruction_ixi_<dataset>`` (another dataset, e.g. ``reconstruction_ixi_demo``)
or ``reconstruction_ixi_quick`` (``--quick``). Runs, logs, example pictures and the MLflow store go under ``--work``.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from baseline_vqvae import BaselineVQVAE, evaluate, parameter_count, train_for
from kit import (
    DEMO_DIR,
    IXI_DIR,
    IXI_READER,
    WORK,
    bundle_report,
    command,
    config_settings,
    load_slices,
    machine_info,
    machine_summary,
    result_options,
    run_bundle,
    write_result,
)
from mlflow import MlflowClient
from monai.networks.layers import GaussianFilter
from torch import nn

from oasis_gen.bundle.configs import override_args
from oasis_gen.data.demo import build_demo_cohort, demo_dataset
from oasis_gen.utils.pictures import reconstruction_grid, save_png, tile, to_uint8

# reader settings per named dataset: IXI's axial slices (kit.IXI_READER), skull and neck included
DATASETS: dict[str, dict[str, object]] = {
    "ixi": dict(IXI_READER),
    "demo": {},
}
# train.yaml overrides per candidate; "default" is train.yaml as it stands (two levels, [16,32], K=256, D=32, L1 with
# the top image term, batch 8, lr 0.001, channels-last)
CANDIDATES: dict[str, dict[str, str]] = {
    "default": {},
    "base": {"channels": "[32,64]"},
    "mse": {"reconstruction_loss": "mse"},
    "K512": {"num_embeddings": "512"},  # capacity that lost at 3 minutes by speed: does it pay at 30?
}
# the baseline as described: 64 channels, K=512, D=64, MSE, Adam 2e-3, batch 16
BASELINE = {"channels": 64, "res_channels": 32, "num_embeddings": 512, "embedding_dim": 64}
BASELINE_TRAINING = {"batch_size": 16, "learning_rate": 2e-3}
# a scale for reading the figures, trained on nothing: the test slices under a Gaussian blur of these widths (pixels),
# scored as the models are
BLUR_SIGMAS = (0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Setting:
    """Sizes of one benchmark mode (the real one, or --quick)."""

    image_size: int = 128
    bundle_overrides: dict[str, str] = field(default_factory=dict)  # applied to every candidate
    baseline: dict[str, int] = field(default_factory=lambda: dict(BASELINE))
    baseline_batch_size: int = BASELINE_TRAINING["batch_size"]
    # the time budget stops training at an epoch's end, and a whole IXI train split (~4,700 slices) takes 0.5-1.5 min
    # per epoch on 2 CPU cores; a validation costs ~5 s whatever the epoch. An "epoch" of this many images, or of
    # epoch_images_per_minute per budget minute when that is more (the data loader carries on across epochs; a
    # validation at each end) lets the budget act within about half a minute and keeps validations near a tenth
    # of longer budgets
    epoch_images: int = 3200
    epoch_images_per_minute: int = 320

    def epoch_steps(self, minutes: float, batch_size: int) -> int:
        """Trainer steps per epoch for a budget and batch size (0: the whole train split)."""
        images = max(self.epoch_images, round(self.epoch_images_per_minute * minutes))
        return math.ceil(images / batch_size) if images > 0 else 0

FULL = Setting()
# seconds, not minutes: 32x32 slices, a tiny VQ-VAE (8x8 codes, K=16) and a tiny baseline
QUICK = Setting(
    image_size=32,
    bundle_overrides={"image_size": "32", "batch_size": "4", "channels": "[8,16]", "num_embeddings": "16",
                      "embedding_dim": "8", "val_interval": "1"},
    baseline={"channels": 8, "res_channels": 4, "num_embeddings": 16, "embedding_dim": 8},
    baseline_batch_size=4,
    epoch_images=0,
    epoch_images_per_minute=0,
)
QUICK_MINUTES = [0.04]
# one bundle candidate: each costs ~20 s of bundle start-up however tiny; check_candidates covers the others' keys
QUICK_CANDIDATES = ["default"]


def check_candidates(names: list[str], setting: Setting) -> None:
    """Stop before any training when a candidate overrides a key train.yaml does not have."""
    # a typo would otherwise end a long run only when that candidate's turn comes, hours in
    keys = set(config_settings("train.yaml"))
    for name in names:
        unknown = sorted((set(CANDIDATES[name]) | set(setting.bundle_overrides)) - keys)
        if unknown:
            raise SystemExit(f"candidate {name!r} overrides keys train.yaml does not have: {unknown}")


def top_perplexities(store: Path, run_name: str) -> list[float]:
    """The validation top-codebook perplexity of a training run, one value per validation (empty: one level)."""
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"attributes.run_name = '{run_name}'")
    if not runs:
        return []
    return [m.value for m in client.get_metric_history(runs[0].info.run_id, "val_codebook_top_perplexity")]


def run_candidate(name: str, minutes: float, dataset: str, reader: dict[str, object], setting: Setting,
                  work: Path, stem: str, max_epochs: int, epoch_steps: int | None, threads: int,
                  train_slices: int) -> dict:
    """Train one candidate through train.yaml for a budget, evaluate it with evaluate.yaml; return its row."""
    out = work / f"{stem}-{name}-{minutes:g}min"
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    data = {"dataset_dir": dataset, **reader}
    common = override_args({**data, "output_dir": out, "tracking_uri": work / "mlruns", "progress": "False"})
    batch_size = int({**config_settings("train.yaml"), **setting.bundle_overrides, **CANDIDATES[name]}["batch_size"])
    if epoch_steps is None:
        epoch_steps = setting.epoch_steps(minutes, batch_size)
    epochs = {"train#trainer#epoch_length": epoch_steps} if epoch_steps > 0 else {}
    train_s = run_bundle("training", "train.yaml",
                         [*common, *override_args({**setting.bundle_overrides, **CANDIDATES[name], **epochs}),
                          "--resume", "False", "--max_epochs", str(max_epochs), "--time_limit_minutes", str(minutes)],
                         log, threads)
    eval_s = run_bundle("evaluating", "evaluate.yaml", common, log, threads)
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    config = yaml.safe_load((out / "config.yaml").read_text())
    last = torch.load(max(out.glob("checkpoints/last_*.pt")), weights_only=True)
    iterations = int(last["trainer"]["iteration"])
    batch_size = int(config["batch_size"])
    # the schedule keeps the wall time from the first step to the last checkpoint: training and the validations
    # in it, without the bundle's start-up and data caching (what the time budget counts too)
    trained_s = float(last["lr_scheduler"].get("elapsed_before", 0.0)) or train_s
    top = top_perplexities(work / "mlruns", (out / "mlflow_run_name.txt").read_text().strip())
    overrides_text = " ".join(f"{k}={v}" for k, v in CANDIDATES[name].items()) or "train.yaml as is"
    return {
        "budget_minutes": minutes, "model": name, "kind": "bundle", "settings": overrides_text,
        # epochs as passes over the train split, whatever the trainer's epoch length
        "parameters": int(config["parameters"]), "epochs": iterations / math.ceil(train_slices / batch_size),
        "steps": iterations, "epoch_steps": epoch_steps,
        "validations": iterations // int(last["trainer"]["epoch_length"]),
        "trained_s": round(trained_s, 1), "images_per_s": round(iterations * batch_size / trained_s, 1),
        "ssim": summary["ssim"]["mean"], "ssim_std": summary["ssim"]["std"], "psnr": summary["psnr"]["mean"],
        "test_slices": summary["ssim"]["count"],
        # the top codebook in use at the last validation, and at its lowest (1: collapsed to one code)
        "top_perplexity": round(top[-1], 1) if top else None,
        "top_perplexity_lowest": round(min(top), 1) if top else None,
        "phases_s": {"train_command": round(train_s, 1), "evaluate_command": round(eval_s, 1)},
    }


class GaussianBlur(nn.Module):
    """A reference "reconstruction": the slice under a Gaussian blur (``evaluate``'s network interface)."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.blur = GaussianFilter(spatial_dims=2, sigma=sigma)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.blur(images), torch.zeros(())


def blur_references(test: torch.Tensor, sigmas: tuple[float, ...] = BLUR_SIGMAS) -> list[dict]:
    """Per-image SSIM and PSNR of the test slices blurred by each sigma (pixels), scored as the models are."""
    references = []
    for sigma in sigmas:
        scores = evaluate(GaussianBlur(sigma), test)
        ssim, psnr = np.asarray(scores["ssim"], dtype=float), np.asarray(scores["psnr"], dtype=float)
        references.append({"blur_sigma": sigma, "ssim": round(float(ssim.mean()), 4),
                           "ssim_std": round(float(ssim.std()), 4), "psnr": round(float(psnr.mean()), 2)})
    return references


def run_baseline(minutes: float, train: torch.Tensor, test: torch.Tensor, setting: Setting, work: Path,
                 stem: str, seed: int) -> dict:
    """Train the baseline for a budget on the train slices, score it on the test slices; return its row."""
    torch.manual_seed(seed)
    network = BaselineVQVAE(**setting.baseline)
    result = train_for(network, train, minutes * 60.0, batch_size=setting.baseline_batch_size,
                       learning_rate=BASELINE_TRAINING["learning_rate"], seed=seed)
    start = time.perf_counter()
    scores = evaluate(network, test)
    eval_s = time.perf_counter() - start
    ssim = np.asarray(scores["ssim"], dtype=float)
    psnr = np.asarray(scores["psnr"], dtype=float)
    ssim, psnr = ssim[np.isfinite(ssim)], psnr[np.isfinite(psnr)]  # as PerImageMetrics summarises
    with torch.no_grad():
        picked = test[:: max(1, len(test) // 8)][:8].float() / 255.0
        recon = network(picked)[0].clamp(0.0, 1.0)
    save_png(reconstruction_grid(picked, recon), work / f"{stem}-baseline-{minutes:g}min" / "test_reconstructions.png")
    sizes = setting.baseline
    return {
        "budget_minutes": minutes, "model": "baseline", "kind": "baseline",
        "settings": f"{sizes['channels']} ch, K={sizes['num_embeddings']}, D={sizes['embedding_dim']}, MSE, Adam "
                    f"{BASELINE_TRAINING['learning_rate']:g}, batch {setting.baseline_batch_size}",
        "parameters": parameter_count(network), "epochs": result.epochs, "steps": result.steps,
        "trained_s": round(result.seconds, 1), "images_per_s": round(result.images_per_s, 1),
        "ssim": float(ssim.mean()), "ssim_std": float(ssim.std()), "psnr": float(psnr.mean()),
        "test_slices": int(ssim.size), "last_loss": result.last_loss,
        "phases_s": {"train": round(result.seconds, 1), "evaluate": round(eval_s, 1)},
    }


def markdown(result: dict) -> str:
    """The result as a Markdown page: one table, models as rows, a column group per budget."""
    budgets = result["minutes"]
    models = list(dict.fromkeys(row["model"] for row in result["rows"]))
    cell = {(row["model"], row["budget_minutes"]): row for row in result["rows"]}
    split = result["data"]["slices"]
    lines = [
        f"# Reconstruction on {result['dataset_name']}: the project's VQ-VAE and a published-style baseline",
        "",
        f"Machine: {result['machine']}",
        f"Data: {result['dataset']} ({result['data']['layout']} layout; reader settings {result['data']['reader']}), "
        f"slices train {split['train']}, validate {split['validate']}, test {split['test']} "
        f"(subjects {result['data']['subjects']}); {result['image_size']}x{result['image_size']} through the "
        "project's evaluation transform chain for every model.",
        f"Torch threads: {result['threads']} for the bundle runs and the baseline alike.",
        f"Command: `{result['command']}`",
    ]
    if models:  # none with --blur-only
        lines += [
            "",
            "Test SSIM is the mean per-image SSIM (data range 1) on the held-out test subjects, PSNR the mean "
            "per-image PSNR in dB, both on reconstructions clamped to [0, 1]. Epochs (passes over the train split) "
            "and steps are what the budget allowed, trained the seconds from the first step to the end of training, "
            "images/s the training images per second of them. The bundle's budget holds a validation at each trainer "
            f"epoch's end (epochs of {result['epoch_length']}; steps per epoch in the settings table) and stops at "
            "the end of the last epoch that fits (so it can leave up to one of them unused); it is scored with its "
            "best-validated checkpoint. The baseline trains without validation, stops at the first step past the "
            "budget and is scored as it ends.",
            "",
            "| model | parameters |" + "".join(
                f" SSIM {m:g} min | PSNR | epochs (steps) | trained (s) | images/s |" for m in budgets),
            "|---|---:|" + "---:|---:|---:|---:|---:|" * len(budgets),
        ]
    for model in models:
        first = next(row for row in result["rows"] if row["model"] == model)
        cells = []
        for minutes in budgets:
            row = cell.get((model, minutes))
            if row is None:
                cells.append(" - | - | - | - | - |")
                continue
            cells.append(f" {row['ssim']:.4f} ± {row['ssim_std']:.4f} | {row['psnr']:.2f} | "
                         f"{row['epochs']:.1f} ({row['steps']}) | {row['trained_s']} | {row['images_per_s']} |")
        lines.append(f"| {model} | {first['parameters']:,} |" + "".join(cells))
    watched = [row for row in result["rows"] if row.get("top_perplexity") is not None]
    if watched:
        lines += ["", "Two-level runs: the perplexity of the top codes of the validation slices at the last validation "
                      "(lowest of all validations in brackets; 1 means the top codebook collapsed to one code).", "",
                  "| model | budget (min) | top perplexity (lowest) |", "|---|---:|---:|"]
        lines += [f"| {row['model']} | {row['budget_minutes']:g} | {row['top_perplexity']} "
                  f"({row['top_perplexity_lowest']}) |" for row in watched]
    if result.get("blur_references"):
        lines += ["", "A scale for reading the SSIM figures, trained on nothing: the same test slices under a Gaussian "
                      "blur of sigma pixels, scored the same way.", "",
                  "| blur sigma (px) | SSIM | PSNR |", "|---:|---:|---:|"]
        lines += [f"| {ref['blur_sigma']:g} | {ref['ssim']:.4f} ± {ref['ssim_std']:.4f} | {ref['psnr']:.2f} |"
                  for ref in result["blur_references"]]
    lines += ["", "| model | settings |", "|---|---|"] if models else []
    lines += [f"| {model} | {next(r['settings'] for r in result['rows'] if r['model'] == model)}"
              f"{epoch_steps_text(result['rows'], model)} |" for model in models]
    lines += ["", f"Phases (s): data check and caching for the baseline {result['phases_s']['baseline_data']}; "
              f"total {result['phases_s']['total']}."]
    return "\n".join(lines) + "\n"


def epoch_steps_text(rows: list[dict], model: str) -> str:
    """A bundle model's steps per trainer epoch by budget, for the settings table ("" for the baseline)."""
    steps = [f"{row['epoch_steps'] or 'the whole split'} at {row['budget_minutes']:g} min" for row in rows
             if row["model"] == model and "epoch_steps" in row]
    return f"; steps per epoch: {', '.join(steps)}" if steps else ""


def check_sizes(report, name: str) -> None:
    """Stop with a clear message when a split the benchmark needs is empty."""
    for split in ("train", "validate", "test"):
        if not report.records[split]:
            raise SystemExit(f"{name}: the {split} split has no usable slice")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ixi", help="ixi (default), demo, or a dataset folder")
    parser.add_argument("--minutes", type=float, nargs="+", default=[3.0, 10.0, 30.0], help="training budgets")
    parser.add_argument("--candidates", nargs="+", default=None, choices=list(CANDIDATES))
    parser.add_argument("--no-baseline", action="store_true", help="leave the baseline out")
    parser.add_argument("--baseline-minutes", type=float, nargs="+", default=None,
                        help="train the baseline at these of the budgets only (default: all of them)")
    parser.add_argument("--max-epochs", type=int, default=10_000, help="high, so that the budget is the limit")
    parser.add_argument("--epoch-steps", type=int, default=None,
                        help=f"bundle steps per epoch (validation and budget check at each end; 0: the whole train "
                             f"split; default: {FULL.epoch_images:,} images or {FULL.epoch_images_per_minute} per "
                             "budget minute, whichever is more, at the candidate's batch size; --quick: the split)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads for every run")
    parser.add_argument("--seed", type=int, default=0, help="the baseline's seed (the bundle's is train.yaml's)")
    parser.add_argument("--work", default=None, help="where runs, logs and the MLflow store go")
    result_options(parser, None, "reconstruction_ixi, reconstruction_ixi_<dataset> for another dataset, "
                                 "reconstruction_ixi_quick with --quick")
    parser.add_argument("--quick", action="store_true", help="tiny synthetic data and models, a few seconds each")
    parser.add_argument("--blur-only", action="store_true",
                        help="score the blur scale on the test slices and stop (trains nothing)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    machine_record = machine_info("cpu")  # before the runs: the load average is the one they started under
    setting = QUICK if args.quick else FULL
    minutes = QUICK_MINUTES if args.quick and args.minutes == parser.get_default("minutes") else args.minutes
    candidates = args.candidates or (QUICK_CANDIDATES if args.quick else list(CANDIDATES))
    if args.blur_only:  # the data and the blur scale, no model
        minutes, candidates, args.no_baseline = [], [], True
    check_candidates(candidates, setting)
    epoch_steps = args.epoch_steps  # None: by budget and batch size (Setting.epoch_steps)
    epoch_length = (f"{args.epoch_steps} steps" if args.epoch_steps else "the whole train split"
                    ) if args.epoch_steps is not None else (
        f"{setting.epoch_images:,} images, or {setting.epoch_images_per_minute} per budget minute when that is more"
        if setting.epoch_images else "the whole train split")
    temporary = tempfile.TemporaryDirectory(prefix="reconstruction-") if args.quick else None
    work = Path(args.work) if args.work else (Path(temporary.name) if temporary else WORK)
    work = work.resolve()
    if args.quick:
        dataset_name = "a tiny synthetic demo cohort"
        build_demo_cohort(work / "data", subjects=6, size=setting.image_size, slices_per_subject=4, progress=False)
        dataset, reader = str(work / "data"), {}
    elif args.dataset == "ixi":
        dataset_name, dataset, reader = "IXI T1", str(IXI_DIR), dict(DATASETS["ixi"])
        if not IXI_DIR.is_dir():
            raise SystemExit(f"IXI volumes not found at {IXI_DIR} (see ../shared/data/ixi_t1/README.md)")
    elif args.dataset == "demo":
        dataset_name, dataset, reader = "the demo cohort", demo_dataset(str(DEMO_DIR)), {}
    else:
        dataset_name, dataset, reader = args.dataset, str(Path(args.dataset).resolve()), {}
    suffix = "_quick" if args.quick else "" if args.dataset == "ixi" else f"_{Path(args.dataset).name}"
    stem = args.name or f"reconstruction_ixi{suffix}"  # the script's name first, whatever the dataset

    # the baseline's slices: the same records and images the bundle gets from the same settings
    phase = time.perf_counter()
    report = bundle_report(dataset, reader, ["train", "validate", "test"])
    records = report.usable()
    check_sizes(report, dataset)
    train = load_slices(records["train"], setting.image_size, encoded=True)
    test = load_slices(records["test"], setting.image_size, encoded=True)
    data_s = time.perf_counter() - phase
    examples = train[:: max(1, len(train) // 16)][:16]
    save_png(tile([to_uint8(image.float() / 255.0) for image in examples], columns=8),
             work / f"{stem}-train_slices.png")
    print(f"data: {len(records['train'])} train, {len(records['validate'])} validate, {len(records['test'])} test "
          f"slices, loaded in {data_s:.1f} s; examples in {work / f'{stem}-train_slices.png'}", flush=True)

    references = blur_references(test)
    rows = []
    for budget in minutes:
        for name in candidates:
            rows.append(run_candidate(name, budget, dataset, reader, setting, work, stem, args.max_epochs,
                                      epoch_steps, args.threads, len(records["train"])))
            print({k: v for k, v in rows[-1].items() if k != "settings"}, flush=True)
        if not args.no_baseline and (args.baseline_minutes is None or budget in args.baseline_minutes):
            rows.append(run_baseline(budget, train, test, setting, work, stem, args.seed))
            print({k: v for k, v in rows[-1].items() if k != "settings"}, flush=True)

    result = {
        "dataset_name": dataset_name, "dataset": dataset, "quick": args.quick, "minutes": minutes,
        "candidates": candidates, "baseline": not args.no_baseline,
        "baseline_minutes": args.baseline_minutes, "epoch_length": epoch_length,
        "image_size": setting.image_size, "threads": args.threads, "command": command(__file__, argv),
        "machine": machine_summary(machine_record), "machine_info": machine_record,
        "data": {"layout": report.layout, "reader": reader or "train.yaml's",
                 "slices": {split: len(items) for split, items in records.items()},
                 "subjects": {split: len({r["subject"] for r in items}) for split, items in records.items()}},
        "rows": rows, "blur_references": references,
        "phases_s": {"baseline_data": round(data_s, 1), "total": round(time.perf_counter() - started, 1)},
    }
    for row in rows:
        for key in ("ssim", "ssim_std", "psnr"):
            row[key] = round(row[key], 4) if math.isfinite(row[key]) else row[key]
        row["epochs"] = round(row["epochs"], 2)
    text = markdown(result)
    print(text)
    write_result(args.out_dir, stem, text, result, result["command"])
    if temporary:
        temporary.cleanup()


if __name__ == "__main__":
    main()

"""Which representation and prior make samples brains? Candidates trained at equal wall time, side by side.

Each candidate is the demo pipeline (``pipelines/demo.yaml``, so the real bundle configs) with its own
``--set`` overrides and its own runs folder, given the same minutes for the VQ-VAE and for the prior. The
table has, per candidate: test SSIM/PSNR of the VQ-VAE, the prior's held-out NLL in bits per code and per slice
(comparable across grids and codebooks), the plausibility figures of the samples beside their real-vs-real
floors (``oasis_gen.generation.plausibility``), and the sampling time.

Usage::

    .venv/bin/python benchmarks/generation_defaults.py                      # demo cohort, the demo's budget
    .venv/bin/python benchmarks/generation_defaults.py --vqvae-minutes 10 --prior-minutes 20 --name gen_30min
    .venv/bin/python benchmarks/generation_defaults.py --dataset ixi       # real T1 volumes in ../shared (IXI)
    .venv/bin/python benchmarks/generation_defaults.py --candidates two_level,single_level

``--quick`` trains tiny models for seconds on a tiny demo cohort (what the test suite runs so this cannot rot).
Writes ``<out-dir>/<name>.md`` and ``.json`` (atomically; ``--name`` defaults to
``generation_<dataset>_<vqvae minutes>+<prior minutes>min``, e.g. ``generation_demo_3+3min``) and prints the table;
the candidates' runs go under ``--runs-dir``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from kit import (
    DEMO_DIR,
    IXI_DIR,
    IXI_READER,
    ROOT,
    command,
    machine_info,
    machine_summary,
    result_options,
    write_result,
)

from oasis_gen.bundle.configs import bundle_command, config_path
from oasis_gen.utils.files import write_text

# candidate -> pipeline --set overrides (stage.key=value); the demo pipeline's defaults are the base
BATCH32 = ["prior.batch_size=32", "prior_top.batch_size=32"]  # both priors' batch before issue 22
EMA = ["prior.ema_momentum=0.01", "prior_top.ema_momentum=0.01"]  # weight averaging as it was measured
CANDIDATES: dict[str, list[str]] = {
    # the demo default: an 8x8 top grid (K=64) above the 32x32 bottom grid (K=256), LeakyReLU in the top encoder
    "two_level": [],
    # issue 22's levers, each spelt out in full so that a row keeps meaning what it measured when defaults move:
    # the priors before them (batch 32, the bottom prior reading the top grid locally, no weight averaging)
    "priors_before": ["prior.cond_layers=0", "prior.batch_size=32", "prior_top.batch_size=32"],
    # one lever at a time against priors_before
    "cond_stack": ["prior.batch_size=32", "prior_top.batch_size=32"],
    "ema": ["prior.cond_layers=0", *BATCH32, *EMA],
    "two_level_ema": [*BATCH32, *EMA],  # the conditioning stack and weight averaging
    # the bottom prior's batch (and so its steps in the same minutes), with the stack and weight averaging
    "bottom_batch8": ["prior.batch_size=8", "prior_top.batch_size=32", *EMA],
    "bottom_batch8_before": ["prior.batch_size=8", "prior_top.batch_size=32", "prior.cond_layers=0"],
    "batch8_both": ["prior.batch_size=8", "prior_top.batch_size=8", *EMA],
    "bottom_batch4": ["prior.batch_size=4", "prior_top.batch_size=32", *EMA],
    "bottom_batch4_noema": ["prior.batch_size=4", "prior_top.batch_size=32"],
    "bottom_batch4_lr2e-3": ["prior.batch_size=4", "prior_top.batch_size=32", "prior.learning_rate=0.002", *EMA],
    # budget shares: the top prior 0.6 of the 3 prior minutes, the bottom prior 2.4
    "bottom_batch4_top0.2": ["prior.batch_size=4", "prior_top.batch_size=32", "top_prior_minutes=0.6",
                             "prior_minutes=2.4", *EMA],
    "bottom_batch2": ["prior.batch_size=2", "prior_top.batch_size=32", *EMA],
    "bottom_batch1": ["prior.batch_size=1"],
    "bottom_lr2e-3": ["prior.learning_rate=0.002"],
    "slice_position": ["prior.num_classes=8", "prior_top.num_classes=8"],
    "two_level_bottom64x8": ["prior.channels=64", "prior.num_layers=8"],  # a larger bottom prior, fewer steps
    # a quarter of the training images decoded from the top codes alone
    "top_only25": ["vqvae.top_only_rate=0.25"],
    # the two-level model before LeakyReLU in the top level (its top codes collapsed to a map of position)
    "former_two_level": ["vqvae.top_negative_slope=0"],
    # the former default: one 32x32 grid of K=256 codes, one prior given all the prior minutes
    "single_level": ["vqvae.top_downsamplings=0", "vqvae.top_num_embeddings=null", "prior.top_prior_ckpt=null",
                     "prior.channels=64", "prior.num_layers=12"],
}
SINGLE_LEVEL = {"single_level"}  # candidates without a top prior stage
# sampling variant -> sample.yaml overrides (truncation per level), run on each candidate's trained priors
SAMPLING: dict[str, list[str]] = {
    "topk8": ["top_k#bottom=8"],
    "topk3": ["top_k#bottom=3"],
    "topp0.9": ["top_p#bottom=0.9"],
    "topp0.8": ["top_p#bottom=0.8"],
    "topp0.9both": ["top_p#bottom=0.9", "top_p#top=0.9"],
    "T0.9": ["temperature=0.9"],
}
# the IXI volumes' reader settings (kit.IXI_READER) as the stages' overrides
IXI_SETTINGS = [f"{key}={value}" for key, value in IXI_READER.items()]
DATA_STAGES = ("vqvae", "evaluation", "codes", "prior_top", "prior", "sampling")
QUICK = ["data.subjects=9", "data.size=32", "data.slices_per_subject=4",
         "vqvae.image_size=32", "vqvae.channels=[8,16]", "vqvae.num_embeddings=16", "vqvae.embedding_dim=8",
         "vqvae.top_num_embeddings=8", "evaluation.image_size=32", "prior.channels=8", "prior.num_layers=2",
         "prior_top.channels=8", "prior_top.num_layers=2", "sampling.plausibility_epochs=2",
         # no MLflow models: logging one costs seconds, and the suite tests it elsewhere
         "vqvae.mlflow_model=false", "prior_top.mlflow_model=false", "prior.mlflow_model=false"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="demo", choices=("demo", "ixi"))
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated names")
    parser.add_argument("--vqvae-minutes", type=float, default=3.0)
    parser.add_argument("--prior-minutes", type=float, default=3.0,
                        help="for both priors together: a third to the top prior, the rest to the bottom one")
    parser.add_argument("--num-samples", type=int, default=128)
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "bench_generation")
    result_options(parser, None, "generation_<dataset>_<vqvae minutes>+<prior minutes>min")
    parser.add_argument("--quick", action="store_true", help="tiny images and models, seconds (for the tests)")
    parser.add_argument("--vqvae-from", type=Path, default=None,
                        help="a candidate's runs folder of an earlier run: its VQ-VAE, evaluation and codes are "
                             "copied and reused, so candidates differ in their priors and sampling alone")
    parser.add_argument("--share-vqvae", action="store_true",
                        help="the first candidate trains the VQ-VAE, the others reuse it (as --vqvae-from)")
    parser.add_argument("--sample-only", action="store_true",
                        help="train nothing: run the sampling variants on the candidates' priors of an earlier run "
                             "(same --runs-dir, dataset and minutes)")
    parser.add_argument("--top-share", type=float, default=1 / 3, help="the top prior's share of the prior minutes")
    parser.add_argument("--sampling", default="",
                        help="sampling variants run on every candidate's priors, beside its default sampling: "
                             "comma-separated names of " + ", ".join(SAMPLING)),
    return parser.parse_args(argv)


def pipeline_command(args: argparse.Namespace, candidate: str, runs_dir: Path) -> list[str]:
    """The ``oasis-gen pipeline run`` command line that trains and samples one candidate."""
    single = candidate in SINGLE_LEVEL
    top_minutes = 0.0 if single else args.prior_minutes * args.top_share
    settings = [f"runs_dir={runs_dir}", f"tracking_uri={runs_dir.parent / 'mlruns'}",
                f"vqvae_minutes={args.vqvae_minutes}", f"top_prior_minutes={top_minutes:g}",
                f"prior_minutes={args.prior_minutes - top_minutes:g}", "vqvae_epochs=1000", "prior_epochs=1000",
                "top_prior_epochs=1000", f"num_samples={args.num_samples}"]
    if args.dataset == "ixi":
        settings += [f"data_dir={IXI_DIR}"]
        settings += [f"{stage}.{item}" for stage in DATA_STAGES for item in IXI_SETTINGS]
    else:
        settings += [f"data_dir={args.runs_dir / 'data_quick' if args.quick else DEMO_DIR}"]
    if args.quick:
        scan = args.runs_dir / "data_quick" / "keras_png_slices_test" / "case_005_slice_1.nii.png"  # a test slice
        quick = [item for item in QUICK if not (single and item.startswith("prior_top."))]
        settings += quick + ["vqvae_epochs=1", "prior_epochs=1", "top_prior_epochs=1", f"completion_scan={scan}"]
    settings += CANDIDATES[candidate]
    stages = ("data",) * (args.dataset == "demo") + tuple(s for s in DATA_STAGES if not (single and s == "prior_top"))
    if args.vqvae_from is not None:  # the VQ-VAE, its evaluation and the codes are copied in
        stages = tuple(s for s in stages if s not in ("data", "vqvae", "evaluation", "codes"))
    if args.quick and not single:
        stages += ("inference",)  # the quick mode runs the whole demo pipeline, so that the suite does
    own_data = args.dataset != "demo"
    demo = ROOT / "pipelines" / "demo.yaml"
    pipeline = candidate_pipeline(runs_dir, single, own_data) if single or own_data else demo
    command = [sys.executable, "-m", "oasis_gen", "pipeline", "run", str(pipeline), "--only", *stages]
    for item in settings:
        command += ["--set", item]
    return command


def candidate_pipeline(runs_dir: Path, single: bool, own_data: bool) -> Path:
    """
    The demo pipeline as a candidate runs it, written beside the candidate's runs: without its top prior stage for
    one-level candidates, without its data stage (and the stages' needs of it) and the completion of a demo slice
    for a dataset of one's own (IXI).
    """
    pipeline = yaml.safe_load((ROOT / "pipelines" / "demo.yaml").read_text())
    stages = pipeline["stages"]
    if single:
        del stages["prior_top"]
        stages["prior"]["needs"] = ["codes"]
    if own_data:
        del stages["data"]
        for stage in stages.values():
            stage["needs"] = [need for need in stage.get("needs", []) if need != "data"]
        # the completion scan is a demo slice: a dataset of one's own (volumes) completes none
        sampling = stages["sampling"]
        for key in ("complete_scan", "region"):
            sampling["overrides"].pop(key, None)
        sampling["outputs"] = [path for path in sampling["outputs"] if "completion" not in path]
    path = runs_dir / "pipeline.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, yaml.safe_dump(pipeline, sort_keys=False))
    return path


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file the pipeline wrote, or an empty dict when the stage did not write it."""
    return json.loads(path.read_text()) if path.is_file() else {}


def run_candidate(args: argparse.Namespace, candidate: str) -> dict[str, Any]:
    """Train, evaluate and sample one candidate through the pipeline; collect its figures."""
    runs_dir = args.runs_dir / f"{args.dataset}_{args.vqvae_minutes:g}+{args.prior_minutes:g}" / candidate
    if args.sample_only:
        evaluation = read_json(runs_dir / "vqvae" / "evaluation" / "summary.json")
        return [run_sampling_variant(args, candidate, variant, runs_dir, evaluation)
                for variant in args.sampling.split(",") if variant]
    shutil.rmtree(runs_dir, ignore_errors=True)  # the pipeline would skip stages an earlier run finished
    if args.vqvae_from is not None:
        shutil.copytree(args.vqvae_from / "vqvae", runs_dir / "vqvae")
        shutil.copytree(args.vqvae_from / "prior" / "codes", runs_dir / "prior" / "codes")
        for stage in ("data", "vqvae", "evaluation", "codes"):  # the pipeline's records that these stages finished
            record = args.vqvae_from / "pipeline" / f"{stage}.json"
            if record.is_file():
                (runs_dir / "pipeline").mkdir(parents=True, exist_ok=True)
                shutil.copy2(record, runs_dir / "pipeline" / record.name)
    command = pipeline_command(args, candidate, runs_dir)
    print(f"[{candidate}] {' '.join(command[2:])}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"[{candidate}] the pipeline failed (exit {done.returncode}); logs in {runs_dir}/logs")
    evaluation = read_json(runs_dir / "vqvae" / "evaluation" / "summary.json")
    sampling = read_json(runs_dir / "samples" / "summary.json")
    rows = [{"candidate": candidate, "overrides": CANDIDATES[candidate], "runs_dir": str(runs_dir),
             "pipeline_seconds": seconds, "evaluation": evaluation, "sampling": sampling}]
    for variant in [name for name in args.sampling.split(",") if name]:
        rows.append(run_sampling_variant(args, candidate, variant, runs_dir, evaluation))
    return rows


def run_sampling_variant(args: argparse.Namespace, candidate: str, variant: str, runs_dir: Path,
                         evaluation: dict[str, Any]) -> dict[str, Any]:
    """Sample a candidate's trained priors once more with a sampling variant (sample.yaml, as the pipeline does)."""
    out = runs_dir / f"samples_{variant}"
    data_dir = IXI_DIR if args.dataset == "ixi" else (args.runs_dir / "data_quick" if args.quick else DEMO_DIR)
    command = bundle_command("sampling", [config_path("sample.yaml")], [
        "--prior_ckpt", str(runs_dir / "prior" / "checkpoints" / "model.pt"), "--output_dir", str(out),
        "--num_samples", str(args.num_samples), "--dataset_dir", str(data_dir),
        "--tracking_uri", str(runs_dir.parent / "mlruns"), "--progress", "false"])
    if args.quick:
        command += ["--plausibility_epochs", "2"]
    for item in (IXI_SETTINGS if args.dataset == "ixi" else []) + SAMPLING[variant]:
        key, value = item.split("=", 1)
        command += [f"--{key}", value]
    print(f"[{candidate}+{variant}] {' '.join(command[2:])}", flush=True)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"[{candidate}+{variant}] sampling failed (exit {done.returncode})")
    return {"candidate": f"{candidate} + {variant}", "overrides": CANDIDATES[candidate] + SAMPLING[variant],
            "runs_dir": str(out), "pipeline_seconds": None, "evaluation": evaluation,
            "sampling": read_json(out / "summary.json")}


def _figure(values: dict[str, Any], key: str, digits: int = 3) -> str:
    value = values.get(key)
    return "-" if value is None else f"{value:.{digits}f}"


def _plausibility(metrics: dict[str, Any], key: str, digits: int) -> str:
    """``samples / reconstructions (floor)`` of one plausibility figure."""
    return (f"{_figure(metrics, key, digits)} / {_figure(metrics, key + '_reconstruction', digits)} "
            f"({_figure(metrics, key + '_floor', digits)})")


def markdown(result: dict[str, Any]) -> str:
    """The comparison table: reconstruction, likelihood, plausibility beside its floors, diversity, texture, time."""
    rows = result["candidates"]
    shared = (f" The VQ-VAE, its evaluation and codes are shared, copied from `{result['vqvae_from']}`."
              if result.get("vqvae_from") else "")
    lines = [
        f"# Generation at equal wall time ({result['dataset']})",
        "",
        f"Each candidate: VQ-VAE {result['vqvae_minutes']:g} min, priors {result['prior_minutes']:g} min "
        f"(top prior {result.get('top_share', 1 / 3):.2f} of them), through `pipelines/demo.yaml` (the bundle "
        f"configs); {result['num_samples']} samples.{shared} {machine_summary(result['machine'])}",
        "",
        "Command: `" + result["command"] + "`",
        "",
        "Cells: samples / the VQ-VAE's reconstructions of the floor slices (a perfect prior's figure) (real-vs-real "
        "floor). C2ST prior: samples against reconstructions of the test slices (floor: reconstructions of the "
        "validate slices against them). Diversity: 1 - mean pairwise MS-SSIM (real test slices in brackets). "
        "Texture: mean log10 distance of radial power spectra to the test slices. Copies: share of samples "
        "nearer to a training slice than the copy threshold (floor).",
        "",
        "| candidate | test SSIM | bits/code | C2ST prior (floor) | C2ST vs real | mirror IoU | one region | "
        "intensity | diversity (real) | texture | copies | sampling s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        sa = row["sampling"].get("metrics", {})
        ev = {key: value["mean"] for key, value in row["evaluation"].items() if isinstance(value, dict)}
        lines.append(
            f"| {row['candidate']} | {_figure(ev, 'ssim', 3)} | {_figure(sa, 'nll_bits_per_code')} "
            f"| {_figure(sa, 'c2st_prior_accuracy')} ({_figure(sa, 'c2st_prior_accuracy_floor')}) "
            f"| {_plausibility(sa, 'c2st_accuracy', 3)} | {_plausibility(sa, 'mirror_iou', 3)} "
            f"| {_plausibility(sa, 'one_region_share', 2)} | {_plausibility(sa, 'intensity_distance', 3)} "
            f"| {_figure(sa, 'diversity')} / {_figure(sa, 'diversity_reconstruction')} "
            f"({_figure(sa, 'diversity_reference')}) | {_plausibility(sa, 'texture_distance', 3)} "
            f"| {_figure(sa, 'nn_copy_share', 2)} ({_figure(sa, 'nn_copy_share_floor', 2)}) "
            f"| {_figure(sa, 'sampling_seconds', 1)} |")
    lines += ["", "Overrides: " + "; ".join(f"`{r['candidate']}`: {' '.join(r['overrides']) or '(defaults)'}"
                                           for r in rows), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [name.strip() for name in args.candidates.split(",") if name.strip()]
    unknown = [name for name in names if name not in CANDIDATES]
    unknown += [name for name in args.sampling.split(",") if name and name not in SAMPLING]
    if unknown:
        print(f"generation_defaults: unknown candidates or sampling variants {unknown}; known: {sorted(CANDIDATES)}, "
              f"{sorted(SAMPLING)}", file=sys.stderr)
        return 2
    if args.dataset == "ixi" and not IXI_DIR.is_dir():
        print(f"generation_defaults: {IXI_DIR} not found (the IXI volumes live beside the checkout)", file=sys.stderr)
        return 2
    name = args.name or f"generation_{args.dataset}_{args.vqvae_minutes:g}+{args.prior_minutes:g}min"
    result = {"dataset": args.dataset, "vqvae_minutes": args.vqvae_minutes, "prior_minutes": args.prior_minutes,
              "top_share": args.top_share,
              "num_samples": args.num_samples, "machine": machine_info(),
              "command": command(__file__, argv),
              "vqvae_from": None if args.vqvae_from is None else str(args.vqvae_from),
              "candidates": []}
    for candidate in names:
        rows = run_candidate(args, candidate)
        result["candidates"] += rows
        if args.share_vqvae and args.vqvae_from is None:
            args.vqvae_from = Path(rows[0]["runs_dir"])
            result["vqvae_from"] = f"{args.vqvae_from} (trained by the first candidate)"
    text = markdown(result)
    print(text)
    write_result(args.out_dir, name, text, result, result["command"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

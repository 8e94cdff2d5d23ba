"""The speed benchmark in one command: compute rate, training throughput, pipeline overhead, inference, sampling
and cache memory, written as a Markdown table with the machine it ran on.

    .venv/bin/python benchmarks/speed.py [--quick] [--out-dir benchmarks/results]

Measures, with the bundle's defaults read from ``bundle/configs/*.yaml`` (each part a module of ``speed_parts/``):

1. this machine's matmul GFLOP/s (float32, best of a few; on CUDA also float16 and bfloat16);
2. VQ-VAE training throughput (images/s, achieved GFLOP/s and its fraction of the matmul rate) at the default
   image size and at 256 px;
3. the overhead of the real pipeline (train.yaml in process, every handler, a real MLflow store) over the bare
   model loop, per iteration inside epochs, with each handler's cost; startup and per-epoch work apart;
4. inference of one 256x256x176 volume through inference.yaml (untrained checkpoints made for the purpose);
5. prior sampling, naive vs incremental, with train_prior.yaml's default prior;
6. peak memory of the OASIS-sized cached train split (9,664 slices of 256x256), in a fresh process.

``--quick`` shrinks every size so the whole run takes well under a minute (the smoke test runs it). Writes
``<out-dir>/speed.md`` and ``<out-dir>/speed.json`` (atomically; ``--name`` for another name) and prints the table.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from kit import (
    WORK,
    bundle_default,
    command,
    config_prior,
    config_vqvae,
    machine_info,
    machine_summary,
    result_options,
    write_result,
)
from speed_parts.cache import OASIS_SLICE_SIZE, OASIS_TRAIN_SLICES, measure_cache, write_slices
from speed_parts.inference import inference_speed
from speed_parts.pipeline import pipeline_overhead, pipeline_variants
from speed_parts.sampling import time_samplers
from speed_parts.training import matmul_rates, vqvae_throughput

from oasis_gen.utils.threads import sampling_threads

OASIS_SLICES_DIR = WORK / "oasis_sized"  # 9,664 PNGs, written once and reused
OVERHEAD_GOAL = 0.05
@dataclass(frozen=True)
class Plan:
    """The sizes of one benchmark run (None: the bundle's default)."""

    matmul_size: int
    matmul_repeats: int
    train_image_sizes: tuple[int | None, int]
    train_iterations: int
    pipeline_image_size: int | None
    pipeline_iterations_per_epoch: int
    pipeline_epochs: int
    pipeline_validate_slices: int
    source_slice_size: int
    sampling_image_size: int | None
    sampling_samples: int | None
    naive_positions: int
    sampling_repeats: int
    volume_shape: tuple[int, int, int]
    inference_image_size: int | None
    cache_slices: int
    cache_size: int


FULL = Plan(matmul_size=2048, matmul_repeats=5, train_image_sizes=(None, 256), train_iterations=10,
            pipeline_image_size=None, pipeline_iterations_per_epoch=25, pipeline_epochs=2,
            pipeline_validate_slices=32, source_slice_size=OASIS_SLICE_SIZE, sampling_image_size=None,
            sampling_samples=None, naive_positions=8, sampling_repeats=2, volume_shape=(256, 256, 176),
            inference_image_size=None, cache_slices=OASIS_TRAIN_SLICES, cache_size=OASIS_SLICE_SIZE)
QUICK = Plan(matmul_size=512, matmul_repeats=3, train_image_sizes=(32, 64), train_iterations=2,
             pipeline_image_size=32, pipeline_iterations_per_epoch=3, pipeline_epochs=2, pipeline_validate_slices=4,
             source_slice_size=40, sampling_image_size=32, sampling_samples=2, naive_positions=4, sampling_repeats=1,
             volume_shape=(40, 40, 8), inference_image_size=32, cache_slices=32, cache_size=32)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the whole run in well under a minute")
    result_options(parser, "speed")
    return parser.parse_args(argv)


def size_override(image_size: int | None) -> dict[str, int]:
    """The image_size override of a plan entry (none for the bundle's default)."""
    return {} if image_size is None else {"image_size": image_size}


def log(message: str) -> None:
    print(f"[speed] {message}", flush=True)


def measure_training(plan: Plan, device: torch.device) -> dict[str, Any]:
    """Parts 1 and 2: the matmul rates, and the VQ-VAE's training throughput at each planned image size."""
    matmul_size = plan.matmul_size * (4 if device.type == "cuda" else 1)
    rates = matmul_rates(matmul_size, device, plan.matmul_repeats)
    log("matmul: " + ", ".join(f"{r['dtype']} {r['gflops']:.1f} GFLOP/s" for r in rates))
    by_dtype = {r["dtype"]: r["gflops"] for r in rates}
    throughput = []
    for image_size in plan.train_image_sizes:
        row = vqvae_throughput(plan.train_iterations, **size_override(image_size))
        row["fraction_of_matmul"] = row["gflops"] / by_dtype.get(row["dtype"], by_dtype["float32"])
        throughput.append(row)
        log(f"VQ-VAE training at {row['image_size']} px: {row['images_per_s']:.1f} images/s, "
            f"{row['gflops']:.1f} GFLOP/s ({row['fraction_of_matmul']:.0%} of matmul)")
    return {"matmul": rates, "training": throughput}


def measure_pipeline(plan: Plan, work: Path) -> dict[str, Any]:
    """Part 3: the bundle's training run against the bare loop, on synthetic OASIS-layout slices."""
    batch_size = int(bundle_default("train.yaml", "batch_size"))
    data = work / "slices"
    write_slices(data, batch_size * plan.pipeline_iterations_per_epoch, plan.source_slice_size, "train")
    write_slices(data, plan.pipeline_validate_slices, plan.source_slice_size, "validate")
    result = pipeline_overhead(work / "pipeline", data, work / "mlruns", variants=pipeline_variants(),
                               max_epochs=plan.pipeline_epochs, **size_override(plan.pipeline_image_size))
    log(f"pipeline: {1000 * result['bundle_iteration_median']:.1f} ms per iteration vs bare loop "
        f"{1000 * result['bare_iteration_median']:.1f} ms: overhead {result['overhead_share']:.1%}")
    return result


def measure_sampling(plan: Plan, device: torch.device) -> dict[str, Any]:
    """Part 5: naive vs incremental sampling with train_prior.yaml's default prior, threads as the pipeline sets."""
    _, vqvae_spec = config_vqvae(**size_override(plan.sampling_image_size))
    prior, prior_spec = config_prior(vqvae_spec)
    prior = prior.to(device).eval()
    samples = plan.sampling_samples or int(bundle_default("sample.yaml", "num_samples"))
    grid = (int(prior_spec["grid_size"]),) * 2
    cond = None  # two levels: the bottom prior (the one that costs) is timed under random top grids
    if prior_spec.get("cond_num_embeddings"):
        side = grid[0] // int(prior_spec["cond_factor"])
        cond = torch.randint(0, int(prior_spec["cond_num_embeddings"]), (samples, side, side), device=device,
                             generator=torch.Generator(device=device).manual_seed(0))
    with sampling_threads(device):
        timings = time_samplers(prior, samples, grid, plan.naive_positions, plan.sampling_repeats, log=False,
                                cond=cond)
    architecture = {k: prior_spec[k] for k in ("num_embeddings", "grid_size", "channels", "num_layers", "kernel_size")}
    result = {"samples": samples, "grid": list(grid), "prior": architecture,
              "parameters": sum(p.numel() for p in prior.parameters()), **timings}
    log(f"sampling {samples} grids of {grid[0]}x{grid[1]}: incremental {timings['incremental']['seconds_median']:.2f}"
        f" s, naive {timings['naive']['seconds_full_grid']:.1f} s ({timings['speedup']:.0f}x)")
    return result


def measure_cache_memory(plan: Plan, work: Path, quick: bool) -> dict[str, Any]:
    """Part 6: the cached train split (OASIS-sized in a full run) built in a fresh process."""
    root = work / "cache_slices" if quick else OASIS_SLICES_DIR
    write_slices(root, plan.cache_slices, plan.cache_size, "train")
    result = measure_cache(root, plan.cache_size, str(bundle_default("train.yaml", "cache_dtype")))
    log(f"cache of {result['slices']} slices: {size_text(result['cache_bytes'])} of tensors, peak RSS "
        f"{size_text(result['peak_rss_bytes'])}")
    return result


def run(plan: Plan, quick: bool, command: str) -> dict[str, Any]:
    """Every measurement of the plan, in order, in a scratch folder that is removed afterwards."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result: dict[str, Any] = {"command": command, "machine": machine_info(device), "quick": quick,
                              "plan": asdict(plan)}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="oasis-speed-") as scratch:
        work = Path(scratch)
        result.update(measure_training(plan, device))
        result["pipeline"] = measure_pipeline(plan, work)
        result["inference"] = inference_speed(work / "inference", work / "mlruns", plan.volume_shape,
                                              **size_override(plan.inference_image_size))
        log(f"inference: {inference_line(result['inference'])}")
        result["sampling"] = measure_sampling(plan, device)
        result["cache_memory"] = measure_cache_memory(plan, work, quick)
    result["total_seconds"] = time.perf_counter() - started
    result["rows"] = table_rows(result)
    return result


def inference_line(inference: dict[str, Any]) -> str:
    if inference["status"] != "measured":
        return inference["status"]
    plain, prior = inference["without_prior"], inference["with_prior"]
    return (f"{plain['seconds_per_volume']:.1f} s per volume ({plain['slices_per_s']:.1f} slices/s); with a prior "
            f"{prior['seconds_per_volume']:.1f} s ({prior['slices_per_s']:.1f} slices/s)")


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f} ms"


def size_text(nbytes: float) -> str:
    """Bytes in GiB, MiB or KiB, whichever reads best."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes / 2**10:.1f} KiB"


def describe_overrides(overrides: dict[str, Any]) -> str:
    """Overrides as command-line options, the loss readers' output_transform counted rather than spelled out."""
    readers = [key for key in overrides if key.endswith("#output_transform")]
    text = [f"--{key} {value}" for key, value in overrides.items() if key not in readers]
    if readers:
        text.append(f"{len(readers)} loss readers' output_transform: `{overrides[readers[0]]}`")
    return ", ".join(text)


def table_rows(result: dict[str, Any]) -> list[dict[str, str]]:
    """The summary table: one row per measurement, each with an id, a setting, a result and a note."""
    rows = []

    def add(row_id: str, measurement: str, setting: str, value: str, note: str = "") -> None:
        rows.append({"id": row_id, "measurement": measurement, "setting": setting, "result": value, "note": note})

    for rate in result["matmul"]:
        add(f"matmul_{rate['dtype']}", f"matmul, {rate['dtype']}",
            f"{rate['size']}x{rate['size']}, best of {rate['repeats']}, {rate['torch_threads']} torch threads, "
            f"{rate['device']}", f"{rate['gflops']:.1f} GFLOP/s")
    for index, row in enumerate(result["training"]):
        add(f"train_{'default' if index == 0 else 'large'}", f"VQ-VAE training, {row['image_size']} px",
            f"train.yaml network ({row['parameters']:,} parameters), batch {row['batch_size']}, {row['dtype']}, "
            f"{row['device']}",
            f"{row['images_per_s']:.1f} images/s; {row['gflops']:.1f} GFLOP/s = {row['fraction_of_matmul']:.0%} of "
            "matmul",
            f"{row['flops_per_step'] / 1e9:.2f} GFLOP per step (FlopCounterMode, forward + backward); median of "
            f"{row['iterations']} steps on random images")
    pipe = result["pipeline"]
    bundle = pipe["bundle"]
    largest = list(pipe["parts_per_iteration"].items())[:3]
    add("pipeline_overhead", "pipeline overhead per iteration",
        f"train.yaml in process (all handlers, MLflow on SQLite, defaults), {bundle['image_size']} px, batch "
        f"{bundle['batch_size']}, {len(bundle['iteration_seconds'])} timed iterations vs the bare loop",
        f"{pipe['overhead_share']:.1%} (bundle {ms(pipe['bundle_iteration_median'])} vs bare "
        f"{ms(pipe['bare_iteration_median'])} per iteration)",
        f"goal < {OVERHEAD_GOAL:.0%}: {'met' if pipe['overhead_share'] < OVERHEAD_GOAL else 'NOT met'}; measured "
        f"parts sum to {pipe['parts_share']:.1%}; largest: "
        + "; ".join(f"{name} {ms(seconds)}" for name, seconds in largest))
    for index, (name, variant) in enumerate(pipe["variants"].items()):
        add(f"pipeline_variant{index}", f"pipeline overhead with {name}",
            describe_overrides(variant["overrides"]) + "; otherwise as above",
            f"{variant['overhead_share']:.1%} (bundle {ms(variant['bundle_iteration_median'])} per iteration)",
            f"measured parts sum to {variant['parts_share']:.1%}")
    times = bundle["times"]
    startup = pipe["import_seconds"] + sum(times[k] for k in ("parse_and_initialize", "data_check", "cache_train",
                                                               "cache_validate", "build_engines"))
    later_builds = [variant["bundle"]["times"]["build_engines"] for variant in pipe["variants"].values()]
    existing_store = f" ({min(later_builds):.1f} s with an existing MLflow store)" if later_builds else ""
    add("pipeline_startup", "pipeline one-off startup",
        f"{bundle['train_slices']} train + {bundle['validate_slices']} validation slices",
        f"{startup:.1f} s",
        f"imports {pipe['import_seconds']:.1f} s (fresh interpreter), data check {times['data_check']:.1f} s, caching "
        f"{times['cache_train'] + times['cache_validate']:.1f} s, engines and handlers with a new MLflow store "
        f"{times['build_engines']:.1f} s{existing_store},"
        f" run start (MLflow run, params) {sum(v for k, v in bundle['run_handlers'].items() if 'STARTED' in k):.1f} s")
    add("pipeline_epoch", "pipeline per-epoch work",
        f"validation of {bundle['validate_slices']} slices, checkpoints, epoch logs",
        f"{pipe['epoch_end_median']:.2f} s per epoch",
        f"{bundle['iterations'] // max(bundle['epochs'], 1)} iterations per epoch here")
    inference = result["inference"]
    if inference["status"] == "measured":
        for key, label in (("without_prior", "VQ-VAE only"), ("with_prior", "VQ-VAE and prior (atypicality)")):
            run = inference[key]
            add(f"inference_{key}", f"inference, {label}",
                f"one {'x'.join(map(str, inference['volume_shape']))} NIfTI volume, {run['slices']} slices at "
                f"{run['image_size']} px, inference.yaml in process",
                f"{run['seconds_per_volume']:.1f} s per volume; {run['slices_per_s']:.1f} slices/s",
                f"untrained weights (speed only); model loading {run['times']['models']:.1f} s and summary + MLflow "
                f"{run['times']['summary_and_mlflow']:.1f} s apart")
    else:
        for key, label in (("without_prior", "VQ-VAE only"), ("with_prior", "VQ-VAE and prior (atypicality)")):
            add(f"inference_{key}", f"inference, {label}", "one 256x256x176 volume through inference.yaml", "pending",
                inference["status"])
    sampling = result["sampling"]
    grid = "x".join(map(str, sampling["grid"]))
    setting = (f"{sampling['samples']} samples, {grid} grid, K={sampling['prior']['num_embeddings']}, prior "
               f"{sampling['prior']['channels']} channels x {sampling['prior']['num_layers']} layers, "
               f"{sampling['torch_threads']} torch thread(s), {sampling['device']}")
    incremental = sampling["incremental"]
    add("sampling_incremental", "prior sampling, incremental", setting, f"{incremental['seconds_median']:.2f} s",
        f"median of {len(incremental['seconds_runs'])} runs")
    naive = sampling["naive"]
    add("sampling_naive", "prior sampling, naive", setting, f"{naive['seconds_full_grid']:.1f} s",
        (f"extrapolated from {naive['positions_timed']} positions; " if naive["extrapolated"] else "")
        + f"incremental is {sampling['speedup']:.0f}x faster; same codes: "
        + ("yes" if sampling["same_codes_on_timed_positions"] else "NO"))
    cache = result["cache_memory"]
    add("cache_memory", "cached train split, memory",
        f"{cache['slices']:,} slices of {cache['size']}x{cache['size']}, {cache['cache_dtype']} cache, fresh process",
        f"{size_text(cache['cache_bytes'])} of tensors; peak RSS {size_text(cache['peak_rss_bytes'])}",
        f"RSS before caching {size_text(cache['rss_before_bytes'])}, after {size_text(cache['rss_after_bytes'])}; "
        f"caching took {cache['seconds']:.0f} s")
    return rows


def markdown(result: dict[str, Any]) -> str:
    """speed.md: the machine, the summary table and where the pipeline's time goes."""
    machine, pipe = result["machine"], result["pipeline"]
    lines = [
        "# Speed" + (" (--quick: tiny sizes, figures not representative)" if result["quick"] else ""),
        "",
        f"Command: `{result['command']}` ({result['total_seconds']:.0f} s).",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {machine['cpu_model']}, {machine['cpu_count']} cores ({machine['cpus_usable']} usable) |",
        f"| torch threads | {machine['torch_threads']} (inter-op {machine['torch_interop_threads']}) |",
        f"| torch / monai / mlflow / ignite | {machine['torch']} / {machine['monai']} / {machine['mlflow']} / "
        f"{machine['ignite']} |",
        f"| GPU | {machine['gpu'] + ' (CUDA ' + str(machine['cuda']) + ')' if machine['gpu'] else 'none'} |",
        f"| Python, platform | {machine['python']}, {machine['platform']} |",
        f"| load average at start | {machine['load_average_at_start']} |",
        f"| date | {machine['date']} |",
        "",
        "| measurement | setting | result | note |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['measurement']} | {r['setting']} | {r['result']} | {r['note']} |" for r in result["rows"]]
    median = pipe["bundle_iteration_median"]
    lines += [
        "",
        "## Pipeline: where an iteration's time goes",
        "",
        f"Per iteration inside epochs, train.yaml's defaults: bundle {ms(median)} (median; mean "
        f"{ms(pipe['bundle_iteration_mean'])}), bare loop {ms(pipe['bare_iteration_median'])} (median; mean "
        f"{ms(pipe['bare_iteration_mean'])}). Costs measured directly (ignite's HandlersTimeProfiler for handlers "
        "and data loading; wrapped calls for batch preparation and the quantizer's forward hooks), per iteration:",
        "",
        "| part | per iteration | share of the bundle's iteration |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {ms(seconds)} | {seconds / median:.1%} |" for name, seconds in
              pipe["parts_per_iteration"].items()]
    lines += [
        f"| **sum of the measured parts** | {ms(pipe['parts_share'] * median)} | {pipe['parts_share']:.1%} |",
        "",
        "Per-epoch handlers (seconds per epoch):",
        "",
        "| handler | per epoch |",
        "|---|---:|",
    ]
    epochs = max(pipe["bundle"]["epochs"], 1)
    lines += [f"| {name} | {seconds / epochs:.3f} s |" for name, seconds in
              sorted(pipe["bundle"]["epoch_handlers"].items(), key=lambda item: -item[1]) if seconds / epochs >= 1e-3]
    lines += ["", f"Machine: {machine_summary(machine)}", ""]
    return "\n".join(lines)


def check_finite(value: Any, where: str = "result") -> None:
    """Refuse to write results holding NaN or infinite numbers (a broken measurement)."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_finite(item, f"{where}[{index}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} is {value}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(QUICK if args.quick else FULL, args.quick, command(__file__, argv))
    check_finite(result)
    report = markdown(result)
    print()
    print(report)
    write_result(args.out_dir, args.name, report, result, result["command"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

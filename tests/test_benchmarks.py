"""The speed benchmark's pieces on tiny sizes: `benchmarks/speed.py --quick` runs, and its table has every row
with positive, finite numbers. No timed asserts: only what must hold on any machine."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest
import torch
from conftest import CONFIGS, ROOT
from ignite.engine import Engine

sys.path.insert(0, str(ROOT / "benchmarks"))

from speed import QUICK, markdown, table_rows  # noqa: E402
from speed_parts.pipeline import CallTimer, IterationClock  # noqa: E402
from speed_parts.training import TrainingStep, matmul_gflops, step_flops, vqvae_training  # noqa: E402

ROW_IDS = {
    "matmul_float32", "train_default", "train_large", "pipeline_overhead", "pipeline_variant0", "pipeline_variant1",
    "pipeline_startup", "pipeline_epoch", "inference_without_prior", "inference_with_prior", "sampling_incremental",
    "sampling_naive", "cache_memory",
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> dict:
    """One `speed.py --quick` run through its command line, as a user runs it."""
    out = tmp_path_factory.mktemp("speed")
    done = subprocess.run([sys.executable, "benchmarks/speed.py", "--quick", "--out-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"out": out, "stdout": done.stdout, "result": json.loads((out / "speed.json").read_text()),
            "markdown": (out / "speed.md").read_text()}


def numbers(value: object, where: str = "result"):
    """Every number in a nested result, with where it is."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from numbers(item, f"{where}[{index}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield where, value


@pytest.mark.slow
def test_quick_run_writes_a_table_with_every_row(quick_run):
    result, text = quick_run["result"], quick_run["markdown"]
    assert {row["id"] for row in result["rows"]} == ROW_IDS
    table = [line for line in text.splitlines() if line.startswith("| ") and line.count("|") == 5]
    for row in result["rows"]:
        assert f"| {row['measurement']} | {row['setting']} | {row['result']} |" in text, row["id"]
    assert len(table) >= len(result["rows"]) + 1  # the header too
    machine = result["machine"]
    assert machine["cpu_model"] and machine["cpu_count"] >= 1 and machine["torch_threads"] >= 1
    for needle in (machine["cpu_model"], machine["torch"], machine["monai"], machine["date"]):
        assert str(needle) in text
    assert "written:" in quick_run["stdout"]


@pytest.mark.slow
def test_quick_run_numbers_are_positive_and_finite(quick_run):
    result = quick_run["result"]
    for where, value in numbers({k: v for k, v in result.items() if k not in ("rows", "machine", "plan")}):
        assert math.isfinite(value), where
        # differences of timings (overhead shares) may be negative; everything else counts or measures something
        if "share" not in where:
            assert value >= 0, where
    assert result["matmul"][0]["gflops"] > 0
    for row in result["training"]:
        assert row["images_per_s"] > 0 and row["gflops"] > 0 and row["flops_per_step"] > 0
    pipeline = result["pipeline"]
    assert pipeline["bundle_iteration_median"] > 0 and pipeline["bare_iteration_median"] > 0
    assert all(seconds > 0 for seconds in pipeline["parts_per_iteration"].values())
    assert result["sampling"]["incremental"]["seconds_median"] > 0 and result["sampling"]["speedup"] > 0
    assert result["total_seconds"] > 0


@pytest.mark.slow
def test_quick_run_measures_what_it_says(quick_run):
    result = quick_run["result"]
    # the training step's FLOPs scale with the pixels: 64 px costs four times 32 px
    small, large = result["training"]
    assert (small["image_size"], large["image_size"]) == QUICK.train_image_sizes
    assert large["flops_per_step"] / small["flops_per_step"] == pytest.approx(4.0, rel=0.02)
    # every iteration but the first of each epoch is timed, in the bundle and in the bare loop alike
    bundle = result["pipeline"]["bundle"]
    per_epoch = QUICK.pipeline_iterations_per_epoch
    assert bundle["iterations"] == QUICK.pipeline_epochs * per_epoch
    assert len(bundle["iteration_seconds"]) == QUICK.pipeline_epochs * (per_epoch - 1)
    assert len(result["pipeline"]["bare_iteration_seconds"]) == len(bundle["iteration_seconds"])
    parts = result["pipeline"]["parts_per_iteration"]
    assert any("forward hook" in name for name in parts), list(parts)
    variants = result["pipeline"]["variants"]
    # the former default logs to MLflow every iteration, and the profile shows it
    every = variants["log_every 1 (former default)"]
    assert every["overrides"] == {"log_every": 1}
    assert any(name.startswith("MLFlowHandler.iteration_completed") for name in every["parts_per_iteration"])
    # the variant without decollation really runs without it, and its loss still reaches MLflow
    undecollated = variants["trainer without decollation"]
    assert undecollated["overrides"]["train#trainer#decollate"] is False
    assert not any("decollate" in name for name in undecollated["parts_per_iteration"])
    assert any("decollate" in name for name in parts)
    assert undecollated["bundle"]["iterations"] == bundle["iterations"]
    # both samplers drew the same codes; the uint8 cache holds one byte per pixel
    assert result["sampling"]["same_codes_on_timed_positions"] is True
    cache = result["cache_memory"]
    assert cache["slices"] == QUICK.cache_slices
    assert cache["cache_bytes"] == QUICK.cache_slices * QUICK.cache_size**2
    assert cache["peak_rss_bytes"] >= cache["rss_before_bytes"] > 0
    inference = result["inference"]
    if (CONFIGS / "inference.yaml").is_file():
        assert inference["status"] == "measured"
        for key in ("without_prior", "with_prior"):
            assert inference[key]["slices"] == QUICK.volume_shape[2] and inference[key]["scans_done"] == 1
            assert inference[key]["slices_per_s"] > 0


@pytest.mark.slow
def test_inference_rows_say_pending_until_inference_exists(quick_run):
    result = dict(quick_run["result"])
    result["inference"] = {"status": "pending: bundle/configs/inference.yaml not written yet"}
    result["rows"] = table_rows(result)
    rows = {row["id"]: row for row in result["rows"]}
    assert rows["inference_without_prior"]["result"] == "pending"
    assert "| pending |" in markdown(result)


def test_iteration_clock_leaves_out_the_first_iteration_of_each_epoch():
    engine = Engine(lambda engine, batch: time.sleep(0.001))
    clock = IterationClock()
    clock.attach(engine)
    engine.run([0, 1, 2, 3], max_epochs=3)
    assert len(clock.epochs) == 3
    assert len(clock.iteration_seconds()) == 3 * 3
    assert len(clock.first_iteration_seconds()) == 3 and len(clock.epoch_end_seconds()) == 3
    assert all(seconds > 0 for seconds in clock.iteration_seconds())


def test_call_timer_times_forward_hooks_and_calls():
    network = torch.nn.Sequential(torch.nn.Linear(3, 2))
    seen = []
    network[0].register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    timer = CallTimer()
    timer.wrap_forward_hooks(network)
    double = timer.wrap("double", lambda x: 2 * x)
    network(torch.zeros(4, 3))
    network(torch.zeros(1, 3))
    assert double(3) == 6
    assert seen == [(4, 2), (1, 2)]  # the wrapped hook still runs
    [hook_name] = [name for name in timer.calls if "forward hook" in name]
    assert timer.calls[hook_name] == 2 and timer.calls["double"] == 1
    assert timer.seconds[hook_name] > 0


def test_matmul_rate_and_step_flops_are_positive():
    rate = matmul_gflops(64, repeats=2)
    assert rate["gflops"] > 0 and math.isfinite(rate["gflops"]) and rate["dtype"] == "float32"
    training = vqvae_training(image_size=16, batch_size=2)
    assert training.batch_size == 2 and training.image_size == 16
    flops = step_flops(TrainingStep(training), torch.rand(2, 1, 16, 16))
    assert flops > 0

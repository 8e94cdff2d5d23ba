"""The generation-defaults benchmark's quick mode: the whole demo pipeline on tiny data through the real CLI, a table
with every figure beside its floor. Nothing timed, no quality thresholds: only that the pieces run and report."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_quick_run_trains_each_candidate_through_the_pipeline_and_writes_the_table(tmp_path):
    # two candidates sharing the first one's VQ-VAE, and a sampling variant on each one's trained priors
    done = subprocess.run([sys.executable, "benchmarks/generation_defaults.py", "--quick", "--runs-dir",
                           str(tmp_path / "runs"), "--out-dir", str(tmp_path / "out"), "--name", "quick",
                           "--candidates", "two_level,priors_before", "--share-vqvae", "--sampling", "topp0.9",
                           "--num-samples", "6", "--vqvae-minutes", "1", "--prior-minutes", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "quick.json").read_text())
    table = (tmp_path / "out" / "quick.md").read_text()
    assert [row["candidate"] for row in result["candidates"]] == [
        "two_level", "two_level + topp0.9", "priors_before", "priors_before + topp0.9"]
    for row in result["candidates"]:
        metrics = row["sampling"]["metrics"]
        for key in ("c2st_accuracy", "c2st_accuracy_floor", "c2st_accuracy_reconstruction", "c2st_prior_accuracy",
                    "c2st_prior_accuracy_floor", "diversity", "diversity_reference", "texture_distance",
                    "one_region_share", "one_region_share_floor", "nll_bits_per_code", "nll_bits_per_slice",
                    "sampling_seconds"):
            assert math.isfinite(metrics[key]), (row["candidate"], key)
        assert 0 < row["evaluation"]["ssim"]["mean"] <= 1
        assert f"| {row['candidate']} | {row['evaluation']['ssim']['mean']:.3f} |" in table
        c2st = (f"| {metrics['c2st_accuracy']:.3f} / {metrics['c2st_accuracy_reconstruction']:.3f} "
                f"({metrics['c2st_accuracy_floor']:.3f}) |")
        assert c2st in table
    variant = json.loads((tmp_path / "runs" / "demo_1+1" / "two_level" / "samples_topp0.9" / "summary.json")
                         .read_text())["settings"]
    assert variant["top_p"] == {"top": None, "bottom": 0.9}
    two = result["candidates"][0]["sampling"]["metrics"]
    assert two["nll_codes_per_slice"] == 8 * 8 + 2 * 2  # 32 px: an 8x8 bottom and a 2x2 top grid
    runs = tmp_path / "runs" / "demo_1+1"
    assert (runs / "two_level" / "inference" / "summary.csv").is_file()  # every stage ran
    # the second candidate trained no VQ-VAE of its own: it has the first one's, byte for byte
    shared = [(runs / name / "vqvae" / "checkpoints" / "model.pt").read_bytes() for name in ("two_level",
                                                                                            "priors_before")]
    assert shared[0] == shared[1] and "trained by the first candidate" in result["vqvae_from"]
    assert not (runs / "priors_before" / "logs" / "vqvae.log").exists()


def test_the_single_level_candidate_runs_the_demo_pipeline_without_its_top_prior(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from generation_defaults import candidate_pipeline

    from oasis_gen.commands.pipeline import load_pipeline

    pipeline = load_pipeline(candidate_pipeline(tmp_path, single=True, own_data=False), ["vqvae.top_downsamplings=0"])
    assert "prior_top" not in pipeline.stages and pipeline.stages["prior"].needs == ["codes"]
    assert list(pipeline.stages) == ["data", "vqvae", "evaluation", "codes", "prior", "sampling", "inference", "bundle"]


def test_a_dataset_of_ones_own_runs_the_demo_pipeline_without_its_data_stage(tmp_path):
    # IXI: the demo's data stage builds the demo cohort; the other stages read the dataset given (data_dir)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from generation_defaults import candidate_pipeline

    from oasis_gen.commands.pipeline import load_pipeline

    pipeline = load_pipeline(candidate_pipeline(tmp_path, single=False, own_data=True), [])
    assert "data" not in pipeline.stages
    assert all("data" not in stage.needs for stage in pipeline.stages.values())
    assert pipeline.stages["prior"].needs == ["codes", "prior_top"]
    sampling = pipeline.stages["sampling"]
    assert "complete_scan" not in sampling.overrides and not any("completion" in str(o) for o in sampling.outputs)

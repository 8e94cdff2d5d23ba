"""The generation-defaults benchmark's quick mode: tiny candidates through the demo pipeline, a table with every
figure beside its floor. Nothing timed, no quality thresholds: only that the pieces run and report."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_quick_run_trains_each_candidate_through_the_pipeline_and_writes_the_table(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/generation_defaults.py", "--quick", "--runs-dir",
                           str(tmp_path / "runs"), "--out-dir", str(tmp_path / "out"), "--name", "quick",
                           "--candidates", "two_level,single_level", "--num-samples", "6",
                           "--vqvae-minutes", "1", "--prior-minutes", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "quick.json").read_text())
    table = (tmp_path / "out" / "quick.md").read_text()
    assert [row["candidate"] for row in result["candidates"]] == ["two_level", "single_level"]
    for row in result["candidates"]:
        metrics = row["sampling"]["metrics"]
        for key in ("c2st_accuracy", "c2st_accuracy_floor", "one_region_share", "one_region_share_floor",
                    "nll_bits_per_code", "nll_bits_per_slice", "sampling_seconds"):
            assert math.isfinite(metrics[key]), (row["candidate"], key)
        assert 0 < row["evaluation"]["ssim"]["mean"] <= 1
        assert f"| {row['candidate']} | {row['evaluation']['ssim']['mean']:.4f} |" in table
    two, one = (row["sampling"]["metrics"] for row in result["candidates"])
    assert two["nll_codes_per_slice"] == 8 * 8 + 2 * 2 and one["nll_codes_per_slice"] == 8 * 8  # 32 px, two levels

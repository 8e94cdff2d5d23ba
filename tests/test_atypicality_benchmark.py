"""The atypicality benchmark's pieces: `benchmarks/atypicality.py --quick` runs on tiny random models (two levels
through its command line, one level in process) and writes its table; AUROC, patch placement and overlap. No
timed asserts and no thresholds on quality: tiny random models measure nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

from atypicality import auroc, cell_overlaps, main, patch_side, place_patch, rank_auroc  # noqa: E402


def check_result(result: dict, two_level: bool) -> None:
    assert result["two_level"] is two_level
    data = result["data"]
    assert data["split"] == "test" and data["slices"] == 12
    assert data["patched"] == 6 and data["clean"] == 6
    assert sum(data["placements"].values()) == 6 and data["patch_side_px"] == 3  # 12 px at 128 -> 3 px at 32
    assert 0.0 <= result["auroc"] <= 1.0
    local = result["localisation"]
    assert local["patched"] == 6 and 0 <= local["top_cell_on_patch"] <= 6
    assert 0.0 < local["chance_share"] < 1.0
    assert result["command"].startswith("python benchmarks/atypicality.py") and "--quick" in result["command"]
    assert result["machine"]["cpu_count"] >= 1


@pytest.mark.slow
def test_quick_run_through_the_command_line_writes_the_table_for_two_levels(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/atypicality.py", "--quick", "--out-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "atypicality_quick.json").read_text())
    check_result(result, two_level=True)
    assert result["models"]["top_prior_ckpt"].endswith("prior_top.pt")
    text = (tmp_path / "atypicality_quick.md").read_text()
    assert "| AUROC, patched vs clean" in text and "CPUs" in text and "Command: `python benchmarks/atypicality" in text
    assert "written:" in done.stdout


def test_quick_run_in_process_for_one_level(tmp_path):
    assert main(["--quick", "--quick-levels", "1", "--out-dir", str(tmp_path), "--name", "atypicality_one"]) == 0
    result = json.loads((tmp_path / "atypicality_one.json").read_text())
    check_result(result, two_level=False)
    assert "top_prior_ckpt" not in result["models"]
    assert (tmp_path / "atypicality_one.md").is_file()


def test_rank_auroc_is_the_roc_area_with_ties_counting_half():
    assert rank_auroc(np.array([1.0, 2.0, 3.0, 4.0]), np.array([False, False, True, True])) == 1.0
    assert rank_auroc(np.array([4.0, 3.0, 2.0, 1.0]), np.array([False, False, True, True])) == 0.0
    assert rank_auroc(np.array([1.0, 1.0, 1.0, 1.0]), np.array([False, True, False, True])) == 0.5
    rng = np.random.default_rng(0)
    scores, positive = rng.integers(0, 5, 40).astype(float), rng.random(40) < 0.5
    pairs = [(p > n) + 0.5 * (p == n) for p in scores[positive] for n in scores[~positive]]
    assert rank_auroc(scores, positive) == pytest.approx(np.mean(pairs))
    assert auroc(scores, positive) == pytest.approx(np.mean(pairs))  # sklearn's, where it is installed


def test_a_patch_lies_inside_the_brain_and_overlaps_the_cells_it_touches():
    image = torch.zeros(1, 32, 32)
    image[0, 10:20, 12:24] = 0.5  # the brain: rows 10..19, columns 12..23
    rng = np.random.default_rng(0)
    for _ in range(20):
        row, col, how = place_patch(image, 4, rng)
        assert how == "inside" and 10 <= row <= 16 and 12 <= col <= 20
    row, col, how = place_patch(image, 12, rng)  # too big to fit: centred on a brain pixel
    assert how == "centred" and 0 <= row <= 20 and 0 <= col <= 20
    assert place_patch(torch.zeros(1, 32, 32), 4, rng)[2] == "anywhere"
    assert patch_side(128, 12) == 12 and patch_side(32, 12) == 3 and patch_side(8, 2) == 1
    overlap = cell_overlaps((8, 8), 32, (4, 6, 3))  # rows 4..6, columns 6..8 on 4-px cells
    assert overlap.nonzero()[0].tolist() == [1, 1] and overlap.nonzero()[1].tolist() == [1, 2]

"""The data layer on tiny real files: every layout, every bad input, datasets and the check command."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import brain_slice, brain_volume, write_analyze, write_nifti, write_png

from oasis_gen.commands.cli import main
from oasis_gen.data import (
    build_cache_dataset,
    cache_nbytes,
    check_dataset,
    decode_intensity,
    eval_transforms,
    find_scans,
    split_subjects,
    train_transforms,
)
from oasis_gen.data.layouts import parse_slice_name, parse_volume_subject
from oasis_gen.utils.errors import ConfigError, DataError


def messages(report, severity=None):
    return [f"{p.path}: {p.message}" for p in report.problems if severity in (None, p.severity)]


# ---------------------------------------------------------------- layouts


def test_oasis_layout_parses_subject_and_slice_and_ignores_seg_folders(oasis_slices):
    layout, scans = find_scans(oasis_slices)
    assert layout == "oasis-slices"
    assert [len(scans[s]) for s in ("train", "validate", "test")] == [6, 6, 6]
    assert all("seg" not in r["image"] for split in scans.values() for r in split)
    first = scans["train"][0]
    assert (first["subject"], first["slice"]) == ("001", 0)
    report = check_dataset(oasis_slices, progress=False)
    assert report.problems == []
    assert report.summary["train"].subjects == 2 and report.summary["train"].sizes[(24, 24)] == 6


@pytest.mark.parametrize("with_files", [False, True])
def test_plain_split_folders_with_and_without_files_subfolder(tmp_path, with_files):
    for i, split in enumerate(("train", "val", "test")):
        folder = tmp_path / split / ("files" if with_files else "")
        write_png(folder / f"case_{i}00_slice_0.nii.png", brain_slice(20, i))
        write_png(folder / f"case_{i}00_slice_1.nii.png", brain_slice(20, i + 10))
    layout, scans = find_scans(tmp_path)
    assert layout == "split-folders"
    assert {s: len(v) for s, v in scans.items()} == {"train": 2, "validate": 2, "test": 2}
    assert scans["validate"][0]["subject"] == "100"


def test_flat_folder_is_split_by_subject_deterministically(tmp_path):
    for subject in range(10):
        for k in range(4):
            write_png(tmp_path / f"sub{subject:02d}_slice_{k}.png", brain_slice(16, subject * 10 + k))
    _, first = find_scans(tmp_path, split_ratios=(0.6, 0.2, 0.2), seed=3)
    _, again = find_scans(tmp_path, split_ratios=(0.6, 0.2, 0.2), seed=3)
    _, other = find_scans(tmp_path, split_ratios=(0.6, 0.2, 0.2), seed=4)
    assert first == again
    subjects = {s: {r["subject"] for r in v} for s, v in first.items()}
    assert [len(subjects[s]) for s in ("train", "validate", "test")] == [6, 2, 2]
    assert not (subjects["train"] & subjects["validate"] or subjects["train"] & subjects["test"]
                or subjects["validate"] & subjects["test"])
    assert all(len([r for r in v if r["subject"] == subj]) == 4 for v in first.values() for subj in {
        r["subject"] for r in v})
    assert {r["subject"] for r in other["test"]} != subjects["test"] or \
        {r["subject"] for r in other["validate"]} != subjects["validate"]


def test_split_subjects_keeps_every_split_non_empty_and_rejects_bad_ratios():
    assignment = split_subjects(["a", "b", "c"], (0.8, 0.1, 0.1), seed=0)
    assert sorted(assignment.values()) == ["test", "train", "validate"]
    with pytest.raises(ConfigError, match="split_ratios"):
        split_subjects(["a"], (0.5, 0.5), seed=0)


def test_slice_and_volume_names():
    assert parse_slice_name("case_402_slice_17.nii.png") == ("402", 17)
    assert parse_slice_name("sub-07_005.jpg") == ("sub-07", 5)
    assert parse_slice_name("scan.png") == ("scan", 0)
    assert parse_volume_subject("OAS1_0042_MR2_mpr_n4_anon_111_t88_masked_gfc.img") == "OAS1_0042"
    assert parse_volume_subject("patient7.nii.gz") == "patient7"


def test_nifti_and_analyze_volumes_are_cut_into_slices_with_enough_brain(tmp_path):
    # sessions MR1 and MR2 of one OASIS subject must land in one split
    for n in range(1, 4):
        write_analyze(tmp_path / f"OAS1_000{n}_MR1_mpr_n4_anon_111_t88_masked_gfc.img", brain_volume(seed=n))
    write_analyze(tmp_path / "OAS1_0001_MR2_mpr_n4_anon_111_t88_masked_gfc.img", brain_volume(seed=9))
    write_analyze(tmp_path / "OAS1_0001_MR1_mpr-1_anon.img", brain_volume(seed=8))  # raw scan: not the t88 one
    layout, scans = find_scans(tmp_path, seed=1)
    assert layout == "flat"
    volumes = [r for v in scans.values() for r in v]
    assert len(volumes) == 4 and all(r["volume"] for r in volumes)
    splits_of_subject_1 = {s for s, v in scans.items() for r in v if r["subject"] == "OAS1_0001"}
    assert len(splits_of_subject_1) == 1
    report = check_dataset(tmp_path, seed=1, axis=2, min_brain_fraction=0.3, progress=False)
    assert report.errors == []
    records = [r for v in report.records.values() for r in v]
    fractions = (brain_volume() > 0).mean(axis=(0, 1))
    assert len(records) == 4 * int((fractions >= 0.3).sum())
    assert all(r["axis"] == 2 for r in records)

    nii = write_nifti(tmp_path / "nifti" / "brain.nii.gz", brain_volume(seed=5))
    report = check_dataset(nii, axis="axial", progress=False, required_splits=("test",))
    assert report.errors == [] and report.layout == "file"
    ds = build_cache_dataset(report.records["test"], eval_transforms(16), progress=False)
    item = ds[0]["image"]
    assert item.shape == (1, 16, 16) and item.dtype == torch.uint8 and int(item.max()) > 200


# ---------------------------------------------------------------- bad input


def test_each_bad_input_gets_its_own_message_naming_the_file(oasis_slices):
    train = oasis_slices / "keras_png_slices_train"
    corrupt = train / "case_007_slice_0.nii.png"
    corrupt.write_bytes(b"this is not a png at all")
    truncated = train / "case_007_slice_1.nii.png"
    full = (train / "case_001_slice_0.nii.png").read_bytes()
    truncated.write_bytes(full[: len(full) // 2])
    rgb = write_png(train / "case_008_slice_0.nii.png", np.stack([brain_slice(24, 1)] * 3, axis=-1))
    wide = write_png(train / "case_008_slice_1.nii.png", brain_slice(24, 2).astype(np.uint16) * 200)
    odd = write_png(train / "case_008_slice_2.nii.png", brain_slice(30, 3, width=20))
    leak = write_png(oasis_slices / "keras_png_slices_test" / "case_001_slice_9.nii.png", brain_slice(24, 4))
    tiny = write_png(train / "case_009_slice_0.nii.png", brain_slice(3, 5))  # 3x3: too small for any network

    report = check_dataset(oasis_slices, progress=False)
    text = "\n".join(messages(report))
    assert f"{corrupt}: not a readable image" in text
    assert f"{truncated}: truncated image" in text
    assert f"{rgb}: RGB image: converted to grayscale" in text
    assert f"{wide}: I;16" in text and "scaled to [0, 1]" in text
    assert f"{odd}: size 30x20 differs from the usual 24x24" in text
    assert "subject 001" in text and str(leak) in text and "several splits" in text
    assert any("several splits" in m for m in messages(report, "warning"))  # the user's split: warn, not stop
    assert (f"{tiny}: too small for the network: 3x3 pixels, the slices need at least 16x16 (a code of the "
            "VQ-VAE's coarsest grid covers 16x16 pixels of a 128x128 slice)") in text
    assert sorted(report.bad_files) == sorted([str(corrupt), str(truncated), str(tiny)])
    with pytest.raises(DataError, match="problems found") as err:
        report.usable(skip_bad=False)
    assert str(corrupt) in str(err.value)
    usable = report.usable(skip_bad=True)
    paths = {r["image"] for r in usable["train"]}
    assert str(corrupt) not in paths and str(truncated) not in paths and str(rgb) in paths and str(wide) in paths
    assert str(tiny) not in paths


def test_rgb_and_16_bit_images_load_to_unit_range(tmp_path):
    rgb = write_png(tmp_path / "rgb.png", np.stack([brain_slice(24, 1)] * 3, axis=-1))
    rgba = write_png(tmp_path / "rgba.png", np.dstack([brain_slice(24, 1)] * 3 + [np.full((24, 24), 255, np.uint8)]))
    wide = write_png(tmp_path / "wide.png", brain_slice(24, 2).astype(np.uint16) * 250)
    chain = eval_transforms(24, cache_dtype="float32")
    for path in (rgb, rgba, wide):
        image = chain({"image": str(path), "subject": "x", "slice": 0})["image"]
        assert image.shape == (1, 24, 24) and image.dtype == torch.float32
        assert float(image.min()) == 0.0 and 0.8 <= float(image.max()) <= 1.0
    # 16-bit data is scaled by its own upper percentile, so its brightest tissue reaches 1
    assert float(chain({"image": str(wide)})["image"].max()) == 1.0
    gray = eval_transforms(24, cache_dtype="float32")({"image": str(rgb)})["image"]
    assert torch.allclose(gray, torch.from_numpy(brain_slice(24, 1) / 255.0).float()[None], atol=1e-6)


def test_missing_folder_empty_split_and_missing_split(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        find_scans(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no PNG/JPEG slices"):
        find_scans(tmp_path / "empty")
    root = tmp_path / "partial"
    write_png(root / "keras_png_slices_train" / "case_1_slice_0.nii.png", brain_slice(16, 0))
    (root / "keras_png_slices_validate").mkdir()
    report = check_dataset(root, progress=False)
    text = "\n".join(messages(report, "error"))
    assert "split 'validate' is missing or holds no scans" in text
    assert "split 'test' is missing or holds no scans" in text


def test_nan_empty_and_half_analyze_volumes(tmp_path):
    data = brain_volume()
    data[3, 4, 5] = np.nan
    nan = write_nifti(tmp_path / "a" / "nan.nii", data)
    empty = write_nifti(tmp_path / "a" / "empty.nii", np.zeros((8, 8, 8), np.float32))
    lone = write_analyze(tmp_path / "a" / "lone.img", brain_volume())
    lone.with_suffix(".hdr").unlink()
    truncated = write_nifti(tmp_path / "a" / "cut.nii", brain_volume())
    truncated.write_bytes(truncated.read_bytes()[:400])
    good = write_nifti(tmp_path / "a" / "good.nii", brain_volume(seed=3))
    report = check_dataset(tmp_path / "a", progress=False, required_splits=())
    text = "\n".join(messages(report, "error"))
    assert f"{nan}: 1 NaN/inf values" in text
    assert f"{empty}: empty" in text
    assert f"{lone}: Analyze volume without its .hdr partner" in text
    assert f"{truncated}: unreadable volume" in text
    assert str(good) not in text


# ---------------------------------------------------------------- datasets


def test_datasets_yield_compact_cached_tensors_of_the_model_size(oasis_slices):
    report = check_dataset(oasis_slices, progress=False)
    train = build_cache_dataset(report.records["train"], train_transforms(32, augment=True), progress=False)
    item = train[0]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.uint8
    assert item["subject"] == "001" and item["slice"] == 0
    assert cache_nbytes(train) == 6 * 32 * 32
    decoded = decode_intensity(item["image"])
    assert decoded.dtype == torch.float32 and 0.0 <= float(decoded.min()) and float(decoded.max()) <= 1.0
    assert float(decoded.max()) > 0.5
    half = build_cache_dataset(report.records["test"], eval_transforms(32, cache_dtype="float16"), progress=False)
    assert half[0]["image"].dtype == torch.float16 and cache_nbytes(half) == 6 * 32 * 32 * 2
    # a non-square slice is padded to square, not stretched: the padding stays background
    wide = write_png(oasis_slices / "wide.png", np.full((10, 40), 200, np.uint8))
    padded = eval_transforms(32, cache_dtype="float32")({"image": str(wide)})["image"]
    assert padded.shape == (1, 32, 32) and float(padded[0, 0, 16]) == 0.0 and float(padded[0, 16, 16]) > 0.7
    with pytest.raises(DataError, match="no slices"):
        build_cache_dataset([], eval_transforms(32), progress=False)


# ---------------------------------------------------------------- the check command


def test_check_command_exit_codes_and_report(oasis_slices, capsys):
    assert main(["data", "check", str(oasis_slices), "-q"]) == 0
    out = capsys.readouterr().out
    assert "no problems found" in out and "train" in out
    bad = oasis_slices / "keras_png_slices_validate" / "case_003_slice_9.nii.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert main(["data", "check", str(oasis_slices), "-q"]) == 1
    assert f"{bad}: " in capsys.readouterr().out
    assert main(["data", "check", str(oasis_slices / "missing"), "-q"]) == 2
    assert "dataset folder not found" in capsys.readouterr().err


def test_check_command_in_a_subprocess_prints_no_traceback(tmp_path):
    bad = write_png(tmp_path / "flat" / "case_1_slice_0.png", brain_slice(16, 0))
    bad.write_bytes(bad.read_bytes()[:30])
    result = subprocess.run([sys.executable, "-m", "oasis_gen", "data", "check", str(tmp_path / "flat"), "-q"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert f"{bad}: truncated image" in result.stdout or f"{bad}: not a readable image" in result.stdout

"""Bundle inference (inference.yaml) through the real ``python -m monai.bundle`` CLI, and its parts in process:
finding scans, the model's view of them and back, checkpoints that do not belong together, conditional priors."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import (
    CONFIGS,
    brain_slice,
    brain_volume,
    overrides,
    tiny_prior_overrides,
    tiny_vqvae_overrides,
    write_analyze,
    write_nifti,
    write_oasis_slices,
    write_png,
)
from conftest import run_bundle as bundle
from mlflow import MlflowClient
from PIL import Image

from oasis_gen.data import decode_intensity, eval_transforms
from oasis_gen.data.readers import read_volume
from oasis_gen.inference import ModelView, find_inputs, load_inference_models, read_planes
from oasis_gen.inference.scans import volume_labels
from oasis_gen.inference.writers import write_reconstruction
from oasis_gen.networks.pixelcnn import GatedPixelCNN, pixelcnn_spec
from oasis_gen.networks.spec import file_sha256
from oasis_gen.networks.vqvae import vqvae_from_spec, vqvae_spec
from oasis_gen.utils.errors import CheckpointError, ConfigError, DataError

TRAIN = str(CONFIGS / "train.yaml")
TRAIN_PRIOR = str(CONFIGS / "train_prior.yaml")
INFERENCE = str(CONFIGS / "inference.yaml")
PATCH = (slice(2, 14), slice(2, 14))  # rows and columns of the implausible patch pasted on a 40x40 slice


# ------------------------------------------------------------------ tiny trained models, made once


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """A tiny VQ-VAE (32x32, 8x8 grid, K=16, 3 epochs) and a tiny prior of its codes (20 epochs), via the CLI.

    More epochs than the other modules train: a 1-epoch prior scores every code alike, so it could not tell an
    implausible patch from the rest; the epochs cost little next to starting the CLI (12 slices of 40x40).
    """
    work = tmp_path_factory.mktemp("models")
    data = write_oasis_slices(work / "data", layout=(("train", 3, 4), ("validate", 1, 4)))
    result = bundle("run", "training", "--config_file", TRAIN,
                    *tiny_vqvae_overrides(data, work / "vqvae", work / "mlruns", max_epochs=3))
    assert result.returncode == 0, result.stderr[-3000:]
    vqvae = work / "vqvae" / "checkpoints" / "model.pt"
    result = bundle("run", "training", "--config_file", TRAIN_PRIOR,
                    *tiny_prior_overrides(data, vqvae, work / "prior", work / "mlruns", max_epochs=20,
                                         learning_rate=0.01, num_pictures=0))
    assert result.returncode == 0, result.stderr[-3000:]
    return {"vqvae": vqvae, "prior": work / "prior" / "checkpoints" / "model.pt", "work": work}


def patched(image: np.ndarray) -> np.ndarray:
    """The slice with a bright checkerboard pasted on its background (nothing like it in training)."""
    out = image.copy()
    yy, xx = np.mgrid[0:12, 0:12]
    out[PATCH] = np.where((yy // 3 + xx // 3) % 2 == 0, 255, 0)
    return out


def nifti_affine() -> np.ndarray:
    return np.array([[2.0, 0, 0, -20], [0, 1.5, 0, 10], [0, 0, 3, 5], [0, 0, 0, 1]])


def write_mixed(root: Path) -> Path:
    """PNG, JPEG, NIfTI and Analyze scans in nested folders, plus a truncated PNG and a volume with a NaN."""
    write_png(root / "case_001_slice_0.nii.png", brain_slice(40, 1))
    write_png(root / "case_001_slice_1.nii.png", brain_slice(40, 2, width=30))
    (root / "sub").mkdir(parents=True)
    Image.fromarray(brain_slice(30, 3, width=50)).save(root / "sub" / "wide.jpg", quality=95)
    whole = (root / "case_001_slice_0.nii.png").read_bytes()
    (root / "broken.png").write_bytes(whole[: len(whole) // 2])
    volume = nib.Nifti1Image(brain_volume((20, 22, 18)).astype(np.int16), nifti_affine())
    volume.header["descrip"] = b"oasis-gen test volume"
    nib.save(volume, str(root / "vol.nii.gz"))
    nan = brain_volume((10, 12, 10))
    nan[5, 5, 5] = np.nan
    write_nifti(root / "nan.nii", nan)
    # OASIS-1 ships int16 Analyze volumes with a trailing singleton axis
    write_analyze(root / "oas" / "OAS1_0001_MR1_mpr_n4_anon_111_t88_masked_gfc.img",
                  brain_volume((18, 20, 16), seed=4).astype(np.int16)[..., None])
    clean = brain_slice(40, 100)
    write_png(root / "atypical" / "clean.png", clean)
    write_png(root / "atypical" / "patched.png", patched(clean))
    return root


def infer(scans: Path, out: Path, store: Path, *extra: str, **values: object):
    return bundle("run", "inferring", "--config_file", INFERENCE, "--input", str(scans), "--inference_dir", str(out),
                  "--tracking_uri", str(store), "--progress", "False", *extra, *overrides(**values))


@pytest.fixture(scope="module")
def mixed_run(models, tmp_path_factory) -> dict:
    """One inference run with the prior over the mixed folder, into a folder holding an earlier output."""
    work = tmp_path_factory.mktemp("mixed")
    scans, out, store = write_mixed(work / "scans"), work / "out", work / "mlruns"
    earlier = write_png(out / "broken" / "reconstruction.png", brain_slice(40, 9))  # from an earlier, good run
    result = infer(scans, out, store, vqvae_ckpt=models["vqvae"], prior_ckpt=models["prior"])
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "summary.csv") as stream:
        rows = {row["scan"]: row for row in csv.DictReader(stream)}
    return {"scans": scans, "out": out, "store": store, "result": result, "rows": rows, "earlier": earlier,
            "earlier_sha": hashlib.sha256(earlier.read_bytes()).hexdigest()}


def per_slice(folder: Path) -> list[dict]:
    with open(folder / "metrics.csv") as stream:
        return list(csv.DictReader(stream))


# ------------------------------------------------------------------ end to end, through the CLI


@pytest.mark.slow
def test_bad_scans_are_reported_by_name_and_the_rest_finish(mixed_run):
    rows, log = mixed_run["rows"], mixed_run["result"].stdout + mixed_run["result"].stderr
    assert list(rows) == ["atypical/clean", "atypical/patched", "broken", "case_001_slice_0", "case_001_slice_1",
                          "nan", "oas/OAS1_0001_MR1_mpr_n4_anon_111_t88_masked_gfc", "sub/wide", "vol"]
    failed = {name: row["problem"] for name, row in rows.items() if row["status"] != "ok"}
    assert failed == {"broken": "truncated image", "nan": "1 NaN/inf values"}
    assert f"skipped {mixed_run['scans'] / 'broken.png'}: truncated image" in log
    assert f"skipped {mixed_run['scans'] / 'nan.nii'}: 1 NaN/inf values" in log
    assert "7 of 9 scans done" in log
    assert not (mixed_run["out"] / "nan").exists()
    for name, row in rows.items():
        if row["status"] == "ok":
            assert row["problem"] == "" and -1.0 <= float(row["ssim_mean"]) <= 1.0 and float(row["psnr_mean"]) > 0
            assert (mixed_run["out"] / name / "comparison.png").is_file(), name
    summary = json.loads((mixed_run["out"] / "summary.json").read_text())
    assert summary["metrics"]["scans_failed"] == 2 and summary["metrics"]["scans_done"] == 7
    assert [s["scan"] for s in summary["scans"]] == list(rows)
    assert summary["typical"]["grids"] == 4 and 0 < summary["typical"]["bits_mean"] < 2 * 4  # log2(16) = 4


@pytest.mark.slow
def test_an_earlier_output_of_a_scan_that_fails_now_is_kept(mixed_run):
    earlier = mixed_run["earlier"]
    assert hashlib.sha256(earlier.read_bytes()).hexdigest() == mixed_run["earlier_sha"]
    assert sorted(p.name for p in earlier.parent.iterdir()) == ["reconstruction.png"]
    assert not [p for p in mixed_run["out"].rglob("*") if p.name.endswith(".partial")]


@pytest.mark.slow
def test_nifti_volume_keeps_shape_affine_and_header(mixed_run):
    source = nib.load(str(mixed_run["scans"] / "vol.nii.gz"))
    folder = mixed_run["out"] / "vol"
    output = nib.load(str(folder / "reconstruction.nii.gz"))
    assert isinstance(output, nib.Nifti1Image)
    assert output.shape == source.shape == (20, 22, 18)
    np.testing.assert_allclose(output.affine, source.affine)
    for field in ("pixdim", "descrip", "qform_code", "sform_code", "xyzt_units"):
        assert np.array_equal(output.header[field], source.header[field]), field
    assert output.get_data_dtype() == np.int16  # integer volumes stay integer
    raw, restored = np.asarray(source.dataobj, float), np.asarray(output.dataobj, float)
    assert raw.min() <= restored.min() and 1 < restored.max() <= raw.max()  # on the input's scale, not [0, 1]
    # axial planes of a RAS volume: axis 2, one row of metrics and one code grid per plane
    assert np.load(folder / "codes.npy").shape == (18, 8, 8)
    rows = per_slice(folder)
    assert [int(r["slice"]) for r in rows] == list(range(18))
    scored = [float(r["ssim"]) for r in rows if r["scored"] == "True"]
    assert 0 < len(scored) < 18  # slices without brain are written but do not count
    assert float(mixed_run["rows"]["vol"]["ssim_mean"]) == pytest.approx(np.mean(scored), abs=1e-5)


@pytest.mark.slow
def test_analyze_volume_gives_an_analyze_pair(mixed_run):
    name = "OAS1_0001_MR1_mpr_n4_anon_111_t88_masked_gfc"
    source = nib.load(str(mixed_run["scans"] / "oas" / f"{name}.img"))
    folder = mixed_run["out"] / "oas" / name
    assert (folder / "reconstruction.hdr").is_file() and (folder / "reconstruction.img").is_file()
    output = nib.load(str(folder / "reconstruction.img"))
    assert type(output) is type(source)
    assert output.shape == source.shape == (18, 20, 16, 1)
    np.testing.assert_allclose(output.affine, source.affine)
    assert output.get_data_dtype() == source.get_data_dtype() == np.int16
    assert np.load(folder / "codes.npy").shape == (16, 8, 8)


@pytest.mark.slow
def test_slices_give_pictures_of_their_own_size_and_format(mixed_run):
    out = mixed_run["out"]
    for name, file, size in (("case_001_slice_0", "reconstruction.png", (40, 40)),
                             ("case_001_slice_1", "reconstruction.png", (30, 40)),
                             ("sub/wide", "reconstruction.jpg", (50, 30))):
        with Image.open(out / name / file) as picture:
            assert picture.size == size and picture.mode == "L", name  # PIL sizes are (width, height)
            assert picture.format == ("JPEG" if file.endswith(".jpg") else "PNG")
        codes = np.load(out / name / "codes.npy")
        assert codes.shape == (8, 8) and 0 <= codes.min() and codes.max() < 16
        with Image.open(out / name / "codes.png") as picture:
            assert picture.size == (32, 32)
        with Image.open(out / name / "comparison.png") as picture:
            assert picture.size == (4 * 32 + 3 * 2, 32)  # input | reconstruction | code map | atypicality
        assert len(per_slice(out / name)) == 1


@pytest.mark.slow
def test_atypicality_maps_have_the_scans_geometry_and_average_to_the_score(mixed_run):
    out, rows = mixed_run["out"], mixed_run["rows"]
    slice_map = np.load(out / "case_001_slice_1" / "atypicality.npy")
    assert slice_map.shape == (40, 30) and np.isfinite(slice_map).all() and slice_map.min() >= 0
    grid = np.load(out / "case_001_slice_1" / "atypicality_codes.npy")
    assert grid.shape == (8, 8)
    assert float(rows["case_001_slice_1"]["atypicality_bits"]) == pytest.approx(grid.mean(), rel=1e-5)
    with Image.open(out / "case_001_slice_1" / "atypicality.png") as picture:
        assert picture.size == (30, 40) and picture.mode == "RGB"
    volume_map = np.load(out / "vol" / "atypicality.npy")
    assert volume_map.shape == (20, 22, 18) and np.isfinite(volume_map).all()
    volume_grid = np.load(out / "vol" / "atypicality_codes.npy")
    scored = np.array([r["scored"] == "True" for r in per_slice(out / "vol")])
    assert float(rows["vol"]["atypicality_bits"]) == pytest.approx(volume_grid[scored].mean(), rel=1e-5)
    assert [float(r["bits_per_code"]) for r in per_slice(out / "vol")] == pytest.approx(
        volume_grid.mean(axis=(1, 2)).tolist(), rel=1e-5)


@pytest.mark.slow
def test_an_implausible_patch_is_more_atypical(mixed_run):
    out, rows = mixed_run["out"], mixed_run["rows"]
    clean = np.load(out / "atypical" / "clean" / "atypicality.npy")
    patch = np.load(out / "atypical" / "patched" / "atypicality.npy")
    assert patch[PATCH].mean() > clean[PATCH].mean() + 0.2  # bits per code, where the patch is
    assert float(rows["atypical/patched"]["atypicality_bits"]) > float(rows["atypical/clean"]["atypicality_bits"])


@pytest.mark.slow
def test_inference_run_is_recorded_in_mlflow(mixed_run, models):
    client = MlflowClient(f"sqlite:///{mixed_run['store'] / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("oasis-gen").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "infer"
    assert run.info.run_name.startswith("infer-32px-K16-prior-")
    assert run.data.params["input"] == str(mixed_run["scans"])
    assert run.data.params["models.vqvae_ckpt"] == str(models["vqvae"])
    assert run.data.metrics["scans_failed"] == 2 and run.data.metrics["scans_done"] == 7
    summary = json.loads((mixed_run["out"] / "summary.json").read_text())
    assert run.data.metrics["ssim_mean"] == pytest.approx(summary["metrics"]["ssim_mean"])
    assert run.data.metrics["typical_bits"] == pytest.approx(summary["typical"]["bits_mean"])
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.csv", "summary.json", "comparisons"} <= logged
    pictures = {a.path for a in client.list_artifacts(run.info.run_id, "comparisons/oas")}
    assert pictures == {"comparisons/oas/OAS1_0001_MR1_mpr_n4_anon_111_t88_masked_gfc"}


@pytest.mark.slow
def test_strict_run_without_prior_keeps_earlier_outputs_of_a_scan_that_now_fails(mixed_run, models, tmp_path):
    scans, out = tmp_path / "scans", tmp_path / "out"
    shutil.copytree(mixed_run["out"], out)
    (scans / "later").mkdir(parents=True)
    shutil.copy(mixed_run["scans"] / "case_001_slice_1.nii.png", scans / "later" / "good.png")
    (scans / "case_001_slice_0.nii.png").write_bytes(b"")  # the scan an earlier run reconstructed is now empty
    before = {p.name: p.read_bytes() for p in (out / "case_001_slice_0").iterdir()}
    result = infer(scans, out, tmp_path / "mlruns", "--strict", "true", vqvae_ckpt=models["vqvae"])
    assert result.returncode == 1
    assert f"{scans}: 1 of 2 scans were skipped: {scans / 'case_001_slice_0.nii.png'}" in result.stderr
    assert "Traceback" not in result.stderr
    assert {p.name: p.read_bytes() for p in (out / "case_001_slice_0").iterdir()} == before
    with open(out / "summary.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["scan"], r["status"]) for r in rows] == [("case_001_slice_0", "failed"), ("later/good", "ok")]
    assert rows[0]["problem"].startswith("not a readable image") and rows[1]["atypicality_bits"] == ""
    assert sorted(p.name for p in (out / "later" / "good").iterdir()) == [
        "codes.npy", "codes.png", "comparison.png", "metrics.csv", "reconstruction.png"]


# ------------------------------------------------------------------ in process, fast


def test_find_inputs_names_every_scan_once(tmp_path):
    root = tmp_path / "scans"
    write_png(root / "a.png", brain_slice(20, 1))
    write_nifti(root / "a.nii", brain_volume((8, 8, 8)))
    write_analyze(root / "deep" / "er" / "b.img", brain_volume((8, 8, 8)))
    write_png(root / "keras_png_slices_seg_test" / "seg_1_slice_0.nii.png", brain_slice(20, 2))
    write_png(root / "out" / "a" / "reconstruction.png", brain_slice(20, 3))  # an earlier run's output
    (root / "notes.txt").write_text("not a scan")
    scans = find_inputs(root, exclude=root / "out")
    assert [(s.name, s.kind, s.suffix) for s in scans] == [
        ("a_nii", "volume", ".nii"), ("a_png", "slice", ".png"), ("deep/er/b", "volume", ".img")]
    single = find_inputs(root / "deep" / "er" / "b.hdr")
    assert [(s.name, s.suffix) for s in single] == [("b", ".img")]
    with pytest.raises(ConfigError, match="config 'input': no scans given"):
        find_inputs(None)
    with pytest.raises(DataError, match="nowhere: input not found"):
        find_inputs(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no PNG/JPEG slices or NIfTI/Analyze volumes found"):
        find_inputs(tmp_path / "empty")
    with pytest.raises(DataError, match="notes.txt: not a PNG/JPEG slice"):
        find_inputs(root / "notes.txt")


def test_model_view_is_the_training_chain_and_goes_back_to_the_input_size(tmp_path):
    path = write_png(tmp_path / "slice.png", brain_slice(40, 5, width=26))
    scan = find_inputs(path)[0]
    planes = read_planes(scan)
    view = ModelView(32)
    inputs, geometry = view.to_model(planes.planes)
    training = decode_intensity(eval_transforms(32, "uint8")({"image": str(path)})["image"].as_tensor())
    assert torch.equal(inputs[0], training)  # what the VQ-VAE saw in training, bit for bit
    back = view.to_input(inputs, geometry)
    assert back.shape == (1, 40, 26)
    assert np.abs(back - planes.planes).mean() < 0.1  # only the resampling blur is lost


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIR", "PSR"])
def test_volume_planes_stack_back_into_the_stored_volume_voxel_for_voxel(tmp_path, codes):
    from test_orientation import asymmetric_head, write_oriented

    path = write_oriented(tmp_path / "v.nii.gz", asymmetric_head(), codes)
    stored = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    for axis in ("axial", "coronal", "sagittal"):
        planes = read_planes(find_inputs(path)[0], slice_axis=axis)
        volume = read_volume(str(path))
        # the planes put back are the file's own array (scaled to [0, 1]) in the file's own layout
        assert np.array_equal(planes.to_volume(planes.planes), volume.to_stored(volume.data))
        np.testing.assert_allclose(planes.to_volume(planes.planes), stored / stored.max(), atol=1e-6)
        assert planes.count == volume.data.shape[planes.axis]
    # the input's own planes written as its "reconstruction" give back the input file's values in place
    written = write_reconstruction(tmp_path / "out", planes, planes.planes)
    assert np.array_equal(np.asarray(nib.load(str(written)).dataobj), stored)


def test_volume_labels_bucket_the_kept_planes():
    assert volume_labels(np.array([False, True, True, True, True, False]), 2).tolist() == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize(("name", "dtype"), [("v.nii.gz", np.int16), ("v.nii", np.int16), ("v.img", np.int16),
                                             ("scaled.nii", np.float32)])
def test_volume_writer_puts_planes_back_on_the_inputs_scale_and_header(tmp_path, name, dtype):
    raw = brain_volume((12, 14, 10), seed=3).astype(np.int16)
    raw[0, 0, 0] = 1000  # one hot voxel above the 99.5th percentile: clipped by the reading's scaling
    source = tmp_path / "in" / name
    if name.endswith(".img"):
        write_analyze(source, raw)
    else:
        image = nib.Nifti1Image(raw, nifti_affine())
        if name.startswith("scaled"):
            image.header.set_slope_inter(0.5, 10.0)  # stored integers stand for 0.5 * stored + 10
        source.parent.mkdir(parents=True)
        nib.save(image, str(source))
    values = np.asarray(nib.load(str(source)).dataobj, dtype=np.float64)
    planes = read_planes(find_inputs(source)[0], slice_axis="coronal")
    written = write_reconstruction(tmp_path / "out", planes, planes.planes)  # the planes as their own reconstruction
    output = nib.load(str(written))
    assert written.name == "reconstruction" + (".nii.gz" if name.endswith(".gz") else Path(name).suffix)
    assert type(output) is type(nib.load(str(source))) and output.get_data_dtype() == dtype
    low, high = planes.intensity_range
    assert low == values.min() and values.min() + 100 < high < values.max()
    tolerance = 0.5 + 1e-3 if dtype == np.int16 else 1e-3  # integers are rounded
    np.testing.assert_allclose(np.asarray(output.dataobj), np.minimum(values, high), atol=tolerance)


def _tiny_vqvae(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    spec = vqvae_spec(image_size=32, num_downsamplings=2, channels=[4, 8], num_embeddings=16, embedding_dim=4)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": vqvae_from_spec(spec).state_dict(), "spec": spec.state_dict()}, path)
    return path


def _tiny_prior(path: Path, vqvae: Path, num_classes: int | None = None) -> Path:
    spec = pixelcnn_spec(num_embeddings=16, grid_size=8, channels=4, num_layers=2, num_classes=num_classes,
                         vqvae_checkpoint=str(vqvae), vqvae_sha256=file_sha256(vqvae))
    network = GatedPixelCNN(16, channels=4, num_layers=2, num_classes=num_classes)
    torch.save({"model": network.state_dict(), "spec": spec.state_dict()}, path)
    return path


def test_a_wrong_or_corrupt_checkpoint_or_a_prior_of_another_vqvae_is_refused(tmp_path):
    vqvae, other = _tiny_vqvae(tmp_path / "vqvae.pt", 0), _tiny_vqvae(tmp_path / "other.pt", 1)
    prior = _tiny_prior(tmp_path / "prior.pt", vqvae)
    assert load_inference_models(vqvae, prior).prior is not None
    with pytest.raises(CheckpointError, match="prior.pt: not a VQ-VAE checkpoint of oasis-gen"):
        load_inference_models(prior)
    with pytest.raises(CheckpointError, match="vqvae.pt: not a Gated PixelCNN checkpoint of oasis-gen"):
        load_inference_models(vqvae, vqvae)
    with pytest.raises(CheckpointError, match=r"prior.pt: this prior models the codes of another VQ-VAE"):
        load_inference_models(other, prior)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(vqvae.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt.pt: not a readable checkpoint"):
        load_inference_models(corrupt)


def infer_in_process(scans: Path, out: Path, vqvae: Path, prior: Path, **overrides: object):
    """inference.yaml's `inferring` run in this process (MONAI's ConfigWorkflow); returns its report."""
    from monai.bundle import ConfigWorkflow

    flow = ConfigWorkflow(config_file=INFERENCE, workflow_type="infer", run_id="inferring", input=str(scans),
                          inference_dir=str(out), vqvae_ckpt=str(vqvae), prior_ckpt=str(prior),
                          tracking_uri=str(out.parent / "mlruns"), progress=False, **overrides)
    flow.initialize()
    flow.run()
    return flow.parser.get_parsed_content("report")


def test_a_conditional_prior_scores_each_slice_under_its_position(tmp_path):
    from oasis_gen.utils.errors import find_user_error

    vqvae = _tiny_vqvae(tmp_path / "vqvae.pt", 0)
    prior = _tiny_prior(tmp_path / "prior.pt", vqvae, num_classes=3)
    scans = write_nifti(tmp_path / "scans" / "v.nii.gz", brain_volume((12, 14, 10))).parent
    own = infer_in_process(scans, tmp_path / "own", vqvae, prior)
    fixed = infer_in_process(scans, tmp_path / "fixed", vqvae, prior, label=0)
    assert [r.status for r in own.results + fixed.results] == ["ok", "ok"]
    by_position = np.load(tmp_path / "own" / "v" / "atypicality_codes.npy")
    all_first = np.load(tmp_path / "fixed" / "v" / "atypicality_codes.npy")
    assert by_position.shape == all_first.shape == (10, 8, 8)
    assert not np.allclose(by_position, all_first)  # the later slices were scored under buckets 1 and 2
    with pytest.raises(Exception) as caught:
        infer_in_process(scans, tmp_path / "bad", vqvae, prior, label=3)
    assert isinstance(find_user_error(caught.value), ConfigError)
    assert "config 'label': this prior knows buckets 0..2, not 3" in str(find_user_error(caught.value))


@pytest.mark.slow
def test_a_head_in_four_stored_orientations_gives_the_same_codes_and_scores_and_outputs_in_place(models, tmp_path):
    from test_orientation import ORIENTATIONS, asymmetric_head, write_oriented

    ras = asymmetric_head()
    scans = {codes: write_oriented(tmp_path / "scans" / f"head_{codes}.nii.gz", ras, codes) for codes in ORIENTATIONS}
    result = infer(tmp_path / "scans", tmp_path / "out", tmp_path / "mlruns", vqvae_ckpt=models["vqvae"])
    assert result.returncode == 0, result.stderr[-3000:]
    out = {codes: tmp_path / "out" / f"head_{codes}" for codes in ORIENTATIONS}
    codes_ras = np.load(out["RAS"] / "codes.npy")
    assert codes_ras.shape[0] == ras.shape[2]  # axial planes of the canonical array, whatever the stored axes
    canonical = {}
    for codes, folder in out.items():
        assert np.array_equal(np.load(folder / "codes.npy"), codes_ras), codes
        assert per_slice(folder) == per_slice(out["RAS"]), codes  # the same SSIM and PSNR, slice by slice
        source, output = nib.load(str(scans[codes])), nib.load(str(folder / "reconstruction.nii.gz"))
        assert output.shape == source.shape and np.allclose(output.affine, source.affine), codes
        canonical[codes] = np.asarray(nib.as_closest_canonical(output).dataobj)
    assert all(np.array_equal(array, canonical["RAS"]) for array in canonical.values())


@pytest.mark.slow
def test_inference_honours_the_environments_store_and_tracking_mlflow(models, tmp_path):
    scans = write_png(tmp_path / "scans" / "a.png", brain_slice(40, 3)).parent
    store = tmp_path / "env_store"
    result = bundle("run", "inferring", "--config_file", INFERENCE, "--input", str(scans), "--inference_dir",
                    str(tmp_path / "out"), "--vqvae_ckpt", str(models["vqvae"]), "--progress", "False",
                    "--tracking", "mlflow", env={"MLFLOW_TRACKING_URI": str(store)})
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [run.data.tags["stage"] for run in runs] == ["infer"]

"""A trained model exported as a MONAI bundle that travels: written by ``oasis-gen bundle export``, copied out of the
checkout, and run there by MONAI's own CLI from another working directory."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import (
    CONFIGS,
    ROOT,
    brain_slice,
    brain_volume,
    run_bundle,
    tiny_prior_overrides,
    tiny_vqvae_overrides,
    write_nifti,
    write_oasis_slices,
    write_png,
)

from oasis_gen.bundle.export import export_bundle, set_config_value
from oasis_gen.networks.vqvae import load_vqvae
from oasis_gen.utils.errors import ConfigError

pytestmark = pytest.mark.slow
WHEEL = "oasis_gen-0.1.0-py3-none-any.whl"
SCHEMA = ROOT.parent / "shared" / "monai" / "meta_schema_20240725.json"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """A tiny two-level VQ-VAE and its priors, trained through the CLI, exported with ``oasis-gen bundle export``,
    and the bundle copied to a folder outside the checkout."""
    work = tmp_path_factory.mktemp("export")
    data = write_oasis_slices(work / "data", size=32, layout=(("train", 3, 4), ("validate", 1, 4), ("test", 1, 2)))
    store = work / "mlruns"
    two_level = {"top_downsamplings": 1, "top_num_embeddings": 8}
    done = run_bundle("run", "training", "--config_file", str(CONFIGS / "train.yaml"),
                      *tiny_vqvae_overrides(data, work / "vqvae", store, max_epochs=2, **two_level))
    assert done.returncode == 0, done.stderr[-3000:]
    vqvae = work / "vqvae" / "checkpoints" / "model.pt"
    priors = {}
    for level in ("top", "bottom"):
        extra = {"top_prior_ckpt": priors["top"]} if level == "bottom" else {}
        done = run_bundle("run", "training", "--config_file", str(CONFIGS / "train_prior.yaml"),
                          *tiny_prior_overrides(data, vqvae, work / f"prior_{level}", store, level=level,
                                               codes_dir=work / "codes", num_pictures=0, **extra))
        assert done.returncode == 0, done.stderr[-3000:]
        priors[level] = work / f"prior_{level}" / "checkpoints" / "model.pt"
    done = run_bundle("bundle", "export", str(work / "bundles" / "tiny"), "--vqvae-ckpt", str(vqvae),
                      "--prior-ckpt", str(priors["bottom"]), "--name", "tiny_test_bundle", module="oasis_gen")
    assert done.returncode == 0, done.stderr[-3000:]
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "tiny"
    shutil.copytree(work / "bundles" / "tiny", elsewhere)
    return {"work": work, "bundle": work / "bundles" / "tiny", "elsewhere": elsewhere, "vqvae": vqvae,
            "priors": priors, "data": data, "stdout": done.stdout}


def test_the_bundle_has_the_model_zoo_layout_and_a_zip(exported):
    bundle = exported["bundle"]
    files = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file())
    assert files == ["LICENSE", "configs/evaluate.yaml", "configs/inference.yaml", "configs/logging.conf",
                     "configs/metadata.json", "docs/README.md", "docs/data_use.md", "models/model.pt",
                     "models/model.ts", "models/prior.pt", "models/prior_top.pt", f"wheels/{WHEEL}"]
    assert (bundle / "models" / "model.pt").read_bytes() == exported["vqvae"].read_bytes()
    with zipfile.ZipFile(bundle.parent / "tiny.zip") as archive:
        assert sorted(n for n in archive.namelist() if not n.endswith("/")) == [f"tiny/{f}" for f in files]
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert metadata["network_data_format"]["inputs"]["image"]["spatial_shape"] == [32, 32]
    # what the wheel brings in, at the versions that exported it; oasis-gen itself is the wheel, never fetched by name
    required = metadata["required_packages_version"]
    assert "oasis-gen" not in required and {"mlflow", "nibabel", "pytorch-ignite", "fire"} <= set(required)
    assert required["mlflow"] == importlib.metadata.version("mlflow")
    assert metadata["oasis_gen"]["install"]["wheel"] == f"wheels/{WHEEL}"
    assert metadata["oasis_gen"]["vqvae"]["top_num_embeddings"] == 8 and "RAS" in metadata["oasis_gen"]["data"][
        "orientation"]
    readme = (bundle / "docs" / "README.md").read_text()
    assert readme.startswith("# tiny_test_bundle") and '--bundle_root "$B"' in readme and "data_use.md" in readme
    assert "pip install oasis-gen" not in readme and f'pip install "$B/wheels/{WHEEL}"' in readme
    assert "Data Use Agreement" in (bundle / "docs" / "data_use.md").read_text()
    assert "python -m monai.bundle run inferring --bundle_root" in exported["stdout"]


def test_the_torchscript_reconstructs_as_the_checkpoint(exported):
    traced = torch.jit.load(str(exported["bundle"] / "models" / "model.ts"))
    network, _ = load_vqvae(exported["vqvae"])
    image = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(traced(image), network(image)[0].clamp(0, 1), atol=1e-5)


def test_the_copied_bundle_runs_inference_from_another_folder_with_monais_cli(exported, tmp_path):
    scans = write_png(tmp_path / "scans" / "new_scan.png", brain_slice(40, 7)).parent
    elsewhere, cwd = exported["elsewhere"], tmp_path / "somewhere_else"
    cwd.mkdir()
    done = run_bundle("run", "inferring", "--bundle_root", str(elsewhere), "--config_file",
                      str(elsewhere / "configs" / "inference.yaml"), "--input", str(scans), "--progress", "False",
                      "--tracking_uri", str(tmp_path / "mlruns"), cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = elsewhere / "eval" / "new_scan"
    assert (folder / "reconstruction.png").is_file() and (folder / "atypicality.npy").is_file()
    with open(elsewhere / "eval" / "summary.csv") as stream:
        [row] = list(csv.DictReader(stream))
    assert 0 < float(row["ssim_mean"]) <= 1 and float(row["atypicality_bits"]) > 0  # the priors were used
    assert not any((ROOT / "runs").glob("**/new_scan"))  # nothing went to the checkout


def test_monai_loads_the_bundle_as_a_workflow_and_exports_its_network(exported, tmp_path):
    elsewhere = exported["elsewhere"]
    done = run_bundle("ckpt_export", "network_def", "--filepath", str(tmp_path / "vqvae.ts"), "--ckpt_file",
                      str(elsewhere / "models" / "model.pt"), "--key_in_ckpt", "model", "--config_file",
                      str(elsewhere / "configs" / "inference.yaml"), "--bundle_root", str(elsewhere),
                      "--use_trace", "True", "--input_shape", "[1, 1, 32, 32]", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    traced = torch.jit.load(str(tmp_path / "vqvae.ts"))
    network, _ = load_vqvae(exported["vqvae"])
    image = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(traced(image)[0], network(image)[0], atol=1e-5)
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(config_file=str(elsewhere / "configs" / "inference.yaml"), workflow_type="infer",
                              bundle_root=str(elsewhere))
    assert Path(workflow.parser.get_parsed_content("vqvae_ckpt")) == elsewhere / "models" / "model.pt"
    if SCHEMA.is_file():
        done = run_bundle("verify_metadata", "--meta_file", str(elsewhere / "configs" / "metadata.json"),
                          "--filepath", str(SCHEMA), cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]


def test_an_existing_folder_or_zip_is_refused_and_left_as_it_was(exported, tmp_path):
    taken = tmp_path / "taken"
    write_png(taken / "mine.png", brain_slice(20, 1))
    with pytest.raises(ConfigError, match="already exists and is not an empty folder"):
        export_bundle(taken, exported["vqvae"])
    assert [p.name for p in taken.iterdir()] == ["mine.png"]
    (tmp_path / "fresh.zip").write_bytes(b"mine")
    with pytest.raises(ConfigError, match="fresh.zip already exists"):
        export_bundle(tmp_path / "fresh", exported["vqvae"])
    assert (tmp_path / "fresh.zip").read_bytes() == b"mine" and not (tmp_path / "fresh").exists()


def test_a_pipeline_stage_exports_the_bundle_and_replaces_it_when_run_again(exported, tmp_path):
    import textwrap

    from mlflow import MlflowClient

    from oasis_gen.commands.pipeline import load_pipeline
    from oasis_gen.commands.pipeline_runner import run_pipeline

    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: export
        variables: {{runs_dir: {tmp_path / "runs"}, tracking_uri: {tmp_path / "mlruns"}}}
        stages:
          bundle:
            bundle_export: {{out_dir: "${{runs_dir}}/bundle", vqvae_ckpt: {exported["vqvae"]},
                            prior_ckpt: {exported["priors"]["bottom"]}}}
            outputs: ["${{runs_dir}}/bundle/configs/inference.yaml"]
        """))
    bundle = tmp_path / "runs" / "bundle"
    results = run_pipeline(load_pipeline(path))
    assert [r.status for r in results] == ["ran"]
    assert (bundle / "models" / "prior_top.pt").is_file() and (tmp_path / "runs" / "bundle.zip").is_file()
    (bundle / "models" / "model.pt").write_bytes(b"stale")  # an earlier export, to be replaced
    assert [r.status for r in run_pipeline(load_pipeline(path), force=True)] == ["ran"]
    assert (bundle / "models" / "model.pt").read_bytes() == exported["vqvae"].read_bytes()
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["bundle", "bundle.zip", "logs", "pipeline"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.stage = 'export'")
    assert len(runs) == 2 and runs[0].data.params["builder"] == "oasis_gen.bundle.export.export_bundle"
    assert "configs/inference.yaml" in [a.path for a in client.list_artifacts(runs[0].info.run_id, "configs")]
    # a folder that is not an earlier export is never replaced
    other = tmp_path / "mine"
    write_png(other / "mine.png", brain_slice(20, 1))
    with pytest.raises(ConfigError, match="not an empty folder or an earlier export"):
        export_bundle(other, exported["vqvae"], replace=True)
    assert [p.name for p in other.iterdir()] == ["mine.png"]


def test_set_config_value_replaces_a_key_or_adds_it_after_the_imports():
    text = "imports:\n  - $import torch\n\n# users\ninput: null   # a scan\nbatch_size: 32\n"
    assert set_config_value(text, "batch_size", "8") == text.replace("batch_size: 32", "batch_size: 8")
    added = set_config_value(text, "bundle_root", '"."', "the folder")
    assert added.index('bundle_root: "."   # the folder\n') < added.index("input: null")


def readme_block(readme: str, section: str) -> list[str]:
    """The lines of the first shell block under a ``## section`` heading of a README."""
    text = readme.split(f"## {section}\n", 1)[1]
    return text.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()


def test_the_bundle_installs_in_a_fresh_virtual_environment_from_its_readme_and_runs(exported, tmp_path):
    """A colleague with the bundle's folder and a clean Python: the README's install commands, as written, build a
    virtual environment (packages from this machine's wheel cache and index, as pip is configured here; nothing of
    the checkout on sys.path), and MONAI's CLI in it runs ``inferring`` on a NIfTI volume."""
    colleague = tmp_path / "colleague"
    bundle = colleague / exported["elsewhere"].name
    shutil.copytree(exported["elsewhere"], bundle, ignore=shutil.ignore_patterns("eval"))
    scan = write_nifti(tmp_path / "scans" / "head.nii.gz", brain_volume((24, 26, 20)))
    readme = (bundle / "docs" / "README.md").read_text()
    install, run = readme_block(readme, "Install"), readme_block(readme, "Run it")
    assert re.match(rf"B={bundle.name}\s", install[0])  # the folder's own name, from the folder that holds it
    inferring = " ".join(line.rstrip("\\").strip() for line in run[:2]).replace("SCANS", str(scan))
    script = "\n".join(["set -euo pipefail", *install, inferring + " --progress False"])
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI", "OASIS_GEN_TRACEBACK")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    env["PIP_NO_COMPILE"] = "1"  # no .pyc files of torch and MLflow at install time: 3 minutes less, the same packages
    try:
        done = subprocess.run(["bash", "-c", script], cwd=colleague, env=env, capture_output=True, text=True,
                              timeout=1500)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
        python = colleague / ".venv" / "bin" / "python"
        where = subprocess.run([str(python), "-c", "import oasis_gen, sys; print(oasis_gen.__file__); print(sys.path)"],
                               cwd=colleague, env=env, capture_output=True, text=True, check=True).stdout
        assert str(colleague / ".venv") in where.splitlines()[0] and str(ROOT) not in where  # the wheel's code
    finally:
        shutil.rmtree(colleague / ".venv", ignore_errors=True)  # 1.8 GB
    folder = bundle / "eval" / "head"
    assert (folder / "reconstruction.nii.gz").is_file(), sorted(p.name for p in (bundle / "eval").iterdir())
    with open(bundle / "eval" / "summary.csv") as stream:
        [row] = list(csv.DictReader(stream))
    assert row["status"] == "ok" and 0 < float(row["ssim_mean"]) <= 1 and float(row["atypicality_bits"]) > 0

"""Where runs go and how often they log: ``MLFLOW_TRACKING_URI`` is honoured by every run of the project
(``--tracking_uri`` still wins), and MONAI's own ``--tracking mlflow`` switch neither fails nor logs anything twice."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import CONFIGS, ROOT, run_bundle, tiny_vqvae_overrides, write_oasis_slices
from mlflow import MlflowClient

from oasis_gen.commands.pipeline import load_pipeline
from oasis_gen.commands.ui import existing_store_uri
from oasis_gen.tracking.store import TRACKING_URI_ENV, default_tracking_uri, resolve_tracking_uri, sqlite_uri


def without_store(args: list[str]) -> list[str]:
    """Bundle overrides without their ``--tracking_uri``."""
    at = args.index("--tracking_uri")
    return args[:at] + args[at + 2:]


def test_the_environment_variable_is_the_default_store_and_an_explicit_one_wins(tmp_path, monkeypatch):
    monkeypatch.delenv(TRACKING_URI_ENV, raising=False)
    assert default_tracking_uri() == sqlite_uri(Path("mlruns") / "mlflow.db")
    monkeypatch.setenv(TRACKING_URI_ENV, str(tmp_path / "elsewhere"))
    assert default_tracking_uri() == sqlite_uri(tmp_path / "elsewhere" / "mlflow.db")
    assert resolve_tracking_uri(None) == default_tracking_uri()
    assert resolve_tracking_uri(str(tmp_path / "given")) == sqlite_uri(tmp_path / "given" / "mlflow.db")
    monkeypatch.setenv(TRACKING_URI_ENV, "http://tracking.example:5000")
    assert default_tracking_uri() == "http://tracking.example:5000"


def test_pipelines_and_the_ui_take_the_environment_variable(tmp_path, monkeypatch):
    demo = ROOT / "pipelines" / "demo.yaml"
    monkeypatch.setenv(TRACKING_URI_ENV, str(tmp_path / "store"))
    assert load_pipeline(demo).tracking_uri == str(tmp_path / "store")
    assert load_pipeline(demo, [f"tracking_uri={tmp_path / 'given'}"]).tracking_uri == str(tmp_path / "given")
    MlflowClient(resolve_tracking_uri(str(tmp_path / "store"))).search_experiments()  # creates the store
    assert existing_store_uri() == sqlite_uri(tmp_path / "store" / "mlflow.db")
    monkeypatch.delenv(TRACKING_URI_ENV)
    assert load_pipeline(demo).tracking_uri == "mlruns"


@pytest.mark.slow
def test_a_training_run_goes_to_the_environments_store_and_tracking_mlflow_logs_once(tmp_path):
    data = write_oasis_slices(tmp_path / "data", layout=(("train", 2, 4), ("validate", 1, 4)))
    store = tmp_path / "env_store"
    args = without_store(tiny_vqvae_overrides(data, tmp_path / "vqvae", tmp_path / "unused", max_epochs=2))
    done = run_bundle("run", "training", "--config_file", str(CONFIGS / "train.yaml"), "--tracking", "mlflow", *args,
                      env={TRACKING_URI_ENV: str(store)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "left out, so nothing is logged twice" in done.stdout + done.stderr
    client = MlflowClient(resolve_tracking_uri(str(store)))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [run.data.tags["stage"] for run in runs] == ["vqvae"]  # one run, in the environment's store
    run = runs[0]
    for key in ("train_loss", "val_ssim"):
        steps = Counter(metric.step for metric in client.get_metric_history(run.info.run_id, key))
        assert steps and max(steps.values()) == 1, (key, steps)  # each step logged once
    assert len(client.get_metric_history(run.info.run_id, "val_ssim")) == 2  # one per epoch


def test_the_command_line_and_the_pipelines_start_without_torch():
    # torch takes seconds to import: the CLI and the pipeline runner (which start every stage) must not pay for it
    import subprocess
    import sys

    code = "import sys, oasis_gen.commands.cli, oasis_gen.commands.pipeline_runner, oasis_gen.commands.ui; "
    done = subprocess.run([sys.executable, "-c", code + "print('torch' in sys.modules)"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]

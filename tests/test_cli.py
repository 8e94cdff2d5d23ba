"""The ``oasis-gen`` command: help of every command, options and pass-through overrides reaching the bundle, ``ui``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, run_bundle, write_oasis_slices
from mlflow import MlflowClient

from oasis_gen.commands.cli import BUNDLE_COMMANDS, build_parser, main, split_overrides
from oasis_gen.commands.ui import free_port
from oasis_gen.utils.errors import ConfigError

COMMANDS = [[], ["data"], ["data", "demo"], ["data", "check"], *([c.name] for c in BUNDLE_COMMANDS), ["pipeline"],
            ["pipeline", "run"], ["ui"]]


def oasis_gen(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``oasis-gen ...`` in a subprocess, as a user runs it."""
    return run_bundle(*args, cwd=cwd, module="oasis_gen")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "oasis-gen")
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: oasis-gen {' '.join(command)}".rstrip())
    assert "example" in text and f"  oasis-gen {' '.join(command[:1])}" in text


def test_console_script_is_installed():
    result = subprocess.run([str(Path(sys.executable).parent / "oasis-gen"), "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "pipeline" in result.stdout and "train-prior" in result.stdout


def test_unknown_options_are_passed_through_as_overrides():
    parser = build_parser()
    kept, passed = split_overrides(parser, ["-v", "train", "data", "--num_embeddings", "64", "--epochs", "3",
                                            "--channels=[8,16]", "--output-dir", "out", "--lr", "-0.5"])
    assert kept == ["-v", "train", "data", "--epochs", "3", "--output-dir", "out"]
    assert passed == ["--num_embeddings", "64", "--channels=[8,16]", "--lr", "-0.5"]
    # an override before the positional does not swallow it
    kept, passed = split_overrides(parser, ["evaluate", "--split", "validate", "--batch_size", "8", "data"])
    assert kept == ["evaluate", "--split", "validate", "data"] and passed == ["--batch_size", "8"]
    assert split_overrides(parser, ["data", "check", "x", "--seed", "1"]) == (["data", "check", "x", "--seed", "1"],
                                                                              [])
    with pytest.raises(ConfigError, match="an override needs a value: --augment VALUE"):
        split_overrides(parser, ["train", "--augment"])


def test_bad_config_and_missing_value_are_one_line_exit_2(capsys):
    assert main(["train", "--config", "nope.yaml"]) == 2
    assert capsys.readouterr().err.strip() == ("oasis-gen: error: config '--config': config file not found: "
                                               f"{ROOT / 'bundle' / 'configs' / 'nope.yaml'}")
    with pytest.raises(SystemExit) as done:
        main(["sample", "--seed"])  # a documented option without its value: argparse's usage error
    assert done.value.code == 2
    capsys.readouterr()
    assert main(["train", "--augment"]) == 2
    assert capsys.readouterr().err.strip().endswith("config 'augment': an override needs a value: --augment VALUE")


def test_ui_refuses_a_store_that_does_not_exist(tmp_path, capsys):
    assert main(["ui", "--store", str(tmp_path / "nothing"), "--port", str(free_port())]) == 2
    assert "no MLflow store here" in capsys.readouterr().err


@pytest.mark.slow
def test_typo_in_a_pass_through_override_gets_the_bundles_did_you_mean(tmp_path):
    data = write_oasis_slices(tmp_path / "data", size=32)
    result = oasis_gen("train", str(data), "--output-dir", str(tmp_path / "out"), "--tracking-uri",
                       str(tmp_path / "mlruns"), "--max_epoch", "3", cwd=tmp_path)
    assert result.returncode == 1  # the bundle's exit code, passed on
    assert ("config 'max_epoch': the config has no such setting (given as --max_epoch); did you mean --max_epochs?"
            in result.stderr)
    assert "Traceback" not in result.stderr
    assert "running: python -m monai.bundle run training --config_file" in result.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.slow
def test_options_and_pass_through_overrides_reach_the_bundle(tmp_path):
    data = write_oasis_slices(tmp_path / "data", size=32)
    out = tmp_path / "out"
    result = oasis_gen("train", str(data), "--output-dir", str(out), "--epochs", "1", "--image-size", "32",
                       "--batch-size", "4", "--tracking-uri", str(tmp_path / "mlruns"), "--experiment-name", "cli",
                       "--channels", "[8,16]", "--num_embeddings=16", "--embedding_dim", "8", "--progress", "false",
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["max_epochs"] == 1 and config["image_size"] == 32 and config["batch_size"] == 4
    assert config["channels"] == [8, 16] and config["num_embeddings"] == 16 and config["embedding_dim"] == 8
    assert torch.load(out / "checkpoints" / "model.pt", weights_only=True)["spec"]["num_embeddings"] == 16
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("cli").experiment_id])
    assert run.data.tags["stage"] == "vqvae" and "mlflow.parentRunId" not in run.data.tags


def _answer(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


@pytest.mark.slow
def test_ui_serves_the_store_over_http_and_stops_with_its_server(tmp_path):
    store = tmp_path / "mlruns"
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    shown = client.create_experiment("shown")  # creates the store
    port = free_port()
    log = tmp_path / "ui.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as output:
        ui = subprocess.Popen([sys.executable, "-m", "oasis_gen", "ui", "--store", str(store), "--port", str(port),
                               "--experiment", "shown"], stdout=output, stderr=subprocess.STDOUT, env=env,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while f"MLflow UI: {url}" not in log.read_text(errors="replace"):
            assert ui.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the UI did not start within 3 minutes"
            time.sleep(0.5)
        assert _answer(f"{url}/health") == 200 and _answer(url) == 200
        # the link to the experiment's runs, which MLflow 3's UI opens on (not on GenAI traces)
        assert f"  runs of experiment shown: {url}/#/experiments/{shown}/runs\n" in log.read_text()
        assert client.get_experiment(shown).tags["mlflow.experimentKind"] == "custom_model_development"
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=shown",
                                    timeout=10) as response:
            assert json.loads(response.read())["experiment"]["name"] == "shown"
        ui.send_signal(signal.SIGTERM)  # to oasis-gen only: it stops the server and its workers
        assert ui.wait(timeout=60) == 0
        time.sleep(1)
        assert _answer(f"{url}/health") is None
    finally:  # only if the test failed half-way: the server (its own process group) and oasis-gen
        for pid in _children(ui.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ui.pid, signal.SIGKILL)
        ui.wait(timeout=30)


def _children(pid: int) -> list[int]:
    """The processes a process started (Linux /proc), e.g. the MLflow server that ``oasis-gen ui`` started."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []

"""The MLflow UI as a user sees it: the real ``mlflow server`` on a store filled by a real run, in headless Chromium.

Needs Chromium (Debian's ``chromium``; ``$CHROMIUM`` names another binary): skipped without it, failed without it
when ``CI`` is set. ``OASIS_GEN_SCREENSHOTS=<folder>`` also writes screenshots of the pages checked there (the
README's come from ``scripts/screenshot_mlflow_ui.py`` on the project's own store).
"""

from __future__ import annotations

import os
import re
import socket
import sys
import urllib.request
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import ROOT, run_bundle, write_oasis_slices
from mlflow import MlflowClient
from mlflow.entities import Run
from PIL import Image

from oasis_gen.commands.ui import start_mlflow_ui, stop_mlflow_ui
from oasis_gen.tracking.store import resolve_tracking_uri
from oasis_gen.utils.errors import ConfigError, DataError

sys.path.insert(0, str(ROOT / "scripts"))
from screenshot_mlflow_ui import (  # noqa: E402
    HeadlessChromium,
    find_chromium,
    logged_pictures,
    picture_shown,
    run_url,
    show_metric_charts,
    take_screenshots,
)

pytestmark = pytest.mark.slow

SCREENSHOTS = os.environ.get("OASIS_GEN_SCREENSHOTS")


def require_chromium() -> str:
    """The Chromium binary; skip without it, except under CI, which must not skip this silently."""
    binary = find_chromium()
    if binary:
        return binary
    if os.environ.get("CI"):
        pytest.fail("Chromium not found, and CI is set: .ci/run installs it (apt-get install chromium)")
    pytest.skip("Chromium not found: apt-get install chromium (or set $CHROMIUM) to test the MLflow UI")


UI_PIPELINE = """\
name: ui
variables: {runs_dir: runs, tracking_uri: mlruns}
stages:
  vqvae:
    config: train.yaml
    run: training
    overrides: {dataset_dir: data, output_dir: "${runs_dir}/vqvae", image_size: 32, batch_size: 4, channels: [8, 16],
                num_embeddings: 16, embedding_dim: 8, max_epochs: 1, log_every: 1, progress: false}
    outputs: ["${runs_dir}/vqvae/checkpoints/model.pt"]
"""


def fill_store(work: Path) -> Path:
    """A store filled by a tiny real pipeline run (``oasis-gen pipeline run``); return the store folder."""
    write_oasis_slices(work / "data")
    (work / "ui.yaml").write_text(UI_PIPELINE)
    # one VQ-VAE epoch logs what the UI must show: params, metrics per epoch, pictures, the config; the pipeline
    # adds its parent run, with the stage nested under it
    result = run_bundle("pipeline", "run", "ui.yaml", cwd=work, module="oasis_gen")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work / "mlruns"


def as_javascript_prints(value: float) -> str:
    """A number as the UI prints it: JavaScript's shortest round-trip digits, plain for 1e-7 <= |x| < 1e21."""
    assert value == 0 or 1e-7 <= abs(value) < 1e21, value  # outside, both languages write exponents, differently
    text = format(Decimal(repr(float(value))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True)
class Shown:
    """What the UI must show, read from the store itself."""

    store: Path
    experiment: str
    experiment_id: str
    run: Run
    picture: str
    picture_file: Path

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def run_name(self) -> str:
        return self.run.info.run_name


@pytest.fixture(scope="module")
def shown(tmp_path_factory) -> Shown:
    require_chromium()  # before the training, which a skip would waste
    store = fill_store(tmp_path_factory.mktemp("ui"))
    uri = resolve_tracking_uri(str(store))
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("oasis-gen")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'vqvae'")
    assert len(runs) == 1 and "val_ssim" in runs[0].data.metrics
    # the per-epoch picture files (the same pictures logged with a step live under images/, for the image view)
    pictures = [path for path in logged_pictures(uri, runs[0].info.run_id) if not path.startswith("images/")]
    assert pictures, "the run logged no picture"
    picture_file = Path(client.download_artifacts(runs[0].info.run_id, pictures[0], str(store.parent / "dl")))
    return Shown(store, experiment.name, experiment.experiment_id, runs[0], pictures[0], picture_file)


@pytest.fixture(scope="module")
def ui(shown, tmp_path_factory):
    """The real MLflow server on the store; afterwards it and every process it started must be gone."""
    log = tmp_path_factory.mktemp("server") / "mlflow.log"
    process, url = start_mlflow_ui(shown.store, log_path=log)
    try:
        yield url
    finally:
        stop_mlflow_ui(process)
        with pytest.raises(ProcessLookupError):
            os.killpg(process.pid, 0)  # no process of its group is left


@pytest.fixture(scope="module")
def browser():
    with HeadlessChromium(require_chromium(), 1400, 1000, timeout=60) as chromium:
        yield chromium


def test_the_model_registry_shows_the_trained_vqvae(browser, ui, shown):
    versions = MlflowClient(resolve_tracking_uri(str(shown.store))).search_model_versions("name='oasis-gen-vqvae'")
    assert [v.run_id for v in versions] == [shown.run_id]
    browser.open(f"{ui}/#/models")
    browser.wait_for_text("oasis-gen-vqvae")
    browser.open(f"{ui}/#/models/oasis-gen-vqvae")
    browser.wait_for_text("Version 1")


def test_experiment_list_leads_to_the_run(browser, ui, shown):
    browser.open(f"{ui}/#/experiments")
    browser.wait_for_text("Experiments", shown.experiment)
    # MLflow 3 opens an experiment on its GenAI view until the user picks "Model training" in the sidebar
    assert browser.click_text("[role=button]", "Model training")
    assert browser.click_text("a", shown.experiment)
    # the pipeline's parent run is listed, with the stage's run nested (collapsed) under it
    parent = MlflowClient(resolve_tracking_uri(str(shown.store))).get_run(shown.run.data.tags["mlflow.parentRunId"])
    text = browser.wait_for_text(parent.info.run_name, "matching runs")
    assert parent.info.run_name.startswith("pipeline-ui-")
    assert re.search(r"(?<!\d)2 matching runs\b", text)  # the store holds the parent and its one stage
    assert shown.run_name.startswith("vqvae-32px-K16-D8-")
    assert f"/#/experiments/{shown.experiment_id}/runs" in browser.evaluate("location.href")


def test_run_page_shows_metrics_and_params(browser, ui, shown):
    browser.open(run_url(ui, shown.experiment_id, shown.run_id))
    ssim = as_javascript_prints(shown.run.data.metrics["val_ssim"])
    text = browser.wait_for_text(shown.run_name, "val_ssim", ssim, "image_size")
    assert f"val_ssim\n{ssim}\n" in text and "image_size\n32\n" in text  # each value beside its name
    assert shown.run_id in text


def test_run_page_of_a_run_not_in_the_store_says_so(browser, ui, shown):
    # the page reflects the store: a run id it does not hold shows an error, and no metrics
    browser.open(run_url(ui, shown.experiment_id, "0" * 32))
    text = browser.wait_for_text(f"Run ID {'0' * 32} does not exist")
    assert "val_ssim" not in text and shown.run_name not in text


def test_artifacts_page_shows_the_logged_picture(browser, ui, shown):
    browser.open(run_url(ui, shown.experiment_id, shown.run_id, f"artifacts/{shown.picture}"))
    name = shown.picture.rsplit("/", 1)[-1]
    browser.wait_for_text(name)
    on_disk = Image.open(shown.picture_file)
    assert picture_shown(browser, shown.picture) == on_disk.size  # decoded by the browser, at its real size
    served = [r["response"] for r in browser.responses
              if "get-artifact" in r["response"]["url"] and f"run_uuid={shown.run_id}" in r["response"]["url"]]
    assert served, [r["response"]["url"] for r in browser.responses]
    assert served[-1]["status"] == 200 and served[-1]["mimeType"] == "image/png"
    with urllib.request.urlopen(served[-1]["url"], timeout=30) as answer:
        assert answer.read() == shown.picture_file.read_bytes()


def test_metric_charts_are_drawn(browser, ui, shown):
    metrics = sorted(name for name in shown.run.data.metrics if "val_" in name)
    assert {"val_ssim", "val_psnr", "val_mse"} <= set(metrics)
    # the reconstructions logged with a step have a card of their own among the model metrics
    drawn = show_metric_charts(browser, ui, shown.experiment_id, shown.run_id, metrics, search="val_", cards=1)
    # the page draws the charts in view first (six at most) and the rest as it gets to them: under load the count can
    # be taken before those are drawn
    assert min(len(metrics), 6) <= drawn <= len(metrics) + 1 < len(shown.run.data.metrics)  # the others hidden
    if SCREENSHOTS:
        for path in take_screenshots(browser, ui, shown.run, shown.picture, SCREENSHOTS):
            assert Image.open(path).size == (1400, 1000)


def test_start_refuses_a_store_that_does_not_exist(tmp_path):
    with pytest.raises(DataError, match="nowhere/mlflow.db: no MLflow store here"):
        start_mlflow_ui(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()  # a mistyped store is not created
    with pytest.raises(ConfigError, match="already an MLflow server"):
        start_mlflow_ui("http://127.0.0.1:5000")


def test_start_refuses_a_port_in_use(tmp_path):
    MlflowClient(resolve_tracking_uri(str(tmp_path))).search_experiments()  # an empty store
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"config 'port': 127.0.0.1:{port} cannot be used"):
            start_mlflow_ui(tmp_path, port=port)

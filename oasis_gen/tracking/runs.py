"""What runs are called and tagged with, and runs written through a client: logged whole (:func:`log_run`), kept open
(:class:`OpenRun`), or given tags and new params (:func:`update_run`)."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import oasis_gen
from oasis_gen.tracking.experiments import experiment_id
from oasis_gen.tracking.store import resolve_tracking_uri
from oasis_gen.utils.files import write_text

logger = logging.getLogger(__name__)

RUN_NAME_FILE = "mlflow_run_name.txt"
# a pipeline passes its MLflow run id to the stages it starts; their runs become its children in the UI
PARENT_RUN_ENV = "OASIS_GEN_PARENT_RUN_ID"
PARENT_RUN_TAG = "mlflow.parentRunId"


_names: dict[tuple[str, str], str] = {}


def run_name(output_dir: str | Path, stage: str, *details: Any, resume: bool = False) -> str:
    """Name a run after what ran (``vqvae-128px-K256-...-<time>``); a resumed run keeps its first name.

    One name per output folder and stage within a process: MONAI may evaluate the config expression once for
    each handler that refers to it, and the trainer's and evaluator's handlers must share one MLflow run.
    """
    key = (str(Path(output_dir).resolve()), stage)
    if key in _names:
        return _names[key]
    marker = Path(output_dir) / RUN_NAME_FILE
    if resume and marker.is_file() and marker.read_text().strip():
        name = marker.read_text().strip()
    else:
        name = "-".join([stage, *(str(d) for d in details), time.strftime("%Y%m%d-%H%M%S")])
        write_text(marker, name + "\n")
    _names[key] = name
    return name


def git_commit(path: str | Path | None = None) -> str | None:
    """The git commit of the code that runs (None outside a repository)."""
    where = Path(path) if path else Path(oasis_gen.__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_tags(stage: str) -> dict[str, str]:
    """Tags every run carries: the git commit (MLflow's own tag, shown in its UI), stage and version.

    Under a pipeline (``OASIS_GEN_PARENT_RUN_ID`` set), also ``mlflow.parentRunId``: the UI nests the run there.
    """
    tags = {"stage": stage, "oasis_gen.version": oasis_gen.__version__}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    parent = os.environ.get(PARENT_RUN_ENV, "").strip()
    if parent:
        tags[PARENT_RUN_TAG] = parent
    return tags


def flatten_params(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings into MLflow params (``a.b``: value), values as text."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)[:6000]
    return flat


def data_params(report: Any) -> dict[str, Any]:
    """The data summary of a checked dataset as params: root, layout, slices and subjects per split."""
    params: dict[str, Any] = {"data.root": str(Path(report.root).resolve()), "data.layout": report.layout}
    for split, summary in report.summary.items():
        params[f"data.{split}.slices"] = summary.slices
        params[f"data.{split}.subjects"] = summary.subjects
    params["data.problems"] = len(report.problems)
    return params


def log_run(
    tracking_uri: str | None,
    experiment_name: str,
    run_name: str,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    artifacts: Sequence[str | Path | tuple[str | Path, str | None]] = (),
    tags: Mapping[str, str] | None = None,
) -> str:
    """Record a finished piece of work that has no engine (e.g. sampling) as one MLflow run; return its id.

    The experiment is created if missing, with its artifacts beside a local store (:func:`artifact_location`).
    ``artifacts`` are files or folders, each optionally paired with the artifact folder to log it under. The run
    is marked FAILED if logging breaks half-way, FINISHED otherwise.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    run_id = client.create_run(experiment_id(client, experiment_name, uri), run_name=run_name,
                               tags=dict(tags or {})).info.run_id
    try:
        now = int(time.time() * 1000)
        fresh = [Param(str(k), str(v)[:6000]) for k, v in (params or {}).items()]
        values = [Metric(str(k), float(v), now, 0) for k, v in (metrics or {}).items()]
        client.log_batch(run_id, params=fresh, metrics=values)  # MLflow splits it into batches it accepts
        for item in artifacts:
            path, folder = item if isinstance(item, tuple) else (item, None)
            if Path(path).is_dir():
                client.log_artifacts(run_id, str(path), artifact_path=folder)
            else:
                client.log_artifact(run_id, str(path), artifact_path=folder)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def update_run(client: Any, run_id: str, tags: Mapping[str, str], params: Mapping[str, str]) -> None:
    """Set a run's tags and log the params it does not have yet: a resumed run keeps its first values (MLflow
    refuses to change a param), with a warning naming those that differ."""
    from mlflow.entities import Param

    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    logged = client.get_run(run_id).data.params
    changed = {k: (logged[k], v) for k, v in params.items() if k in logged and logged[k] != v}
    if changed:
        logger.warning("resumed run keeps its first values of %s", ", ".join(
            f"{k} ({old} -> {new} not logged)" for k, (old, new) in changed.items()))
    fresh = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in logged]
    client.log_batch(run_id, params=fresh)  # MLflow splits it into batches it accepts


class OpenRun:
    """
    An MLflow run kept open while work goes on (a pipeline's own run): created with its tags, params and first
    artifacts, then tagged, measured and given artifacts as the work goes, and ended with a status.

    Args:
        tracking_uri: the store (a folder, ``.db`` file or URI; None: :func:`default_tracking_uri`).
        artifacts: files logged at the start; should logging them fail, the run is ended as FAILED.
    """

    def __init__(self, tracking_uri: str | None, experiment_name: str, run_name: str, tags: Mapping[str, str],
                 params: Mapping[str, Any], artifacts: Sequence[str | Path] = ()):
        from mlflow import MlflowClient

        uri = resolve_tracking_uri(tracking_uri)
        self.client = MlflowClient(uri)
        self.run_name = run_name
        self.tracking_uri = uri
        self.experiment_id = experiment = experiment_id(self.client, experiment_name, uri)
        self.run_id = self.client.create_run(experiment, run_name=run_name, tags=dict(tags)).info.run_id
        try:
            update_run(self.client, self.run_id, {}, params)
            for path in artifacts:
                self.artifact(path)
        except BaseException:
            self.end("FAILED")
            raise

    def tag(self, key: str, value: str) -> None:
        """Set a tag of the run."""
        self.client.set_tag(self.run_id, key, value)

    def metric(self, key: str, value: float) -> None:
        """Log a metric of the run."""
        self.client.log_metric(self.run_id, key, float(value))

    def artifact(self, path: str | Path, folder: str | None = None) -> None:
        """Log a file of the run (under ``folder``), if it exists."""
        if Path(path).is_file():
            self.client.log_artifact(self.run_id, str(path), artifact_path=folder)

    def end(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (FINISHED, FAILED, KILLED)."""
        self.client.set_terminated(self.run_id, status)

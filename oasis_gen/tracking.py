"""MLflow wiring: where the store is, what runs are called, what they are tagged with."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import oasis_gen
from oasis_gen.files import write_text

DEFAULT_STORE = "mlruns"
RUN_NAME_FILE = "mlflow_run_name.txt"
# a pipeline passes its MLflow run id to the stages it starts; their runs become its children in the UI
PARENT_RUN_ENV = "OASIS_GEN_PARENT_RUN_ID"
PARENT_RUN_TAG = "mlflow.parentRunId"


def sqlite_uri(db_path: str | Path) -> str:
    """Return the SQLite tracking URI of a database file, creating its folder."""
    path = Path(db_path).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def default_tracking_uri(store: str | Path = DEFAULT_STORE) -> str:
    """The project's default store: ``<store>/mlflow.db`` (MLflow 3 no longer takes a plain folder)."""
    return sqlite_uri(Path(store) / "mlflow.db")


def resolve_tracking_uri(uri: str | None) -> str:
    """Accept a URI, a ``.db`` file path or a folder; turn local paths into SQLite URIs."""
    if not uri:
        return default_tracking_uri()
    text = str(uri)
    if "://" in text:
        if text.startswith("file:"):
            return sqlite_uri(Path(text.split("file://", 1)[-1]) / "mlflow.db")
        return text
    path = Path(text)
    return sqlite_uri(path if path.suffix == ".db" else path / "mlflow.db")


def artifact_location(tracking_uri: str) -> str | None:
    """Keep artifacts beside a local SQLite store (``<store>/artifacts``); remote servers decide their own."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///"):]).parent / "artifacts").as_uri()
    return None


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


def experiment_id(client: Any, experiment_name: str, tracking_uri: str) -> str:
    """The id of an experiment, created if missing with its artifacts beside a local store."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(experiment_name, artifact_location=artifact_location(tracking_uri))
    except MlflowException:  # created by another process in the meantime
        return client.get_experiment_by_name(experiment_name).experiment_id


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
        for start in range(0, max(len(fresh), len(values)), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run_id, params=fresh[start:start + 100], metrics=values[start:start + 100])
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

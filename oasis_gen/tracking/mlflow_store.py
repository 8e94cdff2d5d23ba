"""MLflow wiring, all of the project's in one module: where the store is, what runs are called and tagged with,
runs logged whole (:func:`log_run`) or kept open (:class:`OpenRun`), what goes into the run of a MONAI
``MLFlowHandler`` (:func:`log_artifact`, :func:`log_picture`, :func:`update_run`), models and their registry
(:func:`log_model`, :func:`registered_versions`). MLflow itself is imported only where it is used, so that the
command line and the pipeline runner start without it."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import oasis_gen
from oasis_gen.utils.files import write_text

logger = logging.getLogger(__name__)

DEFAULT_STORE = "mlruns"
# tag of a registered model version: the SHA-256 of the checkpoint file it was built from
CHECKPOINT_TAG = "checkpoint_sha256"
# MLflow's own variable: where runs go when no store is given
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
RUN_NAME_FILE = "mlflow_run_name.txt"
# a pipeline passes its MLflow run id to the stages it starts; their runs become its children in the UI
PARENT_RUN_ENV = "OASIS_GEN_PARENT_RUN_ID"
PARENT_RUN_TAG = "mlflow.parentRunId"
# MLflow 3's UI opens an experiment of this kind on its runs, not on GenAI traces
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
# where `oasis-gen ui` serves the UI by default
DEFAULT_UI_URL = "http://127.0.0.1:5000"


def sqlite_uri(db_path: str | Path) -> str:
    """Return the SQLite tracking URI of a database file, creating its folder."""
    path = Path(db_path).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def default_tracking_uri(store: str | Path = DEFAULT_STORE) -> str:
    """The store of a run given none: ``MLFLOW_TRACKING_URI`` when it is set (as MLflow itself does), else the
    project's ``<store>/mlflow.db`` (MLflow 3 no longer takes a plain folder)."""
    environment = os.environ.get(TRACKING_URI_ENV, "").strip()
    if environment:
        return _store_uri(environment)
    return sqlite_uri(Path(store) / "mlflow.db")


def resolve_tracking_uri(uri: str | None) -> str:
    """Accept a URI, a ``.db`` file path or a folder; turn local paths into SQLite URIs; nothing: the default store
    (:func:`default_tracking_uri`)."""
    if not uri:
        return default_tracking_uri()
    return _store_uri(str(uri))


def handler_store(tracking_uri: str | None) -> str:
    """The store URI to give MONAI's ``MLFlowHandler``: :func:`resolve_tracking_uri` of the config's store.

    MONAI's handler prefers ``MLFLOW_TRACKING_URI`` to its argument and refuses a plain folder in it. Where the
    variable is set, it is pointed at this store within the process, so that the handler writes where the config
    says: the variable's store, resolved as everywhere else (a folder becomes its ``mlflow.db``), unless
    ``--tracking_uri`` named another.
    """
    uri = resolve_tracking_uri(tracking_uri)
    if os.environ.get(TRACKING_URI_ENV, "").strip():
        os.environ[TRACKING_URI_ENV] = uri
    return uri


def _store_uri(text: str) -> str:
    """A tracking URI from a URI, a ``.db`` file path or a folder."""
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


def single_mlflow_handler(handlers: Sequence[Any], keep: int = 1) -> list[Any]:
    """An engine's handlers with only the first ``keep`` ``MLFlowHandler``s (the project's own).

    The bundle configs log to MLflow themselves (with their own handler, or with :func:`log_run` at the end:
    ``keep=0``). MONAI's ``--tracking mlflow`` appends another ``MLFlowHandler`` to the same handler lists, with the
    config's own store and run name, which would log every figure twice; it is left out here (with a log line), so
    that the switch neither fails nor doubles anything.
    """
    from monai.handlers import MLFlowHandler

    kept: list[Any] = []
    seen = 0
    for handler in handlers:
        if isinstance(handler, MLFlowHandler):
            if seen >= keep:
                logger.info("MLflow tracking is built into this config: the MLFlowHandler added by --tracking is "
                            "left out, so nothing is logged twice")
                continue
            seen += 1
        kept.append(handler)
    return kept


def model_requirements() -> list[str]:
    """The pip requirements of a logged model: the project's own dependencies (its extras left out), torch at the
    version that trained it."""
    from importlib import metadata

    import torch

    try:
        declared = metadata.requires("oasis-gen") or []
    except metadata.PackageNotFoundError:  # a source tree on sys.path without an install
        declared = []
    kept = [r for r in declared if "extra ==" not in r and not r.startswith("torch")]
    return [f"torch=={torch.__version__.split('+')[0]}", *kept]


@contextlib.contextmanager
def fluent_store(tracking_uri: str | None) -> Iterator[str]:
    """Point MLflow's fluent API (``mlflow.start_run``, ``mlflow.pytorch.load_model("models:/...")``) at a store for
    the duration of a block, and leave the process as it was afterwards.

    ``mlflow.set_tracking_uri`` also sets ``MLFLOW_TRACKING_URI`` for subprocesses to inherit; left behind, it would
    send every later run of the process's children (and MONAI's handlers, which prefer the variable) to this store.
    """
    import mlflow

    saved = os.environ.get(TRACKING_URI_ENV)
    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(None)  # MLflow's unset state (it also removes the variable) ...
        if saved is not None:
            os.environ[TRACKING_URI_ENV] = saved  # ... and the variable as it was


def log_model(
    tracking_uri: str | None,
    run_id: str,
    network: Any,
    example: Any,
    name: str = "network",
    registered_model_name: str | None = None,
    description: str | None = None,
    checkpoint: str | Path | None = None,
) -> Any:
    """Log a network as an MLflow model of a run (``mlflow.pytorch``), with its signature and an input example, and
    register it under ``registered_model_name`` (None: logged only). Returns MLflow's ``ModelInfo``.

    The model carries the oasis_gen package (``code_paths``), so that ``mlflow.pytorch.load_model`` works where the
    project is not installed, and the project's own requirements (:func:`model_requirements`) instead of MLflow's
    guess at them.

    Args:
        tracking_uri: the store of the run (a folder, ``.db`` file or URI; None: :func:`default_tracking_uri`).
        run_id: the run the model belongs to (it may have ended: it is reopened and ended again).
        network: a ``torch.nn.Module`` taking and returning one tensor (e.g. a
            :class:`~oasis_gen.networks.vqvae.VQVAEReconstruction`).
        example: an input tensor for the signature and the example (e.g. ``[1, 1, S, S]``).
        description: text of the registered version (e.g. what the model was trained on).
        checkpoint: the checkpoint file the network was built from: its SHA-256 tags the registered version, so
            that runs using the checkpoint can name the version (:func:`registered_versions`).
    """
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    network = network.eval()
    example = torch.as_tensor(example)
    with torch.no_grad():
        output = network(example)
    signature = infer_signature(example.numpy(), output.numpy())
    requirements = model_requirements()
    uri = resolve_tracking_uri(tracking_uri)
    with fluent_store(uri):
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(network, name=name, signature=signature, input_example=example.numpy(),
                                            code_paths=[str(Path(oasis_gen.__file__).resolve().parent)],
                                            pip_requirements=requirements,
                                            registered_model_name=registered_model_name)
        if registered_model_name and info.registered_model_version is not None:
            client, version = mlflow.MlflowClient(uri), str(info.registered_model_version)
            if description:
                client.update_model_version(registered_model_name, version, description=description)
            if checkpoint is not None:
                from oasis_gen.networks.spec import file_sha256

                client.set_model_version_tag(registered_model_name, version, CHECKPOINT_TAG, file_sha256(checkpoint))
    return info


def registered_versions(tracking_uri: str | None, checkpoint: str | Path | None) -> str | None:
    """The registered model versions of a checkpoint file in a store, as ``name/version`` text (``a/1, b/2``), or
    None when none is registered there (or the file is missing). Evaluation, sampling and inference runs record it,
    so the model registry leads to them and they to the model."""
    if checkpoint is None or not Path(str(checkpoint)).is_file():
        return None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from oasis_gen.networks.spec import file_sha256  # here: torch is not loaded for the CLI and the pipelines

    digest = file_sha256(checkpoint)
    try:
        versions = MlflowClient(resolve_tracking_uri(tracking_uri)).search_model_versions(
            f"tags.{CHECKPOINT_TAG} = '{digest}'")
    except MlflowException as err:  # a store without a registry (some servers): nothing to name
        logger.debug("no model registry in %s: %s", tracking_uri, err)
        return None
    return ", ".join(sorted(f"{v.name}/{v.version}" for v in versions)) or None


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


def mark_model_training(client: Any, experiment_id: str) -> None:
    """Mark an experiment as model training (``mlflow.experimentKind``), so MLflow 3's UI opens it on its runs."""
    experiment = client.get_experiment(experiment_id)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)


def experiment_id(client: Any, experiment_name: str, tracking_uri: str) -> str:
    """The id of an experiment, created if missing with its artifacts beside a local store, marked as model training."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is not None:
        found = experiment.experiment_id
    else:
        try:
            found = client.create_experiment(experiment_name, artifact_location=artifact_location(tracking_uri))
        except MlflowException:  # created by another process in the meantime
            found = client.get_experiment_by_name(experiment_name).experiment_id
    mark_model_training(client, found)
    return found


def ui_base(tracking_uri: str | None, ui_url: str = DEFAULT_UI_URL) -> str:
    """Where a browser finds the UI of a store: the tracking server itself, or ``oasis-gen ui``'s address."""
    uri = resolve_tracking_uri(tracking_uri)
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else ui_url.rstrip("/")


def experiment_runs_url(base: str, experiment: str) -> str:
    """The UI page listing an experiment's runs."""
    return f"{base}/#/experiments/{experiment}/runs"


def run_url(base: str, experiment: str, run_id: str) -> str:
    """The UI page of one run."""
    return f"{base}/#/experiments/{experiment}/runs/{run_id}"


def dataset_name(split: str, root: str | Path) -> str:
    """The name a split of a data folder goes by in MLflow: ``<split>:<folder>`` (relative to here when inside)."""
    folder = Path(root).expanduser().resolve()
    try:
        shown = str(folder.relative_to(Path.cwd().resolve()))
    except ValueError:
        shown = str(folder)
    return f"{split}:{shown}"


def split_dataset(split: str, records: Sequence[Mapping[str, Any]], root: str | Path) -> Any:
    """A split's slices as an MLflow dataset: one row per slice (file relative to the folder, its size in bytes,
    subject, slice), named by :func:`dataset_name`, with the folder as its source; MLflow's digest of the rows
    tells splits of different data apart."""
    import mlflow.data
    import pandas

    folder = Path(root).expanduser().resolve()
    rows = []
    for record in records:
        path = Path(str(record["image"])).expanduser().resolve()
        try:
            shown = str(path.relative_to(folder))
        except ValueError:
            shown = str(path)
        rows.append({"image": shown, "bytes": path.stat().st_size if path.is_file() else -1,
                     "subject": str(record.get("subject", "")), "slice": int(record.get("slice", 0))})
    frame = pandas.DataFrame(rows, columns=["image", "bytes", "subject", "slice"])
    return mlflow.data.from_pandas(frame, source=str(folder), name=dataset_name(split, folder))


def log_datasets(client: Any, run_id: str, splits: Mapping[str, Sequence[Mapping[str, Any]]],
                 root: str | Path) -> None:
    """Log each split as an input of a run (context: the split), unless the run has it already (a resumed run)."""
    from mlflow.entities import DatasetInput, InputTag

    logged = {(i.dataset.name, i.dataset.digest) for i in client.get_run(run_id).inputs.dataset_inputs}
    inputs = []
    for split, records in splits.items():
        dataset = split_dataset(split, records, root)
        if (dataset.name, dataset.digest) not in logged:
            inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", split)]))
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


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


def run_id_of(run_handler: Any) -> str | None:
    """The MLflow run a MONAI ``MLFlowHandler`` writes to (None when tracking is off or not started)."""
    run = getattr(run_handler, "cur_run", None) if run_handler is not None else None
    return run.info.run_id if run is not None else None


def log_artifact(run_handler: Any, path: str | Path, artifact_path: str | None = None,
                 run_id: str | None = None) -> None:
    """Log a file to the run of a MONAI ``MLFlowHandler`` (or to ``run_id`` through its client), if tracking is on."""
    run_id = run_id or run_id_of(run_handler)
    if run_id is not None and Path(path).is_file():
        run_handler.client.log_artifact(run_id, str(path), artifact_path=artifact_path)


def log_picture(run_handler: Any, path: str | Path, picture: Any, key: str, step: int) -> None:
    """Log a picture saved at ``path`` to the run of a MONAI ``MLFlowHandler``, if tracking is on: as the artifact
    ``<key>/<file name>`` (a stable path to download) and as the image ``key`` at ``step`` (``log_image``), so
    that the MLflow UI's image view steps through the epochs."""
    import numpy as np

    run_id = run_id_of(run_handler)
    if run_id is None:
        return
    log_artifact(run_handler, path, artifact_path=key, run_id=run_id)
    run_handler.client.log_image(run_id, np.ascontiguousarray(picture), key=key, step=int(step))


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

"""MLflow wiring, one job a module: where the store is (:mod:`~oasis_gen.tracking.store`), what runs are called and
tagged with and runs written through a client (:mod:`~oasis_gen.tracking.runs`), experiments
(:mod:`~oasis_gen.tracking.experiments`), what goes into the run of a MONAI ``MLFlowHandler``
(:mod:`~oasis_gen.tracking.mlflow_handler`), models and their registry (:mod:`~oasis_gen.tracking.models`), the
data a run trains on (:mod:`~oasis_gen.tracking.datasets`), links into the UI (:mod:`~oasis_gen.tracking.ui_links`).

Every public name is importable from here (``oasis_gen.tracking.run_tags``). MLflow itself (and torch) is imported
only where it is used, so that the command line and the pipeline runner start without them.
"""

from oasis_gen.tracking.datasets import dataset_name, log_datasets, split_dataset
from oasis_gen.tracking.experiments import EXPERIMENT_KIND_TAG, MODEL_TRAINING, experiment_id, mark_model_training
from oasis_gen.tracking.mlflow_handler import log_artifact, log_picture, run_id_of, single_mlflow_handler
from oasis_gen.tracking.models import CHECKPOINT_TAG, log_model, model_requirements, registered_versions
from oasis_gen.tracking.runs import (
    PARENT_RUN_ENV,
    PARENT_RUN_TAG,
    RUN_NAME_FILE,
    OpenRun,
    data_params,
    flatten_params,
    git_commit,
    log_run,
    run_name,
    run_tags,
    update_run,
)
from oasis_gen.tracking.store import (
    DEFAULT_STORE,
    TRACKING_URI_ENV,
    artifact_location,
    default_tracking_uri,
    fluent_store,
    handler_store,
    resolve_tracking_uri,
    sqlite_uri,
)
from oasis_gen.tracking.ui_links import DEFAULT_UI_URL, experiment_runs_url, run_url, ui_base

__all__ = [
    "CHECKPOINT_TAG",
    "DEFAULT_STORE",
    "DEFAULT_UI_URL",
    "EXPERIMENT_KIND_TAG",
    "MODEL_TRAINING",
    "PARENT_RUN_ENV",
    "PARENT_RUN_TAG",
    "RUN_NAME_FILE",
    "TRACKING_URI_ENV",
    "OpenRun",
    "artifact_location",
    "data_params",
    "dataset_name",
    "default_tracking_uri",
    "experiment_id",
    "experiment_runs_url",
    "flatten_params",
    "fluent_store",
    "git_commit",
    "handler_store",
    "log_artifact",
    "log_datasets",
    "log_model",
    "log_picture",
    "log_run",
    "mark_model_training",
    "model_requirements",
    "registered_versions",
    "resolve_tracking_uri",
    "run_id_of",
    "run_name",
    "run_tags",
    "run_url",
    "single_mlflow_handler",
    "split_dataset",
    "sqlite_uri",
    "ui_base",
    "update_run",
]

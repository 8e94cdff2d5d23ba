"""Experiments: found or created (artifacts beside a local store), marked as model training for MLflow 3's UI."""

from __future__ import annotations

from typing import Any

from oasis_gen.tracking.store import artifact_location

# MLflow 3's UI opens an experiment of this kind on its runs, not on GenAI traces
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


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

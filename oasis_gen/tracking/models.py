"""Networks logged as MLflow models, with the project's requirements, and the registered versions of a checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import oasis_gen
from oasis_gen.tracking.store import fluent_store, resolve_tracking_uri

logger = logging.getLogger(__name__)

# tag of a registered model version: the SHA-256 of the checkpoint file it was built from
CHECKPOINT_TAG = "checkpoint_sha256"


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

"""The record of a training or evaluation run in MLflow: tags, params, datasets, its configuration, its model."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from ignite.engine import Engine, Events
from monai.handlers import MLFlowHandler

from oasis_gen.tracking.datasets import log_datasets
from oasis_gen.tracking.experiments import mark_model_training
from oasis_gen.tracking.mlflow_handler import log_artifact, run_id_of
from oasis_gen.tracking.models import log_model
from oasis_gen.tracking.runs import update_run
from oasis_gen.utils.errors import CheckpointError
from oasis_gen.utils.files import write_text
from oasis_gen.utils.plain import plain

logger = logging.getLogger(__name__)


class RunRecorder:
    """Tag the MLflow run when it starts; at the end write the run's configuration and log it with the model.

    Args:
        run_handler: the MLFlowHandler whose run is recorded (None: only the files are written).
        output_dir: where ``config.yaml`` is written.
        config: the values the run used (after overrides), saved as ``config.yaml`` and logged.
        params: MLflow params; a resumed run keeps the values it has and logs only new ones (MLflow refuses
            to change a param).
        tags: tags set on the run (git commit, stage, ...).
        artifacts: files logged when the engine completes (e.g. the best checkpoint), if they exist.
        model: builds the trained network to log as an MLflow model when the engine completes (e.g. from the best
            checkpoint); None: no model is logged.
        model_checkpoint: the checkpoint ``model`` is built from (its SHA-256 tags the registered version).
        model_example: an input of ``model`` for its signature and input example.
        registered_model_name: the model registry name the model is registered under (None: not registered).
        tracking_uri: the store of the run (where the model and its registered version go).
        model_name: the logged model's name in the run (not ``model``: the run's ``model/`` artifacts hold the
            checkpoint).
        datasets: the slice records of each split the run trains on, logged as the run's inputs, named by split and
            data folder (``train:data/demo``) with MLflow's digest
            (:func:`oasis_gen.tracking.datasets.log_datasets`).
        data_root: the data folder of ``datasets``.

    The run's experiment is marked as model training (MLflow 3's UI then opens it on its runs).
    """

    def __init__(self, run_handler: MLFlowHandler | None, output_dir: str | Path, config: Mapping[str, Any],
                 params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None,
                 artifacts: Sequence[str | Path] = (), model: Callable[[], torch.nn.Module] | None = None,
                 model_example: Any = None, registered_model_name: str | None = None,
                 tracking_uri: str | None = None, model_checkpoint: str | Path | None = None,
                 model_name: str = "network", datasets: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                 data_root: str | Path | None = None):
        self.run_handler = run_handler
        self.output_dir = Path(output_dir)
        self.config = dict(config)
        self.params = {k: str(v) for k, v in (params or {}).items()}
        self.run_id: str | None = None
        self.tags = dict(tags or {})
        self.artifacts = [Path(a) for a in artifacts]
        self.model, self.model_example = model, model_example
        self.registered_model_name = registered_model_name or None
        self.tracking_uri = tracking_uri
        self.model_checkpoint = model_checkpoint
        self.model_name = model_name
        self.datasets = dict(datasets or {})
        self.data_root = data_root

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.COMPLETED, self._complete)

    def _start(self, engine: Engine) -> None:
        config_file = write_text(self.output_dir / "config.yaml",
                                        yaml.safe_dump(plain(self.config), sort_keys=False))
        run_id = self.run_id = run_id_of(self.run_handler)
        if run_id is None:
            return
        client = self.run_handler.client
        update_run(client, run_id, self.tags, self.params)
        mark_model_training(client, client.get_run(run_id).info.experiment_id)
        if self.datasets and self.data_root is not None:
            log_datasets(client, run_id, self.datasets, self.data_root)
        log_artifact(self.run_handler, config_file)

    def _complete(self, engine: Engine) -> None:
        # the MLFlowHandler may already have closed its run (it forgets it then): use the id kept at start
        for path in self.artifacts:
            log_artifact(self.run_handler, path, artifact_path="model", run_id=self.run_id)
        if self.model is not None and self.run_id is not None:
            try:
                network = self.model()
            except CheckpointError as err:  # e.g. no validation ran, so no best checkpoint was saved
                logger.warning("no MLflow model logged: %s", err)
                return
            info = log_model(self.tracking_uri, self.run_id, network, self.model_example, name=self.model_name,
                             registered_model_name=self.registered_model_name, checkpoint=self.model_checkpoint,
                             description=f"trained by MLflow run {self.run_id} ({self.output_dir})")
            version = f" as {self.registered_model_name} version {info.registered_model_version}" \
                if self.registered_model_name else ""
            logger.info("logged the trained network as an MLflow model (%s)%s", info.model_uri, version)

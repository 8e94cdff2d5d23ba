"""The run of a MONAI ``MLFlowHandler``: one such handler an engine, the run it writes to, files and pictures there."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


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

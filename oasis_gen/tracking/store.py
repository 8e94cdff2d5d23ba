"""Where runs go: the tracking URI (a server, or a local SQLite store), the store given to MONAI's MLFlowHandler,
artifacts beside a local store, MLflow's fluent API pointed at a store for a while."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

DEFAULT_STORE = "mlruns"
# MLflow's own variable: where runs go when no store is given
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


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

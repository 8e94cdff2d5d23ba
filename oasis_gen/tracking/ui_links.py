"""Links into the MLflow UI: where a browser finds it, the page of an experiment's runs and of one run."""

from __future__ import annotations

from oasis_gen.tracking.store import resolve_tracking_uri

# where `oasis-gen ui` serves the UI by default
DEFAULT_UI_URL = "http://127.0.0.1:5000"


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

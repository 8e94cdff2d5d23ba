"""The MLflow UI on the project's store: start ``mlflow server`` in its own process group, wait until it answers,
stop it with every process it started."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from oasis_gen.tracking.store import DEFAULT_STORE, TRACKING_URI_ENV, artifact_location, resolve_tracking_uri
from oasis_gen.utils.errors import ConfigError, DataError

START_TIMEOUT_S = 120.0  # a cold start on a busy 2-core machine takes 10-30 s (imports, database migrations)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on host that nothing listens on right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def ui_url(host: str, port: int) -> str:
    """The address a browser on this machine opens for a server bound to host:port."""
    shown = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def mlflow_server_command(tracking_uri: str, host: str, port: int, workers: int = 1) -> list[str]:
    """The ``mlflow server`` command line that serves a store, its artifacts kept beside a local store."""
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri, "--host", host,
               "--port", str(port), "--workers", str(workers)]
    artifacts = artifact_location(tracking_uri)
    if artifacts:  # experiments created in the UI keep their artifacts beside the store, like the pipeline's
        command += ["--default-artifact-root", artifacts, "--artifacts-destination", artifacts]
    return command


def existing_store_uri(tracking_uri: str | Path | None = None) -> str:
    """The tracking URI of a store that exists (a folder, a ``.db`` file or a URI; default ``MLFLOW_TRACKING_URI``
    when set, else ``mlruns``).

    A local store must already hold its database: a mistyped path would otherwise become a new, empty store.
    """
    text = str(tracking_uri) if tracking_uri is not None else (os.environ.get(TRACKING_URI_ENV, "").strip()
                                                               or DEFAULT_STORE)
    if "://" not in text:
        path = Path(text).expanduser()
        database = path if path.suffix == ".db" else path / "mlflow.db"
        if not database.is_file():  # checked before resolving, which would create the folder
            raise DataError(database, "no MLflow store here (run a stage first, or name the folder that holds "
                                      "mlflow.db)")
    uri = resolve_tracking_uri(text)
    if uri.startswith(("http://", "https://")):
        raise ConfigError("tracking_uri", f"{uri} is already an MLflow server: open it in a browser")
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise DataError(uri[len("sqlite:///"):], "no MLflow store here (run a stage first)")
    return uri


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: a closed port is free
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ConfigError("port", f"{host}:{port} cannot be used ({err.strerror}); pick another port") from None


def wait_until_answering(url: str, process: subprocess.Popen, timeout: float = START_TIMEOUT_S,
                         log_path: str | Path | None = None) -> None:
    """Wait until ``<url>/health`` answers OK; raise if the server exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        code = process.poll()
        if code is not None:
            tail = Path(log_path).read_text(errors="replace")[-2000:] if log_path else ""
            raise RuntimeError(f"mlflow server exited with code {code} before answering at {url}" +
                               (f"; its log ends with:\n{tail}" if tail else ""))
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"mlflow server did not answer at {url} within {timeout:.0f} s")
        time.sleep(0.25)


def start_mlflow_ui(tracking_uri: str | Path | None = None, host: str = "127.0.0.1", port: int = 0, *,
                    workers: int = 1, log_path: str | Path | None = None,
                    timeout: float = START_TIMEOUT_S) -> tuple[subprocess.Popen, str]:
    """Start the MLflow UI on a store (a folder, a ``.db`` file or a URI; default ``mlruns``); return it and its URL.

    ``port=0`` picks a free port. The server runs in its own process group (``stop_mlflow_ui`` stops it and its
    workers); its output goes to ``log_path`` when given, else to this process's terminal. Returns once the server
    answers, so the URL can be opened at once.
    """
    uri = existing_store_uri(tracking_uri)
    if port:
        _check_port_free(host, port)
    else:
        port = free_port(host)
    # MLflow's job runner (GenAI jobs: scorers, trace archival) starts a dozen extra processes the UI does not need
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(log_path, "ab") if log_path else None  # the child keeps its own descriptor
    try:
        process = subprocess.Popen(mlflow_server_command(uri, host, port, workers), env=env, start_new_session=True,
                                   stdout=log, stderr=subprocess.STDOUT if log else None, stdin=subprocess.DEVNULL)
    finally:
        if log:
            log.close()
    url = ui_url(host, port)
    try:
        wait_until_answering(url, process, timeout, log_path)
    except BaseException:
        stop_mlflow_ui(process)
        raise
    return process, url


def stop_mlflow_ui(process: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """Stop the server and every process it started (its process group); return its exit code."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout)
            break
        except subprocess.TimeoutExpired:
            continue
    # workers may outlive the server by a moment; the group is gone once none answers signal 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except (ProcessLookupError, PermissionError):
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode


@contextlib.contextmanager
def mlflow_ui(tracking_uri: str | Path | None = None, host: str = "127.0.0.1", port: int = 0,
              **options) -> Iterator[str]:
    """Serve the MLflow UI on a store for the duration of a ``with`` block; yield its URL."""
    process, url = start_mlflow_ui(tracking_uri, host, port, **options)
    try:
        yield url
    finally:
        stop_mlflow_ui(process)

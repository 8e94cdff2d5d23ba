"""The bundle's configs and how to run one: ``python -m monai.bundle run <id> --config_file ... --key value ...``.

The ``oasis-gen`` commands and the pipeline stages all run the bundle configs through this one command line, in a
subprocess, exactly as a user would type it: there is no second way of training.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

import oasis_gen
from oasis_gen.utils.errors import ConfigError

__all__ = ["bundle_command", "config_keys", "config_path", "configs_dir", "override_args", "override_text",
           "run_bundle", "stop"]


def configs_dir() -> Path:
    """The bundle's ``configs`` folder beside the package (a source checkout or an editable install)."""
    path = Path(oasis_gen.__file__).resolve().parents[1] / "bundle" / "configs"
    if not path.is_dir():
        raise ConfigError("bundle", f"no bundle configs at {path}: oasis-gen needs its source checkout "
                                    "(install it with `pip install -e .` from the project folder)")
    return path


def config_path(name: str | Path, key: str = "config") -> Path:
    """A bundle config file: a bare file name is one of the bundle's configs, any other path is used as given."""
    path = Path(name).expanduser()
    if len(path.parts) == 1:
        path = configs_dir() / path
    if not path.is_file():
        raise ConfigError(key, f"config file not found: {path}")
    return path


def config_keys(paths: Sequence[Path]) -> set[str]:
    """The top-level keys of the merged config files (what ``--key`` overrides may name)."""
    keys: set[str] = set()
    for path in paths:
        try:
            content = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(str(path), f"cannot read the config: {err}".splitlines()[0]) from None
        if not isinstance(content, Mapping):
            raise ConfigError(str(path), "a bundle config must be a mapping of keys to values")
        keys.update(str(k) for k in content)
    return keys


def override_text(value: Any) -> str:
    """A value as command-line text that ``monai.bundle`` (python-fire) reads back as the same value."""
    if isinstance(value, (list, tuple, dict)):
        return repr(list(value) if isinstance(value, tuple) else value)
    return str(value)


def override_args(overrides: Mapping[str, Any]) -> list[str]:
    """``--key value`` arguments of a mapping of overrides."""
    return [item for key, value in overrides.items() for item in (f"--{key}", override_text(value))]


def bundle_command(run_id: str, configs: Sequence[Path], args: Iterable[str] = ()) -> list[str]:
    """The command line that runs ``run_id`` of the merged configs with ``--key value`` arguments."""
    files = str(configs[0]) if len(configs) == 1 else repr([str(c) for c in configs])
    return [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", files, *args]


def run_bundle(run_id: str, configs: Sequence[Path], args: Iterable[str] = ()) -> int:
    """Run a bundle config in a subprocess that shares this terminal; return its exit code."""
    command = bundle_command(run_id, configs, args)
    print("running: python " + shlex.join(command[1:]), file=sys.stderr, flush=True)
    process = subprocess.Popen(command)
    try:
        return process.wait()
    except KeyboardInterrupt:
        stop(process)
        raise


def stop(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """Stop a bundle run: an interrupt first (its handlers finish what they write), a kill if it does not end."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

"""Make ``python -m monai.bundle run`` report oasis-gen's errors as one clear line instead of a traceback."""

from __future__ import annotations

import ast
import difflib
import os
import sys
from types import TracebackType

from oasis_gen.utils.errors import ConfigError, find_user_error

_installed = False


def _hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    user_error = find_user_error(error)
    if user_error is None or os.environ.get("OASIS_GEN_TRACEBACK"):
        sys.__excepthook__(kind, error, tb)
        return
    print(f"oasis-gen: error: {user_error}\n(set OASIS_GEN_TRACEBACK=1 for the full traceback)", file=sys.stderr)


def install_error_hook() -> None:
    """Print oasis-gen errors raised anywhere in a bundle run as one message (other errors keep their traceback)."""
    global _installed
    if not _installed:
        sys.excepthook = _hook
        _installed = True


# arguments of `python -m monai.bundle run` itself, not config keys
RUN_ARGUMENTS = {"config_file", "meta_file", "logging_file", "tracking", "args_file", "run_id", "init_id", "final_id"}


def override_keys(argv: list[str]) -> list[str]:
    """The ``--key`` names given on a ``monai.bundle run`` command line (top-level part of ``a#b`` ids)."""
    keys = []
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            name = token[2:].split("=", 1)[0]
            keys.append(name.replace("::", "#").split("#", 1)[0])
    return keys


def check_overrides(argv: list[str] | None = None) -> None:
    """Refuse command-line keys the config does not have (MONAI would silently add them): a typo is an error."""
    from monai.bundle import ConfigParser

    argv = list(sys.argv if argv is None else argv)
    if "run" not in argv or "--config_file" not in argv:
        return  # not a `monai.bundle run` command line (e.g. called from Python)
    files = argv[argv.index("--config_file") + 1]
    # one path, or several given as a list literal: "['train.yaml','multi_gpu_train.yaml']"
    config = ConfigParser.load_config_files(ast.literal_eval(files) if files.lstrip().startswith("[") else files)
    for key in override_keys(argv[argv.index("run") + 1:]):
        if key in RUN_ARGUMENTS or key in config:
            continue
        close = difflib.get_close_matches(key, list(config), n=1)
        hint = f"; did you mean --{close[0]}?" if close else ""
        raise ConfigError(key, f"the config has no such setting (given as --{key}){hint}")

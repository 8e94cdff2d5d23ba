"""Errors that name the file and the problem, so users never see a traceback from deep inside torch."""

from __future__ import annotations

from os import PathLike


class OasisGenError(Exception):
    """Base class of the errors oasis-gen reports to users as one clear line."""


class DataError(OasisGenError):
    """A scan or folder that cannot be used: names the path and what is wrong with it."""

    def __init__(self, path: str | PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(OasisGenError):
    """A configuration value that cannot work: names the key and what is wrong with it."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"config '{key}': {problem}")


class CheckpointError(OasisGenError):
    """A checkpoint that is missing, corrupt or made for another model."""

    def __init__(self, path: str | PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def find_user_error(error: BaseException | None) -> OasisGenError | None:
    """The oasis-gen error at the root of an exception chain (MONAI wraps config errors in RuntimeErrors)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OasisGenError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None

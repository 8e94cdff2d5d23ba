"""Values as configs and the command line give them: yes/no flags and unset (``null``) settings."""

from __future__ import annotations

from typing import Any

from oasis_gen.utils.errors import ConfigError


def flag(value: object, key: str = "flag") -> bool:
    """Read a yes/no setting given on the command line as true/false/yes/no/1/0 (fire passes "false" as text)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off", "none", ""):
        return False
    raise ConfigError(key, f"expected true or false, not {value!r}")



_NULLS = ("", "none", "null")


def optional(value: Any) -> Any:
    """``None`` for an unset command-line value (``null``, ``None`` or empty text), else the value."""
    if value is None or (isinstance(value, str) and value.strip().lower() in _NULLS):
        return None
    return value


def check_positive_int(name: str, value: int) -> None:
    """ValueError naming ``name`` unless ``value`` is an integer of at least 1 (``True`` is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

"""Plain values for the YAML and JSON files the project writes (configs, summaries, pipeline plans)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def plain(value: Any) -> Any:
    """
    A copy of ``value`` that YAML and strict JSON can write: mappings (with text keys) and sequences item by item,
    one-element arrays and tensors as numbers, non-finite floats and any other object (a path) as text.
    """
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()  # numpy scalars, one-element arrays and tensors
        except (ValueError, RuntimeError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)

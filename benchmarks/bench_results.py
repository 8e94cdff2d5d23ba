"""Where a benchmark's result goes: ``<name>.md`` (the table people read) and ``<name>.json`` (every figure)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from oasis_gen.utils.files import write_text


def write_result(out_dir: str | Path, name: str, text: str, result: Any) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.md`` and ``.json`` atomically (values JSON cannot hold are written as text)."""
    out_dir = Path(out_dir)
    markdown = write_text(out_dir / f"{name}.md", text if text.endswith("\n") else text + "\n")
    data = write_text(out_dir / f"{name}.json", json.dumps(result, indent=2, default=str) + "\n")
    return markdown, data

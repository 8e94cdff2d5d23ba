"""A wheel of the project, for a bundle to carry the code its configs import (oasis-gen is not on PyPI).

The wheel is built by pip (``pip wheel``, the project's own setuptools build) from a copy of the source beside the
package (``pyproject.toml``, ``README.md``, ``LICENSE``, ``oasis_gen/``), so the checkout gets no build folders.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

import oasis_gen
from oasis_gen.utils.errors import ConfigError

PROJECT_FILES = ("pyproject.toml", "README.md", "LICENSE")


def source_root() -> Path:
    """The project folder holding the package's source (a checkout, or an editable install of one)."""
    root = Path(oasis_gen.__file__).resolve().parents[1]
    missing = [name for name in PROJECT_FILES if not (root / name).is_file()]
    if missing:
        raise ConfigError("export", f"the bundle carries a wheel of oasis-gen built from its source, and {root} "
                                    f"lacks {', '.join(missing)}: export from a checkout of the project")
    return root


def build_wheel(out_dir: str | Path) -> Path:
    """Build the project's wheel into ``out_dir`` (no dependencies, no network); return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = source_root()
    with tempfile.TemporaryDirectory(prefix="oasis_gen_wheel_") as folder:
        copy = Path(folder) / "source"
        shutil.copytree(root / "oasis_gen", copy / "oasis_gen", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in PROJECT_FILES:
            shutil.copy2(root / name, copy / name)
        built = Path(folder) / "wheel"
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
                               "--no-build-isolation", "--wheel-dir", str(built), str(copy)],
                              capture_output=True, text=True)
        wheels = sorted(built.glob("oasis_gen-*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            last = (done.stderr.strip().splitlines() or ["no wheel was written"])[-1]
            raise ConfigError("export", f"pip could not build the wheel of oasis-gen ({last}); the build needs "
                                        "setuptools>=77 in this environment")
        target = out / wheels[0].name
        shutil.copy2(wheels[0], target)
    return target


def installed_requirements() -> dict[str, str]:
    """What installing the wheel brings in that its code imports: each declared dependency (extras left out) at the
    version installed here, by its distribution name."""
    try:
        declared = metadata.requires("oasis-gen") or []
    except metadata.PackageNotFoundError:
        declared = []
    found: dict[str, str] = {}
    for text in declared:
        requirement = Requirement(text)
        if requirement.marker is not None and "extra" in str(requirement.marker):
            continue
        for name in (requirement.name, *sorted(requirement.extras)):  # monai[fire]: monai and fire
            try:
                found[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
    return found

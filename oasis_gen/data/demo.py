"""A synthetic demo cohort in the OASIS preprocessed-slices layout, built offline from the MNI152 template.

Real OASIS scans cannot be downloaded everywhere (and never inside tests), so every pseudo-subject here is
the skull-stripped MNI152 T1 template that ships inside the nilearn wheel, put through its own smooth random
deformation, bias field and intensity change with MONAI's random transforms. The slices are written exactly
like the ``keras_png_slices_*`` folders of the preprocessed OASIS release, so the same loader reads both. The
subjects themselves are made in :mod:`oasis_gen.data.demo_subjects`; this module splits, names and records them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from oasis_gen import __version__
from oasis_gen.data import demo_subjects
from oasis_gen.utils.files import is_temporary, write_text
from oasis_gen.utils.pictures import save_png
from oasis_gen.utils.threads import torch_threads

__all__ = ["build_demo_cohort", "demo_dataset", "SPLITS", "SPLIT_DIRS", "MANIFEST_NAME"]

logger = logging.getLogger(__name__)

SPLITS: tuple[str, str, str] = ("train", "validate", "test")
SPLIT_DIRS: dict[str, str] = {name: f"keras_png_slices_{name}" for name in SPLITS}
MANIFEST_NAME = "manifest.json"

# Bumped whenever the images change for the same arguments, so that an old cohort on disk is rebuilt.
_RECIPE_VERSION = 1
_CASE_PNG = re.compile(r"^case_\d{3,}_slice_\d+\.nii\.png$")

def build_demo_cohort(
    out_dir: str | Path,
    subjects: int = 60,
    size: int = 128,
    seed: int = 0,
    slices_per_subject: int = 32,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    progress: bool = True,
) -> Path:
    """Write an OASIS-layout PNG tree built from the MNI152 template; return the manifest path."""
    _check_args(subjects, size, seed, slices_per_subject, split)
    start = time.perf_counter()
    out = Path(out_dir)
    manifest_path = out / MANIFEST_NAME

    assignment = _assign_splits(subjects, split, seed)
    expected = {
        name: {_png_name(sid, k) for sid in ids for k in range(slices_per_subject)}
        for name, ids in assignment.items()
    }
    manifest = _manifest(subjects, size, seed, slices_per_subject, split, assignment)
    if _is_complete(out, manifest, expected):
        logger.info("demo cohort in %s already matches these arguments; not rebuilding", out)
        return manifest_path

    logger.info(
        "building demo cohort in %s: %d subjects x %d slices at %dx%d (seed %d)",
        out,
        subjects,
        slices_per_subject,
        size,
        size,
        seed,
    )
    out.mkdir(parents=True, exist_ok=True)
    # Drop the manifest first: it marks a cohort complete, and must not vouch for a half-rebuilt tree.
    manifest_path.unlink(missing_ok=True)
    _remove_stale(out, expected)

    # a subject is a few MB handled by many short ops: on 2 cores shared with other work, one thread built 12
    # subjects at 128 px in 6-7 s against 10-14 s with two, and a tiny test cohort in 0.14 s against 1.4 s
    with torch_threads(1), demo_subjects.no_meta():
        image, mask, voxel_mm = demo_subjects.load_template(size)
        transforms = demo_subjects.make_transforms(tuple(image.shape[1:]), voxel_mm)
        split_of = {sid: name for name, ids in assignment.items() for sid in ids}
        for index in tqdm(range(1, subjects + 1), desc="demo cohort", unit="subject", disable=not progress):
            sid = f"{index:03d}"
            slices = demo_subjects.make_subject(image, mask, transforms, seed, index, slices_per_subject)
            folder = out / SPLIT_DIRS[split_of[sid]]
            for k, pixels in enumerate(slices):
                save_png(pixels, folder / _png_name(sid, k))

    manifest["elapsed_seconds"] = round(time.perf_counter() - start, 3)
    write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    logger.info("demo cohort written in %.1f s: %s", manifest["elapsed_seconds"], manifest["slices"])
    return manifest_path


def _check_args(subjects: int, size: int, seed: int, slices_per_subject: int, split: Sequence[float]) -> None:
    """Raise ValueError naming the first argument that cannot make a cohort."""

    def is_int(value: Any) -> bool:
        # bool is an int subclass, but `subjects=True` is a bug, not a request for one subject.
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if not is_int(subjects) or subjects < 3:
        raise ValueError(
            f"subjects must be an integer >= 3 (one each for train, validate and test), got {subjects!r}"
        )
    if not is_int(size) or size < 16:
        raise ValueError(f"size must be an integer >= 16 pixels, got {size!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not is_int(slices_per_subject) or slices_per_subject < 1:
        raise ValueError(f"slices_per_subject must be an integer >= 1, got {slices_per_subject!r}")
    try:
        ratios = [float(r) for r in split]
    except (TypeError, ValueError):
        raise ValueError(f"split must be three numbers (train, validate, test), got {split!r}") from None
    if len(ratios) != 3 or any(not np.isfinite(r) or r <= 0 for r in ratios):
        raise ValueError(f"split must be three positive numbers (train, validate, test), got {split!r}")
    if abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"split ratios must add up to 1, got {split!r} (sum {sum(ratios):g})")


def _split_counts(subjects: int, split: Sequence[float]) -> list[int]:
    """Subjects per split by largest remainder, with at least one subject in every split."""
    quotas = [subjects * float(r) for r in split]
    counts = [int(q) for q in quotas]
    # Ties go to the earlier split so that the counts never depend on float noise in the ordering.
    by_remainder = sorted(range(3), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: subjects - sum(counts)]:
        counts[i] += 1
    for i in range(3):
        if counts[i] == 0:
            counts[max(range(3), key=lambda j: counts[j])] -= 1
            counts[i] = 1
    return counts


def _assign_splits(subjects: int, split: Sequence[float], seed: int) -> dict[str, list[str]]:
    """Shuffle the subject ids with a generator of their own and cut them into the three splits."""
    ids = [f"{i:03d}" for i in range(1, subjects + 1)]
    # A stream separate from the per-subject image streams (see _make_subject), never the global RNG.
    order = np.random.default_rng(np.random.SeedSequence([seed, 0xD5])).permutation(subjects)
    counts = _split_counts(subjects, split)
    assignment, start = {}, 0
    for name, count in zip(SPLITS, counts, strict=True):
        assignment[name] = sorted(ids[i] for i in order[start : start + count])
        start += count
    return assignment


def _png_name(sid: str, k: int) -> str:
    """The OASIS file name of slice `k` of subject `sid`."""
    return f"case_{sid}_slice_{k}.nii.png"


def _manifest(
    subjects: int,
    size: int,
    seed: int,
    slices_per_subject: int,
    split: Sequence[float],
    assignment: dict[str, list[str]],
) -> dict[str, Any]:
    """Everything that determines the cohort, plus the per-split ids and counts (elapsed time added later)."""
    import monai
    import nilearn

    return {
        "generator": {"name": "oasis_gen.data.demo", "version": __version__, "recipe": _RECIPE_VERSION},
        # The random streams of MONAI and the resampling of torch may change between releases.
        "software": {
            "monai": monai.__version__,
            "torch": torch.__version__,
            "nilearn": nilearn.__version__,
            "numpy": np.__version__,
        },
        "template": {
            "name": "MNI152 T1 1 mm (nilearn.datasets.load_mni152_template, resolution=1)",
            "mask": "nilearn.datasets.load_mni152_brain_mask(resolution=1)",
            "shape": list(demo_subjects.template_shape()),
        },
        "seed": seed,
        "subjects": subjects,
        "size": size,
        "slices_per_subject": slices_per_subject,
        "orientation": "rows anterior to posterior, columns subject left to right (neurological)",
        "png": {"mode": "L", "bits": 8, "name": "case_<subject>_slice_<k>.nii.png"},
        "transforms": demo_subjects.transform_record(size, slices_per_subject),
        "split": {
            "ratios": dict(zip(SPLITS, (float(r) for r in split), strict=True)),
            "folders": SPLIT_DIRS,
            "subjects": assignment,
        },
        "slices": {name: len(ids) * slices_per_subject for name, ids in assignment.items()},
    }


def _is_complete(out: Path, manifest: dict[str, Any], expected: dict[str, set[str]]) -> bool:
    """True when `out` holds a cohort made with the same parameters and exactly its files."""
    try:
        on_disk = json.loads((out / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(on_disk, dict):
        return False
    on_disk.pop("elapsed_seconds", None)
    if on_disk != manifest:
        return False
    for name, files in expected.items():
        folder = out / SPLIT_DIRS[name]
        try:
            present = {entry.name for entry in os.scandir(folder) if _CASE_PNG.match(entry.name)}
        except OSError:
            return False
        if present != files:
            return False
    return True


def _remove_stale(out: Path, expected: dict[str, set[str]]) -> None:
    """Delete case PNGs and temp files of an earlier cohort that the new one will not overwrite."""
    for name in SPLITS:
        folder = out / SPLIT_DIRS[name]
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            stale_png = _CASE_PNG.match(entry.name) and entry.name not in expected[name]
            if entry.is_file() and (stale_png or is_temporary(entry.name)):
                os.unlink(entry.path)


def demo_dataset(out_dir: str | Path = "data/demo") -> str:
    """The default dataset: the demo cohort in out_dir, built with the default settings if it is not there yet."""
    out = Path(out_dir)
    if not (out / MANIFEST_NAME).is_file():
        logger.info("no dataset given and no demo cohort in %s yet: building it (about half a minute)", out)
        build_demo_cohort(out)
    return str(out)

"""Find the scans under a root in each way OASIS users hold them, as per-split records MONAI datasets take.

Layouts, tried in this order:

- ``oasis-slices``: ``keras_png_slices_train|validate|test/`` (the ``keras_png_slices_seg_*`` label folders are
  ignored), files named ``case_<subject>_slice_<k>.nii.png``;
- ``split-folders``: ``train/ validate/ test/`` (also ``val``/``validation``), each optionally with ``files/``;
- ``flat``: any folder of PNG/JPEG slices and/or NIfTI/Analyze volumes (searched recursively), split by
  subject deterministically from a seed.

A slice record is ``{"image": path, "subject": id, "slice": k}``; a volume record is
``{"image": path, "subject": id, "volume": True}`` until :func:`oasis_gen.data.check.inspect_scans` cuts it
into slice records (adding ``"axis"``).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence
from pathlib import Path

from oasis_gen.data.readers import scan_kind, volume_stem
from oasis_gen.utils.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

SPLITS = ("train", "validate", "test")
SPLIT_FOLDERS = {
    "train": ("train", "training"),
    "validate": ("validate", "validation", "val", "valid"),
    "test": ("test", "testing"),
}
OASIS_SLICE_NAME = re.compile(r"^case_(?P<subject>.+?)_slice_(?P<slice>\d+)$", re.IGNORECASE)
GENERIC_SLICE_NAME = re.compile(r"^(?P<subject>.+?)[_-](?:slice[_-]?)?(?P<slice>\d+)$", re.IGNORECASE)
OASIS_SUBJECT = re.compile(r"(OAS\d_\d{4})", re.IGNORECASE)
# OASIS-1 discs hold raw, atlas-registered and segmented images of each session; the masked, bias-corrected
# atlas image is the one the published slices were cut from
OASIS1_PREFERRED = "_t88_masked_gfc"


def parse_slice_name(path: str | Path) -> tuple[str, int]:
    """Return (subject, slice index) from a slice file name; unknown names give (stem, 0)."""
    stem = Path(path).name
    stem = re.sub(r"(\.nii)?\.(png|jpe?g)$", "", stem, flags=re.IGNORECASE)
    for pattern in (OASIS_SLICE_NAME, GENERIC_SLICE_NAME):
        match = pattern.match(stem)
        if match:
            return match["subject"], int(match["slice"])
    return stem, 0


def parse_volume_subject(path: str | Path) -> str:
    """Return the subject of a volume: the OASIS id (``OAS1_0001``) when present, else the file stem."""
    stem = volume_stem(path)
    match = OASIS_SUBJECT.search(stem)
    return match[1].upper() if match else stem


def scan_record(path: Path) -> dict:
    """Make the record of one scan file (a slice, or a volume still to be cut)."""
    if scan_kind(path) == "volume":
        return {"image": str(path), "subject": parse_volume_subject(path), "volume": True}
    subject, index = parse_slice_name(path)
    return {"image": str(path), "subject": subject, "slice": index}


def list_scans(folder: Path, recursive: bool = True) -> list[Path]:
    """List the slice and volume files in a folder (one file per Analyze pair), skipping label folders."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    files = []
    for path in candidates:
        if not path.is_file() or scan_kind(path) is None:
            continue
        if any("seg" in part.lower() and part.lower().startswith("keras_png_slices") for part in path.parts):
            continue
        # an Analyze pair counts once, by its .img; a lone .hdr stays so the check can say its .img is missing
        if path.suffix.lower() == ".hdr" and path.with_suffix(path.suffix[:-3] + "img").exists():
            continue
        if path.suffix.lower() == ".hdr" and path.with_suffix(".IMG").exists():
            continue
        files.append(path)
    if any(OASIS1_PREFERRED in p.name for p in files):
        chosen = [p for p in files if scan_kind(p) == "slice" or OASIS1_PREFERRED in p.name]
        logger.info("OASIS-1 discs found: using the %d *%s volumes, ignoring %d other images",
                    sum(scan_kind(p) == "volume" for p in chosen), OASIS1_PREFERRED, len(files) - len(chosen))
        files = chosen
    return sorted(files)


def split_subjects(subjects: Sequence[str], ratios: Sequence[float], seed: int) -> dict[str, str]:
    """Assign each subject to a split, deterministically for a seed; no split left empty if it can be helped."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ConfigError("split_ratios", f"need three non-negative ratios (train, validate, test), got {ratios}")
    unique = sorted(set(subjects))
    random.Random(seed).shuffle(unique)
    total = sum(ratios)
    counts = [int(round(len(unique) * r / total)) for r in ratios[1:]]
    counts.insert(0, len(unique) - sum(counts))
    # every split with a positive ratio gets a subject when there are enough, taken from the largest
    if len(unique) >= sum(r > 0 for r in ratios):
        for i, ratio in enumerate(ratios):
            if ratio > 0 and counts[i] <= 0:
                donor = counts.index(max(counts))
                counts[donor] -= 1 - counts[i]
                counts[i] = 1
    assignment = {}
    start = 0
    for split, count in zip(SPLITS, counts, strict=True):
        for subject in unique[start:start + count]:
            assignment[subject] = split
        start += count
    return assignment


def detect_layout(root: Path) -> str:
    """Name the layout of a root: "oasis-slices", "split-folders" or "flat"."""
    if any((root / f"keras_png_slices_{split}").is_dir() for split in SPLITS):
        return "oasis-slices"
    if any((root / name).is_dir() for names in SPLIT_FOLDERS.values() for name in names):
        return "split-folders"
    return "flat"


def split_folder(root: Path, layout: str, split: str) -> Path | None:
    """Return the folder that holds a split in a split layout, or None if it is absent."""
    if layout == "oasis-slices":
        folder = root / f"keras_png_slices_{split}"
        return folder if folder.is_dir() else None
    for name in SPLIT_FOLDERS[split]:
        folder = root / name
        if folder.is_dir():
            return folder / "files" if (folder / "files").is_dir() else folder
    return None


def find_scans(
    root: str | Path, split_ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> tuple[str, dict[str, list[dict]]]:
    """Find the scans under root; return its layout name and the scan records of each split."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(root, "dataset folder not found")
    if root.is_file():
        if scan_kind(root) is None:
            raise DataError(root, "not a PNG/JPEG slice or a NIfTI/Analyze volume")
        return "file", {"train": [], "validate": [], "test": [scan_record(root)]}
    layout = detect_layout(root)
    splits: dict[str, list[dict]] = {}
    if layout == "flat":
        records = [scan_record(path) for path in list_scans(root)]
        if not records:
            raise DataError(root, "no PNG/JPEG slices or NIfTI/Analyze volumes found")
        assignment = split_subjects([r["subject"] for r in records], split_ratios, seed)
        for split in SPLITS:
            splits[split] = [r for r in records if assignment[r["subject"]] == split]
    else:
        for split in SPLITS:
            folder = split_folder(root, layout, split)
            splits[split] = [] if folder is None else [scan_record(p) for p in list_scans(folder)]
    for split in SPLITS:
        splits[split].sort(key=lambda r: (r["subject"], r.get("slice", 0), r["image"]))
    return layout, splits

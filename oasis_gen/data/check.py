"""Check a dataset in one pass: every problem named with its file, and the slice records that are usable.

Errors make a file unusable (unreadable, truncated, NaN, empty, half an Analyze pair, a missing split);
training and inference stop on them unless asked to skip the bad files. Warnings say what will be done to a
file that can still be used (colour or 16-bit images converted, unexpected sizes resized) or what may bias the
results (a subject in two of the splits the user gave).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from oasis_gen.data.layouts import SPLITS, find_scans
from oasis_gen.data.readers import (
    brain_fractions,
    check_slice_size,
    inspect_slice,
    read_volume,
    resolve_axis,
    volume_slice,
)
from oasis_gen.utils.errors import DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file or split."""

    path: str
    message: str
    severity: str = "error"  # "error": unusable; "warning": usable after the stated conversion

    def __str__(self) -> str:
        return f"{self.severity.upper():7s} {self.path}: {self.message}"


@dataclass
class SplitSummary:
    """What one split holds once checked."""

    slices: int = 0
    subjects: int = 0
    volumes: int = 0
    sizes: Counter = field(default_factory=Counter)
    modes: Counter = field(default_factory=Counter)


@dataclass
class DataReport:
    """The outcome of checking a dataset: usable slice records per split, summaries and problems."""

    root: str
    layout: str
    records: dict[str, list[dict]]
    summary: dict[str, SplitSummary]
    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        """Problems that make a file or split unusable."""
        return [p for p in self.problems if p.severity == "error"]

    @property
    def bad_files(self) -> list[str]:
        """Files with errors (skipped when the user asks to skip bad files)."""
        return sorted({p.path for p in self.errors if Path(p.path).is_file()})

    def format(self) -> str:
        """Render the summary and the problems as text for a terminal."""
        lines = [f"dataset {self.root} (layout: {self.layout})"]
        for split in SPLITS:
            s = self.summary[split]
            sizes = ", ".join(f"{h}x{w}: {n}" for (h, w), n in s.sizes.most_common(3)) or "-"
            modes = ", ".join(f"{m}: {n}" for m, n in s.modes.most_common()) or "-"
            volumes = f", {s.volumes} volumes" if s.volumes else ""
            lines.append(f"  {split:9s} {s.slices:6d} slices, {s.subjects:4d} subjects{volumes}; "
                         f"sizes {sizes}; modes {modes}")
        if self.problems:
            lines.append(f"{len(self.errors)} errors, {len(self.problems) - len(self.errors)} warnings:")
            lines.extend(f"  {p}" for p in self.problems)
        else:
            lines.append("no problems found")
        return "\n".join(lines)

    def usable(self, skip_bad: bool = False) -> dict[str, list[dict]]:
        """Return the records to use; raise one DataError listing every error unless skipping bad files."""
        errors = self.errors
        if errors and not skip_bad:
            listing = "\n  ".join(str(p) for p in errors[:50])
            more = f"\n  ... and {len(errors) - 50} more" if len(errors) > 50 else ""
            raise DataError(self.root, f"{len(errors)} problems found (pass skip_bad / --skip-bad to skip "
                                       f"the bad files):\n  {listing}{more}")
        if errors:
            logger.warning("skipping %d bad files: %s", len(self.bad_files), ", ".join(self.bad_files))
        return self.records


def inspect_scans(
    root: str | Path,
    layout: str,
    scans: dict[str, list[dict]],
    axis: int | str = "axial",
    min_brain_fraction: float = 0.1,
    required_splits: Sequence[str] = SPLITS,
    progress: bool = True,
) -> DataReport:
    """Open every scan once, cut volumes into slices, and collect every problem with its file."""
    problems: list[Problem] = []
    records: dict[str, list[dict]] = {split: [] for split in SPLITS}
    summary = {split: SplitSummary() for split in SPLITS}
    shapes: dict[str, tuple[int, int]] = {}
    total = sum(len(v) for v in scans.values())
    bar = tqdm(total=total, desc="checking scans", unit="file", disable=not progress or total < 200)
    for split in SPLITS:
        for scan in scans.get(split, []):
            bar.update(1)
            try:
                if scan.get("volume"):
                    kept = _cut_volume(scan, axis, min_brain_fraction)
                    summary[split].volumes += 1
                    summary[split].modes["volume"] += len(kept)
                    for _, shape in kept:
                        summary[split].sizes[shape] += 1
                    records[split].extend(record for record, _ in kept)
                else:
                    info = inspect_slice(scan["image"])
                    summary[split].sizes[info.shape] += 1
                    shapes[scan["image"]] = info.shape
                    summary[split].modes[info.mode] += 1
                    if info.note:
                        problems.append(Problem(scan["image"], info.note, "warning"))
                    records[split].append(scan)
            except DataError as err:
                problems.append(Problem(err.path, err.problem))
    bar.close()
    for split in SPLITS:
        summary[split].slices = len(records[split])
        summary[split].subjects = len({r["subject"] for r in records[split]})
        if split in required_splits and not scans.get(split):
            problems.append(Problem(str(root), f"split '{split}' is missing or holds no scans"))
        elif split in required_splits and not records[split]:
            problems.append(Problem(str(root), f"split '{split}' has no usable slice"))
    problems.extend(_size_warnings(shapes))
    problems.extend(_leaks(scans))
    return DataReport(root=str(root), layout=layout, records=records, summary=summary, problems=problems)


def _cut_volume(scan: dict, axis: int | str, min_brain_fraction: float) -> list[tuple[dict, tuple[int, int]]]:
    """Cut one volume into the slice records with enough brain; raise DataError if none is usable."""
    volume = read_volume(scan["image"])
    index = resolve_axis(scan["image"], axis)
    fractions = brain_fractions(volume, index)
    if fractions.max() <= 0:
        raise DataError(scan["image"], "empty volume (no voxel above background)")
    keep = [k for k, f in enumerate(fractions) if f >= min_brain_fraction]
    if not keep:
        raise DataError(scan["image"], f"no slice along axis {index} has {min_brain_fraction:.0%} brain "
                                       f"(largest: {fractions.max():.1%}); lower min_brain_fraction?")
    shape = volume_slice(volume, index, keep[0]).shape
    check_slice_size(scan["image"], shape)
    base = {k: v for k, v in scan.items() if k != "volume"}
    return [({**base, "slice": k, "axis": index}, shape) for k in keep]


def _size_warnings(shapes: dict[str, tuple[int, int]]) -> list[Problem]:
    """Warn about 2D files whose size differs from the most common one (they are padded and resized)."""
    if not shapes:
        return []
    common, _ = Counter(shapes.values()).most_common(1)[0]
    return [Problem(path, f"size {h}x{w} differs from the usual {common[0]}x{common[1]}: padded to square "
                          "and resized like the others", "warning")
            for path, (h, w) in shapes.items() if (h, w) != common]


def _leaks(scans: dict[str, list[dict]]) -> list[Problem]:
    """Report every subject that appears in more than one split."""
    where: dict[str, set[str]] = {}
    for split, split_scans in scans.items():
        for scan in split_scans:
            where.setdefault(scan["subject"], set()).add(split)
    # a warning, not an error: the splits were given by the user (ours never leak), and scores stay computable
    return [Problem(subject_files(scans, subject), f"subject in several splits: {sorted(splits)}; scores on the "
                    "held-out splits may be optimistic", "warning")
            for subject, splits in sorted(where.items()) if len(splits) > 1]


def subject_files(scans: dict[str, list[dict]], subject: str) -> str:
    """Name a subject by one of its files in each split (for messages)."""
    firsts = [next(s["image"] for s in v if s["subject"] == subject)
              for v in scans.values() if any(s["subject"] == subject for s in v)]
    return f"subject {subject} ({' and '.join(firsts)})"


def check_dataset(
    root: str | Path,
    split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    axis: int | str = "axial",
    min_brain_fraction: float = 0.1,
    required_splits: Sequence[str] = SPLITS,
    progress: bool = True,
) -> DataReport:
    """Find and check every scan under root; the report holds the usable slice records per split."""
    layout, scans = find_scans(root, split_ratios=split_ratios, seed=seed)
    return inspect_scans(root, layout, scans, axis=axis, min_brain_fraction=min_brain_fraction,
                         required_splits=required_splits, progress=progress)

"""The ``oasis-gen`` command: thin fronts over the data layer and the bundle configs."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from oasis_gen.errors import ConfigError, OasisGenError

DEFAULT_DEMO_DIR = "data/demo"


def _ratios(text: str) -> tuple[float, float, float]:
    """Parse "0.8,0.1,0.1" into three split ratios."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"split ratios must be three numbers like 0.8,0.1,0.1, not {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"split ratios must be three numbers like 0.8,0.1,0.1, not {text!r}")
    return values  # type: ignore[return-value]


def cmd_data_demo(args: argparse.Namespace) -> int:
    """Build the demo cohort."""
    from oasis_gen.data.demo import build_demo_cohort

    try:
        manifest = build_demo_cohort(args.out, subjects=args.subjects, size=args.size, seed=args.seed,
                                     slices_per_subject=args.slices)
    except ValueError as err:
        raise ConfigError("data demo", str(err)) from None
    print(f"demo cohort ready: {manifest.parent} (manifest: {manifest})")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    """Check a dataset and print its summary and every problem; exit 1 if there are problems."""
    from oasis_gen.data.check import check_dataset

    report = check_dataset(args.root, split_ratios=args.split_ratios, seed=args.seed, axis=args.axis,
                           min_brain_fraction=args.min_brain_fraction, progress=not args.quiet)
    print(report.format())
    return 1 if report.problems else 0


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of every sub-command."""
    parser = argparse.ArgumentParser(prog="oasis-gen", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="build the demo cohort or check a dataset")
    data_commands = data.add_subparsers(dest="data_command", required=True)

    demo = data_commands.add_parser("demo", help="write the demo cohort (OASIS PNG layout) from the MNI152 template")
    demo.add_argument("out", nargs="?", default=DEFAULT_DEMO_DIR, help=f"output folder (default {DEFAULT_DEMO_DIR})")
    demo.add_argument("--subjects", type=int, default=60, help="pseudo-subjects (default 60)")
    demo.add_argument("--size", type=int, default=128, help="slice size in pixels (default 128)")
    demo.add_argument("--slices", type=int, default=32, help="axial slices per subject (default 32)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(func=cmd_data_demo)

    check = data_commands.add_parser("check", help="summarise a dataset and list every problem with its file")
    check.add_argument("root", help="dataset root: OASIS slice folders, train/validate/test, or a flat folder")
    check.add_argument("--split-ratios", type=_ratios, default=(0.8, 0.1, 0.1),
                       help="train,validate,test ratios for folders without splits (default 0.8,0.1,0.1)")
    check.add_argument("--seed", type=int, default=0, help="seed of the subject split for flat folders")
    check.add_argument("--axis", default="axial", help="slice axis of volumes: axial|coronal|sagittal|0|1|2")
    check.add_argument("--min-brain-fraction", type=float, default=0.1,
                       help="keep volume slices with at least this fraction of brain (default 0.1)")
    check.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    check.set_defaults(func=cmd_data_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the oasis-gen command; errors the user can fix print one line, not a traceback."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except OasisGenError as err:
        print(f"oasis-gen: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("oasis-gen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

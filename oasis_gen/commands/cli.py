"""The ``oasis-gen`` command: thin fronts over the data layer, the bundle configs and the pipelines.

Every training, evaluation, sampling and inference command runs its bundle config as
``python -m monai.bundle run <id> --config_file bundle/configs/<config>.yaml --key value ...`` in a subprocess (its
exit code is passed on); options not listed in a command's help are passed through as bundle overrides.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from oasis_gen.commands.bundle_commands import BUNDLE_COMMANDS, COMMON_OPTIONS, PASS_THROUGH, BundleCommand
from oasis_gen.utils.errors import ConfigError, OasisGenError

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


def cmd_bundle(args: argparse.Namespace) -> int:
    """Run the command's bundle config with the options given as overrides; return the bundle's exit code."""
    from oasis_gen.bundle.configs import config_path, override_args, run_bundle

    command: BundleCommand = args.bundle_command
    configs = [config_path(command.config)] + [config_path(name, "--config") for name in args.config or []]
    options = [*command.options, *COMMON_OPTIONS, *([command.positional] if command.positional else [])]
    overrides = {o.key: getattr(args, o.key) for o in options if getattr(args, o.key, None) is not None}
    return run_bundle(command.run_id, configs, [*override_args(overrides), *args.overrides])


def cmd_train_prior(args: argparse.Namespace) -> int:
    """Train the prior; for a two-level VQ-VAE given neither level nor top prior: the top prior, then the bottom."""
    from oasis_gen.bundle.configs import config_path, override_args, run_bundle
    from oasis_gen.generation.codes import two_level_checkpoint

    command: BundleCommand = args.bundle_command
    options = [*command.options, *COMMON_OPTIONS, *([command.positional] if command.positional else [])]
    given = {o.key: getattr(args, o.key) for o in options if getattr(args, o.key, None) is not None}
    chosen = {"level", "top_prior_ckpt"} & ({*given} | {a[2:] for a in args.overrides if a.startswith("--")})
    vqvae = given.get("vqvae_ckpt", "runs/vqvae/checkpoints/model.pt")
    if chosen or not two_level_checkpoint(vqvae):
        return cmd_bundle(args)
    configs = [config_path(command.config)] + [config_path(name, "--config") for name in args.config or []]
    out = str(given.get("output_dir", "runs/prior")).rstrip("/")
    top = {**given, "level": "top", "output_dir": f"{out}_top", "codes_dir": f"{out}/codes"}
    print(f"{vqvae} has two levels: training its top prior ({out}_top), then its bottom prior ({out})", flush=True)
    code = run_bundle(command.run_id, configs, [*override_args(top), *args.overrides])
    if code:
        return code
    bottom = {**given, "level": "bottom", "output_dir": out, "top_prior_ckpt": f"{out}_top/checkpoints/model.pt"}
    return run_bundle(command.run_id, configs, [*override_args(bottom), *args.overrides])


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_pipeline_run(args: argparse.Namespace) -> int:
    """Run a pipeline file; exit 1 when a stage fails (its error line is printed)."""
    from oasis_gen.commands.pipeline import default_pipeline, load_pipeline
    from oasis_gen.commands.pipeline_runner import StageFailed, run_pipeline

    pipeline = load_pipeline(args.file or default_pipeline(), args.set or [])
    force = True if args.force == [] else (args.force or False)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a stopped pipeline marks its run KILLED, stops its stage
    try:
        run_pipeline(pipeline, force=force, only=args.only or (), dry_run=args.dry_run)
    except StageFailed as err:
        print(f"oasis-gen: error: {err}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def cmd_bundle_export(args: argparse.Namespace) -> int:
    """Write a trained VQ-VAE (and its priors) as a MONAI bundle folder and zip."""
    from oasis_gen.bundle.export import export_bundle

    out = export_bundle(args.out, args.vqvae_ckpt, args.prior_ckpt, args.top_prior_ckpt, name=args.name,
                        zip_file=not args.no_zip)
    print(f"bundle: {out}" + ("" if args.no_zip else f"  (and {out}.zip)"))
    print(f"run it: python -m monai.bundle run inferring --bundle_root {out} --config_file "
          f"{out}/configs/inference.yaml --input SCANS")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """Serve the MLflow UI on the project's store until interrupted."""
    from oasis_gen.commands.ui import start_mlflow_ui, stop_mlflow_ui

    print(f"starting the MLflow UI on {args.store or os.environ.get('MLFLOW_TRACKING_URI') or 'mlruns'} ...",
          flush=True)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    server = None
    try:
        server, url = start_mlflow_ui(args.store, host=args.host, port=args.port, workers=args.workers)
        links = "".join(f"\n  {line}" for line in _experiment_links(args.store, args.experiment, url))
        print(f"MLflow UI: {url}  (Ctrl-C stops it){links}", flush=True)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, TimeoutError) as err:  # the server did not come up: say why in one line
        print(f"oasis-gen: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            stop_mlflow_ui(server)
        signal.signal(signal.SIGTERM, previous)


def _experiment_links(store: str | None, experiment: str, url: str) -> list[str]:
    """The link to an experiment's runs in the UI at url (marked as model training, so the UI opens on its runs)."""
    from mlflow import MlflowClient

    from oasis_gen.commands.ui import existing_store_uri
    from oasis_gen.tracking.experiments import mark_model_training
    from oasis_gen.tracking.ui_links import experiment_runs_url

    client = MlflowClient(existing_store_uri(store))
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return [f"no experiment {experiment} in this store yet"]
    mark_model_training(client, found.experiment_id)  # stores written before runs marked their experiment
    return [f"runs of experiment {experiment}: {experiment_runs_url(url, found.experiment_id)}"]


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the examples' line breaks."""


def _add_bundle_command(commands: argparse._SubParsersAction, command: BundleCommand) -> argparse.ArgumentParser:
    epilog = f"example:\n  {command.example}\n\n" + PASS_THROUGH.format(config=command.config)
    parser = commands.add_parser(command.name, help=command.help, description=command.help, epilog=epilog,
                                 formatter_class=_HelpFormatter, allow_abbrev=False)
    if command.positional:
        p = command.positional
        parser.add_argument(p.key, metavar=p.flag, nargs=None if command.positional_required else "?", help=p.help)
    for option in (*command.options, *COMMON_OPTIONS):
        parser.add_argument(option.flag, dest=option.key, type=option.type, help=option.help,
                            metavar=option.flag[2:].upper().replace("-", "_"))
    parser.add_argument("--config", action="append", metavar="FILE",
                        help=f"another config merged over {command.config} (repeatable; bare names are in "
                             "bundle/configs)")
    parser.set_defaults(func=cmd_train_prior if command.name == "train-prior" else cmd_bundle,
                        bundle_command=command)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of every sub-command."""
    parser = argparse.ArgumentParser(
        prog="oasis-gen", description=__doc__, formatter_class=_HelpFormatter,
        epilog="examples:\n  oasis-gen pipeline run pipelines/demo.yaml      # the whole demo, minutes on a CPU\n"
               "  oasis-gen train /data/OASIS --output-dir runs/vqvae --epochs 30\n"
               "  oasis-gen ui                                    # then open http://127.0.0.1:5000\n\n"
               "`oasis-gen COMMAND --help` tells more.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="build the demo cohort or check a dataset",
                               epilog="example:\n  oasis-gen data demo data/demo\n  oasis-gen data check /data/OASIS",
                               formatter_class=_HelpFormatter)
    data_commands = data.add_subparsers(dest="data_command", required=True)

    demo = data_commands.add_parser("demo", help="write the demo cohort (OASIS PNG layout) from the MNI152 template",
                                    epilog="example:\n  oasis-gen data demo data/demo --subjects 60 --size 128",
                                    formatter_class=_HelpFormatter)
    demo.add_argument("out", nargs="?", default=DEFAULT_DEMO_DIR, help=f"output folder (default {DEFAULT_DEMO_DIR})")
    demo.add_argument("--subjects", type=int, default=60, help="pseudo-subjects (default 60)")
    demo.add_argument("--size", type=int, default=128, help="slice size in pixels (default 128)")
    demo.add_argument("--slices", type=int, default=32, help="axial slices per subject (default 32)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(func=cmd_data_demo)

    check = data_commands.add_parser("check", help="summarise a dataset and list every problem with its file",
                                     epilog="example:\n  oasis-gen data check /data/OASIS --split-ratios 0.8,0.1,0.1",
                                     formatter_class=_HelpFormatter)
    check.add_argument("root", help="dataset root: OASIS slice folders, train/validate/test, or a flat folder")
    check.add_argument("--split-ratios", type=_ratios, default=(0.8, 0.1, 0.1),
                       help="train,validate,test ratios for folders without splits (default 0.8,0.1,0.1)")
    check.add_argument("--seed", type=int, default=0, help="seed of the subject split for flat folders")
    check.add_argument("--axis", default="axial", help="slice axis of volumes: axial|coronal|sagittal|0|1|2")
    check.add_argument("--min-brain-fraction", type=float, default=0.1,
                       help="keep volume slices with at least this fraction of brain (default 0.1)")
    check.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    check.set_defaults(func=cmd_data_check)

    for command in BUNDLE_COMMANDS:
        _add_bundle_command(commands, command)

    pipeline = commands.add_parser("pipeline", help="run a pipeline of stages (pipelines/*.yaml)",
                                   epilog="example:\n  oasis-gen pipeline run pipelines/demo.yaml",
                                   formatter_class=_HelpFormatter)
    pipeline_commands = pipeline.add_subparsers(dest="pipeline_command", required=True)
    run = pipeline_commands.add_parser(
        "run", help="run a pipeline's stages, skipping those that are done", formatter_class=_HelpFormatter,
        description="Run the stages of a pipeline file in order. A stage whose outputs exist and whose resolved "
                    "configuration is unchanged since it last finished is skipped; a stage that runs again makes "
                    "the stages that need it run again. Exit 0 done, 1 a stage failed, 2 a bad pipeline file.",
        epilog="examples:\n  oasis-gen pipeline run pipelines/demo.yaml\n"
               "  oasis-gen pipeline run pipelines/oasis.yaml --set data_dir=/data/OASIS\n"
               "  oasis-gen pipeline run pipelines/demo.yaml --set vqvae.max_epochs=10 --force prior\n"
               "  oasis-gen pipeline run pipelines/demo.yaml --only sampling --set sampling.num_samples=64")
    run.add_argument("file", nargs="?", help="the pipeline file (default: pipelines/demo.yaml of the checkout)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="set a variable (data_dir=/data/OASIS) or a stage's override (vqvae.max_epochs=10); "
                          "repeatable")
    run.add_argument("--force", nargs="*", metavar="STAGE",
                     help="run these stages again even if they are done (no names: every stage)")
    run.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages")
    run.add_argument("--dry-run", action="store_true", help="say what would run and why, run nothing")
    run.set_defaults(func=cmd_pipeline_run)

    bundle = commands.add_parser("bundle", help="export a trained model as a MONAI bundle",
                                 epilog="example:\n  oasis-gen bundle export --vqvae-ckpt runs/demo/vqvae/checkpoints/"
                                        "model.pt --prior-ckpt runs/demo/prior/checkpoints/model.pt bundles/demo",
                                 formatter_class=_HelpFormatter)
    bundle_commands = bundle.add_subparsers(dest="bundle_command", required=True)
    export = bundle_commands.add_parser(
        "export", help="write a self-contained MONAI bundle folder (and zip) of a trained VQ-VAE and its priors",
        formatter_class=_HelpFormatter,
        description="Write OUT/ in MONAI model-zoo form (configs/, models/, docs/, LICENSE) and OUT.zip. Its paths "
                    "start from bundle_root, so it runs elsewhere with the project installed: python -m monai.bundle "
                    "run inferring --bundle_root OUT --config_file OUT/configs/inference.yaml --input SCANS.")
    export.add_argument("out", help="the bundle folder to create (must not exist, or be empty)")
    export.add_argument("--vqvae-ckpt", required=True, help="the trained VQ-VAE (its checkpoints/model.pt)")
    export.add_argument("--prior-ckpt", default=None, help="a prior of its codes (two levels: the bottom prior)")
    export.add_argument("--top-prior-ckpt", default=None,
                        help="two levels: the top prior (default: the one the bottom prior records)")
    export.add_argument("--name", default="oasis_gen_vqvae", help="the bundle's name (default oasis_gen_vqvae)")
    export.add_argument("--no-zip", action="store_true", help="write the folder only")
    export.set_defaults(func=cmd_bundle_export)

    ui = commands.add_parser("ui", help="serve the MLflow UI on the project's store",
                             epilog="example:\n  oasis-gen ui            # then open http://127.0.0.1:5000\n"
                                    "  oasis-gen ui --store runs/other/mlruns --port 5001",
                             formatter_class=_HelpFormatter)
    ui.add_argument("--store", default=None,
                    help="MLflow store: a folder, a .db file or a URI (default $MLFLOW_TRACKING_URI, else mlruns)")
    ui.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    ui.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    ui.add_argument("--experiment", default="oasis-gen",
                    help="the experiment whose runs it links to (default oasis-gen)")
    ui.set_defaults(func=cmd_ui)
    return parser


def split_overrides(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate a bundle command's own options from the ``--key value`` overrides passed through to the bundle."""
    argv = list(argv)
    names = {c.name for c in BUNDLE_COMMANDS}
    position = next((i for i, token in enumerate(argv) if token in names), None)
    if position is None:
        return argv, []
    subparser = _subparser(parser, argv[position])
    known = {flag for action in subparser._actions for flag in action.option_strings}
    kept, passed = argv[:position + 1], []
    rest = argv[position + 1:]
    i = 0
    while i < len(rest):
        token = rest[i]
        flag = token.split("=", 1)[0]
        if token.startswith("--") and len(token) > 2 and flag not in known:
            if "=" in token:
                passed.append(token)
            elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
                passed += [token, rest[i + 1]]
                i += 1
            else:
                raise ConfigError(token[2:], f"an override needs a value: {token} VALUE")
        else:
            kept.append(token)
        i += 1
    return kept, passed


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    raise KeyError(name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the oasis-gen command; errors the user can fix print one line, not a traceback."""
    parser = build_parser()
    try:
        kept, passed = split_overrides(parser, sys.argv[1:] if argv is None else argv)
    except OasisGenError as err:
        print(f"oasis-gen: error: {err}", file=sys.stderr)
        return 2
    args = parser.parse_args(kept)
    args.overrides = passed
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except OasisGenError as err:
        print(f"oasis-gen: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("oasis-gen: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        sys.stdout = open(os.devnull, "w")  # Python flushes stdout again at exit
        return 141


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark kit: what every script in ``benchmarks/`` shares, so that no script keeps its own copy.

- paths: the checkout (``ROOT``), the result folder (``RESULTS``), the scratch folder (``WORK``), the demo cohort
  (``DEMO_DIR``) and the IXI T1 volumes beside the checkout (``IXI_DIR``, read with ``IXI_READER``);
- the machine a result was measured on (``machine_info``, ``machine_summary``);
- result writing: ``<name>.md`` and ``<name>.json``, both naming the exact command that wrote them (``command``,
  ``write_result``), and the ``--out-dir`` / ``--name`` options every entry point takes (``result_options``);
- the bundle: its configs read with MONAI's ConfigParser (``bundle_parser``, ``bundle_default``, ``config_vqvae``,
  ``config_prior``, ...) and run as a subprocess (``run_bundle``, on ``oasis_gen.bundle.configs``);
- slices: a split's records and the slices through the project's evaluation chain (``split_records``,
  ``bundle_report``, ``load_slices``).

Entry points sit at the top of ``benchmarks/`` and import this module as ``kit`` (Python puts a script's folder
first on its path); ``speed_parts/`` holds the pieces of ``speed.py``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml
from monai.bundle import ConfigParser

from oasis_gen.bundle.configs import bundle_command, config_path
from oasis_gen.data import build_cache_dataset, check_dataset, decode_intensity, eval_transforms
from oasis_gen.utils.files import write_text

# ------------------------------------------------------------------ paths

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
RESULTS = BENCHMARKS / "results"
WORK = ROOT / "runs" / "benchmarks"  # scratch runs, logs and MLflow stores of the benchmarks
DEMO_DIR = ROOT / "data" / "demo"
IXI_DIR = ROOT.parent / "shared" / "data" / "ixi_t1"  # benchmarks only: never a default or a test's input
# IXI's axial slices (stored P-S-R, turned to RAS by the reader); min_brain_fraction 0.25 drops the neck and the
# skull cap
IXI_READER: dict[str, object] = {"slice_axis": "axial", "min_brain_fraction": 0.25}


# ------------------------------------------------------------------ the machine

LIBRARIES = ("torch", "monai", "mlflow", "pytorch-ignite")


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (``platform.processor()`` where /proc is absent)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity), else all of them."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def library_version(name: str) -> str | None:
    """The installed version of a distribution (None if it is not installed)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info(device: str | torch.device | None = None) -> dict[str, object]:
    """The machine, the libraries and the moment, taken before the timings (the load average is theirs)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable_cpus(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        **{name.removeprefix("pytorch-"): library_version(name) for name in LIBRARIES},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(value, 2) for value in load] if load else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def machine_summary(machine: dict[str, object]) -> str:
    """One Markdown line naming the machine a result was measured on."""
    gpu = f"GPU {machine['gpu']} (CUDA {machine['cuda']})" if machine.get("gpu") else "no GPU"
    return (f"{machine['cpu_model']}, {machine['cpu_count']} CPUs ({machine['cpus_usable']} usable), "
            f"torch {machine['torch']} with {machine['torch_threads']} thread(s), monai {machine['monai']}, "
            f"mlflow {machine['mlflow']}, ignite {machine['ignite']}, {gpu}; Python {machine['python']}, "
            f"{machine['platform']}; load average at start {machine['load_average_at_start']}; {machine['date']}.")


# ------------------------------------------------------------------ results


def command(script: str | Path, argv: Sequence[str] | None = None) -> str:
    """The command line that ran a benchmark, as one types it from the checkout: ``python benchmarks/<script>
    <arguments>`` (``argv``: the arguments ``main`` was given, else this process's own)."""
    path = Path(script).resolve()
    name = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(script)
    return shlex.join(["python", name, *(sys.argv[1:] if argv is None else argv)])


def result_options(parser: argparse.ArgumentParser, name: str | None, name_help: str = "",
                   out_dir: Path | None = RESULTS) -> None:
    """The options every entry point takes for its result files: ``--out-dir`` (also spelt ``--out``) and
    ``--name``, the file name without suffix (``name``: its default; ``name_help`` says what a None default
    becomes). ``out_dir`` None: the script writes files only when given a folder."""
    where = ("default: benchmarks/results" if out_dir == RESULTS else
             "default: print the table only" if out_dir is None else f"default: {out_dir}")
    parser.add_argument("--out-dir", "--out", dest="out_dir", type=Path, default=out_dir,
                        help=f"folder of the result files <name>.md and <name>.json ({where})")
    parser.add_argument("--name", default=name,
                        help=f"result file name, without suffix (default: {name_help or name})")


def write_result(out_dir: str | Path, name: str, text: str, result: Any, command: str) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.md`` and ``.json`` atomically, each naming the command that wrote them, and say so.

    The Markdown gets a ``Command:`` line at its end unless it has one; a dict result gets a ``command`` key, each
    row of a list result too. Values JSON cannot hold are written as text.
    """
    line = f"Command: `{command}`"
    if line not in text:
        text = text.rstrip("\n") + f"\n\n{line}\n"
    if isinstance(result, Mapping):
        result = {"command": command, **{key: value for key, value in result.items() if key != "command"}}
    elif isinstance(result, list):
        result = [{**row, "command": command} if isinstance(row, Mapping) else row for row in result]
    out_dir = Path(out_dir)
    markdown = write_text(out_dir / f"{name}.md", text if text.endswith("\n") else text + "\n")
    data = write_text(out_dir / f"{name}.json", json.dumps(result, indent=2, default=str) + "\n")
    print(f"written: {markdown}, {data}", flush=True)
    return markdown, data


# ------------------------------------------------------------------ the bundle


def bundle_parser(config_name: str, **overrides: Any) -> ConfigParser:
    """A parser over ``bundle/configs/<config_name>`` with overrides set as on the command line (``--key value``)."""
    parser = ConfigParser()
    parser.read_config(config_path(config_name))
    parser.update(overrides)
    return parser


def bundle_default(config_name: str, key: str) -> Any:
    """One default of a bundle config, evaluated (for plain settings such as ``image_size``)."""
    return bundle_parser(config_name).get_parsed_content(key)


def config_settings(config_name: str = "train.yaml") -> dict[str, Any]:
    """A bundle config's settings as written (unevaluated): e.g. train.yaml's split and reader defaults."""
    return yaml.safe_load(config_path(config_name).read_text())


def config_imports(config_name: str) -> list[str]:
    """The modules a bundle config imports (its ``imports`` list, without the ``$import``)."""
    statements = bundle_parser(config_name).get("imports", [])
    return [statement.removeprefix("$").removeprefix("import").strip() for statement in statements]


def config_vqvae(**overrides: Any) -> tuple[Any, Any]:
    """train.yaml's VQ-VAE (untrained) and its spec, with overrides as on its command line."""
    parser = bundle_parser("train.yaml", **overrides)
    return parser.get_parsed_content("network_def"), parser.get_parsed_content("vqvae_spec")


def config_prior(vqvae_spec: Any, vqvae_ckpt: str | Path = "", vqvae_sha256: str = "", **overrides: Any
                 ) -> tuple[Any, Any]:
    """train_prior.yaml's Gated PixelCNN (untrained) and its spec, for the codes of a VQ-VAE of that spec."""
    spec = vqvae_spec.state_dict() if hasattr(vqvae_spec, "state_dict") else dict(vqvae_spec)
    parser = bundle_parser("train_prior.yaml", vqvae_spec=spec, vqvae_ckpt=str(vqvae_ckpt),
                           vqvae_sha256=vqvae_sha256, **overrides)
    return parser.get_parsed_content("network_def"), parser.get_parsed_content("prior_spec")


def run_bundle(run_id: str, config_name: str, args: Iterable[str], log: Path, threads: int | None = None) -> float:
    """Run ``python -m monai.bundle run <run_id> --config_file <config> <args>`` from the checkout, appending its
    output to log (with ``threads``: as OMP_NUM_THREADS); return its wall time. A failure stops the benchmark."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"OMP_NUM_THREADS": str(threads)} if threads is not None else {})}
    with open(log, "a") as stream:
        done = subprocess.run(bundle_command(run_id, [config_path(config_name)], args), cwd=ROOT, stdout=stream,
                              stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        raise SystemExit(f"bundle command failed ({done.returncode}); see {log}")
    return time.perf_counter() - start


# ------------------------------------------------------------------ slices


def split_records(dataset_dir: str | Path, split: str, *, max_count: int | None = None, choice_seed: int = 0,
                  **check: Any) -> list[dict]:
    """The usable slice records of one split of a dataset (bad files skipped), read as training reads them
    (``check``: check_dataset's split and reader settings, e.g. ``split_ratios``, ``seed``, ``axis``); at most
    ``max_count`` of them, chosen with ``choice_seed`` and kept in their order."""
    report = check_dataset(dataset_dir, required_splits=[split], progress=False, **check)
    records = list(report.usable(skip_bad=True)[split])
    if max_count is not None and len(records) > max_count:
        keep = torch.randperm(len(records), generator=torch.Generator().manual_seed(choice_seed))[:max_count]
        records = [records[i] for i in sorted(keep.tolist())]
    return records


def bundle_report(dataset: str | Path, reader: Mapping[str, object], splits: Sequence[str]):
    """check_dataset's report of a dataset split as train.yaml splits it (its split ratios and seed), with the
    reader settings given (``slice_axis``, ``min_brain_fraction``) or train.yaml's."""
    defaults = config_settings("train.yaml")
    return check_dataset(dataset, split_ratios=defaults["split_ratios"], seed=defaults["split_seed"],
                         axis=reader.get("slice_axis", defaults["slice_axis"]),
                         min_brain_fraction=reader.get("min_brain_fraction", defaults["min_brain_fraction"]),
                         required_splits=list(splits), progress=False)


def load_slices(records: Sequence[dict], image_size: int, encoded: bool = False) -> torch.Tensor:
    """The slices ``[N, 1, S, S]`` through the project's evaluation chain, as the bundle caches them: uint8 with
    ``encoded``, else float in [0, 1]."""
    dataset = build_cache_dataset(list(records), eval_transforms(image_size, "uint8"), progress=False, name="slices")
    images = torch.stack([torch.as_tensor(dataset[i]["image"]).as_subclass(torch.Tensor) for i in range(len(dataset))])
    return images if encoded else decode_intensity(images)

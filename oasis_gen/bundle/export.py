"""A trained VQ-VAE (and its priors) as a self-contained MONAI bundle: model-zoo layout, paths from ``bundle_root``.

::

    <out>/configs/inference.yaml, evaluate.yaml, metadata.json, logging.conf
    <out>/models/model.pt (the VQ-VAE), model.ts (TorchScript: image -> reconstruction), prior.pt, prior_top.pt
    <out>/wheels/oasis_gen-<version>-py3-none-any.whl (the code the configs import: the project is not on PyPI)
    <out>/docs/README.md (what it was trained on, its figures, how to run it), docs/data_use.md (OASIS's terms)
    <out>/LICENSE
    <out>.zip (the same folder, zipped)

The configs are the project's own with their file paths turned into ``@bundle_root`` paths and ``network_def``'s
architecture (``vqvae_spec``) written out, so that elsewhere, in a fresh virtual environment with the bundle's wheel
installed as its README says, ``python -m monai.bundle run inferring --bundle_root B --config_file
B/configs/inference.yaml --input SCANS`` runs.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch
from monai.networks.utils import convert_to_torchscript

import oasis_gen
from oasis_gen.bundle.configs import configs_dir
from oasis_gen.bundle.wheel import build_wheel, installed_requirements
from oasis_gen.generation.pair import load_pair
from oasis_gen.networks.spec import ModelSpec, file_sha256
from oasis_gen.networks.vqvae import VQVAEReconstruction, is_two_level, load_vqvae
from oasis_gen.utils.errors import ConfigError
from oasis_gen.utils.files import write_text

logger = logging.getLogger(__name__)

__all__ = ["export_bundle", "set_config_value"]

# where each file goes inside the bundle
VQVAE_FILE, PRIOR_FILE, TOP_PRIOR_FILE, TORCHSCRIPT_FILE = "model.pt", "prior.pt", "prior_top.pt", "model.ts"
WHEELS = "wheels"
# listed apart in metadata.json (pytorch_version, monai_version, numpy_version)
CORE_PACKAGES = ("torch", "monai", "numpy")


def install_commands(wheel: str, torch_version: str) -> list[str]:
    """The commands that make a fresh virtual environment run the bundle, from the folder holding it (``$B``)."""
    return ["python3 -m venv .venv",
            f'.venv/bin/python -m pip install "torch=={torch_version}"',
            f'.venv/bin/python -m pip install "$B/{WHEELS}/{wheel}"']


def set_config_value(text: str, key: str, value: str, comment: str = "") -> str:
    """Set a top-level key of a bundle YAML text to ``value`` (YAML text), keeping the rest of the file, comments
    included; a key the text lacks is added before the first top-level key after ``imports``."""
    line = f"{key}: {value}" + (f"   # {comment}" if comment else "")
    pattern = re.compile(rf"^{re.escape(key)}:.*$", flags=re.MULTILINE)
    if pattern.search(text):
        return pattern.sub(lambda _: line, text, count=1)
    first = re.search(r"^(?!imports:)(?![ #-])[A-Za-z_]+:", text, flags=re.MULTILINE)
    at = first.start() if first else len(text)
    return text[:at] + line + "\n" + text[at:]


def _bundle_path(name: str) -> str:
    return f"\"$@bundle_root + '/models/{name}'\""


def _inference_config(spec: ModelSpec, has_prior: bool, two_level: bool) -> str:
    text = (configs_dir() / "inference.yaml").read_text()
    bundle_root = ('"."', "this bundle's folder: pass --bundle_root B when running from elsewhere")
    text = set_config_value(text, "bundle_root", *bundle_root)
    text = set_config_value(text, "vqvae_ckpt", _bundle_path(VQVAE_FILE), "the exported VQ-VAE")
    text = set_config_value(text, "prior_ckpt", _bundle_path(PRIOR_FILE) if has_prior else "null",
                            "the exported prior: adds atypicality" if has_prior else "no prior was exported")
    text = set_config_value(text, "top_prior_ckpt", _bundle_path(TOP_PRIOR_FILE) if has_prior and two_level
                            else "null", "the exported top prior" if two_level else "")
    text = set_config_value(text, "inference_dir", "\"$@bundle_root + '/eval'\"", "outputs, as in MONAI's model zoo")
    # network_def builds this architecture (written out: no checkpoint is read for it); its weights are models/model.pt
    return set_config_value(text, "vqvae_spec", json.dumps(spec.state_dict(), sort_keys=True),
                            "the exported architecture (network_def builds it)")


def _evaluate_config() -> str:
    text = (configs_dir() / "evaluate.yaml").read_text()
    text = set_config_value(text, "bundle_root", '"."', "this bundle's folder: pass --bundle_root B from elsewhere")
    text = set_config_value(text, "output_dir", "\"$@bundle_root + '/eval'\"", "where evaluation/ is written")
    return set_config_value(text, "ckpt_path", _bundle_path(VQVAE_FILE), "the exported VQ-VAE")


def _training_record(vqvae_ckpt: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The training run's ``config.yaml`` and evaluation ``summary.json`` beside a checkpoint
    (``<output_dir>/checkpoints/model.pt``), as far as they exist."""
    import yaml

    run_dir = vqvae_ckpt.resolve().parent.parent
    config, evaluation = {}, {}
    if (run_dir / "config.yaml").is_file():
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    if (run_dir / "evaluation" / "summary.json").is_file():
        evaluation = json.loads((run_dir / "evaluation" / "summary.json").read_text())
    return config, evaluation


def _metadata(spec: ModelSpec, prior_specs: dict[str, ModelSpec], vqvae_ckpt: Path, wheel: str) -> dict[str, Any]:
    """The project's ``metadata.json``, updated with what was exported: versions, what the install brings, sizes,
    trained settings, data."""
    metadata = json.loads((configs_dir() / "metadata.json").read_text())
    size = int(spec["image_size"])
    today = datetime.date.today().isoformat()
    metadata.update(
        version=oasis_gen.__version__,
        changelog={oasis_gen.__version__: f"exported on {today} from {vqvae_ckpt.name} "
                                          f"(SHA-256 {file_sha256(vqvae_ckpt)[:12]})"},
        monai_version=monai.__version__, pytorch_version=torch.__version__.split("+")[0],
        numpy_version=np.__version__,
    )
    # what installing the bundle's wheel brings in (oasis-gen itself is the wheel, not a package to fetch by name)
    metadata["required_packages_version"] = {name: version for name, version in installed_requirements().items()
                                             if name not in CORE_PACKAGES}
    for tensor in (*metadata["network_data_format"]["inputs"].values(),
                   *metadata["network_data_format"]["outputs"].values()):
        if tensor.get("type") == "image":
            tensor["spatial_shape"] = [size, size]
    metadata["oasis_gen"] = {
        "install": {"wheel": f"{WHEELS}/{wheel}", "python": ">=3.10",
                    "commands": install_commands(wheel, metadata["pytorch_version"]),
                    "note": "oasis-gen is not on PyPI: install the wheel this bundle carries, never a package of "
                            "that name from an index"},
        "vqvae": spec.state_dict(),
        "priors": {name: {k: v for k, v in s.state_dict().items() if not str(k).endswith("checkpoint")}
                   for name, s in prior_specs.items()},
        "data": {
            "orientation": "volumes are turned to RAS (nibabel's canonical orientation) before slicing; outputs are "
                           "written back in the input's own orientation, affine and header",
            "slices": "axial planes; anterior at the top and the patient's left on the left",
            "intensity": "8-bit slices divided by 255; 16-bit slices and volumes scaled from their minimum to their "
                         "99.5th percentile, brighter voxels clipped to 1",
            "geometry": f"padded to a square and resized to {size}x{size}; inference maps results back to the "
                        "input's own size",
        },
    }
    return metadata


def _readme(spec: ModelSpec, prior_specs: dict[str, ModelSpec], vqvae_ckpt: Path, name: str,
            metadata: dict[str, Any], folder: str) -> str:
    config, evaluation = _training_record(vqvae_ckpt)
    size = int(spec["image_size"])
    levels = (f"two levels: a {spec['top_grid_size']}x{spec['top_grid_size']} grid of {spec['top_num_embeddings']} "
              f"top codes above a {spec['grid_size']}x{spec['grid_size']} grid of {spec['num_embeddings']} codes"
              if is_two_level(spec) else
              f"one {spec['grid_size']}x{spec['grid_size']} grid of {spec['num_embeddings']} codes")
    lines = [f"# {name}", "",
             f"A VQ-VAE for T1-weighted brain MRI slices of {size}x{size} ({levels}), exported by oasis-gen "
             f"{oasis_gen.__version__} on {datetime.date.today().isoformat()}"
             + (f", with its Gated PixelCNN prior{'s' if len(prior_specs) > 1 else ''}." if prior_specs else "."),
             "", "## What it was trained on", ""]
    if config:
        lines.append(f"Dataset `{config.get('dataset_dir')}` (its train split; validation on its validate split), "
                     f"{config.get('image_size')}x{config.get('image_size')} slices, "
                     f"{config.get('time_limit_minutes') or config.get('max_epochs')} "
                     f"{'minutes' if config.get('time_limit_minutes') else 'epochs'} of training, batch "
                     f"{config.get('batch_size')}, learning rate {config.get('learning_rate')}, "
                     f"{config.get('reconstruction_loss')} loss. The full settings are in `configs/metadata.json` "
                     "(`oasis_gen.vqvae`).")
    else:
        lines.append("The training run's settings were not found beside the checkpoint; the architecture is in "
                     "`configs/metadata.json` (`oasis_gen.vqvae`).")
    lines += ["", "## Measured", ""]
    if evaluation:
        split = evaluation.get("split", "held-out")
        cells = [f"{metric.upper()} {values['mean']:.4f} (sd {values['std']:.4f}, {int(values['count'])} slices)"
                 for metric, values in evaluation.items() if isinstance(values, dict) and "mean" in values]
        lines.append(f"Per-slice reconstruction on the {split} split: " + "; ".join(cells) + ".")
    else:
        lines.append("No evaluation was found beside the checkpoint: run `evaluating` below on data of your own.")
    install = metadata["oasis_gen"]["install"]
    lines += [
        "", "## Install", "",
        f"The bundle carries the code its configs import: `{install['wheel']}`, a wheel of oasis-gen "
        f"{oasis_gen.__version__} (the project is not on PyPI: install this wheel, never a package of that name from "
        "an index). In a fresh virtual environment, with Python 3.10 or newer, from the folder that holds this "
        "bundle's folder:", "", "```bash",
        f"B={folder}    # this bundle's folder",
        *install["commands"],
        "```", "",
        f"The first install is PyTorch {metadata['pytorch_version']} (on Linux, PyPI's build for CUDA; the CPU build: "
        "add `--index-url https://download.pytorch.org/whl/cpu`); the wheel then brings MONAI, MLflow and the rest "
        "(`configs/metadata.json`: `required_packages_version`).", "",
        "## Run it", "",
        "In that environment (`.venv/bin/python`), from any folder, with `B` the bundle's folder:",
        "", "```bash",
        '.venv/bin/python -m monai.bundle run inferring --bundle_root "$B" \\',
        '    --config_file "$B/configs/inference.yaml" --input SCANS',
        '.venv/bin/python -m monai.bundle run evaluating --bundle_root "$B" \\',
        '    --config_file "$B/configs/evaluate.yaml" --dataset_dir DATA',
        '.venv/bin/python -m monai.bundle ckpt_export network_def --filepath vqvae.ts \\',
        '    --ckpt_file "$B/models/model.pt" --key_in_ckpt model --config_file "$B/configs/inference.yaml" \\',
        '    --bundle_root "$B" --use_trace True \\',
        f"    --input_shape \"[1, 1, {size}, {size}]\"",
        "```", "",
        "`SCANS` is a PNG/JPEG slice, a NIfTI or Analyze volume, or a folder of them; `--inference_dir OUT` puts the "
        "results elsewhere. Each scan gets `$B/eval/<scan>/` (or `OUT/<scan>/`): the reconstruction in the input's "
        "format, orientation and geometry, its code map, per-slice SSIM/PSNR and, with a prior, an atypicality map. "
        "`DATA` is a dataset folder (any layout oasis-gen reads). In Python: "
        "`monai.bundle.ConfigWorkflow(config_file='B/configs/inference.yaml', workflow_type='infer', "
        "bundle_root='B')`.",
        "", f"`models/{TORCHSCRIPT_FILE}` is the VQ-VAE traced in eval mode: `torch.jit.load` it and call it on "
        f"`[N, 1, {size}, {size}]` float32 in [0, 1]; it returns the reconstruction, clamped to [0, 1].",
        "", "## Data handling", "",
        "Volumes are turned to RAS before slicing and results written back in the input's own orientation, affine "
        "and header; 16-bit slices and volumes are scaled from their minimum to their 99.5th percentile (brighter "
        "voxels clipped); slices are padded to a square and resized, and results mapped back to the input's size.",
        "", "## Licence and data use", "",
        "The code and this bundle: `LICENSE`. The weights learnt from the data they were trained on: read "
        "`docs/data_use.md` before you use or share them.", "",
    ]
    return "\n".join(lines)


DATA_USE = """# Data use

The weights in `models/` were learnt from the data named in `docs/README.md`.

If that data was OASIS (the Open Access Series of Imaging Studies, https://www.oasis-brains.org), you may use the
weights only as OASIS's Data Use Agreement allows: read and accept its terms on the OASIS website before you use
or share them; do not try to identify any participant; cite the OASIS publications it names (for OASIS-1:
Marcus, D. S. et al., Open Access Series of Imaging Studies (OASIS): cross-sectional MRI data in young, middle
aged, nondemented, and demented older adults. Journal of Cognitive Neuroscience, 2007).

If it was the demo cohort of oasis-gen, the slices were generated from the MNI152 T1 template shipped in the
nilearn package (ICBM 2009c nonlinear symmetric; see its copyright notice in nilearn's documentation); no
participant's scan was used.

For any other data, the terms of that data apply. Research use only; not for clinical use.
"""


def _trace(vqvae: torch.nn.Module, size: int, metadata: dict[str, Any], path: Path) -> None:
    """TorchScript of the VQ-VAE as image -> reconstruction, through MONAI's ``convert_to_torchscript`` (traced:
    MONAI's quantizer cannot be scripted), checked against the network on the example (``verify``)."""
    network = VQVAEReconstruction(vqvae).eval()
    convert_to_torchscript(network, str(path), extra_files={"metadata.json": json.dumps(metadata).encode()},
                           verify=True, inputs=[torch.rand(1, 1, size, size)], use_trace=True, atol=1e-5,
                           check_trace=False)


def export_bundle(out_dir: str | Path, vqvae_ckpt: str | Path, prior_ckpt: str | Path | None = None,
                  top_prior_ckpt: str | Path | None = None, name: str = "oasis_gen_vqvae", zip_file: bool = True,
                  replace: bool = False) -> Path:
    """
    Write a trained VQ-VAE (and its prior) as a MONAI bundle folder ``out_dir`` and, with ``zip_file``,
    ``<out_dir>.zip``. Nothing is written unless everything is: the bundle is built beside ``out_dir`` and moved
    into place at the end.

    Args:
        out_dir: the bundle folder to create; it must not exist or be empty.
        vqvae_ckpt: the VQ-VAE checkpoint (``<output_dir>/checkpoints/model.pt`` of training: its ``config.yaml``
            and evaluation summary, when beside it, go into the bundle's README).
        prior_ckpt: a prior of that VQ-VAE's codes (the bottom prior of a two-level one), or None.
        top_prior_ckpt: a two-level VQ-VAE's top prior (None: the one the bottom prior records).
        name: the bundle's name (its README title).
        replace: replace an earlier export in ``out_dir`` (a folder with ``configs/metadata.json``) and its zip,
            once the new bundle is complete (a pipeline that runs again); any other non-empty folder is refused.

    Raises:
        ConfigError: ``out_dir`` exists and is not empty (with ``replace``: and is not an earlier export).
        CheckpointError: a checkpoint is missing, unreadable, or the prior does not belong to the VQ-VAE.
    """
    out, vqvae_ckpt = Path(out_dir), Path(vqvae_ckpt)
    earlier = bool(replace) and out.is_dir() and (out / "configs" / "metadata.json").is_file()
    if out.exists() and not earlier and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError("out", f"{out} already exists and is not an empty folder"
                                 + (" or an earlier export" if replace else "") + ": name a new one (nothing was "
                                 "written)")
    archive = out.parent / f"{out.name}.zip"
    if zip_file and archive.exists() and not earlier:
        raise ConfigError("out", f"{archive} already exists: name a new bundle folder (nothing was written)")
    vqvae, spec = load_vqvae(vqvae_ckpt)
    sources = {VQVAE_FILE: vqvae_ckpt}
    prior_specs: dict[str, ModelSpec] = {}
    if prior_ckpt is not None:
        pair = load_pair(prior_ckpt, vqvae_ckpt, purpose="infer", top_prior_ckpt=top_prior_ckpt,
                         vqvae=(vqvae, spec))
        sources[PRIOR_FILE] = pair.prior_path
        prior_specs["prior"] = pair.prior_spec
        if pair.top_prior_path is not None:
            sources[TOP_PRIOR_FILE] = pair.top_prior_path
            prior_specs["prior_top"] = pair.top_prior_spec
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
    try:
        (staging / "models").mkdir(parents=True)
        wheel = build_wheel(staging / WHEELS).name
        metadata = _metadata(spec, prior_specs, vqvae_ckpt, wheel)
        for target, source in sources.items():
            shutil.copy2(source, staging / "models" / target)
        _trace(vqvae, int(spec["image_size"]), metadata, staging / "models" / TORCHSCRIPT_FILE)
        configs = staging / "configs"
        write_text(configs / "inference.yaml", _inference_config(spec, PRIOR_FILE in sources, is_two_level(spec)))
        write_text(configs / "evaluate.yaml", _evaluate_config())
        write_text(configs / "metadata.json", json.dumps(metadata, indent=4) + "\n")
        shutil.copy2(configs_dir() / "logging.conf", configs / "logging.conf")
        write_text(staging / "docs" / "README.md", _readme(spec, prior_specs, vqvae_ckpt, name, metadata,
                                                                out.name))
        write_text(staging / "docs" / "data_use.md", DATA_USE)
        shutil.copy2(configs_dir().parent / "LICENSE", staging / "LICENSE")
        old = staging.with_suffix(".old")
        if earlier:
            os.replace(out, old)  # the earlier export goes only once the new one is in its place
        elif out.exists():
            out.rmdir()  # empty, checked above
        try:
            os.replace(staging, out)
        except OSError:
            if earlier:
                os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("exported the bundle to %s", out)
    if zip_file:
        partial = shutil.make_archive(str(staging), "zip", root_dir=out.parent, base_dir=out.name)
        os.replace(partial, archive)
        logger.info("zipped it to %s", archive)
    return out

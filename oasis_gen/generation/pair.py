"""A prior and the VQ-VAE whose codes it models, loaded together under one rule for whether they belong together.

A prior's checkpoint records the path and SHA-256 of the VQ-VAE checkpoint it was trained on. Whoever pairs the
two -- sampling (``sample.yaml``), inference (``inference.yaml``) and resuming prior training
(``train_prior.yaml``) -- goes through :func:`check_pair`, which applies one rule:

* same ``K`` and code grid, else refused;
* same SHA-256 as recorded: the pair is the one trained together;
* the recorded file itself, but its SHA-256 changed (the VQ-VAE was retrained in place): a warning for sampling
  and inference (the codebook may have moved, results may look wrong), refused for resuming prior training
  (its codes mean something else now, and the cached codes would be re-encoded under the prior's feet);
* another file with another SHA-256: refused, naming both files;
* nothing recorded (an old prior): a warning that it cannot be checked.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from oasis_gen.inferers.pixelcnn_inferer import TwoLevelPrior
from oasis_gen.networks.pixelcnn import GatedPixelCNN, load_pixelcnn
from oasis_gen.networks.spec import ModelSpec, checkpoint_sha256, read_checkpoint
from oasis_gen.networks.vqvae import is_two_level, level_sizes, load_vqvae
from oasis_gen.utils.config_values import optional
from oasis_gen.utils.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

__all__ = ["ARCHITECTURE_KEYS", "ModelPair", "Purpose", "check_pair", "check_resume", "load_pair"]

# what the pair is for: a changed VQ-VAE is tolerated (with a warning) for sampling and inference only
Purpose = Literal["sample", "infer", "resume"]
_ADVICE = {
    "sample": "pass the VQ-VAE the prior was trained on (--vqvae_ckpt)",
    "infer": "pass the VQ-VAE the prior was trained on (--vqvae_ckpt) or a prior trained on this one",
    "resume": "use another output_dir (or resume false) to train a new prior",
}
# spec entries that fix the prior's weights: a checkpoint that differs in one of them cannot be resumed
ARCHITECTURE_KEYS = ("level", "channels", "num_layers", "kernel_size", "num_classes", "out_channels_hidden",
                     "cond_num_embeddings", "cond_factor")


@dataclass
class ModelPair:
    """A prior and the VQ-VAE whose codes it models, loaded from their checkpoints and checked to belong together.

    For a two-level VQ-VAE, ``prior`` is a :class:`TwoLevelPrior` (``prior_spec``/``prior_path`` are its bottom
    prior's, ``top_prior_spec``/``top_prior_path`` its top prior's).
    """

    prior: GatedPixelCNN | TwoLevelPrior
    prior_spec: ModelSpec
    prior_path: Path
    vqvae: torch.nn.Module
    vqvae_spec: ModelSpec
    vqvae_path: Path
    vqvae_hash_matches: bool | None = None  # None: the prior records no hash of its VQ-VAE
    top_prior_spec: ModelSpec | None = None
    top_prior_path: Path | None = None

    @property
    def two_level(self) -> bool:
        """Whether the codes are (top, bottom) grids."""
        return isinstance(self.prior, TwoLevelPrior)

    @property
    def grid(self) -> tuple[int, int]:
        """``(height, width)`` of the (bottom) code grids."""
        size = int(self.prior_spec["grid_size"])
        return size, size

    @property
    def num_embeddings(self) -> int:
        """``K``, the number of (bottom) codes."""
        return int(self.prior_spec["num_embeddings"])

    @property
    def image_size(self) -> int:
        """Side of the square slices the VQ-VAE encodes and decodes."""
        return int(self.vqvae_spec["image_size"])

    def describe(self) -> dict[str, Any]:
        """Both checkpoints and architectures, as nested plain values (for run parameters)."""
        described = {
            "prior_ckpt": str(self.prior_path), "vqvae_ckpt": str(self.vqvae_path),
            "vqvae_hash_matches": self.vqvae_hash_matches,
            "prior": self.prior_spec.architecture(),
            "vqvae": self.vqvae_spec.state_dict(),
        }
        if self.top_prior_spec is not None:
            described.update(top_prior_ckpt=str(self.top_prior_path), top_prior=self.top_prior_spec.architecture())
        return described




def _values(spec: ModelSpec | Mapping[str, Any]) -> dict[str, Any]:
    return spec.values if isinstance(spec, ModelSpec) else dict(spec)


def _same_file(recorded: str | Path | None, given: str | Path) -> bool:
    """Whether ``given`` is the file the prior recorded (by path: a retrained VQ-VAE keeps its path)."""
    if not recorded:
        return False
    recorded, given = Path(str(recorded)), Path(str(given))
    if recorded.is_file() and given.is_file():
        return os.path.samefile(recorded, given)
    return recorded.resolve() == given.resolve()


def check_pair(
    prior_spec: ModelSpec | Mapping[str, Any],
    vqvae_spec: ModelSpec | Mapping[str, Any],
    prior_path: str | Path,
    vqvae_path: str | Path,
    purpose: Purpose = "sample",
) -> bool | None:
    """
    Check that a prior models the codes of a VQ-VAE checkpoint, by the one rule of this module.

    Returns:
        whether the VQ-VAE's SHA-256 is the recorded one (``False``: retrained in place, tolerated for sampling
        and inference), or ``None`` when the prior records none.

    Raises:
        CheckpointError: ``K`` or the grid differ, the VQ-VAE is another file with another SHA-256, or (for
            ``"resume"``) the recorded file changed.
    """
    if purpose not in _ADVICE:
        raise ValueError(f"purpose must be one of {sorted(_ADVICE)}, got {purpose!r}")
    prior, vqvae = _values(prior_spec), _values(vqvae_spec)
    level = prior.get("level", "bottom")
    pk, pg = int(prior["num_embeddings"]), int(prior["grid_size"])
    if "num_downsamplings" not in vqvae:  # another prior's spec (resuming): the same sizes and level
        (vk, vg), other_level = (int(vqvae["num_embeddings"]), int(vqvae["grid_size"])), vqvae.get("level", "bottom")
    elif level == "top" and not is_two_level(vqvae):
        (vk, vg), other_level = level_sizes(vqvae), "bottom"
    else:
        (vk, vg), other_level = level_sizes(vqvae, level), level
    if (pk, pg, level) != (vk, vg, other_level):
        named = "level" in prior or "level" in vqvae or is_two_level(vqvae)  # levels are worth naming
        ours, theirs = (f" {level}", f" {other_level} codes") if named else ("", "")
        raise CheckpointError(prior_path, f"this prior models K={pk}{ours} codes on a {pg}x{pg} grid, but the "
                                          f"VQ-VAE {vqvae_path} has K={vk}{theirs} on {vg}x{vg}: "
                                          f"{_ADVICE[purpose]}")
    recorded = prior.get("vqvae_sha256")
    if not recorded:
        logger.warning("the prior %s does not record the SHA-256 of its VQ-VAE: cannot check that it models %s",
                       prior_path, vqvae_path)
        return None
    given = checkpoint_sha256(vqvae_path)
    if given == recorded:
        return True
    recorded_path = prior.get("vqvae_checkpoint")
    if not _same_file(recorded_path, vqvae_path):
        raise CheckpointError(prior_path, f"this prior models the codes of another VQ-VAE: it was trained on "
                                          f"{recorded_path} (SHA-256 {recorded[:12]}...), not on {vqvae_path} "
                                          f"(SHA-256 {given[:12]}...): {_ADVICE[purpose]}")
    if purpose == "resume":
        raise CheckpointError(prior_path, f"the VQ-VAE {vqvae_path} changed since this prior was trained on its "
                                          f"codes (retrained in place? SHA-256 {recorded[:12]}..., now "
                                          f"{given[:12]}...): its codes mean something else now; "
                                          f"{_ADVICE[purpose]}")
    logger.warning("the VQ-VAE %s changed since the prior %s was trained on its codes (retrained in place? SHA-256 "
                   "%s..., now %s...): its codebook may differ, so results may look wrong", vqvae_path, prior_path,
                   recorded[:12], given[:12])
    return False


def load_pair(
    prior_ckpt: str | Path,
    vqvae_ckpt: str | Path | None = None,
    device: str | torch.device = "cpu",
    purpose: Purpose = "sample",
    *,
    prior: tuple[GatedPixelCNN, ModelSpec] | None = None,
    vqvae: tuple[torch.nn.Module, ModelSpec] | None = None,
    top_prior_ckpt: str | Path | None = None,
) -> ModelPair:
    """
    Load a prior and its VQ-VAE (eval mode, on ``device``) and check that they belong together (:func:`check_pair`).

    Args:
        prior_ckpt: the prior's checkpoint.
        vqvae_ckpt: the VQ-VAE's checkpoint; ``None`` (or ``"null"``): the one recorded in the prior's checkpoint.
        device: where both networks go.
        purpose: ``"sample"``, ``"infer"`` or ``"resume"``: what a VQ-VAE retrained in place means (see
            :func:`check_pair`).
        prior: the network and spec already loaded from ``prior_ckpt``, so it is not read twice.
        vqvae: the network and spec already loaded from ``vqvae_ckpt``, so it is not read twice.
        top_prior_ckpt: for a two-level VQ-VAE, the top prior (``prior_ckpt`` is then the bottom one); ``None``:
            the one recorded in the bottom prior's checkpoint. Checked against the VQ-VAE by the same rule.

    Raises:
        CheckpointError: a checkpoint is missing, unreadable, or the two do not belong together.
        ConfigError: no VQ-VAE given and none recorded in the prior.
    """
    prior_path = Path(str(prior_ckpt))
    network, prior_spec = prior if prior is not None else load_pixelcnn(prior_path, device)
    vqvae_path = _given_or_recorded(vqvae_ckpt, prior_spec, prior_path, "vqvae_ckpt", "VQ-VAE",
                                    "path/to/vqvae/model.pt")
    vqvae_network, vqvae_spec = vqvae if vqvae is not None else load_vqvae(vqvae_path, device)
    matches = check_pair(prior_spec, vqvae_spec, prior_path, vqvae_path, purpose)
    top_spec = top_path = None
    if is_two_level(vqvae_spec):
        top_path, (top, top_spec) = _load_top_prior(prior_spec, prior_path, top_prior_ckpt, device)
        check_pair(top_spec, vqvae_spec, top_path, vqvae_path, purpose)
        try:
            network = TwoLevelPrior(top, network)
        except ValueError as err:
            raise CheckpointError(prior_path, f"{err} (top prior {top_path})") from None
    return ModelPair(network.to(device).eval(), prior_spec, prior_path, vqvae_network.to(device).eval(),
                     vqvae_spec, vqvae_path, matches, top_spec, top_path)


def _load_top_prior(bottom_spec: ModelSpec, bottom_path: Path, top_prior_ckpt: str | Path | None,
                    device: str | torch.device) -> tuple[Path, tuple[GatedPixelCNN, ModelSpec]]:
    """The top prior of a two-level VQ-VAE: the one given, else the one the bottom prior records."""
    if bottom_spec.get("level", "bottom") != "bottom":
        raise ConfigError("prior_ckpt", f"{bottom_path} is the top prior of a two-level VQ-VAE: pass the bottom "
                                        "prior as prior_ckpt and the top one as top_prior_ckpt")
    path = _given_or_recorded(top_prior_ckpt, bottom_spec, bottom_path, "top_prior_ckpt", "top prior",
                              "path/to/prior_top/model.pt")
    return path, load_pixelcnn(path, device)


def _given_or_recorded(given: str | Path | None, spec: ModelSpec, prior_path: Path, key: str, what: str,
                       example: str) -> Path:
    """The checkpoint passed as ``key``, else the one the prior's spec records (``<key without _ckpt>_checkpoint``).

    Raises:
        ConfigError: neither given nor recorded.
        CheckpointError: the recorded file is gone (a given one that is missing fails when it is loaded).
    """
    given = optional(given)
    recorded = spec.get(key.replace("_ckpt", "_checkpoint"))
    if given is None and recorded is None:
        raise ConfigError(key, f"the prior {prior_path} does not record its {what}: pass --{key} {example}")
    path = Path(str(given if given is not None else recorded))
    if given is None and not path.is_file():
        raise CheckpointError(path, f"{what} checkpoint recorded in the prior {prior_path} not found (moved or "
                                    f"deleted? pass --{key} {example})")
    return path


def require_top_prior(vqvae_spec: ModelSpec | Mapping[str, Any], vqvae_ckpt: str | Path, level: str,
                      top_prior_ckpt: str | Path | None, output_dir: str | Path) -> Path | None:
    """The top prior a two-level VQ-VAE's bottom prior is trained with, checked before any training; None when the
    run trains another kind of prior.

    Raises:
        ConfigError: a bottom prior without its top prior (the message gives the command that trains it first).
        CheckpointError: the top prior is missing, is not a top prior, or models another VQ-VAE's codes.
    """
    if not is_two_level(_values(vqvae_spec)) or str(level) != "bottom":
        return None
    top_dir = f"{str(output_dir).rstrip('/')}_top"
    first = (f"python -m monai.bundle run training --config_file bundle/configs/train_prior.yaml --vqvae_ckpt "
             f"{vqvae_ckpt} --level top --output_dir {top_dir}")
    given = optional(top_prior_ckpt)
    if given is None:
        raise ConfigError("top_prior_ckpt", f"the VQ-VAE {vqvae_ckpt} has two levels, and the bottom prior is trained "
                                            f"with its top prior (sampling and inference need both): train the top "
                                            f"prior first ({first}), then run this again with --top_prior_ckpt "
                                            f"{top_dir}/checkpoints/model.pt")
    path = Path(str(given))
    if not path.is_file():
        raise CheckpointError(path, f"top prior checkpoint not found: train it first ({first}) or pass the one "
                                    f"you trained as --top_prior_ckpt")
    _, spec = load_pixelcnn(path)
    if spec.get("level") != "top":
        raise CheckpointError(path, f"not a top prior (its level is {spec.get('level', 'none')}): pass the prior "
                                    f"trained with --level top as --top_prior_ckpt")
    check_pair(spec, vqvae_spec, path, vqvae_ckpt, "sample")
    return path


def check_resume(resume_path: str | Path | None, vqvae_checkpoint: str | Path,
                 spec: ModelSpec | Mapping[str, Any]) -> None:
    """Refuse to resume a prior checkpoint that does not belong with this VQ-VAE (:func:`check_pair`, ``"resume"``)
    or was trained with another architecture."""
    if not resume_path:
        return
    saved = read_checkpoint(resume_path).get("spec")
    if not isinstance(saved, Mapping) or "num_layers" not in saved:
        raise CheckpointError(resume_path, "not a Gated PixelCNN checkpoint of oasis-gen (no prior spec saved)")
    check_pair(saved, spec, resume_path, vqvae_checkpoint, "resume")
    wanted = _values(spec)
    changed = [f"{k}={saved.get(k)!r} (config: {wanted.get(k)!r})" for k in ARCHITECTURE_KEYS
               if saved.get(k) != wanted.get(k)]
    if changed:
        raise ConfigError("resume", f"{resume_path} was trained with {', '.join(changed)}; keep those values, "
                                    f"or {_ADVICE['resume']}")

"""Architectures saved beside weights, and safe checkpoint reading, shared by every network of the project."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from oasis_gen.utils.errors import CheckpointError


class ModelSpec:
    """A network's architecture as plain values, saved in checkpoints so a model is rebuilt exactly.

    It behaves like a module for checkpoint handlers (``state_dict`` / ``load_state_dict``).
    """

    def __init__(self, **values: Any):
        self.values = dict(values)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def architecture(self) -> dict[str, Any]:
        """The network's settings without the checkpoints it links to (what two specs compare and summaries show)."""
        return {k: v for k, v in self.values.items() if k not in ("vqvae_checkpoint", "top_prior_checkpoint")}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.values = dict(state)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (weights only); a missing or corrupt file gives a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint not found (train that model first, or check the path)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise CheckpointError(path, f"not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(path, f"not an oasis-gen checkpoint (holds a {type(state).__name__})")
    return state


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (ties derived data, such as cached codes, to the checkpoint they came from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()



def checkpoint_sha256(path: str | Path) -> str:
    """SHA-256 of a checkpoint file; a missing one gives a CheckpointError naming it."""
    if not Path(path).is_file():
        raise CheckpointError(path, "checkpoint not found (train that model first, or check the path)")
    return file_sha256(path)

def read_network_checkpoint(path: str | Path, kind: str, marker: str) -> dict[str, Any]:
    """A checkpoint of one kind of oasis-gen network (``model`` weights and ``spec``), else a CheckpointError.

    ``marker`` is a spec key only this kind of network has, so another model's checkpoint is refused by name.
    """
    state = read_checkpoint(path)
    if "spec" not in state or "model" not in state or marker not in state["spec"]:
        raise CheckpointError(path, f"not a {kind} checkpoint of oasis-gen (keys: {sorted(state)})")
    return state


def load_network(path: str | Path, build: Callable[[ModelSpec], nn.Module], kind: str, marker: str,
                 device: str | torch.device = "cpu") -> tuple[nn.Module, ModelSpec]:
    """Rebuild a trained network from its checkpoint (architecture from ``spec``, then weights), in eval mode
    (``kind`` and ``marker`` as in :func:`read_network_checkpoint`)."""
    state = read_network_checkpoint(path, kind, marker)
    spec = ModelSpec(**state["spec"])
    network = build(spec)
    try:
        network.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(path, f"weights do not match the architecture saved with them: {err}") from None
    return network.to(device).eval(), spec

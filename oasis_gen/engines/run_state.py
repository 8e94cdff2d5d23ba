"""What a resumed training needs besides weights, optimizer and schedule: every random state and the handlers' state.

:class:`RunState` goes into the resumable checkpoint beside the trainer (one ``run_state`` entry of the
``CheckpointSaver``'s ``save_dict`` and the ``CheckpointLoader``'s ``load_dict``). It holds:

- the random states: torch's (CPU and CUDA), numpy's, Python's ``random``, the generators of the data loaders'
  samplers (where they have their own) and the random state of every random transform of their datasets;
- the state of the training's handlers that keep one across epochs (anything with ``state_dict`` and
  ``load_state_dict``: the time budget's trained seconds, the codebook restarts' usage counts, and the early-stop
  counter of MONAI's ``EarlyStopHandler``, whose ignite ``EarlyStopping`` holds it).

It is saved at the end of an epoch and loaded when the trainer starts (``Events.STARTED``), the point from which the
uninterrupted run and the resumed one draw the same numbers: a run killed at any iteration and resumed from its
last checkpoint ends with the same weights as one never interrupted (on the CPU, in one process). Everything is
held as tensors, numbers, text and lists, so the checkpoint loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)


def numpy_state(state: tuple) -> dict[str, Any]:
    """A numpy ``RandomState.get_state()`` tuple as tensors and numbers (no numpy objects in checkpoints)."""
    name, keys, pos, has_gauss, cached = state
    return {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def numpy_tuple(state: Mapping[str, Any]) -> tuple:
    """The ``RandomState.set_state()`` tuple of :func:`numpy_state`'s dict."""
    keys = np.asarray(torch.as_tensor(state["keys"]).numpy(), dtype=np.uint32)
    return state["name"], keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached_gaussian"])


def python_state() -> dict[str, Any]:
    """Python's ``random`` state as a tensor and numbers."""
    version, internal, gauss = random.getstate()
    return {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss}


def set_python_state(state: Mapping[str, Any]) -> None:
    """Restore Python's ``random`` state saved by :func:`python_state`."""
    internal = tuple(int(v) for v in torch.as_tensor(state["internal"]).tolist())
    random.setstate((int(state["version"]), internal, state["gauss_next"]))


def loader_generators(loader: Any) -> list[torch.Generator]:
    """The torch generators a data loader draws its order from (its own, its sampler's), each once."""
    found: list[torch.Generator] = []
    for owner in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None),
                  getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
            found.append(generator)
    return found


def random_transforms(loader: Any) -> list[Any]:
    """The random transforms (MONAI ``Randomizable``, with a numpy ``R``) of a data loader's dataset, in order."""
    from monai.transforms import Compose, Randomizable

    transform = getattr(getattr(loader, "dataset", None), "transform", None)
    chain = transform.flatten().transforms if isinstance(transform, Compose) else [transform]
    found: list[Any] = []
    for item in chain:
        # a dictionary transform may hold array transforms with random states of their own
        for candidate in (item, *vars(item).values()) if item is not None else ():
            if isinstance(candidate, Randomizable) and all(candidate is not f for f in found):
                found.append(candidate)
    return found


def keeps_state(handler: Any) -> bool:
    """Whether a handler has a state a resume needs: a ``state_dict``/``load_state_dict`` pair, or an early stop."""
    from monai.handlers import EarlyStopHandler

    return isinstance(handler, EarlyStopHandler) or (hasattr(handler, "state_dict")
                                                     and hasattr(handler, "load_state_dict"))


def handler_state(handler: Any) -> Any:
    """The object holding a handler's state (MONAI's EarlyStopHandler: its ignite EarlyStopping, once it has one)."""
    from monai.handlers import EarlyStopHandler

    return getattr(handler, "_handler", None) if isinstance(handler, EarlyStopHandler) else handler


class RunState:
    """Random states and handler states of a training, as a checkpoint object (``state_dict``/``load_state_dict``).

    Args:
        loaders: the training's data loaders (their samplers' generators and their datasets' random transforms).
        handlers: the trainer's and evaluator's handlers; those with a state (see :func:`handler_state`) are kept,
            by class name.
    """

    def __init__(self, loaders: Iterable[Any] = (), handlers: Iterable[Any] = ()):
        self.loaders = [loader for loader in loaders if loader is not None]
        self.handlers: dict[str, Any] = {}
        for handler in handlers:
            if handler is not None and keeps_state(handler):
                name = type(handler).__name__
                self.handlers[name if name not in self.handlers else f"{name}_{len(self.handlers)}"] = handler

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized()
            else [],
            "numpy": numpy_state(np.random.get_state()),
            "python": python_state(),
            "generators": [[g.get_state() for g in loader_generators(loader)] for loader in self.loaders],
            "transforms": [[numpy_state(t.R.get_state()) for t in random_transforms(loader)]
                           for loader in self.loaders],
            "handlers": {},
        }
        for name, handler in self.handlers.items():
            inner = handler_state(handler)
            if inner is not None:
                state["handlers"][name] = inner.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if state.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        np.random.set_state(numpy_tuple(state["numpy"]))
        set_python_state(state["python"])
        for loader, saved in zip(self.loaders, state.get("generators", []), strict=False):
            for generator, generator_state in zip(loader_generators(loader), saved, strict=False):
                generator.set_state(generator_state)
        for loader, saved in zip(self.loaders, state.get("transforms", []), strict=False):
            for transform, transform_state in zip(random_transforms(loader), saved, strict=False):
                transform.R.set_state(numpy_tuple(transform_state))
        for name, handler_saved in state.get("handlers", {}).items():
            inner = handler_state(self.handlers[name]) if name in self.handlers else None
            if inner is None:
                logger.warning("the checkpoint holds the state of %s, which this run does not use: left out", name)
                continue
            inner.load_state_dict(handler_saved)

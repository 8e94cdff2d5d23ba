"""Checkpoints a training run can be killed during and resumed from: atomic saving, checked resuming, cleanup.

A run killed at any moment (even ``kill -9``) and started again with the same command goes on from its last
resumable checkpoint (``<ckpt_dir>/last_checkpoint_epoch=N.pt``):

- every checkpoint is written to a temporary name beside its target, synced to disk, renamed, and its folder
  synced (:class:`AtomicDiskSaver`, :func:`oasis_gen.utils.files.atomic_path`), so even a power loss leaves the old file
  or the new one; the two newest resumable checkpoints are kept, an older one deleted only once the new one is in
  place;
- before MONAI's ``CheckpointLoader`` sees it, :func:`resume_checkpoint` reads the checkpoint (weights only) and
  checks it was made for the network being trained; one that fails to load (truncated, not a checkpoint) is named
  in a warning and the previous one is used; a foreign one (another network) stops the run with one line that
  names it and says what to do, and nothing is deleted;
- the checkpoint holds the run's random states and handler states (``run_state``,
  :class:`oasis_gen.engines.run_state.RunState`), so the resumed run goes on exactly as the uninterrupted one;
- the best-model file (``model.pt``) carries its score, which :class:`AtomicCheckpointSaver` reads back on resume,
  so a worse first validation after a resume does not replace the best model.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver
from torch import nn

from oasis_gen.engines.distributed import unwrap
from oasis_gen.networks.spec import ModelSpec, read_checkpoint
from oasis_gen.utils.config_values import flag
from oasis_gen.utils.errors import CheckpointError
from oasis_gen.utils.files import atomic_path, is_temporary

logger = logging.getLogger(__name__)
EPOCH = re.compile(r"=(\d+)\.pt$")
# the name tempfile.NamedTemporaryFile gives the temporary files of ignite's own atomic DiskSaver
IGNITE_TEMPORARY = re.compile(r"^tmp[a-z0-9_]{8}$")
# what a resumable checkpoint of train.yaml / train_prior.yaml holds (their CheckpointLoader's load_dict, and spec)
RESUMABLE_KEYS = ("model", "optimizer", "lr_scheduler", "trainer", "run_state", "spec")
WHAT_TO_DO = "delete it (or move it away), or pass --resume false or another --output_dir to start a new training"
# a spec key that only one kind of network has (as load_vqvae / load_pixelcnn use them)
KIND_MARKERS = {"num_downsamplings": "VQ-VAE", "num_layers": "Gated PixelCNN prior"}


def resumable_checkpoints(ckpt_dir: str | Path, prefix: str = "last") -> list[str]:
    """The resumable checkpoints (``<prefix>_*=N.pt``) in a folder, newest (highest epoch N) first.

    Temporary files of interrupted saves never match (they start with a dot, or are ignite's ``tmp*`` names).
    """
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return []
    candidates = [p for p in folder.glob(f"{prefix}_*.pt") if EPOCH.search(p.name) and p.is_file()]
    return [str(p) for p in sorted(candidates, key=lambda p: -int(EPOCH.search(p.name)[1]))]


def latest_checkpoint(ckpt_dir: str | Path, prefix: str = "last") -> str | None:
    """The newest resumable checkpoint (``<prefix>_*=N.pt`` with the highest epoch N) in a folder, or None."""
    found = resumable_checkpoints(ckpt_dir, prefix)
    return found[0] if found else None


def is_leftover(name: str) -> bool:
    """Whether a file name in a checkpoint folder is the temporary file of a save that was interrupted."""
    return is_temporary(name) or IGNITE_TEMPORARY.match(name) is not None


def remove_leftovers(ckpt_dir: str | Path) -> list[Path]:
    """Delete the temporary files interrupted saves left in a checkpoint folder; return what was deleted."""
    folder = Path(ckpt_dir)
    removed = []
    if folder.is_dir():
        for path in folder.iterdir():
            if path.is_file() and is_leftover(path.name):
                path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        logger.info("removed %d temporary file(s) of interrupted saves from %s: %s", len(removed), folder,
                    ", ".join(p.name for p in removed))
    return removed


def checkpoint_epoch(state: Mapping[str, Any]) -> int | None:
    """The number of epochs a resumable checkpoint's trainer state has completed (None when it has none)."""
    trainer = state.get("trainer")
    if not isinstance(trainer, Mapping) or not trainer.get("epoch_length"):
        return None
    return int(trainer.get("iteration", 0)) // int(trainer["epoch_length"])


def network_kind(spec: Mapping[str, Any]) -> str:
    """Which network of oasis-gen a saved spec describes ("VQ-VAE", "Gated PixelCNN prior" or "unknown")."""
    return next((kind for marker, kind in KIND_MARKERS.items() if marker in spec), "unknown")


def _short(error: BaseException, limit: int = 160) -> str:
    """An exception as one short line (torch's loading errors run over several paragraphs)."""
    text = " ".join(str(error).split())
    sentence = text.split(". ")[0]
    if len(sentence) > limit:
        sentence = sentence[:limit - 3] + "..."
    return f"{type(error).__name__}: {sentence}" if sentence else type(error).__name__


def _read_resumable(path: Path) -> dict[str, Any]:
    """Read a resumable checkpoint (weights only), with a clear CheckpointError when it is damaged."""
    if path.stat().st_size == 0:
        raise CheckpointError(path, f"cannot resume: the checkpoint is empty (0 bytes); {WHAT_TO_DO}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before failing on foreign files
            warnings.simplefilter("ignore")
            return read_checkpoint(path)
    except CheckpointError as err:
        cause = err.__context__ if err.__context__ is not None else err
        problem = _short(cause) if cause is not err else err.problem
        raise CheckpointError(path, f"cannot resume: the checkpoint is damaged or not a PyTorch checkpoint "
                                    f"({problem}); {WHAT_TO_DO}") from None


def _spec_differences(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """``key=saved (config: wanted)`` for each spec value that differs."""
    return [f"{k}={saved.get(k)!r} (config: {wanted.get(k)!r})" for k in wanted if saved.get(k) != wanted.get(k)]


def check_resumable(path: str | Path, network: nn.Module | None = None,
                    spec: ModelSpec | Mapping[str, Any] | None = None, max_epochs: int | None = None,
                    check: Callable[[str], Any] | None = None,
                    required: Sequence[str] = RESUMABLE_KEYS) -> dict[str, Any]:
    """Check a checkpoint can resume the training of ``network`` (built from ``spec``); return its content.

    Raises a CheckpointError naming the file, the problem and what to do when it is damaged, holds another kind
    of network, fails ``check``, lacks a part a resume needs, holds weights of other shapes, or has trained more
    epochs than ``max_epochs``.
    """
    path = Path(path)
    state = _read_resumable(path)
    saved_spec = state["spec"] if isinstance(state.get("spec"), Mapping) else {}
    wanted = (spec.values if isinstance(spec, ModelSpec) else dict(spec)) if spec is not None else None
    if wanted is not None and network_kind(saved_spec) != network_kind(wanted):
        held = "holds no network spec of oasis-gen" if not saved_spec else f"holds a {network_kind(saved_spec)}"
        raise CheckpointError(path, f"cannot resume: it {held}, but this run trains a {network_kind(wanted)}; "
                                    f"{WHAT_TO_DO}")
    if check is not None:
        try:
            check(str(path))
        except CheckpointError as err:
            if "resume" in err.problem:  # it already says what to do
                raise
            raise CheckpointError(path, f"cannot resume: {err.problem}; {WHAT_TO_DO}") from None
    missing = [key for key in required if key not in state]
    if missing == ["run_state"]:
        raise CheckpointError(path, "cannot resume: it was saved by an earlier version of oasis-gen, without the "
                                    f"random states an exact resume needs; {WHAT_TO_DO}")
    if missing:
        raise CheckpointError(path, f"cannot resume: not a resumable checkpoint of oasis-gen (it lacks "
                                    f"{', '.join(missing)}); {WHAT_TO_DO}")
    if network is not None:
        expected = {k: tuple(v.shape) for k, v in unwrap(network).state_dict().items()}
        model = state["model"] if isinstance(state["model"], Mapping) else {}
        found = {k: tuple(getattr(v, "shape", ())) for k, v in model.items()}
        if found != expected:
            changed = _spec_differences(saved_spec, wanted) if wanted is not None else []
            if not changed:
                first = next(k for k in sorted(set(found) | set(expected)) if found.get(k) != expected.get(k))
                changed = [f"weights {first}: {found.get(first, 'absent')} (network: {expected.get(first, 'absent')})"]
            raise CheckpointError(path, f"cannot resume: it was trained with another architecture: "
                                        f"{', '.join(changed)}; keep those values, or {WHAT_TO_DO}")
    epoch = checkpoint_epoch(state)
    if max_epochs is not None and epoch is not None and epoch > int(max_epochs):
        raise CheckpointError(path, f"cannot resume: it has trained {epoch} epochs, more than max_epochs="
                                    f"{max_epochs}; pass --max_epochs {epoch + 1} or more to train on, or "
                                    f"{WHAT_TO_DO}")
    return state


def resume_checkpoint(ckpt_dir: str | Path, resume: object = True, network: nn.Module | None = None,
                      spec: ModelSpec | Mapping[str, Any] | None = None, max_epochs: int | None = None,
                      check: Callable[[str], Any] | None = None) -> str | None:
    """The checked checkpoint a run resumes from, or None (resume off, or no resumable checkpoint yet).

    Args:
        ckpt_dir: the run's checkpoint folder; temporary files of interrupted saves are deleted from it (once the
            checkpoint passed its checks).
        resume: the ``resume`` setting (true/false, also as text from the command line).
        network: the network to be trained; the checkpoint's weights must have its shapes.
        spec: the network's spec from the config; the checkpoint must hold the same kind of network (its
            differences are named when the weights do not fit).
        max_epochs: the run's max_epochs; the checkpoint must not have trained more.
        check: a further check of the checkpoint's path (e.g. ``oasis_gen.generation.pair.check_resume`` for the prior).

    A checkpoint that fails to load (empty, truncated, not a checkpoint) is named in a warning and the one before
    it is used; it is left where it is (the next save of its epoch replaces it).

    Raises:
        CheckpointError: no checkpoint loads (the newest is named), or the newest that loads cannot resume this
            training (it is left where it is).
    """
    path = None
    if flag(resume, "resume"):
        damaged: list[CheckpointError] = []
        for candidate in resumable_checkpoints(ckpt_dir):
            try:
                _read_resumable(Path(candidate))
            except CheckpointError as err:  # fails to load: named below, and the previous checkpoint is tried
                damaged.append(err)
                continue
            check_resumable(candidate, network, spec, max_epochs, check)  # loads, but is foreign: stops the run
            path = candidate
            break
        if damaged and path is None:
            raise damaged[0]
        for err in damaged:
            problem = err.problem.removeprefix("cannot resume: ").removesuffix(f"; {WHAT_TO_DO}")
            logger.warning("%s: %s; resuming from the previous checkpoint instead: %s", err.path, problem, path)
    if idist.get_rank() == 0:  # the rank that writes checkpoints
        remove_leftovers(ckpt_dir)
    return path


def announce_resume(path: str | None) -> None:
    """Say which checkpoint a run resumes from (or that it starts afresh)."""
    if path:
        match = EPOCH.search(Path(path).name)
        logger.info("resuming from %s (epoch %s)", path, match[1] if match else "?")
    else:
        logger.info("no checkpoint to resume from: training starts at epoch 1")


class AtomicDiskSaver(DiskSaver):
    """Ignite's DiskSaver that writes through a temporary file and deletes replaced checkpoints only afterwards.

    Ignite removes the checkpoint to be replaced *before* it saves the new one, so a crash in between would
    leave none; here the removal waits until the new file is in place. A fixed ``filename`` (MONAI's
    ``key_metric_filename``, e.g. ``model.pt``) is always written under that name and replaced in one rename.
    Unlike ignite's ``atomic=True`` (which MONAI turns off for this reason), files keep the permissions the
    umask gives, not 0600.
    """

    def __init__(self, dirname: str | Path, filename: str | None = None, save_on_rank: int = 0, **kwargs: Any):
        super().__init__(dirname=dirname, atomic=True, require_empty=False, save_on_rank=save_on_rank, **kwargs)
        self.filename = filename
        self.pending: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint, self.filename or filename, metadata)

    def _save_func(self, checkpoint: Mapping, path: Path, func: Callable) -> None:
        with atomic_path(path) as tmp:
            func(checkpoint, tmp, **self.kwargs)
        for name in self.pending:
            if name != path.name:
                (self.dirname / name).unlink(missing_ok=True)
        self.pending = []

    def remove(self, filename: str) -> None:
        if self.filename is None and idist.get_rank() == self.save_on_rank:
            self.pending.append(filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's CheckpointSaver whose files are written atomically, and whose best score survives a resume.

    Takes MONAI's arguments, plus ``resume``: when true and a best-model file (``key_metric_filename``) saved
    with ``key_metric_save_state: true`` exists, its score becomes the one to beat, so the first validation
    after a resume replaces the best model only if it is better.
    """

    def __init__(self, save_dir: str, save_dict: dict, resume: object = False, **kwargs: Any):
        super().__init__(save_dir, save_dict, **kwargs)
        self.key_metric_filename = kwargs.get("key_metric_filename")
        self.lower_is_better = bool(kwargs.get("key_metric_negative_sign", False))
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = AtomicDiskSaver(save_dir, getattr(checkpoint.save_handler, "filename", None))
        if flag(resume, "resume") and self._key_metric_checkpoint is not None and self.key_metric_filename:
            self.restore_best(Path(save_dir) / self.key_metric_filename)

    def restore_best(self, path: Path) -> None:
        """Make the score saved in the best-model file the one to beat (a missing or unreadable one is skipped)."""
        if not path.is_file():
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                saved = read_checkpoint(path).get("checkpointer")
        except CheckpointError as err:
            logger.warning("%s; the first validation will replace it", err)
            return
        if not isinstance(saved, Mapping) or not saved.get("_saved"):
            logger.warning("%s holds no best score (saved without key_metric_save_state): the first validation "
                           "after this resume replaces it", path)
            return
        self._key_metric_checkpoint.load_state_dict(saved)
        score = float(self._key_metric_checkpoint._saved[-1].priority)
        logger.info("%s stays the best model until a validation beats its %s %.6g", path,
                    "key metric" if not self.lower_is_better else "key metric (lower is better)",
                    -score if self.lower_is_better else score)


class KeepLatestCheckpoint:
    """After each epoch's save, delete all but the ``keep`` newest resumable checkpoints up to the epoch just completed.

    An earlier process's saver leaves its own files, which this process's saver does not know of. Checkpoints of
    later epochs than the one just completed are an older run's (this one started afresh, ``resume: false``) and
    are deleted, so it does not lose its own. The one before the newest is kept (``keep=2``) for a resume to fall
    back to should the newest fail to load.
    """

    def __init__(self, ckpt_dir: str | Path, prefix: str = "last", keep: int = 2):
        self.ckpt_dir = Path(ckpt_dir)
        self.prefix = prefix
        self.keep = max(int(keep), 1)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if idist.get_rank() != 0:
            return
        resumable = [Path(p) for p in resumable_checkpoints(self.ckpt_dir, self.prefix)]
        current = [p for p in resumable if int(EPOCH.search(p.name)[1]) <= engine.state.epoch]
        kept = current[:self.keep] if current else resumable[:1]
        for path in resumable:
            if path not in kept:
                path.unlink(missing_ok=True)

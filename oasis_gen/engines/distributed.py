"""Multi-process training under torchrun: the process group, what each rank runs, and a check that replicas agree.

``bundle/configs/multi_gpu_train.yaml`` (and ``multi_gpu_train_prior.yaml``) use these helpers; every function works
in a single process too (rank 0 of a world of one), so handlers may call them unconditionally.
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import json
import logging
import os
from collections.abc import Iterable, Sequence, Sized
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from torch import nn

from oasis_gen.utils.errors import ConfigError
from oasis_gen.utils.files import write_text

logger = logging.getLogger(__name__)

# what torchrun sets in every process it starts: its place, and where the processes meet (the env:// rendezvous)
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
LAUNCH_HINT = ("torchrun --standalone --nnodes=1 --nproc_per_node=N -m monai.bundle run training "
               "--config_file \"['bundle/configs/train.yaml','bundle/configs/multi_gpu_train.yaml']\"")


def is_distributed() -> bool:
    """Whether a process group is open (collectives are then needed to keep the ranks in step)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank: from the open process group, else from torchrun's ``RANK`` (0 outside torchrun)."""
    return dist.get_rank() if is_distributed() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """The number of processes: from the open process group, else from torchrun's ``WORLD_SIZE`` (1 outside)."""
    return dist.get_world_size() if is_distributed() else int(os.environ.get("WORLD_SIZE", "1"))


def local_device() -> torch.device:
    """This process's device: ``cuda:<LOCAL_RANK>`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def default_backend() -> str:
    """``nccl`` when CUDA is available, ``gloo`` otherwise."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_process_group(backend: str | None = None) -> None:
    """Open the process group of a torchrun launch (``backend`` None: :func:`default_backend`); no-op if open."""
    if is_distributed():
        return
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise ConfigError("config_file", f"the multi-GPU configs run under torchrun ({', '.join(missing)} not set); "
                                         f"launch with: {LAUNCH_HINT}")
    backend = backend or default_backend()
    if torch.cuda.is_available():
        check_gpu_count(int(os.environ["LOCAL_RANK"]),
                        int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])), torch.cuda.device_count())
        torch.cuda.set_device(local_device())
    dist.init_process_group(backend=backend)
    logger.info("rank %d of %d started (backend %s, device %s)", rank(), world_size(), backend, local_device())


def check_gpu_count(local_rank: int, local_processes: int, gpus: int) -> None:
    """Refuse more processes on a machine than it has GPUs (one process per GPU), with the launch that fits."""
    if local_rank >= gpus or local_processes > gpus:
        raise ConfigError("nproc_per_node", f"{local_processes} processes on this machine, but it has {gpus} "
                                            f"GPU{'s' if gpus != 1 else ''}: one process per GPU, launch with "
                                            f"--nproc_per_node={gpus} (or CUDA_VISIBLE_DEVICES='' for CPU "
                                            f"processes over gloo)")


def split_sampler(dataset: Sized, split: str, **kwargs: Any) -> Any:
    """MONAI's DistributedSampler over a split; a split with fewer items than processes is refused in one line.

    Every process must score at least one item of the split (the metrics are gathered from all of them).
    """
    from monai.data import DistributedSampler

    processes = world_size()
    if len(dataset) < processes:
        raise ConfigError("nproc_per_node", f"the {split} split has {len(dataset)} slice"
                                            f"{'s' if len(dataset) != 1 else ''}, fewer than the {processes} "
                                            f"processes (each needs one): launch at most --nproc_per_node="
                                            f"{max(len(dataset), 1)}, or give the {split} split more slices")
    return DistributedSampler(dataset, **kwargs)


def destroy_process_group() -> None:
    """Close the process group (no-op when none is open), after a last barrier so no rank leaves early.

    Garbage is collected first: a rank that stopped on an exception keeps its frames (and any collective's work
    object with its tensors) in reference cycles, and gloo aborts the process (SIGABRT, "terminate called without
    an active exception") if such work is only freed during interpreter shutdown, after the group is gone.
    """
    if is_distributed():
        gc.collect()
        barrier()
        dist.destroy_process_group()


def data_parallel(module: nn.Module, device: torch.device, sync_buffers: bool = False,
                  **kwargs: Any) -> nn.parallel.DistributedDataParallel:
    """Wrap a network already on ``device`` in DistributedDataParallel: ``device_ids`` on CUDA, none on the CPU.

    ``sync_buffers=False``: DDP does not re-send rank 0's buffers before every forward (torch 2.13 calls that
    ``forward_sync_buffers``, earlier versions ``broadcast_buffers``). ``kwargs`` go to DistributedDataParallel.
    """
    device = torch.device(device)
    accepted = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    buffers = "forward_sync_buffers" if "forward_sync_buffers" in accepted else "broadcast_buffers"
    return nn.parallel.DistributedDataParallel(
        module, device_ids=[device] if device.type == "cuda" else None, **{buffers: bool(sync_buffers)}, **kwargs)


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (or the module itself)."""
    return getattr(network, "module", network)


def _collective_device() -> torch.device:
    """Where tensors must be for the open backend's collectives (NCCL: this process's GPU; gloo: the CPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every rank gets here (no-op in a single process)."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def enter_rank_zero_first() -> None:
    """Start of a section rank 0 runs before the others (e.g. building a cache they then reuse): others wait here."""
    if rank() > 0:
        barrier()


def exit_rank_zero_first() -> None:
    """End of a section begun by :func:`enter_rank_zero_first`: rank 0 releases the other ranks."""
    if rank() == 0:
        barrier()


def on_this_rank(handlers: Iterable[Any] | None, rank_zero_only: Sequence[type] = ()) -> list[Any]:
    """The handlers this process attaches: on rank 0 all of them, elsewhere those not of a ``rank_zero_only`` type.

    Disabled handlers (``None`` in a resolved config list) are dropped on every rank.
    """
    kept = [handler for handler in handlers or () if handler is not None]
    if rank() == 0:
        return kept
    return [handler for handler in kept if not isinstance(handler, tuple(rank_zero_only))]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of a tensor over all ranks, on the tensor's device (a copy; the tensor itself in a single process)."""
    if not is_distributed():
        return tensor
    total = tensor.to(_collective_device(), copy=True)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(tensor.device)


def rank_zero_decides(flag: bool) -> bool:
    """Rank 0's value of a yes/no decision, on every rank (so that all ranks, e.g., stop after the same epoch)."""
    if not is_distributed():
        return bool(flag)
    decision = torch.tensor([int(bool(flag))], device=_collective_device())
    dist.broadcast(decision, src=0)
    return bool(decision.item())


def gather_objects(value: Any) -> list[Any]:
    """Every rank's value of a picklable object, in rank order (``[value]`` in a single process)."""
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def tensor_sha256(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and exact bytes (bit-for-bit equality, whatever the device)."""
    data = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest = hashlib.sha256(f"{data.dtype}{tuple(tensor.shape)}".encode())
    digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def state_checksums(network: nn.Module) -> dict[str, str]:
    """SHA-256 of every parameter and buffer of a network (unwrapped from DDP), by state-dict name."""
    module = network.module if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else network
    tensors = dict(module.named_parameters())
    tensors.update(module.named_buffers())
    return {name: tensor_sha256(tensor) for name, tensor in sorted(tensors.items())}


def combined_sha256(checksums: dict[str, str]) -> str:
    """One SHA-256 for a whole set of named checksums (equal sets give equal digests)."""
    lines = "".join(f"{name}:{value}\n" for name, value in sorted(checksums.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


class ReplicaMismatchError(RuntimeError):
    """The ranks of a multi-process run hold different networks (a synchronisation bug, not a user error)."""


class ReplicaCheck:
    """After every epoch, check that all ranks hold bit-identical networks; rank 0 writes the evidence.

    Each rank hashes every parameter and buffer of its (unwrapped) network; the checksums of all ranks are gathered
    to every rank, rank 0 writes them to ``<output_dir>/replicas.json`` and every rank raises
    :class:`ReplicaMismatchError` if any tensor differs (all ranks see the same checksums, so they stop together).
    DDP keeps the trained weights equal by averaging gradients; the EMA codebook of the VQ-VAE is kept equal by
    its quantizer's own all-reduce and by codebook restarts broadcast from rank 0, and this is where that is proven.
    """

    def __init__(self, network: nn.Module, output_dir: str | Path, filename: str = "replicas.json"):
        self.network = network
        self.path = Path(output_dir) / filename

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        checksums = gather_objects(state_checksums(self.network))
        names = sorted(set().union(*checksums))
        differing = [name for name in names if len({ranked.get(name) for ranked in checksums}) > 1]
        if rank() == 0:
            report = {
                "epoch": engine.state.epoch, "world_size": len(checksums), "agree": not differing,
                "differing": differing,
                "ranks": [{"rank": r, "sha256": combined_sha256(ranked), "tensors": ranked}
                          for r, ranked in enumerate(checksums)],
            }
            write_text(self.path, json.dumps(report, indent=1) + "\n")
        if differing:
            shown = ", ".join(differing[:5]) + (", ..." if len(differing) > 5 else "")
            raise ReplicaMismatchError(f"{self.path}: the {len(checksums)} ranks hold different networks after epoch "
                                       f"{engine.state.epoch}: {len(differing)} of {len(names)} tensors differ "
                                       f"({shown})")
        if rank() == 0:
            logger.info("the %d ranks hold identical networks after epoch %d (%d tensors, sha256 %s)",
                        len(checksums), engine.state.epoch, len(names), combined_sha256(checksums[0])[:12])

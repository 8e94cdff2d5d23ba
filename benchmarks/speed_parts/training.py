"""Compute speed: this machine's matmul rate, and the VQ-VAE's training step (images/s and achieved GFLOP/s).

The network, optimizer, loss and batch size are the bundle's (``bundle/configs/train.yaml`` read with MONAI's
ConfigParser), and the step is the one MONAI's SupervisedTrainer takes, so the figures describe what training runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from kit import bundle_parser
from torch.utils.flop_counter import FlopCounterMode


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU needs no wait)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(size: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                  repeats: int = 5) -> dict[str, Any]:
    """GFLOP/s of one ``size x size`` matmul in dtype: best of ``repeats`` after a warm-up (2 n^3 FLOPs each)."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b  # warm-up: thread pool, kernel selection
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    best = min(times)
    return {"dtype": str(dtype).removeprefix("torch."), "size": size, "repeats": repeats, "device": str(device),
            "torch_threads": torch.get_num_threads(), "seconds_best": best, "gflops": 2 * size**3 / best / 1e9}


def matmul_rates(size: int, device: str | torch.device = "cpu", repeats: int = 5) -> list[dict[str, Any]]:
    """The matmul rate in float32, and on CUDA also in float16 and bfloat16 (the dtypes mixed precision uses)."""
    device = torch.device(device)
    dtypes = [torch.float32] + ([torch.float16, torch.bfloat16] if device.type == "cuda" else [])
    return [matmul_gflops(size, dtype, device, repeats) for dtype in dtypes]


@dataclass
class VQVAETraining:
    """What train.yaml trains with: network, optimizer, loss, batch size, image size, device and mixed precision."""

    network: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_function: torch.nn.Module
    batch_size: int
    image_size: int
    device: torch.device
    amp: bool

    @property
    def parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.network.parameters())


def vqvae_training(**overrides: Any) -> VQVAETraining:
    """Build train.yaml's network, optimizer and loss (with command-line style overrides, e.g. ``image_size=256``)."""
    parser = bundle_parser("train.yaml", **overrides)
    return VQVAETraining(
        network=parser.get_parsed_content("network"),
        optimizer=parser.get_parsed_content("optimizer"),
        loss_function=parser.get_parsed_content("loss"),
        batch_size=int(parser.get_parsed_content("batch_size")),
        image_size=int(parser.get_parsed_content("image_size")),
        device=torch.device(parser.get_parsed_content("device")),
        amp=bool(parser.get_parsed_content("amp")),
    )


class TrainingStep:
    """One optimisation step as MONAI's SupervisedTrainer takes it: zero the gradients, forward (autocast under
    amp), loss against the input itself, backward (scaled under amp), optimizer step."""

    def __init__(self, training: VQVAETraining):
        self.training = training
        self.scaler = torch.amp.GradScaler("cuda") if training.amp else None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        t = self.training
        t.network.train()
        t.optimizer.zero_grad(set_to_none=False)  # SupervisedTrainer's default (optim_set_to_none=False)
        with torch.autocast(t.device.type, enabled=t.amp):
            loss = t.loss_function(t.network(images), images)
        if self.scaler is None:
            loss.backward()
            t.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(t.optimizer)
            self.scaler.update()
        return loss.detach()


def step_flops(step: Callable[[torch.Tensor], Any], images: torch.Tensor) -> int:
    """FLOPs of one call of step (forward and backward), as torch's FlopCounterMode counts them."""
    with FlopCounterMode(display=False) as counter:
        step(images)
    return int(counter.get_total_flops())


def time_steps(step: Callable[[torch.Tensor], Any], batches: Sequence[torch.Tensor], iterations: int,
               warmup: int = 2, device: torch.device | None = None) -> list[float]:
    """Seconds of each of ``iterations`` steps over batches (cycled), after ``warmup`` untimed steps."""
    device = device or batches[0].device
    for i in range(warmup):
        step(batches[i % len(batches)])
    synchronize(device)
    times = []
    for i in range(iterations):
        start = time.perf_counter()
        step(batches[i % len(batches)])
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def vqvae_throughput(iterations: int, warmup: int = 2, **overrides: Any) -> dict[str, Any]:
    """Training speed of train.yaml's VQ-VAE on random images of its size: images/s and achieved GFLOP/s."""
    training = vqvae_training(**overrides)
    size = training.image_size
    images = torch.rand(training.batch_size, 1, size, size, device=training.device)
    step = TrainingStep(training)
    flops = step_flops(step, images)  # also the first warm-up step
    times = time_steps(step, [images], iterations, warmup, training.device)
    median = statistics.median(times)
    return {
        "image_size": size, "batch_size": training.batch_size, "parameters": training.parameters,
        "device": str(training.device), "amp": training.amp, "dtype": "float16" if training.amp else "float32",
        "torch_threads": torch.get_num_threads(), "iterations": iterations, "seconds_per_step_median": median,
        "seconds_per_step_min": min(times), "images_per_s": training.batch_size / median,
        "flops_per_step": flops, "gflops": flops / median / 1e9,
    }

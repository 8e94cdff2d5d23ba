"""The VQ-VAE's training step with MONAI's EMAQuantizer and with the project's IndexedEMAQuantizer, on this machine.

Both variants are train.yaml's network, optimizer, loss and batch size (with their codebooks copied from one
another, so they start equal) and take the step MONAI's SupervisedTrainer takes (``speed_parts.training.TrainingStep``),
on random images of the bundle's size in its memory layout. Rounds alternate between the two so that a slow
minute of the machine falls on both; the table has the median step of each, in images per second, for each
codebook size asked for.

    python benchmarks/quantizer_speed.py                         # K = train.yaml's and 512, 5 rounds of 10 s
    python benchmarks/quantizer_speed.py --quick --out-dir /tmp/q    # tiny sizes, seconds (for the tests)

Writes ``<out-dir>/<name>.md`` and ``.json`` (``--name`` defaults to ``quantizer_speed``, ``quantizer_speed_quick``
with ``--quick``) and prints the table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from kit import bundle_default, command, machine_info, machine_summary, result_options, write_result
from monai.networks.layers.vector_quantizer import EMAQuantizer
from speed_parts.training import TrainingStep, time_steps, vqvae_training

from oasis_gen.engines.steps import memory_format
from oasis_gen.networks.quantizer import quantizer_copy
from oasis_gen.networks.vqvae2 import TwoLevelVQVAE

VARIANTS = ("monai", "indexed")


def vector_quantizers(network: torch.nn.Module) -> list[torch.nn.Module]:
    """MONAI's VectorQuantizer wrappers of a VQ-VAE (top and bottom for two levels), each holding ``.quantizer``."""
    return list(network.quantizers) if isinstance(network, TwoLevelVQVAE) else [network.quantizer]


def measure(num_embeddings: int | None, rounds: int, seconds: float, overrides: dict[str, Any]) -> dict[str, Any]:
    """Median training step of both variants at one codebook size, rounds alternating between them."""
    sizes = dict(overrides) | ({"num_embeddings": num_embeddings} if num_embeddings else {})
    steps, layout = {}, memory_format(bool(bundle_default("train.yaml", "channels_last")))
    for variant in VARIANTS:
        torch.manual_seed(0)
        training = vqvae_training(**sizes)
        if variant == "monai":
            for wrapper in vector_quantizers(training.network):
                wrapper.quantizer = quantizer_copy(wrapper.quantizer, EMAQuantizer)
        steps[variant] = TrainingStep(training)
    size, batch = training.image_size, training.batch_size
    images = [torch.rand(batch, 1, size, size).contiguous(memory_format=layout) for _ in range(4)]
    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for _ in range(rounds):
        for variant in VARIANTS:
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                times[variant] += time_steps(steps[variant], images, iterations=5, warmup=1)
    k = vector_quantizers(steps["indexed"].training.network)[-1].quantizer.num_embeddings
    row = {"num_embeddings": k, "image_size": size, "batch_size": batch, "rounds": rounds}
    for variant in VARIANTS:
        median = statistics.median(times[variant])
        row[variant] = {"steps": len(times[variant]), "seconds_per_step_median": median,
                        "images_per_s": batch / median}
    row["speedup"] = row["indexed"]["images_per_s"] / row["monai"]["images_per_s"]
    return row


def markdown(result: dict[str, Any]) -> str:
    """The result as a Markdown page: a row per codebook size."""
    lines = ["# The VQ-VAE's training step: MONAI's EMAQuantizer against IndexedEMAQuantizer", "",
             f"Machine: {result['machine']}",
             f"Command: `{result['command']}`", "",
             "train.yaml's network, optimizer, loss and batch size, the SupervisedTrainer's step on random images "
             f"of the bundle's size; {result['rounds']} alternating rounds of {result['seconds']:g} s per variant, "
             "median step.", "",
             "| K (bottom codebook) | image size | batch | MONAI images/s | indexed images/s | speed-up |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {row['num_embeddings']} | {row['image_size']} | {row['batch_size']} | "
              f"{row['monai']['images_per_s']:.1f} | {row['indexed']['images_per_s']:.1f} | {row['speedup']:.2f}x |"
              for row in result["rows"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-embeddings", type=int, nargs="+", default=[0, 512],
                        help="bottom codebook sizes (0: train.yaml's)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per variant")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of steps per variant and round")
    parser.add_argument("--quick", action="store_true", help="tiny images and rounds, a few seconds")
    result_options(parser, None, "quantizer_speed, or quantizer_speed_quick with --quick")
    args = parser.parse_args(argv)
    machine = machine_info("cpu")
    overrides = {"image_size": 32} if args.quick else {}
    rounds, seconds = (1, 0.5) if args.quick else (args.rounds, args.seconds)
    rows = []
    for k in args.num_embeddings:
        rows.append(measure(k or None, rounds, seconds, overrides))
        print(f"K={rows[-1]['num_embeddings']}: MONAI {rows[-1]['monai']['images_per_s']:.1f} images/s, indexed "
              f"{rows[-1]['indexed']['images_per_s']:.1f} ({rows[-1]['speedup']:.2f}x)", flush=True)
    result = {"command": command(__file__, argv), "machine": machine_summary(machine), "machine_info": machine,
              "quick": args.quick, "rounds": rounds, "seconds": seconds, "rows": rows}
    name = args.name or ("quantizer_speed_quick" if args.quick else "quantizer_speed")
    text = markdown(result)
    print(text)
    write_result(args.out_dir, name, text, result, result["command"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

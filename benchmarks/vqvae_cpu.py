"""VQ-VAE quality per minute on this machine: candidates trained for the same wall time, scored on the test split.

Each candidate runs the real bundle (``python -m monai.bundle run training`` with ``--time_limit_minutes``), then
``evaluating`` on the test split; the table gives test SSIM/PSNR (per image, data range 1), epochs reached, images
per second and parameters.

    .venv/bin/python benchmarks/vqvae_cpu.py --minutes 4                       # compare the candidates
    .venv/bin/python benchmarks/vqvae_cpu.py --minutes 20 --candidates base --max-epochs 40 --name quality_bar

Writes ``<out-dir>/<name>.md`` and ``.json`` (``--name`` defaults to ``vqvae_cpu``; it also names the candidates'
runs and logs under ``--work``) and prints the table.
"""

from __future__ import annotations

import argparse
import json

import torch
import yaml
from kit import ROOT, command, machine_info, machine_summary, result_options, run_bundle, write_result

from oasis_gen.bundle.configs import override_args

# all at 128x128 with a 32x32 code grid (two downsamplings), K=256, D=32; they differ in width
CANDIDATES = {
    "small": {"channels": "[16,32]"},  # the CPU default
    "base": {"channels": "[32,64]"},
    "wide": {"channels": "[64,128]"},
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=4.0, help="training wall time per candidate")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--dataset", default="data/demo", help="dataset (default: the demo cohort)")
    parser.add_argument("--work", default="runs/benchmarks", help="where runs and the MLflow store go")
    parser.add_argument("--max-epochs", type=int, default=200, help="epochs the LR schedule spans")
    result_options(parser, "vqvae_cpu", "vqvae_cpu; also names the runs under --work")
    args = parser.parse_args(argv)

    machine = machine_summary(machine_info("cpu"))  # before the runs: the load average is the one they started under
    work = ROOT / args.work
    rows = []
    for name in args.candidates:
        out = work / f"{args.name}-{name}"
        log = work / f"{args.name}-{name}.log"
        out.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        common = ["--dataset_dir", args.dataset, "--output_dir", str(out), "--tracking_uri", str(work / "mlruns"),
                  "--progress", "False"]
        train_s = run_bundle("training", "train.yaml", [*common, *override_args(CANDIDATES[name]),
                              "--resume", "False", "--max_epochs", str(args.max_epochs),
                              "--time_limit_minutes", str(args.minutes)], log)
        run_bundle("evaluating", "evaluate.yaml", common, log)
        summary = json.loads((out / "evaluation" / "summary.json").read_text())
        config = yaml.safe_load((out / "config.yaml").read_text())
        last = torch.load(max(out.glob("checkpoints/last_*.pt")), weights_only=True)
        iterations = int(last["trainer"]["iteration"])
        epochs = iterations // int(last["trainer"]["epoch_length"])
        rows.append({
            "candidate": name, "channels": config["channels"], "parameters": config["parameters"],
            "epochs": epochs, "train_wall_s": round(train_s, 1),
            "images_per_s": round(iterations * int(config["batch_size"]) / train_s, 1),
            "test_ssim": round(summary["ssim"]["mean"], 4), "test_ssim_std": round(summary["ssim"]["std"], 4),
            "test_psnr": round(summary["psnr"]["mean"], 2), "test_slices": summary["ssim"]["count"],
        })
        print(rows[-1], flush=True)

    line = command(__file__, argv)
    lines = [f"# VQ-VAE at equal wall time ({args.minutes:g} min of training each)", "",
             f"Machine: {machine} Dataset: {args.dataset}. 128x128 slices, 32x32 code grid, K=256, D=32, "
             "batch 16, L1 + commitment loss. Wall time includes validation each epoch and the bundle's start-up.",
             f"Command: `{line}`", "",
             "| candidate | channels | parameters | epochs | train wall (s) | images/s | test SSIM | PSNR (dB) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['candidate']} | {r['channels']} | {r['parameters']:,} | {r['epochs']} | {r['train_wall_s']} | "
              f"{r['images_per_s']} | {r['test_ssim']:.4f} ± {r['test_ssim_std']:.4f} | {r['test_psnr']:.2f} |"
              for r in rows]
    print("\n".join(lines))
    result = {"machine": machine, "minutes": args.minutes, "rows": rows}
    write_result(args.out_dir, args.name, "\n".join(lines) + "\n", result, line)


if __name__ == "__main__":
    main()

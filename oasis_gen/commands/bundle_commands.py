"""The ``oasis-gen`` commands that run one bundle config: their config, run id, options and the keys they set."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    """A documented option of a bundle command and the config key it sets."""

    flag: str
    key: str
    type: type = str
    help: str = ""


@dataclass(frozen=True)
class BundleCommand:
    """A command that runs one bundle config's run id."""

    name: str
    config: str
    run_id: str
    help: str
    example: str
    options: tuple[Option, ...] = ()
    positional: Option | None = None     # flag is the metavar; nargs "?" unless required
    positional_required: bool = False


_DATA_DIR = Option("DATA_DIR", "dataset_dir", str, "dataset root: OASIS slice folders, train/validate/test folders, "
                                                   "a flat folder or volumes (default: the demo cohort in data/demo)")
COMMON_OPTIONS = (
    Option("--tracking-uri", "tracking_uri", str,
           "MLflow store: folder, .db file or server URL (default $MLFLOW_TRACKING_URI, else mlruns)"),
    Option("--experiment-name", "experiment_name", str, "MLflow experiment (default oasis-gen)"),
)
BUNDLE_COMMANDS = (
    BundleCommand(
        "train", "train.yaml", "training", "train the VQ-VAE (bundle/configs/train.yaml)",
        "oasis-gen train data/demo --output-dir runs/vqvae --epochs 30\n"
        "  oasis-gen train /data/OASIS --config oasis256.yaml --output-dir runs/oasis256 --num_workers 8",
        (Option("--output-dir", "output_dir", str, "checkpoints, pictures, config.yaml (default runs/vqvae)"),
         Option("--epochs", "max_epochs", int, "epochs to train (default 30)"),
         Option("--minutes", "time_limit_minutes", float, "stop at the last epoch that ends within this time"),
         Option("--image-size", "image_size", int, "slice size in pixels (default 128)"),
         Option("--batch-size", "batch_size", int, "slices per batch (default 16)")),
        _DATA_DIR),
    BundleCommand(
        "train-prior", "train_prior.yaml", "training", "train the Gated PixelCNN prior on the VQ-VAE's codes "
        "(bundle/configs/train_prior.yaml); for a two-level VQ-VAE, its top prior (in OUTPUT_DIR_top) and then its "
        "bottom prior (in OUTPUT_DIR), unless --level or --top-prior-ckpt is given",
        "oasis-gen train-prior data/demo --vqvae-ckpt runs/vqvae/checkpoints/model.pt --output-dir runs/prior "
        "--epochs 10\n"
        "  # two levels: trains runs/prior_top (--level top), then runs/prior given it; sample with\n"
        "  # oasis-gen sample --prior-ckpt runs/prior/checkpoints/model.pt",
        (Option("--vqvae-ckpt", "vqvae_ckpt", str, "the trained VQ-VAE (default runs/vqvae/checkpoints/model.pt)"),
         Option("--output-dir", "output_dir", str, "checkpoints, cached codes, pictures (default runs/prior; a "
                                                   "two-level VQ-VAE's top prior goes to OUTPUT_DIR_top)"),
         Option("--epochs", "max_epochs", int, "epochs to train (default 30; each prior)"),
         Option("--minutes", "time_limit_minutes", float, "stop at the last epoch that ends within this time "
                                                          "(each prior)"),
         Option("--num-classes", "num_classes", int, "condition on the slice position in N buckets (default: none)"),
         Option("--level", "level", str, "two levels: train only this prior, top or bottom"),
         Option("--top-prior-ckpt", "top_prior_ckpt", str, "two levels: the trained top prior (trains the bottom "
                                                           "one only)")),
        _DATA_DIR),
    BundleCommand(
        "evaluate", "evaluate.yaml", "evaluating", "evaluate a trained VQ-VAE on a split "
        "(bundle/configs/evaluate.yaml): per-image SSIM, PSNR, MSE and a summary",
        "oasis-gen evaluate data/demo --output-dir runs/vqvae --split test",
        (Option("--output-dir", "output_dir", str, "the VQ-VAE's training folder (default runs/vqvae); results go "
                                                   "to its evaluation/ folder"),
         Option("--split", "split", str, "train | validate | test (default test)")),
        _DATA_DIR),
    BundleCommand(
        "sample", "sample.yaml", "sampling", "draw new slices from a trained prior, or complete part of a slice "
        "(bundle/configs/sample.yaml)",
        "oasis-gen sample --prior-ckpt runs/prior/checkpoints/model.pt --output-dir runs/samples --num-samples 16\n"
        "  oasis-gen sample --complete-scan data/demo/keras_png_slices_test/case_002_slice_16.nii.png "
        "--region bottom_half",
        (Option("--prior-ckpt", "prior_ckpt", str, "the trained prior (default runs/prior/checkpoints/model.pt)"),
         Option("--output-dir", "output_dir", str, "samples, grid.png, summary.json (default runs/samples)"),
         Option("--num-samples", "num_samples", int, "slices to draw (default 16)"),
         Option("--temperature", "temperature", float, "< 1 sharper, > 1 more varied (default 1.0)"),
         Option("--seed", "seed", int, "same seed, same samples (default 0)"),
         Option("--complete-scan", "complete_scan", str, "a slice or volume whose region is completed"),
         Option("--region", "region", str, "bottom_half | top_half | left_half | right_half | center | rows:A-B"))),
    BundleCommand(
        "infer", "inference.yaml", "inferring", "run the trained models on new scans (bundle/configs/inference.yaml): "
        "reconstructions, codes, per-scan metrics and prior NLL maps",
        "oasis-gen infer /data/new_scans --output-dir runs/inference\n"
        "  oasis-gen infer scan.nii.gz --vqvae-ckpt runs/vqvae/checkpoints/model.pt "
        "--prior-ckpt runs/prior/checkpoints/model.pt",
        (Option("--vqvae-ckpt", "vqvae_ckpt", str, "the trained VQ-VAE"),
         Option("--prior-ckpt", "prior_ckpt", str, "the trained prior"),
         Option("--output-dir", "inference_dir", str, "where the results go")),
        Option("INPUT", "input", str, "a scan (PNG, NIfTI, Analyze) or a folder of scans"), positional_required=True),
)
PASS_THROUGH = "any other --key value, a setting of bundle/configs/{config}, is passed to the bundle as an override"

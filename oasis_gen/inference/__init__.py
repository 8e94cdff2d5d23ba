"""Bundle inference on new scans (``bundle/configs/inference.yaml``): reconstructions in the input's format, code
maps, per-slice SSIM/PSNR, the prior's atypicality map, pictures and a summary table.

- :mod:`~oasis_gen.inference.scans`: finding the scans, reading them as planes, the VQ-VAE's view of them;
- :mod:`~oasis_gen.inference.models`: the VQ-VAE and a prior of its codes, per-code NLL in bits;
- :mod:`~oasis_gen.inference.run`: batches through the networks, each scan's outputs, the summary;
- :mod:`~oasis_gen.inference.writers` and :mod:`~oasis_gen.inference.figures`: files and pictures.
"""

from oasis_gen.inference.models import (
    InferenceModels,
    code_nll_bits,
    export_checkpoint,
    load_inference_models,
    typical_nll,
)
from oasis_gen.inference.run import (
    InferenceReport,
    ScanResult,
    check_report,
    infer_scans,
    run_artifacts,
    run_networks,
    write_summary,
)
from oasis_gen.inference.scans import ModelView, ScanFile, ScanPlanes, find_inputs, read_planes

__all__ = [
    "InferenceModels", "InferenceReport", "ModelView", "ScanFile", "ScanPlanes", "ScanResult", "check_report",
    "code_nll_bits", "export_checkpoint", "find_inputs", "infer_scans", "load_inference_models", "read_planes",
    "run_artifacts", "run_networks", "typical_nll", "write_summary",
]

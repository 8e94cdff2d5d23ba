"""Bundle inference on new scans (``bundle/configs/inference.yaml``): reconstructions in the input's format, code
maps, per-slice SSIM/PSNR, the prior's atypicality map, pictures and a summary table.

- :mod:`~oasis_gen.inference.scans`: finding the scans, reading them as planes, the VQ-VAE's view of them;
- :mod:`~oasis_gen.inference.models`: the VQ-VAE and a prior of its codes, per-code NLL in bits;
- :mod:`~oasis_gen.inference.inferer`: the networks' pass over a batch of planes (MONAI inferer), with scores;
- :mod:`~oasis_gen.inference.run`: the MONAI evaluator's data and iteration over the scans, each scan's outputs;
- :mod:`~oasis_gen.inference.report`: each scan's result, the run's figures, the summary files;
- :mod:`~oasis_gen.inference.writers` and :mod:`~oasis_gen.inference.figures`: files and pictures.
"""

from oasis_gen.inference.inferer import CodesInferer, run_networks
from oasis_gen.inference.models import (
    InferenceModels,
    code_nll_bits,
    load_inference_models,
    typical_nll,
)
from oasis_gen.inference.report import InferenceReport, ScanResult, check_report, run_artifacts, write_summary
from oasis_gen.inference.run import ScanInference, scan_groups
from oasis_gen.inference.scans import ModelView, ScanFile, ScanPlanes, find_inputs, read_planes

__all__ = [
    "CodesInferer", "InferenceModels", "InferenceReport", "ModelView", "ScanFile", "ScanInference", "ScanPlanes",
    "ScanResult", "check_report", "code_nll_bits", "find_inputs",
    "load_inference_models", "read_planes", "run_artifacts",
    "run_networks", "scan_groups", "typical_nll", "write_summary",
]

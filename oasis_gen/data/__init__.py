"""Finding, checking, transforming and caching brain MRI slices."""

from oasis_gen.data.check import DataReport, Problem, check_dataset, inspect_scans
from oasis_gen.data.datasets import build_cache_dataset, cache_nbytes
from oasis_gen.data.layouts import SPLITS, find_scans, split_subjects
from oasis_gen.data.transforms import (
    EncodeIntensityd,
    LoadScand,
    decode_intensity,
    eval_transforms,
    train_transforms,
)

__all__ = [
    "SPLITS", "DataReport", "Problem", "check_dataset", "inspect_scans", "build_cache_dataset", "cache_nbytes",
    "find_scans", "split_subjects", "EncodeIntensityd", "LoadScand", "decode_intensity", "eval_transforms",
    "train_transforms",
]

"""Memory of a cached train split: OASIS-layout PNG slices written for the purpose, cached by the project's
CacheDataset in a fresh process (so its peak is that caching's alone): bytes held by the cached tensors and the
resident memory of the process. Part 6 of ``speed.py`` and the measurement of ``cache_memory.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from kit import ROOT
from PIL import Image

OASIS_TRAIN_SLICES = 9664  # the OASIS keras_png_slices_train folder
OASIS_SLICE_SIZE = 256

# run in a fresh interpreter: the peak resident memory is then this caching's alone
MEASURE = """
import gc, json, resource, sys, time
def rss():
    return next(int(line.split()[1]) * 1024 for line in open('/proc/self/status') if line.startswith('VmRSS'))
from oasis_gen.data import build_cache_dataset, cache_nbytes, check_dataset, train_transforms
report = check_dataset(sys.argv[1], required_splits=['train'], progress=False)
records = report.usable()['train']
gc.collect()
before, peak_before = rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
dataset = build_cache_dataset(records, train_transforms(int(sys.argv[2]), sys.argv[3]), progress=False)
seconds = time.perf_counter() - start
gc.collect()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"slices": len(dataset), "cache_bytes": cache_nbytes(dataset), "rss_before_bytes": before,
                  "rss_after_bytes": rss(), "rss_growth_bytes": rss() - before, "peak_rss_bytes": peak,
                  "peak_rss_growth_bytes": peak - peak_before, "seconds": seconds}))
"""


def write_slices(root: Path, count: int, size: int, split: str = "train") -> Path:
    """Write count brain-like 8-bit PNG slices in an OASIS split folder (skipped if already there); return root."""
    folder = root / f"keras_png_slices_{split}"
    if folder.is_dir() and len(list(folder.glob("*.png"))) == count:
        return root
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    for i in range(count):
        subject, k = divmod(i, 32)
        inside = (yy / (0.3 + 0.05 * rng.random())) ** 2 + (xx / (0.25 + 0.05 * rng.random())) ** 2 < 1
        pixels = np.where(inside, 80 + 150 * rng.random((size, size)), 0).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"case_{split}{subject:03d}_slice_{k}.nii.png")
    return root


def measure_cache(root: Path, size: int, cache_dtype: str = "uint8") -> dict[str, float]:
    """Cache the train split under root at size x size in a fresh process: bytes held, RSS, peak RSS and seconds."""
    out = subprocess.run([sys.executable, "-c", MEASURE, str(root), str(size), cache_dtype], capture_output=True,
                         text=True, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"caching {root} failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    return {"cache_dtype": cache_dtype, "size": size, **json.loads(out.stdout.strip().splitlines()[-1])}

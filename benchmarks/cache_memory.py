"""Memory of an OASIS-sized cached train split: 9,664 slices at 256x256, cached as uint8, float16 and float32.

Writes 9,664 real 256x256 8-bit PNGs in the OASIS layout (brain-like ellipses, so nothing is special-cased) under
``--work`` (kept for the next run), builds the project's CacheDataset over them in a fresh process per dtype (so
peaks do not mix), and reports the bytes held by the cached tensors and the resident memory of the process.

    .venv/bin/python benchmarks/cache_memory.py [--slices 9664] [--size 256]

Writes ``<out-dir>/<name>.md`` and ``.json`` (``--name`` defaults to ``cache_memory``) and prints the table.
``speed.py`` measures the uint8 cache the same way (``speed_parts/cache.py``).
"""

from __future__ import annotations

import argparse
import time

from kit import ROOT, command, result_options, write_result
from speed_parts.cache import OASIS_SLICE_SIZE, OASIS_TRAIN_SLICES, measure_cache, write_slices


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=OASIS_TRAIN_SLICES)
    parser.add_argument("--size", type=int, default=OASIS_SLICE_SIZE)
    parser.add_argument("--work", default="runs/benchmarks/oasis_sized")
    result_options(parser, "cache_memory")
    args = parser.parse_args(argv)
    root = ROOT / args.work
    start = time.perf_counter()
    write_slices(root, args.slices, args.size)
    print(f"{args.slices} slices ready in {time.perf_counter() - start:.0f} s", flush=True)
    rows = []
    for dtype in ("uint8", "float16", "float32"):
        rows.append(measure_cache(root, args.size, dtype))
        print(rows[-1], flush=True)
    gib = 1024**3
    line = command(__file__, argv)
    lines = [f"# Cache memory: {args.slices} slices at {args.size}x{args.size} (the OASIS train split's size)", "",
             f"Command: `{line}`", "",
             "| cache dtype | cached tensors (GiB) | process RSS growth, after caching (GiB) | peak RSS growth (GiB) "
             "| caching time (s) |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['cache_dtype']} | {r['cache_bytes'] / gib:.2f} | {r['rss_growth_bytes'] / gib:.2f} | "
              f"{r['peak_rss_growth_bytes'] / gib:.2f} | {r['seconds']:.0f} |" for r in rows]
    print("\n".join(lines))
    write_result(args.out_dir, args.name, "\n".join(lines) + "\n", rows, line)


if __name__ == "__main__":
    main()

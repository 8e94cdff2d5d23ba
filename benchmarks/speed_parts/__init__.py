"""The pieces of ``benchmarks/speed.py``, one per measurement; none is run by itself.

- ``training``: the matmul rate and the VQ-VAE's training step (parts 1 and 2; its step is also what
  ``quantizer_speed.py`` times);
- ``pipeline``: the bundle's training run against the bare model loop, with every handler's cost (part 3);
- ``inference``: one synthetic volume through inference.yaml (part 4);
- ``sampling``: naive against incremental prior sampling (part 5; ``sampling.py`` runs it on its own);
- ``cache``: memory of a cached train split in a fresh process (part 6; ``cache_memory.py`` runs it per dtype).
"""

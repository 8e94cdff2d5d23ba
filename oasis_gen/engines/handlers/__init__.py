"""Ignite handlers MONAI's engines lack for VQ-VAEs, one family a module (as ``monai.handlers`` keeps them):
codebook health and restarts, the time budget, loss terms, pictures, the run's record, per-image tables.

Every handler is importable from here, so bundle configs name them ``oasis_gen.engines.handlers.<Name>``.
"""

from oasis_gen.engines.distributed import unwrap
from oasis_gen.engines.handlers.codebook import CodebookRestart, CodebookUsage, codebook_health, metric_name
from oasis_gen.engines.handlers.losses import LossProgressBar, LossTerms
from oasis_gen.engines.handlers.per_image import PerImageMetrics
from oasis_gen.engines.handlers.pictures import PriorSamples, ReconstructionPictures, samples_grid
from oasis_gen.engines.handlers.run_record import RunRecorder
from oasis_gen.engines.handlers.time_budget import TimeBudget

__all__ = [
    "CodebookRestart",
    "CodebookUsage",
    "LossProgressBar",
    "LossTerms",
    "PerImageMetrics",
    "PriorSamples",
    "ReconstructionPictures",
    "RunRecorder",
    "TimeBudget",
    "codebook_health",
    "metric_name",
    "samples_grid",
    "unwrap",
]

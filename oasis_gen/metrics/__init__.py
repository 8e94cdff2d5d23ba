"""As ``monai/metrics``: metrics of codes and images, one job a module, every public name re-exported here
(``from oasis_gen.metrics import fid``; in a bundle config ``_target_: oasis_gen.metrics.CodeNLL``).

- :mod:`~oasis_gen.metrics.code_metrics`: how well a prior predicts held-out codes (``CodeNLL``, ``CodeAccuracy``);
- :mod:`~oasis_gen.metrics.feature_distances`: the VQ-VAE encoder's features of slices, FID and MMD between sets;
- :mod:`~oasis_gen.metrics.diversity`: how varied a set is (1 - mean pairwise MS-SSIM);
- :mod:`~oasis_gen.metrics.texture`: radially averaged power spectra and the distance between them;
- :mod:`~oasis_gen.metrics.two_sample`: the classifier two-sample test (can a small CNN tell two sets apart?);
- :mod:`~oasis_gen.metrics.shape`: brain masks, their per-slice shape statistics, the distance between two sets';
- :mod:`~oasis_gen.metrics.intensity`: the distance between the non-black intensities of two sets;
- :mod:`~oasis_gen.metrics.memorisation`: each slice's nearest training slice, and the share of near-copies;
- :mod:`~oasis_gen.metrics.image_sets`: the input checks, resizing and group labels the image-set metrics share.

The plausibility report that puts them beside their real-vs-real floors is the generation stage's
(:mod:`oasis_gen.generation.plausibility`).
"""

from oasis_gen.metrics.code_metrics import CodeAccuracy, CodeNLL
from oasis_gen.metrics.diversity import MS_SSIM_WEIGHTS, ms_ssim_diversity, ms_ssim_settings
from oasis_gen.metrics.feature_distances import encoder_features, fid, mmd
from oasis_gen.metrics.intensity import intensity_distance
from oasis_gen.metrics.memorisation import memorisation, nearest_train
from oasis_gen.metrics.shape import SHAPE_STATISTICS, foreground_mask, shape_distance, shape_statistics
from oasis_gen.metrics.texture import radial_power_spectrum, spectrum_distance
from oasis_gen.metrics.two_sample import classifier_two_sample_test

__all__ = [
    "MS_SSIM_WEIGHTS", "SHAPE_STATISTICS", "CodeAccuracy", "CodeNLL", "classifier_two_sample_test",
    "encoder_features", "fid", "foreground_mask", "intensity_distance", "memorisation", "mmd", "ms_ssim_diversity",
    "ms_ssim_settings", "nearest_train", "radial_power_spectrum", "shape_distance", "shape_statistics",
    "spectrum_distance",
]

"""As ``monai/metrics``: metrics of codes and images, one job a module, every public name re-exported here
(``from oasis_gen.metrics import fid``; in a bundle config ``_target_: oasis_gen.metrics.CodeNLL``).

- :mod:`~oasis_gen.metrics.code_metrics`: how well a prior predicts held-out codes (``CodeNLL``, ``CodeAccuracy``);
- :mod:`~oasis_gen.metrics.feature_distances`: the VQ-VAE encoder's features of slices, FID and MMD between sets;
- :mod:`~oasis_gen.metrics.diversity`: how varied a set is (1 - mean pairwise MS-SSIM);
- :mod:`~oasis_gen.metrics.texture`: radially averaged power spectra and the distance between them.
"""

from oasis_gen.metrics.code_metrics import CodeAccuracy, CodeNLL
from oasis_gen.metrics.diversity import MS_SSIM_WEIGHTS, ms_ssim_diversity, ms_ssim_settings
from oasis_gen.metrics.feature_distances import encoder_features, fid, mmd
from oasis_gen.metrics.texture import radial_power_spectrum, spectrum_distance

__all__ = [
    "MS_SSIM_WEIGHTS", "CodeAccuracy", "CodeNLL", "encoder_features", "fid", "mmd", "ms_ssim_diversity",
    "ms_ssim_settings", "radial_power_spectrum", "spectrum_distance",
]

"""How close generated slices are to real ones in a feature space: FID and MMD of encoder features.

No Inception network is downloaded: features come from the VQ-VAE's own encoder (see :func:`encoder_features`),
which was trained on these slices, works offline and at any image size. Figures are therefore comparable between
priors of the same VQ-VAE, not with FIDs published for other feature spaces.
"""

from __future__ import annotations

import math

import torch
from monai.utils import convert_to_tensor

__all__ = ["encoder_features", "fid", "mmd"]


def encoder_features(vqvae: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """One feature vector per image from the VQ-VAE's encoder: its output ``[B, D, h, w]`` (before quantization)
    average- and max-pooled over the grid, ``[B, 2 * D]`` float64 on the CPU.

    The average keeps what the slice holds overall, the maximum the strongest local responses (edges, small
    structures). Runs in eval mode without gradients; the network's previous mode is restored.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a tensor [B, C, H, W], got {getattr(images, 'shape', type(images))}")
    device = next(vqvae.parameters()).device
    was_training = vqvae.training
    vqvae.eval()
    features = []
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                batch = convert_to_tensor(images[start:start + batch_size], track_meta=False)
                z = vqvae.encode(batch.to(device).float())
                features.append(torch.cat([z.mean(dim=(2, 3)), z.amax(dim=(2, 3))], dim=1).double().cpu())
    finally:
        vqvae.train(was_training)
    return torch.cat(features)


def _feature_sets(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    real, fake = torch.as_tensor(real).double(), torch.as_tensor(fake).double()
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be [N, F] with the same F, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise ValueError("each feature set needs at least 2 images")
    return real, fake


def fid(real_feats: torch.Tensor, fake_feats: torch.Tensor) -> float:
    """Fréchet distance between two sets of feature vectors ``[N, F]`` (monai.metrics.FIDMetric); 0 is best.

    The estimate is biased upwards for small sets, so compare figures only at equal set sizes (e.g. against a
    real-vs-real split of the same size). With fewer images than features the covariances are singular and the
    matrix square root may come out complex; then a small ridge (1e-6 times the mean variance) is added to both
    covariances (scipy's warnings about the singular matrix are silenced). Tiny negative values from rounding
    are reported as 0.
    """
    import warnings

    from monai.metrics import FIDMetric
    from monai.metrics.fid import compute_frechet_distance

    real, fake = _feature_sets(real_feats, fake_feats)
    try:
        with warnings.catch_warnings():  # singular products are expected here, and handled below
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.filterwarnings("ignore", message=".*[Ss]ingular")
            value = float(FIDMetric()(fake, real))
        if not math.isfinite(value):
            raise ValueError("FID is not finite")
    except ValueError:  # "Imaginary component ... too high", or NaN from a singular product
        sigma_r, sigma_f = torch.cov(real.T), torch.cov(fake.T)
        ridge = 1e-6 * float(torch.cat([sigma_r.diagonal(), sigma_f.diagonal()]).mean().clamp_min(1e-12))
        eye = torch.eye(real.shape[1], dtype=real.dtype)
        value = float(compute_frechet_distance(fake.mean(0), sigma_f + ridge * eye, real.mean(0),
                                               sigma_r + ridge * eye))
    return max(value, 0.0)


def mmd(real_feats: torch.Tensor, fake_feats: torch.Tensor, kernel: str = "gaussian", num_features: int = 1024,
        seed: int = 0) -> float:
    """Maximum mean discrepancy between two sets of feature vectors ``[N, F]`` (monai.metrics.MMDMetric); 0 is best.

    MONAI's estimator (unbiased, Gretton et al. 2012) takes dot products, i.e. a linear kernel, which only
    compares the means. ``kernel="gaussian"`` (default) maps both sets through random Fourier features first
    (Rahimi and Recht, 2007), so the dot products approximate a Gaussian kernel, which compares whole
    distributions: features are standardised by the real set's mean and spread, and the bandwidth is the median
    distance between all standardised vectors. ``kernel="linear"`` uses the raw features. MONAI needs sets of
    equal size: the larger one is cut to the size of the smaller (its first rows). Being unbiased, the estimate
    can dip slightly below 0 for sets from one distribution.
    """
    from monai.metrics import MMDMetric

    real, fake = _feature_sets(real_feats, fake_feats)
    count = min(real.shape[0], fake.shape[0])
    real, fake = real[:count], fake[:count]
    if kernel == "linear":
        return float(MMDMetric()(real, fake))
    if kernel != "gaussian":
        raise ValueError(f"kernel must be 'gaussian' or 'linear', not {kernel!r}")
    mean, spread = real.mean(0), real.std(0).clamp_min(1e-8)
    pooled = (torch.cat([real, fake]) - mean) / spread
    distances = torch.cdist(pooled, pooled)
    bandwidth = float(distances[distances > 0].median()) if bool((distances > 0).any()) else 1.0
    generator = torch.Generator().manual_seed(seed)
    omega = torch.randn(real.shape[1], num_features, generator=generator, dtype=torch.float64) / bandwidth
    phase = torch.rand(num_features, generator=generator, dtype=torch.float64) * 2 * math.pi

    def fourier(x: torch.Tensor) -> torch.Tensor:
        return math.sqrt(2.0 / num_features) * torch.cos((x - mean) / spread @ omega + phase)

    return float(MMDMetric(y_mapping=fourier)(real, fake))

"""Metrics of the generative models, as MONAI metrics that plug into ignite handlers (``IgniteMetricHandler``)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from monai.metrics import CumulativeIterationMetric
from monai.utils import convert_to_tensor

# ------------------------------------------------------------------ code metrics
# how well a prior predicts held-out codes


class _CodeMetric(CumulativeIterationMetric):
    """Base of the per-code metrics of a prior: logits ``[B, K, H, W]`` against codes ``[B, H, W]``.

    Accepts batch-first tensors or lists of channel-first items (what MONAI evaluators pass after decollating:
    logits ``[K, H, W]``, codes ``[H, W]``); codes may carry a channel dimension of 1. Each image adds its mean
    over its grid to the buffer (``[N, 1]``, the per-image details); :meth:`aggregate` averages them. Every grid
    of a VQ-VAE has the same size, so that is the mean over all codes seen.
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if y is None:
            raise ValueError(f"{type(self).__name__} needs the true codes (y)")
        logits, codes = convert_to_tensor(y_pred, track_meta=False).float(), convert_to_tensor(y, track_meta=False)
        if codes.dim() == logits.dim():  # [B, 1, H, W]
            codes = codes.squeeze(1)
        if logits.dim() != 4 or codes.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(f"{type(self).__name__} takes logits [B, K, H, W] and codes [B, H, W], got "
                             f"{tuple(logits.shape)} and {tuple(codes.shape)}")
        return self.per_code(logits, codes.long().to(logits.device)).flatten(1).mean(dim=1, keepdim=True)

    def per_code(self, logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The metric at every position, ``[B, H, W]``."""
        raise NotImplementedError

    def aggregate(self) -> torch.Tensor:
        """The mean over every image (hence every code) seen since the last reset, as a 0-d tensor."""
        buffer = self.get_buffer()
        if not isinstance(buffer, torch.Tensor) or buffer.numel() == 0:
            raise ValueError(f"{type(self).__name__} has seen no codes to aggregate")
        return buffer.float().mean()


class CodeNLL(_CodeMetric):
    """Negative log-likelihood of the true codes under the prior, in bits per code (cross-entropy / ln 2).

    A uniform prior over K codes scores ``log2(K)``; lower is better.
    """

    def per_code(self, logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, codes, reduction="none") / math.log(2.0)


class CodeAccuracy(_CodeMetric):
    """Fraction of codes the prior ranks first (top-1 accuracy of the argmax of its logits); higher is better."""

    def per_code(self, logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return (logits.argmax(dim=1) == codes).float()


# ------------------------------------------------------------------ end of code metrics


# ------------------------------------------------------------------ generation metrics
# how close generated slices are to real ones (FID, MMD in a feature space), and how varied they are (MS-SSIM)
#
# No Inception network is downloaded: features come from the VQ-VAE's own encoder (see encoder_features), which
# was trained on these slices, works offline and at any image size. Figures are therefore comparable between
# priors of the same VQ-VAE, not with FIDs published for other feature spaces.

# Wang, Simoncelli and Bovik (2003), "Multiscale structural similarity for image quality assessment": the
# weight of each scale, finest first (MONAI's defaults)
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


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


def ms_ssim_settings(size: int, scales: int = 3, kernel_size: int = 7) -> tuple[int, int]:
    """The most MS-SSIM scales (up to ``scales``) and the widest odd Gaussian kernel (up to ``kernel_size``) that
    an image side of ``size`` allows under MONAI's rule ``size // (scales - 1) ** 2 > kernel_size - 1``.

    The defaults fit 128x128 slices (128 // 4 = 32 > 6) and still 32x32 (8 > 6); MONAI's own defaults (5 scales,
    kernel 11) need more than 160 pixels. Smaller images get a narrower kernel first, then fewer scales.
    """
    for count in range(max(int(scales), 1), 0, -1):
        divisor = max(1, count - 1) ** 2
        for kernel in range(int(kernel_size) - (1 - int(kernel_size) % 2), 2, -2):
            if size // divisor > kernel - 1:
                return count, kernel
    raise ValueError(f"images of side {size} are too small for MS-SSIM (need at least 3 pixels)")


def ms_ssim_diversity(images: torch.Tensor, scales: int = 3, kernel_size: int = 7, max_pairs: int | None = 4096,
                      batch_size: int = 128, seed: int = 0) -> float:
    """Diversity of a set of slices ``[N, 1, H, W]`` in [0, 1]: 1 - the mean MS-SSIM over pairs of different
    slices (monai.metrics.MultiScaleSSIMMetric). 0: all identical; higher: more varied.

    MS-SSIM uses 3 scales and a 7-pixel Gaussian kernel (sigma 1.5) by default, sized for 128x128 slices (see
    :func:`ms_ssim_settings`, which narrows them for smaller images), with the first weights of Wang et al.
    rescaled to sum to 1. Every pair is used, or ``max_pairs`` pairs drawn at random (seeded) when there are more.
    Brain slices share a black background and an overall shape, so compare the figure with that of real slices
    rather than with 1.
    """
    from monai.metrics import MultiScaleSSIMMetric

    images = convert_to_tensor(images, track_meta=False).float().clamp(0.0, 1.0)
    if images.dim() != 4 or images.shape[0] < 2:
        raise ValueError(f"need at least 2 images [N, C, H, W], got {tuple(images.shape)}")
    count, kernel = ms_ssim_settings(min(images.shape[-2:]), scales, kernel_size)
    weights = MS_SSIM_WEIGHTS[:count]
    metric = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_size=kernel,
                                  weights=tuple(w / sum(weights) for w in weights))
    first, second = torch.triu_indices(images.shape[0], images.shape[0], offset=1)
    if max_pairs is not None and first.numel() > max_pairs:
        pick = torch.randperm(first.numel(), generator=torch.Generator().manual_seed(seed))[:max_pairs]
        first, second = first[pick], second[pick]
    for start in range(0, first.numel(), batch_size):
        metric(y_pred=images[first[start:start + batch_size]], y=images[second[start:start + batch_size]])
    return 1.0 - float(metric.aggregate())


def radial_power_spectrum(images: torch.Tensor) -> torch.Tensor:
    """The mean radially averaged power spectrum of a set of slices ``[N, 1, H, W]``: one power per integer radial
    frequency ``0 .. min(H, W) // 2`` (cycles per image side), averaged over the set."""
    images = convert_to_tensor(images, track_meta=False).float()
    if images.dim() != 4 or images.shape[0] < 1:
        raise ValueError(f"need images [N, C, H, W], got {tuple(images.shape)}")
    height, width = images.shape[-2:]
    power = torch.fft.fftshift(torch.fft.fft2(images), dim=(-2, -1)).abs().square().mean(dim=(0, 1))
    rows = torch.arange(height, dtype=torch.float32) - height // 2
    cols = torch.arange(width, dtype=torch.float32) - width // 2
    radius = torch.sqrt(rows[:, None] ** 2 + cols[None, :] ** 2).round().long().flatten()
    keep = radius <= min(height, width) // 2
    sums = torch.zeros(int(radius[keep].max()) + 1).index_add_(0, radius[keep], power.flatten()[keep])
    counts = torch.bincount(radius[keep]).float()
    return sums / counts


def spectrum_distance(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Texture distance of a set of slices from a reference set: the mean absolute difference of their radially
    averaged power spectra in log10, over the frequencies above zero. 0 for sets of the same texture; speckle
    (too much power at high frequencies) and blur (too little) both raise it."""
    a, b = radial_power_spectrum(images), radial_power_spectrum(reference)
    return float((torch.log10(a[1:] + 1e-12) - torch.log10(b[1:] + 1e-12)).abs().mean())

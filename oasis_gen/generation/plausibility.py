"""Do generated slices look like real ones? Plausibility figures, each with its real-vs-real floor.

A figure alone says little: a classifier accuracy of 0.6 or a Wasserstein distance of 0.02 is good or bad only
next to what two sets of *real* slices score. :func:`plausibility_report` therefore compares the generated
``samples`` with real ``reference`` slices (e.g. the test split), and in the same call, the same way and at
the same set size, a second real set ``floor`` of disjoint subjects (e.g. the validate split) with the same
reference. A figure for the samples near its floor means the samples cannot be told from real slices by it.

Images are float tensors ``[N, 1, H, W]`` in [0, 1] with 0 as background (MetaTensors are accepted).

Keys of :func:`plausibility_report` (all floats). No suffix: the samples (against the reference or the
training set); ``_floor``: the same figure for the floor set in place of the samples; ``_reference``: the
figure of the reference set itself.

- ``c2st_accuracy``, ``c2st_accuracy_floor``: held-out accuracy of a small CNN trained to tell the set from
  the reference (:func:`classifier_two_sample_test`); 0.5 means it cannot tell them apart, 1.0 always can.
- ``intensity_distance``, ``intensity_distance_floor``: 1-D Wasserstein distance between the intensities of the
  non-black pixels of the set and those of the reference (:func:`intensity_distance`); 0 is best. It sees what a
  glance sees: dim, washed-out or nearly black samples are far from the reference in it.
- ``one_region_share`` (+ ``_floor``, ``_reference``): share of slices whose brain mask is one connected
  region (:func:`shape_statistics`); ``area``, ``mirror_iou``, ``solidity`` (+ ``_floor``, ``_reference``):
  means of the other mask statistics (brain area as a fraction of the image, IoU of the mask with its
  left-right mirror image, area over convex hull area).
- ``one_region_distance``, ``area_distance``, ``mirror_iou_distance``, ``solidity_distance`` (+ ``_floor``):
  1-D Wasserstein distance between the per-slice values of the set and those of the reference; 0 is best.
- Only when ``train`` is given (:func:`memorisation`): ``nn_distance_median`` (+ ``_floor``, ``_reference``):
  median over the set of the mean absolute difference to the nearest training slice (at 64x64);
  ``nn_copy_share`` (+ ``_floor``): share of the set nearer to a training slice than ``nn_copy_threshold``,
  the 5th percentile of the reference's nearest distances. Samples that copy training slices have a median far
  below the floor's and a share far above it (the floor's share is near 0.05, the threshold's percentile).
- Only when ``reconstruction`` is given: the C2ST accuracy, the intensity distance and the shape figures of the
  first stage's reconstructions of the floor slices, with the suffix ``_reconstruction``. They are the figures of a
  perfect prior with that first stage: samples cannot score better than its reconstructions, so the gap from the
  floor to them is the first stage's share of the samples' gap, and the rest is the prior's.
- ``diversity`` (+ ``_floor``, ``_reconstruction``, ``_reference``): 1 - the mean MS-SSIM between pairs of slices of
  the set (:func:`oasis_gen.metrics.ms_ssim_diversity`):
  a prior that buys plausibility with collapse shows here.
- ``texture_distance`` (+ ``_floor``, ``_reconstruction``): mean absolute log10 difference between the radially
  averaged power spectra of the set and of the reference (:func:`oasis_gen.metrics.spectrum_distance`):
  speckle
  raises it (power at high frequencies), and so does blur.
- Only when both reconstructions are given: ``c2st_prior_accuracy`` (+ ``_floor``): the classifier two-sample test
  of the samples against the first stage's reconstructions of the reference, and of the floor's reconstructions
  against them. A perfect prior scores its floor here whatever the first stage's blur: it is the prior's share of
  the gap, measured directly.
- ``n_samples``, ``n_floor``, ``n_reference`` (and ``n_train``): the set sizes used; samples and floor are cut
  to the same size, so both comparisons carry the same small-sample bias.

Reading them: the floor is itself an estimate. On the demo cohort the real-vs-real C2ST accuracy of 128 vs 128
slices ranged over 0.45-0.59 between random sets of subjects (subject folds; measured with the earlier network,
without the intensity summary), and that of 64 validate slices against the 192 test slices (6 subjects each)
over 0.34-0.54 between seeds (with few subjects, subject folds push it below 0.5 as often as not: a classifier
that learnt the training subjects' traits guesses the held-out ones against them), so a gap of a few hundredths
between samples and floor means nothing; pass subject ids (``reference_groups``, ``floor_groups``) so that no
subject's slices are both trained on and classified, and repeat with other seeds when a decision hangs on it.
The C2ST sees everything, trivial differences too: real slices have an exactly zero background, so samples with
faint background noise score high however good their anatomy; the shape statistics do not see such noise (they
threshold at 0.1).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import convert_to_tensor
from torch import nn

from oasis_gen.metrics import ms_ssim_diversity, spectrum_distance
from oasis_gen.utils.threads import torch_threads

__all__ = [
    "SHAPE_STATISTICS",
    "classifier_two_sample_test",
    "foreground_mask",
    "shape_statistics",
    "shape_distance",
    "intensity_distance",
    "nearest_train",
    "memorisation",
    "plausibility_report",
    "format_report",
]

# pairs of slices whose MS-SSIM the diversity figure averages (drawn at random, seeded, from all pairs)
DIVERSITY_PAIRS = 1024
# the per-slice statistics of shape_statistics, in report order
SHAPE_STATISTICS: tuple[str, ...] = ("one_region", "area", "mirror_iou", "solidity")
# the name of a statistic's mean in the report (one_region is 0 or 1, so its mean is a share)
_MEAN_NAMES = {"one_region": "one_region_share", "area": "area", "mirror_iou": "mirror_iou", "solidity": "solidity"}


def _images(images: Any, name: str = "images") -> torch.Tensor:
    """A plain float32 CPU tensor ``[N, 1, H, W]``, or ValueError naming the argument."""
    data = convert_to_tensor(images, track_meta=False)
    if data.dim() != 4 or data.shape[1] != 1 or data.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty tensor [N, 1, H, W], got {tuple(data.shape)}")
    return data.detach().float().cpu()


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images at ``size`` x ``size`` (area interpolation: an anti-aliased average when shrinking)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="area")


# ------------------------------------------------------------------ classifier two-sample test
# Lopez-Paz and Oquab (2017), "Revisiting classifier two-sample tests": if a classifier trained on part of two
# sets cannot beat chance on the rest, the sets look alike to it.


# intensity bins of the summary features: black (real slices' background is exactly 0), faint (below the brain
# threshold of foreground_mask), darker and brighter brain. Coarse on purpose: with 16 bins (and the standard
# deviation and maximum) the features told subjects apart well enough to push real-vs-real accuracies with subject
# folds further below 0.5 (0.27-0.39 over three seeds on the demo cohort, 0.38-0.46 before)
_HISTOGRAM_EDGES = torch.tensor([0.0, 0.5 / 255, 0.1, 0.5, 1.0])


def _summary_features(images: torch.Tensor) -> torch.Tensor:
    """Per image ``[N, 5]``: log shares of the pixels in each intensity bin, and the mean intensity.

    Taken at full resolution before any resize, so that faint specks and a faint background are not averaged away.
    """
    flat = images.flatten(1)
    bins = torch.bucketize(flat.clamp(0.0, 1.0), _HISTOGRAM_EDGES[1:-1], right=True)
    shares = F.one_hot(bins, len(_HISTOGRAM_EDGES) - 1).float().mean(dim=1)
    return torch.cat([torch.log(shares + 1e-4), flat.mean(1, keepdim=True)], dim=1)


_SUMMARY_COUNT = len(_HISTOGRAM_EDGES) - 1 + 1


class _C2STNetwork(nn.Module):
    """A small CNN on the image beside a small MLP on its intensity summary, one logit from both."""

    def __init__(self, generator: torch.Generator):
        super().__init__()
        # The first block has a bias and no BatchNorm, so that absolute intensity reaches the deeper layers: after
        # a bias-free convolution, BatchNorm normalises away a global scale of the input as far as a batch holds
        # one set (partly intensity-invariant), and a copy of the real demo slices at 5 % brightness scored 0.91.
        # BatchNorm in the later blocks (and the cosine decay of the learning rate below): on 128 vs 128 demo
        # slices at 128 px they raised the accuracy against the same slices blurred (Gaussian, sigma 1.5 px)
        # from 0.60-0.74 to 1.0 over three seeds.
        # skip_init builds conv and linear layers without their default initialisation, which would draw from
        # the global RNG; they are initialised below like PyTorch's defaults, from the test's own generator.
        conv = nn.utils.skip_init
        self.features = nn.Sequential(
            conv(nn.Conv2d, 1, 16, 3, stride=2, padding=1), nn.ReLU(),
            conv(nn.Conv2d, 16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            conv(nn.Conv2d, 32, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        # The summary (coarse intensity histogram and mean of the full-resolution image, standardised with the
        # training folds' mean and spread) states plainly the trivial differences a sceptic sees at a glance:
        # black images with a few faint specks, a faint noise background, a dim copy. The earlier CNN alone, on
        # 64 px images, scored speckled black samples at only 0.62 (and black images with one to four broad
        # faint specks, peak 0.06-0.2, at 0.80 and 0.92 over two seeds). The CNN as it is now (first block
        # without BatchNorm, at least 120 steps) reaches 1.0 on those cases without the summary too; the summary
        # is the second guard, which does not hang on the CNN learning such differences from the pixels.
        self.register_buffer("summary_mean", torch.zeros(_SUMMARY_COUNT))
        self.register_buffer("summary_scale", torch.ones(_SUMMARY_COUNT))
        self.summary = nn.Sequential(conv(nn.Linear, _SUMMARY_COUNT, 16), nn.ReLU())
        self.head = conv(nn.Linear, 32 + 16, 1)
        for layer in self.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
                if layer.bias is not None:
                    bound = 1 / math.sqrt(layer.weight[0].numel())
                    nn.init.uniform_(layer.bias, -bound, bound, generator=generator)

    def forward(self, images: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        """Logits ``[N]`` of images ``[N, 1, s, s]`` with their summary features (:func:`_summary_features`)."""
        summary = (summary - self.summary_mean) / self.summary_scale
        return self.head(torch.cat([self.features(images), self.summary(summary)], dim=1)).squeeze(1)


# fewest optimiser steps per fold, whatever ``epochs`` says (see _train_classifier)
_MIN_STEPS = 120


def _fold_numbers(count: int, folds: int, groups: np.ndarray | None, generator: torch.Generator) -> torch.Tensor:
    """The fold (0 to folds - 1) of each of ``count`` items: equal shares at random, or whole groups together.

    With groups (e.g. subject ids), the groups are shuffled, then placed largest first into the fold that holds
    the fewest items so far, so that the folds stay about equal in size.
    """
    fold = torch.empty(count, dtype=torch.int64)
    if groups is None:
        fold[torch.randperm(count, generator=generator)] = torch.arange(count) % folds
        return fold
    names, member = np.unique(groups, return_inverse=True)
    if len(names) < folds:
        raise ValueError(f"{folds} folds need at least {folds} groups, got {len(names)}")
    member = torch.from_numpy(member.reshape(-1).astype(np.int64))
    sizes = torch.bincount(member, minlength=len(names))
    shuffled = torch.randperm(len(names), generator=generator)
    order = shuffled[torch.argsort(sizes[shuffled], descending=True, stable=True)]
    load, group_fold = [0] * folds, torch.empty(len(names), dtype=torch.int64)
    for group in order.tolist():
        target = min(range(folds), key=load.__getitem__)
        group_fold[group] = target
        load[target] += int(sizes[group])
    return group_fold[member]


def _train_classifier(images: torch.Tensor, summary: torch.Tensor, labels: torch.Tensor, epochs: int,
                      batch_size: int, lr: float, generator: torch.Generator) -> nn.Module:
    """A fresh C2ST network fitted to ``images`` (random horizontal flips) and their summary features with Adam
    and the binary cross-entropy."""
    model = _C2STNetwork(generator)
    model.summary_mean.copy_(summary.mean(0))
    model.summary_scale.copy_(summary.std(0).clamp_min(1e-3))
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    # small sets get more epochs, up to at least _MIN_STEPS optimiser steps: 64 vs 64 slices in 5 folds are
    # only 4 batches an epoch
    per_epoch = math.ceil(len(images) / batch_size)
    epochs = max(int(epochs), math.ceil(_MIN_STEPS / per_epoch)) if epochs > 0 else 0
    # the learning rate decays to 0 over the run (cosine), so the network that classifies the held-out fold is
    # not the one of whichever last step the shuffling happened to end on
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(epochs * per_epoch, 1))
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(images), generator=generator).split(batch_size):
            x = images[batch]
            flip = torch.rand(len(batch), generator=generator) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            loss = F.binary_cross_entropy_with_logits(model(x, summary[batch]), labels[batch])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
    # BatchNorm's running statistics are an exponential average over the last few dozen steps, partly of earlier
    # weights: on small sets (40 steps) they were far enough off to make every held-out prediction one class.
    # They are recomputed from the final weights, one pass over the training images (cumulative average).
    for layer in model.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.reset_running_stats()
            layer.momentum = None
    with torch.no_grad():
        for batch in torch.arange(len(images)).split(batch_size):
            model(images[batch], summary[batch])
    return model.eval()


def _groups(groups: Any, count: int, name: str) -> np.ndarray | None:
    """Group labels as an array of ``count`` items, or None."""
    if groups is None:
        return None
    labels = np.asarray(groups)
    if labels.shape != (count,):
        raise ValueError(f"{name} must hold one label per image ({count}), got shape {labels.shape}")
    return labels


def classifier_two_sample_test(a: torch.Tensor, b: torch.Tensor, folds: int = 5, epochs: int = 20, seed: int = 0,
                               size: int = 64, groups_a: Any = None, groups_b: Any = None, batch_size: int = 32,
                               lr: float = 3e-3) -> float:
    """Held-out accuracy of a small CNN trained to tell image set ``a`` from ``b``: 0.5 = cannot tell, 1 = always can.

    Args:
        a: images ``[Na, 1, H, W]``; ``min(Na, Nb)`` of them, chosen with the seed, take part (likewise of b),
            so that chance is exactly 0.5.
        b: images ``[Nb, 1, H', W']``.
        folds: stratified folds (as many of a as of b in each); each image is classified once, by a network
            trained on the other folds.
        epochs: passes over the training folds (random horizontal flips as augmentation); small sets get more,
            so that each fold's network takes at least 120 optimiser steps.
        seed: seeds a generator of the test's own (subsets, folds, initialisation, batches, flips); the global
            RNG is neither used nor advanced, and the result is the same for the same seed and inputs.
        size: side the images are resized to (area interpolation) to keep the test fast on a CPU.
        groups_a: optional label per image of a (e.g. its subject): a group's images then share a fold. Without
            it, slices of one subject land in both training and held-out folds, and the network can score by
            recognising subjects (their contrast, their anatomy) rather than the set: over five random pairs of
            16 demo subjects (128 slices each), real-vs-real accuracy (of the earlier network, without the
            intensity summary) averaged 0.55 (0.48-0.66) with image folds and 0.51 (0.45-0.59) with subject
            folds. Folds then balance the two sets only roughly.
        groups_b: likewise for b.

    The network sees the resized image (a small CNN) and, beside it, a summary of the full-resolution image's
    intensities (share of black, faint, darker and brighter pixels, mean). On the demo cohort (192 real test
    slices at 128 px with subject folds, against 64 others) it scores 1.0 against all-black images, the same slices
    at 5 % brightness, nearly black images with a few faint Gaussian specks, the slices blurred (sigma 1.5 px) or
    with a faint uniform noise background (up to 0.03); real-vs-real (64 validate slices of other subjects)
    scored 0.54, 0.34, 0.45, 0.40, 0.49, 0.43 over seeds 0-5. It takes about 5 s on one CPU core.

    Returns the accuracy pooled over the held-out folds. With n images per set its spread under the null is at
    least ``0.5 / sqrt(2 n)`` (0.03 at n = 128), and more when the slices come in subjects (a standard deviation
    of about 0.06 in the trials above): compare it with a real-vs-real accuracy at the same n, and read
    differences of less than about 0.1 from it as noise.
    """
    a, b = _images(a, "a"), _images(b, "b")
    groups_a, groups_b = _groups(groups_a, len(a), "groups_a"), _groups(groups_b, len(b), "groups_b")
    count = min(len(a), len(b))
    if not 2 <= folds <= count:
        raise ValueError(f"folds must be between 2 and the size of the smaller set ({count}), got {folds}")
    generator = torch.Generator().manual_seed(int(seed))
    pick_a = torch.randperm(len(a), generator=generator)[:count]
    pick_b = torch.randperm(len(b), generator=generator)[:count]
    fold = torch.cat([
        _fold_numbers(count, folds, None if groups_a is None else groups_a[pick_a.numpy()], generator),
        _fold_numbers(count, folds, None if groups_b is None else groups_b[pick_b.numpy()], generator),
    ])
    summary = torch.cat([_summary_features(a[pick_a]), _summary_features(b[pick_b])])
    images = torch.cat([_resize(a[pick_a], size), _resize(b[pick_b], size)])
    labels = torch.cat([torch.zeros(count), torch.ones(count)])
    correct = 0
    with torch_threads(1):  # a small network on 64 px: one thread is as fast, and runs beside other work
        for k in range(folds):
            held_out = fold == k
            model = _train_classifier(images[~held_out], summary[~held_out], labels[~held_out], epochs, batch_size, lr,
                                      generator)
            with torch.no_grad():
                predicted = (model(images[held_out], summary[held_out]) > 0).float()
            correct += int((predicted == labels[held_out]).sum())
    return correct / len(images)


# ------------------------------------------------------------------ brain-mask shape statistics


# 8-connected neighbourhood: pixels touching at a corner belong to one component
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def foreground_mask(images: torch.Tensor, threshold: float = 0.1, min_fraction: float = 0.01) -> np.ndarray:
    """Brain masks ``[N, H, W]`` (bool): intensity above ``threshold``, holes filled, specks removed.

    Args:
        images: ``[N, 1, H, W]`` in [0, 1].
        threshold: intensity cut-off, as a fraction of the [0, 1] range (absolute, not per image, so that a dim
            noisy image does not pass for a brain).
        min_fraction: connected components (8-connected) smaller than this fraction of the image are dropped.
    """
    from scipy import ndimage

    data = _images(images).numpy()[:, 0]
    min_size = max(1, int(round(min_fraction * data.shape[1] * data.shape[2])))
    masks = np.zeros(data.shape, dtype=bool)
    for i, image in enumerate(data):
        # Ventricles and sulcal CSF are dark enough to fall below the threshold, yet they are inside the brain's
        # outline, which is what the statistics describe: filling holes keeps them in. Isolated bright pixels
        # (noise, a sampler's stray codes) would count as extra regions and stretch the convex hull: dropping
        # small components keeps them from deciding one_region and solidity.
        # (scipy's label and a count rather than skimage's remove_small_objects, whose size argument changed
        # meaning in scikit-image 0.26 while the project allows 0.22.)
        labels, _ = ndimage.label(ndimage.binary_fill_holes(image > threshold), structure=_EIGHT_CONNECTED)
        sizes = np.bincount(labels.ravel())
        masks[i] = (sizes >= min_size)[labels] & (labels > 0)
    return masks


def _mask_statistics(mask: np.ndarray) -> tuple[float, float, float, float]:
    """(one_region, area, mirror_iou, solidity) of one 2-D bool mask; all 0 for an empty mask."""
    from scipy import ndimage
    from skimage.morphology import convex_hull_image

    area = int(mask.sum())
    if area == 0:
        return 0.0, 0.0, 0.0, 0.0
    regions = int(ndimage.label(mask, structure=_EIGHT_CONNECTED)[1])
    mirror = mask[:, ::-1]  # mirrored about the centre column of the image, not of the mask
    mirror_iou = float((mask & mirror).sum() / (mask | mirror).sum())
    solidity = area / max(int(convex_hull_image(mask).sum()), area)
    return float(regions == 1), area / mask.size, mirror_iou, float(solidity)


def shape_statistics(images: torch.Tensor, threshold: float = 0.1, min_fraction: float = 0.01
                     ) -> dict[str, np.ndarray]:
    """Per-image statistics of the brain mask (:func:`foreground_mask`), each an array ``[N]`` of float64.

    ``one_region``: 1 if the mask is one connected component (after dropping components under ``min_fraction``
    of the image), else 0; ``area``: mask area as a fraction of the image; ``mirror_iou``: IoU of the mask and
    its left-right mirror image about the image's centre column (a centred, symmetric brain scores near 1);
    ``solidity``: mask area over the area of its convex hull (ragged or fragmented outlines score low). An empty
    mask gives 0 for every statistic.
    """
    masks = foreground_mask(images, threshold=threshold, min_fraction=min_fraction)
    values = np.array([_mask_statistics(mask) for mask in masks], dtype=np.float64).reshape(-1, 4)
    return {name: values[:, k] for k, name in enumerate(SHAPE_STATISTICS)}


def shape_distance(stats_a: dict[str, np.ndarray], stats_b: dict[str, np.ndarray]) -> dict[str, float]:
    """Per statistic: ``<name>_distance``, the 1-D Wasserstein distance between the two sets' values, and
    ``<name>_mean_a``, ``<name>_mean_b``, the means of each set (statistics present in both dicts)."""
    from scipy.stats import wasserstein_distance

    result = {}
    for name in [key for key in stats_a if key in stats_b]:
        values_a, values_b = np.asarray(stats_a[name], float), np.asarray(stats_b[name], float)
        if values_a.size == 0 or values_b.size == 0:
            raise ValueError(f"statistic {name!r} has no values in one of the sets")
        result[f"{name}_distance"] = float(wasserstein_distance(values_a, values_b))
        result[f"{name}_mean_a"] = float(values_a.mean())
        result[f"{name}_mean_b"] = float(values_b.mean())
    return result


# ------------------------------------------------------------------ intensities


def intensity_distance(images_a: torch.Tensor, images_b: torch.Tensor, threshold: float = 0.5 / 255,
                       bins: int = 256) -> float:
    """1-D Wasserstein distance between the intensities of the non-black pixels of two image sets; 0 is best.

    Pixels above ``threshold`` (real slices' background is exactly 0) of each set are pooled into a histogram of
    ``bins`` equal bins on [0, 1], and the distance is taken between the two histograms (bin centres), which is
    exact to half a bin. A set without any such pixel counts as all black (one value, 0). In the units of the
    intensity: a copy of the reference at half brightness is about half its mean brain intensity away.
    """
    from scipy.stats import wasserstein_distance

    centres = (np.arange(bins) + 0.5) / bins
    weights = []
    for images in (_images(images_a, "images_a"), _images(images_b, "images_b")):
        values = images[images > threshold].clamp(0.0, 1.0)
        if values.numel() == 0:
            weights.append(np.zeros(bins))
            weights[-1][0] = 1.0
            continue
        weights.append(torch.histc(values, bins=bins, min=0.0, max=1.0).double().numpy())
    return float(wasserstein_distance(centres, centres, weights[0], weights[1]))


# ------------------------------------------------------------------ memorisation


def nearest_train(images: torch.Tensor, train: torch.Tensor, size: int = 64, batch_size: int = 256
                  ) -> tuple[np.ndarray, np.ndarray]:
    """For each image, the mean absolute difference to its nearest training image and that image's index.

    Both sets are resized to ``size`` x ``size`` (area interpolation); distances are computed in blocks of
    ``batch_size`` x ``batch_size`` images, so memory stays bounded by the resized sets. Returns
    ``(distance [N] float64, index [N] int64)``.
    """
    query = _resize(_images(images), size).flatten(1)
    pool = _resize(_images(train, "train"), size).flatten(1)
    best = torch.full((len(query),), math.inf, dtype=torch.float64)
    index = torch.zeros(len(query), dtype=torch.int64)
    for q_start in range(0, len(query), batch_size):
        q = query[q_start:q_start + batch_size]
        for t_start in range(0, len(pool), batch_size):
            block = torch.cdist(q, pool[t_start:t_start + batch_size], p=1).double() / query.shape[1]
            value, where = block.min(dim=1)
            better = value < best[q_start:q_start + len(q)]
            best[q_start:q_start + len(q)] = torch.where(better, value, best[q_start:q_start + len(q)])
            index[q_start:q_start + len(q)] = torch.where(better, where + t_start, index[q_start:q_start + len(q)])
    return best.numpy(), index.numpy()


def memorisation(samples: torch.Tensor, train: torch.Tensor, reference: torch.Tensor | None = None,
                 threshold: float | None = None, quantile: float = 0.05, size: int = 64, batch_size: int = 256
                 ) -> dict[str, Any]:
    """How near each sample is to its nearest training slice, next to how near held-out real slices are.

    Args:
        samples: generated images ``[N, 1, H, W]``.
        train: the training images the generator learnt from.
        reference: held-out real images (subjects not in ``train``): the floor. Samples that are not copies are
            about as far from the training set as these are.
        threshold: distance below which a sample counts as a copy; None: the ``quantile`` of the reference's
            nearest distances (then a reference is needed, and about ``quantile`` of new real slices fall below).
        size: side both sets are compared at (mean absolute difference of the resized images).

    Returns a dict: ``nearest_distance`` and ``nearest_index`` (arrays ``[N]``: the distance to and index in
    ``train`` of each sample's nearest training slice), ``median`` and ``copy_share`` (share of samples below
    ``threshold``) and ``threshold``; with a reference also ``reference_nearest_distance``, ``median_reference``
    and ``copy_share_reference``.
    """
    if threshold is None and reference is None:
        raise ValueError("memorisation needs a threshold or a reference set to derive one from")
    distance, index = nearest_train(samples, train, size=size, batch_size=batch_size)
    result: dict[str, Any] = {"nearest_distance": distance, "nearest_index": index,
                              "median": float(np.median(distance))}
    if reference is not None:
        reference_distance, _ = nearest_train(reference, train, size=size, batch_size=batch_size)
        if threshold is None:
            threshold = float(np.quantile(reference_distance, quantile))
        result.update(reference_nearest_distance=reference_distance,
                      median_reference=float(np.median(reference_distance)),
                      copy_share_reference=float(np.mean(reference_distance < threshold)))
    result.update(threshold=float(threshold), copy_share=float(np.mean(distance < threshold)))
    return result


# ------------------------------------------------------------------ the report


def _subsample(count: int, total: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``count`` of ``total`` items chosen at random, in order (all of them when there are no more)."""
    if total <= count:
        return torch.arange(total)
    return torch.randperm(total, generator=generator)[:count].sort().values


def plausibility_report(reference: torch.Tensor, samples: torch.Tensor, floor: torch.Tensor,
                        train: torch.Tensor | None = None, seed: int = 0, folds: int = 5, epochs: int = 20,
                        reference_groups: Any = None, floor_groups: Any = None,
                        reconstruction: torch.Tensor | None = None,
                        reference_reconstruction: torch.Tensor | None = None) -> dict[str, float]:
    """Every plausibility figure for ``samples`` and its real-vs-real floor, as a flat dict (keys: module docstring).

    Args:
        reference: real slices, e.g. the test split.
        samples: generated slices.
        floor: real slices of subjects disjoint from the reference's, e.g. the validate split; it stands in for
            the samples in every comparison. Samples and floor are cut to the size of the smaller (chosen with
            the seed), so both comparisons have equal sizes.
        train: the training slices; when given, the memorisation figures are added.
        seed: seeds the subsampling and the classifier two-sample tests.
        folds: folds of the classifier two-sample tests.
        epochs: training epochs of the classifier two-sample tests.
        reference_groups: optional subject label per reference slice: the two-sample tests then keep a
            subject's slices in one fold (see :func:`classifier_two_sample_test`).
        floor_groups: likewise per floor slice.
        reconstruction: the first stage's reconstructions of ``floor``, one per floor slice in the same order; when
            given, the figures of a perfect prior (``_reconstruction`` keys) are added.
        reference_reconstruction: the first stage's reconstructions of ``reference``, one per reference slice; with
            ``reconstruction``, the prior's own two-sample test is added (``c2st_prior_accuracy``: samples against
            them; its floor: the floor's reconstructions against them).
    """
    reference, samples, floor = _images(reference, "reference"), _images(samples, "samples"), _images(floor, "floor")
    if reconstruction is not None:
        reconstruction = _images(reconstruction, "reconstruction")
        if len(reconstruction) != len(floor):
            raise ValueError(f"reconstruction must hold one image per floor slice ({len(floor)}), "
                             f"got {len(reconstruction)}")
    reference_groups = _groups(reference_groups, len(reference), "reference_groups")
    floor_groups = _groups(floor_groups, len(floor), "floor_groups")
    sets = {"reference": reference, "samples": samples, "floor": floor}
    if train is not None:
        sets["train"] = train = _images(train, "train")
    if reconstruction is not None:
        sets["reconstruction"] = reconstruction
    if reference_reconstruction is not None:
        sets["reference_reconstruction"] = reference_reconstruction = _images(reference_reconstruction,
                                                                              "reference_reconstruction")
        if len(reference_reconstruction) != len(reference):
            raise ValueError(f"reference_reconstruction must hold one image per reference slice ({len(reference)}), "
                             f"got {len(reference_reconstruction)}")
    shapes = {name: tuple(images.shape[-2:]) for name, images in sets.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"all image sets must have the same height and width, got {shapes}")

    generator = torch.Generator().manual_seed(int(seed))
    count = min(len(samples), len(floor))
    samples = samples[_subsample(count, len(samples), generator)]
    keep = _subsample(count, len(floor), generator)
    floor = floor[keep]
    reconstruction = None if reconstruction is None else reconstruction[keep]
    floor_groups = None if floor_groups is None else floor_groups[keep.numpy()]
    report: dict[str, float] = {"n_samples": float(count), "n_floor": float(count),
                                "n_reference": float(len(reference))}

    # with the same seed both tests use the same reference slices in the same folds
    report["c2st_accuracy"] = classifier_two_sample_test(reference, samples, folds=folds, epochs=epochs, seed=seed,
                                                         groups_a=reference_groups)
    report["c2st_accuracy_floor"] = classifier_two_sample_test(reference, floor, folds=folds, epochs=epochs,
                                                               seed=seed, groups_a=reference_groups,
                                                               groups_b=floor_groups)

    if reconstruction is not None:
        # the same subjects and folds as the floor's test: only the first stage's rendering differs
        report["c2st_accuracy_reconstruction"] = classifier_two_sample_test(
            reference, reconstruction, folds=folds, epochs=epochs, seed=seed, groups_a=reference_groups,
            groups_b=floor_groups)

    if reconstruction is not None and reference_reconstruction is not None:
        # the prior alone: decoded samples against decoded real codes, where a perfect prior sits at its floor (the
        # decoded codes of other subjects) whatever the first stage's blur
        report["c2st_prior_accuracy"] = classifier_two_sample_test(
            reference_reconstruction, samples, folds=folds, epochs=epochs, seed=seed, groups_a=reference_groups)
        report["c2st_prior_accuracy_floor"] = classifier_two_sample_test(
            reference_reconstruction, reconstruction, folds=folds, epochs=epochs, seed=seed,
            groups_a=reference_groups, groups_b=floor_groups)

    stats_reference = shape_statistics(reference)
    compared = {"": samples, "_floor": floor, "_reconstruction": reconstruction}
    for suffix, images in compared.items():
        if images is None:
            continue
        report[f"intensity_distance{suffix}"] = intensity_distance(reference, images)
        report[f"texture_distance{suffix}"] = spectrum_distance(images, reference)
        report[f"diversity{suffix}"] = ms_ssim_diversity(images, max_pairs=DIVERSITY_PAIRS, seed=seed)
        distances = shape_distance(stats_reference, shape_statistics(images))
        for name in SHAPE_STATISTICS:
            report[f"{_MEAN_NAMES[name]}{suffix}"] = distances[f"{name}_mean_b"]
            report[f"{name}_distance{suffix}"] = distances[f"{name}_distance"]
    for name in SHAPE_STATISTICS:
        report[f"{_MEAN_NAMES[name]}_reference"] = float(stats_reference[name].mean())
    report["diversity_reference"] = ms_ssim_diversity(reference, max_pairs=DIVERSITY_PAIRS, seed=seed)

    if train is not None:
        copies = memorisation(samples, train, reference=reference)
        floor_distance, _ = nearest_train(floor, train)
        report.update(n_train=float(len(train)), nn_copy_threshold=copies["threshold"],
                      nn_distance_median=copies["median"], nn_distance_median_floor=float(np.median(floor_distance)),
                      nn_distance_median_reference=copies["median_reference"], nn_copy_share=copies["copy_share"],
                      nn_copy_share_floor=float(np.mean(floor_distance < copies["threshold"])))
    return report


# (key of the samples' figure, label); the floor's figure is the key + "_floor"
_ROWS = (
    ("c2st_accuracy", "C2ST accuracy (0.5 = indistinguishable)"),
    ("c2st_prior_accuracy", "C2ST against reconstructions of real slices (the prior alone; floor: reconstructions "
                            "of other subjects)"),
    ("intensity_distance", "non-black intensities, Wasserstein distance to reference"),
    ("diversity", "diversity, 1 - mean pairwise MS-SSIM"),
    ("texture_distance", "texture: radial power spectrum, mean log10 distance to reference"),
    *((_MEAN_NAMES[name], f"{_MEAN_NAMES[name].replace('_', ' ')}, mean") for name in SHAPE_STATISTICS),
    *((f"{name}_distance", f"{name.replace('_', ' ')}, Wasserstein distance to reference")
      for name in SHAPE_STATISTICS),
    ("nn_distance_median", "nearest-train distance, median"),
    ("nn_copy_share", "share nearer to train than the copy threshold"),
)


def format_report(report: dict[str, float]) -> str:
    """A markdown table of a :func:`plausibility_report`: figure | samples | real-vs-real floor, and a column of the
    first stage's reconstructions (a perfect prior) when the report has them."""
    suffixes = ["_floor"] + (["_reconstruction"] if "c2st_accuracy_reconstruction" in report else [])
    header = "| figure | samples | real-vs-real floor |" + (" reconstructions (perfect prior) |" if len(suffixes) > 1
                                                            else "")
    lines = [header, "| --- |" + " ---: |" * (1 + len(suffixes))]
    for key, label in _ROWS:
        if key not in report:
            continue
        reference = report.get(f"{key}_reference")
        if reference is not None:
            label = f"{label} (reference {reference:.3f})"
        others = [report.get(f"{key}{suffix}") for suffix in suffixes]
        cells = " | ".join("" if value is None else f"{value:.3f}" for value in others)
        lines.append(f"| {label} | {report[key]:.3f} | {cells} |")
    sizes = ", ".join(f"{name} {int(report[f'n_{name}'])}" for name in ("samples", "floor", "reference", "train")
                      if f"n_{name}" in report)
    if sizes:
        lines.append(f"\nImages: {sizes}.")
    if "nn_copy_threshold" in report:
        lines.append(f"Copy threshold: mean absolute difference {report['nn_copy_threshold']:.4f} at 64x64 "
                     "(5th percentile of the reference's nearest-train distances).")
    return "\n".join(lines)

"""Tests of the plausibility figures on demo-cohort brain slices (built offline from the MNI152 template)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from scipy import ndimage

from oasis_gen.data.demo import SPLIT_DIRS, build_demo_cohort
from oasis_gen.data.readers import read_slice
from oasis_gen.generation.plausibility import format_report, plausibility_report
from oasis_gen.metrics import (
    classifier_two_sample_test,
    foreground_mask,
    intensity_distance,
    memorisation,
    ms_ssim_diversity,
    nearest_train,
    radial_power_spectrum,
    shape_distance,
    shape_statistics,
    spectrum_distance,
)
from oasis_gen.metrics.two_sample import _fold_numbers

SIZE = 64
SUBJECT = re.compile(r"^case_(\d{3})_slice_\d+\.nii\.png$")

# every key plausibility_report documents, with a training set given
REPORT_KEYS = (
    "c2st_accuracy", "c2st_accuracy_floor", "intensity_distance", "intensity_distance_floor",
    *(f"{name}{suffix}" for name in ("one_region_share", "area", "mirror_iou", "solidity")
      for suffix in ("", "_floor", "_reference")),
    *(f"{name}_distance{suffix}" for name in ("one_region", "area", "mirror_iou", "solidity")
      for suffix in ("", "_floor")),
    "nn_distance_median", "nn_distance_median_floor", "nn_distance_median_reference",
    "nn_copy_share", "nn_copy_share_floor", "nn_copy_threshold",
    "n_samples", "n_floor", "n_reference", "n_train",
)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    """Demo slices per split at 64x64, with each slice's subject: 16 subjects x 8 slices (train 8, 4, 4)."""
    root = tmp_path_factory.mktemp("demo")
    build_demo_cohort(root, subjects=16, size=SIZE, slices_per_subject=8, split=(0.5, 0.25, 0.25), progress=False)
    out = {}
    for split, folder in SPLIT_DIRS.items():
        paths = sorted((root / folder).glob("*.png"))
        images = torch.from_numpy(np.stack([read_slice(path) for path in paths]))[:, None]
        subjects = np.array([int(SUBJECT.match(path.name).group(1)) for path in paths])
        out[split] = (images, subjects)
    return out


def _all_slices(cohort: dict) -> tuple[torch.Tensor, np.ndarray]:
    images, subjects = zip(*cohort.values(), strict=True)
    return torch.cat(images), np.concatenate(subjects)


def _blobs(count: int, seed: int) -> torch.Tensor:
    """Smooth random noise thresholded into one ragged, roughly centred blob per image, with a grainy inside."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    centre = ((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2) / (0.35 * SIZE) ** 2
    out = []
    for _ in range(count):
        field = ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE)), SIZE / 10)
        mask = field / field.std() - 2.5 * centre > np.quantile(field / field.std() - 2.5 * centre, 0.7)
        labels, _ = ndimage.label(mask)
        mask = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
        texture = ndimage.gaussian_filter(rng.random((SIZE, SIZE)), 1.0)
        texture = (texture - texture.min()) / np.ptp(texture)
        out.append(np.where(mask, 0.25 + 0.6 * texture, 0.0))
    return torch.tensor(np.stack(out), dtype=torch.float32)[:, None]


def _specks(count: int, seed: int) -> torch.Tensor:
    """Nearly black images: two to six faint Gaussian specks each (sigma 0.8-2 px, peak 0.05-0.3), as a sampler
    that has collapsed to the background might draw."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    out = np.zeros((count, SIZE, SIZE))
    for image in out:
        for _ in range(rng.integers(2, 7)):
            cy, cx = rng.uniform(10, SIZE - 10, 2)
            sigma = rng.uniform(0.8, 2.0)
            image += rng.uniform(0.05, 0.3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return torch.tensor(np.clip(out, 0, 1), dtype=torch.float32)[:, None]


def _disc(cy: float, cx: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


def _images(*masks: np.ndarray, value: float = 0.7) -> torch.Tensor:
    return torch.tensor(np.stack(masks) * value, dtype=torch.float32)[:, None]


# ------------------------------------------------------------------ classifier two-sample test


def test_c2st_cannot_tell_two_halves_of_real_slices(cohort):
    images, subjects = _all_slices(cohort)
    even = subjects % 2 == 0  # two halves of different pseudo-subjects, 64 slices each
    # subject folds (a subject's slices never in both training and held-out folds); image folds run in the report
    accuracy = classifier_two_sample_test(images[even], images[~even], seed=0, groups_a=subjects[even],
                                          groups_b=subjects[~even])
    assert 0.3 < accuracy < 0.7


@pytest.mark.parametrize("fake", ["noise", "blobs"])
def test_c2st_tells_real_slices_from_fakes(cohort, fake):
    real = cohort["train"][0]
    if fake == "noise":  # trivial to tell apart: 32 of each are enough
        real, other = real[::2], torch.rand(32, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    else:
        other = _blobs(64, 1)
        # as large and as bright as the brains: the network must see more than the area
        assert abs(float(shape_statistics(other)["area"].mean() - shape_statistics(real)["area"].mean())) < 0.1
    assert classifier_two_sample_test(real, other, seed=0) > 0.9


@pytest.mark.parametrize("seed", [0, 1])
def test_c2st_stays_near_chance_for_real_halves_over_seeds(cohort, seed):
    images, subjects = _all_slices(cohort)
    # two random halves of the pseudo-subjects (8 each): the same distribution, other subjects
    halves = np.random.default_rng(seed).permutation(np.unique(subjects))[:8]
    first = np.isin(subjects, halves)
    accuracy = classifier_two_sample_test(images[first], images[~first], seed=seed, groups_a=subjects[first],
                                          groups_b=subjects[~first])
    assert 0.3 < accuracy < 0.7


@pytest.mark.parametrize("fake", ["dim", "specks", "faint_noise"])
def test_c2st_tells_real_slices_from_trivially_wrong_ones(cohort, fake):
    # differences a sceptic sees at a glance must score near 1, not just above chance: the earlier network
    # scored a dim copy 0.91 and nearly black speckled samples 0.62 on the demo cohort
    real, subjects = cohort["train"]
    noise = torch.rand(real.shape, generator=torch.Generator().manual_seed(2))
    other = {"dim": real * 0.05, "specks": _specks(len(real), 4),
             "faint_noise": (real + 0.03 * noise).clamp(0, 1)}[fake]
    if fake == "specks":  # nearly black: no brain mask at all
        assert shape_statistics(other)["area"].max() < 0.01 and float(other.mean()) < 0.01
    assert classifier_two_sample_test(real, other, seed=0, groups_a=subjects) >= 0.9


def test_intensity_distance_sees_dim_and_black_sets(cohort):
    real, other = cohort["train"][0], cohort["test"][0]
    assert intensity_distance(real, real) == pytest.approx(0.0, abs=1e-9)
    floor = intensity_distance(real, other)
    assert floor < 0.05
    brain = float(real[real > 0.5 / 255].mean())
    # all black: every non-black intensity of the reference is moved to 0, its mean away
    assert intensity_distance(real, torch.zeros_like(real)) == pytest.approx(brain, abs=1 / 256)
    assert intensity_distance(real, real * 0.5) == pytest.approx(0.5 * brain, abs=0.02)
    assert intensity_distance(real, _specks(32, 5)) > 10 * floor


def test_c2st_is_deterministic_and_leaves_the_global_rng_alone(cohort):
    real = cohort["train"][0][:20]
    fake = _blobs(24, 2)
    before = torch.random.get_rng_state()
    first = classifier_two_sample_test(real, fake, folds=2, epochs=2, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert classifier_two_sample_test(real, fake, folds=2, epochs=2, seed=3) == first
    assert 0.0 <= first <= 1.0 and (first * 40) == int(first * 40)  # 20 of each set, balanced


def test_folds_are_equal_or_keep_groups_together():
    generator = torch.Generator().manual_seed(0)
    plain = _fold_numbers(10, 5, None, generator)
    assert torch.bincount(plain).tolist() == [2] * 5
    groups = np.repeat(np.arange(6), 3)
    fold = _fold_numbers(18, 3, groups, generator)
    assert all(len(set(fold[groups == g].tolist())) == 1 for g in range(6))
    assert torch.bincount(fold).tolist() == [6, 6, 6]
    with pytest.raises(ValueError, match="groups"):
        _fold_numbers(4, 3, np.array([0, 0, 1, 1]), generator)


# ------------------------------------------------------------------ shape statistics


def test_shape_statistics_of_known_masks():
    centre = (SIZE - 1) / 2  # the centre column about which the mask is mirrored
    disc = _disc(centre, centre, 20)
    two = _disc(centre, 14, 8) | _disc(centre, 50, 8)
    half = _disc(centre, 16, 14) & (np.arange(SIZE) < 16)[None, :]  # left half of an off-centre disc
    empty = np.zeros((SIZE, SIZE), bool)
    stats = shape_statistics(_images(disc, two, half, empty))
    assert stats["one_region"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert stats["mirror_iou"][0] == pytest.approx(1.0)
    assert stats["mirror_iou"][2] < 0.1
    assert stats["solidity"][0] > 0.97 and stats["solidity"][2] > 0.95
    assert stats["area"][0] == pytest.approx(disc.mean())
    assert [float(stats[name][3]) for name in stats] == [0.0, 0.0, 0.0, 0.0]


def test_foreground_mask_fills_holes_and_drops_specks():
    centre = (SIZE - 1) / 2
    ring = _disc(centre, centre, 20) & ~_disc(centre, centre, 8)  # a dark "ventricle" inside the brain
    specks = ring.copy()
    specks[2, 2] = specks[60, 5] = specks[5, 60] = True  # noise far from the brain
    images = _images(ring, specks)
    images[0, 0][torch.from_numpy(_disc(centre, centre, 8))] = 0.05  # below the threshold, above zero
    masks = foreground_mask(images)
    assert np.array_equal(masks[0], _disc(centre, centre, 20)) and np.array_equal(masks[1], masks[0])
    stats = shape_statistics(images)
    assert stats["one_region"].tolist() == [1.0, 1.0] and stats["solidity"][1] > 0.97


def test_shape_distance_is_the_wasserstein_distance_of_each_statistic():
    a = {"area": np.array([0.2, 0.3, 0.4]), "solidity": np.array([0.9, 0.9, 0.9])}
    b = {"area": a["area"] + 0.1, "solidity": a["solidity"]}
    result = shape_distance(a, b)
    assert result["area_distance"] == pytest.approx(0.1) and result["solidity_distance"] == pytest.approx(0.0)
    assert result["area_mean_a"] == pytest.approx(0.3) and result["area_mean_b"] == pytest.approx(0.4)


def test_real_slices_have_brain_like_shapes(cohort):
    stats = shape_statistics(cohort["train"][0])
    assert stats["area"].min() > 0.05 and stats["one_region"].mean() > 0.5
    assert np.median(stats["mirror_iou"]) > 0.7 and np.median(stats["solidity"]) > 0.8


# ------------------------------------------------------------------ memorisation


def test_memorisation_flags_copies_of_training_slices_not_held_out_ones(cohort):
    train, held_out, other = cohort["train"][0], cohort["test"][0], cohort["validate"][0]
    picks = torch.tensor([5, 0, 40, 17, 63])
    copies = memorisation(train[picks], train, reference=held_out)
    assert copies["nearest_distance"].max() < 1e-7 and copies["nearest_index"].tolist() == picks.tolist()
    assert copies["median"] < 1e-7 and copies["copy_share"] == 1.0
    assert copies["median_reference"] > 0.01 and copies["threshold"] > 0.005
    new = memorisation(other, train, reference=held_out)
    assert new["copy_share"] < 0.3 and new["median"] > 0.5 * new["median_reference"]
    with pytest.raises(ValueError, match="threshold"):
        memorisation(other, train)


def test_nearest_train_is_the_same_in_small_blocks(cohort):
    train, held_out = cohort["train"][0], cohort["test"][0]
    distance, index = nearest_train(held_out, train)
    small_distance, small_index = nearest_train(held_out, train, batch_size=7)
    assert np.allclose(distance, small_distance, atol=1e-6) and np.array_equal(index, small_index)
    brute = (torch.nn.functional.interpolate(held_out[:3], size=32, mode="area")[:, None]
             - torch.nn.functional.interpolate(train, size=32, mode="area")[None]).abs().mean(dim=(2, 3, 4))
    distance_32, index_32 = nearest_train(held_out[:3], train, size=32)
    assert np.allclose(distance_32, brute.min(dim=1).values.numpy(), atol=1e-6)
    assert index_32.tolist() == brute.argmin(dim=1).tolist()


# ------------------------------------------------------------------ the report


def test_plausibility_report_has_every_figure_and_its_floor(cohort):
    train, train_subjects = cohort["train"]
    reference, reference_subjects = cohort["test"]
    floor, floor_subjects = cohort["validate"]
    # "samples": copies of training slices (real, so plausible, but memorised), more of them than the floor
    samples = train[:40]
    report = plausibility_report(reference, samples, floor, train=train, folds=4, reference_groups=reference_subjects,
                                 floor_groups=floor_subjects)
    assert set(REPORT_KEYS) <= set(report), set(REPORT_KEYS) - set(report)
    assert all(isinstance(value, float) and math.isfinite(value) for value in report.values())
    assert report["n_samples"] == report["n_floor"] == 32.0 and report["n_reference"] == 32.0
    assert report["nn_copy_share"] == 1.0 and report["nn_distance_median"] < 1e-7
    assert report["nn_copy_share_floor"] < 0.3 and report["nn_distance_median_floor"] > 0.01
    for suffix in ("", "_floor"):
        assert 0.0 <= report[f"c2st_accuracy{suffix}"] <= 1.0 and report[f"area_distance{suffix}"] < 0.1
        assert report[f"intensity_distance{suffix}"] < 0.05

    table = format_report(report)
    assert table.startswith("| figure | samples | real-vs-real floor |\n")
    # one row per figure: C2ST, intensities, diversity, texture, 4 means, 4 distances, 2 memorisation, header rule
    assert table.count("\n| ") == 15
    assert "C2ST accuracy" in table and f"{report['c2st_accuracy_floor']:.3f}" in table


def test_reconstructions_of_the_floor_are_scored_as_a_perfect_prior(cohort):
    reference, reference_subjects = cohort["test"]
    floor, floor_subjects = cohort["validate"]
    blurred = torch.from_numpy(ndimage.gaussian_filter(floor.numpy(), sigma=(0, 0, 1.5, 1.5)))
    # the floor itself as its "reconstruction" scores as the floor does: same subjects, same folds, same seed
    exact = plausibility_report(reference, _blobs(32, 5), floor, folds=2, epochs=2, reference_groups=reference_subjects,
                                floor_groups=floor_subjects, reconstruction=floor.clone())
    for key in ("c2st_accuracy", "mirror_iou", "one_region_share", "solidity_distance", "intensity_distance"):
        assert exact[f"{key}_reconstruction"] == pytest.approx(exact[f"{key}_floor"]), key
    # a blurred rendering of the floor is told from real slices, as the blobs are
    blurry = plausibility_report(reference, _blobs(32, 5), floor, folds=4, epochs=5,
                                 reference_groups=reference_subjects, floor_groups=floor_subjects,
                                 reconstruction=blurred)
    assert blurry["c2st_accuracy_reconstruction"] > blurry["c2st_accuracy_floor"] + 0.2
    table = format_report(blurry)
    assert table.startswith("| figure | samples | real-vs-real floor | reconstructions (perfect prior) |")
    assert f"| {blurry['c2st_accuracy_reconstruction']:.3f} |" in table.splitlines()[2]
    with pytest.raises(ValueError, match="one image per floor slice"):
        plausibility_report(reference, _blobs(8, 5), floor, reconstruction=floor[:3])


def test_plausibility_report_without_train_and_with_bad_input(cohort):
    reference, floor = cohort["test"][0], cohort["validate"][0]
    report = plausibility_report(reference, _blobs(16, 3), floor, folds=2, epochs=2)
    assert "nn_distance_median" not in report and report["n_samples"] == 16.0
    assert all(math.isfinite(value) for value in report.values())
    assert report["one_region_share"] == 1.0 and report["mirror_iou_distance"] > report["mirror_iou_distance_floor"]
    with pytest.raises(ValueError, match="same height and width"):
        plausibility_report(reference, torch.zeros(4, 1, 32, 32), floor)
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        plausibility_report(reference, torch.zeros(4, 64, 64), floor)


def test_fixture_reads_a_real_cohort(cohort):
    images, subjects = _all_slices(cohort)
    assert images.shape == (128, 1, SIZE, SIZE) and len(set(subjects.tolist())) == 16
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0


# ------------------------------------------------------------------ diversity, texture, the prior's own test


def test_diversity_tells_a_set_of_identical_slices_from_real_sets(cohort):
    reference, floor = cohort["test"][0], cohort["validate"][0]
    real_a, real_b = ms_ssim_diversity(reference), ms_ssim_diversity(floor)
    assert real_a > 0.3 and abs(real_a - real_b) < 0.1
    assert ms_ssim_diversity(reference[:1].expand(12, -1, -1, -1).clone()) == pytest.approx(0.0, abs=1e-4)


def test_texture_distance_is_near_zero_for_real_sets_and_large_for_noise_and_speckle(cohort):
    reference, floor = cohort["test"][0], cohort["validate"][0]
    train = cohort["train"][0]
    generator = torch.Generator().manual_seed(0)
    real = max(spectrum_distance(floor, reference), spectrum_distance(train, reference))
    noise = spectrum_distance(torch.rand(32, 1, SIZE, SIZE, generator=generator), reference)
    speckled = (floor + 0.15 * torch.randn(floor.shape, generator=generator) * (floor > 0)).clamp(0, 1)
    assert real < 0.15 and noise > 5 * real and spectrum_distance(speckled, reference) > 4 * real
    assert spectrum_distance(reference, reference) == 0.0
    spectrum = radial_power_spectrum(reference)
    assert spectrum.shape == (SIZE // 2 + 1,) and spectrum[0] > spectrum[-1] > 0


def test_samples_are_tested_against_reconstructions_beside_reconstructions_of_other_subjects(cohort):
    reference, reference_subjects = cohort["test"]
    floor, floor_subjects = cohort["validate"]

    def render(images: torch.Tensor) -> torch.Tensor:  # a first stage that blurs
        return torch.from_numpy(ndimage.gaussian_filter(images.numpy(), sigma=(0, 0, 1.0, 1.0)))

    # samples that are rendered real slices of other subjects: a perfect prior for this first stage, so its own test
    # sits near its floor, while the plain test against real slices sees the rendering
    report = plausibility_report(reference, render(floor), floor, folds=4, epochs=5,
                                 reference_groups=reference_subjects, floor_groups=floor_subjects,
                                 reconstruction=render(floor), reference_reconstruction=render(reference))
    assert abs(report["c2st_prior_accuracy"] - report["c2st_prior_accuracy_floor"]) < 0.15
    assert report["c2st_prior_accuracy"] < report["c2st_accuracy"] - 0.15
    for key in ("diversity", "diversity_floor", "diversity_reconstruction", "diversity_reference",
                "texture_distance", "texture_distance_floor", "texture_distance_reconstruction"):
        assert math.isfinite(report[key]), key
    table = format_report(report)
    row = next(line for line in table.splitlines() if line.startswith("| C2ST against reconstructions"))
    assert f"| {report['c2st_prior_accuracy']:.3f} | {report['c2st_prior_accuracy_floor']:.3f} |" in row
    with pytest.raises(ValueError, match="one image per reference slice"):
        plausibility_report(reference, _blobs(8, 5), floor, reconstruction=floor, reference_reconstruction=floor[:3])

"""Real slices for the plausibility test, loaded from a dataset's splits the way evaluation loads them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import brain_slice, write_oasis_slices

from oasis_gen.data import check_dataset
from oasis_gen.data.transforms import decode_intensity, eval_transforms
from oasis_gen.generation.reference import sample_plausibility, split_slices


@pytest.fixture
def records(tmp_path):
    root = write_oasis_slices(tmp_path / "oasis", size=40,
                              layout=(("train", 4, 4), ("validate", 3, 4), ("test", 3, 4)))
    return check_dataset(root, progress=False).usable()


def test_split_slices_are_the_evaluation_chain_s_images_with_their_subjects(records):
    images, subjects = split_slices(records["test"], 32)
    assert images.shape == (12, 1, 32, 32) and images.dtype == torch.float32
    assert subjects == [str(r["subject"]) for r in records["test"]] and len(set(subjects)) == 3
    first = decode_intensity(torch.as_tensor(eval_transforms(32)(records["test"][0])["image"]))
    assert torch.equal(images[0], first)


def test_split_slices_takes_a_seeded_subset_in_file_order(records):
    some, subjects = split_slices(records["train"], 16, max_count=5, seed=3)
    again, _ = split_slices(records["train"], 16, max_count=5, seed=3)
    other, _ = split_slices(records["train"], 16, max_count=5, seed=4)
    assert some.shape == (5, 1, 16, 16) and torch.equal(some, again) and not torch.equal(some, other)
    order = [str(r["subject"]) for r in records["train"]]
    assert [order.index(s) for s in subjects] == sorted(order.index(s) for s in subjects)
    assert split_slices([], 16)[0].shape == (0, 1, 16, 16)


def test_sample_plausibility_scores_real_validate_slices_near_the_floor_and_noise_far_from_it(records):
    fake = torch.rand(12, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    report = sample_plausibility(fake, records, 32, epochs=5, folds=3)
    assert report["n_samples"] == report["n_floor"] == 12 and report["n_train"] == 16
    assert report["c2st_accuracy"] >= 0.9  # noise is told from real slices
    assert report["one_region_share_reference"] == 1.0  # the test ellipses are single regions
    assert "nn_copy_share" in report and np.isfinite(report["nn_distance_median_floor"])
    real = torch.stack([torch.from_numpy(brain_slice(32, seed)).float()[None] / 255 for seed in range(100, 112)])
    report = sample_plausibility(real, records, 32, epochs=5, folds=3)
    assert report["one_region_share"] == 1.0 and report["mirror_iou"] > 0.8


def test_sample_plausibility_names_the_missing_split(records):
    with pytest.raises(ValueError, match="validate split"):
        sample_plausibility(torch.rand(4, 1, 32, 32), {**records, "validate": []}, 32)

"""Volumes are sliced in one canonical orientation whatever their stored one: the same head stored RAS, LPS, PIR
or PSR (IXI's T1 scans are stored P-S-R) gives the same array, the same slices and the same data records."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from oasis_gen.data import check_dataset
from oasis_gen.data.readers import read_volume, resolve_axis, volume_slice

ORIENTATIONS = ("RAS", "LPS", "PIR", "PSR")
AFFINE_RAS = np.array([[1.5, 0, 0, -30], [0, 1.2, 0, -40], [0, 0, 2.0, -20], [0, 0, 0, 1]])


def asymmetric_head(shape=(24, 26, 20)) -> np.ndarray:
    """An ellipsoid of tissue off the centre (RAS array: towards the left, anterior, upper corner) with a bright
    block in its anterior, left, upper part: any flip or transposition of the axes moves both."""
    rng = np.random.default_rng(3)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    inside = (x + 0.25) ** 2 / 0.4 + (y - 0.2) ** 2 / 0.45 + (z - 0.2) ** 2 / 0.4 < 1
    data = np.where(inside, 200 + 50 * rng.random(shape), 0).astype(np.float32)
    data[5:10, 16:21, 12:16] = 600.0  # x low = left, y high = anterior, z high = superior
    return data


def write_oriented(path: Path, ras: np.ndarray, codes: str, affine: np.ndarray = AFFINE_RAS) -> Path:
    """Save the RAS array stored with axes ``codes`` (same voxels in the same world positions)."""
    turn = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(codes))
    data = nib.orientations.apply_orientation(ras, turn)
    image = nib.Nifti1Image(np.ascontiguousarray(data).astype(np.int16),
                            affine @ nib.orientations.inv_ornt_aff(turn, ras.shape))
    assert "".join(nib.aff2axcodes(image.affine)) == codes
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


@pytest.fixture
def oriented(tmp_path: Path) -> dict[str, Path]:
    ras = asymmetric_head()
    return {codes: write_oriented(tmp_path / "scans" / f"head_{codes}.nii.gz", ras, codes) for codes in ORIENTATIONS}


def test_every_stored_orientation_reads_as_the_same_canonical_array(oriented):
    volumes = {codes: read_volume(str(path)) for codes, path in oriented.items()}
    reference = volumes["RAS"]
    for codes, volume in volumes.items():
        assert volume.stored_axes == tuple(codes)
        assert np.array_equal(volume.data, reference.data), codes
        np.testing.assert_allclose(volume.affine, AFFINE_RAS, atol=1e-6)  # the same world space
        stored = np.asarray(nib.load(str(oriented[codes])).dataobj, dtype=np.float32)
        # and back: the canonical array turned to the file's own layout is the file's array (scaled to [0, 1])
        assert np.array_equal(volume.to_stored(volume.data) > 0, stored > 0), codes
        assert resolve_axis(oriented[codes], "axial") == 2 and resolve_axis(oriented[codes], "sagittal") == 0


def test_axial_slices_show_anterior_at_the_top_whatever_the_stored_orientation(oriented):
    for codes, path in oriented.items():
        volume = read_volume(str(path))
        plane = volume_slice(volume, 2, 14)  # through the bright block (superior part)
        rows, cols = np.nonzero(plane > 0.9)
        assert rows.size, codes
        # anterior at the top and the patient's left on the left, as the demo cohort's slices
        assert rows.mean() < plane.shape[0] / 2 and cols.mean() < plane.shape[1] / 2, codes


def test_the_data_layer_cuts_the_same_slices_from_every_orientation(oriented):
    report = check_dataset(oriented["RAS"].parent, split_ratios=(0.5, 0.25, 0.25), progress=False)
    records = [r for split in report.usable().values() for r in split]
    by_subject: dict[str, list[int]] = {}
    for record in records:
        by_subject.setdefault(Path(record["image"]).name, []).append(int(record["slice"]))
    assert len(by_subject) == 4 and len({tuple(sorted(v)) for v in by_subject.values()}) == 1
    assert {int(r["axis"]) for r in records} == {2}
    index = sorted(by_subject["head_RAS.nii.gz"])[len(by_subject["head_RAS.nii.gz"]) // 2]
    planes = [volume_slice(read_volume(str(path)), 2, index) for path in oriented.values()]
    assert all(np.array_equal(plane, planes[0]) for plane in planes)

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from synthgen import io
from synthgen.errors import GridMismatchError, InputError, OverwriteError
from synthgen.volume import Volume
from tests.conftest import AFFINES, make_affine, ramp_volume

FILE_EXTS = [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"]


def probe_voxels(shape):
    s = np.asarray(shape) - 1
    return np.array([[0, 0, 0], s, [s[0], 0, 1], [1, s[1], 0], [2, 3, s[2]]])


@pytest.mark.parametrize("ext", FILE_EXTS)
def test_round_trip_same_world_coordinates(tmp_path, ramp, ext):
    path = tmp_path / f"vol{ext}"
    io.write(ramp, path)
    back = io.read(path)
    np.testing.assert_array_equal(back.numpy(), ramp.numpy())
    assert back.numpy().dtype == np.int16
    idx = probe_voxels(ramp.shape)
    np.testing.assert_allclose(back.voxel_to_world(idx), ramp.voxel_to_world(idx), atol=1e-3)


@pytest.mark.parametrize("ext", FILE_EXTS)
def test_round_trip_float_and_synthetic_mark(tmp_path, ext):
    v = ramp_volume(AFFINES["oblique"], dtype=np.float32).replace(synthetic=True)
    v = v.with_array(v.numpy() * 0.37)
    path = tmp_path / f"syn{ext}"
    io.write(v, path)
    back = io.read(path)
    np.testing.assert_allclose(back.numpy(), v.numpy(), rtol=1e-6)
    assert back.synthetic is True
    assert io.read(io.write(ramp_volume(AFFINES["ras"]), tmp_path / f"real{ext}")).synthetic is False


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_label_map_round_trip_keeps_ids(tmp_path, ext):
    lab = np.zeros((6, 5, 4), np.uint8)
    lab[1:3, 1:4, 2] = 5
    lab[4, 0, 0] = 201
    v = Volume(lab, AFFINES["lps"], kind="label")
    io.write(v, tmp_path / f"lab{ext}")
    back = io.read(tmp_path / f"lab{ext}", kind="label")
    assert back.kind == "label" and back.vocab is not None
    np.testing.assert_array_equal(back.numpy(), lab)
    assert back.vocab.name(5) == "liver"


def test_nifti_scaling_applied(tmp_path):
    import nibabel as nib

    raw = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    img = nib.Nifti1Image(raw, np.eye(4))
    img.header.set_slope_inter(1.0, -1024.0)
    nib.save(img, tmp_path / "scaled.nii.gz")
    back = io.read(tmp_path / "scaled.nii.gz")
    assert back.numpy().dtype == np.int16
    np.testing.assert_array_equal(back.numpy(), raw - 1024)
    img.header.set_slope_inter(0.5, 10.0)
    nib.save(img, tmp_path / "scaled2.nii.gz")
    np.testing.assert_allclose(io.read(tmp_path / "scaled2.nii.gz").numpy(), raw * 0.5 + 10)


def test_example_ct_is_in_hounsfield_units(example):
    ct, labels = example
    arr = ct.numpy()
    lab = labels.numpy()
    # Air inside the field of view near -1000 HU, aorta with contrast well above water.
    assert -1100 < np.median(arr[(lab == 0) & (arr > -1500) & (arr < -500)]) < -900
    aorta = labels.vocab.id("aorta")
    assert np.median(arr[lab == aorta]) > 150


# ----------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nothere.nii.gz: no such file or folder"):
        io.read(tmp_path / "nothere.nii.gz")


def test_non_image(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    with pytest.raises(InputError, match=r"notes.txt: not a medical image \(unrecognised format"):
        io.read(p)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_corrupt_file(tmp_path, ext):
    p = tmp_path / f"junk{ext}"
    p.write_bytes(os.urandom(2000))
    with pytest.raises(InputError, match=r"junk.*: truncated or corrupt"):
        io.read(p)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_file(tmp_path, ext):
    p = tmp_path / f"full{ext}"
    io.write(Volume(np.random.default_rng(0).normal(size=(40, 40, 40)).astype(np.float32), np.eye(4)), p)
    data = p.read_bytes()
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut.*: truncated or corrupt"):
        io.read(cut)


def test_2d_image_rejected(tmp_path):
    """A file of two dimensions is a picture, not a volume: refused even where single slices are taken."""
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((8, 9), np.int16), np.eye(4)), tmp_path / "slice.nii.gz")
    for allow_one_slice in (False, True):
        with pytest.raises(InputError, match=r"slice.nii.gz: image is 2D \(8x9\); a 3D volume is needed"):
            io.read(tmp_path / "slice.nii.gz", allow_one_slice=allow_one_slice)
    assert io.read(tmp_path / "slice.nii.gz", allow_2d=True).shape == (8, 9, 1)


@pytest.mark.parametrize("ext", FILE_EXTS)
def test_one_slice_volume_is_refused_by_default_and_read_when_allowed(tmp_path, ext):
    """A 3D file one voxel deep is a one-slice volume: `info`/`convert` take it, the depth-needing engines do not."""
    path = tmp_path / f"one{ext}"
    one = ramp_volume(AFFINES["oblique"], shape=(8, 9, 1))
    io.write(one, path)
    with pytest.raises(InputError, match=r"one.*: has one slice \(8x9x1\); a 3D volume is needed") as e:
        io.read(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
    back = io.read(path, allow_one_slice=True)
    assert back.shape == (8, 9, 1)
    np.testing.assert_array_equal(back.numpy(), one.numpy())
    np.testing.assert_allclose(back.spacing, one.spacing, rtol=1e-5)
    labels = tmp_path / f"one_labels{ext}"
    io.write(one.with_array((one.numpy() > 0).astype(np.uint8), kind="label"), labels)
    with pytest.raises(InputError, match=r"has one slice"):
        io.read_pair(path, labels)
    ct, lab = io.read_pair(path, labels, allow_one_slice=True)
    assert ct.same_grid(lab) and lab.kind == "label"


def test_a_volume_one_voxel_wide_in_two_axes_is_not_a_slice(tmp_path):
    io.write(ramp_volume(np.eye(4), shape=(8, 1, 1)), tmp_path / "line.nrrd")
    with pytest.raises(InputError, match=r"line.nrrd: image is 2D \(8\)"):
        io.read(tmp_path / "line.nrrd", allow_one_slice=True)


def test_4d_image_rejected(tmp_path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.int16), np.eye(4)), tmp_path / "t.nii.gz")
    with pytest.raises(InputError, match=r"t.nii.gz: image has 4 dimensions"):
        io.read(tmp_path / "t.nii.gz")


def test_nan_rejected(tmp_path):
    arr = np.zeros((4, 4, 4), np.float32)
    arr[1, 2, 3] = np.nan
    arr[0, 0, 0] = np.inf
    io.write(Volume(arr, np.eye(4)), tmp_path / "nan.nrrd")
    with pytest.raises(InputError, match=r"nan.nrrd: image contains 2 NaN or infinite voxels"):
        io.read(tmp_path / "nan.nrrd")


def test_label_map_with_fractions_rejected(tmp_path):
    io.write(Volume(np.full((3, 3, 3), 0.5, np.float32), np.eye(4)), tmp_path / "frac.nii.gz")
    with pytest.raises(InputError, match="label map has non-integer values"):
        io.read(tmp_path / "frac.nii.gz", kind="label")


def test_read_pair_grid_mismatch(tmp_path):
    io.write(ramp_volume(AFFINES["ras"]), tmp_path / "ct.nii.gz")
    lab = Volume(np.zeros((7, 6, 5), np.uint8), make_affine(spacing=(0.7, 0.8, 3.0)), kind="label")
    io.write(lab, tmp_path / "lab.nii.gz")
    with pytest.raises(GridMismatchError, match=r"lab.nii.gz: label map is not on the grid of .*ct.nii.gz"):
        io.read_pair(tmp_path / "ct.nii.gz", tmp_path / "lab.nii.gz")


# ------------------------------------------------------------ write safety
def test_refuses_to_overwrite(tmp_path):
    p = tmp_path / "a.nii.gz"
    v = ramp_volume(AFFINES["ras"])
    io.write(v, p)
    before = p.read_bytes()
    with pytest.raises(OverwriteError, match="already exists; refusing to overwrite"):
        io.write(v.with_array(v.numpy() + 1), p)
    assert p.read_bytes() == before
    io.write(v.with_array(v.numpy() + 1), p, overwrite=True)
    np.testing.assert_array_equal(io.read(p).numpy(), v.numpy() + 1)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import nibabel as nib

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        io.write(ramp_volume(AFFINES["ras"]), tmp_path / "x.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_output_format_rules(tmp_path):
    assert io.format_for_output(tmp_path / "a.nii.gz") == "nifti"
    assert io.format_for_output(tmp_path / "b.mhd") == "mha"
    assert io.format_for_output(tmp_path) == "dicom"
    assert io.format_for_output(tmp_path / "series") == "dicom"
    with pytest.raises(InputError, match=r"unknown output extension '.png'"):
        io.format_for_output(tmp_path / "x.png")
    with pytest.raises(InputError, match="a nrrd file needs one of the extensions .nrrd, .nhdr"):
        io.format_for_output(tmp_path / "x.nii.gz", "nrrd")


def test_sniffs_format_without_extension(tmp_path):
    io.write(ramp_volume(AFFINES["ras"]), tmp_path / "a.nii")
    os.rename(tmp_path / "a.nii", tmp_path / "noext")
    assert io.detect_format(tmp_path / "noext") == "nifti"
    gz = tmp_path / "b.nii.gz"
    io.write(ramp_volume(AFFINES["ras"]), gz)
    assert gzip.open(gz).read(4)  # a real gzip stream


def test_written_files_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        p = io.write(ramp_volume(AFFINES["ras"]), tmp_path / "perm.nii.gz")
        d = io.write(ramp_volume(AFFINES["ras"]), tmp_path / "series")
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o644
    assert d.stat().st_mode & 0o777 == 0o755
    assert all(f.stat().st_mode & 0o777 == 0o644 for f in d.iterdir())

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthgen.errors import GridMismatchError, InputError
from synthgen.volume import Volume, orientation_code
from tests.conftest import AFFINES, make_affine, ramp_volume


def test_affine_is_required():
    with pytest.raises(TypeError):
        Volume(np.zeros((2, 2, 2)))  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("array", "affine", "message"),
    [
        (np.zeros((4, 4)), np.eye(4), r"a Volume needs a 3D array, got shape \(4, 4\)"),
        (np.zeros((2, 2, 2)), np.eye(3), r"affine must be a 4x4 matrix, got shape \(3, 3\)"),
        (np.zeros((2, 2, 2)), np.diag([1.0, 0.0, 1.0, 1.0]), "affine is singular"),
        (np.zeros((2, 2, 2)), np.full((4, 4), np.nan), "affine must be finite"),
    ],
)
def test_bad_construction(array, affine, message):
    with pytest.raises(InputError, match=message):
        Volume(array, affine)


def test_geometry_properties():
    a = make_affine(spacing=(0.5, 0.75, 3.0), direction=np.diag([-1.0, 1.0, -1.0]), origin=(1, 2, 3))
    v = Volume(np.zeros((3, 4, 5)), a)
    np.testing.assert_allclose(v.spacing, [0.5, 0.75, 3.0])
    np.testing.assert_allclose(v.origin, [1, 2, 3])
    np.testing.assert_allclose(v.direction, np.diag([-1.0, 1.0, -1.0]))
    assert v.orientation == "LAI"
    assert orientation_code(np.diag([-1.0, -1.0, 1.0, 1.0])) == "LPS"


def test_world_voxel_round_trip(ramp):
    ijk = np.array([[0, 0, 0], [6, 5, 4], [1.5, 2.25, 3.75]])
    np.testing.assert_allclose(ramp.world_to_voxel(ramp.voxel_to_world(ijk)), ijk, atol=1e-9)


def test_voxel_to_world_matches_affine():
    v = ramp_volume(AFFINES["ras"])
    # spacing (0.7, 0.8, 2.5) from origin (-12.5, 30, -200): voxel (2, 3, 4)
    np.testing.assert_allclose(v.voxel_to_world([2, 3, 4]), [-12.5 + 1.4, 30 + 2.4, -200 + 10.0])


def test_to_canonical_keeps_every_voxel_in_place(ramp):
    canon = ramp.to_canonical()
    assert canon.orientation == "RAS" or ramp.orientation == canon.orientation == orientation_code(canon.affine)
    # Same value at the same world point, for every voxel.
    src = np.indices(ramp.shape).reshape(3, -1).T
    world = ramp.voxel_to_world(src)
    dst = np.rint(canon.world_to_voxel(world)).astype(int)
    np.testing.assert_array_equal(canon.array[tuple(dst.T)], ramp.array[tuple(src.T)])


def test_to_canonical_is_ras_for_axis_aligned():
    for name in ("ras", "lps", "flipped_z", "permuted"):
        assert ramp_volume(AFFINES[name]).to_canonical().orientation == "RAS"


def test_to_canonical_torch_matches_numpy():
    v = ramp_volume(AFFINES["permuted"])
    t = v.replace(array=torch.from_numpy(v.numpy().astype(np.float32)))
    np.testing.assert_array_equal(t.to_canonical().numpy(), v.to_canonical().numpy().astype(np.float32))


def test_resample_keeps_field_of_view_and_linear_values():
    shape = (20, 16, 10)
    a = make_affine(spacing=(1.0, 1.0, 2.0), direction=np.diag([-1.0, 1.0, 1.0]))
    v0 = Volume(np.zeros(shape, np.float32), a)
    world = v0.voxel_to_world(np.indices(shape).reshape(3, -1).T)
    # A linear function of world position is reproduced exactly by trilinear interpolation.
    f = lambda p: 2.0 * p[..., 0] - 0.5 * p[..., 1] + 0.25 * p[..., 2]
    v = v0.with_array(f(world).reshape(shape).astype(np.float32))
    r = v.resample(0.5)
    assert r.shape == (40, 32, 40)
    np.testing.assert_allclose(r.spacing, 0.5)
    lo0, hi0 = v.bounds()
    lo1, hi1 = r.bounds()
    np.testing.assert_allclose(lo0, lo1, atol=1e-9)
    np.testing.assert_allclose(hi0, hi1, atol=1e-9)
    inner = np.indices(r.shape).reshape(3, -1).T
    w = r.voxel_to_world(inner)
    inside = np.all((v.world_to_voxel(w) >= 0) & (v.world_to_voxel(w) <= np.array(shape) - 1), axis=1)
    np.testing.assert_allclose(r.numpy().reshape(-1)[inside], f(w)[inside], atol=1e-3)


def test_resample_labels_nearest_and_fill():
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[2:8, 2:8, 2:8] = 7
    lab[4:6, 4:6, 4:6] = 3
    v = Volume(lab, make_affine(spacing=(2.0, 2.0, 2.0)), kind="label")
    r = v.resample(0.7)
    assert r.array.dtype == np.uint8
    assert set(np.unique(r.array)) == {0, 3, 7}
    # Volume of label 7+3 preserved to within a voxel shell.
    vox_ml = np.prod(r.spacing)
    np.testing.assert_allclose((r.array > 0).sum() * vox_ml, 6**3 * 8, rtol=0.1)


def test_resample_to_other_grid_outside_is_air():
    v = ramp_volume(AFFINES["ras"]).replace(array=np.zeros((7, 6, 5), np.float32))
    target = Volume(np.zeros((4, 4, 4)), make_affine(spacing=(1, 1, 1), origin=(500, 500, 500)))
    r = v.resample_to(target)
    assert r.same_grid(target)
    assert np.all(r.numpy() == -1024)


def test_resample_torch_matches_numpy_and_is_differentiable():
    a = make_affine(spacing=(1.0, 1.0, 1.0), direction=np.diag([-1.0, 1.0, 1.0]))
    arr = np.random.default_rng(0).normal(size=(8, 9, 10)).astype(np.float32)
    v = Volume(arr, a, units="1/mm")
    target = Volume(np.zeros((5, 6, 7)), make_affine(spacing=(1.3, 1.1, 0.9), origin=(-14, 31, -199)))
    ref = v.resample_to(target).numpy()
    t = torch.tensor(arr, requires_grad=True)
    out = v.replace(array=t).resample_to(target)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-4)
    out.array.sum().backward()
    assert t.grad is not None and float(t.grad.abs().sum()) > 0


def test_resample_rejects_bad_spacing():
    v = ramp_volume(AFFINES["ras"])
    with pytest.raises(InputError, match=r"spacing must be 3 positive floats in mm, got \(0.7, 0.7, 0.0\)"):
        v.resample((0.7, 0.7, 0.0))


def test_crop_by_world_box_selects_exact_voxels():
    v = ramp_volume(AFFINES["lps"])
    lo_vox, hi_vox = np.array([1, 2, 1]), np.array([4, 4, 3])
    p0, p1 = v.voxel_to_world(lo_vox), v.voxel_to_world(hi_vox)
    c = v.crop(np.minimum(p0, p1), np.maximum(p0, p1))
    assert c.shape == (4, 3, 3)
    np.testing.assert_array_equal(c.array, v.array[1:5, 2:5, 1:4])
    np.testing.assert_allclose(c.voxel_to_world([0, 0, 0]), v.voxel_to_world([1, 2, 1]))


def test_crop_outside_raises():
    v = ramp_volume(AFFINES["ras"])
    with pytest.raises(InputError, match="does not overlap the volume"):
        v.crop([1000, 1000, 1000], [1010, 1010, 1010])


def test_same_grid_and_mismatch_message():
    v = ramp_volume(AFFINES["ras"])
    assert v.same_grid(v.with_array(np.zeros(v.shape)))
    shifted = Volume(np.zeros(v.shape), make_affine(origin=(-12.5, 30.0, -199.0)), kind="label")
    assert not v.same_grid(shifted)
    with pytest.raises(GridMismatchError, match=r"label map is not on the grid of the image: shape 7x6x5"):
        v.check_same_grid(shifted)


def test_label_kind_units_and_repr():
    v = Volume(np.zeros((2, 3, 4), np.uint8), np.eye(4), kind="label")
    assert v.units == "id"
    assert "kind=label" in repr(v) and "shape=(2, 3, 4)" in repr(v)
    with pytest.raises(InputError, match="kind must be 'intensity' or 'label'"):
        Volume(np.zeros((2, 2, 2)), np.eye(4), kind="mask")  # type: ignore[arg-type]


def test_affine_is_a_private_read_only_copy():
    a = np.eye(4)
    v = Volume(np.zeros((2, 2, 2)), a)
    a[0, 0] = 5.0
    assert v.affine[0, 0] == 1.0
    with pytest.raises(ValueError):
        v.affine[0, 0] = 2.0

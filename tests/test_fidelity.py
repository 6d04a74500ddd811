"""synthgen.fidelity on the real example CT (the reference the generated volumes are held to)."""

from __future__ import annotations

import numpy as np
import pytest

from synthgen.anatomy.ops import body_mask, organ_mask, to_default_ids
from synthgen.fidelity import check, format_check, ncc, reference_table, thumbnail
from synthgen.vocab import Vocabulary


@pytest.fixture(scope="module")
def real4():
    from synthgen.data import example_ct

    ct, lab = example_ct()
    ct4, lab4 = ct.resample(4.0), lab.resample(4.0)
    ids = to_default_ids(lab4)
    ids[(ids == 0) & body_mask(ct4)] = Vocabulary.default().id("body")
    return ct4, lab4.replace(array=ids, vocab=Vocabulary.default())


def test_reference_table_is_complete():
    rows = reference_table()
    for s in ("liver", "spleen", "kidney", "aorta"):
        assert {r.phase for r in rows if r.structure == s} == {"non_contrast", "arterial", "portal_venous", "delayed"}
    assert all(r.low_hu < r.high_hu for r in rows)


def test_real_ct_passes_hu_and_lung_body_adherence(real4):
    ct, lab = real4
    r = check(ct, lab)
    assert r["phase"] == "arterial"
    assert all(v["pass"] for v in r["hu"].values()), r["hu"]
    assert r["adherence"]["lung"]["dice"] > 0.9 and r["adherence"]["body"]["dice"] > 0.95
    # the honest ceiling of an HU-threshold bone segmentation on a real contrast CT at 4 mm
    assert 0.5 < r["adherence"]["bone"]["dice"] < 0.85
    assert "lung" in format_check(r)


def test_wrong_intensities_fail(real4):
    ct, lab = real4
    hu = ct.numpy().astype(np.float32).copy()
    hu[organ_mask(lab, "lung")] = 20.0  # water-filled lungs
    hu[organ_mask(lab, "liver")] = 300.0
    r = check(ct.replace(array=hu), lab, phase="arterial")
    assert r["adherence"]["lung"]["pass"] is False
    assert r["hu"]["liver"]["pass"] is False and r["hu"]["lung"]["pass"] is False
    assert r["pass"] is False


def test_memorisation_flags_a_copy(real4):
    ct, lab = real4
    t = thumbnail(ct.numpy(), lab.numpy())
    assert ncc(t, t) == pytest.approx(1.0)
    r = check(ct, lab, training=np.stack([t * 0 + np.linspace(0, 1, t.size).reshape(t.shape), t]),
              training_sources=["ramp", "the example"])
    assert r["memorisation"]["flag"] is True and r["memorisation"]["nearest"] == "the example"


@pytest.mark.parametrize("kind", ["tumor", "cyst"])
def test_lesion_size_is_measured_from_the_ct_itself(real4, kind):
    from synthgen.lesions.insert import insert_lesions
    from synthgen.lesions.spec import LesionSpec

    ct, lab = real4
    res = insert_lesions(ct, lab, LesionSpec(type=kind, organ="liver", diameter_mm=30, seed=1, phase="arterial"))
    (m,) = check(res.ct, res.labels, phase="arterial")["lesions"]
    assert m["diameter_mm"] == pytest.approx(30, rel=0.05)
    assert m["ct_diameter_mm"] == pytest.approx(30, rel=0.1)
    # a lesion the CT does not show (label only) has no CT size
    (blank,) = check(ct, res.labels, phase="arterial")["lesions"]
    assert blank["ct_diameter_mm"] is None or blank["ct_diameter_mm"] < 20

"""Procedural torso phantom: determinism, grid, HU realism, anatomy and sides, argument checks."""

from __future__ import annotations

import time

import numpy as np
import pytest

from synthgen.anatomy.ops import summarize
from synthgen.anatomy.phantom import phantom
from synthgen.errors import InputError
from synthgen.vocab import Vocabulary

REQUIRED = [
    "body",
    "lung_upper_lobe_left",
    "lung_lower_lobe_left",
    "lung_upper_lobe_right",
    "lung_middle_lobe_right",
    "lung_lower_lobe_right",
    "heart",
    "aorta",
    "liver",
    "spleen",
    "kidney_left",
    "kidney_right",
    "spinal_cord",
    "sternum",
]


@pytest.fixture(scope="module")
def default():
    return phantom()


def _centroid_mm(labels, ids) -> np.ndarray:
    idx = np.argwhere(np.isin(labels.numpy(), ids))
    assert idx.size, f"no voxels of {ids}"
    return labels.voxel_to_world(idx.mean(axis=0))


def test_types_grid_and_provenance(default):
    ct, lab = default
    assert ct.shape == lab.shape == (128, 128, 96)
    assert ct.array.dtype == np.float32 and ct.units == "HU" and ct.kind == "intensity"
    assert lab.kind == "label" and lab.array.dtype in (np.uint8, np.int16)
    assert lab.vocab == Vocabulary.default()
    assert ct.same_grid(lab)
    assert ct.orientation == "RAS"
    np.testing.assert_allclose(ct.spacing, [3.0, 3.0, 3.0])
    lo, hi = ct.bounds()
    np.testing.assert_allclose((lo + hi) / 2, 0.0, atol=1e-9)  # centred at world (0, 0, 0)
    for v in (ct, lab):
        assert v.synthetic and v.source == "synthgen.phantom"
        assert v.meta["seed"] == 0 and v.meta["noise_hu"] == 12.0 and v.meta["contrast"] is True
        assert "organs" in v.meta["sampled"] and "vertebra_height_mm" in v.meta["sampled"]


def test_same_seed_same_arrays_other_seed_differs(default):
    ct, lab = default
    ct2, lab2 = phantom(seed=0)
    np.testing.assert_array_equal(ct.numpy(), ct2.numpy())
    np.testing.assert_array_equal(lab.numpy(), lab2.numpy())
    assert ct.meta == ct2.meta
    ct3, lab3 = phantom(seed=1)
    assert not np.array_equal(ct.numpy(), ct3.numpy())
    assert not np.array_equal(lab.numpy(), lab3.numpy())
    assert ct3.meta["sampled"] != ct.meta["sampled"]


def test_global_rng_untouched():
    state = np.random.get_state()
    phantom(shape=(32, 32, 24), spacing=(12.0, 12.0, 12.0))
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]


def test_every_required_structure_present(default):
    _, lab = default
    v = lab.vocab
    present = set(np.unique(lab.numpy()).tolist())
    missing = [n for n in REQUIRED if v.id(n) not in present]
    assert not missing
    assert len(present & set(v.ids("vertebrae"))) >= 8
    assert len(present & set(v.ids("ribs_left"))) >= 10
    assert len(present & set(v.ids("ribs_right"))) >= 10
    assert set(present) <= set(v.classes) | {0}


def test_hu_medians_are_realistic(default):
    ct, lab = default
    a, lb, v = ct.numpy(), lab.numpy(), lab.vocab

    def med(ids) -> float:
        return float(np.median(a[np.isin(lb, ids)]))

    assert med(v.ids("lung")) < -700
    assert 40 <= med(v.ids("liver")) <= 150
    assert med(v.ids("vertebrae")) > 150
    assert -150 <= med(v.ids("body")) <= 80
    assert abs(med([0]) + 1000) < 15  # air outside the body
    assert med(v.ids("aorta")) > 150 and med(v.ids("kidney")) > 120  # contrast
    assert med(v.ids("ribs")) > 200
    assert a.min() >= -1024


def test_contrast_off_and_noise_level():
    ct_c, lab = phantom(shape=(64, 64, 48), spacing=(6.0, 6.0, 6.0), noise_hu=0.0)
    ct_n, _ = phantom(shape=(64, 64, 48), spacing=(6.0, 6.0, 6.0), noise_hu=0.0, contrast=False)
    v, lb = lab.vocab, lab.numpy()
    aorta = np.isin(lb, v.ids("aorta"))
    liver = np.isin(lb, v.ids("liver"))
    assert np.median(ct_c.numpy()[aorta]) > np.median(ct_n.numpy()[aorta]) + 100
    assert 40 <= np.median(ct_n.numpy()[liver]) <= 70
    noisy, _ = phantom(shape=(64, 64, 48), spacing=(6.0, 6.0, 6.0), noise_hu=20.0)
    diff = noisy.numpy() - ct_c.numpy()
    inside = lb > 0  # outside the body the -1024 floor clips part of the noise
    assert np.std(diff[inside]) == pytest.approx(20.0, rel=0.05)


def test_anatomical_sides_in_ras(default):
    _, lab = default
    v = lab.vocab
    liver = _centroid_mm(lab, v.ids("liver"))
    spleen = _centroid_mm(lab, v.ids("spleen"))
    heart = _centroid_mm(lab, v.ids("heart"))
    spine = _centroid_mm(lab, v.ids("vertebrae"))
    sternum = _centroid_mm(lab, v.ids("sternum"))
    lungs = _centroid_mm(lab, v.ids("lung"))
    assert liver[0] > 0 and spleen[0] < 0  # patient's right is +x
    assert heart[0] < 0
    assert _centroid_mm(lab, v.ids("kidney_right"))[0] > 0 > _centroid_mm(lab, v.ids("kidney_left"))[0]
    assert _centroid_mm(lab, v.ids("lung_right"))[0] > 0 > _centroid_mm(lab, v.ids("lung_left"))[0]
    assert _centroid_mm(lab, v.ids("ribs_right"))[0] > 0 > _centroid_mm(lab, v.ids("ribs_left"))[0]
    assert spine[1] < 0 < sternum[1]  # posterior / anterior
    assert lungs[2] > liver[2]  # lungs above the liver
    # Vertebrae are numbered downwards: T5 above T10.
    assert _centroid_mm(lab, v.ids("vertebrae_T5"))[2] > _centroid_mm(lab, v.ids("vertebrae_T10"))[2]


def test_same_anatomy_at_two_spacings():
    """Anatomy is built in mm: the liver keeps its volume (and place) across voxel sizes."""
    _, lab3 = phantom(shape=(120, 100, 110), spacing=(3.0, 3.0, 3.0), noise_hu=0.0)
    _, lab4 = phantom(shape=(90, 75, 84), spacing=(4.0, 4.0, 4.0), noise_hu=0.0)
    ml = {}
    for lab in (lab3, lab4):
        stats = {s.name: s.volume_ml for s in summarize(lab)}
        ml[float(lab.spacing[0])] = stats
    assert ml[4.0]["liver"] == pytest.approx(ml[3.0]["liver"], rel=0.10)
    assert ml[4.0]["heart"] == pytest.approx(ml[3.0]["heart"], rel=0.10)
    assert 1000 < ml[3.0]["liver"] < 2500  # an adult liver, in ml
    c3 = _centroid_mm(lab3, lab3.vocab.ids("liver"))
    c4 = _centroid_mm(lab4, lab4.vocab.ids("liver"))
    np.testing.assert_allclose(c3, c4, atol=4.0)


def test_small_field_of_view_crops_the_same_body():
    """A smaller grid shows the centre of the same anatomy, not a shrunken body."""
    _, big = phantom(noise_hu=0.0)
    _, small = phantom(shape=(64, 64, 48), noise_hu=0.0)
    np.testing.assert_array_equal(small.numpy(), big.numpy()[32:96, 32:96, 24:72])


def test_anisotropic_spacing_and_scalar_spacing():
    ct, lab = phantom(shape=(40, 30, 20), spacing=(5.0, 6.0, 7.5))
    np.testing.assert_allclose(lab.spacing, [5.0, 6.0, 7.5])
    ct2, _ = phantom(shape=(16, 16, 16), spacing=8)
    np.testing.assert_allclose(ct2.spacing, [8.0, 8.0, 8.0])


def test_speed():
    phantom(shape=(16, 16, 16), spacing=(20.0, 20.0, 20.0))  # warm imports and the vocabulary
    t0 = time.perf_counter()
    phantom()
    t_default = time.perf_counter() - t0
    t0 = time.perf_counter()
    phantom(shape=(64, 64, 48), spacing=(6.0, 6.0, 6.0))
    t_small = time.perf_counter() - t0
    assert t_default < 2.0
    assert t_small < 0.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spacing": (1.0, 1.0, 0.0)}, r"spacing must be 3 positive floats in mm, got \(1\.0, 1\.0, 0\.0\)"),
        ({"spacing": (1.0, 1.0)}, r"spacing must be 3 positive floats in mm, got \(1\.0, 1\.0\)"),
        ({"spacing": -2.0}, r"spacing must be 3 positive floats in mm, got -2\.0"),
        ({"spacing": "3mm"}, r"spacing must be 3 positive floats in mm, got '3mm'"),
        ({"shape": (64, 64)}, r"shape must be 3 positive ints .* got \(64, 64\)"),
        ({"shape": (64, 0, 64)}, r"shape must be 3 positive ints .* got \(64, 0, 64\)"),
        ({"shape": (64.0, 64, 64)}, r"shape must be 3 positive ints"),
        ({"noise_hu": -1.0}, r"noise_hu must be a number >= 0 .* got -1\.0"),
        ({"seed": -3}, r"seed must be a non-negative int, got -3"),
        ({"seed": 1.5}, r"seed must be a non-negative int, got 1\.5"),
        ({"contrast": "yes"}, r"contrast must be True or False, got 'yes'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        phantom(**kwargs)

"""Adult body size (synthgen.anatomy.habitus) and the variety it gives the label-map library."""

from __future__ import annotations

import numpy as np
import pytest

from synthgen.anatomy.habitus import (
    FAT_MM_PER_BMI,
    REFERENCE,
    adjust_fat,
    draw_habitus,
    liver_volume_ml,
    scale_anatomy,
    total_lung_capacity_l,
)
from synthgen.errors import InputError
from synthgen.vocab import Vocabulary
from synthgen.volume import Volume

V = Vocabulary.default()


def _cov(x) -> float:
    x = np.asarray(x, float)
    return float(x.std(ddof=1) / x.mean())


def test_published_formulas():
    # ECSC/ERS 1993: a 1.76 m man 6.98 L, a 1.63 m woman 4.97 L
    assert total_lung_capacity_l(176, "M") == pytest.approx(6.98, abs=0.01)
    assert total_lung_capacity_l(163, "F") == pytest.approx(4.97, abs=0.01)
    # Vauthey 2002 with Mosteller's BSA: 176 cm, 80 kg -> BSA 1.977 m^2 -> 1711 mL at 40
    assert liver_volume_ml(176, 80, 40) == pytest.approx(1267.28 * np.sqrt(176 * 80 / 3600) - 794.41)
    assert liver_volume_ml(176, 80, 80) == pytest.approx(0.84 * liver_volume_ml(176, 80, 40))


def test_draws_spread_like_adults():
    rng = np.random.default_rng(0)
    draws = [draw_habitus(rng) for _ in range(2000)]
    lung, liver = [d.lung_l for d in draws], [d.liver_ml for d in draws]
    assert 0.15 < _cov(lung) < 0.28 and 0.15 < _cov(liver) < 0.30
    assert np.mean(lung) == pytest.approx(REFERENCE.lung_l, rel=0.05)
    assert 0.4 < np.mean([d.sex == "M" for d in draws]) < 0.6
    men = [d.lung_l for d in draws if d.sex == "M"]
    women = [d.lung_l for d in draws if d.sex == "F"]
    assert np.mean(men) > np.mean(women) + 1.5


def test_the_prompts_sex_and_age_are_kept():
    rng = np.random.default_rng(1)
    d = [draw_habitus(rng, sex="F", age=75) for _ in range(200)]
    assert {x.sex for x in d} == {"F"} and {x.age for x in d} == {75.0}
    young = [draw_habitus(rng, sex="F", age=30).liver_ml for _ in range(400)]
    old = [x.liver_ml for x in d]
    assert np.mean(old) < 0.9 * np.mean(young)
    with pytest.raises(InputError, match="sex must be"):
        draw_habitus(rng, sex="X")
    with pytest.raises(InputError, match="adult"):
        draw_habitus(rng, age=5)


def _torso(spacing=4.0):
    shape = (64, 64, 64)
    lab = np.zeros(shape, np.uint8)
    ii, jj, kk = np.indices(shape)
    lab[(ii - 32) ** 2 + (jj - 32) ** 2 < 26**2] = V.id("body")
    lab[((ii - 22) ** 2 + (jj - 32) ** 2 + (kk - 42) ** 2) < 8**2] = V.id("lung_upper_lobe_right")
    lab[((ii - 42) ** 2 + (jj - 32) ** 2 + (kk - 42) ** 2) < 8**2] = V.id("lung_upper_lobe_left")
    lab[((ii - 30) ** 2 + (jj - 32) ** 2 + (kk - 20) ** 2) < 9**2] = V.id("liver")
    aff = np.diag([spacing, spacing, spacing, 1.0])
    hu = np.where(lab > 0, 40.0, -1000.0).astype(np.float32)
    return Volume(hu, aff, kind="intensity", units="HU"), Volume(lab, aff, kind="label", vocab=V)


def _ml(labels: Volume, prefix: str) -> float:
    lab = labels.numpy()
    ids = [i for i in np.unique(lab) if i and V.name(int(i)).startswith(prefix) and not V.name(int(i)).startswith("liver_")]
    return float(np.isin(lab, ids).sum() * np.prod(labels.spacing) / 1000)


def test_scale_anatomy_resizes_the_lungs_and_the_liver_to_the_drawn_adult():
    ct, labels = _torso()
    big = dataclass_replace(REFERENCE, lung_l=REFERENCE.lung_l * 1.3, liver_ml=REFERENCE.liver_ml * 0.75)
    new_ct, new_lab, info = scale_anatomy(ct, labels, big)
    assert info["frame_scale"] == pytest.approx(1.3 ** (1 / 3), rel=1e-3)
    assert _ml(new_lab, "lung") / _ml(labels, "lung") == pytest.approx(1.3, rel=0.1)
    assert _ml(new_lab, "liver") / _ml(labels, "liver") == pytest.approx(0.75, rel=0.12)
    assert new_ct.numpy().shape == ct.numpy().shape and np.array_equal(new_lab.affine, labels.affine)
    _, same_lab, _ = scale_anatomy(ct, labels, REFERENCE)
    assert np.array_equal(same_lab.numpy(), labels.numpy())


def test_adjust_fat_grows_and_thins_the_body_by_the_bmi():
    _, labels = _torso()
    fat_lab = labels.with_array(np.where(labels.numpy() == V.id("body"), V.id("fat"), labels.numpy()).astype(np.uint8))
    heavy = dataclass_replace(REFERENCE, bmi=REFERENCE.bmi + 8)
    thin = dataclass_replace(REFERENCE, bmi=REFERENCE.bmi - 4)
    grown, mm = adjust_fat(fat_lab, heavy)
    assert mm == pytest.approx(8 * FAT_MM_PER_BMI)
    r0 = np.sqrt((labels.numpy()[:, 32, 32] > 0).sum() * 4.0 * (labels.numpy()[32, :, 32] > 0).sum() * 4.0)
    r1 = np.sqrt((grown.numpy()[:, 32, 32] > 0).sum() * 4.0 * (grown.numpy()[32, :, 32] > 0).sum() * 4.0)
    assert (r1 - r0) / 2 == pytest.approx(mm, abs=4.0)  # the radius grows by the fat, to a voxel
    assert set(np.unique(grown.numpy()[(labels.numpy() == 0) & (grown.numpy() > 0)])) == {V.id("fat")}
    thinned, mm = adjust_fat(labels, thin)
    assert mm < 0 and (thinned.numpy() > 0).sum() < (labels.numpy() > 0).sum()
    assert np.array_equal(thinned.numpy() == V.id("liver"), labels.numpy() == V.id("liver"))


def dataclass_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)

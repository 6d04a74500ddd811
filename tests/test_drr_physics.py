"""X-ray physics of the DRR engine, checked against closed forms and physical monotonicity."""

from __future__ import annotations

import csv
import dataclasses
import math

import numpy as np
import pytest
import torch

from synthgen._assets import asset_path
from synthgen.drr import physics as P
from synthgen.errors import InputError

MATERIALS = ("water", "cortical_bone", "aluminum", "air")


def _csv_rows() -> list[dict[str, float]]:
    with asset_path("physics", "mass_attenuation.csv").open(newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _mu_rho(material: str, energy_kev: float) -> float:
    return float(P.mass_attenuation_cm2_per_g(material, energy_kev))


# ----------------------------------------------------------------------------- table
def test_water_at_70_kev_matches_xcom_within_1_percent():
    assert _mu_rho("water", 70.0) == pytest.approx(0.1929, rel=0.01)


def test_tabulated_energies_return_the_table_exactly():
    rows = _csv_rows()
    assert [r["energy_kev"] for r in rows][:2] == [8.0, 10.0] and rows[-1]["energy_kev"] == 200.0
    for row in rows:
        for m in MATERIALS:
            assert _mu_rho(m, row["energy_kev"]) == row[m]
    e = torch.tensor([[10.0, 60.0], [80.0, 150.0]], dtype=torch.float32)
    out = P.mass_attenuation_cm2_per_g("cortical_bone", e)
    assert out.shape == (2, 2) and out.dtype == torch.float32
    assert out.flatten().tolist() == pytest.approx([28.51, 0.3148, 0.2229, 0.1480], rel=1e-6)


def test_bone_attenuates_more_than_water_at_every_energy():
    e = torch.logspace(math.log10(8.0), math.log10(200.0), 300, dtype=torch.float64)
    water = P.mass_attenuation_cm2_per_g("water", e)
    bone = P.mass_attenuation_cm2_per_g("cortical_bone", e)
    # per unit volume (ICRU-44 density 1.92 g/cm^3) bone always attenuates more than water
    assert torch.all(1.92 * bone > 1.5 * water)
    # per gram only where photoabsorption (calcium) dominates; above ~110 keV water's
    # higher electron density per gram (hydrogen) makes its Compton mu/rho the larger one
    assert torch.all(bone[e <= 100] > water[e <= 100])
    assert _mu_rho("cortical_bone", 150.0) < _mu_rho("water", 150.0)


def test_mass_attenuation_decreases_with_energy_over_the_table():
    e = torch.logspace(math.log10(8.0), math.log10(200.0), 400, dtype=torch.float64)
    for m in MATERIALS:
        assert torch.all(torch.diff(P.mass_attenuation_cm2_per_g(m, e)) < 0), m


def test_out_of_range_energy_and_bad_material_raise():
    with pytest.raises(InputError, match=r"energy must be within 8-200 keV \(table range\), got 300"):
        P.mass_attenuation_cm2_per_g("water", 300.0)
    # round-off at the ends is tolerated (10 ** log10(200) is 200.00000000000003)
    assert _mu_rho("water", 10 ** math.log10(200.0)) == 0.1370
    with pytest.raises(InputError, match="got 200.1"):
        P.mass_attenuation_cm2_per_g("water", 200.1)
    with pytest.raises(InputError, match="got 5"):
        P.mass_attenuation_cm2_per_g("water", torch.tensor([60.0, 5.0]))
    with pytest.raises(InputError, match="table range"):
        P.mass_attenuation_cm2_per_g("air", float("nan"))
    with pytest.raises(InputError, match="material must be one of"):
        P.mass_attenuation_cm2_per_g("lead", 60.0)


# ----------------------------------------------------------------------------- HU -> materials
def test_hu_to_densities_reference_points():
    hu = torch.tensor([0.0, -1000.0, -1200.0, -500.0, 950.0, 1900.0, 3800.0])
    water, bone = P.hu_to_densities(hu)
    assert water.dtype == bone.dtype == torch.float32 and water.shape == hu.shape
    assert water.tolist() == pytest.approx([1.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.0], abs=1e-6)
    assert bone.tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.96, 1.92, 3.84], abs=1e-6)


def test_hu_to_densities_is_continuous_at_the_breakpoints():
    for knot in (0.0, 1900.0, -1000.0):
        w, b = P.hu_to_densities(torch.tensor([knot - 1e-2, knot, knot + 1e-2], dtype=torch.float64))
        assert torch.all(torch.diff(w).abs() < 1e-4) and torch.all(torch.diff(b).abs() < 1e-4), knot


def test_total_mu_is_monotonic_in_hu_and_differentiable():
    hu = torch.linspace(-1500.0, 4000.0, 2201, requires_grad=True)
    mu = P.hu_to_mu_per_mm(hu, energy_kev=70.0)
    d = torch.diff(mu.detach())
    assert torch.all(d >= 0) and torch.all(d[hu.detach()[1:] > -999.0] > 0)
    mu.sum().backward()
    assert torch.all(torch.isfinite(hu.grad))
    assert torch.all(hu.grad[hu.detach() > -999.0] > 0)


def test_hu_to_mu_per_mm_of_water_and_reference_energy():
    assert float(P.hu_to_mu_per_mm(torch.tensor(0.0), energy_kev=70.0)) == pytest.approx(0.01929, rel=0.01)
    # at 60 keV cortical bone's CT number is 1935 HU, so 1900 HU bone is within 2 % of
    # the CT definition mu = mu_water * (1 + HU / 1000) there
    mu = float(P.hu_to_mu_per_mm(torch.tensor(1900.0), energy_kev=60.0))
    assert mu == pytest.approx(0.02059 * 2.9, rel=0.02)
    hu = torch.tensor([-800.0, -300.0, 0.0])
    assert P.hu_to_mu_per_mm(hu, energy_kev=40.0).tolist() == pytest.approx(
        (0.02683 * (1 + hu / 1000)).tolist(), rel=1e-5
    )


def test_hu_to_densities_rejects_bad_input():
    with pytest.raises(InputError, match="bone_hu must be a positive"):
        P.hu_to_densities(torch.zeros(2), bone_hu=0.0)
    with pytest.raises(InputError, match="bone_density_g_cm3 must be a positive"):
        P.hu_to_densities(torch.zeros(2), bone_density_g_cm3=-1.0)
    with pytest.raises(InputError, match="hu must be a torch.Tensor"):
        P.hu_to_densities(np.zeros(2))


# ----------------------------------------------------------------------------- attenuation
def test_monoenergetic_intensity_of_a_water_slab_is_beer_lambert():
    thickness_mm = torch.tensor([[0.0, 10.0], [100.0, 300.0]], dtype=torch.float64)
    i = P.intensity(thickness_mm, torch.zeros_like(thickness_mm), energy_kev=60.0)
    assert torch.allclose(i, torch.exp(-0.2059 / 10.0 * thickness_mm), rtol=1e-12)
    a = P.attenuation_line_integral(thickness_mm, 2 * thickness_mm, energy_kev=60.0)
    assert torch.allclose(a, (0.2059 + 2 * 0.3148) * thickness_mm / 10.0, rtol=1e-12)
    assert torch.allclose(P.line_integral_from_intensity(i), 0.02059 * thickness_mm, rtol=1e-9)


def test_more_bone_is_darker_in_fluoroscopy_and_brighter_in_radiograph():
    bone = torch.linspace(0.0, 60.0, 31).view(1, -1)  # g/cm^3 x mm: up to ~31 mm of cortical bone
    water = torch.full_like(bone, 200.0)
    for kw in ({"energy_kev": 70.0}, {"spectrum": P.spectrum(100.0)}):
        i = P.intensity(water, bone, **kw)
        assert torch.all((i > 0) & (i <= 1)) and torch.all(torch.diff(i) < 0)
        assert torch.all(torch.diff(P.fluoroscopy(i, white=1.0)) < 0)
        assert torch.all(torch.diff(P.radiograph(P.line_integral_from_intensity(i), high=20.0)) > 0)


def test_higher_kvp_penetrates_more():
    water = torch.tensor([[200.0]])  # 200 mm of water
    bone = torch.tensor([[20.0 * 1.92]])  # + 20 mm of cortical bone
    i = [float(P.intensity(water, bone, spectrum=P.spectrum(k))) for k in (60.0, 80.0, 120.0)]
    assert 0 < i[0] < i[1] < i[2] < 1


def test_beam_hardening_lowers_effective_attenuation_per_mm():
    t_mm = torch.tensor([10.0, 30.0, 100.0, 200.0, 300.0], dtype=torch.float64)
    zeros = torch.zeros_like(t_mm)
    poly = P.line_integral_from_intensity(P.intensity(t_mm, zeros, spectrum=P.spectrum(120.0))) / t_mm
    assert torch.all(torch.diff(poly) < 0) and poly[-1] < 0.9 * poly[0]
    mono = P.line_integral_from_intensity(P.intensity(t_mm, zeros, energy_kev=70.0)) / t_mm
    assert torch.allclose(mono, mono[0].expand_as(mono), rtol=1e-9)


def test_energy_integrating_weights_towards_penetrating_photons():
    water, bone = torch.tensor([[250.0]]), torch.tensor([[30.0]])
    s = P.spectrum(120.0)
    ei = float(P.intensity(water, bone, spectrum=s, detector="energy_integrating"))
    pc = float(P.intensity(water, bone, spectrum=s, detector="photon_counting"))
    assert 0 < pc < ei < 1  # E and T(E) both increase with E, so the E-weighted mean is larger


def test_polyenergetic_intensity_is_differentiable_and_matches_a_direct_sum():
    s = P.spectrum(80.0, bin_kev=5.0)
    water = torch.tensor([[50.0, 150.0]], dtype=torch.float64, requires_grad=True)
    bone = torch.tensor([[5.0, 0.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, b: P.intensity(w, b, spectrum=s), (water, bone))
    w = s.fluence * s.energies_kev
    direct = sum(
        wi * math.exp(-(_mu_rho("water", e) * 5.0 + _mu_rho("cortical_bone", e) * 0.5))
        for wi, e in zip(w, s.energies_kev)
    ) / w.sum()
    assert float(P.intensity(water, bone, spectrum=s)[0, 0].detach()) == pytest.approx(direct, rel=1e-10)
    # the in-place no-grad path and the autograd path agree
    maps = torch.rand(2, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 100
    with torch.no_grad():
        fast = P.intensity(maps[0], maps[1], spectrum=s)
    slow = P.intensity(maps[0].requires_grad_(), maps[1], spectrum=s)
    assert slow.requires_grad and not fast.requires_grad
    assert torch.allclose(fast, slow.detach(), rtol=1e-12)


def test_intensity_rejects_bad_arguments():
    a = torch.ones(2, 2)
    with pytest.raises(InputError, match="exactly one of energy_kev"):
        P.intensity(a, a)
    with pytest.raises(InputError, match="exactly one of energy_kev"):
        P.intensity(a, a, energy_kev=60.0, spectrum=P.spectrum())
    with pytest.raises(InputError, match="one shape"):
        P.intensity(a, torch.ones(3), energy_kev=60.0)
    with pytest.raises(InputError, match="detector must be one of"):
        P.intensity(a, a, spectrum=P.spectrum(), detector="film")
    with pytest.raises(InputError, match="floating point"):
        P.attenuation_line_integral(torch.ones(2, dtype=torch.int64), torch.ones(2), energy_kev=60.0)
    with pytest.raises(InputError, match="table range"):
        P.intensity(a, a, energy_kev=250.0)


def test_line_integral_from_intensity_is_finite_at_zero():
    out = P.line_integral_from_intensity(torch.tensor([0.0, 1.0]))
    assert torch.all(torch.isfinite(out)) and out[1] == 0 and out[0] == pytest.approx(-math.log(1e-12))


# ----------------------------------------------------------------------------- spectrum
def test_spectrum_is_normalised_and_ends_at_kvp():
    s = P.spectrum(100.0, filtration_mm_al=2.5, bin_kev=1.0)
    assert s.fluence.sum() == pytest.approx(1.0, abs=1e-12) and np.all(s.fluence >= 0)
    assert s.energies_kev.min() >= 10.0 and s.energies_kev.max() < 100.0
    assert s.fluence[-1] < 0.01 * s.fluence.max()  # Kramers: (kVp - E) -> 0 at the end point
    assert s.kvp == 100.0 and s.filtration_mm_al == 2.5 and "kramers" in s.model
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.kvp = 80.0
    with pytest.raises(ValueError):
        s.fluence[0] = 1.0  # read-only array


def test_mean_energy_rises_with_filtration_and_kvp():
    by_filter = [P.spectrum(120.0, filtration_mm_al=t).mean_kev for t in (0.0, 1.0, 2.5, 6.0)]
    by_kvp = [P.spectrum(k).mean_kev for k in (40.0, 60.0, 80.0, 120.0, 150.0)]
    assert np.all(np.diff(by_filter) > 0) and np.all(np.diff(by_kvp) > 0)
    assert 40.0 < P.spectrum(120.0).mean_kev < 65.0


def test_tungsten_k_lines_only_above_the_k_edge():
    s = P.spectrum(120.0)
    k_alpha1 = int(np.argmin(np.abs(s.energies_kev - 59.32)))
    k_beta = int(np.argmin(np.abs(s.energies_kev - 67.24)))
    for k in (k_alpha1, k_beta):
        assert s.fluence[k] > 2.0 * max(s.fluence[k - 3], s.fluence[k + 3])
    low = P.spectrum(60.0)
    peak = int(np.argmax(low.fluence))
    assert np.all(np.diff(low.fluence[peak:]) < 0)  # smooth fall to kVp: no line
    assert "K_lines" not in low.model and "K_lines" in s.model


def test_spectrum_rejects_bad_arguments():
    for kvp in (30.0, 200.0):
        with pytest.raises(InputError, match=rf"kvp must be within 40-150 kV, got {kvp:g}"):
            P.spectrum(kvp)
    with pytest.raises(InputError, match="filtration_mm_al must be"):
        P.spectrum(100.0, filtration_mm_al=-1.0)
    with pytest.raises(InputError, match="bin_kev must be"):
        P.spectrum(100.0, bin_kev=0.0)
    with pytest.raises(InputError, match="not exceed kvp"):
        P.Spectrum(np.array([30.0, 90.0]), np.array([1.0, 1.0]), kvp=80.0, filtration_mm_al=0.0)
    with pytest.raises(InputError, match="fluence must be"):
        P.Spectrum(np.array([30.0, 60.0]), np.array([1.0, -1.0]), kvp=80.0, filtration_mm_al=0.0)


def test_a_custom_spectrum_is_normalised_and_usable():
    s = P.Spectrum(np.array([50.0, 70.0]), np.array([2.0, 2.0]), kvp=80.0, filtration_mm_al=0.0)
    assert s.fluence.tolist() == [0.5, 0.5] and s.mean_kev == 60.0 and s.model == "custom"
    water, bone = torch.tensor([100.0]), torch.tensor([0.0])
    i = P.intensity(water, bone, spectrum=s, detector="photon_counting")
    expected = 0.5 * math.exp(-_mu_rho("water", 50.0) * 10.0) + 0.5 * math.exp(-_mu_rho("water", 70.0) * 10.0)
    assert float(i) == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------- noise
def test_poisson_noise_has_mean_and_variance_n_times_i():
    n, level = 1000.0, 0.25
    flat = torch.full((256, 256), level, dtype=torch.float64)
    counts = P.add_noise(flat, photons_per_pixel=n, generator=torch.Generator().manual_seed(3)) * n
    assert float(counts.mean()) == pytest.approx(n * level, rel=0.01)
    assert float(counts.var() / counts.mean()) == pytest.approx(1.0, rel=0.05)
    gen = torch.Generator().manual_seed(3)
    noisy = P.add_noise(flat, photons_per_pixel=n, electronic_std_photons=10.0, generator=gen)
    assert float((noisy * n).var()) == pytest.approx(n * level + 100.0, rel=0.05)


def test_noise_is_reproducible_and_leaves_global_rng_alone():
    img = torch.rand(64, 64, generator=torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    a = P.add_noise(img, photons_per_pixel=500.0, generator=torch.Generator().manual_seed(7))
    b = P.add_noise(img, photons_per_pixel=500.0, generator=torch.Generator().manual_seed(7))
    c = P.add_noise(img, photons_per_pixel=500.0, generator=torch.Generator().manual_seed(8))
    d = P.add_noise(img, photons_per_pixel=500.0, electronic_std_photons=2.0)
    e = P.add_noise(img, photons_per_pixel=500.0, electronic_std_photons=2.0)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.equal(d, e)


def test_noise_keeps_log_finite_and_rejects_bad_input():
    out = P.add_noise(torch.zeros(8, 8), photons_per_pixel=100.0, electronic_std_photons=3.0)
    assert torch.all(out >= P.MIN_COUNTS / 100.0)
    assert torch.all(torch.isfinite(P.line_integral_from_intensity(out)))
    with pytest.raises(InputError, match="photons_per_pixel must be a positive"):
        P.add_noise(torch.ones(2, 2), photons_per_pixel=0.0)
    with pytest.raises(InputError, match="electronic_std_photons"):
        P.add_noise(torch.ones(2, 2), photons_per_pixel=10.0, electronic_std_photons=-1.0)
    with pytest.raises(InputError, match=">= 0"):
        P.add_noise(-torch.ones(2, 2), photons_per_pixel=10.0)


# ----------------------------------------------------------------------------- scatter
def test_scatter_adds_a_smooth_positive_field_of_the_expected_size():
    img = torch.full((128, 160), 0.6, dtype=torch.float64)
    img[40:90, 50:110] = 0.05  # a dense object
    spr = 0.15
    scattered = P.add_scatter(img, scatter_to_primary=spr, kernel_sigma_px=20.0)
    s = scattered - img
    assert torch.all(s > 0)
    assert float(s.mean()) == pytest.approx(spr * float(img.mean()), rel=0.03)
    # low frequency: the scatter field's steepest step is far below the primary's
    assert float(torch.diff(s, dim=1).abs().max()) < 0.02 * float(torch.diff(img, dim=1).abs().max())
    assert float(s[65, 80]) < float(s[5, 5])  # less scatter behind the dense object


def test_scatter_handles_small_and_batched_images_and_bad_input():
    img = torch.rand(2, 9, 7, generator=torch.Generator().manual_seed(1))
    out = P.add_scatter(img, scatter_to_primary=0.1, kernel_sigma_px=40.0)  # kernel wider than the image
    assert out.shape == img.shape and torch.all(out > img)
    assert torch.allclose(out[1], P.add_scatter(img[1], scatter_to_primary=0.1, kernel_sigma_px=40.0))
    assert torch.equal(P.add_scatter(img, scatter_to_primary=0.0), img)
    with pytest.raises(InputError, match="kernel_sigma_px must be a positive"):
        P.add_scatter(img, kernel_sigma_px=0.0)
    with pytest.raises(InputError, match="scatter_to_primary"):
        P.add_scatter(img, scatter_to_primary=-0.1)
    with pytest.raises(InputError, match=r"\(\.\.\., H, W\)"):
        P.add_scatter(torch.ones(5))


# ----------------------------------------------------------------------------- display
def test_radiograph_maps_low_to_0_and_high_to_1():
    line = torch.linspace(0.0, 4.0, 81).view(9, 9)
    r = P.radiograph(line, low=1.0, high=3.0)
    assert float(r.min()) == 0.0 and float(r.max()) == 1.0
    assert float(P.radiograph(torch.tensor([[2.0]]), low=1.0, high=3.0)) == pytest.approx(0.5)
    assert float(P.radiograph(torch.tensor([[2.0]]), low=1.0, high=3.0, gamma=2.0)) == pytest.approx(0.25)
    auto = P.radiograph(torch.linspace(0.0, 10.0, 1000).view(1, 10, 100))
    assert float(auto.max()) == 1.0 and float((auto >= 1.0).float().mean()) < 0.01
    with pytest.raises(InputError, match="high must be greater than low"):
        P.radiograph(line, low=2.0, high=1.0)


def test_fluoroscopy_shows_transmission_bright_and_to_uint16_range():
    i = torch.tensor([[0.1, 0.4, 0.8]])
    f = P.fluoroscopy(i)
    assert torch.all(torch.diff(f) > 0) and float(f.max()) == 1.0 and float(f.min()) >= 0.0
    assert P.fluoroscopy(i, white=1.0).flatten().tolist() == pytest.approx([0.1, 0.4, 0.8])
    u = P.to_uint16(torch.tensor([0.0, 0.5, 1.0]))
    assert u.dtype == np.uint16 and u.tolist() == [0, 32768, 65535]
    assert P.to_uint16(np.linspace(0, 1, 11)).max() == 65535
    with pytest.raises(InputError, match=r"must be finite values in \[0, 1\]"):
        P.to_uint16(np.array([0.0, 1.5]))
    with pytest.raises(InputError, match="gamma must be a positive"):
        P.fluoroscopy(i, gamma=0.0)

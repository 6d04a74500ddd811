"""X-ray physics of the DRR engine: pure functions of torch tensors, units in their names.

The renderer casts rays once through two material volumes and hands this module
two line-integral maps per pixel:

1. :func:`hu_to_densities` splits a CT (HU) into partial mass densities of water
   and cortical bone (g/cm^3).
2. The ray caster integrates each along every ray, in g/cm^3 x mm (its step
   lengths are in mm): ``water_g_cm3_mm``, ``bone_g_cm3_mm``.
3. :func:`attenuation_line_integral` / :func:`intensity` turn those two maps into
   attenuation ``A(E) = mu/rho_w(E) * W + mu/rho_b(E) * B`` (W, B in g/cm^2) and
   transmitted fractions, at one energy or summed over a kVp :class:`Spectrum`.
   A spectrum therefore costs one ray pass, not one per energy bin.
4. Optional detector effects (:func:`add_scatter`, :func:`add_noise`) and display
   mappings (:func:`radiograph`, :func:`fluoroscopy`, :func:`to_uint16`).

Mass attenuation coefficients come from the NIST tables shipped in
``assets/physics/mass_attenuation.csv`` (see the README there).
"""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from synthgen._assets import asset_path
from synthgen.errors import InputError

Material = Literal["water", "cortical_bone", "aluminum", "air"]
Detector = Literal["energy_integrating", "photon_counting"]

#: Density of aluminium used for filtration (g/cm^3).
ALUMINUM_DENSITY_G_CM3 = 2.70
#: Lowest energy of a generated spectrum (keV): below it a filtered diagnostic beam carries nothing.
SPECTRUM_MIN_KEV = 10.0
#: kVp range accepted by :func:`spectrum` (the product range is 60-140 kVp).
KVP_RANGE = (40.0, 150.0)
#: Tungsten K-shell binding energy (keV): K lines are emitted only above it.
TUNGSTEN_K_EDGE_KEV = 69.525
#: Tungsten K lines (keV) and their share of the K emission (K-alpha2, K-alpha1, K-beta).
TUNGSTEN_K_LINES = ((57.98, 0.31), (59.32, 0.53), (67.24, 0.16))
#: Counts below this are replaced by it in :func:`add_noise`, so -log stays finite.
MIN_COUNTS = 0.5


# --------------------------------------------------------------------------- table
@functools.lru_cache(maxsize=1)
def _table() -> dict[str, np.ndarray]:
    """The shipped mu/rho table as read-only float64 arrays keyed by column name."""
    path = asset_path("physics", "mass_attenuation.csv")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    expected = ["energy_kev", *get_args(Material)]
    if not rows or list(rows[0]) != expected:
        raise InputError(f"{path}: expected columns {expected}, got {list(rows[0]) if rows else 'no rows'}")
    cols = {k: np.array([float(r[k]) for r in rows], dtype=np.float64) for k in expected}
    if np.any(np.diff(cols["energy_kev"]) <= 0) or any(np.any(v <= 0) for v in cols.values()):
        raise InputError(f"{path}: energies must increase strictly and all values must be positive")
    for v in cols.values():
        v.setflags(write=False)
    return cols


def table_range_kev() -> tuple[float, float]:
    """(lowest, highest) tabulated energy in keV."""
    e = _table()["energy_kev"]
    return float(e[0]), float(e[-1])


def _check_material(material: str) -> None:
    if material not in get_args(Material):
        raise InputError(f"material must be one of {get_args(Material)}, got {material!r}")


def mass_attenuation_cm2_per_g(material: Material, energy_kev: Tensor | float) -> Tensor:
    """Total mass attenuation coefficient mu/rho (cm^2/g) of ``material`` at ``energy_kev``.

    Log-log interpolation of the NIST table (exact at the tabulated energies).
    ``energy_kev``: a float or a tensor of any shape, in keV, within the table range.
    Returns a tensor of the same shape: float64 for a float or integer input, else the
    input's dtype, on the input's device. Out-of-range energies raise :class:`InputError`.
    """
    _check_material(material)
    is_float_tensor = isinstance(energy_kev, Tensor) and energy_kev.is_floating_point()
    e = torch.as_tensor(energy_kev, dtype=torch.float64)  # keeps a tensor's device
    lo, hi = table_range_kev()
    if e.numel() == 0:
        return e.to(energy_kev.dtype) if is_float_tensor else e
    e_min, e_max = float(e.min()), float(e.max())
    if not (lo * (1 - 1e-9) <= e_min and e_max <= hi * (1 + 1e-9)):  # also catches NaN
        bad = e_max if not e_max <= hi * (1 + 1e-9) else e_min
        raise InputError(f"energy must be within {lo:g}-{hi:g} keV (table range), got {bad:g}")
    e = e.clamp(lo, hi)  # absorb round-off at the ends (e.g. 10 ** log10(200))
    tab = _table()
    e_tab = torch.tensor(tab["energy_kev"], device=e.device)
    mu_tab = torch.tensor(tab[material], device=e.device)
    log_e, log_mu = torch.log(e_tab), torch.log(mu_tab)
    idx = (torch.searchsorted(e_tab, e, right=True) - 1).clamp(0, len(e_tab) - 2)
    t = (torch.log(e) - log_e[idx]) / (log_e[idx + 1] - log_e[idx])
    out = torch.exp(log_mu[idx] + t * (log_mu[idx + 1] - log_mu[idx]))
    # Grid energies return the tabulated number bit for bit, not exp(log(x)).
    out = torch.where(e == e_tab[idx], mu_tab[idx], out)
    out = torch.where(e == e_tab[idx + 1], mu_tab[idx + 1], out)
    return out.to(energy_kev.dtype) if is_float_tensor else out


def _mu_rho_np(material: Material, energies_kev: np.ndarray) -> np.ndarray:
    return mass_attenuation_cm2_per_g(material, torch.tensor(np.asarray(energies_kev), dtype=torch.float64)).numpy()


# --------------------------------------------------------------------------- HU -> materials
def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{name} must be a positive finite number, got {value}")
    return value


def hu_to_densities(
    hu: Tensor, *, bone_hu: float = 1900.0, bone_density_g_cm3: float = 1.92
) -> tuple[Tensor, Tensor]:
    """Split CT numbers into partial mass densities of water and cortical bone (g/cm^3).

    ``hu``: tensor of any shape, Hounsfield units. Returns ``(water_g_cm3, bone_g_cm3)``,
    float32, same shape and device, piecewise linear (so differentiable) in ``hu``:

    - ``HU <= 0``: water-equivalent material of density ``max(0, 1 + HU/1000)``, no bone.
      Air, lung and fat are treated as low-density water. The CT number already fixes
      their mu at the scanner's energy; only the energy dependence could differ, and
      their mu/rho curves run nearly parallel to water's (dry air/water goes from 0.94
      to 0.90 between 30 and 150 keV), while density sets the size of the effect. This
      reproduces the CT definition ``mu = mu_water * (1 + HU/1000)`` at every energy;
      -1000 HU (and below) is vacuum.
    - ``0 < HU <= bone_hu``: a mixture by volume fraction ``f = HU / bone_hu`` of water
      (``(1 - f) * 1.0``) and cortical bone (``f * bone_density_g_cm3``).
    - ``HU > bone_hu`` (dense bone, iodine/barium contrast, metal): no water, bone of
      density ``bone_density_g_cm3 * HU / bone_hu``, the linear extension. Metal is
      not modelled beyond that: its far larger photoelectric attenuation at low
      energies is missing, so implants come out too transparent at low kVp.

    ``bone_hu`` is the CT number of ICRU-44 cortical bone (1.92 g/cm^3): with the NIST
    table, ``(mu_bone / mu_water - 1) * 1000`` is 1935 HU at 60 keV and 1594 HU at
    70 keV; 1900 HU corresponds to about 61 keV, a typical effective energy of a
    120 kVp CT beam. At that reference energy the model reproduces
    ``mu = mu_water * (1 + HU/1000)`` for every HU up to ``bone_hu`` as well; away from it
    the bone fraction gives bone its own (steeper) energy dependence, which is the point.
    """
    bone_hu = _positive("bone_hu", bone_hu)
    bone_density_g_cm3 = _positive("bone_density_g_cm3", bone_density_g_cm3)
    if not isinstance(hu, Tensor):
        raise InputError(f"hu must be a torch.Tensor of Hounsfield units, got {type(hu).__name__}")
    hu = hu.to(torch.float32)
    f = torch.clamp(hu, min=0.0) / bone_hu
    water = torch.where(hu <= 0, torch.clamp(1.0 + hu / 1000.0, min=0.0), torch.clamp(1.0 - f, min=0.0))
    bone = f * bone_density_g_cm3
    return water, bone


def hu_to_mu_per_mm(
    hu: Tensor, *, energy_kev: float = 70.0, bone_hu: float = 1900.0, bone_density_g_cm3: float = 1.92
) -> Tensor:
    """Monoenergetic linear attenuation coefficient mu (1/mm) of a CT, by the water/bone split.

    ``hu``: any shape, HU. Returns float32 of the same shape:
    ``(mu/rho_w(E) * water_g_cm3 + mu/rho_b(E) * bone_g_cm3) / 10`` (1/cm -> 1/mm).
    Water at 70 keV gives 0.0194 /mm.
    """
    water, bone = hu_to_densities(hu, bone_hu=bone_hu, bone_density_g_cm3=bone_density_g_cm3)
    mu_w = float(mass_attenuation_cm2_per_g("water", float(energy_kev)))
    mu_b = float(mass_attenuation_cm2_per_g("cortical_bone", float(energy_kev)))
    return (mu_w * water + mu_b * bone) / 10.0


# --------------------------------------------------------------------------- spectra
@dataclass(frozen=True, eq=False)  # eq=False: arrays have no truth value; compare fields explicitly
class Spectrum:
    """A photon spectrum, binned.

    ``energies_kev``: (n,) float64 bin centres (keV), increasing, within the table range.
    ``fluence``: (n,) float64 photons per bin, normalised here to sum to 1.
    ``kvp``: tube voltage (kV); no bin may lie above it. ``filtration_mm_al``: total Al
    filtration (mm) already applied. ``model``: how the spectrum was made.
    Both arrays are stored as read-only copies.
    """

    energies_kev: np.ndarray
    fluence: np.ndarray
    kvp: float
    filtration_mm_al: float
    model: str = "custom"

    def __post_init__(self) -> None:
        e = np.array(self.energies_kev, dtype=np.float64).reshape(-1)
        w = np.array(self.fluence, dtype=np.float64).reshape(-1)
        lo, hi = table_range_kev()
        if e.size == 0 or e.shape != w.shape:
            raise InputError(
                f"energies_kev and fluence must be non-empty 1D arrays of one length, got sizes {e.size}, {w.size}"
            )
        if np.any(np.diff(e) <= 0) or e[0] < lo or e[-1] > min(hi, float(self.kvp)):
            raise InputError(
                f"energies_kev must increase within {lo:g}-{hi:g} keV and not exceed kvp={self.kvp:g}, "
                f"got {e[0]:g}..{e[-1]:g}"
            )
        if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise InputError("fluence must be finite, non-negative and not all zero")
        w = w / w.sum()
        e.setflags(write=False)
        w.setflags(write=False)
        object.__setattr__(self, "energies_kev", e)
        object.__setattr__(self, "fluence", w)
        object.__setattr__(self, "kvp", float(self.kvp))
        object.__setattr__(self, "filtration_mm_al", float(self.filtration_mm_al))

    @property
    def mean_kev(self) -> float:
        """Fluence-weighted mean photon energy (keV)."""
        return float(np.sum(self.energies_kev * self.fluence))


def _tungsten_k_lines(kvp: float, bremsstrahlung_photons: float) -> list[tuple[float, float]]:
    """(energy keV, photons) of the tungsten K lines, on the scale of the bremsstrahlung total.

    Approximation: the K emission grows with overvoltage as (U - 1)^1.63, U = kVp / K-edge
    (the classic empirical law for characteristic X-ray yield), scaled so that the lines
    hold about 6 % of the unfiltered photons at 120 kVp, roughly what measured diagnostic
    tungsten spectra show. Not a substitute for a measured or TASMIP spectrum.
    """
    if kvp <= TUNGSTEN_K_EDGE_KEV:
        return []
    total = 0.1 * (kvp / TUNGSTEN_K_EDGE_KEV - 1.0) ** 1.63 * bremsstrahlung_photons
    return [(e, share * total) for e, share in TUNGSTEN_K_LINES if e < kvp]


def spectrum(kvp: float = 120.0, *, filtration_mm_al: float = 2.5, bin_kev: float = 1.0) -> Spectrum:
    """A filtered tungsten-anode X-ray spectrum (photons per bin, summing to 1).

    Bremsstrahlung by Kramers' law (photons per unit energy proportional to
    ``(kVp - E) / E``, integrated exactly over each bin), plus the tungsten K lines
    (K-alpha 57.98 / 59.32 keV, K-beta 67.24 keV) when ``kvp`` exceeds the 69.5 keV
    K edge, hardened by ``filtration_mm_al`` mm of aluminium (2.70 g/cm^3, NIST mu/rho).
    Bins of ``bin_kev`` keV run from 10 keV up to ``kvp`` (the last may be narrower).
    An approximation for realistic-looking beam hardening, not TASMIP or a measured
    spectrum: no anode self-absorption, no heel effect, ideal filtration only.
    ``kvp`` must be within 40-150 kV.
    """
    kvp = float(kvp)
    if not (KVP_RANGE[0] <= kvp <= KVP_RANGE[1]):
        raise InputError(f"kvp must be within {KVP_RANGE[0]:g}-{KVP_RANGE[1]:g} kV, got {kvp:g}")
    filtration_mm_al = float(filtration_mm_al)
    if not (math.isfinite(filtration_mm_al) and filtration_mm_al >= 0):
        raise InputError(f"filtration_mm_al must be a finite number >= 0 (mm of Al), got {filtration_mm_al}")
    bin_kev = float(bin_kev)
    if not (0 < bin_kev <= 10):
        raise InputError(f"bin_kev must be in (0, 10] keV, got {bin_kev}")
    e_lo = max(SPECTRUM_MIN_KEV, table_range_kev()[0])
    n = math.ceil((kvp - e_lo) / bin_kev - 1e-9)
    edges = np.minimum(e_lo + bin_kev * np.arange(n + 1, dtype=np.float64), kvp)
    centres = 0.5 * (edges[:-1] + edges[1:])
    photons = kvp * np.log(edges[1:] / edges[:-1]) - np.diff(edges)
    lines = _tungsten_k_lines(kvp, float(photons.sum()))

    def transmitted(e_kev: np.ndarray) -> np.ndarray:
        return np.exp(-_mu_rho_np("aluminum", e_kev) * ALUMINUM_DENSITY_G_CM3 * filtration_mm_al / 10.0)

    photons = photons * transmitted(centres)
    if lines:
        line_e = np.array([e for e, _ in lines])
        line_n = np.array([p for _, p in lines]) * transmitted(line_e)
        np.add.at(photons, np.searchsorted(edges, line_e, side="right") - 1, line_n)
    model = "kramers+W_K_lines" if lines else "kramers"
    return Spectrum(centres, photons, kvp, filtration_mm_al, model=f"{model}, {filtration_mm_al:g} mm Al")


# --------------------------------------------------------------------------- attenuation
def _check_pair(water_g_cm3_mm: Tensor, bone_g_cm3_mm: Tensor) -> None:
    if not (isinstance(water_g_cm3_mm, Tensor) and isinstance(bone_g_cm3_mm, Tensor)):
        raise InputError("water_g_cm3_mm and bone_g_cm3_mm must be torch tensors")
    if not (water_g_cm3_mm.is_floating_point() and bone_g_cm3_mm.is_floating_point()):
        raise InputError(
            "water_g_cm3_mm and bone_g_cm3_mm must be floating point, "
            f"got {water_g_cm3_mm.dtype}, {bone_g_cm3_mm.dtype}"
        )
    if water_g_cm3_mm.shape != bone_g_cm3_mm.shape:
        raise InputError(
            f"water_g_cm3_mm and bone_g_cm3_mm must have one shape, got "
            f"{tuple(water_g_cm3_mm.shape)} and {tuple(bone_g_cm3_mm.shape)}"
        )


def attenuation_line_integral(water_g_cm3_mm: Tensor, bone_g_cm3_mm: Tensor, *, energy_kev: float) -> Tensor:
    """Dimensionless attenuation ``A = integral of mu dl`` at ``energy_kev`` (keV).

    Inputs are the ray caster's material line integrals, density (g/cm^3) integrated over
    path length in **mm**, any shape (e.g. (H, W)), one shape for both. They are divided by
    10 to get g/cm^2, then ``A = mu/rho_w(E) * W + mu/rho_b(E) * B``. Same shape and dtype.
    """
    _check_pair(water_g_cm3_mm, bone_g_cm3_mm)
    mu_w = float(mass_attenuation_cm2_per_g("water", float(energy_kev)))
    mu_b = float(mass_attenuation_cm2_per_g("cortical_bone", float(energy_kev)))
    return (mu_w / 10.0) * water_g_cm3_mm + (mu_b / 10.0) * bone_g_cm3_mm


def intensity(
    water_g_cm3_mm: Tensor,
    bone_g_cm3_mm: Tensor,
    *,
    energy_kev: float | None = None,
    spectrum: Spectrum | None = None,
    detector: Detector = "energy_integrating",
) -> Tensor:
    """Transmitted fraction I/I0 in (0, 1] for non-negative material line integrals.

    Inputs: g/cm^3 x mm line integrals of water and bone, one shape (e.g. (H, W)).
    Exactly one of ``energy_kev`` (monoenergetic: ``exp(-A(E))``) or ``spectrum``
    (polyenergetic: ``sum_E w(E) exp(-A(E)) / sum_E w(E)``). The detector weights each
    photon by its energy (``w = fluence * E``, ``"energy_integrating"``) or counts it
    (``w = fluence``, ``"photon_counting"``); the detector is otherwise ideal (absorbs
    every photon). Bins are accumulated one at a time, so memory stays a few maps
    whatever the number of bins. Differentiable in both inputs. Same shape and dtype.
    """
    _check_pair(water_g_cm3_mm, bone_g_cm3_mm)
    if (energy_kev is None) == (spectrum is None):
        raise InputError("give exactly one of energy_kev (monoenergetic) or spectrum (polyenergetic)")
    if detector not in get_args(Detector):
        raise InputError(f"detector must be one of {get_args(Detector)}, got {detector!r}")
    if energy_kev is not None:
        return torch.exp(-attenuation_line_integral(water_g_cm3_mm, bone_g_cm3_mm, energy_kev=energy_kev))
    if not isinstance(spectrum, Spectrum):
        raise InputError(f"spectrum must be a Spectrum, got {type(spectrum).__name__}")
    e = spectrum.energies_kev
    w = spectrum.fluence * e if detector == "energy_integrating" else spectrum.fluence.copy()
    w = w / w.sum()
    mu_w = _mu_rho_np("water", e) / 10.0  # cm^2/g -> per (g/cm^3 x mm)
    mu_b = _mu_rho_np("cortical_bone", e) / 10.0
    bins = [(wi, a, b) for wi, a, b in zip(w.tolist(), mu_w.tolist(), mu_b.tolist()) if wi > 0]
    return _spectral_sum(water_g_cm3_mm, bone_g_cm3_mm, bins)


def _spectral_sum(water: Tensor, bone: Tensor, bins: list[tuple[float, float, float]]) -> Tensor:
    """``sum_i w_i exp(-(a_i * water + b_i * bone))``, one bin at a time (memory: a few maps)."""
    needs_grad = torch.is_grad_enabled() and (water.requires_grad or bone.requires_grad)
    out = torch.zeros_like(water)
    if needs_grad:  # out-of-place so autograd can record each bin
        for wi, a, b in bins:
            out = out + wi * torch.exp(torch.add(water * -a, bone, alpha=-b))
        return out
    water, bone = water.detach(), bone.detach()
    tmp = torch.empty_like(water)
    for wi, a, b in bins:  # in place: two buffers whatever the number of bins
        torch.mul(water, -a, out=tmp)
        tmp.add_(bone, alpha=-b).exp_()
        out.add_(tmp, alpha=wi)
    return out


def line_integral_from_intensity(intensity: Tensor, *, min_intensity: float = 1e-12) -> Tensor:
    """Effective attenuation line integral ``-log(I)`` (dimensionless), I clamped to ``min_intensity``.

    The log transform a CT/X-ray system applies to I/I0; for a polyenergetic beam it is
    the beam-hardened ("effective") line integral. Same shape; finite wherever I >= 0.
    """
    min_intensity = _positive("min_intensity", min_intensity)
    return -torch.log(torch.clamp(intensity, min=min_intensity))


# --------------------------------------------------------------------------- detector effects
def add_noise(
    intensity: Tensor,
    *,
    photons_per_pixel: float,
    electronic_std_photons: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Quantum + electronic noise on a transmission map; returns noisy I/I0, same shape.

    ``counts ~ Poisson(photons_per_pixel * I) + Normal(0, electronic_std_photons)`` (photon
    units), returned as ``counts / photons_per_pixel`` with counts floored at
    ``MIN_COUNTS`` (0.5 photon) so that ``-log`` stays finite. ``photons_per_pixel`` is the
    unattenuated fluence per detector pixel (> 0). Randomness comes only from
    ``generator`` (on the tensor's device); ``None`` means a fresh generator seeded with 0,
    so an unseeded call is still reproducible. Global RNG state is never touched.
    Not differentiable (Poisson sampling has no useful gradient).
    """
    n = _positive("photons_per_pixel", photons_per_pixel)
    std = float(electronic_std_photons)
    if not (math.isfinite(std) and std >= 0):
        raise InputError(f"electronic_std_photons must be a finite number >= 0, got {electronic_std_photons}")
    if not (isinstance(intensity, Tensor) and intensity.is_floating_point()):
        raise InputError("intensity must be a floating-point torch tensor of I/I0 values")
    if bool((intensity < 0).any()) or not bool(torch.isfinite(intensity).all()):
        raise InputError("intensity must be finite and >= 0 (a transmitted fraction I/I0)")
    if generator is None:
        generator = torch.Generator(device=intensity.device).manual_seed(0)
    elif generator.device.type != intensity.device.type:
        raise InputError(f"generator is on {generator.device}, intensity on {intensity.device}; they must match")
    counts = torch.poisson(intensity.detach() * n, generator=generator)
    if std > 0:
        counts = counts + std * torch.randn(
            intensity.shape, generator=generator, dtype=intensity.dtype, device=intensity.device
        )
    return torch.clamp(counts, min=MIN_COUNTS) / n


def _gaussian_blur_last(x: Tensor, sigma_px: float) -> Tensor:
    """Gaussian blur along the last dim, reflect padding; the kernel is cut at min(3 sigma, size - 1)."""
    size = x.shape[-1]
    radius = min(math.ceil(3.0 * sigma_px), size - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / sigma_px) ** 2)
    kernel = (kernel / kernel.sum()).view(1, 1, -1)
    flat = x.reshape(-1, 1, size)
    if radius > 0:
        flat = F.pad(flat, (radius, radius), mode="reflect")
    return F.conv1d(flat, kernel).reshape(x.shape)


def add_scatter(intensity: Tensor, *, scatter_to_primary: float = 0.1, kernel_sigma_px: float = 40.0) -> Tensor:
    """Add a low-frequency scatter field: ``I + scatter_to_primary * G_sigma * I``.

    ``intensity``: (..., H, W) primary transmission. The scatter is the primary blurred
    by a wide, normalised Gaussian (``kernel_sigma_px`` detector pixels, separable, reflect
    padding), scaled by the scatter-to-primary ratio, so it adds about
    ``scatter_to_primary * mean(I)`` on average and is brighter behind thin parts.
    A convolution model of scatter, not Monte Carlo; the result (primary + scatter,
    relative to the unattenuated primary) can exceed 1. Apply before :func:`add_noise`.
    Differentiable; same shape and dtype.
    """
    spr = float(scatter_to_primary)
    if not (math.isfinite(spr) and spr >= 0):
        raise InputError(f"scatter_to_primary must be a finite number >= 0, got {scatter_to_primary}")
    sigma = _positive("kernel_sigma_px", kernel_sigma_px)
    if not (isinstance(intensity, Tensor) and intensity.is_floating_point() and intensity.ndim >= 2):
        raise InputError("intensity must be a floating-point tensor of shape (..., H, W)")
    blurred = _gaussian_blur_last(intensity, sigma)
    blurred = _gaussian_blur_last(blurred.transpose(-1, -2), sigma).transpose(-1, -2)
    return intensity + spr * blurred


# --------------------------------------------------------------------------- display
def _check_gamma(gamma: float) -> float:
    return _positive("gamma", gamma)


def _image_quantile(x: Tensor, q: float) -> Tensor:
    """Per-image quantile over the last two dims, shape (..., 1, 1)."""
    if x.ndim < 2:
        raise InputError(f"expected an image of shape (..., H, W), got shape {tuple(x.shape)}")
    flat = x.reshape(*x.shape[:-2], -1)
    k = min(max(math.ceil(q * flat.shape[-1]), 1), flat.shape[-1])
    return torch.kthvalue(flat, k, dim=-1).values[..., None, None]


def radiograph(line_integral: Tensor, *, low: float = 0.0, high: float | None = None, gamma: float = 1.0) -> Tensor:
    """Film-look display in [0, 1]: high attenuation (bone) bright.

    ``line_integral``: (..., H, W) attenuation ``-log(I/I0)``. Returns
    ``clip((L - low) / (high - low), 0, 1) ** gamma``. ``high=None`` uses each image's
    99.5th percentile of L, which adapts per image; pass a fixed ``high`` (and ``low``)
    to keep grey levels comparable across images and renders, because the mapping then
    stays tied to physical attenuation (unlike per-volume min-max normalisation).
    """
    gamma = _check_gamma(gamma)
    if high is None:
        hi = _image_quantile(line_integral, 0.995)
        denom = torch.clamp(hi - low, min=1e-12)
    else:
        if not float(high) > float(low):
            raise InputError(f"high must be greater than low, got low={low}, high={high}")
        denom = float(high) - float(low)
    return torch.clamp((line_integral - low) / denom, 0.0, 1.0) ** gamma


def fluoroscopy(intensity: Tensor, *, white: float | None = None, gamma: float = 1.0) -> Tensor:
    """Fluoroscopy/monitor display in [0, 1]: transmitted intensity, so bone is dark.

    ``intensity``: (..., H, W) I/I0. Returns ``clip(I / white, 0, 1) ** gamma`` with
    ``white`` the intensity shown as white; ``None`` uses each image's maximum.
    """
    gamma = _check_gamma(gamma)
    if white is None:
        if intensity.ndim < 2:
            raise InputError(f"expected an image of shape (..., H, W), got shape {tuple(intensity.shape)}")
        peak = intensity.amax(dim=(-2, -1), keepdim=True)
        denom = torch.clamp(peak, min=1e-12)
    else:
        denom = _positive("white", white)
    return torch.clamp(intensity / denom, 0.0, 1.0) ** gamma


def to_uint16(image01: Tensor | np.ndarray) -> np.ndarray:
    """A [0, 1] display image as uint16 (``round(x * 65535)``), same shape, on the CPU."""
    arr = image01.detach().cpu().numpy() if isinstance(image01, Tensor) else np.asarray(image01)
    arr = arr.astype(np.float64)
    if arr.size and (not np.all(np.isfinite(arr)) or arr.min() < -1e-6 or arr.max() > 1 + 1e-6):
        lo, hi = (float(np.nanmin(arr)), float(np.nanmax(arr))) if arr.size else (0.0, 0.0)
        raise InputError(f"image01 must be finite values in [0, 1], got range {lo:g}..{hi:g}")
    return np.round(np.clip(arr, 0.0, 1.0) * 65535.0).astype(np.uint16)

"""Lesion shapes: smooth irregular solids sized by their sphere-equivalent diameter.

A shape is an ellipsoid with random axes (ratios 0.75-1.25, volume preserving) and
a random orientation, its radius modulated by multi-scale smooth noise
(lobulation) and, for nodules, by thin radial spikes (spiculation). It is
rasterised on a local box of the host's voxel grid (anisotropic spacing
respected) as a soft occupancy in [0, 1] whose 0.5 level set is the lesion; a
bisection on the level scales it so the voxel mask's sphere-equivalent diameter
``(6 V / pi)^(1/3)`` matches the request.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from synthgen.errors import InputError


@dataclasses.dataclass(frozen=True, eq=False)
class Shape:
    """A rasterised lesion: ``occupancy`` (box, float32 in [0, 1]) centred at box voxel ``center``.

    ``mask`` is ``occupancy >= 0.5``; ``diameter_mm`` its sphere-equivalent diameter;
    ``radius_mm`` the largest distance (mm) from the centre to a mask voxel;
    ``params`` the sampled parameters.
    """

    occupancy: np.ndarray
    center: tuple[int, int, int]
    diameter_mm: float
    radius_mm: float
    params: dict

    @property
    def mask(self) -> np.ndarray:
        return self.occupancy >= 0.5


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def _smooth_noise(shape, sigma_vox, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered noise."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    return (n - n.mean()) / max(float(n.std()), 1e-6)


def _radius_field(xyz_mm: np.ndarray, axes_mm: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Normalised ellipsoid radius: 1 on the surface of the ellipsoid with semi-axes ``axes_mm``."""
    local = xyz_mm @ rot
    return np.sqrt(((local / axes_mm) ** 2).sum(-1))


def _spikes(xyz_mm: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """A field > 0 along a few random directions (thin cones), used to pull the surface outwards."""
    n = int(rng.integers(5, 12))
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    unit = xyz_mm / np.maximum(np.linalg.norm(xyz_mm, axis=-1, keepdims=True), 1e-6)
    cos = np.clip(unit @ dirs.T, 0, 1)
    lengths = rng.uniform(0.5, 1.0, size=n)
    return amount * (cos**40 * lengths).max(axis=-1)


def lesion_shape(
    diameter_mm: float,
    spacing_mm,
    *,
    rng: np.random.Generator,
    lobulation: float = 0.25,
    spiculation: float = 0.0,
    softness_vox: float = 0.7,
) -> Shape:
    """Sample and rasterise one lesion of the given sphere-equivalent diameter on a grid of ``spacing_mm``."""
    sp = np.asarray(spacing_mm, dtype=np.float64)
    if not 0 < diameter_mm <= 250:
        raise InputError(f"diameter must be in (0, 250] mm, got {diameter_mm}")
    if diameter_mm < 2 * sp.min():
        raise InputError(f"a {diameter_mm:g} mm lesion is smaller than two voxels ({sp.min():.2g} mm); it cannot be drawn")
    ratios = rng.uniform(0.75, 1.25, size=3)
    ratios /= np.cbrt(ratios.prod())
    rot = _random_rotation(rng)
    reach = diameter_mm * (0.5 * ratios.max() * (1 + 2 * lobulation) * (1 + spiculation) + 0.15) + 2 * sp.max()
    half = np.ceil(reach / sp).astype(int)
    shape = tuple(2 * half + 1)
    xyz = (np.stack(np.indices(shape), axis=-1) - half) * sp
    r = _radius_field(xyz, ratios * diameter_mm / 2, rot)
    if lobulation > 0:
        coarse = _smooth_noise(shape, np.maximum(diameter_mm / 4 / sp, 1.0), rng)
        fine = _smooth_noise(shape, np.maximum(diameter_mm / 10 / sp, 0.7), rng)
        r = r / np.maximum(1 + lobulation * (0.35 * coarse + 0.15 * fine), 0.3)
    if spiculation > 0:
        r = r / (1 + _spikes(xyz, rng, spiculation))
    level = _fit_level(r, sp, diameter_mm)
    # keep one solid: voxels of islands split off by the noise are pushed out, then the level refitted
    parts, n_parts = ndimage.label(r <= level)
    if n_parts > 1:
        centre_part = parts[tuple(half)] or np.argmax(np.bincount(parts.ravel())[1:]) + 1
        r = np.where((parts == 0) | (parts == centre_part), r, np.inf)
        level = _fit_level(r, sp, diameter_mm)
    # soft edge: occupancy 0.5 on the level set, ~softness_vox voxels wide
    grad = diameter_mm / 2 / sp.min()
    occ = np.clip(0.5 - (r - level) * grad / (2 * softness_vox), 0.0, 1.0).astype(np.float32)
    # crop the box to the soft lesion plus one voxel: every later step works on this box only
    lo = np.maximum(np.min(np.nonzero(occ > 0), axis=1) - 1, 0)
    hi = np.minimum(np.max(np.nonzero(occ > 0), axis=1) + 2, occ.shape)
    occ = np.ascontiguousarray(occ[tuple(slice(a, b) for a, b in zip(lo, hi))])
    xyz = xyz[tuple(slice(a, b) for a, b in zip(lo, hi))]
    half = half - lo
    mask = occ >= 0.5
    vol = mask.sum() * sp.prod()
    eq = float(np.cbrt(6 * vol / np.pi))
    radius = float(np.sqrt(((xyz[mask]) ** 2).sum(-1)).max()) if mask.any() else 0.0
    params = {"axis_ratios": ratios.round(4).tolist(), "rotation": rot.round(6).tolist(),
              "lobulation": lobulation, "spiculation": spiculation, "level": round(float(level), 5)}
    return Shape(occ, tuple(int(h) for h in half), eq, radius, params)


def _fit_level(r: np.ndarray, sp: np.ndarray, diameter_mm: float) -> float:
    """Level t such that the voxel count of ``r <= t`` has the target sphere-equivalent volume."""
    target = np.pi / 6 * diameter_mm**3 / sp.prod()
    flat = np.sort(r.ravel())
    k = int(np.clip(round(target), 1, flat.size - 1))
    return float(0.5 * (flat[k - 1] + flat[k]))

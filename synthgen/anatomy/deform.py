"""Random smooth deformations of a CT and its label map: new anatomies from one scan.

A deformation is sampled first (`sample_deformation` -> `DeformParams`, plain
numbers recorded in the output's metadata) and then applied deterministically
(`apply_deformation`), so any result can be reproduced from its record
(`DeformParams.from_dict`). `random_deformation` does both.

The mapping (a pull-back, in world RAS+ millimetres)
------------------------------------------------------
The output grid is the input grid. Each output voxel centre ``x`` takes its
value from the source point::

    x' = c + A^-1 (x - c - t) + u(x),        A = Rz(rz) @ Ry(ry) @ Rx(rx) @ diag(s)

* ``c`` = ``centre_mm`` (the centre of the field of view), ``t`` =
  ``translation_mm``, ``s`` = ``scale`` along world x, y, z, and ``Rx, Ry, Rz``
  rotations by ``rotation_deg`` about the world x (R), y (A), z (S) axes. The
  affine part therefore moves the anatomy by ``y = c + A (x' - c) + t``:
  scaled about ``c``, rotated about ``c``, then shifted by ``t``.
* ``u(x)`` is the elastic displacement (mm): values on a coarse control grid
  whose nodes sit at ``grid_origin_mm + n * grid_spacing_mm`` along the world
  axes, interpolated trilinearly at ``x`` (clamped at the grid's edge).
  Trilinear weights are convex, so ``|u(x)| <= max |displacement_mm|``
  (= ``max_displacement_mm`` when sampled), and the whole displacement obeys
  ``|x' - x| <= ||A^-1 - I|| |x - c| + ||A^-1|| |t| + max |u|`` (spectral norms).

``x'`` is converted to source voxel indices with the volume's own affine, so
LPS, flipped and oblique grids give the same world-space result. The CT is
sampled trilinearly (neighbours beyond the array count as -1024 HU, or 0 for
other units), labels by nearest neighbour (0 beyond the array); both in one
numba pass over the output, with float64 coordinates, so identity parameters
give back the label map exactly and the CT to float32 precision.

Importing this module imports numba (~0.4 s). The kernel compiles on its first
call (5-10 s, once per label dtype) and is then loaded from numba's on-disk cache.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numba
import numpy as np
from numba import prange

from synthgen.errors import InputError
from synthgen.volume import Volume

__all__ = ["DeformParams", "apply_deformation", "random_deformation", "sample_deformation", "source_points_mm"]

_JIT = {"nogil": True, "cache": True}

#: Standard deviation (in control-grid nodes) of the Gaussian smoothing the elastic noise gets.
SMOOTHING_NODES = 1.0


@dataclasses.dataclass(frozen=True, eq=False)
class DeformParams:
    """The sampled parameters of one deformation (see the module docstring for the formula).

    Args:
        rotation_deg: rotation about world x, y, z (degrees), applied in that order.
        scale: scale factors along world x, y, z (1 = unchanged).
        translation_mm: shift of the anatomy (world mm).
        centre_mm: world point the rotation and scaling are about.
        displacement_mm: ``(n0, n1, n2, 3)`` elastic displacement (world mm) at the control nodes.
        grid_origin_mm: world position of control node ``[0, 0, 0]``.
        grid_spacing_mm: distance between control nodes along world x, y, z.
        smoothness_mm: the length scale the elastic part was sampled with (recorded, not used).
        max_displacement_mm: the elastic magnitude it was sampled with (recorded, not used).
        seed: the seed it was sampled with, or None.
    """

    rotation_deg: tuple[float, float, float]
    scale: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    centre_mm: tuple[float, float, float]
    displacement_mm: np.ndarray
    grid_origin_mm: tuple[float, float, float]
    grid_spacing_mm: tuple[float, float, float]
    smoothness_mm: float = 0.0
    max_displacement_mm: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("rotation_deg", "scale", "translation_mm", "centre_mm", "grid_origin_mm", "grid_spacing_mm"):
            object.__setattr__(self, name, _vec3(getattr(self, name), name))
        if min(self.scale) <= 0 or min(self.grid_spacing_mm) <= 0:
            raise InputError(
                f"scale and grid_spacing_mm must be positive, got {self.scale} and {self.grid_spacing_mm}"
            )
        disp = np.array(self.displacement_mm, dtype=np.float64, copy=True)
        if disp.ndim != 4 or disp.shape[3] != 3 or min(disp.shape[:3]) < 1 or not np.all(np.isfinite(disp)):
            raise InputError(f"displacement_mm must be a finite (n0, n1, n2, 3) array in mm, got shape {disp.shape}")
        disp.setflags(write=False)
        object.__setattr__(self, "displacement_mm", disp)

    def affine_matrix(self) -> np.ndarray:
        """``A = Rz @ Ry @ Rx @ diag(scale)`` (3x3): the linear part of the anatomy's motion."""
        rx, ry, rz = np.radians(self.rotation_deg)
        cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
        mx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
        my = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
        mz = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
        return mz @ my @ mx @ np.diag(self.scale)

    def affine_bound_mm(self, radius_mm: float) -> float:
        """Largest ``|c + A^-1 (x - c - t) - x|`` over points within ``radius_mm`` of the centre."""
        inv = np.linalg.inv(self.affine_matrix())
        return float(
            np.linalg.norm(inv - np.eye(3), 2) * radius_mm + np.linalg.norm(inv, 2) * np.linalg.norm(self.translation_mm)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record; `from_dict` rebuilds the same parameters."""
        d = dataclasses.asdict(self)
        d["displacement_mm"] = self.displacement_mm.tolist()
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        return {"formula": "x' = c + A^-1 (x - c - t) + u(x)", **d}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> DeformParams:
        """Parameters from a `to_dict` record (e.g. ``volume.meta["deformation"]``)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(fields - set(record) - {"smoothness_mm", "max_displacement_mm", "seed"})
        unknown = sorted(set(record) - fields - {"formula"})
        if missing or unknown:
            raise InputError(f"not a deformation record: missing keys {missing}, unknown keys {unknown}")
        return cls(**{k: v for k, v in record.items() if k in fields})


def _vec3(value: Any, name: str) -> tuple[float, float, float]:
    try:
        v = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        v = np.array([np.nan])
    if v.shape != (3,) or not np.all(np.isfinite(v)):
        raise InputError(f"{name} must be 3 finite floats, got {value!r}")
    return (float(v[0]), float(v[1]), float(v[2]))


# ------------------------------------------------------------------ sampling
def sample_deformation(
    volume: Volume,
    *,
    seed: int,
    max_displacement_mm: float = 8.0,
    smoothness_mm: float = 40.0,
    rotation_deg: float = 4.0,
    scale: float = 0.03,
    translation_mm: float = 5.0,
) -> DeformParams:
    """Draw a random smooth deformation for ``volume``'s field of view (nothing is resampled yet).

    Rotation angles, scale offsets and shifts are uniform in ``[-x, x]`` per world
    axis (scale factors ``1 +- scale``), about the centre of the field of view.
    The elastic part is white noise on a control grid with ``~smoothness_mm``
    spacing over the field of view's world bounding box, Gaussian-smoothed
    (sigma 1 node), then scaled so its largest node magnitude is
    ``max_displacement_mm``. Only ``numpy.random.default_rng(seed)`` is used.
    """
    if not isinstance(volume, Volume):
        raise InputError(f"sample_deformation needs a Volume, got {type(volume).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative int, got {seed!r}")
    _check_magnitudes(
        max_displacement_mm=max_displacement_mm,
        smoothness_mm=smoothness_mm,
        rotation_deg=rotation_deg,
        scale=scale,
        translation_mm=translation_mm,
    )
    rng = np.random.default_rng(seed)
    rot = rng.uniform(-rotation_deg, rotation_deg, 3)
    sc = 1.0 + rng.uniform(-scale, scale, 3)
    shift = rng.uniform(-translation_mm, translation_mm, 3)
    lo, hi = volume.bounds()
    nodes = np.maximum(2, np.ceil((hi - lo) / smoothness_mm).astype(int) + 1)
    disp = _smooth_noise(rng, tuple(int(n) for n in nodes), float(max_displacement_mm))
    return DeformParams(
        rotation_deg=rot,
        scale=sc,
        translation_mm=shift,
        centre_mm=(lo + hi) / 2.0,
        displacement_mm=disp,
        grid_origin_mm=lo,
        grid_spacing_mm=(hi - lo) / (nodes - 1),
        smoothness_mm=float(smoothness_mm),
        max_displacement_mm=float(max_displacement_mm),
        seed=int(seed),
    )


def _check_magnitudes(**options: Any) -> None:
    for name, v in options.items():
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not np.isfinite(v) or v < 0:
            raise InputError(f"{name} must be a finite number >= 0, got {v!r}")
    if options["smoothness_mm"] <= 0 or options["scale"] >= 1:
        raise InputError(
            f"need smoothness_mm > 0 and scale < 1 (factors 1 +- scale), "
            f"got {options['smoothness_mm']!r} and {options['scale']!r}"
        )


def _smooth_noise(rng: np.random.Generator, nodes: tuple[int, int, int], max_mm: float) -> np.ndarray:
    """``(*nodes, 3)`` Gaussian-smoothed white noise scaled to a largest vector norm of ``max_mm``."""
    from scipy.ndimage import gaussian_filter

    noise = rng.standard_normal((*nodes, 3))
    smooth = np.stack([gaussian_filter(noise[..., c], SMOOTHING_NODES, mode="nearest") for c in range(3)], axis=-1)
    peak = float(np.sqrt((smooth**2).sum(axis=-1)).max())
    if max_mm == 0 or peak == 0:
        return np.zeros_like(smooth)
    return smooth * (max_mm / peak)


# ------------------------------------------------------------------ mapping
def source_points_mm(params: DeformParams, points_mm: np.ndarray) -> np.ndarray:
    """Source points ``x'`` (world mm, ``(..., 3)``) sampled for output points ``x`` (world mm, ``(..., 3)``).

    The documented formula evaluated in numpy, for point sets (landmarks, checks);
    `apply_deformation` evaluates the same formula voxel by voxel.
    """
    from scipy.ndimage import map_coordinates

    x = np.asarray(points_mm, dtype=np.float64)
    if x.ndim == 0 or x.shape[-1] != 3:
        raise InputError(f"points_mm must have shape (..., 3), got {x.shape}")
    flat = x.reshape(-1, 3)
    c, t = np.asarray(params.centre_mm), np.asarray(params.translation_mm)
    out = c + (flat - c - t) @ np.linalg.inv(params.affine_matrix()).T
    g = ((flat - np.asarray(params.grid_origin_mm)) / np.asarray(params.grid_spacing_mm)).T
    for axis in range(3):
        out[:, axis] += map_coordinates(params.displacement_mm[..., axis], g, order=1, mode="nearest")
    return out.reshape(x.shape)


# ------------------------------------------------------------------ applying
def apply_deformation(
    ct: Volume, labels: Volume | None, params: DeformParams
) -> tuple[Volume, Volume | None]:
    """Resample ``ct`` (trilinear, float32) and ``labels`` (nearest) through ``params`` on their own grid.

    Returns Volumes with the input's affine and metadata, ``synthetic=True`` and
    ``meta["deformation"] = params.to_dict()``; ``labels`` keeps its dtype and
    vocabulary. About 2-3 s for a 512x512x133 CT with its label map on 2 busy cores.

    Raises:
        InputError: ``ct`` is not an intensity Volume, ``labels`` not a label map,
            or ``params`` not a `DeformParams`.
        GridMismatchError: ``labels`` is not on ``ct``'s grid.
    """
    _check_inputs(ct, labels, params)
    lin, off, g_lin, g_off, field = _voxel_mapping(ct.affine, params)
    src = np.ascontiguousarray(ct.numpy(), dtype=np.float32)
    lab = np.ascontiguousarray(labels.numpy()) if labels is not None else np.zeros((1, 1, 1), np.uint8)
    out_ct = np.empty(src.shape, dtype=np.float32)
    out_lab = np.empty(src.shape if labels is not None else (1, 1, 1), dtype=lab.dtype)
    fill = -1024.0 if ct.units == "HU" else 0.0
    _warp(src, lab, labels is not None, lin, off, g_lin, g_off, field, fill, out_ct, out_lab)
    record = params.to_dict()
    new_ct = ct.with_array(out_ct, synthetic=True, meta={**ct.meta, "deformation": record})
    if labels is None:
        return new_ct, None
    return new_ct, labels.with_array(out_lab, synthetic=True, meta={**labels.meta, "deformation": record})


def _check_inputs(ct: Any, labels: Any, params: Any) -> None:
    if not isinstance(ct, Volume) or ct.kind != "intensity":
        got = f"kind={ct.kind!r}" if isinstance(ct, Volume) else type(ct).__name__
        raise InputError(f"ct must be an intensity Volume (kind='intensity'), got {got}")
    if labels is not None:
        if not isinstance(labels, Volume) or labels.kind != "label":
            got = f"kind={labels.kind!r}" if isinstance(labels, Volume) else type(labels).__name__
            raise InputError(f"labels must be a label map (a Volume with kind='label') or None, got {got}")
        ct.check_same_grid(labels, names=("CT", "label map"))
    if not isinstance(params, DeformParams):
        raise InputError(f"params must be a DeformParams (see sample_deformation), got {type(params).__name__}")


def _voxel_mapping(affine: np.ndarray, params: DeformParams) -> tuple[np.ndarray, ...]:
    """The formula in voxel units of a grid with ``affine`` (same grid in and out).

    Source voxel ``v' = lin @ v + off + field(g)``, with control-grid coordinate
    ``g = g_lin @ v + g_off`` and ``field`` the control displacements in voxels.
    """
    m, o = affine[:3, :3], affine[:3, 3]
    inv = np.linalg.inv(affine)
    m_inv, o_inv = inv[:3, :3], inv[:3, 3]
    a_inv = np.linalg.inv(params.affine_matrix())
    c, t = np.asarray(params.centre_mm), np.asarray(params.translation_mm)
    lin = m_inv @ a_inv @ m
    off = m_inv @ (c + a_inv @ (o - c - t)) + o_inv
    step = np.asarray(params.grid_spacing_mm)
    g_lin = m / step[:, None]
    g_off = (o - np.asarray(params.grid_origin_mm)) / step
    field = np.ascontiguousarray(params.displacement_mm @ m_inv.T)
    return lin, off, g_lin, g_off, field


def random_deformation(
    ct: Volume, labels: Volume | None = None, *, seed: int, **kwargs: float
) -> tuple[Volume, Volume | None, DeformParams]:
    """`sample_deformation` on ``ct`` (options as there) then `apply_deformation`: ``(ct, labels, params)``."""
    if labels is not None and isinstance(ct, Volume) and isinstance(labels, Volume):
        ct.check_same_grid(labels, names=("CT", "label map"))
    params = sample_deformation(ct, seed=seed, **kwargs)
    new_ct, new_labels = apply_deformation(ct, labels, params)
    return new_ct, new_labels, params


# ------------------------------------------------------------------ kernel
# Compiled on first call, then loaded from numba's on-disk cache. The helpers are inlined
# into the loop (numba IR inlining): called, they doubled the kernel's time.
@numba.njit(inline="always", **_JIT)
def _field_at(f, g0, g1, g2):
    """Trilinear interpolation of the ``(n0, n1, n2, 3)`` control field at grid coordinate g (clamped)."""
    n0, n1, n2 = f.shape[0], f.shape[1], f.shape[2]
    g0, g1, g2 = min(max(g0, 0.0), n0 - 1.0), min(max(g1, 0.0), n1 - 1.0), min(max(g2, 0.0), n2 - 1.0)
    a0, a1, a2 = min(int(g0), max(n0 - 2, 0)), min(int(g1), max(n1 - 2, 0)), min(int(g2), max(n2 - 2, 0))
    b0, b1, b2 = min(a0 + 1, n0 - 1), min(a1 + 1, n1 - 1), min(a2 + 1, n2 - 1)
    w0, w1, w2 = g0 - a0, g1 - a1, g2 - a2
    return (
        _mix(f, 0, a0, a1, a2, b0, b1, b2, w0, w1, w2),
        _mix(f, 1, a0, a1, a2, b0, b1, b2, w0, w1, w2),
        _mix(f, 2, a0, a1, a2, b0, b1, b2, w0, w1, w2),
    )


@numba.njit(inline="always", **_JIT)
def _mix(f, c, a0, a1, a2, b0, b1, b2, w0, w1, w2):
    """Component ``c`` of the trilinear blend of the cell between nodes ``a`` and ``b`` with weights ``w``."""
    v0, v1, v2 = 1.0 - w0, 1.0 - w1, 1.0 - w2
    lo = (f[a0, a1, a2, c] * v2 + f[a0, a1, b2, c] * w2) * v1 + (f[a0, b1, a2, c] * v2 + f[a0, b1, b2, c] * w2) * w1
    hi = (f[b0, a1, a2, c] * v2 + f[b0, a1, b2, c] * w2) * v1 + (f[b0, b1, a2, c] * v2 + f[b0, b1, b2, c] * w2) * w1
    return lo * v0 + hi * w0


@numba.njit(inline="always", **_JIT)
def _linear_at(a, x, y, z, fill):
    """Trilinear value at voxel coordinate (x, y, z); neighbours beyond the array count as ``fill``."""
    n0, n1, n2 = a.shape
    fx, fy, fz = math.floor(x), math.floor(y), math.floor(z)
    i, j, k = int(fx), int(fy), int(fz)
    wx, wy, wz = x - fx, y - fy, z - fz
    if 0 <= i < n0 - 1 and 0 <= j < n1 - 1 and 0 <= k < n2 - 1:  # the common case: all 8 inside
        c0 = (a[i, j, k] * (1 - wz) + a[i, j, k + 1] * wz) * (1 - wy)
        c0 += (a[i, j + 1, k] * (1 - wz) + a[i, j + 1, k + 1] * wz) * wy
        c1 = (a[i + 1, j, k] * (1 - wz) + a[i + 1, j, k + 1] * wz) * (1 - wy)
        c1 += (a[i + 1, j + 1, k] * (1 - wz) + a[i + 1, j + 1, k + 1] * wz) * wy
        return c0 * (1 - wx) + c1 * wx
    if i < -1 or j < -1 or k < -1 or i >= n0 or j >= n1 or k >= n2:
        return fill
    total = 0.0
    for c in range(8):
        ii, jj, kk = i + (c >> 2), j + ((c >> 1) & 1), k + (c & 1)
        w = (wx if c >> 2 else 1 - wx) * (wy if (c >> 1) & 1 else 1 - wy) * (wz if c & 1 else 1 - wz)
        inside = 0 <= ii < n0 and 0 <= jj < n1 and 0 <= kk < n2
        total += w * (a[ii, jj, kk] if inside else fill)
    return total


@numba.njit(parallel=True, **_JIT)
def _warp(src, lab, do_lab, lin, off, g_lin, g_off, field, fill, out, out_lab):
    """out[v] = src(s(v)) trilinear, out_lab[v] = lab(s(v)) nearest, s(v) = lin v + off + field(g_lin v + g_off)."""
    n0, n1, n2 = out.shape
    m0, m1, m2 = lab.shape
    for i in prange(n0):
        for j in range(n1):
            # Row start (k = 0) of the source voxel and control-grid coordinates; scalars only.
            s0 = off[0] + lin[0, 0] * i + lin[0, 1] * j
            s1 = off[1] + lin[1, 0] * i + lin[1, 1] * j
            s2 = off[2] + lin[2, 0] * i + lin[2, 1] * j
            h0 = g_off[0] + g_lin[0, 0] * i + g_lin[0, 1] * j
            h1 = g_off[1] + g_lin[1, 0] * i + g_lin[1, 1] * j
            h2 = g_off[2] + g_lin[2, 0] * i + g_lin[2, 1] * j
            for k in range(n2):
                d0, d1, d2 = _field_at(field, h0 + g_lin[0, 2] * k, h1 + g_lin[1, 2] * k, h2 + g_lin[2, 2] * k)
                x, y, z = s0 + lin[0, 2] * k + d0, s1 + lin[1, 2] * k + d1, s2 + lin[2, 2] * k + d2
                out[i, j, k] = _linear_at(src, x, y, z, fill)
                if do_lab:
                    r0, r1, r2 = math.floor(x + 0.5), math.floor(y + 0.5), math.floor(z + 0.5)
                    inside = 0 <= r0 < m0 and 0 <= r1 < m1 and 0 <= r2 < m2
                    out_lab[i, j, k] = lab[r0, r1, r2] if inside else 0
    return out

"""Procedural torso phantom: a CT in HU and its TotalSegmentator-named label map.

The anatomy is described in millimetres in the patient's frame, which is the
world frame (RAS+: +x towards the patient's Right, +y Anterior, +z Superior),
with the grid centred on world (0, 0, 0). Any shape and spacing therefore show
the same anatomy, cropped where the field of view is smaller than the body.

Coarse layout (z in mm): lung apices ~ +180, aortic arch ~ +105, carina ~ +75,
heart -30..+70, diaphragm domes ~ -15 (right) / -25 (left), liver down to
~ -130, kidneys ~ -50..-145. Vertebrae run from C7 (top) to L5, ~ 24 mm per
thoracic and ~ 29 mm per lumbar level, T1 starting at z ~ +190.

Randomness: all jitter (sizes, positions, HU, fissures, vertebral heights) is
drawn first into a plain parameter dict recorded in ``meta["sampled"]``; the
rendering is then deterministic apart from the noise, which comes from the same
`numpy.random.Generator` seeded by ``seed``. Global RNG state is never touched.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from synthgen.errors import InputError
from synthgen.memory import format_gib, memory_shortfall, shape_text
from synthgen.vocab import Vocabulary
from synthgen.volume import Volume, as_spacing_mm

__all__ = ["phantom"]

# Nominal geometry (mm): body half-axes, fat / wall thickness, cavity half-axes.
BODY_HALF_MM = (170.0, 120.0)
FAT_MM = 18.0
CAVITY_HALF_MM = (132.0, 84.0)
T1_TOP_Z_MM = 190.0
SPINE_Y_MM = -45.0  # centre of the vertebral bodies
CANAL_Y_MM = -75.0  # centre of the spinal canal

# HU per tissue: (with contrast, without contrast).
HU: dict[str, tuple[float, float]] = {
    "fat": (-100.0, -100.0),
    "muscle": (45.0, 45.0),
    "abdomen": (30.0, 30.0),
    "mediastinum": (-70.0, -70.0),
    "lung": (-860.0, -860.0),
    "liver": (100.0, 55.0),
    "spleen": (110.0, 50.0),
    "kidney": (180.0, 35.0),
    "myocardium": (50.0, 40.0),
    "blood": (250.0, 40.0),
    "vein": (160.0, 40.0),
    "stomach_wall": (60.0, 40.0),
    "fluid": (10.0, 10.0),
    "gas": (-1000.0, -1000.0),
    "cord": (35.0, 35.0),
    "csf": (10.0, 10.0),
    "trabecular": (250.0, 250.0),
    "cortical": (700.0, 700.0),
    "posterior_elements": (450.0, 450.0),
    "rib": (600.0, 600.0),
    "cartilage": (120.0, 120.0),
    "sternum": (350.0, 350.0),
}

# Organ ellipsoids: centre (x, y, z) mm, half-axes mm, rotation about z then x (degrees).
ORGANS: dict[str, dict[str, Any]] = {
    "liver": {"centre": (62.0, 5.0, -72.0), "radii": (78.0, 75.0, 60.0), "rot": (0.0, 0.0)},
    "liver_left_lobe": {"centre": (5.0, 35.0, -45.0), "radii": (65.0, 45.0, 32.0), "rot": (15.0, 0.0)},
    "spleen": {"centre": (-100.0, -32.0, -65.0), "radii": (24.0, 48.0, 45.0), "rot": (-35.0, 0.0)},
    "kidney_right": {"centre": (62.0, -50.0, -100.0), "radii": (25.0, 22.0, 45.0), "rot": (20.0, 10.0)},
    "kidney_left": {"centre": (-62.0, -50.0, -92.0), "radii": (25.0, 22.0, 45.0), "rot": (-20.0, 10.0)},
    "stomach": {"centre": (-45.0, 35.0, -55.0), "radii": (42.0, 32.0, 45.0), "rot": (20.0, 0.0)},
    "gallbladder": {"centre": (48.0, 42.0, -105.0), "radii": (14.0, 14.0, 32.0), "rot": (0.0, 25.0)},
    "heart": {"centre": (-22.0, 35.0, 22.0), "radii": (58.0, 45.0, 50.0), "rot": (-30.0, -15.0)},
}



# ------------------------------------------------------------------ public API
def phantom(
    *,
    shape: Sequence[int] = (128, 128, 96),
    spacing: float | Sequence[float] = (3.0, 3.0, 3.0),
    seed: int = 0,
    noise_hu: float = 12.0,
    contrast: bool = True,
) -> tuple[Volume, Volume]:
    """A procedural torso CT (HU, float32) and its label map (uint8 ids), on one RAS grid centred at 0.

    Args:
        shape: voxels along i, j, k (x, y, z).
        spacing: voxel size in mm along i, j, k (a single number means isotropic).
        seed: seeds the `numpy.random.Generator` drawing the anatomical jitter and the noise.
        noise_hu: standard deviation (HU) of the white Gaussian noise added to the CT.
        contrast: portal-venous contrast (enhanced blood, liver, spleen, kidneys) or none.

    Returns:
        ``(ct, labels)``: ``ct`` has units ``"HU"``; ``labels`` has ``kind="label"`` and
        `Vocabulary.default` (TotalSegmentator v2 names, ``body`` = 200). Both are
        marked synthetic and carry the parameters, including the sampled jitter, in ``meta``.
    """
    shp, sp = _check_args(shape, spacing, seed, noise_hu, contrast)
    rng = np.random.default_rng(seed)
    params = _sample_params(rng)
    grid = _Grid(shp, sp)
    canvas = _Canvas(grid, HU, contrast, params["hu_offset"])
    _render(canvas, params)
    ct = _finish_ct(canvas.hu, noise_hu, rng)

    meta = {
        "generator": "synthgen.phantom",
        "seed": int(seed),
        "shape": list(shp),
        "spacing_mm": list(sp),
        "noise_hu": float(noise_hu),
        "contrast": bool(contrast),
        "sampled": params,
    }
    common = {"source": "synthgen.phantom", "synthetic": True, "modality": "CT"}
    ct_vol = Volume(ct, grid.affine, kind="intensity", units="HU", meta=meta, **common)
    lab_vol = Volume(
        canvas.lab, grid.affine, kind="label", units="id", vocab=Vocabulary.default(), meta=copy.deepcopy(meta), **common
    )
    return ct_vol, lab_vol


# ------------------------------------------------------------------ validation
#: Peak memory of `phantom` per voxel, measured (13.5 B: HU and label canvases, block
#: coordinates, the noise), rounded up for the caller's copies.
BYTES_PER_VOXEL = 20
#: Voxel sizes that make a phantom: below, a torso needs more than 10^4 voxels a side; above, one voxel.
SPACING_RANGE_MM = (0.05, 100.0)


def _check_args(
    shape: Any, spacing: Any, seed: Any, noise_hu: Any, contrast: Any
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    try:
        shp = tuple(shape)
    except TypeError:
        shp = ()
    if len(shp) != 3 or not all(_is_int(s) and s > 0 for s in shp):
        raise InputError(f"shape must be 3 positive ints (voxels along i, j, k), got {shape!r}")

    need = math.prod(int(n) for n in shp) * BYTES_PER_VOXEL
    short = memory_shortfall(need)
    if short:
        raise InputError(f"shape {shape_text(shp)} would need about {format_gib(need)} to build, {short}; "
                         "use a smaller shape (and a larger spacing)")
    sp = tuple(float(v) for v in as_spacing_mm(spacing))
    if not all(SPACING_RANGE_MM[0] <= v <= SPACING_RANGE_MM[1] for v in sp):
        raise InputError(f"spacing must be 3 floats in {SPACING_RANGE_MM[0]:g}-{SPACING_RANGE_MM[1]:g} mm "
                         f"(the phantom torso is ~380 mm wide), got {sp}")
    if not _is_int(seed) or seed < 0:
        raise InputError(f"seed must be a non-negative int, got {seed!r}")
    if (isinstance(noise_hu, bool) or not isinstance(noise_hu, (int, float, np.number))
            or not 0 <= noise_hu <= 1000):
        raise InputError(f"noise_hu must be a number >= 0 (HU standard deviation, at most 1000), got {noise_hu!r}")
    if not isinstance(contrast, (bool, np.bool_)):
        raise InputError(f"contrast must be True or False, got {contrast!r}")
    return shp, sp  # type: ignore[return-value]


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


# ------------------------------------------------------------------ sampling
def _sample_params(rng: np.random.Generator) -> dict[str, Any]:
    """Every random anatomical choice, as plain JSON-ready numbers."""

    def u(scale: float) -> float:
        return float(rng.uniform(-scale, scale))

    organs = {}
    for name, o in ORGANS.items():
        s = 1.0 + u(0.05)
        organs[name] = {
            "centre": [c + u(4.0) for c in o["centre"]],
            "radii": [r * s for r in o["radii"]],
            "rot": [a + u(4.0) for a in o["rot"]],
        }
    levels = ["C7"] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
    heights = [(24.0 if lv[0] in "CT" else 29.0) * (1.0 + u(0.03)) for lv in levels]
    return {
        "body_half_mm": [BODY_HALF_MM[0] * (1 + u(0.03)), BODY_HALF_MM[1] * (1 + u(0.03))],
        "fat_mm": FAT_MM * (1 + u(0.15)),
        "organs": organs,
        "dome_z_mm": {"right": -15.0 + u(5.0), "left": -25.0 + u(5.0)},
        "fissure_z_mm": {"oblique_right": 30.0 + u(6.0), "oblique_left": 25.0 + u(6.0), "horizontal": 30.0 + u(6.0)},
        "vertebra_levels": levels,
        "vertebra_height_mm": heights,
        "rib_drop_mm": [d * (1 + u(0.1)) for d in (30, 40, 45, 50, 55, 58, 60, 60, 55, 50, 30, 20)],
        "hu_offset": {k: u(5.0) for k in ("liver", "spleen", "kidney", "blood", "muscle", "fat", "lung")},
    }


# ------------------------------------------------------------------ grid + canvas
class _Grid:
    """World coordinates (mm) of the voxel centres of a RAS grid centred at (0, 0, 0)."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
        self.shape = shape
        self.spacing = np.asarray(spacing)
        origin = -(np.asarray(shape) - 1) / 2.0 * self.spacing
        self.affine = np.diag([*spacing, 1.0])
        self.affine[:3, 3] = origin
        self.axes = [(origin[a] + np.arange(shape[a]) * spacing[a]).astype(np.float32) for a in range(3)]

    def box(self, lo: Sequence[float], hi: Sequence[float]) -> tuple[slice, slice, slice] | None:
        """Slices of the voxels whose centres lie in the world box [lo, hi]; None if empty."""
        sl = []
        for a in range(3):
            o, s = self.axes[a][0], self.spacing[a]
            i0 = max(int(np.ceil((lo[a] - o) / s)), 0)
            i1 = min(int(np.floor((hi[a] - o) / s)) + 1, self.shape[a])
            if i1 <= i0:
                return None
            sl.append(slice(i0, i1))
        return tuple(sl)  # type: ignore[return-value]

    def coords(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (n,1,1), (1,n,1), (1,1,n) world coordinates of a block."""
        x, y, z = (self.axes[a][sl[a]] for a in range(3))
        return x[:, None, None], y[None, :, None], z[None, None, :]


class _Canvas:
    """The HU and label arrays being painted, later paints winning."""

    def __init__(self, grid: _Grid, hu: dict[str, tuple[float, float]], contrast: bool, offset: dict) -> None:
        self.grid = grid
        self.hu = np.full(grid.shape, -1000.0, dtype=np.float32)
        self.lab = np.zeros(grid.shape, dtype=np.uint8)
        self.vocab = Vocabulary.default()
        self.tissue = {k: v[0 if contrast else 1] + offset.get(k, 0.0) for k, v in hu.items()}

    def paint(self, sl: tuple[slice, ...] | None, mask: np.ndarray, label: str | None, hu: Any) -> None:
        """Set ``label`` (a vocabulary name, or None to keep labels) and ``hu`` (tissue name or values) in mask."""
        if sl is None:
            return
        block_shape = tuple(s.stop - s.start for s in sl)
        mask = np.broadcast_to(mask, block_shape)
        if not mask.any():
            return
        if label is not None:
            self.lab[sl][mask] = self.vocab.id(label)
        values = self.tissue[hu] if isinstance(hu, str) else np.broadcast_to(hu, block_shape)[mask]
        self.hu[sl][mask] = values


def _rotation(z_deg: float, x_deg: float) -> np.ndarray:
    """Local -> world rotation: about x first, then about z."""
    cz, sz = np.cos(np.radians(z_deg)), np.sin(np.radians(z_deg))
    cx, sx = np.cos(np.radians(x_deg)), np.sin(np.radians(x_deg))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ rx


def _ellipsoid(grid: _Grid, organ: dict[str, Any]) -> tuple[tuple[slice, ...] | None, np.ndarray]:
    """Block and normalised squared radius (<= 1 inside) of a rotated ellipsoid."""
    c, r = np.asarray(organ["centre"]), np.asarray(organ["radii"])
    rot = _rotation(*organ["rot"])
    half = np.sqrt(((rot * r) ** 2).sum(axis=1))
    sl = grid.box(c - half, c + half)
    if sl is None:
        return None, np.zeros((0, 0, 0), dtype=np.float32)
    x, y, z = grid.coords(sl)
    d = (x - c[0], y - c[1], z - c[2])
    rho2 = sum(((rot[0, j] * d[0] + rot[1, j] * d[1] + rot[2, j] * d[2]) / r[j]) ** 2 for j in range(3))
    return sl, rho2.astype(np.float32)


def _taper(z: Any) -> Any:
    """Scale (0..1) of the thoracic cavity's half-axes at height z mm: 1 up to z = 60, 0 at the apex."""
    return np.sqrt(np.clip(1.0 - (np.clip(z - 60.0, 0.0, None) / 135.0) ** 2, 0.0, 1.0))


def _ellipse2d(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2


# ------------------------------------------------------------------ rendering
def _render(cv: _Canvas, p: dict[str, Any]) -> None:
    """Paint the structures in order; later paints win where they overlap."""
    g = cv.grid
    x2, y2 = g.axes[0][:, None], g.axes[1][None, :]
    sx, sy = p["body_half_mm"][0] / BODY_HALF_MM[0], p["body_half_mm"][1] / BODY_HALF_MM[1]
    cav_half = (CAVITY_HALF_MM[0] * sx, CAVITY_HALF_MM[1] * sy)
    dr, dl = p["dome_z_mm"]["right"], p["dome_z_mm"]["left"]
    # Diaphragm: the higher of two paraboloid domes; lower towards the posterior recesses.
    ydome = (y2 - 10.0) ** 2 / 180.0
    zd = np.maximum(dr - (x2 - 55.0) ** 2 / 300.0 - ydome, dl - (x2 + 55.0) ** 2 / 300.0 - ydome)
    cavity = _ellipse2d(x2, y2, 0.0, 0.0, *cav_half) <= 1.0
    ctx = {"zd": zd.astype(np.float32), "cavity": cavity, "cav_half": cav_half}
    _body(cv, p)
    _lungs(cv, p, ctx)
    _abdomen(cv, p, ctx)
    _mediastinum(cv, p, ctx)
    _spine(cv, p)
    _ribs(cv, p, ctx)


def _xy_block(sl: tuple[slice, ...], a2d: np.ndarray) -> np.ndarray:
    """The (nx, ny, 1) part of a full-grid 2D array under a block."""
    return a2d[sl[0], sl[1]][:, :, None]


def _body(cv: _Canvas, p: dict[str, Any]) -> None:
    """Elliptic cylinder: subcutaneous fat, muscle wall, soft-tissue interior."""
    g = cv.grid
    a, b = p["body_half_mm"]
    f = p["fat_mm"]
    sl = g.box((-a, -b, -1e9), (a, b, 1e9))
    if sl is None:
        return
    x, y, _ = g.coords(sl)
    rho = _ellipse2d(x, y, 0.0, 0.0, a, b)
    cv.paint(sl, rho <= 1.0, "body", "fat")
    cv.paint(sl, _ellipse2d(x, y, 0.0, 0.0, a - f, b - f) <= 1.0, None, "muscle")
    ca, cb = CAVITY_HALF_MM[0] * a / BODY_HALF_MM[0], CAVITY_HALF_MM[1] * b / BODY_HALF_MM[1]
    cv.paint(sl, _ellipse2d(x, y, 0.0, 0.0, ca, cb) <= 1.0, None, "abdomen")


def _lungs(cv: _Canvas, p: dict[str, Any], ctx: dict[str, Any]) -> None:
    """Thoracic cavity above the diaphragm, less the mediastinum, split into five lobes by fissures."""
    g = cv.grid
    ca, cb = ctx["cav_half"]
    sl = g.box((-ca, -cb, -120.0), (ca, cb, 200.0))
    if sl is None:
        return
    x, y, z = g.coords(sl)
    thorax = (_ellipse2d(x, y, 0.0, 0.0, ca, cb) <= _taper(z) ** 2) & (z > _xy_block(sl, ctx["zd"]) + 3.0)
    cv.paint(sl, thorax, None, "mediastinum")
    # Mediastinum: wider low down (heart), narrowing anteriorly to the junction behind the sternum.
    xm = -5.0
    half_width = (18.0 + 12.0 * np.clip((80.0 - z) / 60.0, 0.0, 1.0)) * np.clip((cb - y) / 50.0, 0.2, 1.0)
    lung = thorax & ~((np.abs(x - xm) < half_width) & (y > -50.0))
    fz = p["fissure_z_mm"]
    # Oblique fissures run from posterior-superior to anterior-inferior.
    upper_r = z >= fz["oblique_right"] - 0.625 * y
    upper_l = z >= fz["oblique_left"] - 0.625 * y
    right = x > xm
    hu = cv.tissue["lung"] + 35.0 * np.clip(-y / cb, 0.0, 1.0)  # dependent lung a little denser
    hu = np.broadcast_to(hu, thorax.shape)
    above_h = z >= fz["horizontal"]
    cv.paint(sl, lung & right & ~upper_r, "lung_lower_lobe_right", hu)
    cv.paint(sl, lung & right & upper_r & above_h, "lung_upper_lobe_right", hu)
    cv.paint(sl, lung & right & upper_r & ~above_h, "lung_middle_lobe_right", hu)
    cv.paint(sl, lung & ~right & ~upper_l, "lung_lower_lobe_left", hu)
    cv.paint(sl, lung & ~right & upper_l, "lung_upper_lobe_left", hu)


def _organ(cv: _Canvas, p: dict[str, Any], ctx: dict[str, Any], name: str, below: bool = True):
    """Block, radius and mask of an organ ellipsoid, clipped to the cavity (and below the diaphragm)."""
    sl, rho2 = _ellipsoid(cv.grid, p["organs"][name])
    if sl is None:
        return None, rho2, None
    mask = (rho2 <= 1.0) & _xy_block(sl, ctx["cavity"])
    if below:
        mask &= cv.grid.coords(sl)[2] < _xy_block(sl, ctx["zd"]) - 3.0
    return sl, rho2, mask


def _abdomen(cv: _Canvas, p: dict[str, Any], ctx: dict[str, Any]) -> None:
    sl, rho2, m = _organ(cv, p, ctx, "stomach")
    if sl is not None:
        zc, rz = p["organs"]["stomach"]["centre"][2], p["organs"]["stomach"]["radii"][2]
        z = cv.grid.coords(sl)[2]
        cv.paint(sl, m, "stomach", "stomach_wall")
        cv.paint(sl, m & (rho2 < 0.7) & (z < zc + 0.45 * rz), None, "fluid")
        cv.paint(sl, m & (rho2 < 0.7) & (z >= zc + 0.45 * rz), None, "gas")
    for lobe in ("liver", "liver_left_lobe"):  # right lobe + a left lobe reaching across the midline
        sl, _, m = _organ(cv, p, ctx, lobe)
        if sl is not None:
            x, y, _ = cv.grid.coords(sl)
            cv.paint(sl, m & ~((np.abs(x) < 30.0) & (y < -25.0)), "liver", "liver")
    sl, _, m = _organ(cv, p, ctx, "gallbladder")
    cv.paint(sl, m, "gallbladder", "fluid")
    sl, _, m = _organ(cv, p, ctx, "spleen")
    cv.paint(sl, m, "spleen", "spleen")
    for side, sign in (("right", 1.0), ("left", -1.0)):
        name = f"kidney_{side}"
        sl, _, m = _organ(cv, p, ctx, name)
        cv.paint(sl, m, name, "kidney")
        o = p["organs"][name]
        sinus = {**o, "centre": [o["centre"][0] - sign * 16.0, *o["centre"][1:]], "radii": [11.0, 9.0, 20.0]}
        sl, rho2 = _ellipsoid(cv.grid, sinus)
        if sl is not None:
            cv.paint(sl, (rho2 <= 1.0) & (cv.lab[sl] == cv.vocab.id(name)), "body", "fat")
    _tube(cv, (22.0, -12.0), 11.0, (-250.0, 5.0), "inferior_vena_cava", "vein")


def _tube(cv: _Canvas, xy: tuple[float, float], r: float, zr: tuple[float, float], label: str, hu: str) -> None:
    """A vertical cylinder of radius ``r`` mm at ``xy`` between heights ``zr``."""
    sl = cv.grid.box((xy[0] - r, xy[1] - r, zr[0]), (xy[0] + r, xy[1] + r, zr[1]))
    if sl is not None:
        x, y, _ = cv.grid.coords(sl)
        cv.paint(sl, (x - xy[0]) ** 2 + (y - xy[1]) ** 2 <= r * r, label, hu)


def _mediastinum(cv: _Canvas, p: dict[str, Any], ctx: dict[str, Any]) -> None:
    """Heart (myocardium + blood pool), aorta (ascending, arch, descending), oesophagus, trachea, sternum."""
    sl, rho2, m = _organ(cv, p, ctx, "heart", below=False)
    if sl is not None:
        m &= cv.grid.coords(sl)[2] > _xy_block(sl, ctx["zd"])
        wall = 1.0 - 10.0 / min(p["organs"]["heart"]["radii"])
        cv.paint(sl, m, "heart", "myocardium")
        cv.paint(sl, m & (rho2 < wall**2), None, "blood")
    _tube(cv, (0.0, 32.0), 13.0, (p["organs"]["heart"]["centre"][2], 80.0), "aorta", "blood")
    _aortic_arch(cv, (0.0, 32.0), (-30.0, -20.0), 80.0, 12.0)
    # Descending aorta drifts towards the midline below the diaphragm.
    g = cv.grid
    sl = g.box((-45.0, -35.0, -400.0), (0.0, -5.0, 80.0))
    if sl is not None:
        x, y, z = g.coords(sl)
        xc = np.interp(z, (-150.0, -60.0, 80.0), (-12.0, -25.0, -30.0)).astype(np.float32)
        yc = np.interp(z, (-150.0, -60.0, 80.0), (-16.0, -20.0, -20.0)).astype(np.float32)
        cv.paint(sl, (x - xc) ** 2 + (y - yc) ** 2 <= 144.0, "aorta", "blood")
    _tube(cv, (0.0, -18.0), 7.0, (-45.0, 400.0), "esophagus", "muscle")
    _tube(cv, (6.0, 2.0), 9.0, (75.0, 400.0), "trachea", "muscle")
    _tube(cv, (6.0, 2.0), 7.0, (75.0, 400.0), "trachea", "gas")
    sl = g.box((-20.0, 85.0, -18.0), (20.0, 99.0, 150.0))
    if sl is not None:
        x, y, _ = g.coords(sl)
        rho = _ellipse2d(x, y, 0.0, 92.0, 20.0, 7.0)
        cv.paint(sl, rho <= 1.0, "sternum", "cortical")
        cv.paint(sl, rho <= 0.45, None, "sternum")


def _aortic_arch(cv: _Canvas, a: tuple[float, float], d: tuple[float, float], z0: float, r: float) -> None:
    """Upper half torus joining the ascending (a) and descending (d) aorta above height z0."""
    a_, d_ = np.asarray(a), np.asarray(d)
    c = (a_ + d_) / 2.0
    big = float(np.linalg.norm(a_ - d_) / 2.0)
    e1 = (a_ - d_) / (2.0 * big)
    n = np.array([e1[1], -e1[0]])  # horizontal normal of the arch plane
    reach = big + r
    sl = cv.grid.box((c[0] - reach, c[1] - reach, z0), (c[0] + reach, c[1] + reach, z0 + reach))
    if sl is None:
        return
    x, y, z = cv.grid.coords(sl)
    u = (x - c[0]) * e1[0] + (y - c[1]) * e1[1]
    w = (x - c[0]) * n[0] + (y - c[1]) * n[1]
    v = z - z0
    dist2 = (np.sqrt(u**2 + v**2) - big) ** 2 + w**2
    cv.paint(sl, (dist2 <= r * r) & (v >= 0), "aorta", "blood")


def _vertebra_levels(p: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(level, z_bottom, z_top) from C7 down to L5; T1's top sits at T1_TOP_Z_MM."""
    heights = p["vertebra_height_mm"]
    top = T1_TOP_Z_MM + heights[0]
    out = []
    for level, h in zip(p["vertebra_levels"], heights):
        out.append((level, top - h, top))
        top -= h
    return out


def _spine(cv: _Canvas, p: dict[str, Any]) -> None:
    """Paraspinal muscles, vertebrae (body with cortical shell + posterior elements), canal and cord."""
    g = cv.grid
    for side, sign in (("right", 1.0), ("left", -1.0)):
        sl = g.box((sign * 34.0 - 22.0, -103.0, -1e9), (sign * 34.0 + 22.0, -77.0, 1e9))
        if sl is not None:
            x, y, _ = g.coords(sl)
            cv.paint(sl, _ellipse2d(x, y, sign * 34.0, -90.0, 22.0, 13.0) <= 1.0, f"autochthon_{side}", "muscle")
    levels = _vertebra_levels(p)
    for level, zb, zt in levels:
        lumbar = level.startswith("L")
        ax, ay = (26.0, 19.0) if lumbar else (17.0, 12.0) if level == "C7" else (22.0, 17.0)
        disc = 7.0 if lumbar else 4.0
        z0, z1 = zb + disc / 2.0, zt - disc / 2.0
        sl = g.box((-46.0, -104.0, z0), (46.0, SPINE_Y_MM + ay, z1))
        if sl is None:
            continue
        x, y, z = g.coords(sl)
        name = f"vertebrae_{level}"
        mid = np.abs(z - (z0 + z1) / 2.0) <= 0.35 * (z1 - z0)
        ring = np.hypot(x, y - CANAL_Y_MM)
        cv.paint(sl, (ring >= 8.0) & (ring <= 15.0) & (y < SPINE_Y_MM), name, "posterior_elements")
        cv.paint(sl, mid & (np.abs(x) < 4.0) & (y < -85.0) & (y > -100.0), name, "posterior_elements")
        tp = (np.abs(y - CANAL_Y_MM + 2.0) < 5.0) & (np.abs(x) > 10.0) & (np.abs(x) < (45.0 if lumbar else 38.0))
        cv.paint(sl, mid & tp, name, "posterior_elements")
        rho = _ellipse2d(x, y, 0.0, SPINE_Y_MM, ax, ay)
        cv.paint(sl, rho <= 1.0, name, "cortical")
        inner = (rho <= (1.0 - 3.0 / ay) ** 2) & (z > z0 + 2.0) & (z < z1 - 2.0)
        cv.paint(sl, inner, None, "trabecular")
    bottom = levels[-1][1]
    l1_bottom = next(zb for lv, zb, _ in levels if lv == "L1")
    _tube(cv, (0.0, CANAL_Y_MM), 8.0, (bottom, 400.0), "body", "csf")
    _tube(cv, (0.0, CANAL_Y_MM), 5.0, (l1_bottom, 400.0), "spinal_cord", "cord")


def _ribs(cv: _Canvas, p: dict[str, Any], ctx: dict[str, Any]) -> None:
    """Twelve ribs a side as curved rods; ribs 1-10 continue as costal cartilage towards the sternum."""
    g = cv.grid
    x2, y2 = g.axes[0][:, None].astype(np.float64), g.axes[1][None, :].astype(np.float64)
    z = g.axes[2][None, :]
    ca, cb = ctx["cav_half"]
    t_r, t_z = 4.5, 6.0  # half thickness (in the axial plane) and half height of a rib, mm
    levels = {lv: (zb + zt) / 2.0 for lv, zb, zt in _vertebra_levels(p)}
    cart = cv.vocab.id("costal_cartilages")
    for side, sign in (("right", 1.0), ("left", -1.0)):
        xs = sign * x2  # > 0 on this side
        phi = np.degrees(np.arctan2(y2, xs))  # -90 posterior, 0 lateral, +90 anterior
        radius = np.hypot(xs, y2) + 1e-6
        for k in range(1, 13):
            z_head = levels[f"T{k}"]
            a, b = ca * _taper(z_head) + 6.0, cb * _taper(z_head) + 4.0  # just outside the lung
            rr = np.sqrt((xs / a) ** 2 + (y2 / b) ** 2)
            dr = (rr - 1.0) * radius / np.maximum(rr, 1e-6)  # distance from the centreline along the ray
            phi0 = -76.0
            bone_end = 55.0 if k <= 7 else 45.0 if k <= 10 else 5.0 if k == 11 else -20.0
            end = float(np.degrees(np.arccos(16.0 / a))) if k <= 7 else 65.0 if k <= 10 else bone_end
            ii, jj = np.nonzero((np.abs(dr) <= t_r) & (phi >= phi0) & (phi <= end) & (xs > 0))
            if ii.size == 0:
                continue
            frac = (phi[ii, jj] - phi0) / (end - phi0)
            zc = z_head - p["rib_drop_mm"][k - 1] * frac**1.5
            inside = (dr[ii, jj][:, None] / t_r) ** 2 + ((z - zc[:, None]) / t_z) ** 2 <= 1.0
            pix, kk = np.nonzero(inside)
            if pix.size == 0:
                continue
            i, j = ii[pix], jj[pix]
            bone = phi[i, j] <= bone_end
            cv.lab[i, j, kk] = np.where(bone, cv.vocab.id(f"rib_{side}_{k}"), cart)
            cv.hu[i, j, kk] = np.where(bone, cv.tissue["rib"], cv.tissue["cartilage"])


def _finish_ct(hu: np.ndarray, noise_hu: float, rng: np.random.Generator) -> np.ndarray:
    """Soften edges (partial volume), add white noise, clip at the scanner floor (-1024 HU)."""
    from scipy.ndimage import gaussian_filter

    out = gaussian_filter(hu, sigma=0.6, mode="nearest")
    if noise_hu > 0:
        out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(noise_hu)
    np.maximum(out, -1024.0, out=out)
    return out.astype(np.float32, copy=False)

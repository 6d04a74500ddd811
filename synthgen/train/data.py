"""Training data for the latent diffusion stack: CT + label-map pairs, augmented, cached.

Sources (the ``data:`` section of configs/train_*.yaml):

- ``example``: the example chest CT (`synthgen.data.example_ct`), ``variants`` times, each with
  procedural lesions inserted by the lesion engine (types, organs and sizes drawn per variant),
  resampled to a spacing drawn from ``spacings`` and deformed by `random_deformation`;
- ``phantom``: procedural torsos (`synthgen.data.phantom`), one per seed;
- ``folders``: user datasets of CT + label pairs (nnU-Net ``imagesTr``/``labelsTr``, or
  ``ct``/``labels`` folders with matching file names), resampled and deformed like the example.

Each variant is one `Sample` (HU int16 + default-vocabulary label ids + spacing + caption +
lesion records), written once to ``<run>/cache/`` as .npz and reused by every stage and
resume. Training draws random crops from them; captions come from
`synthgen.text.captions.caption` and are parsed back into the spec the encoder embeds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from synthgen.anatomy.deform import random_deformation
from synthgen.anatomy.ops import body_mask, to_default_ids
from synthgen.data import example_ct, phantom
from synthgen.errors import InputError
from synthgen.files.atomic import atomic_path
from synthgen.io import read_pair
from synthgen.lesions.insert import insert_lesions
from synthgen.lesions.spec import LesionSpec
from synthgen.text.captions import caption
from synthgen.vocab import Vocabulary

#: Lesions drawn for the example variants: (type, organ, diameter range mm).
_LESION_MENU = (
    ("tumor", "liver", (15.0, 45.0)), ("cyst", "liver", (10.0, 30.0)), ("metastasis", "liver", (10.0, 25.0)),
    ("nodule_solid", "lung", (6.0, 20.0)), ("nodule_ground_glass", "lung", (8.0, 20.0)),
    ("cyst", "kidney", (10.0, 20.0)), ("tumor", "spleen", (12.0, 25.0)),
)


@dataclasses.dataclass
class DataConfig:
    example_variants: int = 12
    phantoms: int = 6
    folders: list[str] = dataclasses.field(default_factory=list)
    spacings: list[float] = dataclasses.field(default_factory=lambda: [3.0, 4.0, 5.0])
    lesions_per_variant: list[int] = dataclasses.field(default_factory=lambda: [0, 3])
    deform_scale: float = 0.03
    seed: int = 0


@dataclasses.dataclass
class Sample:
    hu: np.ndarray  # int16 (I, J, K)
    labels: np.ndarray  # uint8 default-vocabulary ids, body = 200
    spacing: np.ndarray  # (3,) mm
    caption: str
    lesions: list[dict]
    source: str

    def save(self, path: Path) -> None:
        with atomic_path(path, overwrite=True) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, hu=self.hu, labels=self.labels, spacing=self.spacing,
                                meta=np.array(json.dumps({"caption": self.caption, "lesions": self.lesions,
                                                          "source": self.source})))

    @classmethod
    def load(cls, path: Path) -> Sample:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return cls(hu=z["hu"], labels=z["labels"], spacing=z["spacing"], caption=meta["caption"],
                       lesions=meta["lesions"], source=meta["source"])


def _finish(ct, labels, *, spacing: float, rng: np.random.Generator, deform_scale: float,
            lesions: list[dict], source: str, phase: str | None) -> Sample:
    ct = ct.resample(spacing)
    labels = labels.resample_to(ct) if hasattr(labels, "resample_to") else labels.resample(spacing)
    if deform_scale > 0:
        ct, labels, _ = random_deformation(ct, labels, seed=int(rng.integers(2**31)), scale=deform_scale)
    ids = to_default_ids(labels)
    body = body_mask(ct)
    ids[(ids == 0) & body] = Vocabulary.default().id("body")
    hu = np.clip(np.rint(ct.numpy()), -1024, 3071).astype(np.int16)
    lab_default = labels.replace(array=ids, vocab=Vocabulary.default())
    text = caption(lab_default, lesions=lesions, phase=phase, rng=rng)
    return Sample(hu=hu, labels=ids, spacing=np.asarray(ct.spacing, dtype=np.float32), caption=text,
                  lesions=lesions, source=source)


def _with_lesions(ct, labels, rng: np.random.Generator, n: int, *, seed: int):
    records: list[dict] = []
    for k in range(n):
        ltype, organ, (lo, hi) = _LESION_MENU[int(rng.integers(len(_LESION_MENU)))]
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


def build_cache(cfg: DataConfig, cache_dir: Path, *, progress: bool = True) -> list[Path]:
    """Write every missing variant of ``cfg`` to ``cache_dir`` (existing ones are kept); returns
    the files in order. Deterministic in ``cfg.seed``; a killed run resumes where it stopped."""
    from tqdm.auto import tqdm

    cache_dir.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, int]] = [("example", k) for k in range(cfg.example_variants)]
    jobs += [("phantom", k) for k in range(cfg.phantoms)]
    for f in cfg.folders:
        jobs += [(f"folder:{f}", k) for k in range(len(_folder_pairs(f)))]
    files = [cache_dir / f"{k:03d}_{src.split(':')[0]}_{i:03d}.npz" for k, (src, i) in enumerate(jobs)]
    todo = [(f, j) for f, j in zip(files, jobs) if not f.exists()]
    example = None
    for path, (src, i) in tqdm(todo, desc="training data", disable=not progress or not todo):
        rng = np.random.default_rng([cfg.seed, len(src), i])
        spacing = float(rng.choice(cfg.spacings))
        if src == "example":
            if example is None:

                example = example_ct()
            ct, labels = example
            n = int(rng.integers(cfg.lesions_per_variant[0], cfg.lesions_per_variant[1] + 1))
            ct, labels, records = _with_lesions(ct, labels, rng, n, seed=cfg.seed * 1000 + i)
            sample = _finish(ct, labels, spacing=spacing, rng=rng, deform_scale=cfg.deform_scale,
                             lesions=records, source=f"example#{i}", phase="arterial")
        elif src == "phantom":

            shape = [round(380 / spacing), round(300 / spacing), round(340 / spacing)]
            ct, labels = phantom(shape=shape, spacing=[spacing] * 3, seed=cfg.seed * 1000 + i)
            sample = _finish(ct, labels, spacing=spacing, rng=rng, deform_scale=0.0, lesions=[],
                             source=f"phantom#{i}", phase="portal_venous")
        else:

            img, lab = _folder_pairs(src.split(":", 1)[1])[i]
            ct, labels = read_pair(img, lab)
            sample = _finish(ct, labels, spacing=spacing, rng=rng, deform_scale=cfg.deform_scale,
                             lesions=[], source=f"{img.name}", phase=None)
        sample.save(path)
    return files

"""The shipped demo task: a liver-lesion segmentation set built from the example CT.

It lets ``synthgen expand`` and ``synthgen evaluate`` run with no user data. Each case is the
example scan's liver region at ``spacing`` mm, deformed with its own seed (smooth elastic field
plus a small affine) and cropped at a jittered position, with procedural lesions inserted:

- ``liver_cyst`` (common): one or two cysts in most cases;
- ``liver_tumor`` (rare): one tumour in a small share of the cases, some with a
  necrotic core of random size, so the "real" tumours vary more than the plain ones the expander makes;
- ``liver``: the organ; everything else is background.

It is written as an nnU-Net v2 dataset (``imagesTr``, ``labelsTr``, ``dataset.json``). Be clear
what it is: every case comes from one real scan and every lesion is procedural, so a gain measured
on it shows that more rare-class cases help the downstream model and that the plumbing works
(split, sampling, metrics); it says nothing about the realism of synthetic lesions against real
ones. Every file is marked synthetic.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from synthgen.anatomy.deform import random_deformation
from synthgen.data import example_ct
from synthgen.errors import InputError
from synthgen.files.atomic import write_text
from synthgen.io import write
from synthgen.lesions.insert import insert_lesions
from synthgen.lesions.spec import LesionSpec

CLASSES = {0: "background", 1: "liver", 2: "liver_cyst", 3: "liver_tumor"}


@dataclasses.dataclass
class DemoConfig:
    """configs/demo_dataset.yaml: the demo task's size and make-up."""

    cases: int = 60
    tumour_cases: int = 12  # the rare class
    cyst_fraction: float = 0.8  # share of cases with cysts
    spacing: float = 4.0
    size: list[int] = dataclasses.field(default_factory=lambda: [48, 48, 40])
    cyst_mm: list[float] = dataclasses.field(default_factory=lambda: [8.0, 22.0])
    tumour_mm: list[float] = dataclasses.field(default_factory=lambda: [14.0, 30.0])
    deform_scale: float = 0.06
    seed: int = 0
    name: str = "Dataset900_SynthgenLiverDemo"


def _liver_region(spacing: float):
    """The example CT and labels resampled to ``spacing``, and the liver's centre in mm."""

    ct, labels = example_ct()
    ct = ct.resample(spacing)
    labels = labels.resample_to(ct)
    liver = np.argwhere(labels.numpy() == labels.vocab.id("liver"))
    return ct, labels, ct.voxel_to_world(liver.mean(0))


def _case(ct, labels, centre_mm, cfg: DemoConfig, k: int, *, cysts: int, tumour: bool):
    rng = np.random.default_rng([cfg.seed, k])
    size = np.asarray(cfg.size)
    half = size * cfg.spacing / 2
    centre = centre_mm + rng.uniform(-10, 10, 3)
    lo, hi = np.minimum(centre - half - 20, centre + half + 20), np.maximum(centre - half - 20, centre + half + 20)
    c, lab = ct.crop(lo, hi), labels.crop(lo, hi)
    c, lab, _ = random_deformation(c, lab, seed=int(rng.integers(2**31)), scale=cfg.deform_scale)
    ijk = np.rint(c.world_to_voxel(centre)).astype(int) - size // 2
    ijk = np.clip(ijk, 0, np.asarray(c.shape) - size)
    c, lab = c.crop_voxels(ijk, ijk + size), lab.crop_voxels(ijk, ijk + size)
    specs = []
    if tumour:
        specs.append(LesionSpec(type="tumor", organ="liver", diameter_mm=float(rng.uniform(*cfg.tumour_mm)),
                                seed=int(rng.integers(2**31)),
                                necrosis=float(rng.choice([0.0, 0.0, 0.3, 0.5]))))
    if cysts:
        specs.append(LesionSpec(type="cyst", organ="liver", diameter_mm=tuple(cfg.cyst_mm), count=cysts,
                                seed=int(rng.integers(2**31))))
    if specs:
        res = insert_lesions(c, lab, specs)
        c, lab = res.ct, res.labels
    arr, v = lab.numpy(), lab.vocab
    out = np.zeros(arr.shape, np.uint8)
    out[arr == v.id("liver")] = 1
    for i in np.unique(arr):
        name = v.name(int(i)) if int(i) in v else ""
        if name == "liver_cyst":
            out[arr == i] = 2
        elif name == "liver_tumor":
            out[arr == i] = 3
    return c, lab.replace(array=out, vocab=None)


def write_demo_dataset(out: str | Path, cfg: DemoConfig | None = None, *, overwrite: bool = False,
                       progress: bool = True) -> Path:
    """Write the demo dataset into ``out/<cfg.name>`` and return that folder."""
    from tqdm.auto import tqdm


    cfg = cfg or DemoConfig()
    if not 0 < cfg.tumour_cases < cfg.cases:
        raise InputError(f"demo: tumour_cases must be between 1 and cases-1, got {cfg.tumour_cases}")
    root = Path(out) / cfg.name
    if (root / "dataset.json").exists() and not overwrite:
        raise InputError(f"{root} already holds a dataset; choose another output folder or pass --overwrite")
    ct, labels, centre = _liver_region(cfg.spacing)
    rng = np.random.default_rng(cfg.seed)
    tumour = np.zeros(cfg.cases, bool)
    tumour[rng.permutation(cfg.cases)[: cfg.tumour_cases]] = True
    cysts = np.where(rng.random(cfg.cases) < cfg.cyst_fraction, rng.integers(1, 3, cfg.cases), 0)
    for k in tqdm(range(cfg.cases), desc="demo dataset", disable=not progress):
        c, lab = _case(ct, labels, centre, cfg, k, cysts=int(cysts[k]), tumour=bool(tumour[k]))
        meta = {"generator": "synthgen demo dataset (example CT, procedural lesions)"}
        write(c.replace(synthetic=True, meta=meta), root / "imagesTr" / f"liver_{k:03d}_0000.nii.gz",
              overwrite=overwrite)
        write(lab.replace(synthetic=True, meta=meta), root / "labelsTr" / f"liver_{k:03d}.nii.gz",
              overwrite=overwrite)
    doc = {"name": cfg.name, "description": "synthgen demo: liver cysts (common) and tumours (rare) inserted into "
           "deformed crops of one real contrast CT; all cases are synthetic",
           "channel_names": {"0": "CT"}, "labels": {n: i for i, n in CLASSES.items()},
           "numTraining": cfg.cases, "file_ending": ".nii.gz", "synthgen_demo": dataclasses.asdict(cfg)}
    write_text(root / "dataset.json", json.dumps(doc, indent=1) + "\n", overwrite=True)
    return root

"""Adult body habitus and organ size: how a generated patient differs in size from the scan its
label map is drawn from.

A `Habitus` is drawn per seed (`draw_habitus`): sex and age (the prompt's when it gives them),
height, body-mass index, and from published norms the patient's total lung capacity and liver
volume with their scatter. `scale_anatomy` then resizes a label map (and its CT) to it:

1. the torso frame (everything) scaled about the lungs' centre by ``(TLC / TLC_ref)^(1/3)``;
2. the liver scaled about its own centre, so that its volume, after (1), is the drawn one;

and `adjust_fat` grows or thins the subcutaneous fat with the BMI (the ``body`` class at the
skin moves by `FAT_MM_PER_BMI` per BMI unit above or below the reference).

The source scan is taken as a reference adult (`REFERENCE`: the norms' mean of both sexes):
its own height, sex and weight are not known.

Norms (all adult, rounded; the scatter is the residual standard deviation about the formula):

* height: men 176 +- 7 cm, women 163 +- 6.5 cm (NCD Risk Factor Collaboration, "A century of
  trends in adult human height", eLife 2016; high-income Western countries, recent cohorts);
* BMI: 27 +- 5 kg/m^2, log-normal (NCD-RisC, Lancet 2017);
* total lung capacity: men ``7.99 H - 7.08`` L (RSD 0.70 L), women ``6.60 H - 5.79`` L (RSD 0.60 L),
  H in metres (ECSC/ERS reference equations, Quanjer et al., Eur Respir J 1993;6 Suppl 16:5-40);
* liver volume: ``1267.28 BSA - 794.41`` mL (Vauthey et al., Liver Transpl 2002;8:233-240), BSA
  by Mosteller, with 15 % residual scatter, and 0.4 % less per year of age above 40 (liver
  volume falls by about a third between youth and old age: Wynne et al., Hepatology 1989;9:297-301).

With the sex not given, lung volumes across draws have a coefficient of variation of about 20 %
and liver volumes about 20 %, as adults do.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from synthgen.errors import InputError
from synthgen.volume import Volume

__all__ = ["FAT_MM_PER_BMI", "REFERENCE", "Habitus", "adjust_fat", "draw_habitus", "liver_volume_ml",
           "scale_anatomy", "total_lung_capacity_l"]

HEIGHT_CM = {"M": (176.0, 7.0), "F": (163.0, 6.5)}
BMI_MEAN, BMI_SD = 27.0, 5.0
LIVER_RSD = 0.15
#: mm of subcutaneous fat per BMI unit away from the reference.
FAT_MM_PER_BMI = 1.5


def total_lung_capacity_l(height_cm: float, sex: str) -> float:
    """ECSC/ERS 1993 predicted total lung capacity (litres)."""
    h = height_cm / 100.0
    return 7.99 * h - 7.08 if sex == "M" else 6.60 * h - 5.79


def liver_volume_ml(height_cm: float, weight_kg: float, age: float) -> float:
    """Vauthey 2002 standard liver volume (mL) from the Mosteller BSA, less 0.4 % per year above 40."""
    bsa = np.sqrt(height_cm * weight_kg / 3600.0)
    return float((1267.28 * bsa - 794.41) * (1.0 - 0.004 * max(0.0, age - 40.0)))


@dataclasses.dataclass(frozen=True)
class Habitus:
    """One adult: ``sex`` ("M"/"F"), ``age`` (years), ``height_cm``, ``bmi``, and the drawn
    ``lung_l`` (total lung capacity) and ``liver_ml``."""

    sex: str
    age: float
    height_cm: float
    bmi: float
    lung_l: float
    liver_ml: float

    @property
    def weight_kg(self) -> float:
        return self.bmi * (self.height_cm / 100.0) ** 2

    def to_dict(self) -> dict:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


def _reference() -> Habitus:
    h = {s: HEIGHT_CM[s][0] for s in "MF"}
    lung = float(np.mean([total_lung_capacity_l(h[s], s) for s in "MF"]))
    liver = float(np.mean([liver_volume_ml(h[s], BMI_MEAN * (h[s] / 100) ** 2, 40.0) for s in "MF"]))
    return Habitus(sex="?", age=50.0, height_cm=float(np.mean(list(h.values()))), bmi=BMI_MEAN, lung_l=lung,
                   liver_ml=liver)


#: The adult a source scan is taken to be.
REFERENCE = _reference()


def draw_habitus(rng: np.random.Generator, *, sex: str | None = None, age: float | None = None) -> Habitus:
    """A random adult (the given ``sex``/``age`` kept): height, BMI, lung and liver volume."""
    if sex is not None and sex not in HEIGHT_CM:
        raise InputError(f"sex must be 'M' or 'F', got {sex!r}")
    if age is not None and not (18 <= float(age) <= 110):
        raise InputError(f"age must be an adult's, 18-110 years, got {age!r}")
    sex = sex if sex is not None else str(rng.choice(["M", "F"]))
    age = float(age) if age is not None else float(rng.uniform(25, 80))
    mu, sd = HEIGHT_CM[sex]
    height = float(np.clip(rng.normal(mu, sd), mu - 3 * sd, mu + 3 * sd))
    s_log = np.sqrt(np.log(1 + (BMI_SD / BMI_MEAN) ** 2))
    bmi = float(np.clip(BMI_MEAN * np.exp(rng.normal(-s_log**2 / 2, s_log)), 17.0, 45.0))
    rsd = 0.70 if sex == "M" else 0.60
    lung = float(max(2.0, total_lung_capacity_l(height, sex) + rng.normal(0, rsd)))
    liver = liver_volume_ml(height, bmi * (height / 100) ** 2, age) * float(np.clip(1 + rng.normal(0, LIVER_RSD),
                                                                                      0.55, 1.5))
    return Habitus(sex=sex, age=age, height_cm=height, bmi=bmi, lung_l=lung, liver_ml=liver)


def _names_mask(labels: Volume, prefixes: tuple[str, ...]) -> np.ndarray:
    vocab = labels.vocab
    arr = np.asarray(labels.numpy())
    ids = [int(i) for i in np.unique(arr) if int(i) > 0 and vocab is not None and int(i) in vocab
           and vocab.name(int(i)).startswith(prefixes)]
    return np.isin(arr, ids)


def scale_anatomy(ct: Volume, labels: Volume, habitus: Habitus, *, reference: Habitus = REFERENCE,
                  taper_mm: float = 30.0) -> tuple[Volume, Volume, dict]:
    """``ct`` (trilinear, air beyond) and ``labels`` (nearest) resized to ``habitus`` against
    ``reference`` (see the module docstring), on their own grid; and the factors applied."""
    ct.check_same_grid(labels, names=("CT", "label map"))
    sp = np.asarray(labels.spacing, float)
    lab = np.asarray(labels.numpy())
    shape = lab.shape
    lungs = _names_mask(labels, ("lung",))
    liver = _names_mask(labels, ("liver",)) & ~_names_mask(labels, ("liver_",))
    # the torso's frame follows the lungs; a scan without lungs (the head) keeps its size
    frame = (habitus.lung_l / reference.lung_l) ** (1 / 3) if lungs.any() else 1.0
    centre = np.argwhere(lungs).mean(0) if lungs.any() else (np.asarray(shape) - 1) / 2.0
    grid = np.indices(shape, dtype=np.float32)
    # 1. the frame: output voxel x samples y = c + (x - c) / frame
    y = [centre[a] + (grid[a] - centre[a]) / frame for a in range(3)]
    info = {"habitus": habitus.to_dict(), "frame_scale": round(float(frame), 4)}
    # 2. the liver, about its centre: y -> z = y + (1/k - 1)(y - c_l) w(y), w = 1 inside the liver
    # and up to the distance it grows, tapering to 0 over taper_mm
    if liver.any():
        # the source liver is the reference's: after the frame it is frame^3 times that, and k^3 more
        k = float(np.clip((habitus.liver_ml / reference.liver_ml / frame**3) ** (1 / 3), 0.7, 1.4))
        c_l = np.argwhere(liver).mean(0)
        r_eq = (3 * liver.sum() * float(np.prod(sp)) / (4 * np.pi)) ** (1 / 3)
        reach = max(k - 1.0, 0.0) * r_eq + 2 * float(sp.max())
        dist = ndimage.distance_transform_edt(~liver, sampling=sp)
        w = np.clip(1.0 - (dist - reach) / taper_mm, 0.0, 1.0)
        w = 0.5 - 0.5 * np.cos(np.pi * w)
        w_at = ndimage.map_coordinates(w.astype(np.float32), y, order=1, mode="nearest")
        y = [y[a] + (1.0 / k - 1.0) * (y[a] - c_l[a]) * w_at for a in range(3)]
        info["liver_scale"] = round(k, 4)
    new_lab = ndimage.map_coordinates(lab, y, order=0, mode="constant", cval=0).astype(lab.dtype)
    new_ct = ndimage.map_coordinates(np.asarray(ct.numpy(), np.float32), y, order=1, mode="constant", cval=-1024.0)
    return ct.with_array(new_ct), labels.with_array(new_lab), info


def adjust_fat(labels: Volume, habitus: Habitus, *, reference: Habitus = REFERENCE) -> tuple[Volume, float]:
    """``labels`` (with a ``body`` class) with the subcutaneous fat grown or thinned by
    `FAT_MM_PER_BMI` mm per BMI unit of ``habitus`` above or below ``reference`` (clipped to
    -10..+25 mm): outside voxels within that distance of the body become ``fat`` (``body`` when
    the vocabulary has no fat), or ``fat``/``body`` voxels within it of the outside become
    outside. Returns the map and the millimetres."""
    sp = np.asarray(labels.spacing, float)
    fat_mm = float(np.clip(FAT_MM_PER_BMI * (habitus.bmi - reference.bmi), -10.0, 25.0))
    body_id = _class_id(labels, "body")
    if body_id is None:
        raise InputError("adjust_fat needs a label map with a 'body' class")
    lab = np.asarray(labels.numpy()).copy()
    if abs(fat_mm) < 0.5 * sp.min():
        return labels, fat_mm
    fat_id = _class_id(labels, "fat")
    soft = (body_id,) if fat_id is None else (body_id, fat_id)
    inside = lab > 0
    if fat_mm > 0:
        lab[(ndimage.distance_transform_edt(~inside, sampling=sp) <= fat_mm) & ~inside] = \
            body_id if fat_id is None else fat_id
    else:
        lab[(ndimage.distance_transform_edt(inside, sampling=sp) <= -fat_mm) & np.isin(lab, soft)] = 0
    return labels.with_array(lab), fat_mm


def _class_id(labels: Volume, name: str) -> int | None:
    vocab = labels.vocab
    if vocab is None:
        return None
    try:
        return int(vocab.id(name))
    except (InputError, KeyError):
        return None

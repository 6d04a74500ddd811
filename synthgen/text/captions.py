"""Label map (+ lesion records) -> report-like sentences, as training text for text-conditioned models.

``caption(labels, lesions=[...], phase="arterial")`` gives e.g.
``"Contrast-enhanced CT of the chest and abdomen in the arterial phase. A 2.5 cm hypodense cyst in the liver."``
The phrasing is fixed without ``rng``; with one, each sentence picks among synonymous phrasings.
Every phrasing reads back through `synthgen.text.prompt.parse_prompt` to the same lesion type, organ,
size (within 0.5 mm) and phase: the tests check the round trip.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from synthgen.errors import InputError
from synthgen.lesions.spec import PHASES
from synthgen.vocab import Vocabulary

#: Region of a structure, by name prefix (the first match wins).
_REGION_OF = (("lung", "chest"), ("heart", "chest"), ("trachea", "chest"), ("liver", "abdomen"),
              ("kidney", "abdomen"), ("spleen", "abdomen"), ("pancreas", "abdomen"),
              ("urinary_bladder", "pelvis"), ("hip", "pelvis"), ("brain", "head"), ("skull", "head"))
_REGION_ORDER = ("head", "neck", "chest", "abdomen", "pelvis")
#: Noun phrases per lesion type; the first is the deterministic choice.
_NOUNS = {
    "tumor": ("enhancing mass", "solid mass", "tumor"),
    "cyst": ("hypodense cyst", "simple cyst", "cystic lesion"),
    "metastasis": ("hypodense metastasis", "metastatic lesion", "metastasis"),
    "nodule_solid": ("solid nodule", "solid pulmonary nodule", "spiculated solid nodule"),
    "nodule_ground_glass": ("ground-glass nodule", "ground-glass opacity", "subsolid nodule"),
    "nodule_part_solid": ("part-solid nodule", "mixed-attenuation nodule", "subsolid nodule with a solid component"),
    "hemorrhage": ("hyperdense hematoma", "acute hemorrhage", "hyperdense bleed"),
}
_LESION_SENTENCES = ("{Article} {size} {noun} in {organ}.", "There is {article} {size} {noun} in {organ}.",
                     "{Organ} contains {article} {size} {noun}.")
_NO_LESION = ("No focal lesion.", "No focal lesion is seen.")
_PHASE_SENTENCES = {
    None: ("CT of {regions}.",),
    "non_contrast": ("Non-contrast CT of {regions}.", "Unenhanced CT of {regions}.",
                     "CT of {regions} without contrast."),
    "contrast": ("Contrast-enhanced CT of {regions} in the {phase} phase.",
                 "CT of {regions} with contrast, {phase} phase.",
                 "{Phase} phase contrast-enhanced CT of {regions}."),
}
_RECORD_KEYS = ("type", "organ", "diameter_mm")


def caption(labels_volume: Any, *, lesions: Sequence[Mapping[str, Any]] | None = None,
            phase: str | None = None, rng: np.random.Generator | None = None) -> str:
    """Report-like caption of a label map: region(s) and phase, then one sentence per lesion record.

    Args:
        labels_volume: a label `Volume` (names from its vocabulary, else the default) or an integer
            array of default-vocabulary ids.
        lesions: records as ``dataclasses.asdict(LesionRecord)`` gives (keys type, organ, diameter_mm
            in mm; others ignored); None or empty: "No focal lesion."
        phase: contrast phase (`PHASES`; "auto" or None: not stated).
        rng: pick among synonymous phrasings; None: fixed phrasing.
    """
    if phase is not None and phase not in PHASES:
        raise InputError(f"phase must be one of {', '.join(PHASES)} or None, got {phase!r}")
    records = [_check_record(r, k) for k, r in enumerate(lesions or [])]
    regions = _regions_present(labels_volume)

    def pick(options: Sequence[str]) -> str:
        return options[0] if rng is None else options[int(rng.integers(len(options)))]

    sentences = [_phase_sentence(regions, None if phase == "auto" else phase, pick)]
    sentences += [_lesion_sentence(r, pick) for r in records] or [pick(_NO_LESION)]
    return " ".join(sentences)


def _check_record(record: Mapping[str, Any], k: int) -> Mapping[str, Any]:
    if not isinstance(record, Mapping):
        raise InputError(f"lesion {k + 1}: expected a dict (LesionRecord asdict), got {type(record).__name__}")
    missing = [key for key in _RECORD_KEYS if key not in record]
    if missing:
        raise InputError(f"lesion {k + 1}: record lacks {', '.join(missing)}; got keys {sorted(record)}")
    if record["type"] not in _NOUNS:
        raise InputError(f"lesion {k + 1}: unknown type {record['type']!r}; expected one of {', '.join(_NOUNS)}")
    d = record["diameter_mm"]
    if not isinstance(d, (int, float)) or not d > 0:
        raise InputError(f"lesion {k + 1}: diameter_mm must be a positive number in mm, got {d!r}")
    return record


def _regions_present(labels_volume: Any) -> list[str]:
    """Regions of the structures present in the label map, head to pelvis."""

    if hasattr(labels_volume, "numpy"):
        if getattr(labels_volume, "kind", None) != "label":
            raise InputError(f"caption needs a label map (kind='label'), got kind={labels_volume.kind!r}")
        arr, vocab = labels_volume.numpy(), labels_volume.vocab or Vocabulary.default()
    else:
        arr, vocab = np.asarray(labels_volume), Vocabulary.default()
    if arr.dtype.kind not in "iub":
        raise InputError(f"label map must hold integer ids, got dtype {arr.dtype}")
    names = [vocab.classes.get(int(i), "") for i in np.unique(arr) if i != 0]
    found = {region for name in names for prefix, region in _REGION_OF if name.startswith(prefix)}
    return [r for r in _REGION_ORDER if r in found]


def _phase_sentence(regions: list[str], phase: str | None, pick: Any) -> str:
    if not regions:
        where = "the scanned region"
    elif len(regions) == 1:
        where = f"the {regions[0]}"
    else:
        where = "the " + ", ".join(regions[:-1]) + " and " + regions[-1]
    key = phase if phase in (None, "non_contrast") else "contrast"
    words = (phase or "").replace("_", " ")
    text = pick(_PHASE_SENTENCES[key]).format(regions=where, phase=words, Phase=words.capitalize())
    return text[0].upper() + text[1:]


def _lesion_sentence(record: Mapping[str, Any], pick: Any) -> str:
    size = format_size(float(record["diameter_mm"]))
    first = size.split()[0].split(".")[0]
    article = "an" if first.startswith("8") or first in ("11", "18") else "a"
    organ = _organ_phrase(str(record["organ"]))
    text = pick(_LESION_SENTENCES).format(article=article, Article=article.capitalize(), size=size,
                                          noun=pick(_NOUNS[record["type"]]), organ=organ,
                                          Organ=organ.capitalize())
    return text


def format_size(diameter_mm: float) -> str:
    """``8.4`` -> ``"8.4 mm"``; 10 mm and over in cm with one decimal: ``25.3`` -> ``"2.5 cm"``."""
    if round(diameter_mm, 1) < 10:
        return f"{round(diameter_mm, 1):g} mm"
    return f"{round(diameter_mm / 10, 1):g} cm"


def _organ_phrase(organ: str) -> str:
    """``kidney_left`` -> "the left kidney", ``lung_upper_lobe_right`` -> "the right upper lobe"."""
    parts = organ.split("_")
    if len(parts) == 4 and parts[0] == "lung" and parts[2] == "lobe":
        return f"the {parts[3]} {parts[1]} lobe"
    if len(parts) == 2 and parts[1] in ("left", "right"):
        return f"the {parts[1]} {parts[0]}"
    return "the " + organ.replace("_", " ")

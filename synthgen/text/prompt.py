"""Radiology prompt -> `PromptSpec`: a rule-based reader of short CT requests (sizes in mm).

``"non-contrast chest CT, two 8 mm ground-glass nodules in the right upper lobe, 65-year-old female"``
reads as regions ``("chest",)``, phase ``"non_contrast"``, one `Finding` (2 x nodule_ground_glass,
8 mm, lung_upper_lobe_right) and patient ``{"age": 65, "sex": "F"}``.

Nothing is dropped or guessed silently: every word the reader does not know is listed in
``warnings`` as ``"ignored: '...'"``, and so is every interpretation it makes ("lesion" read as
tumor, "multiple" read as 3, a 2-D size reduced to its largest dimension, a default size).
No model, no network: a phrase lexicon, a greedy longest-match, and clause-local attachment
(a finding takes the size, count, organ and location nearest to its lesion word in its clause).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from synthgen.errors import InputError
from synthgen.lesions.spec import LESION_TYPES, LesionSpec

REGIONS = ("head", "neck", "chest", "abdomen", "pelvis")
PROMPT_PHASES = ("non_contrast", "arterial", "portal_venous", "delayed")
MIN_SIZE_MM, MAX_SIZE_MM = 1.0, 200.0
#: Diameter `PromptSpec.lesion_specs` uses for a finding the prompt gives no size for.
DEFAULT_DIAMETER_MM = 20.0
SUBCENTIMETER_MM = 8.0
VAGUE_COUNT = 3


@dataclasses.dataclass(frozen=True)
class Finding:
    """One lesion kind read from a prompt.

    Args:
        lesion_type: one of `LESION_TYPES`.
        organ: vocabulary name or group (liver, kidney_left, lung_upper_lobe_right, ...).
        diameter_mm: largest stated dimension in mm, or None when the prompt gives no size.
        count: how many such lesions.
        location: sub-organ words ("right lobe", "segment 7", "tail", "lower pole"), or None.
        side: "left" / "right" when stated or implied by the organ, else None.
        words: the clause of the prompt this finding was read from.
    """

    lesion_type: str
    organ: str
    diameter_mm: float | None
    count: int
    location: str | None
    side: str | None
    words: str


@dataclasses.dataclass(frozen=True)
class PromptSpec:
    """What a prompt asks for; ``warnings`` lists everything ignored or interpreted."""

    text: str
    regions: tuple[str, ...]
    phase: str | None
    slice_thickness_mm: float | None
    organs: tuple[str, ...]
    findings: tuple[Finding, ...]
    patient: dict
    warnings: tuple[str, ...]

    def lesion_specs(self, seed: int = 0) -> list[LesionSpec]:
        """One `LesionSpec` per finding (seed ``seed + index``); raises its InputError on a bad pair."""
        specs = []
        for k, f in enumerate(self.findings):
            diameter = f.diameter_mm if f.diameter_mm is not None else DEFAULT_DIAMETER_MM
            try:
                specs.append(LesionSpec(type=f.lesion_type, organ=f.organ, diameter_mm=diameter,
                                        count=f.count, phase=self.phase or "auto", seed=seed + k))
            except InputError as e:
                raise InputError(f"finding {k + 1} ({f.words!r}): {e}") from e
        return specs

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        for key in ("regions", "organs", "warnings"):
            d[key] = list(d[key])
        d["findings"] = [dict(f) for f in d["findings"]]
        d["patient"] = dict(self.patient)
        return d


# ------------------------------------------------------------------ lexicon
_STOP = ("the of with in at on ct cta scan scans image images imaging showing shows show study studies "
         "demonstrating demonstrates demonstrated there is are was were seen noted phase for to within "
         "involving measuring measures measured size sized approximately about patient axial exam "
         "examination reveals revealed finding findings contains containing has have s iv protocol from "
         "helical acquisition please generate synthesize synthesise create simulate")
_ADJECTIVES = (
    "hypodense|hypoattenuating|hyperdense|hyperattenuating|isodense|isoattenuating|enhancing|"
    "non enhancing|nonenhancing|rim enhancing|hyperenhancing|hypoenhancing|hypervascular|hypovascular|"
    "low attenuation|low density|high attenuation|high density|well defined|ill defined|"
    "well circumscribed|circumscribed|irregular|spiculated|lobulated|round|rounded|oval|simple|complex|"
    "heterogeneous|homogeneous|calcified|necrotic|small|large|tiny|focal|new|exophytic|smooth|acute|"
    "subacute|chronic|suspicious|indeterminate|benign|malignant|primary|soft tissue|septated|fluid")
_LESIONS = {  # type: (singular words, plural words)
    "tumor": ("tumor|tumour|mass|hcc|carcinoma|neoplasm|cancer|malignancy",
              "tumors|tumours|masses|carcinomas|neoplasms|cancers"),
    "cyst": ("cyst|cystic", "cysts"),
    "metastasis": ("metastasis|met|secondary|metastatic", "metastases|mets|secondaries"),
    "nodule": ("nodule", "nodules"),
    "nodule_ground_glass": ("ground glass opacity|ggo|ggn", "ground glass opacities|ggos|ggns"),
    "hemorrhage": ("hematoma|haematoma|hemorrhage|haemorrhage|bleed|hemorrhagic|haemorrhagic",
                   "hematomas|haematomas|hemorrhages|haemorrhages|bleeds"),
    "lesion": ("lesion", "lesions"),  # ambiguous: read as tumor, with a warning
}
_ORGANS = {"liver": "liver|hepatic", "kidney": "kidney|kidneys|renal", "lung": "lung|lungs|pulmonary",
           "spleen": "spleen|splenic", "pancreas": "pancreas|pancreatic"}
_PHASES = {
    "non_contrast": "non contrast|noncontrast|non contrast enhanced|non enhanced|unenhanced|without contrast|"
                    "without iv contrast|plain|native",
    "arterial": "arterial|late arterial|early arterial",
    "portal_venous": "portal venous|portal|venous|portovenous",
    "delayed": "delayed|excretory|equilibrium",
    "contrast": "contrast|contrast enhanced|enhanced|with contrast|with iv contrast|cect",
}
_REGION_WORDS = {("chest",): "chest|thorax|thoracic", ("abdomen",): "abdomen|abdominal|abdo",
                 ("pelvis",): "pelvis|pelvic", ("head",): "brain|cranial|skull",
                 ("chest", "abdomen", "pelvis"): "cap", ("abdomen", "pelvis"): "abdominopelvic",
                 ("chest", "abdomen"): "thoracoabdominal"}
_LOCATIONS = ("right lobe|left lobe|caudate lobe|dome|upper pole|lower pole|interpolar|hilum|hilar|"
              "upper lobe|middle lobe|lower lobe|apex|apical|base|basal|cortex|cortical|subcapsular|"
              "peripheral|central|uncinate|uncinate process|lingula|subpleural")
_COUNT_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
                "nine": 9, "ten": 10, "a": 1, "an": 1, "single": 1, "solitary": 1}


def _build_lexicon() -> dict[tuple[str, ...], tuple[str, Any, bool]]:
    lex: dict[tuple[str, ...], tuple[str, Any, bool]] = {}

    def add(phrases: str, kind: str, value: Any = None, plural: bool = False) -> None:
        for p in phrases.split("|"):
            lex[tuple(p.split())] = (kind, p if value is None else value, plural)

    add(_STOP.replace(" ", "|"), "stop")
    add(_ADJECTIVES, "adj")
    add(_LOCATIONS, "location")
    add("head|neck|body|tail", "part")
    add("segment|seg", "segword")
    add("mm|millimeter|millimeters|millimetre|millimetres", "unit", 1.0)
    add("cm|centimeter|centimeters|centimetre|centimetres", "unit", 10.0)
    add("x|by", "x")
    add("sub centimeter|subcentimeter|sub centimetre|subcentimetre", "subcm", SUBCENTIMETER_MM)
    add("thin section|thin sections|thin slice|thin slices", "thin", 1.0)
    add("slice|slices|section|sections|thickness|slice thickness|thick|collimation|reconstruction", "slice_word")
    add("year old|years old|year|years|yo|yrs|yr|old", "age_word")
    add("age|aged", "age_pre")
    add("male|man|boy|gentleman|m", "sex", "M")
    add("female|woman|girl|lady|f", "sex", "F")
    add("no|without", "neg")
    add("left|right", "side")
    add("ground glass|groundglass|subsolid|part solid|non solid|nonsolid", "nodmod", "nodule_ground_glass")
    add("solid", "nodmod", "nodule_solid")
    add("multiple|numerous|several|few|many", "count", (VAGUE_COUNT, True))
    for word, n in _COUNT_WORDS.items():
        add(word, "count", (n, False))
    for kind, table in (("lesion", _LESIONS), ("phase", _PHASES)):
        for value, words in table.items():
            if kind == "lesion":
                add(words[0], kind, value)
                add(words[1], kind, value, plural=True)
            else:
                add(words, kind, value)
    for regions, words in _REGION_WORDS.items():
        add(words, "region", regions)
    _add_organs(add)
    return lex


def _add_organs(add: Any) -> None:
    for organ, words in _ORGANS.items():
        add(words, "organ", organ)
    for side in ("left", "right"):
        add(f"{side} kidney|{side} renal", "organ", f"kidney_{side}")
        add(f"{side} lung", "organ", f"lung_{side}")
        for pos in ("upper", "middle", "lower"):
            if (side, pos) != ("left", "middle"):
                add(f"{side} {pos} lobe", "organ", f"lung_{pos}_lobe_{side}")
                add(f"{side[0]}{pos[0]}l", "organ", f"lung_{pos}_lobe_{side}")


_LEXICON = _build_lexicon()
_MAX_PHRASE = max(len(k) for k in _LEXICON)
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+|[,;]|\.(?!\d)")


@dataclasses.dataclass
class _Item:
    kind: str
    value: Any
    words: str
    plural: bool = False


# ------------------------------------------------------------------ reading
def parse_prompt(text: str) -> PromptSpec:
    """Read a radiology prompt into a `PromptSpec`; raises InputError for an empty prompt or a bad size."""
    if not isinstance(text, str):
        raise InputError(f"prompt must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InputError("prompt is empty")
    warnings: list[str] = []
    items = _items(_TOKEN.findall(text.lower()))
    warnings += _ignored(items)
    items = _numbers(items, warnings)
    _sizes(items, warnings)
    state = _State()
    for clause in _clauses(items):
        _read_clause(clause, state, warnings)
    return PromptSpec(
        text=text, regions=_regions(state, warnings), phase=_phase(state.phases, warnings),
        slice_thickness_mm=_slice(state.slices, warnings), organs=tuple(dict.fromkeys(state.organs)),
        findings=tuple(state.findings), patient=_patient(state, warnings), warnings=tuple(warnings))


def _items(tokens: list[str]) -> list[_Item]:
    """Greedy longest-match of the lexicon over the tokens; unknown words become ``unknown`` items."""
    items, i = [], 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in (",", ";", ".", "and"):
            items.append(_Item("sep", tok, tok))
            i += 1
            continue
        if tok[0].isdigit():
            items.append(_Item("num", float(tok), tok))
            i += 1
            continue
        for n in range(min(_MAX_PHRASE, len(tokens) - i), 0, -1):
            key = tuple(tokens[i:i + n])
            if key in _LEXICON:
                kind, value, plural = _LEXICON[key]
                items.append(_Item(kind, value, " ".join(key), plural))
                i += n
                break
        else:
            items.append(_Item("unknown", tok, tok))
            i += 1
    return items


def _ignored(items: list[_Item]) -> list[str]:
    """One ``ignored: '...'`` warning per run of consecutive unknown words."""
    out, run = [], []
    for it in items + [_Item("end", None, "")]:
        if it.kind == "unknown":
            run.append(it.words)
        elif run:
            out.append(f"ignored: {' '.join(run)!r}")
            run = []
    return out


def _numbers(items: list[_Item], warnings: list[str]) -> list[_Item]:
    """Turn numbers into sizes (with their unit), ages, segment locations or counts."""
    out: list[_Item] = []
    i = 0
    while i < len(items):
        it = items[i]
        if it.kind != "num":
            out.append(it)
            i += 1
            continue
        j, dims, words = i + 1, [it.value], [it.words]
        while j + 1 < len(items) and items[j].kind == "x" and items[j + 1].kind == "num":
            dims.append(items[j + 1].value)
            words += [items[j].words, items[j + 1].words]
            j += 2
        if j < len(items) and items[j].kind == "unit":
            mm = max(dims) * items[j].value
            phrase = " ".join(words + [items[j].words])
            if len(dims) > 1:
                warnings.append(f"size {phrase!r} read as its largest dimension, {mm:g} mm")
            out.append(_Item("size", mm, phrase))
            i = j + 1
            continue
        if len(dims) > 1:
            warnings.append(f"ignored: {' '.join(words)!r} (a size needs a unit, mm or cm)")
            i = j
            continue
        i += _single_number(it, items[i + 1] if i + 1 < len(items) else None, out, warnings)
    return out


def _single_number(it: _Item, nxt: _Item | None, out: list[_Item], warnings: list[str]) -> int:
    """Place one unit-less number; returns how many items it consumed."""
    prev = out[-1] if out else None
    if nxt is not None and nxt.kind == "age_word":
        out.append(_Item("age", it.value, f"{it.words} {nxt.words}"))
        return 2
    if prev is not None and prev.kind == "age_pre":
        out[-1] = _Item("age", it.value, f"{prev.words} {it.words}")
        return 1
    if nxt is not None and nxt.kind == "sex" and len(nxt.words) == 1:  # "65 M"
        out.append(_Item("age", it.value, it.words))
        return 1
    if prev is not None and prev.kind == "segword" and it.value.is_integer():
        out[-1] = _Item("location", f"segment {int(it.value)}", f"{prev.words} {it.words}")
        return 1
    if it.value.is_integer() and 1 <= it.value <= 100:
        out.append(_Item("count", (int(it.value), False), it.words))
        return 1
    warnings.append(f"ignored: {it.words!r} (a number without a unit)")
    return 1


def _sizes(items: list[_Item], warnings: list[str]) -> None:
    """Mark sizes next to slice words as slice thickness; check lesion sizes are 1-200 mm."""
    for k, it in enumerate(items):
        if it.kind == "subcm":
            it.kind = "size"
            warnings.append(f"{it.words!r} read as {SUBCENTIMETER_MM:g} mm")
        elif it.kind == "thin":
            it.kind = "slice"
        if it.kind != "size":
            continue
        before = [x for x in items[max(0, k - 3):k] if x.kind != "stop"][-1:]
        after = items[k + 1:k + 2]
        if any(x.kind == "slice_word" for x in before + after):
            it.kind = "slice"
        elif not MIN_SIZE_MM <= it.value <= MAX_SIZE_MM:
            raise InputError(f"size {it.words!r} ({it.value:g} mm) is outside "
                             f"{MIN_SIZE_MM:g}-{MAX_SIZE_MM:g} mm")


def _clauses(items: list[_Item]) -> list[list[_Item]]:
    out: list[list[_Item]] = [[]]
    for it in items:
        if it.kind == "sep":
            out.append([])
        else:
            out[-1].append(it)
    return [c for c in out if c]


@dataclasses.dataclass
class _State:
    regions: list[str] = dataclasses.field(default_factory=list)
    phases: list[str] = dataclasses.field(default_factory=list)
    slices: list[float] = dataclasses.field(default_factory=list)
    organs: list[str] = dataclasses.field(default_factory=list)
    findings: list[Finding] = dataclasses.field(default_factory=list)
    ages: list[float] = dataclasses.field(default_factory=list)
    sexes: list[str] = dataclasses.field(default_factory=list)


#: Item kinds whose value is simply collected, and the `_State` list that collects it.
_COLLECTED = {"phase": "phases", "slice": "slices", "organ": "organs", "age": "ages", "sex": "sexes"}


def _read_clause(clause: list[_Item], state: _State, warnings: list[str]) -> None:
    has_pancreas = any(it.kind == "organ" and it.value == "pancreas" for it in clause)
    for it in clause:
        if it.kind == "part":  # "head"/"neck": a region, unless it is part of the pancreas
            it.kind, it.value = ("location", it.words) if has_pancreas or it.words not in REGIONS \
                else ("region", (it.words,))
        if it.kind == "region":
            state.regions.extend(it.value)
        elif it.kind in _COLLECTED:
            getattr(state, _COLLECTED[it.kind]).append(it.value)
    for group in _lesion_groups(clause):
        finding = _finding(clause, group, state, warnings)
        if finding is not None:
            state.findings.append(finding)


def _lesion_groups(clause: list[_Item]) -> list[list[int]]:
    """Indices of lesion words, adjacent ones (or ones separated only by adjectives) grouped."""
    groups: list[list[int]] = []
    for k, it in enumerate(clause):
        if it.kind != "lesion":
            continue
        if groups and all(clause[j].kind in ("adj", "nodmod") for j in range(groups[-1][-1] + 1, k)):
            groups[-1].append(k)
        else:
            groups.append([k])
    return groups


def _finding(clause: list[_Item], group: list[int], state: _State, warnings: list[str]) -> Finding | None:
    start, head = group[0], clause[group[-1]]
    if any(it.kind == "neg" for it in clause[:start]):
        return None
    lesion_type = _lesion_type(clause, group, warnings)
    organ_it = _nearest(clause, start, "organ")
    organ = organ_it.value if organ_it else _default_organ(lesion_type, state, head.words, warnings)
    size_it = _nearest(clause, start, "size", before_first=True)
    count = _count(clause, start, head, warnings)
    location_it = _nearest(clause, start, "location")
    side = next((s for s in ("left", "right") if organ.endswith("_" + s)), None)
    if side is None:
        side_it = _nearest(clause, start, "side")
        side = side_it.value if side_it else None
    words = " ".join(it.words for it in clause)
    if size_it is None:
        warnings.append(f"no size for {lesion_type} in {organ!r}; lesion_specs uses {DEFAULT_DIAMETER_MM:g} mm")
    return Finding(lesion_type=lesion_type, organ=organ, diameter_mm=size_it.value if size_it else None,
                   count=count, location=location_it.value if location_it else None, side=side, words=words)


def _lesion_type(clause: list[_Item], group: list[int], warnings: list[str]) -> str:
    """The head (last) specific lesion word wins: "cystic lesion" -> cyst, "hemorrhagic cyst" -> cyst."""
    values = [clause[k].value for k in group if clause[k].value != "lesion"]
    mod = _nearest(clause, group[0], "nodmod", before_first=True)
    if not values:
        if mod is not None:
            return mod.value
        warnings.append(f"ambiguous {clause[group[-1]].words!r} read as tumor")
        return "tumor"
    kind = values[-1]
    if kind == "nodule":
        kind = mod.value if mod is not None else "nodule_solid"
    assert kind in LESION_TYPES, kind  # internal lexicon invariant, not user input
    return kind


def _nearest(clause: list[_Item], k: int, kind: str, *, before_first: bool = False) -> _Item | None:
    """The item of ``kind`` nearest to index ``k``; with ``before_first``, prefer ones before ``k``."""
    hits = [j for j, it in enumerate(clause) if it.kind == kind]
    if not hits:
        return None
    before = [j for j in hits if j < k]
    if before_first and before:
        return clause[before[-1]]
    best = clause[min(hits, key=lambda j: (abs(j - k), j < k))]
    if kind == "organ":  # "pulmonary nodule in the right upper lobe": keep the more specific organ
        finer = [clause[j] for j in hits if clause[j].value.startswith(best.value + "_")]
        best = finer[0] if finer else best
    return best


def _count(clause: list[_Item], start: int, head: _Item, warnings: list[str]) -> int:
    count_it = _nearest(clause, start, "count", before_first=True)
    if count_it is not None and clause.index(count_it) < start:
        n, vague = count_it.value
        if vague:
            warnings.append(f"{count_it.words!r} read as count {n}")
        return n
    if head.plural:
        warnings.append(f"plural {head.words!r} without a count read as 2")
        return 2
    return 1


def _default_organ(lesion_type: str, state: _State, words: str, warnings: list[str]) -> str:
    if lesion_type.startswith("nodule"):
        return "lung"
    if state.organs:
        return state.organs[-1]
    if set(state.regions) == {"chest"}:
        warnings.append(f"no organ for {words!r}; read as lung (chest CT)")
        return "lung"
    warnings.append(f"no organ for {words!r}; read as liver")
    return "liver"


def _regions(state: _State, warnings: list[str]) -> tuple[str, ...]:
    regions = set(state.regions)
    if not regions and state.organs:
        regions = {"chest" if o.startswith("lung") else "abdomen" for o in state.organs}
        warnings.append(f"no region stated; inferred {', '.join(r for r in REGIONS if r in regions)} from organs")
    return tuple(r for r in REGIONS if r in regions)


def _phase(phases: list[str], warnings: list[str]) -> str | None:
    explicit = list(dict.fromkeys(p for p in phases if p != "contrast"))
    if len(explicit) > 1:
        warnings.append(f"several phases ({', '.join(explicit)}); using {explicit[0]}")
    if explicit:
        return explicit[0]
    return "portal_venous" if "contrast" in phases else None


MIN_SLICE_MM, MAX_SLICE_MM = 0.1, 20.0


def _slice(slices: list[float], warnings: list[str]) -> float | None:
    for s in slices:
        if not MIN_SLICE_MM <= s <= MAX_SLICE_MM:
            raise InputError(f"slice thickness {s:g} mm is outside {MIN_SLICE_MM:g}-{MAX_SLICE_MM:g} mm")
    if len(set(slices)) > 1:
        warnings.append(f"several slice thicknesses ({', '.join(f'{s:g} mm' for s in slices)}); using {slices[0]:g} mm")
    return slices[0] if slices else None


def _patient(state: _State, warnings: list[str]) -> dict:
    patient: dict[str, Any] = {}
    for age in state.ages:
        if age.is_integer() and 0 <= age <= 120:
            patient.setdefault("age", int(age))
        else:
            warnings.append(f"ignored: age {age:g} (expected whole years, 0-120)")
    if len(set(state.sexes)) > 1:
        warnings.append(f"conflicting sex words ({', '.join(state.sexes)}); using {state.sexes[0]}")
    if state.sexes:
        patient["sex"] = state.sexes[0]
    return patient

"""How many synthetic cases per rare class, from which generator, on which host scans.

Targets (``--target``):

- ``balance``: every rare class ends up in as many cases as the most common class;
- ``fraction=F``: every rare class ends up in at least a fraction F of all cases, synthetic
  ones included (solved jointly, since every synthetic case also grows the total);
- ``count=N``: every rare class ends up present in at least N cases.

``--budget B`` caps the total; counts are then scaled down in proportion (largest remainders
get the leftover items) and the plan says it is budget-limited.

Generators: a class whose name reads as a lesion (``liver_tumor``, "kidney cyst",
``lung_nodule``...: the prompt parser reads the name) is made by the lesion engine, inserted
into a host case that does not contain it and whose label map has the host organ. Its
diameters are drawn from the real lesions of that class (±10 %), or from ``size_mm`` (one
diameter or several to draw from, ``--size`` / ``--sizes``); a class the dataset declares but
no case contains (zero real positives) takes the lesion spec's default size
(`synthgen.lesions.spec.LesionSpec`) and the plan says so. Its contrast phase (`plan_phase`):
``phase`` when given (``--phase``); else the one whose appearance-table attenuation is nearest
the real lesions' tissue HU (`matched_phase`); without real lesions, estimated per host when
the dataset labels a structure the phase can be read from (aorta, portal vein, liver, kidney,
bladder); else, for a lesion whose look does not depend on the phase (`phase_matters`: one
table row for every phase, or a lesion in aerated lung), the `PHASE_FREE_DEFAULT` appearance;
else the plan stops and asks for ``--phase``. In a classification set the hosts are the scans
of the classes that are not lesions, the host organ is read by the shipped organ segmenter
(``lesion_insert_segmented``, `synthgen.expand.organs`) and sizes default to the spec's.
Other classes (organs, normal anatomy) are not generated: the plan says so with an error.
Every item's seed derives from (run seed, item index) only.

Class names come from the dataset and become part of file names (``synth_<class>_<n>``): a
generated class's name is checked once here (`item_stem`): whitespace becomes ``_``, and a name
that still is not one safe path component (``/``, ``..``, control characters...) stops the plan
with an error naming it, before anything is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from synthgen.errors import InputError
from synthgen.expand.analysis import Analysis
from synthgen.expand.dataset import Dataset
from synthgen.expand.documents import Document
from synthgen.files.safepath import safe_name
from synthgen.io import read
from synthgen.lesions.appearance import PHASE_STRUCTURES, PHASES, appearance
from synthgen.lesions.spec import LesionSpec, organ_family
from synthgen.text.prompt import parse_prompt
from synthgen.vocab import Vocabulary


@dataclasses.dataclass(frozen=True)
class Target:
    kind: str  # balance | fraction | count
    value: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Target:
        t = text.strip().lower()
        if t == "balance":
            return cls("balance")
        for kind in ("fraction", "count"):
            if t.startswith(kind + "="):
                try:
                    v = float(t.split("=", 1)[1])
                except ValueError:
                    break
                if kind == "fraction" and not 0 < v < 1:
                    raise InputError(f"target fraction must be in (0, 1), got {v:g}")
                if kind == "count" and (v < 1 or v != int(v)):
                    raise InputError(f"target count must be a positive integer, got {v:g}")
                return cls(kind, v)
        raise InputError(f"unknown target {text!r}; use balance, fraction=F (0<F<1) or count=N")


@dataclasses.dataclass(frozen=True)
class PlanItem:
    index: int
    class_name: str
    generator: str
    host: str | None  # item id of the host case (None: a whole new case)
    lesion_type: str
    organ: str  # dataset class name of the host organ
    diameter_mm: float | None  # None: the lesion spec's default, drawn by the lesion engine (the manifest has it)
    seed: int
    phase: str = "auto"  # appearance-table phase matched to the real lesions of the class
    prompt: str = ""  # text_to_ct: the prompt the whole case is generated from
    size: tuple[int, int, int] | None = None  # text_to_ct: voxels of the generated case
    spacing_mm: float | None = None  # text_to_ct: isotropic voxel size of the generated case

    #: Keys `Plan.to_dict` computes from the fields (read back, not stored).
    DERIVED_KEYS: ClassVar[tuple[str, ...]] = ("name",)

    @property
    def name(self) -> str:
        return f"synth_{item_stem(self.class_name)}_{self.index:04d}"

    def fingerprint(self, plan_seed: int) -> str:
        """A digest of everything that decides this item's files: the journal counts a record as
        this item's only when it carries the same digest (a rerun with other settings redoes it)."""
        doc = json.dumps({"plan_seed": plan_seed, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()[:32]


def item_stem(class_name: str) -> str:
    """The part of a synthetic file name a class contributes: ``kidney cyst`` -> ``kidney_cyst``;
    raises `InputError` for a name that cannot be one path component (``liver/tumor``, ``../x``)."""
    stem = re.sub(r"\s+", "_", str(class_name).strip())
    try:
        return safe_name(stem, what="class name")
    except InputError as e:  # name the class as the dataset spells it, not its stem
        raise InputError(f"{str(e).replace(repr(stem), repr(class_name), 1)}; rename the class in the dataset's "
                         "labels, or name the rare classes to generate with --rare") from None


@dataclasses.dataclass(frozen=True)
class Plan(Document, source="plan", what="a plan"):
    """The synthetic items an expansion makes; the ``plan`` of ``synthgen_expand.json``."""

    target: Target
    counts: dict[str, int]  # synthetic items per rare class
    items: list[PlanItem]
    budget_limited: bool
    notes: list[str]
    seed: int

    def to_dict(self) -> dict:
        return {"target": dataclasses.asdict(self.target), "counts": self.counts, "seed": self.seed,
                "budget_limited": self.budget_limited, "notes": self.notes,
                "items": [dataclasses.asdict(i) | {"name": i.name} for i in self.items]}

    def format(self, analysis: Analysis) -> str:
        have = {c.name: c.n_cases for c in analysis.classes}
        lines = [(f"plan ({self.target.kind}{'' if self.target.kind == 'balance' else '=' + f'{self.target.value:g}'}"
                 f"{', budget-limited' if self.budget_limited else ''}): {len(self.items)} synthetic cases")]
        for name, n in self.counts.items():
            mine = [i for i in self.items if i.class_name == name]
            sizes = [i.diameter_mm for i in mine if i.diameter_mm is not None]
            size = ", sizes by the lesion engine's default" if mine and not sizes else ""
            if sizes:
                lo, hi = f"{min(sizes):.0f}", f"{max(sizes):.0f}"
                size = f", {lo} mm" if lo == hi else f", {lo}-{hi} mm"
            if mine and mine[0].host is None:
                where = f"whole new {'x'.join(map(str, mine[0].size))} cases at {mine[0].spacing_mm:g} mm"
            else:
                where = f"into {len({i.host for i in mine})} host scans"
            gen = mine[0].generator if mine else "lesion_insert"
            lines.append(f"  {name}: {have.get(name, 0)} -> {have.get(name, 0) + n} cases (+{n} by {gen} "
                         f"{where}{size})")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def synthetic_counts(analysis: Analysis, target: Target) -> dict[str, int]:
    """Synthetic cases per rare class to reach ``target`` (each synthetic case carries one class)."""
    have = {c.name: c.n_cases for c in analysis.classes}
    rare = analysis.rare
    n = analysis.n_items
    if target.kind == "balance":
        top = max(have.values(), default=0)
        return {r: max(0, top - have[r]) for r in rare}
    if target.kind == "count":
        return {r: max(0, int(target.value) - have[r]) for r in rare}
    f = target.value
    if f * len(rare) >= 1:
        raise InputError(f"fraction={f:g} for {len(rare)} rare classes cannot be met: each synthetic case adds one "
                         f"class, so at most 1/{len(rare)} = {1 / len(rare):.2f} is reachable for all of them")
    s = {r: 0 for r in rare}
    for _ in range(10000):  # monotone fixed point: s_r = ceil(f (n + sum s) - have_r)
        total = n + sum(s.values())
        new = {r: max(0, math.ceil(f * total - have[r] - 1e-9)) for r in rare}
        if new == s:
            return s
        s = new
    raise InputError(f"fraction={f:g}: the plan did not converge")  # pragma: no cover - bounded by f*k < 1


def _within_budget(counts: dict[str, int], budget: int | None) -> tuple[dict[str, int], bool]:
    total = sum(counts.values())
    if budget is None or total <= budget:
        return counts, False
    if budget < 0:
        raise InputError(f"budget must be >= 0, got {budget}")
    exact = {k: v * budget / total for k, v in counts.items()}
    out = {k: math.floor(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - out[k], reverse=True)[: budget - sum(out.values())]:
        out[k] += 1
    return out, True


def lesion_of_class(name: str) -> tuple[str, str] | None:
    """(lesion type, organ) of a class name that reads as a lesion, else None."""

    try:
        spec = parse_prompt(name.replace("_", " "))
    except InputError:
        return None
    if len(spec.findings) != 1:
        return None
    f = spec.findings[0]
    return f.lesion_type, f.organ


def _host_class(organ: str, ds: Dataset) -> str | None:
    """The dataset class that labels ``organ`` (the lesion engine's name) or its family; lesion
    classes (``lung_nodule_solid`` starts with ``lung_`` too) never host."""
    names = [n for n in ds.class_names if lesion_of_class(n) is None]
    if organ in names:
        return organ
    family = organ.split("_")[0]
    return next((n for n in names if n == family or n.startswith(family + "_")), None)


#: The phase used for a lesion whose look does not depend on the contrast phase (`phase_matters`)
#: when nothing tells the phase: a chest set without vessel labels is most often a non-contrast scan.
PHASE_FREE_DEFAULT = "non_contrast"
#: Organ families whose host tissue is air: a lesion there stands ~900 HU above the parenchyma and
#: the appearance table moves solid lung lesions by at most 25 HU between phases.
AERATED_ORGANS = ("lung",)


def _phase_spread_hu(lesion_type: str, organ: str) -> float:
    """How far the appearance table's mean attenuation of ``lesion_type`` in ``organ`` moves across phases."""
    means = [appearance(lesion_type, organ_family(organ), ph).mean_hu for ph in PHASES]
    return float(max(means) - min(means))


def phase_matters(lesion_type: str, organ: str) -> bool:
    """Whether the look of ``lesion_type`` in ``organ`` depends on the contrast phase: not when the
    appearance table has one row for every phase (cysts, ground-glass nodules, haemorrhage), nor
    in aerated lung (`AERATED_ORGANS`), where the phase is a few per cent of the lesion's contrast."""
    return _phase_spread_hu(lesion_type, organ) > 0 and organ_family(organ) not in AERATED_ORGANS


def phase_structures(ds: Dataset, analysis: Analysis, hosts: Sequence[str]) -> tuple[list[str], int]:
    """(the structures `synthgen.lesions.appearance.estimate_phase` reads that the dataset labels,
    how many of ``hosts`` contain none of them), by class name (vocabulary groups included)."""
    vocab = Vocabulary.from_mapping({v: n for v, n in ds.classes.items() if v}).with_groups_from(Vocabulary.default())
    stats = analysis.by_name()
    found: list[str] = []
    covered: set[str] = set()
    for key, names in PHASE_STRUCTURES.items():
        classes = {vocab.name(i) for n in names if n in vocab or n in vocab.groups for i in vocab.ids(n)}
        cases = {c for cls in classes if cls in stats for c in stats[cls].cases}
        if cases:
            found.append(key)
            covered |= cases
    return found, sum(h not in covered for h in hosts)


def plan_phase(ds: Dataset, analysis: Analysis, name: str, lesion_type: str, host_cls: str, hosts: Sequence[str], *,
               phase: str = "auto") -> tuple[str, str]:
    """(the contrast phase of class ``name``'s inserted lesions, why): ``phase`` when given; else
    matched to the real lesions (`matched_phase`); else ``auto`` (estimated per host) when every
    host labels a structure to read it from; else `PHASE_FREE_DEFAULT` when the phase does not
    change the lesion's look (`phase_matters`); else `InputError` asking for ``--phase``."""
    if phase != "auto":
        return phase, f"{name}: {phase} appearance (--phase)"
    stats = analysis.by_name()[name]
    if stats.cases:
        matched, why = matched_phase(ds, stats, lesion_type, host_cls)
        if matched != "auto":
            return matched, why
    found, lacking = phase_structures(ds, analysis, hosts)
    if found and not lacking:
        return "auto", (f"{name}: no real lesion to match the appearance to; phase estimated per host "
                        f"(from {', '.join(found)})")
    if not phase_matters(lesion_type, host_cls):
        return PHASE_FREE_DEFAULT, (
            f"{name}: no real lesion to match the appearance to and no vessel or organ label to estimate the phase "
            f"from; its look hardly depends on it (table: {_phase_spread_hu(lesion_type, host_cls):.0f} HU across "
            f"phases), so the {PHASE_FREE_DEFAULT} appearance is used (--phase to choose)")
    where = "the dataset labels none" if not found else f"{lacking} of {len(hosts)} host scans contain none"
    raise InputError(f"cannot choose the contrast phase of {name!r}: no real lesion of it to match, and {where} of "
                     "aorta, portal_vein_and_splenic_vein, liver, kidney, urinary_bladder to estimate it from; "
                     f"pass --phase ({', '.join(PHASES)}; `phase:` in an expand config)")


def matched_phase(ds: Dataset, stats, lesion_type: str, organ: str, *, max_cases: int = 8) -> tuple[str, str]:
    """The contrast phase whose table attenuation for ``lesion_type`` in ``organ`` is nearest the
    attenuation of the class's real lesion tissue: the 75th percentile of their cores (one voxel
    in from the boundary, when any is left), so a necrotic centre does not pull it toward a fainter
    phase (up to ``max_cases`` cases read); ("auto", why) without any."""
    from scipy import ndimage


    value = next(v for v, n in ds.classes.items() if n == stats.name)
    by_id = {it.id: it for it in ds.items}
    hu: list[np.ndarray] = []
    for cid in stats.cases[:max_cases]:
        it = by_id[cid]
        mask = np.asarray(read(it.label, kind="label").numpy()) == value
        core = ndimage.binary_erosion(mask)  # boundary voxels are part liver (partial volume)
        hu.append(np.asarray(read(it.image).numpy())[core if core.any() else mask])
    if not hu or not sum(h.size for h in hu):
        return "auto", f"{stats.name}: no real lesion to match the appearance to; phase estimated per host"
    measured = float(np.percentile(np.concatenate(hu), 75))
    family = organ_family(organ)
    table = {ph: appearance(lesion_type, family, ph).mean_hu for ph in PHASES}
    phase = min(table, key=lambda ph: abs(table[ph] - measured))
    return phase, (f"{stats.name}: real lesion tissue {measured:.0f} HU (75th percentile, {len(hu)} cases) -> {phase} "
                   f"appearance ({table[phase]:.0f} HU)")


GENERATORS = ("insert", "diffusion")


def _case_geometry(ds: Dataset, cases: list[str]) -> tuple[tuple[int, int, int], float]:
    """Median field of view and the finest median spacing of ``cases`` (up to 8 read), as a
    generation grid: isotropic spacing, size rounded up to a multiple of 4 (the VAE's factor)."""

    by_id = {it.id: it for it in ds.items}
    vols = [read(by_id[c].image) for c in cases[:8]]
    sp = float(np.median([v.spacing.min() for v in vols]))
    fov = np.median([np.asarray(v.shape) * v.spacing for v in vols], axis=0)
    size = tuple(int(4 * np.ceil(f / sp / 4)) for f in fov)
    return size, round(sp, 3)


@dataclasses.dataclass(frozen=True)
class _Source:
    """How one class's items are made: generator, host organ class, host cases (``[None]``: whole
    new cases), contrast phase, the plan's notes on it, and the grid of whole new cases."""

    generator: str
    organ: str
    hosts: list[str | None]
    phase: str
    note: str
    geometry: tuple[tuple[int, int, int], float] | None = None


def _source(ds: Dataset, analysis: Analysis, name: str, lesion: tuple[str, str], *, generator: str,
            phase: str) -> _Source:
    """Where and how class ``name`` (a lesion of ``(type, organ)``) is generated (see module doc)."""
    ltype, organ = lesion
    stats = analysis.by_name()
    if generator == "diffusion":
        note = (f"{name}: whole cases generated by the text -> CT pipeline (shipped weights), label map from the "
                "anatomy library" + ("" if phase == "auto" else f"; --phase {phase} applies to inserted lesions only"))
        return _Source("text_to_ct", organ, [None], "auto", note,
                       _case_geometry(ds, stats[name].cases or [it.id for it in ds.items]))
    if ds.task == "cls":  # hosts: scans of the classes that are not lesions; organ read by the segmenter
        hosts = [c for s in analysis.classes if lesion_of_class(s.name) is None for c in s.cases]
        if not hosts:
            raise InputError(f"no host scan for {name!r}: every class of this dataset is a lesion class")
        how = "phase estimated per host" if phase == "auto" else f"{phase} appearance (--phase)"
        return _Source("lesion_insert_segmented", organ, list(hosts), phase,
                       f"{name}: organ mask from the shipped segmenter, {how}")
    host_cls = _host_class(organ, ds)
    if host_cls is None:
        raise InputError(f"cannot place {name!r}: the dataset labels no {organ!r} to host it "
                         f"(classes: {', '.join(ds.class_names)})")
    hosts = [c for c in stats[host_cls].cases if c not in set(stats[name].cases)]
    if not hosts:
        raise InputError(f"no host scan for {name!r}: every case with {host_cls} already has it")
    chosen, why = plan_phase(ds, analysis, name, ltype, host_cls, hosts, phase=phase)
    return _Source("lesion_insert", host_cls, list(hosts), chosen, why)


def _check_sizes(size_mm: float | Sequence[float] | None) -> list[float] | None:
    """``size_mm`` as a list of diameters (mm), each checked against the lesion engine's 1-200 mm."""
    if size_mm is None:
        return None
    values = [size_mm] if isinstance(size_mm, (int, float)) else list(size_mm)
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 1 <= v <= 200
                         for v in values):
        raise InputError(f"lesion sizes must be diameters in mm between 1 and 200, got {size_mm!r}")
    return [float(v) for v in values]


#: Size written into a whole-case prompt when the lesion spec's default size is left to the engine.
PROMPT_DIAMETER_MM = 20.0


def _diameter(rng: np.random.Generator, real: list[float], sizes: list[float] | None,
              default: float | tuple[float, float] | None) -> float | None:
    """One item's diameter (mm): from ``sizes`` (one of them), else a real lesion's ±10 %, else the
    spec's default (a range is drawn uniformly; None is left to the lesion engine, which draws
    it per lesion). ``rng`` is the item's own."""
    if sizes is not None:
        return sizes[0] if len(sizes) == 1 else float(rng.choice(sizes))
    if real:
        return float(np.clip(rng.choice(real) * rng.uniform(0.9, 1.1), 3.0, 150.0))
    if default is None:
        return None
    return float(rng.uniform(*default)) if isinstance(default, tuple) else float(default)


def _default_size(lesion: tuple[str, str]) -> float | tuple[float, float] | None:
    """The lesion spec's default diameter for ``(type, organ)``: mm, a (min, max) range, or None
    (the engine's own choice per lesion, e.g. real nodule sizes for outline-based shapes)."""
    ltype, organ = lesion
    return LesionSpec(type=ltype, organ=organ_family(organ)).diameter_mm


def _size_note(name: str, default: float | tuple[float, float] | None) -> str:
    if default is None:
        size = "drawn per lesion by the lesion engine"
    else:
        size = (f"{default:g}" if not isinstance(default, tuple) else f"{default[0]:g}-{default[1]:g}") + " mm"
    return (f"{name}: no real lesion in the dataset to match sizes to; sizes from the lesion spec's default "
            f"({size}; --sizes to choose)")


def make_plan(ds: Dataset, analysis: Analysis, target: Target, *, budget: int | None = None, seed: int = 0,
              size_mm: float | Sequence[float] | None = None, generator: str = "insert",
              phase: str = "auto") -> Plan:
    """Plan the synthetic items; raises InputError when a rare class cannot be generated.

    ``generator``: ``insert`` (the lesion engine into real host scans) or ``diffusion`` (whole
    new cases from a prompt by the shipped text -> CT pipeline; segmentation sets only).
    ``size_mm``: one diameter or several to draw from (None: matched to the real lesions, or the
    lesion spec's default for a class with none). ``phase``: the contrast phase of inserted
    lesions, or ``auto`` (`plan_phase`).
    """
    if generator not in GENERATORS:
        raise InputError(f"unknown generator {generator!r}; choose {' or '.join(GENERATORS)}")
    if generator == "diffusion" and ds.task != "seg":
        raise InputError("the diffusion generator makes segmentation cases (a CT and its label map); "
                         "classification sets use insert")
    if phase not in ("auto", *PHASES):
        raise InputError(f"unknown phase {phase!r}; --phase takes auto, {', '.join(PHASES)}")
    sizes = _check_sizes(size_mm)
    counts, limited = _within_budget(synthetic_counts(analysis, target), budget)
    stats = analysis.by_name()
    notes: list[str] = []
    items: list[PlanItem] = []
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        if n == 0:
            notes.append(f"{name} already meets the target")
            continue
        item_stem(name)  # the class becomes part of file names: a path-unsafe name stops the plan here
        lesion = lesion_of_class(name)
        if lesion is None:
            raise InputError(f"cannot generate class {name!r}: only lesion classes (tumour, cyst, metastasis, "
                             "nodule, haemorrhage in liver, kidney, spleen, pancreas, lung) are generated so far")
        src = _source(ds, analysis, name, lesion, generator=generator, phase=phase)
        real, default = stats[name].lesion_diameters_mm, _default_size(lesion)
        if sizes is None and not real:
            notes.append(_size_note(name, default))
        notes.append(src.note)
        order = rng.permutation(len(src.hosts))
        for k in range(n):
            host = src.hosts[int(order[k % len(src.hosts)])]
            items.append(_item(len(items), name, lesion, src, host, rng=np.random.default_rng([seed, len(items)]),
                               real=real, sizes=sizes, default=default))
    if limited:
        notes.append(f"budget {budget}: counts scaled down from {sum(synthetic_counts(analysis, target).values())}")
    return Plan(target=target, counts=counts, items=items, budget_limited=limited, notes=notes, seed=seed)


def _item(index: int, name: str, lesion: tuple[str, str], src: _Source, host: str | None, *,
          rng: np.random.Generator, real: list[float], sizes: list[float] | None,
          default: float | tuple[float, float] | None) -> PlanItem:
    """Plan item ``index`` of class ``name``: its size and seed come from its own ``rng``."""
    ltype, organ = lesion
    d = _diameter(rng, real, sizes, default)
    if src.generator == "text_to_ct":
        assert src.geometry is not None  # _source sets it for whole new cases
        d = PROMPT_DIAMETER_MM if d is None else d  # a prompt states a size
        return PlanItem(index=index, class_name=name, generator=src.generator, host=None, lesion_type=ltype,
                        organ=src.organ, diameter_mm=round(d, 1), seed=int(rng.integers(2**31)),
                        prompt=f"CT, {d / 10:.1f} cm {ltype} in the {organ}", size=src.geometry[0],
                        spacing_mm=src.geometry[1])
    return PlanItem(index=index, class_name=name, generator=src.generator, host=host, lesion_type=ltype,
                    organ=src.organ, diameter_mm=None if d is None else round(d, 1), seed=int(rng.integers(2**31)),
                    phase=src.phase)


def fraction_after(analysis: Analysis, counts: dict[str, int]) -> dict[str, float]:
    """Share of all cases (synthetic included) containing each class after expansion."""
    total = analysis.n_items + sum(counts.values())
    return {c.name: (c.n_cases + counts.get(c.name, 0)) / total for c in analysis.classes}


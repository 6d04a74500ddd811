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
into a host case that does not contain it and whose label map has the host organ; its
diameters are drawn from the real lesions of that class (±10 %) unless ``size_mm`` is given,
and its contrast phase is the one whose appearance-table attenuation is nearest the real
lesions' tissue HU (`matched_phase`). In a classification set the hosts are the scans of the
classes that are not lesions, the host organ is read by the shipped organ segmenter
(``lesion_insert_segmented``, `synthgen.expand.organs`) and sizes default to 20 mm.
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
from typing import ClassVar

import numpy as np

from synthgen.errors import InputError
from synthgen.expand.analysis import Analysis
from synthgen.expand.dataset import Dataset
from synthgen.expand.documents import Document
from synthgen.files.safepath import safe_name
from synthgen.io import read
from synthgen.lesions.appearance import PHASES, appearance
from synthgen.lesions.spec import organ_family
from synthgen.text.prompt import parse_prompt


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
    diameter_mm: float
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
            sizes = [i.diameter_mm for i in self.items if i.class_name == name]
            size = f", {min(sizes):.0f}-{max(sizes):.0f} mm" if sizes else ""
            mine = [i for i in self.items if i.class_name == name]
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
    """The dataset class that labels ``organ`` (the lesion engine's name) or its family."""
    names = ds.class_names
    if organ in names:
        return organ
    family = organ.split("_")[0]
    return next((n for n in names if n == family or n.startswith(family + "_")), None)


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


def make_plan(ds: Dataset, analysis: Analysis, target: Target, *, budget: int | None = None, seed: int = 0,
              size_mm: float | None = None, generator: str = "insert") -> Plan:
    """Plan the synthetic items; raises InputError when a rare class cannot be generated.

    ``generator``: ``insert`` (the lesion engine into real host scans) or ``diffusion`` (whole
    new cases from a prompt by the shipped text -> CT pipeline; segmentation sets only).
    """
    if generator not in GENERATORS:
        raise InputError(f"unknown generator {generator!r}; choose {' or '.join(GENERATORS)}")
    if generator == "diffusion" and ds.task != "seg":
        raise InputError("the diffusion generator makes segmentation cases (a CT and its label map); "
                         "classification sets use insert")
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
        ltype, organ = lesion
        if generator == "diffusion":
            host_cls, hosts, gen = organ, [None], "text_to_ct"
            phase, why = "auto", (f"{name}: whole cases generated by the text -> CT pipeline (shipped weights), "
                                  "label map from the anatomy library")
            geom = _case_geometry(ds, stats[name].cases or [it.id for it in ds.items])
        elif ds.task == "cls":  # hosts: scans of the classes that are not lesions; organ read by the segmenter
            host_cls, gen = organ, "lesion_insert_segmented"
            hosts = [c for s in analysis.classes if lesion_of_class(s.name) is None for c in s.cases]
            if not hosts:
                raise InputError(f"no host scan for {name!r}: every class of this dataset is a lesion class")
            phase, why = "auto", f"{name}: organ mask from the shipped segmenter, phase estimated per host"
        else:
            host_cls, gen = _host_class(organ, ds), "lesion_insert"
            if host_cls is None:
                raise InputError(f"cannot place {name!r}: the dataset labels no {organ!r} to host it "
                                 f"(classes: {', '.join(ds.class_names)})")
            hosts = [c for c in stats[host_cls].cases if c not in set(stats[name].cases)]
            if not hosts:
                raise InputError(f"no host scan for {name!r}: every case with {host_cls} already has it")
            phase, why = matched_phase(ds, stats[name], ltype, host_cls)
        real = stats[name].lesion_diameters_mm
        if size_mm is None and not real:
            notes.append(f"{name}: no real lesion to match sizes to; using 20 mm")
        notes.append(why)
        order = rng.permutation(len(hosts))
        for k in range(n):
            idx = len(items)
            item_rng = np.random.default_rng([seed, idx])
            if size_mm is not None:
                d = float(size_mm)
            elif real:
                d = float(np.clip(item_rng.choice(real) * item_rng.uniform(0.9, 1.1), 3.0, 150.0))
            else:
                d = 20.0
            if gen == "text_to_ct":
                items.append(PlanItem(index=idx, class_name=name, generator=gen, host=None, lesion_type=ltype,
                                      organ=host_cls, diameter_mm=round(d, 1), seed=int(item_rng.integers(2**31)),
                                      prompt=f"CT, {d / 10:.1f} cm {ltype} in the {organ}", size=geom[0],
                                      spacing_mm=geom[1]))
                continue
            items.append(PlanItem(index=idx, class_name=name, generator=gen,
                                  host=hosts[int(order[k % len(hosts)])], lesion_type=ltype, organ=host_cls,
                                  diameter_mm=round(d, 1), seed=int(item_rng.integers(2**31)), phase=phase))
    if limited:
        notes.append(f"budget {budget}: counts scaled down from {sum(synthetic_counts(analysis, target).values())}")
    return Plan(target=target, counts=counts, items=items, budget_limited=limited, notes=notes, seed=seed)


def fraction_after(analysis: Analysis, counts: dict[str, int]) -> dict[str, float]:
    """Share of all cases (synthetic included) containing each class after expansion."""
    total = analysis.n_items + sum(counts.values())
    return {c.name: (c.n_cases + counts.get(c.name, 0)) / total for c in analysis.classes}


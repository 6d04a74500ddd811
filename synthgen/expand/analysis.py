"""Class statistics of a dataset and the rare-class rule (`synthgen expand DATASET --analyse`).

Segmentation: per class, the cases containing it, voxels and millilitres, and its lesions
(6-connected components) with their sphere-equivalent diameters. Classification: cases per
class. A class is *rare* under ``--rare auto`` when it is present in fewer cases than
``fraction`` (default 0.5) times the most common foreground class; ``--rare a,b`` names them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from synthgen.errors import InputError, did_you_mean
from synthgen.expand.dataset import Dataset
from synthgen.expand.documents import Document, dump
from synthgen.files.atomic import check_writable, write_text
from synthgen.io import read
from synthgen.report.charts import bar_chart
from synthgen.report.montage import save_png

DEFAULT_RARE_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class ClassStats:
    """One class of a dataset: the cases containing it and (segmentation) its voxels, volume and
    lesions (6-connected components) by sphere-equivalent diameter."""

    name: str
    value: int | None  # label value (seg) or None (cls)
    cases: list[str]
    voxels: int = 0
    volume_ml: float = 0.0
    lesion_diameters_mm: list[float] = dataclasses.field(default_factory=list)

    #: Keys `to_dict` computes from the fields (read back, not stored).
    DERIVED_KEYS: ClassVar[tuple[str, ...]] = ("n_cases", "lesion_size_mm")

    @property
    def n_cases(self) -> int:
        return len(self.cases)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["n_cases"] = self.n_cases
        if self.lesion_diameters_mm:
            q = np.percentile(self.lesion_diameters_mm, [0, 25, 50, 75, 100])
            d["lesion_size_mm"] = dict(zip(("min", "q1", "median", "q3", "max"), np.round(q, 1).tolist()))
        return d


@dataclasses.dataclass(frozen=True)
class Analysis(Document, source="analysis", what="an analysis.json"):
    """``analysis.json``: every class of a dataset and which are rare under ``rule``.

    ``dataset`` is the dataset's path; None in the expansion summary (`synthgen.expand.summary`),
    which leaves the path out so copies of an expanded folder stay byte-identical.
    """

    task: str
    n_items: int
    rule: str
    rare: list[str]
    classes: list[ClassStats]
    dataset: str | None = None

    def by_name(self) -> dict[str, ClassStats]:
        return {c.name: c for c in self.classes}

    def to_dict(self) -> dict:
        head = {} if self.dataset is None else {"dataset": self.dataset}
        return {**head, "task": self.task, "n_items": self.n_items, "rule": self.rule, "rare": self.rare,
                "classes": [c.to_dict() for c in self.classes]}


def analyse(ds: Dataset, *, rare: str | Sequence[str] = "auto", fraction: float = DEFAULT_RARE_FRACTION,
            progress: bool = False) -> Analysis:
    """Statistics of every class of ``ds`` and the rare ones under ``rare`` ("auto" or names)."""
    classes = _seg_stats(ds, progress=progress) if ds.task == "seg" else _cls_stats(ds)
    rare_names, rule = rare_classes(classes, rare, fraction)
    return Analysis(dataset=str(ds.root), task=ds.task, n_items=len(ds.items), classes=classes, rare=rare_names,
                    rule=rule)


def _seg_stats(ds: Dataset, *, progress: bool) -> list[ClassStats]:
    """Per foreground label value: cases, voxels, millilitres and lesion diameters (every label map read once)."""
    from scipy import ndimage
    from tqdm.auto import tqdm

    names = {v: n for v, n in sorted(ds.classes.items()) if v != 0}
    acc = {v: {"cases": [], "voxels": 0, "volume_ml": 0.0, "lesion_diameters_mm": []} for v in names}
    for it in tqdm(ds.items, desc="analyse", disable=not progress):
        lab = read(it.label, kind="label")
        arr = np.asarray(lab.numpy())
        vox_ml = float(np.prod(lab.spacing)) / 1000.0
        counts = np.bincount(arr.ravel().astype(np.int64))
        for v, s in acc.items():
            if v < counts.size and counts[v]:
                s["cases"].append(it.id)
                s["voxels"] += int(counts[v])
                s["volume_ml"] += counts[v] * vox_ml
                comps, _ = ndimage.label(arr == v)
                sizes = np.bincount(comps.ravel())[1:]
                s["lesion_diameters_mm"] += [round(float((6 * c * vox_ml * 1000 / np.pi) ** (1 / 3)), 1)
                                             for c in sizes]
    return [ClassStats(names[v], v, **s) for v, s in acc.items()]


def _cls_stats(ds: Dataset) -> list[ClassStats]:
    """Per class: the cases labelled with it."""
    cases: dict[str, list[str]] = {n: [] for _, n in sorted(ds.classes.items())}
    for it in ds.items:
        cases[it.class_name].append(it.id)
    return [ClassStats(n, None, c) for n, c in cases.items()]


def rare_classes(classes: list[ClassStats], rare: str | Sequence[str], fraction: float) -> tuple[list[str], str]:
    names = [c.name for c in classes]
    if isinstance(rare, str) and rare != "auto":
        rare = [r.strip() for r in rare.split(",") if r.strip()]
    if rare == "auto":
        if not 0 < fraction <= 1:
            raise InputError(f"rare fraction must be in (0, 1], got {fraction}")
        top = max((c.n_cases for c in classes), default=0)
        out = [c.name for c in classes if c.n_cases < fraction * top]
        return out, f"auto: present in fewer than {fraction:g} x {top} cases (the most common class)"
    unknown = [r for r in rare if r not in names]
    if unknown:
        raise InputError(f"unknown class {unknown[0]!r}{did_you_mean(unknown[0], names)}; classes: {', '.join(names)}")
    return list(rare), "named: " + ", ".join(rare)


def format_table(a: Analysis) -> str:
    rows = [("class", "cases", "volume ml", "lesions", "size mm (median, range)", "rare")]
    for c in a.classes:
        d = c.lesion_diameters_mm
        size = f"{np.median(d):.0f} ({min(d):.0f}-{max(d):.0f})" if d else "-"
        rows.append((c.name, str(c.n_cases), f"{c.volume_ml:.1f}" if a.task == "seg" else "-",
                     str(len(d)) if a.task == "seg" else "-", size, "RARE" if c.name in a.rare else ""))
    w = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w[k]) if k == 0 else v.rjust(w[k]) for k, v in enumerate(r)).rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"{a.n_items} items; rare rule: {a.rule}")
    return "\n".join(lines)


def write_analysis(a: Analysis, out_dir: str | Path, *, overwrite: bool = False) -> dict[str, Path]:
    """``analysis.json`` + ``analysis.png`` (cases per class, rare classes in red); both are checked
    before either is written, so a refusal leaves neither half-replaced."""

    out = Path(out_dir)
    paths = {"analysis": out / "analysis.json", "chart": out / "analysis.png"}
    for p in paths.values():
        check_writable(p, overwrite=overwrite)
    write_text(paths["analysis"], dump(a.to_dict()), overwrite=overwrite)
    chart = bar_chart({c.name: [c.n_cases] for c in a.classes}, series=["cases"], highlight=a.rare,
                      title=f"cases per class ({a.n_items} items); rare in red")
    save_png(chart, paths["chart"], overwrite=overwrite)
    return paths

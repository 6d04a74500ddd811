"""Class statistics of a dataset and the rare-class rule (`synthgen expand DATASET --analyse`).

Segmentation: per class, the cases containing it, voxels and millilitres, and its lesions
(6-connected components) with their sphere-equivalent diameters. Classification: cases per
class. A class is *rare* under ``--rare auto`` when it is present in fewer cases than
``fraction`` (default 0.5) times the most common foreground class; ``--rare a,b`` names them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from synthgen.errors import InputError, did_you_mean
from synthgen.expand.dataset import Dataset
from synthgen.files.atomic import write_text
from synthgen.io import read
from synthgen.report.charts import bar_chart
from synthgen.report.montage import save_png

DEFAULT_RARE_FRACTION = 0.5


@dataclasses.dataclass
class ClassStats:
    name: str
    value: int | None  # label value (seg) or None (cls)
    cases: list[str]
    voxels: int = 0
    volume_ml: float = 0.0
    lesion_diameters_mm: list[float] = dataclasses.field(default_factory=list)

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


@dataclasses.dataclass
class Analysis:
    dataset: str
    task: str
    n_items: int
    classes: list[ClassStats]
    rare: list[str]
    rule: str

    def by_name(self) -> dict[str, ClassStats]:
        return {c.name: c for c in self.classes}

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "task": self.task, "n_items": self.n_items, "rule": self.rule,
                "rare": self.rare, "classes": [c.to_dict() for c in self.classes]}


def analyse(ds: Dataset, *, rare: str | Sequence[str] = "auto", fraction: float = DEFAULT_RARE_FRACTION,
            progress: bool = False) -> Analysis:
    """Statistics of every class of ``ds`` and the rare ones under ``rare`` ("auto" or names)."""
    from tqdm.auto import tqdm

    if ds.task == "seg":
        from scipy import ndimage


        stats = {v: ClassStats(n, v, []) for v, n in sorted(ds.classes.items()) if v != 0}
        for it in tqdm(ds.items, desc="analyse", disable=not progress):
            lab = read(it.label, kind="label")
            arr = np.asarray(lab.numpy())
            vox_ml = float(np.prod(lab.spacing)) / 1000.0
            counts = np.bincount(arr.ravel().astype(np.int64))
            for v, s in stats.items():
                if v < counts.size and counts[v]:
                    s.cases.append(it.id)
                    s.voxels += int(counts[v])
                    s.volume_ml += counts[v] * vox_ml
                    comps, _ = ndimage.label(arr == v)
                    sizes = np.bincount(comps.ravel())[1:]
                    s.lesion_diameters_mm += [round(float((6 * c * vox_ml * 1000 / np.pi) ** (1 / 3)), 1)
                                              for c in sizes]
        classes = list(stats.values())
    else:
        stats = {n: ClassStats(n, None, []) for _, n in sorted(ds.classes.items())}
        for it in ds.items:
            stats[it.class_name].cases.append(it.id)
        classes = list(stats.values())
    rare_names, rule = rare_classes(classes, rare, fraction)
    return Analysis(dataset=str(ds.root), task=ds.task, n_items=len(ds.items), classes=classes, rare=rare_names,
                    rule=rule)


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
    """``analysis.json`` + ``analysis.png`` (cases per class, rare classes in red)."""

    out = Path(out_dir)
    paths = {"analysis": out / "analysis.json", "chart": out / "analysis.png"}
    write_text(paths["analysis"], json.dumps(a.to_dict(), indent=1) + "\n", overwrite=overwrite)
    chart = bar_chart({c.name: [c.n_cases] for c in a.classes}, series=["cases"], highlight=a.rare,
                      title=f"cases per class ({a.n_items} items); rare in red")
    save_png(chart, paths["chart"], overwrite=overwrite)
    return paths


#: The files `write_expansion_summary` writes into the expanded dataset's folder.
SUMMARY_FILES = ("synthgen_expand.json", "synthgen_expand.png")


def write_expansion_summary(a: Analysis, plan_dict: dict, counts: dict[str, int], out_dir: str | Path) -> dict[str, Path]:
    """``synthgen_expand.json`` (analysis before, plan, cases per class after) and
    ``synthgen_expand.png`` (cases per class before / after, rare classes in red)."""

    out = Path(out_dir)
    after = {c.name: c.n_cases + counts.get(c.name, 0) for c in a.classes}
    paths = {"summary": out / SUMMARY_FILES[0], "chart": out / SUMMARY_FILES[1]}
    before = {k: v for k, v in a.to_dict().items() if k != "dataset"}  # no path: copies stay identical
    doc = {"before": before, "plan": plan_dict, "cases_after": after}
    write_text(paths["summary"], json.dumps(doc, indent=1) + "\n", overwrite=True)
    chart = bar_chart({c.name: [c.n_cases, after[c.name]] for c in a.classes}, series=["before", "after"],
                      highlight=a.rare, title=f"cases per class before / after expansion ({a.n_items} real items)")
    save_png(chart, paths["chart"], overwrite=True)
    return paths

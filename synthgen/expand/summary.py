"""``synthgen_expand.json`` + ``synthgen_expand.png``: what an expansion planned and what it changed.

The summary is written into the expanded dataset's folder after the items: the analysis of the
real cases before (without the dataset's path, so a copy of the folder stays byte-identical), the
plan (its items, counts and notes, among them why a class got no item) and the cases per class
after. `evaluate_job` reads it back for the report.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from synthgen.errors import InputError
from synthgen.expand.analysis import Analysis
from synthgen.expand.documents import Document, dump
from synthgen.expand.plan import Plan
from synthgen.files.atomic import write_text
from synthgen.report.charts import bar_chart
from synthgen.report.montage import save_png

#: The files `write_expansion_summary` writes into the expanded dataset's folder.
SUMMARY_FILES = ("synthgen_expand.json", "synthgen_expand.png")


@dataclasses.dataclass(frozen=True)
class ExpansionSummary(Document, source="synthgen_expand.json", what="the expansion summary synthgen_expand.json"):
    """``synthgen_expand.json``: the real cases' analysis, the plan, and cases per class after."""

    before: Analysis
    plan: Plan
    cases_after: dict[str, int]

    def __post_init__(self) -> None:
        names = {c.name for c in self.before.classes}
        odd = sorted(set(self.cases_after) ^ names) or sorted(set(self.plan.counts) - names)
        if odd:
            raise InputError(f"cases_after and the plan's counts must name the analysed classes, {odd[0]!r} does not")

    @classmethod
    def of(cls, analysis: Analysis, plan: Plan) -> ExpansionSummary:
        """The summary of generating ``plan`` for the dataset ``analysis`` describes."""
        after = {c.name: c.n_cases + plan.counts.get(c.name, 0) for c in analysis.classes}
        return cls(before=dataclasses.replace(analysis, dataset=None), plan=plan, cases_after=after)

    def to_dict(self) -> dict:
        return {"before": self.before.to_dict(), "plan": self.plan.to_dict(), "cases_after": self.cases_after}


def write_expansion_summary(summary: ExpansionSummary, out_dir: str | Path) -> dict[str, Path]:
    """``synthgen_expand.json`` and ``synthgen_expand.png`` (cases per class before / after, rare
    classes in red) in ``out_dir``; replaced on a rerun (the expansion registers them as its own)."""

    out = Path(out_dir)
    a = summary.before
    paths = {"summary": out / SUMMARY_FILES[0], "chart": out / SUMMARY_FILES[1]}
    write_text(paths["summary"], dump(summary.to_dict()), overwrite=True)
    chart = bar_chart({c.name: [c.n_cases, summary.cases_after[c.name]] for c in a.classes},
                      series=["before", "after"], highlight=a.rare,
                      title=f"cases per class before / after expansion ({a.n_items} real items)")
    save_png(chart, paths["chart"], overwrite=True)
    return paths

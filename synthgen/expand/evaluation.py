"""``evaluation.json`` / ``evaluation.txt``: the settings and findings of `synthgen evaluate`.

`synthgen.expand.evaluate.evaluate` trains the arms and returns an `Evaluation`; `evaluate_job`
writes it (`write_evaluation`) and hands the same object to the HTML report; `Evaluation.read`
reads a file back into it. Per arm: the training-set size, per seed the test metrics and the
validation learning curve, and the summary over seeds (mean ± sample std of the seeds that
define the metric). Deltas are differences of means; the verdict says, per rare class, whether
``real+synthetic`` beats each other arm by more than the seed spread (the sum of the two stds).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from synthgen.errors import InputError
from synthgen.expand.documents import Document, dump
from synthgen.files.atomic import check_writable, write_text

ARMS = ("real", "weighted", "real+synthetic")

#: Test metrics of one arm and seed: class -> metric -> value (None where the metric is undefined:
#: a class absent from the test cases and from the prediction).
Metrics = dict[str, dict[str, float | None]]


@dataclasses.dataclass
class EvalConfig:
    """Downstream training settings (configs/evaluate.yaml)."""

    seeds: int = 3
    arms: list[str] = dataclasses.field(default_factory=lambda: list(ARMS))
    steps: int = 300
    batch: int = 4
    lr: float = 2e-3
    val_every: int = 50
    patch: list[int] = dataclasses.field(default_factory=lambda: [32, 32, 32])
    channels: list[int] = dataclasses.field(default_factory=lambda: [8, 16, 32, 64])
    foreground_p: float = 0.67
    norm: str = "batch"
    spacing: float | None = None  # resample every case to this (mm); None: keep each case's grid
    size: list[int] = dataclasses.field(default_factory=lambda: [32, 32, 32])  # classification input
    window: list[float] = dataclasses.field(default_factory=lambda: [-100.0, 250.0])  # HU -> [-1, 1]
    max_class_weight: float = 30.0
    split_seed: int = 0
    rare: str = "auto"  # the classes judged: auto (the expander's rule) or comma-separated names

    def __post_init__(self) -> None:
        for name in ("seeds", "steps", "batch", "val_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr", "max_class_weight"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise InputError(f"{name} must be a finite number > 0, got {value!r}")
        if not 0.0 <= self.foreground_p <= 1.0:
            raise InputError(f"foreground_p must be in [0, 1], got {self.foreground_p!r}")
        for name in ("patch", "size", "channels"):
            value = getattr(self, name)
            if not value or min(value) < 1:
                raise InputError(f"{name} must be positive integers, got {list(value)}")
        if self.spacing is not None and not (math.isfinite(self.spacing) and self.spacing > 0):
            raise InputError(f"spacing must be a finite number of mm > 0 (or null), got {self.spacing!r}")
        bad = [a for a in self.arms if a not in ARMS]
        if bad:
            raise InputError(f"unknown arm {bad[0]!r}; arms: {', '.join(ARMS)}")


@dataclasses.dataclass(frozen=True)
class CurvePoint:
    """One validation of a training run: the step, its training loss, the mean of the per-class
    validation scores (Dice for segmentation, recall for classification) and the scores (NaN: the
    class is in no validation case and not predicted)."""

    step: int
    loss: float
    val_mean: float
    val: dict[str, float]


@dataclasses.dataclass(frozen=True)
class SeedRun:
    """One arm trained with one seed: its test metrics and its validation curve."""

    seed: int
    metrics: Metrics
    curve: list[CurvePoint]


@dataclasses.dataclass(frozen=True)
class Stat:
    """A metric over seeds: mean (None when no seed defines it) and sample std (0 for one seed)."""

    mean: float | None
    std: float


@dataclasses.dataclass(frozen=True)
class ArmResult:
    """One arm: training cases, every seed's run, and the summary over seeds (class -> metric -> stat)."""

    n_train: int
    per_seed: list[SeedRun]
    summary: dict[str, dict[str, Stat]]

    @classmethod
    def of(cls, n_train: int, runs: list[SeedRun]) -> ArmResult:
        """The arm of ``runs`` with its summary over seeds (undefined values left out)."""
        summary: dict[str, dict[str, Stat]] = {}
        for name, metrics in runs[0].metrics.items():
            summary[name] = {}
            for m in metrics:
                v = np.array([np.nan if r.metrics[name][m] is None else r.metrics[name][m] for r in runs], float)
                v = v[~np.isnan(v)]
                summary[name][m] = Stat(mean=round(float(v.mean()), 4) if v.size else None,
                                        std=round(float(v.std(ddof=1)), 4) if v.size > 1 else 0.0)
        return cls(n_train=n_train, per_seed=runs, summary=summary)


@dataclasses.dataclass(frozen=True)
class SplitSizes:
    """Cases per part of the fixed real split, the synthetic cases trained on (hosted by training
    scans) and those left out (hosted by a validation or test scan)."""

    train: int
    val: int
    test: int
    synthetic: int
    synthetic_dropped: int
    split_seed: int


#: Per comparison (``real+synthetic - real``), class and metric: the difference of means.
Deltas = dict[str, dict[str, dict[str, float | None]]]


@dataclasses.dataclass(frozen=True)
class Evaluation(Document, source="evaluation.json", what="an evaluation.json"):
    """``evaluation.json``: what `synthgen evaluate` trained on, with which settings, and what it measured."""

    task: str
    dataset: str
    expanded: str | None
    resolution: str
    seeds: list[int]
    classes: list[str]
    rare: list[str]
    split: SplitSizes
    split_ids: dict[str, list[str]]
    config: EvalConfig
    arms: dict[str, ArmResult]
    deltas: Deltas
    verdict: str
    seconds: float


def deltas_and_verdict(arms: dict[str, ArmResult], rare: list[str]) -> tuple[Deltas, str]:
    """``real+synthetic`` minus each other arm, per class and metric, and the verdict on the rare
    classes' main metric (Dice for segmentation, F1 for classification)."""
    if "real+synthetic" not in arms:
        return {}, "no real+synthetic arm"
    c = arms["real+synthetic"].summary
    others = {k: arms[k].summary for k in ("real", "weighted") if k in arms}
    deltas = {f"real+synthetic - {k}": {name: {m: (round(c[name][m].mean - o[name][m].mean, 4)
                                                    if c[name][m].mean is not None and o[name][m].mean is not None
                                                    else None) for m in c[name]} for name in c}
              for k, o in others.items()}
    main = "dice" if any("dice" in v for v in c.values()) else "f1"
    verdicts = []
    for name in (r for r in rare if r in c):
        beats = []
        for k, o in others.items():
            if c[name][main].mean is None or o[name][main].mean is None:
                continue
            d = c[name][main].mean - o[name][main].mean
            spread = c[name][main].std + o[name][main].std
            beats.append(f"{'beats' if d > spread else 'does not beat'} {k} ({d:+.3f}, spread {spread:.3f})")
        verdicts.append(f"{name} {main}: real+synthetic " + "; ".join(beats))
    return deltas, ". ".join(verdicts) or "no rare class to judge"


def format_evaluation(ev: Evaluation) -> str:
    """The evaluation as a text table: per class and metric, mean ± std per arm."""
    arms = list(ev.arms)
    first = next(iter(ev.arms.values())).summary
    sp = ev.split
    lines = [(f"evaluation ({ev.task}, {ev.resolution}; {len(ev.seeds)} seeds; split train {sp.train} / val "
              f"{sp.val} / test {sp.test} real, +{sp.synthetic} synthetic)")]
    head = f"{'class':16s} {'metric':9s} " + " ".join(f"{a:>18s}" for a in arms)
    lines += [head, "-" * len(head)]
    for name in ev.classes:
        for m in first[name]:
            cells = []
            for a in arms:
                s = ev.arms[a].summary[name][m]
                cells.append(f"{'n/a':>18s}" if s.mean is None else f"{s.mean:.3f} ± {s.std:.3f}".rjust(18))
            mark = "*" if name in ev.rare else " "
            lines.append(f"{name + mark:16s} {m:9s} " + " ".join(cells))
    lines.append("* rare class")
    lines.append(f"verdict: {ev.verdict}")
    return "\n".join(lines)


def write_evaluation(ev: Evaluation, out: str | Path, *, overwrite: bool = False) -> dict[str, Path]:
    """``evaluation.json`` and ``evaluation.txt`` in ``out`` (both checked before either is written)."""
    out = Path(out)
    paths = {"evaluation": out / "evaluation.json", "table": out / "evaluation.txt"}
    for p in paths.values():
        check_writable(p, overwrite=overwrite)
    write_text(paths["evaluation"], dump(ev.to_dict()), overwrite=overwrite)
    write_text(paths["table"], format_evaluation(ev) + "\n", overwrite=overwrite)
    return paths

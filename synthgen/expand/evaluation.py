"""``evaluation.json`` / ``evaluation.txt``: the settings and findings of `synthgen evaluate`.

`synthgen.expand.evaluate.evaluate` trains the arms and returns an `Evaluation`; `evaluate_job`
writes it (`write_evaluation`) and hands the same object to the HTML report; `Evaluation.read`
reads a file back into it. Per arm: the training-set size and cases, the loss's class weights
(weighted arms), per seed the test metrics and the validation learning curve, and the summary
over seeds (mean ± sample std of the seeds that define the metric). ``arms``, ``deltas``,
``verdict`` and ``flags`` are measured on the dataset's own test split; ``test_sets`` holds the
same per external test set (``--test``). Deltas are differences of means, every arm minus
``real`` and minus ``weighted``; the verdict says, per rare class and arm with synthetic cases,
whether it beats ``real`` and ``weighted`` by more than the seed spread (the sum of the two
stds); the flags name every other class whose main metric drops by more than that spread when
synthetic cases are added (``real+synthetic`` vs ``real``, ``weighted+synthetic`` vs ``weighted``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from synthgen.errors import InputError
from synthgen.expand.documents import Document, dump
from synthgen.files.atomic import check_writable, write_text

#: The arms, in the order they are trained and shown (`synthgen.expand.evaluate` says what each trains on).
ARMS = ("real", "weighted", "real+synthetic", "weighted+synthetic", "synthetic-only-positives")
#: The arms without synthetic cases, which every other arm is compared with.
BASELINES = ("real", "weighted")
#: The arms that train on the synthetic cases.
SYNTHETIC_ARMS = ("real+synthetic", "weighted+synthetic", "synthetic-only-positives")
#: Arm with synthetic cases added -> the same recipe without them (the pairs `synthetic_drops` checks).
ADDED_TO = {"real+synthetic": "real", "weighted+synthetic": "weighted"}
#: The name of the dataset's own test split among the test sets.
INTERNAL = "internal"

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
        check_arms(self.arms)


def check_arms(arms) -> None:
    """`InputError` unless ``arms`` is a non-empty list of distinct names from `ARMS`."""
    if isinstance(arms, str) or not isinstance(arms, (list, tuple)) or not arms:
        raise InputError(f"arms must be a non-empty list of {', '.join(ARMS)}; got {arms!r}")
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise InputError(f"unknown arm {bad[0]!r}; arms: {', '.join(ARMS)}")
    twice = [a for k, a in enumerate(arms) if a in arms[:k]]
    if twice:
        raise InputError(f"arm {twice[0]!r} is listed twice; arms: {', '.join(ARMS)}")


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
    """One arm: how many cases it trained on, every seed's run, and the summary over seeds (class
    -> metric -> stat). ``train_ids``: the cases it trained on (real ids, then synthetic names);
    ``class_weights``: the loss weight per class (None: unweighted). In an external test set's
    results both are left empty: the arm is the one of `Evaluation.arms`, only tested elsewhere."""

    n_train: int
    per_seed: list[SeedRun]
    summary: dict[str, dict[str, Stat]]
    train_ids: list[str] = dataclasses.field(default_factory=list)
    class_weights: dict[str, float] | None = None

    @classmethod
    def of(cls, n_train: int, runs: list[SeedRun], *, train_ids: list[str] | None = None,
           class_weights: dict[str, float] | None = None) -> ArmResult:
        """The arm of ``runs`` with its summary over seeds (undefined values left out)."""
        summary: dict[str, dict[str, Stat]] = {}
        for name, metrics in runs[0].metrics.items():
            summary[name] = {}
            for m in metrics:
                v = np.array([np.nan if r.metrics[name][m] is None else r.metrics[name][m] for r in runs], float)
                v = v[~np.isnan(v)]
                summary[name][m] = Stat(mean=round(float(v.mean()), 4) if v.size else None,
                                        std=round(float(v.std(ddof=1)), 4) if v.size > 1 else 0.0)
        return cls(n_train=n_train, per_seed=runs, summary=summary, train_ids=list(train_ids or []),
                   class_weights=class_weights)


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
class ExternalResult:
    """The arms tested on one external test set (``--test``): never trained or validated on, read by
    the same readers, its classes mapped to the dataset's by name. ``arms`` as in `Evaluation`
    (per seed the metrics on this set; the curves and training cases are in `Evaluation.arms`)."""

    name: str
    dataset: str
    case_ids: list[str]
    arms: dict[str, ArmResult]
    deltas: Deltas
    verdict: str
    flags: list[str]


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
    flags: list[str] = dataclasses.field(default_factory=list)
    test_sets: list[ExternalResult] = dataclasses.field(default_factory=list)

    def results(self) -> list[tuple[str, str, list[str], dict[str, ArmResult], Deltas, str, list[str]]]:
        """Every test set's results, the dataset's own split first: (name, what it is, case ids,
        arms, deltas, verdict, flags)."""
        own = (INTERNAL, f"the dataset's own test split ({self.split.test} cases)", self.split_ids.get("test", []),
               self.arms, self.deltas, self.verdict, self.flags)
        return [own, *((t.name, f"{t.dataset} ({len(t.case_ids)} cases)", t.case_ids, t.arms, t.deltas, t.verdict,
                        t.flags) for t in self.test_sets)]


def main_metric(arms: dict[str, ArmResult]) -> str:
    """The metric the verdict and the flags judge: Dice (segmentation) or F1 (classification)."""
    return "dice" if any("dice" in v for a in arms.values() for v in a.summary.values()) else "f1"


def _difference(a: Stat, b: Stat) -> float | None:
    return round(a.mean - b.mean, 4) if a.mean is not None and b.mean is not None else None


def deltas_and_verdict(arms: dict[str, ArmResult], rare: list[str]) -> tuple[Deltas, str]:
    """Every arm but ``real`` minus ``real`` and minus ``weighted`` (``"real+synthetic - real"``: per class and
    metric, the difference of means), and the verdict on the rare classes' main metric (`main_metric`)
    for every arm with synthetic cases: does it beat each baseline by more than the seed spread?"""
    deltas = {f"{arm} - {base}": {name: {m: _difference(a.summary[name][m], arms[base].summary[name][m])
                                        for m in a.summary[name]} for name in a.summary}
              for arm, a in arms.items() if arm != "real" for base in BASELINES if base in arms and base != arm}
    judged = [arm for arm in SYNTHETIC_ARMS if arm in arms]
    if not judged:
        return deltas, "no arm with synthetic cases"
    main = main_metric(arms)
    verdicts = []
    for name in rare:
        for arm in judged:
            c = arms[arm].summary.get(name, {}).get(main)
            beats = []
            for base in (b for b in BASELINES if b in arms):
                o = arms[base].summary.get(name, {}).get(main)
                if c is None or o is None or c.mean is None or o.mean is None:
                    continue
                d, spread = c.mean - o.mean, c.std + o.std
                beats.append(f"{'beats' if d > spread else 'does not beat'} {base} ({d:+.3f}, spread {spread:.3f})")
            if beats:
                verdicts.append(f"{name} {main}: {arm} " + "; ".join(beats))
    return deltas, ". ".join(verdicts) or "no rare class to judge"


def synthetic_drops(arms: dict[str, ArmResult], rare: list[str]) -> list[str]:
    """Every class other than the rare ones whose main metric falls by more than the seed spread
    (the sum of the two stds) when synthetic cases are added to a recipe (`ADDED_TO`); none with
    fewer than two seeds, which have no spread to judge against."""
    main = main_metric(arms)
    out = []
    for arm, base in ADDED_TO.items():
        if arm not in arms or base not in arms or min(len(arms[arm].per_seed), len(arms[base].per_seed)) < 2:
            continue
        for name, metrics in arms[base].summary.items():
            b, a = metrics.get(main), arms[arm].summary.get(name, {}).get(main)
            if name in rare or a is None or b is None or a.mean is None or b.mean is None:
                continue
            drop, spread = b.mean - a.mean, a.std + b.std
            if drop > spread:
                out.append(f"{name} {main} drops with {arm} vs {base}: {b.mean:.3f} -> {a.mean:.3f} "
                           f"(-{drop:.3f}, more than the seed spread {spread:.3f})")
    return out


def format_evaluation(ev: Evaluation) -> str:
    """The evaluation as text: per test set, per class and metric, mean ± std per arm; the verdict
    and the flags."""
    arms = list(ev.arms)
    sp = ev.split
    lines = [(f"evaluation ({ev.task}, {ev.resolution}; {len(ev.seeds)} seeds; split train {sp.train} / val "
              f"{sp.val} / test {sp.test} real, +{sp.synthetic} synthetic)")]
    for name, what, _, results, _, verdict, flags in ev.results():
        lines.append(f"test set {name}: {what}")
        head = f"{'class':16s} {'metric':9s} " + " ".join(f"{a:>24s}" for a in arms)
        lines += [head, "-" * len(head)]
        metrics = list(dict.fromkeys(m for a in results.values() for v in a.summary.values() for m in v))
        for c in ev.classes:
            for m in (m for m in metrics if any(m in a.summary.get(c, {}) for a in results.values())):
                cells = []
                for a in arms:
                    s = results[a].summary.get(c, {}).get(m)
                    cells.append(f"{'n/a':>24s}" if s is None or s.mean is None else f"{s.mean:.3f} ± {s.std:.3f}".rjust(24))
                mark = "*" if c in ev.rare else " "
                lines.append(f"{c + mark:16s} {m:9s} " + " ".join(cells))
        lines.append(f"verdict: {verdict}")
        lines += [f"flag: {f}" for f in flags]
    lines.append("* rare class")
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

"""What each arm of `synthgen evaluate` trains on, and which (arm, seed) runs a rank trains.

- ``real``: the real training cases; uniform case sampling, unweighted loss.
- ``weighted``: the same cases with class-balanced case sampling (a case is drawn in proportion to
  the inverse frequency of the rarest class it contains) and a class-weighted loss (inverse square
  root of each class's frequency, capped): the usual answer to imbalance without new data.
- ``real+synthetic``: the real training cases plus the synthetic cases whose host scan is a
  training case (a synthetic case built on a validation or test scan is dropped and counted);
  the ``real`` recipe otherwise.
- ``weighted+synthetic``: the ``weighted`` recipe on the real + synthetic training cases, its
  sampling and loss weights computed on that union.
- ``synthetic-only-positives``: the rare classes seen only through synthetic cases, as for a
  finding the user has no real example of. Every real training case that contains a rare class
  is removed from training, not relabelled: a relabelled case would still show the finding, and
  teach the model that it is background. Synthetic cases built on such a scan go too (they show
  that scan's real finding). The checkpoint is chosen by the validation score of the other
  classes, so no real positive's label decides anything either; the ``real`` recipe otherwise, so
  it reads against ``real+synthetic``: what the real positives add on top of the synthetic ones.

Runs are (arm, seed) pairs in one fixed order, dealt round-robin to the ranks (`runs_of_rank`);
a run depends on its arm and seed only, so N ranks train exactly the runs one rank trains, and
the ranks' results (`RunResult`, sent as JSON) are put back in that order.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from synthgen.errors import InputError
from synthgen.expand.cases import Case
from synthgen.expand.documents import from_json
from synthgen.expand.evaluation import ARMS, CurvePoint, Metrics


@dataclasses.dataclass(frozen=True)
class ArmData:
    """One arm's training: its cases, whether cases are drawn class-balanced, the loss's class
    weights (None: unweighted) and the classes left out of the validation score that picks the
    checkpoint."""

    train: list[Case]
    balanced: bool
    class_weights: np.ndarray | None
    val_ignore: tuple[str, ...] = ()


def case_weights(cases: list[Case], n_classes: int, *, task: str, balanced: bool) -> np.ndarray:
    """Sampling probability per case: uniform, or by the inverse frequency of its rarest class."""
    if not balanced:
        return np.full(len(cases), 1.0 / len(cases))
    present = [set(c.fg) if task == "seg" else {c.label} for c in cases]
    freq = np.array([sum(k in p for p in present) for k in range(n_classes)], float)
    w = np.array([max((1.0 / freq[k] for k in p), default=1.0 / len(cases)) for p in present])
    return w / w.sum()


def class_weights(cases: list[Case], n_classes: int, *, task: str, cap: float) -> np.ndarray:
    """Loss weight per class: inverse square root of its frequency (voxels or cases), 1 for the most common."""
    if task == "seg":
        counts = np.zeros(n_classes)
        for c in cases:
            counts += np.bincount(c.target.ravel(), minlength=n_classes)[:n_classes]
    else:
        counts = np.bincount([c.label for c in cases], minlength=n_classes).astype(float)
    counts = np.maximum(counts, 1.0)
    return np.clip(np.sqrt(counts.max() / counts), 1.0, cap)


def contains(case: Case, classes: set[int], *, task: str) -> bool:
    """Whether ``case`` shows any of the class indices ``classes``."""
    return bool(set(case.fg) & classes) if task == "seg" else case.label in classes


def arm_data(arm: str, train: list[Case], synthetic: list[Case], hosts: dict[str, str | None], *,
             names: list[str], rare: list[str], task: str, cap: float) -> ArmData:
    """What ``arm`` trains on (module doc): from the real training cases ``train``, the synthetic
    cases ``synthetic`` (hosted by training scans) and each synthetic case's host (``hosts``)."""
    if arm not in ARMS:
        raise InputError(f"unknown arm {arm!r}; arms: {', '.join(ARMS)}")
    balanced = arm.startswith("weighted")
    cases = list(train)
    ignore: tuple[str, ...] = ()
    if arm in ("real+synthetic", "weighted+synthetic"):
        cases += synthetic
    elif arm == "synthetic-only-positives":
        positive = {names.index(r) for r in rare}
        cases = [c for c in train if not contains(c, positive, task=task)]
        removed = {c.id for c in train} - {c.id for c in cases}
        cases += [c for c in synthetic if hosts.get(c.id) not in removed]
        ignore = tuple(rare)
        if not cases:
            raise InputError("synthetic-only-positives: every training case contains a rare class and no synthetic "
                             "case is left; leave that arm out (--arms)")
    weights = class_weights(cases, len(names), task=task, cap=cap) if balanced else None
    return ArmData(train=cases, balanced=balanced, class_weights=weights, val_ignore=ignore)


def all_runs(arms: list[str], seeds: int) -> list[tuple[str, int]]:
    """Every (arm, seed) of an evaluation, in the order the results are kept."""
    return [(arm, s) for arm in arms for s in range(seeds)]


def runs_of_rank(arms: list[str], seeds: int, *, rank: int, world: int) -> list[tuple[str, int]]:
    """The (arm, seed) runs rank ``rank`` of ``world`` trains: every ``world``-th of `all_runs`."""
    if not 0 <= rank < world:
        raise InputError(f"rank must be in [0, {world}), got {rank}")
    return all_runs(arms, seeds)[rank::world]


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One trained (arm, seed): its validation curve and its metrics on every test set (by name)."""

    arm: str
    seed: int
    curve: list[CurvePoint]
    metrics: dict[str, Metrics]

    def encode(self) -> str:
        """As JSON, to send to rank 0 (`decode` reads it back)."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def decode(cls, text: str) -> list[RunResult]:
        """The runs a rank sent (a JSON list of encoded runs)."""
        return [from_json(cls, d, source="a rank's runs") for d in json.loads(text)]


def encode_runs(runs: list[RunResult]) -> str:
    return "[" + ",".join(r.encode() for r in runs) + "]"


def in_order(results: list[RunResult], arms: list[str], seeds: int) -> list[RunResult]:
    """``results`` (from every rank) in `all_runs` order; `InputError` if a run is missing or twice."""
    by_run = {}
    for r in results:
        if (r.arm, r.seed) in by_run:
            raise InputError(f"run {r.arm} seed {r.seed} came back twice")
        by_run[(r.arm, r.seed)] = r
    want = all_runs(arms, seeds)
    missing = [f"{a} seed {s}" for a, s in want if (a, s) not in by_run]
    if missing:
        raise InputError(f"{len(missing)} run(s) missing (first: {missing[0]}); did a rank fail?")
    return [by_run[k] for k in want]

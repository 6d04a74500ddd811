"""The fixed real train / validation / test split that `synthgen evaluate` scores on.

Cases are stratified by the rarest class they contain (segmentation) or by their class
(classification), so every class that is in at least three cases lands in all three parts.
The split depends only on the real items and ``seed``; synthetic items never enter validation
or test, and ``synthgen expand --hold-out`` uses the same split to keep val/test scans from
hosting synthetic lesions.
"""

from __future__ import annotations

import numpy as np

from synthgen.expand.analysis import Analysis

VAL_FRACTION = 0.15
TEST_FRACTION = 0.35


def stratum_of(analysis: Analysis) -> dict[str, str]:
    """Each case's stratum: the rarest class it contains (``"none"`` when it has none)."""
    order = sorted(analysis.classes, key=lambda c: (c.n_cases, c.name))
    out: dict[str, str] = {}
    for c in order:
        for case in c.cases:
            out.setdefault(case, c.name)
    return out


def fixed_split(analysis: Analysis, case_ids: list[str], *, seed: int = 0, val_fraction: float = VAL_FRACTION,
                test_fraction: float = TEST_FRACTION) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "test": [...]}`` of ``case_ids``, stratified (see module doc)."""
    strata = stratum_of(analysis)
    groups: dict[str, list[str]] = {}
    for cid in sorted(case_ids):
        groups.setdefault(strata.get(cid, "none"), []).append(cid)
    rng = np.random.default_rng(seed)
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for key in sorted(groups):
        ids = [groups[key][i] for i in rng.permutation(len(groups[key]))]
        n = len(ids)
        n_test = max(1, round(test_fraction * n)) if n >= 2 else 0
        n_val = max(1, round(val_fraction * n)) if n >= 3 else 0
        split["test"] += ids[:n_test]
        split["val"] += ids[n_test:n_test + n_val]
        split["train"] += ids[n_test + n_val:]
    return {k: sorted(v) for k, v in split.items()}


def training_part(ds, analysis: Analysis, *, seed: int = 0):
    """``ds`` with only the items of its fixed training split (`synthgen expand --hold-out`)."""
    import dataclasses

    train = set(fixed_split(analysis, [it.id for it in ds.items], seed=seed)["train"])
    return dataclasses.replace(ds, items=[it for it in ds.items if it.id in train])

"""The test metrics of `synthgen evaluate`, per class.

Segmentation: voxel Dice pooled over the test cases (the sums of every case's intersections and
sizes, so a large case weighs more) and, for lesion classes, lesion-level recall, precision and
F1: a true connected component counts as found when the prediction of its class touches it, a
predicted component as a hit when it touches the truth. Classification: per class recall,
precision and F1. NaN means undefined (a class absent from the truth and the prediction).
"""

from __future__ import annotations

import numpy as np

from synthgen.expand.plan import lesion_of_class


def dice_sums(pred: np.ndarray, gt: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, 3): intersection, predicted voxels, true voxels per class."""
    inter = np.bincount(gt[pred == gt].ravel(), minlength=n_classes)[:n_classes]
    return np.stack([inter, np.bincount(pred.ravel(), minlength=n_classes)[:n_classes],
                     np.bincount(gt.ravel(), minlength=n_classes)[:n_classes]], 1).astype(float)


def pooled_dice(sums: np.ndarray) -> np.ndarray:
    denom = sums[:, 1] + sums[:, 2]
    return np.where(denom > 0, 2 * sums[:, 0] / np.maximum(denom, 1), np.nan)


def _components(pred: np.ndarray, gt: np.ndarray, k: int) -> tuple[int, int, int, int]:
    """(true components found, true components, predicted components that touch truth, predicted components)."""
    from scipy import ndimage

    g, ng = ndimage.label(gt == k)
    p, npred = ndimage.label(pred == k)
    found = len(np.unique(g[(pred == k) & (g > 0)]))
    hit = len(np.unique(p[(gt == k) & (p > 0)]))
    return found, ng, hit, npred


def _f1(recall: float, precision: float) -> float:
    if np.isnan(recall) or np.isnan(precision) or recall + precision == 0:
        return 0.0 if not (np.isnan(recall) or np.isnan(precision)) else float("nan")
    return 2 * recall * precision / (recall + precision)


def seg_metrics(preds: list[np.ndarray], gts: list[np.ndarray], names: list[str]) -> dict[str, dict[str, float]]:
    """Per class (index 1..): pooled Dice, and for lesion classes lesion-level recall / precision / F1."""

    n = len(names)
    sums = sum(dice_sums(p, g, n) for p, g in zip(preds, gts))
    dice = pooled_dice(sums)
    out: dict[str, dict[str, float]] = {}
    for k in range(1, n):
        if lesion_of_class(names[k]) is None:  # an organ: detection counts mean nothing
            out[names[k]] = {"dice": float(dice[k])}
            continue
        found = total = hit = npred = 0
        for p, g in zip(preds, gts):
            a, b, c, d = _components(p, g, k)
            found, total, hit, npred = found + a, total + b, hit + c, npred + d
        recall = found / total if total else float("nan")
        precision = hit / npred if npred else (float("nan") if not total else 0.0)
        out[names[k]] = {"dice": float(dice[k]), "recall": recall, "precision": precision,
                         "f1": _f1(recall, precision)}
    return out


def cls_metrics(preds: list[int], gts: list[int], names: list[str]) -> dict[str, dict[str, float]]:
    p, g = np.asarray(preds), np.asarray(gts)
    out = {}
    for k, name in enumerate(names):
        tp, pos, pp = int(((p == k) & (g == k)).sum()), int((g == k).sum()), int((p == k).sum())
        recall = tp / pos if pos else float("nan")
        precision = tp / pp if pp else (float("nan") if not pos else 0.0)
        out[name] = {"recall": recall, "precision": precision, "f1": _f1(recall, precision)}
    return out

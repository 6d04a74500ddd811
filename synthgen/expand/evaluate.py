"""`synthgen evaluate`: does the synthetic data help a downstream model? Train and measure.

Three arms, each trained once per seed on the same fixed real split (`synthgen.expand.split`):

- ``real``: the real training cases;
- ``weighted``: the same cases with class-balanced case sampling (a case is drawn in proportion
  to the inverse frequency of the rarest class it contains) and a class-weighted loss, the usual
  answer to imbalance without new data;
- ``real+synthetic``: the real training cases plus the synthetic cases whose host scan is a
  training case (a synthetic case built on a validation or test scan is dropped and counted).

Validation and test are real cases only. Segmentation trains a MONAI UNet on patches (two
thirds centred on a foreground voxel of a class the case contains, the class drawn with weight
1/sqrt(its voxel count in the case, so small structures such as lesions come first) with
cross-entropy + Dice;
the checkpoint with the best mean validation Dice is tested. Per class it reports voxel Dice
pooled over the test cases and lesion-level recall, precision and F1 (a connected component
counts as found when the prediction of its class touches it). Classification trains a small
MONAI CNN (`monai.networks.nets.Classifier`) on the whole image resampled to ``size`` and
reports per-class recall, precision and F1. Seeds pair across arms: arm k with seed s starts
from the same weights and sees the same random stream, so differences come from the data.

"Beats by more than the seed spread" means the difference of means is larger than the sum of
the two arms' standard deviations (sample std over seeds): the mean ± std bars do not overlap.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np

from synthgen.errors import InputError
from synthgen.expand.analysis import analyse
from synthgen.expand.dataset import Dataset, Item
from synthgen.expand.generate import MANIFEST
from synthgen.expand.plan import lesion_of_class
from synthgen.expand.split import fixed_split
from synthgen.files.atomic import write_text
from synthgen.io import read, read_pair

ARMS = ("real", "weighted", "real+synthetic")


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


@dataclasses.dataclass
class Case:
    id: str
    image: np.ndarray  # (D, H, W) float32 in [-1, 1]
    label: np.ndarray | int  # (D, H, W) int64 class indices (seg) or a class index (cls)
    fg: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)  # class -> voxel indices (seg)
    spacing: tuple[float, ...] = ()  # mm, as trained on


# ------------------------------------------------------------------ data
def _normalise(hu: np.ndarray, window: list[float]) -> np.ndarray:
    lo, hi = window
    return (np.clip(hu, lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)


def _load_seg(image: Path, label: Path, lut: np.ndarray, cfg: EvalConfig, cid: str) -> Case:
    ct, lab = read_pair(image, label)
    if cfg.spacing:
        ct = ct.resample(cfg.spacing)
        lab = lab.resample_to(ct)
    arr = np.asarray(lab.numpy()).astype(np.int64)
    if arr.max() >= lut.size:
        raise InputError(f"{label}: label value {arr.max()} is not a declared class")
    idx = lut[arr]
    fg = {int(c): np.argwhere(idx == c) for c in np.unique(idx) if c > 0}
    img = _normalise(np.asarray(ct.numpy(), np.float32), cfg.window).astype(np.float32)
    return Case(cid, img, idx, fg, tuple(round(float(x), 3) for x in ct.spacing))


def _load_cls(image: Path, cls: int, cfg: EvalConfig, cid: str) -> Case:
    import torch


    ct = read(image)
    x = torch.from_numpy(_normalise(np.asarray(ct.numpy(), np.float32), cfg.window))[None, None]
    x = torch.nn.functional.interpolate(x, size=tuple(cfg.size), mode="trilinear", align_corners=False)
    return Case(cid, x[0, 0].numpy().astype(np.float32), int(cls))


def _synthetic_items(expanded: Path, train_ids: set[str]) -> tuple[list[tuple[str, Path, Path | None, str]], int]:
    """(id, image, label, class) of the manifest's synthetic cases hosted by training scans; dropped count."""

    path = expanded / MANIFEST
    if not path.exists():
        raise InputError(f"{expanded}: no {MANIFEST}; run `synthgen expand` first (or leave --expanded out)")
    keep, dropped = [], 0
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("host") is not None and rec["host"] not in train_ids:
            dropped += 1
            continue
        o = rec["outputs"]
        keep.append((rec["name"], expanded / o["image"], expanded / o["label"] if o.get("label") else None,
                     rec["class"]))
    return keep, dropped


# ------------------------------------------------------------------ model, sampling
def _seg_net(n_classes: int, cfg: EvalConfig):
    from monai.networks.nets import UNet

    ch = tuple(cfg.channels)
    return UNet(spatial_dims=3, in_channels=1, out_channels=n_classes, channels=ch, strides=(2,) * (len(ch) - 1),
                num_res_units=1, norm=cfg.norm)


def _cls_net(n_classes: int, cfg: EvalConfig):
    from monai.networks.nets import Classifier

    ch = tuple(cfg.channels)
    return Classifier(in_shape=(1, *cfg.size), classes=n_classes, channels=ch, strides=(2,) * len(ch))


def _patch(case: Case, centre: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` patch of the case around ``centre`` (zero / background padded at the edges)."""
    shape = np.asarray(case.image.shape)
    start = centre - size // 2
    img = np.full(tuple(size), -1.0, np.float32)
    lab = np.zeros(tuple(size), np.int64)
    lo = np.maximum(start, 0)
    hi = np.minimum(start + size, shape)
    dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))
    src = tuple(slice(a, b) for a, b in zip(lo, hi))
    img[dst] = case.image[src]
    lab[dst] = case.label[src]
    return img, lab


def _case_weights(cases: list[Case], n_classes: int, *, task: str, balanced: bool) -> np.ndarray:
    """Sampling probability per case: uniform, or by the inverse frequency of its rarest class."""
    if not balanced:
        return np.full(len(cases), 1.0 / len(cases))
    present = [set(c.fg) if task == "seg" else {c.label} for c in cases]
    freq = np.array([sum(k in p for p in present) for k in range(n_classes)], float)
    w = np.array([max((1.0 / freq[k] for k in p), default=1.0 / len(cases)) for p in present])
    return w / w.sum()


def _class_weights(cases: list[Case], n_classes: int, *, task: str, cap: float) -> np.ndarray:
    """Loss weight per class: inverse square root of its frequency (voxels or cases), 1 for the most common."""
    if task == "seg":
        counts = np.zeros(n_classes)
        for c in cases:
            counts += np.bincount(c.label.ravel(), minlength=n_classes)[:n_classes]
    else:
        counts = np.bincount([c.label for c in cases], minlength=n_classes).astype(float)
    counts = np.maximum(counts, 1.0)
    return np.clip(np.sqrt(counts.max() / counts), 1.0, cap)


def _batch(cases: list[Case], p: np.ndarray, rng: np.random.Generator, cfg: EvalConfig, task: str):
    import torch

    pick = rng.choice(len(cases), size=cfg.batch, p=p)
    if task == "cls":
        x = np.stack([cases[i].image for i in pick])[:, None]
        return torch.from_numpy(x), torch.tensor([cases[i].label for i in pick])
    size = np.asarray(cfg.patch)
    xs, ys = [], []
    for i in pick:
        c = cases[i]
        if c.fg and rng.random() < cfg.foreground_p:
            ks = list(c.fg)
            w = np.array([len(c.fg[k]) ** -0.5 for k in ks])  # small structures (lesions) first
            k = ks[int(rng.choice(len(ks), p=w / w.sum()))]
            centre = c.fg[k][int(rng.integers(len(c.fg[k])))]
        else:
            centre = np.array([rng.integers(s) for s in c.image.shape])
        img, lab = _patch(c, centre, size)
        if rng.random() < 0.5:  # left-right flip
            img, lab = img[::-1].copy(), lab[::-1].copy()
        xs.append(img)
        ys.append(lab)
    return torch.from_numpy(np.stack(xs)[:, None]), torch.from_numpy(np.stack(ys))


# ------------------------------------------------------------------ inference, metrics
def _predict(net, cases: list[Case], cfg: EvalConfig, task: str) -> list[np.ndarray | int]:
    import torch
    from monai.inferers import sliding_window_inference

    net.eval()
    out = []
    with torch.no_grad():
        for c in cases:
            x = torch.from_numpy(c.image)[None, None]
            if task == "cls":
                out.append(int(net(x).argmax(1)))
                continue
            logits = sliding_window_inference(x, tuple(cfg.patch), sw_batch_size=4, predictor=net, overlap=0.25,
                                              mode="gaussian")
            out.append(logits.argmax(1)[0].numpy())
    net.train()
    return out


def _dice_sums(pred: np.ndarray, gt: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, 3): intersection, predicted voxels, true voxels per class."""
    inter = np.bincount(gt[pred == gt].ravel(), minlength=n_classes)[:n_classes]
    return np.stack([inter, np.bincount(pred.ravel(), minlength=n_classes)[:n_classes],
                     np.bincount(gt.ravel(), minlength=n_classes)[:n_classes]], 1).astype(float)


def _pooled_dice(sums: np.ndarray) -> np.ndarray:
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
    sums = sum(_dice_sums(p, g, n) for p, g in zip(preds, gts))
    dice = _pooled_dice(sums)
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


def _val_score(net, val: list[Case], names: list[str], cfg: EvalConfig, task: str) -> tuple[float, dict]:
    preds = _predict(net, val, cfg, task)
    if task == "cls":
        m = cls_metrics(preds, [c.label for c in val], names)
        per = {k: v["recall"] for k, v in m.items()}
    else:
        n = len(names)
        d = _pooled_dice(sum(_dice_sums(p, c.label, n) for p, c in zip(preds, val)))
        per = {names[k]: float(d[k]) for k in range(1, n)}
    vals = [v for v in per.values() if not np.isnan(v)]
    return (float(np.mean(vals)) if vals else 0.0), per


# ------------------------------------------------------------------ training
def train_arm(train: list[Case], val: list[Case], names: list[str], cfg: EvalConfig, *, task: str, seed: int,
              balanced: bool, progress: bool = False, desc: str = "") -> tuple[object, list[dict]]:
    """Train one model; returns (the best-on-validation model, learning curve)."""
    import torch
    from monai.losses import DiceLoss
    from tqdm.auto import tqdm

    n = len(names)
    torch.manual_seed(seed)
    net = _seg_net(n, cfg) if task == "seg" else _cls_net(n, cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    cw = torch.tensor(_class_weights(train, n, task=task, cap=cfg.max_class_weight), dtype=torch.float32) \
        if balanced else None
    dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True) if task == "seg" else None
    p = _case_weights(train, n, task=task, balanced=balanced)
    rng = np.random.default_rng(seed)
    curve: list[dict] = []
    best, best_state = -1.0, None
    for step in tqdm(range(1, cfg.steps + 1), desc=desc, disable=not progress, leave=False):
        x, y = _batch(train, p, rng, cfg, task)
        logits = net(x)
        loss = torch.nn.functional.cross_entropy(logits, y, weight=cw)
        if dice is not None:
            loss = loss + dice(logits, y[:, None])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % cfg.val_every == 0 or step == cfg.steps:
            score, per = _val_score(net, val, names, cfg, task)
            curve.append({"step": step, "loss": round(float(loss.detach()), 4), "val_mean": round(score, 4),
                          "val": {k: round(v, 4) for k, v in per.items()}})
            if score > best:
                best, best_state = score, {k: v.detach().clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    return net, curve


def _summary(per_seed: list[dict]) -> dict:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for cls in per_seed[0]["metrics"]:
        out[cls] = {}
        for m in per_seed[0]["metrics"][cls]:
            v = np.array([s["metrics"][cls][m] for s in per_seed], float)
            v = v[~np.isnan(v)]
            out[cls][m] = {"mean": round(float(v.mean()), 4) if v.size else None,
                           "std": round(float(v.std(ddof=1)), 4) if v.size > 1 else 0.0}
    return out


def _deltas(arms: dict, rare: list[str]) -> tuple[dict, str]:
    deltas: dict[str, dict] = {}
    verdicts = []
    if "real+synthetic" not in arms:
        return deltas, "no real+synthetic arm"
    c = arms["real+synthetic"]["summary"]
    for other in ("real", "weighted"):
        if other not in arms:
            continue
        o = arms[other]["summary"]
        key = f"real+synthetic - {other}"
        deltas[key] = {cls: {m: (round(c[cls][m]["mean"] - o[cls][m]["mean"], 4)
                                 if c[cls][m]["mean"] is not None and o[cls][m]["mean"] is not None else None)
                             for m in c[cls]} for cls in c}
    main = "dice" if any("dice" in v for v in c.values()) else "f1"
    for cls in rare:
        if cls not in c:
            continue
        beats = []
        for other in ("real", "weighted"):
            if other not in arms or c[cls][main]["mean"] is None or arms[other]["summary"][cls][main]["mean"] is None:
                continue
            d = c[cls][main]["mean"] - arms[other]["summary"][cls][main]["mean"]
            spread = c[cls][main]["std"] + arms[other]["summary"][cls][main]["std"]
            beats.append(f"{'beats' if d > spread else 'does not beat'} {other} "
                         f"({d:+.3f}, spread {spread:.3f})")
        verdicts.append(f"{cls} {main}: real+synthetic " + "; ".join(beats))
    return deltas, ". ".join(verdicts) or "no rare class to judge"


def evaluate(ds: Dataset, *, expanded: str | Path | None = None, cfg: EvalConfig | None = None,
             progress: bool = True) -> dict:
    """Train every arm with every seed and return the evaluation document (see module doc)."""
    from tqdm.auto import tqdm


    cfg = cfg or EvalConfig()
    t0 = time.perf_counter()
    bad = [a for a in cfg.arms if a not in ARMS]
    if bad:
        raise InputError(f"unknown arm {bad[0]!r}; arms: {', '.join(ARMS)}")
    if cfg.seeds < 1:
        raise InputError("--seeds must be at least 1")
    task = ds.task
    values = sorted(ds.classes)
    names = [ds.classes[v] for v in values]
    a = analyse(ds, rare=cfg.rare)
    split = fixed_split(a, [it.id for it in ds.items], seed=cfg.split_seed)
    if not split["val"] or not split["test"] or not split["train"]:
        raise InputError(f"dataset too small to split into train/val/test ({len(ds.items)} usable items)")
    by_id = {it.id: it for it in ds.items}
    if task == "seg":
        lut = np.zeros(max(values) + 1, np.int64)
        lut[values] = np.arange(len(values))

        def load(cid, image, label, cls):
            return _load_seg(image, label, lut, cfg, cid)
    else:
        index = {n: k for k, n in enumerate(names)}

        def load(cid, image, label, cls):
            return _load_cls(image, index[cls], cfg, cid)

    def load_item(it: Item) -> Case:
        return load(it.id, it.image, it.label, it.class_name)

    parts = {k: [load_item(by_id[i]) for i in tqdm(ids, desc=f"load {k}", disable=not progress, leave=False)]
             for k, ids in split.items()}
    synth: list[Case] = []
    dropped = 0
    if "real+synthetic" in cfg.arms:
        root = Path(expanded) if expanded is not None else ds.root
        items, dropped = _synthetic_items(root, set(split["train"]))
        synth = [load(*x) for x in tqdm(items, desc="load synthetic", disable=not progress, leave=False)]
        if not synth:
            raise InputError(f"{root}: no synthetic case hosted by a training scan; expand with --hold-out")
    fg_names = names[1:] if task == "seg" else names
    arms: dict[str, dict] = {}
    seeds = list(range(cfg.seeds))
    runs = [(arm, s) for arm in cfg.arms for s in seeds]
    bar = tqdm(runs, desc="evaluate", disable=not progress)
    for arm, s in bar:
        bar.set_postfix_str(f"{arm} seed {s}")
        train = parts["train"] + (synth if arm == "real+synthetic" else [])
        net, curve = train_arm(train, parts["val"], names, cfg, task=task, seed=s, balanced=arm == "weighted",
                               progress=progress, desc=f"{arm} s{s}")
        preds = _predict(net, parts["test"], cfg, task)
        gts = [c.label for c in parts["test"]]
        m = seg_metrics(preds, gts, names) if task == "seg" else cls_metrics(preds, gts, names)
        rec = arms.setdefault(arm, {"n_train": len(train), "per_seed": []})
        rec["per_seed"].append({"seed": s, "metrics": {k: {q: (round(x, 4) if not np.isnan(x) else None)
                                                          for q, x in v.items()} for k, v in m.items()},
                                "curve": curve})
    for rec in arms.values():
        rec["summary"] = _summary([{"metrics": {k: {q: (np.nan if x is None else x) for q, x in v.items()}
                                                for k, v in ps["metrics"].items()}} for ps in rec["per_seed"]])
    deltas, verdict = _deltas(arms, a.rare)
    shape = sorted({tuple(c.image.shape) for c in parts["train"]})
    spacings = sorted({c.spacing for c in parts["train"] if c.spacing})
    res = ("x".join(f"{x:g}" for x in spacings[0]) + " mm voxels" + (" (and others)" if len(spacings) > 1 else "")
           if spacings else "native spacing") + \
        (f", {'x'.join(map(str, cfg.patch))} patches from {'/'.join('x'.join(map(str, s)) for s in shape[:3])} volumes"
         if task == "seg" else f", whole image at {'x'.join(map(str, cfg.size))}")
    return {"task": task, "dataset": str(ds.root), "expanded": str(expanded) if expanded else None,
            "resolution": res, "seeds": seeds, "classes": fg_names, "rare": a.rare,
            "split": {"train": len(split["train"]), "val": len(split["val"]), "test": len(split["test"]),
                      "synthetic": len(synth), "synthetic_dropped": dropped, "split_seed": cfg.split_seed},
            "split_ids": split,
            "config": dataclasses.asdict(cfg), "arms": arms, "deltas": deltas, "verdict": verdict,
            "seconds": round(time.perf_counter() - t0, 1)}


def format_evaluation(doc: dict) -> str:
    """The evaluation as a text table: per class and metric, mean ± std per arm."""
    arms = list(doc["arms"])
    first = next(iter(doc["arms"].values()))["summary"]
    sp = doc["split"]
    head = (f"evaluation ({doc['task']}, {doc['resolution']}; {len(doc['seeds'])} seeds; split train "
            f"{sp['train']} / val {sp['val']} / test {sp['test']} real, +{sp['synthetic']} synthetic)")
    lines = [head]
    head = f"{'class':16s} {'metric':9s} " + " ".join(f"{a:>18s}" for a in arms)
    lines += [head, "-" * len(head)]
    for cls in doc["classes"]:
        for m in first[cls]:
            cells = []
            for a in arms:
                s = doc["arms"][a]["summary"][cls][m]
                cells.append(f"{'n/a':>18s}" if s["mean"] is None else f"{s['mean']:.3f} ± {s['std']:.3f}".rjust(18))
            mark = "*" if cls in doc["rare"] else " "
            lines.append(f"{cls + mark:16s} {m:9s} " + " ".join(cells))
    lines.append("* rare class")
    lines.append(f"verdict: {doc['verdict']}")
    return "\n".join(lines)


def write_evaluation(doc: dict, out: str | Path, *, overwrite: bool = False) -> dict[str, Path]:
    out = Path(out)
    paths = {"evaluation": out / "evaluation.json", "table": out / "evaluation.txt"}
    write_text(paths["evaluation"], json.dumps(doc, indent=1) + "\n", overwrite=overwrite)
    write_text(paths["table"], format_evaluation(doc) + "\n", overwrite=overwrite)
    return paths

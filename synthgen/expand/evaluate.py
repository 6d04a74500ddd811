"""`synthgen evaluate`: does the synthetic data help a downstream model? Train and measure.

Three arms, each trained once per seed on the same fixed real split (`synthgen.expand.split`):

- ``real``: the real training cases;
- ``weighted``: the same cases with class-balanced case sampling (a case is drawn in proportion
  to the inverse frequency of the rarest class it contains) and a class-weighted loss, the usual
  answer to imbalance without new data;
- ``real+synthetic``: the real training cases plus the synthetic cases whose host scan is a
  training case (a synthetic case built on a validation or test scan is dropped and counted).

Validation and test are real cases only. Every case is brought to canonical orientation first
(`Case`), so all cases share one voxel-axis order and the left-right flip of training really
mirrors the patient's left and right. Segmentation trains a MONAI UNet on patches (two
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
`evaluate` returns the findings as an `synthgen.expand.evaluation.Evaluation` (``evaluation.json``).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from synthgen.errors import InputError
from synthgen.expand.analysis import analyse
from synthgen.expand.dataset import Dataset, Item
from synthgen.expand.evaluation import (
    ArmResult,
    CurvePoint,
    EvalConfig,
    Evaluation,
    Metrics,
    SeedRun,
    SplitSizes,
    deltas_and_verdict,
)
from synthgen.expand.manifest import read_manifest
from synthgen.expand.plan import lesion_of_class
from synthgen.expand.split import fixed_split
from synthgen.io import read, read_pair
from synthgen.train.loop import private_rng
from synthgen.volume import Volume

#: Units of a case's image: HU mapped through the config's window onto [-1, 1].
NORMALISED = "HU window -> [-1, 1]"


@dataclasses.dataclass(frozen=True)
class Case:
    """One case as the downstream model sees it.

    ``image``: the CT windowed to [-1, 1] (units `NORMALISED`) in canonical orientation
    (`Volume.to_canonical`: voxel axes as close to R, A, S as the grid allows), so that voxel axis 0
    runs along the patient's left-right axis in every case and the training flip
    (`mirror_left_right`) mirrors left and right, whatever the file's voxel order. Segmentation:
    ``label`` is the label map of class indices (0 background) on the image's grid and ``fg`` the
    voxel indices of each class present. Classification: ``label`` is the class index and the image
    is resampled to the network's input size (its affine says where those voxels lie).
    """

    id: str
    image: Volume
    label: Volume | int
    fg: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def pixels(self) -> np.ndarray:
        """The image array, (I, J, K) float32."""
        return self.image.numpy()

    @property
    def target(self) -> np.ndarray | int:
        """What the model must predict: the (I, J, K) int64 class-index array, or the class index."""
        return self.label.numpy() if isinstance(self.label, Volume) else self.label


# ------------------------------------------------------------------ data
def _normalise(hu: np.ndarray, window: list[float]) -> np.ndarray:
    lo, hi = window
    return (np.clip(hu, lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)


def seg_case(ct: Volume, labels: Volume, lut: np.ndarray, cfg: EvalConfig, cid: str) -> Case:
    """A segmentation case from a CT and its label map (one grid): canonical orientation, resampled
    to ``cfg.spacing`` if set, label values mapped to class indices by ``lut`` (value -> index)."""
    ct.check_same_grid(labels, names=(f"{cid} image", f"{cid} label map"))
    ct, labels = ct.to_canonical(), labels.to_canonical()
    if cfg.spacing:
        ct = ct.resample(cfg.spacing)
        labels = labels.resample_to(ct)
    arr = np.asarray(labels.numpy()).astype(np.int64)
    if arr.max() >= lut.size:
        raise InputError(f"{cid}: label value {arr.max()} is not a declared class")
    idx = lut[arr]
    fg = {int(c): np.argwhere(idx == c) for c in np.unique(idx) if c > 0}
    img = _normalise(np.asarray(ct.numpy(), np.float32), cfg.window).astype(np.float32)
    return Case(cid, ct.replace(array=img, units=NORMALISED),
                labels.replace(array=idx, vocab=None, units="class index"), fg)


def cls_case(ct: Volume, cls: int, cfg: EvalConfig, cid: str) -> Case:
    """A classification case: the whole CT in canonical orientation, windowed and resized
    (trilinear, ``align_corners=False``) to ``cfg.size``."""
    import torch

    ct = ct.to_canonical()
    x = torch.from_numpy(_normalise(np.asarray(ct.numpy(), np.float32), cfg.window))[None, None]
    x = torch.nn.functional.interpolate(x, size=tuple(cfg.size), mode="trilinear", align_corners=False)
    scale = np.asarray(ct.shape, float) / np.asarray(cfg.size, float)
    resize = np.eye(4)  # voxel n of the resized grid sits at (n + 0.5) * scale - 0.5 of the original
    resize[:3, :3] = np.diag(scale)
    resize[:3, 3] = 0.5 * scale - 0.5
    return Case(cid, ct.replace(array=x[0, 0].numpy().astype(np.float32), affine=ct.affine @ resize,
                                units=NORMALISED), int(cls))


def _synthetic_items(expanded: Path, train_ids: set[str]) -> tuple[list[tuple[str, Path, Path, str]], int]:
    """(id, image, label, class) of the manifest's synthetic cases hosted by training scans; dropped count."""
    keep, dropped = [], 0
    for line in read_manifest(expanded):
        if line.host is not None and line.host not in train_ids:
            dropped += 1
            continue
        keep.append((line.name, expanded / line.outputs.image, expanded / line.outputs.label, line.class_name))
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
    img[dst] = case.pixels[src]
    lab[dst] = case.target[src]
    return img, lab


def mirror_left_right(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A patch of a canonical `Case` (and its labels) mirrored across the patient's sagittal plane:
    in canonical orientation voxel axis 0 is the left-right axis."""
    return image[::-1].copy(), label[::-1].copy()


def case_weights(cases: list[Case], n_classes: int, *, task: str, balanced: bool) -> np.ndarray:
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
            counts += np.bincount(c.target.ravel(), minlength=n_classes)[:n_classes]
    else:
        counts = np.bincount([c.label for c in cases], minlength=n_classes).astype(float)
    counts = np.maximum(counts, 1.0)
    return np.clip(np.sqrt(counts.max() / counts), 1.0, cap)


def _batch(cases: list[Case], p: np.ndarray, rng: np.random.Generator, cfg: EvalConfig, task: str):
    """A training batch drawn with ``rng``: cases by ``p``; segmentation patches centred on a
    foreground voxel with probability ``cfg.foreground_p`` (small classes first), else anywhere,
    each mirrored left-right with probability 1/2."""
    import torch

    pick = rng.choice(len(cases), size=cfg.batch, p=p)
    if task == "cls":
        x = np.stack([cases[i].pixels for i in pick])[:, None]
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
        if rng.random() < 0.5:
            img, lab = mirror_left_right(img, lab)
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
            x = torch.from_numpy(c.pixels)[None, None]
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
        d = _pooled_dice(sum(_dice_sums(p, c.target, n) for p, c in zip(preds, val)))
        per = {names[k]: float(d[k]) for k in range(1, n)}
    vals = [v for v in per.values() if not np.isnan(v)]
    return (float(np.mean(vals)) if vals else 0.0), per


# ------------------------------------------------------------------ training
def _network(n_classes: int, cfg: EvalConfig, *, task: str, seed: int):
    """The task's network with its initial weights drawn from ``seed``: the global torch RNG is
    forked, seeded and restored, so the caller's random state is untouched and arm k with seed s
    starts from the same weights as every other arm with seed s."""
    with private_rng(seed):
        return _seg_net(n_classes, cfg) if task == "seg" else _cls_net(n_classes, cfg)


def train_arm(train: list[Case], val: list[Case], names: list[str], cfg: EvalConfig, *, task: str, seed: int,
              balanced: bool, progress: bool = False, desc: str = "") -> tuple[object, list[CurvePoint]]:
    """Train one model; returns (the best-on-validation model, learning curve).

    Randomness is explicit: the initial weights come from ``seed`` (`_network`), the batches from
    ``numpy.random.default_rng(seed)``; the networks have no dropout, so nothing else is random.
    """
    import torch
    from monai.losses import DiceLoss
    from tqdm.auto import tqdm

    n = len(names)
    net = _network(n, cfg, task=task, seed=seed)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    cw = torch.tensor(_class_weights(train, n, task=task, cap=cfg.max_class_weight), dtype=torch.float32) \
        if balanced else None
    dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True) if task == "seg" else None
    p = case_weights(train, n, task=task, balanced=balanced)
    rng = np.random.default_rng(seed)
    curve: list[CurvePoint] = []
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
            curve.append(CurvePoint(step=step, loss=round(float(loss.detach()), 4), val_mean=round(score, 4),
                                    val={k: round(v, 4) for k, v in per.items()}))
            if score > best:
                best, best_state = score, {k: v.detach().clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    return net, curve


# ------------------------------------------------------------------ the evaluation
def evaluate(ds: Dataset, *, expanded: str | Path | None = None, cfg: EvalConfig | None = None,
             progress: bool = True) -> Evaluation:
    """Train every arm with every seed on the fixed split and return the `Evaluation` (see module doc)."""
    cfg = cfg or EvalConfig()
    t0 = time.perf_counter()
    a = analyse(ds, rare=cfg.rare)
    split = fixed_split(a, [it.id for it in ds.items], seed=cfg.split_seed)
    if not split["val"] or not split["test"] or not split["train"]:
        raise InputError(f"dataset too small to split into train/val/test ({len(ds.items)} usable items)")
    names = [ds.classes[v] for v in sorted(ds.classes)]
    load = _loader(ds, names, cfg)
    by_id = {it.id: it for it in ds.items}
    parts = {k: _load_all(load, [_entry(by_id[i]) for i in ids], f"load {k}", progress) for k, ids in split.items()}
    synth: list[Case] = []
    dropped = 0
    if "real+synthetic" in cfg.arms:
        root = Path(expanded) if expanded is not None else ds.root
        items, dropped = _synthetic_items(root, set(split["train"]))
        synth = _load_all(load, items, "load synthetic", progress)
        if not synth:
            raise InputError(f"{root}: no synthetic case hosted by a training scan; expand with --hold-out")
    arms = _train_arms(parts, synth, names, cfg, task=ds.task, progress=progress)
    deltas, verdict = deltas_and_verdict(arms, a.rare)
    return Evaluation(task=ds.task, dataset=str(ds.root), expanded=str(expanded) if expanded else None,
                      resolution=_resolution(parts["train"], cfg, ds.task), seeds=list(range(cfg.seeds)),
                      classes=names[1:] if ds.task == "seg" else names, rare=a.rare,
                      split=SplitSizes(train=len(split["train"]), val=len(split["val"]), test=len(split["test"]),
                                       synthetic=len(synth), synthetic_dropped=dropped, split_seed=cfg.split_seed),
                      split_ids=split, config=cfg, arms=arms, deltas=deltas, verdict=verdict,
                      seconds=round(time.perf_counter() - t0, 1))


def _entry(it: Item) -> tuple[str, Path, Path | None, str | None]:
    return it.id, it.image, it.label, it.class_name


def _loader(ds: Dataset, names: list[str], cfg: EvalConfig):
    """``load(id, image, label, class name) -> Case`` for the dataset's task (label values or class
    names mapped to the indices of ``names``, the classes in value order)."""
    if ds.task == "seg":
        values = sorted(ds.classes)
        lut = np.zeros(max(values) + 1, np.int64)
        lut[values] = np.arange(len(values))

        def load(cid: str, image: Path, label: Path | None, cls: str | None) -> Case:
            return seg_case(*read_pair(image, label), lut, cfg, cid)
    else:
        index = {n: k for k, n in enumerate(names)}

        def load(cid: str, image: Path, label: Path | None, cls: str | None) -> Case:
            return cls_case(read(image), index[cls], cfg, cid)
    return load


def _load_all(load, entries: list[tuple], desc: str, progress: bool) -> list[Case]:
    from tqdm.auto import tqdm

    return [load(*e) for e in tqdm(entries, desc=desc, disable=not progress, leave=False)]


def _train_arms(parts: dict[str, list[Case]], synth: list[Case], names: list[str], cfg: EvalConfig, *, task: str,
                progress: bool) -> dict[str, ArmResult]:
    """Every arm trained with every seed and scored on the test part."""
    from tqdm.auto import tqdm

    runs: dict[str, list[SeedRun]] = {}
    n_train: dict[str, int] = {}
    bar = tqdm([(arm, s) for arm in cfg.arms for s in range(cfg.seeds)], desc="evaluate", disable=not progress)
    for arm, s in bar:
        bar.set_postfix_str(f"{arm} seed {s}")
        train = parts["train"] + (synth if arm == "real+synthetic" else [])
        net, curve = train_arm(train, parts["val"], names, cfg, task=task, seed=s, balanced=arm == "weighted",
                               progress=progress, desc=f"{arm} s{s}")
        preds = _predict(net, parts["test"], cfg, task)
        gts = [c.target for c in parts["test"]]
        m = seg_metrics(preds, gts, names) if task == "seg" else cls_metrics(preds, gts, names)
        runs.setdefault(arm, []).append(SeedRun(seed=s, metrics=_defined(m), curve=curve))
        n_train[arm] = len(train)
    return {arm: ArmResult.of(n_train[arm], r) for arm, r in runs.items()}


def _defined(metrics: dict[str, dict[str, float]]) -> Metrics:
    """Metrics rounded to 4 decimals, NaN (undefined) as None."""
    return {k: {q: (round(x, 4) if not np.isnan(x) else None) for q, x in v.items()} for k, v in metrics.items()}


def _resolution(train: list[Case], cfg: EvalConfig, task: str) -> str:
    """What the model was trained at, in words: voxel size and patch (segmentation) or input size."""
    if task != "seg":
        return f"native spacing, whole image at {'x'.join(map(str, cfg.size))}"
    shapes = sorted({tuple(c.image.shape) for c in train})
    spacings = sorted({tuple(round(float(x), 3) for x in c.image.spacing) for c in train})
    return ("x".join(f"{x:g}" for x in spacings[0]) + " mm voxels" + (" (and others)" if len(spacings) > 1 else "")
            + f", {'x'.join(map(str, cfg.patch))} patches from {'/'.join('x'.join(map(str, s)) for s in shapes[:3])}"
            " volumes")

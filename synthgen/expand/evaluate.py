"""`synthgen evaluate`: does the synthetic data help a downstream model? Train and measure.

The arms (`synthgen.expand.arms` says exactly what each trains on), each trained once per seed
on the same fixed real split (`synthgen.expand.split`): ``real``; ``weighted`` (class-balanced
sampling and a class-weighted loss); ``real+synthetic``; ``weighted+synthetic``; and
``synthetic-only-positives`` (no real case of a rare class is trained on: the finding is seen
only through synthetic cases). ``cfg.arms`` picks them (default: all).

Validation and test are real cases only. Every case is brought to canonical orientation first
(`Case`), so all cases share one voxel-axis order and the left-right flip of training really
mirrors the patient's left and right. Segmentation trains a MONAI UNet on patches (two
thirds centred on a foreground voxel of a class the case contains, the class drawn with weight
1/sqrt(its voxel count in the case, so small structures such as lesions come first) with
cross-entropy + Dice;
the checkpoint with the best mean validation Dice is tested. Per class it reports voxel Dice
pooled over the test cases and lesion-level recall, precision and F1 (`synthgen.expand.metrics`).
Classification trains a small MONAI CNN (`monai.networks.nets.Classifier`) on the whole image
resampled to ``size`` and reports per-class recall, precision and F1. Seeds pair across arms: arm k
with seed s starts from the same weights and sees the same random stream, so differences come from
the data.

Test sets: the dataset's own test split (``internal``) always, and every external test set given
(``tests``, `synthgen evaluate --test`: a user's real held-out cases, read by the same readers,
classes matched by name, `synthgen.expand.testsets`). With external sets the dataset's split is
unchanged: its training and validation parts train and pick the checkpoint, and its test part is
still reported, so the numbers compare with a run without ``--test`` and a gap between the
internal and an external set shows how far the dataset's own cases flatter the model.

"Beats by more than the seed spread" means the difference of means is larger than the sum of
the two arms' standard deviations (sample std over seeds): the mean ± std bars do not overlap.
Under ``torchrun`` the (arm, seed) runs are split across the ranks (`synthgen.expand.arms.runs_of_rank`);
N ranks train the runs one rank trains and return the same `Evaluation`.
`evaluate` returns the findings as an `synthgen.expand.evaluation.Evaluation` (``evaluation.json``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from synthgen.errors import InputError
from synthgen.expand.analysis import Analysis, analyse
from synthgen.expand.arms import ArmData, RunResult, arm_data, case_weights, encode_runs, in_order, runs_of_rank
from synthgen.expand.cases import Case, cls_case, seg_case
from synthgen.expand.dataset import Dataset, Item
from synthgen.expand.evaluation import (
    INTERNAL,
    SYNTHETIC_ARMS,
    ArmResult,
    CurvePoint,
    EvalConfig,
    Evaluation,
    ExternalResult,
    Metrics,
    SeedRun,
    SplitSizes,
    deltas_and_verdict,
    synthetic_drops,
)
from synthgen.expand.manifest import read_manifest
from synthgen.expand.metrics import cls_metrics, dice_sums, pooled_dice, seg_metrics
from synthgen.expand.split import fixed_split
from synthgen.expand.testsets import read_test_sets
from synthgen.io import read, read_pair
from synthgen.train.loop import private_rng


# ------------------------------------------------------------------ data
def _synthetic_items(expanded: Path, train_ids: set[str]) -> tuple[list[tuple[str, Path, Path, str]],
                                                                  dict[str, str | None], int]:
    """(id, image, label, class) of the manifest's synthetic cases hosted by training scans (or by
    none: whole new cases), each one's host, and how many were dropped (hosted by another scan)."""
    keep, hosts, dropped = [], {}, 0
    for line in read_manifest(expanded):
        if line.host is not None and line.host not in train_ids:
            dropped += 1
            continue
        keep.append((line.name, expanded / line.outputs.image, expanded / line.outputs.label, line.class_name))
        hosts[line.name] = line.host
    return keep, hosts, dropped


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


def _val_score(net, val: list[Case], names: list[str], cfg: EvalConfig, task: str, *,
               ignore: tuple[str, ...] = ()) -> tuple[float, dict]:
    """(the mean of the per-class validation scores, leaving out ``ignore`` and undefined ones;
    the per-class scores): Dice (segmentation) or recall (classification)."""
    preds = _predict(net, val, cfg, task)
    if task == "cls":
        m = cls_metrics(preds, [c.label for c in val], names)
        per = {k: v["recall"] for k, v in m.items()}
    else:
        n = len(names)
        d = pooled_dice(sum(dice_sums(p, c.target, n) for p, c in zip(preds, val)))
        per = {names[k]: float(d[k]) for k in range(1, n)}
    vals = [v for k, v in per.items() if not np.isnan(v) and k not in ignore]
    return (float(np.mean(vals)) if vals else 0.0), per


# ------------------------------------------------------------------ training
def _network(n_classes: int, cfg: EvalConfig, *, task: str, seed: int):
    """The task's network with its initial weights drawn from ``seed``: the global torch RNG is
    forked, seeded and restored, so the caller's random state is untouched and arm k with seed s
    starts from the same weights as every other arm with seed s."""
    with private_rng(seed):
        return _seg_net(n_classes, cfg) if task == "seg" else _cls_net(n_classes, cfg)


def train_arm(train: list[Case], val: list[Case], names: list[str], cfg: EvalConfig, *, task: str, seed: int,
              balanced: bool, class_weights: np.ndarray | None = None, val_ignore: tuple[str, ...] = (),
              progress: bool = False, desc: str = "") -> tuple[object, list[CurvePoint]]:
    """Train one model; returns (the best-on-validation model, learning curve).

    ``balanced``: cases drawn class-balanced (`case_weights`); ``class_weights``: the loss's
    weight per class index (None: unweighted); ``val_ignore``: classes left out of the validation
    score that picks the checkpoint (they are still recorded in the curve).
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
    cw = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
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
            score, per = _val_score(net, val, names, cfg, task, ignore=val_ignore)
            curve.append(CurvePoint(step=step, loss=round(float(loss.detach()), 4), val_mean=round(score, 4),
                                    val={k: round(v, 4) for k, v in per.items()}))
            if score > best:
                best, best_state = score, {k: v.detach().clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    return net, curve


# ------------------------------------------------------------------ the evaluation
@dataclasses.dataclass(frozen=True)
class TestCases:
    """One test set as loaded: its name (`INTERNAL` for the dataset's own split), where it comes from, its cases."""

    name: str
    dataset: str
    cases: list[Case]


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything the runs of an evaluation share, loaded once per rank (`prepare`)."""

    ds: Dataset
    cfg: EvalConfig
    analysis: Analysis
    names: list[str]
    split: dict[str, list[str]]
    train: list[Case]  # the real training cases
    val: list[Case]
    arms: dict[str, ArmData]
    tests: list[TestCases]
    synthetic: int
    synthetic_dropped: int
    expanded: str | None


def prepare(ds: Dataset, *, expanded: str | Path | None = None, tests: Sequence[str | Path] = (),
            cfg: EvalConfig | None = None, progress: bool = False,
            log: Callable[[str], None] | None = None) -> Setup:
    """Split ``ds``, load its cases, the synthetic cases and the ``tests`` test sets (checked by
    `synthgen.expand.testsets`; items they leave out said through ``log``), and compose every
    arm's training data (`synthgen.expand.arms`)."""
    cfg = cfg or EvalConfig()
    external = read_test_sets(tests, ds, log=log)  # a bad --test fails before anything is loaded
    a = analyse(ds, rare=cfg.rare)
    split = fixed_split(a, [it.id for it in ds.items], seed=cfg.split_seed)
    if not split["val"] or not split["test"] or not split["train"]:
        raise InputError(f"dataset too small to split into train/val/test ({len(ds.items)} usable items)")
    names = [ds.classes[v] for v in sorted(ds.classes)]
    load = _loader(ds, names, cfg)
    by_id = {it.id: it for it in ds.items}
    parts = {k: _load_all(load, [_entry(by_id[i]) for i in ids], f"load {k}", progress) for k, ids in split.items()}
    synth: list[Case] = []
    hosts: dict[str, str | None] = {}
    dropped = 0
    if any(arm in SYNTHETIC_ARMS for arm in cfg.arms):
        root = Path(expanded) if expanded is not None else ds.root
        items, hosts, dropped = _synthetic_items(root, set(split["train"]))
        synth = _load_all(load, items, "load synthetic", progress)
        if not synth:
            raise InputError(f"{root}: no synthetic case hosted by a training scan; expand with --hold-out")
    test_cases = [TestCases(INTERNAL, str(ds.root), parts["test"])]
    for name, test in external:
        entries = [_entry(it) for it in test.items]
        test_cases.append(TestCases(name, str(test.root), _load_all(_loader(test, names, cfg), entries,
                                                                     f"load test set {name}", progress)))
    arms = {arm: arm_data(arm, parts["train"], synth, hosts, names=names, rare=a.rare, task=ds.task,
                          cap=cfg.max_class_weight) for arm in cfg.arms}
    return Setup(ds=ds, cfg=cfg, analysis=a, names=names, split=split, train=parts["train"], val=parts["val"],
                 arms=arms, tests=test_cases,
                 synthetic=len(synth), synthetic_dropped=dropped, expanded=str(expanded) if expanded else None)


def train_runs(setup: Setup, runs: Sequence[tuple[str, int]], *, progress: bool = False) -> list[RunResult]:
    """Train the (arm, seed) ``runs`` and test each model on every test set."""
    from tqdm.auto import tqdm

    cfg, task, names = setup.cfg, setup.ds.task, setup.names
    out = []
    bar = tqdm(list(runs), desc="evaluate", disable=not progress)
    for arm, s in bar:
        bar.set_postfix_str(f"{arm} seed {s}")
        data = setup.arms[arm]
        net, curve = train_arm(data.train, setup.val, names, cfg, task=task, seed=s, balanced=data.balanced,
                               class_weights=data.class_weights, val_ignore=data.val_ignore, progress=progress,
                               desc=f"{arm} s{s}")
        metrics = {}
        for t in setup.tests:
            preds = _predict(net, t.cases, cfg, task)
            gts = [c.target for c in t.cases]
            metrics[t.name] = _defined(seg_metrics(preds, gts, names) if task == "seg" else cls_metrics(preds, gts, names))
        out.append(RunResult(arm=arm, seed=s, curve=curve, metrics=metrics))
    return out


def assemble(setup: Setup, results: list[RunResult], *, seconds: float) -> Evaluation:
    """The `Evaluation` of every run's results (from any number of ranks, in any order)."""
    cfg, ds, a = setup.cfg, setup.ds, setup.analysis
    runs = in_order(results, list(cfg.arms), cfg.seeds)

    def arms_on(test: str, *, internal: bool) -> dict[str, ArmResult]:
        out = {}
        for arm, data in setup.arms.items():
            mine = [SeedRun(seed=r.seed, metrics=r.metrics[test], curve=r.curve if internal else [])
                    for r in runs if r.arm == arm]
            weights = None if data.class_weights is None or not internal else \
                {n: round(float(w), 4) for n, w in zip(setup.names, data.class_weights)}
            out[arm] = ArmResult.of(len(data.train), mine, train_ids=[c.id for c in data.train] if internal else None,
                                    class_weights=weights)
        return out

    arms = arms_on(INTERNAL, internal=True)
    deltas, verdict = deltas_and_verdict(arms, a.rare)
    external = []
    for t in setup.tests[1:]:
        t_arms = arms_on(t.name, internal=False)
        t_deltas, t_verdict = deltas_and_verdict(t_arms, a.rare)
        external.append(ExternalResult(name=t.name, dataset=t.dataset, case_ids=[c.id for c in t.cases], arms=t_arms,
                                       deltas=t_deltas, verdict=t_verdict, flags=synthetic_drops(t_arms, a.rare)))
    sp = setup.split
    return Evaluation(task=ds.task, dataset=str(ds.root), expanded=setup.expanded,
                      resolution=_resolution(setup.train, cfg, ds.task), seeds=list(range(cfg.seeds)),
                      classes=setup.names[1:] if ds.task == "seg" else setup.names, rare=a.rare,
                      split=SplitSizes(train=len(sp["train"]), val=len(sp["val"]), test=len(sp["test"]),
                                       synthetic=setup.synthetic, synthetic_dropped=setup.synthetic_dropped,
                                       split_seed=cfg.split_seed),
                      split_ids=sp, config=cfg, arms=arms, deltas=deltas, verdict=verdict, seconds=round(seconds, 1),
                      flags=synthetic_drops(arms, a.rare), test_sets=external)


def evaluate(ds: Dataset, *, expanded: str | Path | None = None, tests: Sequence[str | Path] = (),
             cfg: EvalConfig | None = None, progress: bool = True, rank: int = 0, world: int = 1,
             gather: Callable[[str], list[str]] | None = None, log: Callable[[str], None] | None = None) -> Evaluation:
    """Train every arm with every seed on the fixed split, test on the dataset's test split and on
    every ``tests`` set, and return the `Evaluation` (see module doc).

    Under ``torchrun`` (``world`` > 1) this rank trains its share of the runs (`runs_of_rank`) and
    ``gather`` (`synthgen.train.loop.Dist.gather_strings`) brings every rank's results to every
    rank; each rank returns the same `Evaluation`.
    """
    cfg = cfg or EvalConfig()
    if world > 1 and gather is None:
        raise InputError(f"world size {world}: pass gather= to collect the other ranks' runs")
    t0 = time.perf_counter()
    setup = prepare(ds, expanded=expanded, tests=tests, cfg=cfg, progress=progress, log=log)
    mine = train_runs(setup, runs_of_rank(list(cfg.arms), cfg.seeds, rank=rank, world=world), progress=progress)
    results = mine if world == 1 else [r for text in gather(encode_runs(mine)) for r in RunResult.decode(text)]
    return assemble(setup, results, seconds=time.perf_counter() - t0)


def _entry(it: Item) -> tuple[str, Path, Path | None, str | None]:
    return it.id, it.image, it.label, it.class_name


def _loader(ds: Dataset, names: list[str], cfg: EvalConfig):
    """``load(id, image, label, class name) -> Case`` for the dataset's task: label values (by
    their class name in ``ds``) or class names mapped to the indices of ``names`` (the evaluated
    dataset's classes in value order), so a test set may number its labels otherwise."""
    index = {n: k for k, n in enumerate(names)}
    if ds.task == "seg":
        lut = np.zeros(max(ds.classes) + 1, np.int64)
        for value, name in ds.classes.items():
            lut[value] = 0 if value == 0 else index[name]

        def load(cid: str, image: Path, label: Path | None, cls: str | None) -> Case:
            return seg_case(*read_pair(image, label), lut, cfg, cid)
    else:

        def load(cid: str, image: Path, label: Path | None, cls: str | None) -> Case:
            return cls_case(read(image), index[cls], cfg, cid)
    return load


def _load_all(load, entries: list[tuple], desc: str, progress: bool) -> list[Case]:
    from tqdm.auto import tqdm

    return [load(*e) for e in tqdm(entries, desc=desc, disable=not progress, leave=False)]


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

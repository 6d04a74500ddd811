"""synthgen evaluate: the fixed split, the metrics, the arms, and the demo task it ships with."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from synthgen.errors import InputError
from synthgen.expand.analysis import analyse
from synthgen.expand.dataset import read_dataset
from synthgen.expand.demo import CLASSES, DemoConfig, write_demo_dataset
from synthgen.expand.evaluate import case_weights, cls_metrics, evaluate, seg_metrics
from synthgen.expand.evaluation import EvalConfig, Evaluation, format_evaluation
from synthgen.expand.split import fixed_split

NAMES = ["background", "liver", "liver_cyst", "liver_tumor"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    cfg = DemoConfig(cases=10, tumour_cases=4, size=[24, 24, 20], spacing=6.0, cyst_mm=[14.0, 24.0], seed=1)
    return write_demo_dataset(tmp_path_factory.mktemp("demo"), cfg, progress=False)


def test_demo_dataset_is_a_readable_nnunet_set_with_the_lesions_where_they_belong(demo):
    from synthgen.io import read_pair

    ds = read_dataset(demo)
    assert (ds.layout, ds.task, len(ds.items), ds.problems) == ("nnunet", "seg", 10, [])
    assert ds.classes == CLASSES
    a = analyse(ds).by_name()
    assert a["liver"].n_cases == 10 and a["liver_tumor"].n_cases == 4
    hu = {k: [] for k in range(4)}
    for it in ds.items:
        ct, lab = read_pair(it.image, it.label)
        arr = lab.numpy()
        assert set(np.unique(arr)) <= set(CLASSES) and ct.shape == (24, 24, 20)
        assert ct.synthetic and lab.synthetic  # the demo's "real" cases are derived data, and say so
        for k in range(1, 4):
            hu[k] += ct.numpy()[arr == k].tolist()
    # arterial-phase example: tumours enhance above the liver, cysts are near water
    assert np.median(hu[3]) > np.median(hu[1]) + 20 > np.median(hu[2]) + 40


def test_demo_refuses_to_overwrite(demo):
    with pytest.raises(InputError, match="already holds a dataset"):
        write_demo_dataset(demo.parent, DemoConfig(cases=10, tumour_cases=4, size=[24, 24, 20], spacing=6.0))


def test_split_is_fixed_stratified_and_disjoint(demo):
    ds = read_dataset(demo)
    a = analyse(ds)
    ids = [it.id for it in ds.items]
    s1 = fixed_split(a, ids)
    assert s1 == fixed_split(a, list(reversed(ids)))  # depends on the cases, not their order
    parts = [set(v) for v in s1.values()]
    assert set().union(*parts) == set(ids) and sum(map(len, parts)) == len(ids)
    tumour = set(a.by_name()["liver_tumor"].cases)
    for part in ("train", "val", "test"):  # 4 tumour cases: one at least in each part
        assert tumour & set(s1[part])


def test_seg_metrics_on_known_predictions():
    gt = np.zeros((10, 10, 10), np.int64)
    gt[:, :, :5] = 1
    gt[1:3, 1:3, 1:3] = 3  # two tumours: one found, one missed
    gt[6:8, 6:8, 1:3] = 3
    pred = gt.copy()
    pred[6:8, 6:8, 1:3] = 1
    pred[5, 5, 8] = 3  # and one false positive
    m = seg_metrics([pred], [gt], NAMES)
    assert m["liver_tumor"]["recall"] == 0.5 and m["liver_tumor"]["precision"] == 0.5
    assert m["liver_tumor"]["dice"] == pytest.approx(2 * 8 / (9 + 16))
    assert set(m["liver"]) == {"dice"}  # organs get no lesion counts
    assert np.isnan(m["liver_cyst"]["dice"]) and np.isnan(m["liver_cyst"]["recall"])  # absent: no score


def test_cls_metrics_and_balanced_sampling():
    m = cls_metrics([0, 0, 1, 1], [0, 1, 1, 1], ["normal", "tumour"])
    assert m["tumour"]["recall"] == pytest.approx(2 / 3) and m["tumour"]["precision"] == 1.0
    assert m["normal"]["f1"] == pytest.approx(2 / 3)

    class C:
        def __init__(self, fg):
            self.fg = dict.fromkeys(fg)

    cases = [C([1]), C([1]), C([1]), C([1, 3])]
    p = case_weights(cases, 4, task="seg", balanced=True)
    assert p[3] == pytest.approx(4 * p[0])  # the rare case is drawn 4x as often (4 vs 1 cases)
    assert np.allclose(case_weights(cases, 4, task="seg", balanced=False), 0.25)


def test_evaluate_runs_every_arm_and_keeps_synthetic_out_of_val_and_test(demo, tmp_path):
    from synthgen.expand.job import ExpandSettings, expand_job

    out = tmp_path / "expanded"
    expand_job(demo, ExpandSettings(hold_out=True), out=out, log=lambda _: None, progress=False)
    manifest = [json.loads(x) for x in (out / "synthetic_manifest.jsonl").read_text().splitlines()]
    ds = read_dataset(demo)
    split = fixed_split(analyse(ds), [it.id for it in ds.items])
    assert manifest and {r["host"] for r in manifest} <= set(split["train"])  # --hold-out
    cfg = EvalConfig(seeds=2, steps=4, val_every=2, batch=2, patch=[16, 16, 16], channels=[4, 8])
    ev = evaluate(ds, expanded=out, cfg=cfg, progress=False)
    assert list(ev.arms) == ["real", "weighted", "real+synthetic", "weighted+synthetic", "synthetic-only-positives"]
    assert ev.split.synthetic == len(manifest) and ev.split.synthetic_dropped == 0
    assert ev.arms["real+synthetic"].n_train == ev.arms["real"].n_train + len(manifest)
    assert not (set(ev.split_ids["val"]) | set(ev.split_ids["test"])) & {r["name"] for r in manifest}
    assert ev.resolution.startswith("6x6x6 mm voxels, 16x16x16 patches")
    arm = ev.arms["real"]
    assert [s.seed for s in arm.per_seed] == [0, 1] and arm.per_seed[0].curve[-1].step == 4
    t = arm.summary["liver_tumor"]["dice"]
    vals = [s.metrics["liver_tumor"]["dice"] for s in arm.per_seed]
    assert t.mean == pytest.approx(np.mean(vals), abs=1e-4)
    assert ev.deltas["real+synthetic - real"]["liver_tumor"]["dice"] == pytest.approx(
        ev.arms["real+synthetic"].summary["liver_tumor"]["dice"].mean - t.mean, abs=2e-4)
    assert "liver_tumor dice: real+synthetic" in ev.verdict
    table = format_evaluation(ev)
    assert "liver_tumor*" in table and "±" in table
    # the JSON written is the one read back: same keys, same values
    doc = json.loads(json.dumps(ev.to_dict()))
    assert Evaluation.from_dict(doc) == ev and list(doc) == [f.name for f in dataclasses.fields(Evaluation)]


def test_evaluate_errors_are_one_line(demo, tmp_path):
    ds = read_dataset(demo)
    with pytest.raises(InputError, match="unknown arm 'synthetic'"):
        evaluate(ds, cfg=EvalConfig(arms=["synthetic"]), progress=False)
    with pytest.raises(InputError, match="no synthetic_manifest.jsonl"):
        evaluate(ds, expanded=tmp_path, cfg=EvalConfig(steps=2, seeds=1), progress=False)


@pytest.fixture(scope="module")
def cls_csv(demo, tmp_path_factory):
    """The demo scans as a classification CSV: liver_tumor (rare) vs normal (no tumour)."""
    import csv

    ds = read_dataset(demo)
    a = analyse(ds).by_name()
    path = tmp_path_factory.mktemp("cls") / "cls.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label"])
        for it in ds.items:
            w.writerow([str(it.image), "liver_tumor" if it.id in a["liver_tumor"].cases[:2] else "normal"])
    return path


def test_classification_set_expands_with_segmenter_masks_and_evaluates(cls_csv, demo, tmp_path):
    from synthgen.expand.job import ExpandSettings, expand_job
    from synthgen.io import read

    out = tmp_path / "cls_expanded"
    paths = expand_job(cls_csv, ExpandSettings(target="count=3", size=20.0, hold_out=True), out=out,
                       log=lambda _: None, progress=False)
    rows = (out / "cls.expanded.csv").read_text().splitlines()
    assert rows[:11] == cls_csv.read_text().splitlines()  # the originals' rows first, unchanged
    manifest = [json.loads(x) for x in paths["manifest"].read_text().splitlines()]
    assert [r.split(",")[1] for r in rows[11:]] == ["liver_tumor"] * len(manifest) and manifest
    ds = read_dataset(cls_csv)
    by_id = {it.id: it for it in ds.items}
    for rec in manifest:
        assert rec["generator"] == "lesion_insert_segmented" and rec["synthetic"]
        img = read(out / rec["outputs"]["image"]).numpy()
        host = read(by_id[rec["host"]].image).numpy()
        lesion = read(out / rec["outputs"]["label"], kind="label").numpy() > 0
        changed = img != host
        assert lesion.any() and changed.any()
        # the lesion sits in the host's true liver (the demo's label map), which the classifier never saw
        truth = read(demo / "labelsTr" / f"{rec['host'].removesuffix('_0000')}.nii.gz", kind="label").numpy()
        assert (truth[lesion] >= 1).mean() > 0.8
    ev = evaluate(read_dataset(cls_csv), expanded=out, progress=False,
                  cfg=EvalConfig(seeds=1, steps=2, val_every=1, batch=2, size=[16, 16, 16], channels=[4, 8]))
    assert ev.task == "cls" and set(ev.arms["real"].summary["liver_tumor"]) == {"recall", "precision", "f1"}


def test_diffusion_generator_writes_whole_cases_in_the_dataset_classes(demo, tmp_path):
    from synthgen.expand.job import ExpandSettings, expand_job
    from synthgen.io import read_pair

    out = tmp_path / "diffusion"
    paths = expand_job(demo, ExpandSettings(target="count=6", generator="diffusion"), out=out, log=lambda _: None,
                       progress=False)
    manifest = [json.loads(x) for x in paths["manifest"].read_text().splitlines()]
    assert len(manifest) == 2  # 4 real tumour cases -> 6
    for rec in manifest:
        assert rec["generator"] == "text_to_ct" and rec["host"] is None and rec["inputs"]["model_hashes"]
        assert "tumor in the liver" in rec["parameters"]["prompt"]
        ct, lab = read_pair(out / rec["outputs"]["image"], out / rec["outputs"]["label"])
        arr = lab.numpy()
        assert ct.synthetic and ct.shape == (24, 24, 20) and np.allclose(ct.spacing, 6.0)
        assert set(np.unique(arr)) <= set(CLASSES) and {1, 3} <= set(np.unique(arr))
        hu = ct.numpy()
        assert -1100 <= hu.min() and hu.max() <= 3100
    with pytest.raises(InputError, match="classification sets use insert"):
        from synthgen.expand.plan import Target, make_plan

        ds = read_dataset(demo)
        make_plan(dataclasses_replace(ds, task="cls"), analyse(ds), Target.parse("count=6"), generator="diffusion")


def dataclasses_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)

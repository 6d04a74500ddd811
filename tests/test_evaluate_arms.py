"""synthgen evaluate: the five arms, external test sets (--test) and the (arm, seed) split across ranks."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from synthgen.cli import main
from synthgen.errors import InputError
from synthgen.expand.arms import RunResult, all_runs, in_order, runs_of_rank
from synthgen.expand.dataset import read_dataset
from synthgen.expand.evaluate import assemble, prepare, train_runs
from synthgen.expand.evaluation import ARMS, EvalConfig, Evaluation, format_evaluation
from tests.conftest import TOY_CLASSES, toy_case, write_toy_case, write_toy_dataset

TUMOUR = 3  # liver_tumor's index among the evaluated classes (background, liver, kidney, liver_tumor)
CFG = EvalConfig(rare="liver_tumor", seeds=2, steps=2, val_every=1, batch=2, patch=[16, 16, 16], channels=[4, 8])


def _write_test_set(root, labels: dict[str, int] | None = None, n: int = 3):
    """``n`` toy cases named ``ext_<k>`` (other phantoms than the dataset's), the first two with a
    tumour; ``labels``: the dataset.json labels (name -> value) and the values written."""
    labels = labels or {n: i for i, n in TOY_CLASSES.items()}
    for k in range(n):
        ct, lab = toy_case(20 + k, tumour=k < 2)
        arr = lab.numpy()
        out = np.zeros_like(arr)
        for value, name in TOY_CLASSES.items():
            if value and name in labels:
                out[arr == value] = labels[name]
        write_toy_case(root, k, ct, lab.replace(array=out), name=f"ext_{k:03d}")
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "numTraining": n}))
    return root


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """(dataset, expanded copy, external test set): 8 toy cases with 4 tumours, 3 synthetic tumours
    hosted by training scans (--hold-out), 3 other cases as the external test set."""
    from synthgen.expand.job import ExpandSettings, expand_job

    base = tmp_path_factory.mktemp("arms")
    ds = write_toy_dataset(base / "ds", 8, tumour_cases=(0, 1, 2, 3))
    expanded = base / "expanded"
    expand_job(ds, ExpandSettings(rare="liver_tumor", target="count=5", hold_out=True), out=expanded,
               log=lambda _: None, progress=False)
    return ds, expanded, _write_test_set(base / "external")


@pytest.fixture(scope="module")
def setup(sets):
    ds, expanded, external = sets
    return prepare(read_dataset(ds), expanded=expanded, tests=[external], cfg=CFG)


@pytest.fixture(scope="module")
def runs(setup):
    """Every (arm, seed) run trained on one rank."""
    return train_runs(setup, runs_of_rank(list(CFG.arms), CFG.seeds, rank=0, world=1))


@pytest.fixture(scope="module")
def evaluation(setup, runs):
    return assemble(setup, runs, seconds=1.0)


def _has_tumour(case) -> bool:
    return TUMOUR in case.fg


def test_every_arm_trains_on_what_it_says(setup):
    arms = setup.arms
    assert list(arms) == list(ARMS)  # the default: all five
    real_ids = sorted(c.id for c in setup.train)
    synth_ids = sorted(c.id for c in arms["real+synthetic"].train if c.id.startswith("synth_"))
    assert len(synth_ids) == setup.synthetic == 3
    assert sorted(c.id for c in arms["real"].train) == real_ids and arms["real"].class_weights is None
    assert not arms["real"].balanced and not arms["real+synthetic"].balanced
    assert arms["weighted"].balanced and arms["weighted"].class_weights[TUMOUR] > 1
    # weighted+synthetic: the weighted recipe (balanced sampling, class weights) on real + synthetic cases
    ws = arms["weighted+synthetic"]
    assert ws.balanced and ws.class_weights is not None
    assert sorted(c.id for c in ws.train) == sorted(real_ids + synth_ids)
    assert not np.allclose(ws.class_weights, arms["weighted"].class_weights)  # computed on the union
    # synthetic-only-positives: no real case with a tumour is trained on; the synthetic tumours are
    sop = arms["synthetic-only-positives"]
    real_positives = [c for c in setup.train if _has_tumour(c)]
    assert real_positives  # there were some to remove
    assert not any(_has_tumour(c) for c in sop.train if not c.id.startswith("synth_"))
    assert {c.id for c in sop.train if c.id.startswith("synth_")} == set(synth_ids)
    assert all(_has_tumour(c) for c in sop.train if c.id.startswith("synth_"))
    assert sop.val_ignore == ("liver_tumor",) and not sop.balanced and sop.class_weights is None


def test_external_test_set_is_scored_per_arm_and_never_trained_on(evaluation, sets):
    ev = evaluation
    ext_ids = ["ext_000", "ext_001", "ext_002"]
    assert [t.name for t in ev.test_sets] == ["external"] and ev.test_sets[0].case_ids == ext_ids
    assert ev.test_sets[0].dataset == str(sets[2])
    trained = {i for a in ev.arms.values() for i in a.train_ids} | set(ev.split_ids["train"]) | set(ev.split_ids["val"])
    assert trained and not trained & set(ext_ids)
    assert ev.arms["weighted+synthetic"].class_weights["liver_tumor"] > 1
    assert ev.arms["real"].class_weights is None
    ext = ev.test_sets[0]
    assert list(ext.arms) == list(ARMS)
    for arm in ARMS:
        seeds = ext.arms[arm].per_seed
        assert [s.seed for s in seeds] == [0, 1] and all(not s.curve for s in seeds)  # curves live in ev.arms
        assert set(seeds[0].metrics["liver_tumor"]) == {"dice", "recall", "precision", "f1"}
        assert seeds[0].metrics["liver_tumor"]["recall"] is not None  # the external set has tumours
    # deltas vs real and weighted for every other arm, on every test set
    for deltas in (ev.deltas, ext.deltas):
        assert set(deltas) == {f"{a} - {b}" for a in ARMS if a != "real" for b in ("real", "weighted") if a != b}
    for verdict in (ev.verdict, ext.verdict):
        for arm in ("real+synthetic", "weighted+synthetic", "synthetic-only-positives"):
            assert f"liver_tumor dice: {arm} " in verdict
    text = format_evaluation(ev)
    assert "test set internal" in text and "test set external" in text
    doc = json.loads(json.dumps(ev.to_dict()))
    assert Evaluation.from_dict(doc) == ev
    old_keys = ["task", "dataset", "expanded", "resolution", "seeds", "classes", "rare", "split", "split_ids", "config",
                "arms", "deltas", "verdict", "seconds"]
    assert list(doc)[:len(old_keys)] == old_keys  # the keys of earlier evaluation.json files, in their order
    legacy = {k: doc[k] for k in old_keys}
    assert Evaluation.from_dict(legacy).test_sets == []  # an earlier file still reads


def test_flags_name_a_class_that_drops_when_synthetic_cases_are_added(evaluation):
    from synthgen.expand.evaluation import ArmResult, SeedRun, synthetic_drops

    def arm(dice: list[float]) -> ArmResult:
        return ArmResult.of(4, [SeedRun(seed=s, metrics={"liver": {"dice": d}, "liver_tumor": {"dice": 0.5}},
                                        curve=[]) for s, d in enumerate(dice)])

    arms = {"real": arm([0.90, 0.92]), "real+synthetic": arm([0.70, 0.72])}
    flags = synthetic_drops(arms, ["liver_tumor"])
    assert len(flags) == 1 and flags[0].startswith("liver dice drops with real+synthetic vs real: 0.910 -> 0.710")
    assert synthetic_drops({"real": arm([0.9, 0.92]), "real+synthetic": arm([0.89, 0.93])}, ["liver_tumor"]) == []
    assert synthetic_drops({"real": arm([0.9]), "real+synthetic": arm([0.5])}, ["liver_tumor"]) == []  # one seed
    assert all("drops with" in f for f in evaluation.flags)


def test_two_ranks_train_the_runs_of_one_rank_and_give_its_numbers(setup, runs, evaluation):
    arms = list(CFG.arms)
    one = runs_of_rank(arms, CFG.seeds, rank=0, world=1)
    r0, r1 = (runs_of_rank(arms, CFG.seeds, rank=r, world=2) for r in (0, 1))
    assert not set(r0) & set(r1) and sorted(r0 + r1) == sorted(one) == sorted(all_runs(arms, CFG.seeds))
    assert abs(len(r0) - len(r1)) <= 1
    # rank 1's share trained apart, sent as JSON and put back with rank 0's: the same evaluation
    by_run = {(r.arm, r.seed): r for r in runs}
    sub = [("real", 1), ("synthetic-only-positives", 0)]
    again = train_runs(setup, sub)
    assert [dataclasses.asdict(r) for r in again] == [dataclasses.asdict(by_run[k]) for k in sub]  # seed-paired, exact
    from synthgen.expand.arms import encode_runs

    sent = RunResult.decode(encode_runs([by_run[k] for k in r1]))
    merged = assemble(setup, sent + [by_run[k] for k in r0], seconds=1.0)
    assert merged == evaluation
    with pytest.raises(InputError, match="missing"):
        in_order([by_run[k] for k in r0], arms, CFG.seeds)
    with pytest.raises(InputError, match="rank must be in"):
        runs_of_rank(arms, 2, rank=2, world=2)


def test_test_set_labels_are_mapped_by_class_name(sets, tmp_path):
    from synthgen.io import read

    swapped = _write_test_set(tmp_path / "swapped", {"background": 0, "kidney": 1, "liver_tumor": 2, "liver": 3})
    s = prepare(read_dataset(sets[0]), tests=[swapped], cfg=dataclasses.replace(CFG, arms=["real"]))
    assert [t.name for t in s.tests] == ["internal", "swapped"]
    raw = read(swapped / "labelsTr" / "ext_000.nii.gz", kind="label").to_canonical().numpy()
    target = s.tests[1].cases[0].target
    assert (raw == 2).any() and (target[raw == 2] == TUMOUR).all()
    assert (target[raw == 3] == 1).all() and (target[raw == 1] == 2).all()  # liver, kidney by name


def _cli(capsys, *argv) -> tuple[int, str]:
    code = main(["-q", *map(str, argv)])
    return code, capsys.readouterr().err


def test_bad_arms_and_test_sets_are_one_line_errors(sets, tmp_path, capsys):
    ds, _, external = sets
    out = tmp_path / "ev"
    code, err = _cli(capsys, "evaluate", ds, "--arms", "real,synthetic-only", "--out", out)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert ("unknown arm 'synthetic-only'; arms: real, weighted, real+synthetic, weighted+synthetic, "
            "synthetic-only-positives") in err
    code, err = _cli(capsys, "evaluate", ds, "--arms", "real,real", "--out", out)
    assert code == 2 and "listed twice" in err
    with pytest.raises(InputError, match="unknown arm 'synthetic'"):
        EvalConfig(arms=["synthetic"])
    code, err = _cli(capsys, "evaluate", ds, "--arms", "real,real+synthetic", "--out", out)
    assert code == 2 and "no synthetic_manifest.jsonl for the real+synthetic arm" in err and "--arms" in err

    lacking = _write_test_set(tmp_path / "lacking", {"background": 0, "liver": 1, "kidney": 2})
    code, err = _cli(capsys, "evaluate", ds, "--arms", "real", "--test", external, "--test", lacking, "--out", out)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"--test {lacking}: lacks class 'liver_tumor' of the dataset" in err
    renamed = _write_test_set(tmp_path / "renamed", {"background": 0, "liver": 1, "kidney": 2, "liver_tumor": 3,
                                                     "spleen": 4})
    code, err = _cli(capsys, "evaluate", ds, "--arms", "real", "--test", renamed, "--out", out)
    assert code == 2 and "class 'spleen' is not a class of the dataset" in err
    code, err = _cli(capsys, "evaluate", ds, "--arms", "real", "--test", ds, "--out", out)
    assert code == 2 and "is also a file of the dataset" in err
    code, err = _cli(capsys, "evaluate", ds, "--arms", "real", "--test", tmp_path / "nowhere", "--out", out)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--test" in err
    assert not out.exists()  # nothing written on bad input


def test_evaluate_cli_writes_one_report_per_test_set(sets, tmp_path, capsys):
    ds, expanded, external = sets
    out = tmp_path / "ev"
    argv = ["evaluate", ds, "--expanded", expanded, "--test", external, "--arms", "real,weighted+synthetic",
            "--seeds", "1", "--steps", "2", "--rare", "liver_tumor", "--out", out, "batch=2", "val_every=1",
            "patch=[16,16,16]", "channels=[4,8]"]
    code, err = _cli(capsys, *argv)
    assert code == 0, err
    ev = Evaluation.read(out / "evaluation.json")
    assert list(ev.arms) == ["real", "weighted+synthetic"] and ev.test_sets[0].name == "external"
    page = (out / "report.html").read_text()
    assert "Test set internal" in page and "Test set external" in page and "weighted+synthetic - weighted" not in page
    assert "weighted+synthetic - real" in page and "spread" in page
    code, err = _cli(capsys, *argv)  # an existing evaluation is refused before any training
    assert code == 2 and "already exists" in err


def test_torchrun_two_ranks_write_what_one_rank_writes(sets, tmp_path):
    import os
    import subprocess
    import sys

    ds, expanded, external = sets
    args = ["-m", "synthgen", "-q", "evaluate", str(ds), "--expanded", str(expanded), "--test", str(external),
            "--arms", "real,weighted+synthetic", "--seeds", "1", "--steps", "2", "--rare", "liver_tumor", "batch=2",
            "val_every=1", "patch=[16,16,16]", "channels=[4,8]", "--out"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads in both: the same floating-point sums
    subprocess.run([sys.executable, *args, str(tmp_path / "one")], check=True, capture_output=True, env=env)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29547", *args, str(tmp_path / "two")], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one, two = (json.loads((tmp_path / d / "evaluation.json").read_text()) for d in ("one", "two"))
    assert one.pop("seconds") and two.pop("seconds") and one == two
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["evaluation.json", "evaluation.txt", "report.html",
                                                                    "report_files"]

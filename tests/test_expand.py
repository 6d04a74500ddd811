"""synthgen.expand: dataset readers (nnU-Net/MSD, MONAI datalist, CSV) and class analysis."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from synthgen.errors import InputError
from synthgen.expand.analysis import analyse, format_table, write_analysis
from synthgen.expand.dataset import read_dataset
from synthgen.io import write
from tests.conftest import TOY_CLASSES as CLASSES
from tests.conftest import toy_case as _case
from tests.conftest import write_toy_dataset


@pytest.fixture(scope="module")
def nnunet(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "Dataset042_Toy"
    write_toy_dataset(root, 5)
    return root


def test_nnunet_reader(nnunet):
    ds = read_dataset(nnunet)
    assert (ds.layout, ds.task) == ("nnunet", "seg")
    assert ds.classes == CLASSES and ds.class_names == ["liver", "kidney", "liver_tumor"]
    assert [it.id for it in ds.items] == [f"toy_{k:03d}" for k in range(5)]
    assert ds.items[0].label.name == "toy_000.nii.gz" and not ds.problems


def test_msd_training_list_and_string_ids(nnunet, tmp_path):
    meta = {"labels": {str(i): n for i, n in CLASSES.items()},
            "training": [{"image": f"./imagesTr/toy_{k:03d}_0000.nii.gz", "label": f"./labelsTr/toy_{k:03d}.nii.gz"}
                         for k in range(3)]}
    root = tmp_path / "msd"
    root.mkdir()
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).symlink_to(nnunet / sub)
    (root / "dataset.json").write_text(json.dumps(meta))
    ds = read_dataset(root)
    assert len(ds.items) == 3 and ds.classes == CLASSES


def test_datalist_and_csv_readers(nnunet, tmp_path):
    dl = {"labels": {str(i): n for i, n in CLASSES.items()},
          "training": [{"image": str(nnunet / "imagesTr" / f"toy_{k:03d}_0000.nii.gz"),
                        "label": str(nnunet / "labelsTr" / f"toy_{k:03d}.nii.gz")} for k in range(4)]}
    (tmp_path / "seg.json").write_text(json.dumps(dl))
    ds = read_dataset(tmp_path / "seg.json")
    assert (ds.layout, ds.task, len(ds.items)) == ("datalist", "seg", 4)
    cls = {"training": [{"image": str(nnunet / "imagesTr" / f"toy_{k:03d}_0000.nii.gz"),
                         "label": "tumour" if k == 0 else "normal"} for k in range(5)]}
    (tmp_path / "cls.json").write_text(json.dumps(cls))
    ds = read_dataset(tmp_path / "cls.json")
    assert ds.task == "cls" and sorted(ds.classes.values()) == ["normal", "tumour"]
    with open(tmp_path / "cls.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label"])
        for k in range(5):
            w.writerow([str(nnunet / "imagesTr" / f"toy_{k:03d}_0000.nii.gz"), "tumour" if k < 2 else "normal"])
    ds = read_dataset(tmp_path / "cls.csv")
    assert (ds.layout, ds.task) == ("csv", "cls")
    a = analyse(ds)
    assert {c.name: c.n_cases for c in a.classes} == {"normal": 3, "tumour": 2}
    with open(tmp_path / "seg.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "mask"])
        w.writerow([str(nnunet / "imagesTr" / "toy_000_0000.nii.gz"), str(nnunet / "labelsTr" / "toy_000.nii.gz")])
    ds = read_dataset(tmp_path / "seg.csv")
    assert ds.task == "seg" and set(ds.classes) == {0, 1, 2, 3}  # undeclared values: named class_<v>


def test_bad_items_are_reported_together(nnunet, tmp_path):
    root = tmp_path / "bad"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    import shutil

    for k in range(5):
        shutil.copy(nnunet / "imagesTr" / f"toy_{k:03d}_0000.nii.gz", root / "imagesTr")
    shutil.copy(nnunet / "labelsTr" / "toy_000.nii.gz", root / "labelsTr")
    # toy_001: no label; toy_002: label on another grid; toy_003: undeclared value; toy_004: unreadable
    _, lab = _case(2, False)
    write(lab.crop_voxels((0, 0, 0), (20, 32, 36)), root / "labelsTr" / "toy_002.nii.gz")
    _, lab3 = _case(3, False)
    arr = lab3.numpy().copy()
    arr[0, 0, 0] = 9
    write(lab3.replace(array=arr), root / "labelsTr" / "toy_003.nii.gz")
    (root / "labelsTr" / "toy_004.nii.gz").write_bytes(b"not a nifti")
    (root / "dataset.json").write_text(json.dumps({"labels": {n: i for i, n in CLASSES.items()}}))
    ds = read_dataset(root)
    assert [it.id for it in ds.items] == ["toy_000"]
    msgs = dict(ds.problems)
    assert "label file missing" in msgs["toy_001"]
    assert "another grid" in msgs["toy_002"]
    assert "not declared" in msgs["toy_003"] and "[9]" in msgs["toy_003"]
    assert "unreadable" in msgs["toy_004"]
    text = ds.summary()
    assert "4 item(s) with problems" in text and all(k in text for k in msgs)
    (root / "labelsTr" / "toy_000.nii.gz").unlink()
    with pytest.raises(InputError, match="no usable item left"):
        read_dataset(root)


def test_layout_errors(tmp_path):
    with pytest.raises(InputError, match="dataset not found"):
        read_dataset(tmp_path / "nope.json")
    (tmp_path / "x.csv").write_text("path,kind\na,b\n")
    with pytest.raises(InputError, match="image,label"):
        read_dataset(tmp_path / "x.csv")
    with pytest.raises(InputError, match="imagesTr"):
        read_dataset(tmp_path)


def test_analysis_counts_and_rare_rule(nnunet, tmp_path):
    a = analyse(read_dataset(nnunet))
    s = a.by_name()
    assert s["liver"].n_cases == 5 and s["kidney"].n_cases == 5 and s["liver_tumor"].n_cases == 1
    assert s["liver_tumor"].voxels == 27
    assert s["liver_tumor"].lesion_diameters_mm == [pytest.approx((6 * 27 * 512 / np.pi) ** (1 / 3), abs=0.1)]
    assert s["liver"].volume_ml == pytest.approx(s["liver"].voxels * 0.512)
    assert a.rare == ["liver_tumor"]
    table = format_table(a)
    assert "liver_tumor" in table and "RARE" in table
    named = analyse(read_dataset(nnunet), rare="kidney")
    assert named.rare == ["kidney"]
    with pytest.raises(InputError, match="did you mean 'liver_tumor'"):
        analyse(read_dataset(nnunet), rare="liver_tumour")
    paths = write_analysis(a, tmp_path / "out")
    data = json.loads(paths["analysis"].read_text())
    assert data["rare"] == ["liver_tumor"] and data["classes"][2]["n_cases"] == 1
    from PIL import Image

    assert Image.open(paths["chart"]).size[0] == 900


# ------------------------------------------------------------------ plan
def _fake_analysis(cases: dict[str, int], n: int, rare: list[str]):
    from synthgen.expand.analysis import Analysis, ClassStats

    return Analysis(dataset="x", task="seg", n_items=n, rule="test", rare=rare,
                    classes=[ClassStats(k, None, [f"c{i}" for i in range(v)]) for k, v in cases.items()])


def test_plan_arithmetic():
    from synthgen.expand.plan import Target, _within_budget, fraction_after, synthetic_counts

    a = _fake_analysis({"liver": 100, "liver_tumor": 7, "kidney_cyst": 20}, 100, ["liver_tumor", "kidney_cyst"])
    assert synthetic_counts(a, Target.parse("balance")) == {"liver_tumor": 93, "kidney_cyst": 80}
    assert synthetic_counts(a, Target.parse("count=25")) == {"liver_tumor": 18, "kidney_cyst": 5}
    counts = synthetic_counts(a, Target.parse("fraction=0.3"))
    after = fraction_after(a, counts)
    assert after["liver_tumor"] >= 0.3 and after["kidney_cyst"] >= 0.3
    # minimal: one item fewer of either class would miss the target
    for k in counts:
        fewer = {**counts, k: counts[k] - 1}
        assert fraction_after(a, fewer)[k] < 0.3
    with pytest.raises(InputError, match="cannot be met"):
        synthetic_counts(a, Target.parse("fraction=0.5"))
    capped, limited = _within_budget({"a": 93, "b": 80}, 50)
    assert limited and sum(capped.values()) == 50 and capped == {"a": 27, "b": 23}
    assert _within_budget({"a": 3}, 50) == ({"a": 3}, False)
    for bad in ("fraction=1.5", "count=0", "count=2.5", "most"):
        with pytest.raises(InputError):
            Target.parse(bad)


def test_plan_items_hosts_sizes_and_seeds(nnunet):
    from synthgen.expand.plan import Target, lesion_of_class, make_plan

    assert lesion_of_class("liver_tumor") == ("tumor", "liver")
    assert lesion_of_class("kidney") is None
    ds = read_dataset(nnunet)
    a = analyse(ds)
    plan = make_plan(ds, a, Target.parse("count=4"), seed=7)
    assert plan.counts == {"liver_tumor": 3}
    assert [i.name for i in plan.items] == [f"synth_liver_tumor_{k:04d}" for k in range(3)]
    assert all(i.host != "toy_000" for i in plan.items)  # toy_000 already has a tumour
    assert len({i.host for i in plan.items}) == 3
    real = a.by_name()["liver_tumor"].lesion_diameters_mm[0]
    assert all(0.9 * real - 0.01 <= i.diameter_mm <= 1.1 * real + 0.01 for i in plan.items)
    again = make_plan(ds, a, Target.parse("count=4"), seed=7)
    assert again.items == plan.items  # deterministic
    assert make_plan(ds, a, Target.parse("count=4"), seed=8).items != plan.items
    assert "liver_tumor: 1 -> 4 cases" in plan.format(a)
    with pytest.raises(InputError, match="cannot generate class 'kidney'"):
        make_plan(ds, analyse(ds, rare="kidney"), Target.parse("count=9"))


# ------------------------------------------------------------------ generate
def _tree(root):
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".synthgen_journal" not in p.parts}


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_expand_in_place_keeps_originals_and_writes_manifest(nnunet, tmp_path):
    from synthgen.cli import main

    root = _copy(nnunet, tmp_path / "ds")
    before = _tree(root)
    assert main(["-q", "expand", str(root), "--target", "count=3", "--seed", "1"]) == 0
    after = _tree(root)
    assert all(after[k] == v for k, v in before.items())  # originals byte-identical
    new = sorted(set(after) - set(before))
    assert new == sorted(["dataset.synthgen.json", "synthetic_manifest.jsonl", "synthgen_expand.json",
                          "synthgen_expand.png",
                          "imagesTr/synth_liver_tumor_0000_0000.nii.gz", "imagesTr/synth_liver_tumor_0001_0000.nii.gz",
                          "labelsTr/synth_liver_tumor_0000.nii.gz", "labelsTr/synth_liver_tumor_0001.nii.gz"])
    lines = [json.loads(x) for x in (root / "synthetic_manifest.jsonl").read_text().splitlines()]
    assert [r["name"] for r in lines] == ["synth_liver_tumor_0000", "synth_liver_tumor_0001"]
    assert all(r["synthetic"] and r["host"] != "toy_000" and len(r["inputs"]["image_sha256"]) == 64 for r in lines)
    meta = json.loads((root / "dataset.synthgen.json").read_text())
    assert meta["numTraining"] == 7
    ds2 = read_dataset(root, include_synthetic=True)  # the expanded folder reads back, with the tumour class now in 3 cases
    assert analyse(ds2).by_name()["liver_tumor"].n_cases == 3
    from synthgen.io import read

    lab = read(root / "labelsTr" / "synth_liver_tumor_0000.nii.gz", kind="label").numpy()
    assert (lab == 3).any() and set(np.unique(lab)) <= {0, 1, 2, 3}
    summary = json.loads((root / "synthgen_expand.json").read_text())
    assert summary["cases_after"] == {"liver": 5, "kidney": 5, "liver_tumor": 3}
    # running again does nothing new
    assert main(["-q", "expand", str(root), "--target", "count=3", "--seed", "1"]) == 0
    assert _tree(root) == after


def test_expand_to_a_separate_copy(nnunet, tmp_path):
    from synthgen.cli import main

    root = _copy(nnunet, tmp_path / "ds")
    before = _tree(root)
    assert main(["-q", "expand", str(root), "--target", "count=2", "--out", str(tmp_path / "big")]) == 0
    assert _tree(root) == before  # nothing written into the original dataset
    out = _tree(tmp_path / "big")
    assert "imagesTr/toy_003_0000.nii.gz" in out and "dataset.json" in out
    assert json.loads((tmp_path / "big" / "dataset.json").read_text())["numTraining"] == 6


def test_kill_and_resume_equals_uninterrupted(nnunet, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    ref = _copy(nnunet, tmp_path / "ref")
    cmd = [sys.executable, "-m", "synthgen", "-q", "expand", "--target", "count=5", "--seed", "3"]
    subprocess.run([*cmd, str(ref)], check=True, capture_output=True)
    killed = _copy(nnunet, tmp_path / "killed")
    proc = subprocess.Popen([*cmd, str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = killed / ".synthgen_journal" / "rank0.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "synthetic_manifest.jsonl").exists()
    subprocess.run([*cmd, str(killed)], check=True, capture_output=True)
    assert _tree(killed) == _tree(ref)


def test_two_ranks_write_what_one_rank_writes(nnunet, tmp_path):
    import os
    import subprocess
    import sys

    one = _copy(nnunet, tmp_path / "one")
    two = _copy(nnunet, tmp_path / "two")
    args = ["-m", "synthgen", "-q", "expand", "--target", "count=5", "--seed", "4"]
    subprocess.run([sys.executable, *args, str(one)], check=True, capture_output=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29533", *args, str(two)], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len((two / ".synthgen_journal" / "rank1.jsonl").read_text().splitlines()) == 2  # rank 1 did its share
    assert _tree(two) == _tree(one)

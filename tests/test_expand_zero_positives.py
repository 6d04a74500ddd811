"""synthgen expand for a class no case contains: sizes from the lesion spec, and the contrast phase
(matched, estimated, not needed, or `--phase`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from synthgen.cli import main
from synthgen.errors import InputError
from synthgen.expand.analysis import analyse
from synthgen.expand.dataset import read_dataset
from synthgen.expand.plan import Target, make_plan, phase_matters
from synthgen.lesions.spec import LesionSpec
from tests.conftest import write_toy_dataset


def _write_organ_dataset(root, organ: str, labels: dict[str, int], n: int = 3):
    """An ``n``-case nnU-Net set of small phantoms whose only labelled structure is ``organ`` (the
    vocabulary group), written with the label value ``labels[organ]``; ``labels`` is what
    dataset.json declares (a lesion class among them that no case contains)."""
    from synthgen.data import phantom
    from synthgen.io import write

    for k in range(n):
        ct, lab = phantom(shape=(40, 32, 36), spacing=(8, 8, 8), seed=k)
        arr = np.zeros(lab.shape, np.uint8)
        arr[np.isin(lab.numpy(), lab.vocab.ids(organ))] = labels[organ]
        write(ct, root / "imagesTr" / f"case_{k:03d}_0000.nii.gz")
        write(lab.replace(array=arr, vocab=None), root / "labelsTr" / f"case_{k:03d}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, **labels},
                                                   "numTraining": n, "file_ending": ".nii.gz"}))
    return root


def _cli(capsys, *argv) -> tuple[int, str]:
    code = main(["-q", *map(str, argv)])
    return code, capsys.readouterr().err


def _manifest(folder) -> list[dict]:
    return [json.loads(x) for x in (folder / "synthetic_manifest.jsonl").read_text().splitlines()]


def test_which_lesions_need_a_phase():
    assert phase_matters("tumor", "liver") and phase_matters("tumor", "spleen")
    assert not phase_matters("cyst", "kidney")  # one table row for every phase
    assert not phase_matters("nodule_solid", "lung") and not phase_matters("metastasis", "lung")  # aerated host


def test_a_lungs_only_chest_set_gets_nodules_without_a_phase(tmp_path, capsys):
    # the nodule class is declared first: a lesion class never hosts, even when its name starts with "lung_"
    ds = _write_organ_dataset(tmp_path / "chest", "lung", {"lung_nodule_solid": 1, "lung": 2})
    out = tmp_path / "expanded"
    code, err = _cli(capsys, "expand", ds, "--rare", "lung_nodule_solid", "--target", "count=3", "--out", out)
    assert code == 0, err
    lines = _manifest(out)
    assert len(lines) == 3 and {r["class"] for r in lines} == {"lung_nodule_solid"}
    assert {r["parameters"]["phase"] for r in lines} == {"non_contrast"} and {r["lesion"]["organ"] for r in lines} == {
        "lung"}
    from synthgen.io import read

    for r in lines:
        lab = read(out / r["outputs"]["label"], kind="label").numpy()
        assert (lab == 1).any() and set(np.unique(lab)) <= {0, 1, 2}
    plan = json.loads((out / "synthgen_expand.json").read_text())["plan"]
    assert any("lesion spec's default" in n for n in plan["notes"])
    assert any("non_contrast appearance is used" in n for n in plan["notes"])
    default = LesionSpec(type="nodule_solid", organ="lung").diameter_mm  # None: the engine draws it
    assert all(i["diameter_mm"] == default for i in plan["items"])


def test_zero_positive_class_in_a_liver_set_takes_the_spec_default_and_estimates_the_phase(tmp_path):
    root = write_toy_dataset(tmp_path / "toy", 3, tumour_cases=())
    ds = read_dataset(root)
    a = analyse(ds, rare="liver_tumor")
    assert a.by_name()["liver_tumor"].n_cases == 0
    plan = make_plan(ds, a, Target.parse("count=2"), seed=3)
    assert plan.counts == {"liver_tumor": 2} and len(plan.items) == 2
    assert all(i.diameter_mm == LesionSpec(type="tumor", organ="liver").diameter_mm for i in plan.items)
    assert all(i.phase == "auto" for i in plan.items)  # the toy labels the liver: estimated per host
    text = plan.format(a)
    assert "liver_tumor: 0 -> 2 cases" in text
    assert "sizes from the lesion spec's default" in text and "phase estimated per host (from liver, kidney)" in text
    sized = make_plan(ds, a, Target.parse("count=3"), seed=3, size_mm=[6.0, 9.0])
    assert {i.diameter_mm for i in sized.items} <= {6.0, 9.0} and "spec's default" not in sized.format(a)
    with pytest.raises(InputError, match="between 1 and 200"):
        make_plan(ds, a, Target.parse("count=2"), size_mm=[6.0, 0.0])


def test_zero_positive_expand_runs_end_to_end(tmp_path, capsys):
    root = write_toy_dataset(tmp_path / "toy", 3, tumour_cases=())
    out = tmp_path / "expanded"
    code, err = _cli(capsys, "expand", root, "--rare", "liver_tumor", "--target", "count=2", "--sizes", "18,24",
                     "--out", out)
    assert code == 0, err
    lines = _manifest(out)
    assert len(lines) == 2 and {r["parameters"]["diameter_mm"] for r in lines} <= {18.0, 24.0}
    code, err = _cli(capsys, "expand", root, "--rare", "liver_tumor", "--size", "10", "--sizes", "18,24",
                     "--dry-run")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--size and --sizes" in err
    code, err = _cli(capsys, "expand", root, "--rare", "liver_tumor", "--sizes", "10,big", "--dry-run")
    assert code == 2 and "--sizes takes comma-separated numbers" in err


def test_a_phase_dependent_lesion_without_phase_organs_asks_for_phase(tmp_path, capsys):
    ds = _write_organ_dataset(tmp_path / "spleens", "spleen", {"spleen": 1, "spleen_tumor": 2})
    code, err = _cli(capsys, "expand", ds, "--rare", "spleen_tumor", "--target", "count=2", "--dry-run")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "cannot choose the contrast phase of 'spleen_tumor'" in err and "pass --phase" in err
    code, err = _cli(capsys, "expand", ds, "--rare", "spleen_tumor", "--phase", "venous", "--dry-run")
    assert code == 2 and "unknown phase 'venous'" in err and "portal_venous" in err
    out = tmp_path / "expanded"
    code, err = _cli(capsys, "expand", ds, "--rare", "spleen_tumor", "--target", "count=2", "--phase", "portal_venous",
                     "--out", out)
    assert code == 0, err
    lines = _manifest(out)
    assert len(lines) == 2 and {r["lesion"]["phase"] for r in lines} == {"portal_venous"}
    assert not list(tmp_path.glob("spleens/imagesTr/synth_*"))  # --out: nothing written into the dataset

"""`synthgen expand` on hostile or messy input: unsafe class names, symlinked folders, files it
did not write, a killed run's temp files, items whose voxels the engines cannot use."""

from __future__ import annotations

import hashlib
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from synthgen.cli import main
from synthgen.expand.dataset import read_dataset
from tests.conftest import TOY_CLASSES, write_toy_dataset


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Four toy cases, a tumour in the first: ``count=2`` plans one synthetic item."""
    return write_toy_dataset(tmp_path_factory.mktemp("toy") / "Dataset001_Toy", 4)


def _copy(src, dst):
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _files(root):
    """Every file under ``root`` (symlinks not followed) -> sha256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def _data(root):
    """`_files` without the journal."""
    return {k: v for k, v in _files(root).items() if not k.startswith(".synthgen_journal/")}


def _expand(*args):
    return main(["-q", "expand", "--target", "count=2", *map(str, args)])  # a later --target wins


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    return err


def _relabel(root, name3: str):
    labels = {n: i for i, n in TOY_CLASSES.items() if i != 3} | {name3: 3}
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "file_ending": ".nii.gz"}))


# ------------------------------------------------------------------ names from data
@pytest.mark.parametrize("name", ["liver_tumor/../../../escape/x", "liver/tumor"])
def test_unsafe_class_name_stops_before_anything_is_written(toy, tmp_path, capsys, name):
    root = _copy(toy, tmp_path / "ds")
    _relabel(root, name)
    before = _files(root)
    assert _expand(root, "--rare", name) == 2
    err = _error(capsys)
    assert f"class name {name!r} cannot be used in a file name" in err and "--rare" in err
    assert _files(root) == before and not (root / ".synthgen_journal").exists()
    assert not (tmp_path / "escape").exists()
    assert [p.name for p in (root / "imagesTr").iterdir() if p.is_dir()] == []


def test_class_name_with_spaces_becomes_underscores(toy, tmp_path):
    from synthgen.expand.analysis import analyse
    from synthgen.expand.plan import Target, make_plan

    root = _copy(toy, tmp_path / "ds")
    _relabel(root, "liver tumor")
    ds = read_dataset(root)
    plan = make_plan(ds, analyse(ds), Target.parse("count=3"))
    assert [i.name for i in plan.items] == ["synth_liver_tumor_0000", "synth_liver_tumor_0001"]
    assert {i.class_name for i in plan.items} == {"liver tumor"}  # the manifest keeps the dataset's name


@pytest.mark.parametrize("folder", ["imagesTr", "labelsTr"])
def test_symlinked_output_folder_is_refused(toy, tmp_path, capsys, folder):
    root = _copy(toy, tmp_path / "ds")
    real = tmp_path / "elsewhere"
    (root / folder).rename(real)
    (root / folder).symlink_to(real, target_is_directory=True)
    before, before_real = _files(root), _files(real)
    assert _expand(root) == 2
    err = _error(capsys)
    assert "symbolic link" in err and folder in err
    assert _files(root) == before and _files(real) == before_real
    assert not (root / ".synthgen_journal").exists()


def test_symlinked_folder_in_out_is_refused(toy, tmp_path, capsys):
    root = _copy(toy, tmp_path / "ds")
    out, elsewhere = tmp_path / "big", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "labelsTr").symlink_to(elsewhere, target_is_directory=True)
    assert _expand(root, "--out", out) == 2
    assert "symbolic link" in _error(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["labelsTr"] and not any(elsewhere.iterdir())


# ------------------------------------------------------------------ overwriting
def test_a_users_file_at_a_target_is_not_overwritten(toy, tmp_path, capsys):
    root = _copy(toy, tmp_path / "ds")
    mine = root / "imagesTr" / "synth_liver_tumor_0000_0000.nii.gz"
    mine.write_bytes(b"my own scan")
    before = _files(root)
    assert _expand(root) == 2
    err = _error(capsys)
    assert str(mine) in err and "pass --overwrite" in err
    assert _files(root) == before and not (root / ".synthgen_journal").exists()
    assert _expand(root, "--overwrite") == 0
    assert mine.read_bytes() != b"my own scan"
    assert _expand(root) == 0  # now it is this run's own, journaled output: the rerun is allowed


@pytest.mark.parametrize("name", ["dataset.json", "synthetic_manifest.jsonl", "synthgen_expand.json"])
def test_files_in_a_non_empty_out_are_not_overwritten(toy, tmp_path, capsys, name):
    root = _copy(toy, tmp_path / "ds")
    out = tmp_path / "big"
    out.mkdir()
    (out / name).write_text('{"mine": true}\n')
    assert _expand(root, "--out", out) == 2
    err = _error(capsys)
    assert str(out / name) in err and "pass --overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == [name] and (out / name).read_text() == '{"mine": true}\n'
    assert _expand(root, "--out", out, "--overwrite") == 0
    assert (out / name).read_text() != '{"mine": true}\n'


def test_a_differing_file_where_an_original_goes_is_not_kept_silently(toy, tmp_path, capsys):
    root = _copy(toy, tmp_path / "ds")
    out = tmp_path / "big"
    (out / "imagesTr").mkdir(parents=True)
    (out / "imagesTr" / "toy_001_0000.nii.gz").write_bytes(b"something else")
    assert _expand(root, "--out", out) == 2
    assert "toy_001_0000.nii.gz" in _error(capsys)
    assert _expand(root, "--out", out, "--overwrite") == 0
    assert _files(out)["imagesTr/toy_001_0000.nii.gz"] == _files(root)["imagesTr/toy_001_0000.nii.gz"]


def test_a_rerun_with_other_settings_does_not_reuse_or_replace_the_old_items(toy, tmp_path, capsys):
    ref = _copy(toy, tmp_path / "ref")
    assert _expand(ref, "--seed", "2") == 0
    root = _copy(toy, tmp_path / "ds")
    assert _expand(root, "--seed", "1") == 0
    first = _files(root)
    assert _expand(root, "--seed", "2") == 2  # seed 1's items are not seed 2's: neither kept nor replaced
    assert "pass --overwrite" in _error(capsys) and _files(root) == first
    assert _expand(root, "--seed", "2", "--overwrite") == 0
    lines = (root / "synthetic_manifest.jsonl").read_text().splitlines()
    assert [json.loads(x)["parameters"]["plan_seed"] for x in lines] == [2]
    assert _data(root) == _data(ref)


def test_an_item_written_but_not_yet_journaled_is_redone_not_refused(toy, tmp_path):
    root = _copy(toy, tmp_path / "ds")
    assert _expand(root, "--target", "count=3") == 0
    done = _data(root)
    journal = root / ".synthgen_journal" / "rank0.jsonl"
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:-1]) + "\n")  # killed after the last item's files, before its record
    (root / "synthetic_manifest.jsonl").unlink()
    assert _expand(root, "--target", "count=3") == 0
    assert _data(root) == done


# ------------------------------------------------------------------ a killed run's temp files
def test_a_rerun_removes_the_temp_files_a_killed_run_left(toy, tmp_path):
    root = _copy(toy, tmp_path / "ds")
    assert _expand(root) == 0
    img, lab = root / "imagesTr", root / "labelsTr"
    planted = [lab / ".synth_liver_tumor_0000.nii.gz.k3j2x9.tmp.nii.gz",  # older synthgen's temp name
               img / ".synth_liver_tumor_0000_0000.nii.gz.a1b2c3.tmp",
               root / ".synthetic_manifest.jsonl.zz99.tmp"]
    for p in planted:
        p.write_bytes(b"half written")
    stage = img / ".synth_liver_tumor_0000_0000.nii.gz.q8w7.tmp"  # a writer's staging folder
    stage.mkdir()
    (stage / "synth_liver_tumor_0000_0000.nii.gz").write_bytes(b"half written")
    foreign = [img / ".notes.tmp", lab / ".toy_000.nii.gz.mine.tmp"]  # not temps of expand's targets
    for p in foreign:
        p.write_bytes(b"keep me")
    assert _expand(root) == 0
    assert not any(p.exists() for p in [*planted, stage])
    assert all(p.read_bytes() == b"keep me" for p in foreign)
    listed = [p.name for d in (img, lab) for p in d.glob("*.nii.gz")]
    assert listed and not [n for n in listed if n.startswith(".") or ".tmp" in n]


# ------------------------------------------------------------------ item validation
def _nifti(path, arr, like):
    nib.save(nib.Nifti1Image(arr, nib.load(str(like)).affine), str(path))


def test_items_whose_voxels_the_engines_cannot_use_are_left_out(toy, tmp_path, capsys):
    root = write_toy_dataset(tmp_path / "bad", 6)
    img, lab = root / "imagesTr", root / "labelsTr"
    ct = np.asarray(nib.load(str(img / "toy_001_0000.nii.gz")).dataobj).astype(np.float32)
    ct[3, 4, 5] = np.nan
    _nifti(img / "toy_001_0000.nii.gz", ct, img / "toy_001_0000.nii.gz")
    ct2 = np.asarray(nib.load(str(img / "toy_002_0000.nii.gz")).dataobj)
    _nifti(img / "toy_002_0000.nii.gz", np.stack([ct2, ct2], axis=-1), img / "toy_002_0000.nii.gz")
    lab3 = np.asarray(nib.load(str(lab / "toy_003.nii.gz")).dataobj).astype(np.float32)
    lab3[0, 0, 0] = 0.5
    _nifti(lab / "toy_003.nii.gz", lab3, lab / "toy_003.nii.gz")
    lab4 = np.asarray(nib.load(str(lab / "toy_004.nii.gz")).dataobj).astype(np.int16)
    lab4[0, 0, 0] = -1
    _nifti(lab / "toy_004.nii.gz", lab4, lab / "toy_004.nii.gz")
    ds = read_dataset(root)
    assert [it.id for it in ds.items] == ["toy_000", "toy_005"]
    why = dict(ds.problems)
    assert "NaN" in why["toy_001"] and "toy_001_0000.nii.gz" in why["toy_001"]
    assert "4 dimensions" in why["toy_002"]
    assert "non-integer" in why["toy_003"] and "negative" in why["toy_004"]
    before = _files(root)
    assert _expand(root, "--rare", "liver_tumor") == 0  # the good cases are expanded; the bad ones listed
    out = capsys.readouterr().out
    assert "4 item(s) with problems (left out)" in out and all(k in out for k in why)
    manifest = [json.loads(x) for x in (root / "synthetic_manifest.jsonl").read_text().splitlines()]
    assert [r["host"] for r in manifest] == ["toy_005"]
    assert all(_files(root)[k] == v for k, v in before.items())


def test_dataset_json_that_is_not_an_object(toy, tmp_path, capsys):
    root = _copy(toy, tmp_path / "ds")
    (root / "dataset.json").write_text('[{"labels": {"liver": 1}}]')
    assert _expand(root) == 2
    assert "dataset.json: expected a JSON object" in _error(capsys)


def test_out_whose_parent_is_a_file(toy, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert _expand(toy, "--out", tmp_path / "afile" / "big") == 2
    assert "is a file, not a folder" in _error(capsys)
    assert _expand(toy, "--out", tmp_path / "afile") == 2
    assert "is a file, not a folder" in _error(capsys)

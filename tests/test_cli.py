"""The `synthgen` command: outputs, the geometry it preserves, and one-line errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synthgen import io
from synthgen.cli import main
from synthgen.io.record import Record
from synthgen.volume import Volume
from tests.conftest import AFFINES, make_affine, ramp_volume

VOXEL = (3, 4, 2)


def run(capsys, *argv):
    code = main([*argv])
    out, err = capsys.readouterr()
    return code, out, err


def digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


def world_of_voxel(capsys, path, voxel=VOXEL) -> np.ndarray:
    code, out, err = run(capsys, "info", str(path), "--json", "--voxel", *map(str, voxel), "-q")
    assert code == 0, err
    return np.array(json.loads(out)["voxel_world_mm"])


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("synthgen 0.")
    assert main([]) == 2
    assert "info" in capsys.readouterr().out


def test_info_text(capsys, tmp_path):
    io.write(ramp_volume(AFFINES["lps"]), tmp_path / "ct.nii.gz")
    code, out, _ = run(capsys, "info", str(tmp_path / "ct.nii.gz"), "--voxel", "1", "2", "3")
    assert code == 0
    assert "shape        7x6x5 voxels" in out
    assert "spacing      0.7x0.8x2.5 mm" in out
    assert "orientation  LPS" in out
    assert "range        -1024 .. -370 HU" in out
    assert "voxel        (1, 2, 3) ->" in out


def test_info_label_map_summary(capsys, tmp_path):
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[:5, :4, :2] = 5  # 40 voxels of 2 mm^3
    io.write(Volume(lab, make_affine(spacing=(1.0, 1.0, 2.0))), tmp_path / "lab.nrrd")
    code, out, _ = run(capsys, "info", str(tmp_path / "lab.nrrd"), "--json")
    assert code == 0
    info = json.loads(out)
    assert info["kind"] == "label"
    assert info["structures"] == [{"id": 5, "name": "liver", "voxels": 40, "ml": 0.08}]


@pytest.mark.parametrize("grid", ["lps", "oblique"])
def test_convert_preserves_world_coordinates_across_formats(capsys, tmp_path, grid):
    src = tmp_path / "src.nii.gz"
    io.write(ramp_volume(AFFINES[grid], shape=(9, 8, 6)), src)
    ref = world_of_voxel(capsys, src)
    for out in ["a.nrrd", "b.mha", "c.mhd", "d.nii", "series"]:
        code, _, err = run(capsys, "convert", str(src), str(tmp_path / out), "-q")
        assert code == 0, err
        np.testing.assert_allclose(world_of_voxel(capsys, tmp_path / out), ref, atol=1e-3)
        assert (tmp_path / (out + ".json")).is_file()
        back = io.read(tmp_path / out)
        np.testing.assert_array_equal(back.numpy(), io.read(src).numpy())


def test_convert_format_dicom_into_existing_folder(capsys, tmp_path):
    src = tmp_path / "src.nrrd"
    io.write(ramp_volume(AFFINES["ras"]), src)
    (tmp_path / "dcm").mkdir()
    code, out, err = run(capsys, "convert", str(src), str(tmp_path / "dcm"), "--format", "dicom", "-q")
    assert code == 0, err
    assert len(list((tmp_path / "dcm").glob("*.dcm"))) == 5
    assert io.read(tmp_path / "dcm").synthetic is False  # a converted non-synthetic image is marked DERIVED


def test_example_ct_world_coordinates_across_formats(capsys, tmp_path, example):
    from synthgen.data import example_dir

    src = example_dir() / "cxr.nii.gz"
    before = digest(src)
    voxel = (100, 200, 50)
    ref = world_of_voxel(capsys, src, voxel)
    for out in ["a.nrrd", "b.mha", "series"]:
        assert run(capsys, "convert", str(src), str(tmp_path / out), "-q")[0] == 0
        np.testing.assert_allclose(world_of_voxel(capsys, tmp_path / out, voxel), ref, atol=1e-3)
    assert digest(src) == before
    code, out, _ = run(capsys, "info", "--example", "-q")
    assert code == 0 and "liver" in out and "512x512x133" in out


def test_commands_never_modify_inputs(capsys, tmp_path):
    src = tmp_path / "in.nii.gz"
    lab = tmp_path / "lab.nii.gz"
    io.write(ramp_volume(AFFINES["oblique"]), src)
    io.write(Volume(np.ones((7, 6, 5), np.uint8), AFFINES["oblique"], kind="label"), lab)
    sums = {p: digest(p) for p in (src, lab)}
    assert main(["info", str(src), "--labels", str(lab), "-q"]) == 0
    assert main(["convert", str(src), str(tmp_path / "o.mha"), "-q"]) == 0
    assert main(["convert", str(src), str(tmp_path / "series"), "-q"]) == 0
    series = digest(tmp_path / "series")
    assert main(["convert", str(tmp_path / "series"), str(tmp_path / "back.nii.gz"), "-q"]) == 0
    assert main(["convert", str(src), str(src), "-q"]) == 2  # refuses to overwrite its input
    assert main(["convert", str(src), str(tmp_path / "o.mha"), "-q"]) == 2  # nor an existing output
    capsys.readouterr()
    assert {p: digest(p) for p in (src, lab)} == sums
    assert digest(tmp_path / "series") == series


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    import nibabel as nib

    (tmp_path / "notes.txt").write_text("not an image")
    good = tmp_path / "good.nii.gz"
    io.write(Volume(np.random.default_rng(0).normal(size=(30, 30, 30)).astype(np.float32), np.eye(4)), good)
    data = good.read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(data[: len(data) // 3])
    nib.save(nib.Nifti1Image(np.zeros((8, 9), np.int16), np.eye(4)), tmp_path / "flat.nii.gz")
    nan = np.zeros((4, 4, 4), np.float32)
    nan[0, 0, 0] = np.nan
    io.write(Volume(nan, np.eye(4)), tmp_path / "nan.nrrd")
    io.write(Volume(np.zeros((30, 30, 30), np.uint8), np.diag([2.0, 1, 1, 1]), kind="label"), tmp_path / "lab.nii.gz")
    return {
        "missing": (["info", str(tmp_path / "nope.nii.gz")], "nope.nii.gz: no such file or folder"),
        "non-image": (["info", str(tmp_path / "notes.txt")], "notes.txt: not a medical image"),
        "truncated": (["convert", str(tmp_path / "trunc.nii.gz"), str(tmp_path / "x.nrrd")], "trunc.nii.gz: truncated or corrupt"),
        "2d": (["info", str(tmp_path / "flat.nii.gz")], "flat.nii.gz: image is 2D (8x9); a 3D volume is needed"),
        "nan": (["info", str(tmp_path / "nan.nrrd")], "nan.nrrd: image contains 1 NaN or infinite voxels"),
        "grid": (["info", str(good), "--labels", str(tmp_path / "lab.nii.gz")], "lab.nii.gz: label map is not on the grid of"),
        "format": (["convert", str(good), str(tmp_path / "x.png")], "unknown output extension '.png'"),
        "config": (["phantom", "--out", str(tmp_path / "p"), "colour=red"], "invalid config for PhantomConfig"),
        "override": (["phantom", "--out", str(tmp_path / "p"), "seed"], "config override must look like key=value"),
    }


@pytest.mark.parametrize(
    "case", ["missing", "non-image", "truncated", "2d", "nan", "grid", "format", "config", "override"]
)
def test_bad_input_one_line_exit_2(capsys, tmp_path, case):
    argv, message = _bad_inputs(tmp_path)[case]
    code, out, err = run(capsys, *argv, "-q")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0]
    assert "Traceback" not in err


def test_console_script_no_traceback_unless_debug(tmp_path):
    missing = str(tmp_path / "nope.nii.gz")
    res = subprocess.run([sys.executable, "-m", "synthgen.cli", "info", missing], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip() == f"synthgen info: error: {missing}: no such file or folder"
    res = subprocess.run(
        [sys.executable, "-m", "synthgen.cli", "info", missing, "--debug"], capture_output=True, text=True
    )
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_phantom_command_writes_case_with_config(capsys, tmp_path):
    out = tmp_path / "ph"
    code, stdout, err = run(
        capsys, "phantom", "--out", str(out), "--config", "configs/phantom.yaml",
        "--config", "configs/phantom_small.yaml", "seed=3", "-q",
    )
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["phantom.json", "phantom.png", "phantom_config.yaml", "phantom_ct.nii.gz", "phantom_labels.nii.gz"]
    cfg = (out / "phantom_config.yaml").read_text()
    assert "seed: 3" in cfg and "- 64" in cfg
    record = Record.read(out / "phantom.json")
    assert record.synthetic is True and record.seed == 3 and record.generator == "synthgen.phantom"
    assert record.parameters["shape"] == [64, 64, 48] and "sampled" in record.details
    assert record.outputs == ("phantom_ct.nii.gz", "phantom_labels.nii.gz")
    ct, lab = io.read_pair(out / "phantom_ct.nii.gz", out / "phantom_labels.nii.gz")
    assert ct.shape == (64, 64, 48) and ct.synthetic and lab.synthetic
    # Same command again refuses to clobber and leaves the files as they were; configs are only read.
    configs = {p: digest(Path(p)) for p in ("configs/phantom.yaml", "configs/phantom_small.yaml")}
    before = digest(out)
    assert main(["phantom", "--out", str(out), "--config", "configs/phantom_small.yaml", "-q"]) == 2
    assert digest(out) == before
    assert {p: digest(Path(p)) for p in configs} == configs

"""Nothing written where it was not asked, nothing lost: names from data, temp files, records, --overwrite."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from synthgen import io
from synthgen.cli import main
from synthgen.errors import InputError
from synthgen.files.atomic import TMP_SUFFIX, atomic_path, remove_stale_temps, write_text
from synthgen.files.safepath import check_parent, inside, safe_name
from tests.conftest import AFFINES, ramp_volume

IMAGE_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".png", ".npy", ".npz")


def _tree(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _cli(capsys, *argv):
    code = main([*map(str, argv), "-q"])
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "", ".hidden", "liver tumor", "x\\y", "a..b", "x" * 200,
                                  "/abs", "tab\tname", "nul\0"])
def test_safe_name_refuses_what_is_not_one_path_component(name):
    with pytest.raises(InputError, match="cannot be used in a file name"):
        safe_name(name, what="class name")


@pytest.mark.parametrize("name", ["PA", "liver_tumor", "LAO30_CAU10", "case-01", "v1.2", "0007"])
def test_safe_name_keeps_ordinary_names(name):
    assert safe_name(name) == name


def test_inside_refuses_escapes_and_symlinked_folders(tmp_path):
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", root / "imagesTr")
    assert inside(root / "real" / "a.nii.gz", root) == root / "real" / "a.nii.gz"
    with pytest.raises(InputError, match="outside the output folder"):
        inside(root / ".." / "x.nii.gz", root)
    with pytest.raises(InputError, match="symbolic link"):
        inside(root / "imagesTr" / "a.nii.gz", root)


def test_parent_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        check_parent(tmp_path / "afile" / "sub" / "x.nii.gz")
    with pytest.raises(InputError, match="is a file, not a folder"):
        write_text(tmp_path / "afile" / "x.json", "{}")


def test_temp_names_never_end_in_an_image_extension_and_vanish_on_error(tmp_path):
    target = tmp_path / "labelsTr" / "case.nii.gz"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(TMP_SUFFIX)
        assert not tmp.name.lower().endswith(IMAGE_EXTENSIONS)
        raise RuntimeError("killed")
    assert list(target.parent.iterdir()) == []
    # every writer still produces the right format through the extension-less temporary name
    vol = ramp_volume(AFFINES["lps"], shape=(5, 4, 3))
    for name in ("a.nii.gz", "b.nii", "c.nrrd", "d.mha", "e.mhd"):
        io.write(vol, tmp_path / "w" / name)
        np.testing.assert_array_equal(io.read(tmp_path / "w" / name).numpy(), vol.numpy())
    assert not [p for p in (tmp_path / "w").iterdir() if p.name.startswith(".")]


def test_stale_temps_of_a_killed_run_are_removed(tmp_path):
    d = tmp_path / "imagesTr"
    d.mkdir()
    (d / "keep_0000.nii.gz").write_bytes(b"real")
    (d / f".synth_x_0000.nii.gz.abc123{TMP_SUFFIX}").write_bytes(b"half")
    (d / f".synth_x.nii.gz.def{TMP_SUFFIX}").mkdir()
    removed = remove_stale_temps(d)
    assert len(removed) == 2 and sorted(p.name for p in d.iterdir()) == ["keep_0000.nii.gz"]


def test_generate_stem_and_phantom_name_cannot_leave_the_output_folder(capsys, tmp_path):
    out = tmp_path / "out"
    before = _tree(tmp_path)
    code, err = _cli(capsys, "generate", "chest CT", "--stem", "../../X", "--out", out)
    assert code == 2 and "--stem '../../X' cannot be used in a file name" in err and len(err.splitlines()) == 1
    code, err = _cli(capsys, "phantom", "--out", out, "--name", "../../X")
    assert code == 2 and "--name '../../X' cannot be used in a file name" in err
    assert _tree(tmp_path) == before


def test_drr_geometry_name_cannot_leave_the_output_folder(capsys, tmp_path, small_phantom):
    from synthgen.drr.geometry import named_view

    ct = small_phantom[0]
    ct_path = io.write(ct, tmp_path / "ct.nii.gz")
    geo = named_view("PA", ct, size=(16, 16))
    geo.to_json(tmp_path / "g.json")
    doc = json.loads((tmp_path / "g.json").read_text())
    doc["name"] = "../../escaped"
    (tmp_path / "g.json").write_text(json.dumps(doc))
    out = tmp_path / "a" / "b" / "out"
    before = _tree(tmp_path)
    code, err = _cli(capsys, "drr", ct_path, "--geometry", tmp_path / "g.json", "--out", out)
    assert code == 2 and "view name '../../escaped' cannot be used in a file name" in err
    assert _tree(tmp_path) == before


def test_recipe_step_names_are_checked(tmp_path):
    from synthgen.recipes import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nsteps:\n  - task: phantom\n    name: ../../x\n")
    with pytest.raises(InputError, match="step name '../../x' cannot be used in a file name"):
        load_recipe(recipe)


def test_convert_overwrite_replaces_only_its_own_files(capsys, tmp_path):
    src = tmp_path / "ct.nii.gz"
    io.write(ramp_volume(AFFINES["lps"], shape=(6, 5, 4)), src)
    series = tmp_path / "series"
    assert _cli(capsys, "convert", src, series)[0] == 0
    (series / "mine.txt").write_text("user notes")
    (series / "sub").mkdir()
    (series / "sub" / "other.nii.gz").write_bytes(b"user data")
    code, err = _cli(capsys, "convert", src, series)
    assert code == 2 and "already exists" in err
    assert _cli(capsys, "convert", src, series, "--overwrite")[0] == 0
    assert (series / "mine.txt").read_text() == "user notes"
    assert (series / "sub" / "other.nii.gz").read_bytes() == b"user data"
    assert len(list(series.glob("IM*.dcm"))) == 4


def test_two_outputs_of_one_stem_get_two_records(capsys, tmp_path):
    src = tmp_path / "ct.nii.gz"
    io.write(ramp_volume(AFFINES["lps"], shape=(6, 5, 4)), src)
    for out in ("x.nrrd", "x.mha"):
        code, err = _cli(capsys, "convert", src, tmp_path / "d" / out)
        assert code == 0, err
        record = json.loads((tmp_path / "d" / f"{out}.json").read_text())
        assert record["outputs"] == [out]


def test_two_phantom_names_share_a_folder(capsys, tmp_path):
    for name in ("a", "b"):
        code, err = _cli(capsys, "phantom", "--out", tmp_path, "--name", name, "shape=[24,24,20]", "spacing=[12,12,14]")
        assert code == 0, err
        assert (tmp_path / f"{name}_config.yaml").is_file() and (tmp_path / f"{name}.json").is_file()


@pytest.mark.parametrize("command", ["convert", "drr"])
def test_output_under_a_file_is_one_line(capsys, tmp_path, small_phantom, command):
    ct_path = io.write(small_phantom[0], tmp_path / "ct.nii.gz")
    (tmp_path / "afile").write_text("not a folder")
    if command == "convert":
        code, err = _cli(capsys, "convert", ct_path, tmp_path / "afile" / "x.nii.gz")
    else:
        code, err = _cli(capsys, "drr", ct_path, "--size", "16", "--out", tmp_path / "afile" / "d")
    assert code == 2 and len(err.splitlines()) == 1 and "is a file, not a folder" in err, err
    assert (tmp_path / "afile").read_text() == "not a folder"


@pytest.mark.parametrize("override, message", [("steps=0", "steps must be a positive integer, got 0"),
                                               ("seeds=-1", "seeds must be a positive integer, got -1"),
                                               ("lr=nan", "lr must be a finite number > 0"),
                                               ("foreground_p=2", "foreground_p must be in")])
def test_evaluate_config_values_are_checked(override, message):
    from synthgen.config import load_config
    from synthgen.expand.evaluate import EvalConfig

    with pytest.raises(InputError, match=message):
        load_config(EvalConfig, overrides=[override])


@pytest.mark.parametrize("text", ["{junk", "[1, 2]", "\xff\xfe"])
def test_a_junk_pipeline_folder_is_one_line(capsys, tmp_path, text):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "pipeline.json").write_bytes(text.encode("latin-1"))
    code, err = _cli(capsys, "generate", "chest CT", "--weights", weights, "--out", tmp_path / "o")
    assert code == 2 and len(err.splitlines()) == 1 and "pipeline.json" in err, err


def test_zero_spacing_without_sform_is_refused_not_made_1_mm(capsys, tmp_path):
    import struct

    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((6, 6, 6))
    hdr.set_data_dtype(np.int16)
    hdr["vox_offset"] = 352
    block = bytearray(hdr.binaryblock)
    block[76:108] = struct.pack("<8f", 1, 1, 0, 0, 1, 1, 1, 1)  # as a forged or broken writer leaves it
    block[252:256] = struct.pack("<hh", 0, 0)  # no qform, no sform
    (tmp_path / "z.nii").write_bytes(bytes(block) + b"\0" * 4 + b"\0" * (6 * 6 * 6 * 2))
    code, err = _cli(capsys, "info", tmp_path / "z.nii")
    assert code == 2 and len(err.splitlines()) == 1 and "voxel spacing (1, 0, 0) mm" in err, err


def test_mhd_without_its_data_file_is_one_line(capsys, tmp_path):
    (tmp_path / "x.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_SHORT\n"
                                    "ElementDataFile = x.raw\n")
    code, err = _cli(capsys, "info", tmp_path / "x.mhd")
    assert code == 2 and len(err.splitlines()) == 1 and "x.raw (ElementDataFile) is missing" in err, err

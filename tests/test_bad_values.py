"""Bad values users give: each is refused with one line (``synthgen CMD: error: MSG``, exit 2)
before anything is read in bulk or written, never a traceback and never silently accepted.

Forged image headers, YAML errors and resolvers in configs, DRR / phantom / generation
options out of range or too large for memory, lesion specs, fidelity phases.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from synthgen import io
from synthgen.cli import main
from synthgen.errors import InputError


def fails(capsys, *argv) -> str:
    """Run the CLI; assert it refused with one ``synthgen CMD: error:`` line and exit 2; return that line."""
    code = main([str(a) for a in argv] + ["-q"])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith(f"synthgen {argv[0]}: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small phantom CT and its label map on disk."""
    from synthgen.data import phantom

    d = tmp_path_factory.mktemp("bad_values")
    ct, labels = phantom(shape=(40, 36, 32), spacing=(8.0, 8.0, 9.0), seed=0)
    io.write(ct, d / "ct.nii.gz")
    io.write(labels, d / "labels.nii.gz")
    return d / "ct.nii.gz", d / "labels.nii.gz"


# --------------------------------------------------------------------------- forged image headers
def forged_nifti(path, dim, *, body=64):
    """A .nii / .nii.gz whose header says ``dim`` (int16) over a ``body``-byte payload."""
    import gzip

    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape((2, 2, 2))
    hdr.set_data_offset(352)
    hdr.set_sform(np.eye(4), code=1)
    hdr["dim"] = [len(dim), *dim] + [1] * (7 - len(dim))
    data = hdr.binaryblock + b"\0" * 4 + b"\0" * body
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


@pytest.mark.parametrize("name", ["huge.nii", "huge.nii.gz"])
@pytest.mark.parametrize("command", ["info", "convert", "drr"])
def test_forged_huge_nifti_header_is_one_line(capsys, tmp_path, name, command):
    src = forged_nifti(tmp_path / name, (30000, 30000, 30000))
    argv = {"info": [command, src], "convert": [command, src, tmp_path / "out.nrrd"],
            "drr": [command, src, "--out", tmp_path / "drr"]}[command]
    line = fails(capsys, *argv)
    assert "header says 30000x30000x30000 int16 (50,291 GiB), more than this machine's" in line
    assert "GiB of memory" in line
    assert not (tmp_path / "out.nrrd").exists() and not (tmp_path / "drr").exists()


@pytest.mark.parametrize("dim", [(-5, 2, 2), (-1, -1, 8), (4, 0, 4)])
def test_forged_negative_or_zero_nifti_dims(capsys, tmp_path, dim):
    src = forged_nifti(tmp_path / "neg.nii", dim)
    line = fails(capsys, "info", src)
    assert "negative or zero dimension" in line and "x".join(map(str, dim)) in line


def test_uncompressed_nifti_shorter_than_its_header_says(capsys, tmp_path):
    src = forged_nifti(tmp_path / "short.nii", (200, 200, 200), body=16)
    line = fails(capsys, "info", src)
    assert "truncated or corrupt NIfTI file: header says 200x200x200 int16 (16000000 bytes" in line
    assert "file has only 368 bytes" in line


@pytest.mark.parametrize("name,header", [
    ("huge.nrrd", "NRRD0004\ntype: short\ndimension: 3\nsizes: 30000 30000 30000\nencoding: raw\nendian: little\n\n"),
    ("huge.mha", ("ObjectType = Image\nNDims = 3\nDimSize = 30000 30000 30000\nElementType = MET_SHORT\n"
                  "ElementDataFile = LOCAL\n")),
])
def test_forged_huge_itk_header_is_refused_before_reading(capsys, tmp_path, name, header):
    src = tmp_path / name
    src.write_bytes(header.encode() + b"\0" * 16)
    line = fails(capsys, "info", src)
    assert "header says 30000x30000x30000 int16 (50,291 GiB), more than this machine's" in line


def test_small_memory_machine_refuses_a_real_file_it_cannot_hold(capsys, tmp_path, files, monkeypatch):
    import synthgen.memory

    monkeypatch.setattr(synthgen.memory, "machine_memory_bytes", lambda: 1000)
    line = fails(capsys, "info", files[0])
    assert "header says 40x36x32 float32 (0.00017 GiB), more than this machine's 9.3e-07 GiB of memory" in line


# --------------------------------------------------------------------------- config files
@pytest.mark.parametrize("text,message", [
    ("seed: [1, 2\nviews: x\n", "invalid YAML at line 2, column 6: expected ',' or ']', but got ':'"),
    ("seed: 1\n  views: @x\n", "invalid YAML at line 2, column 8: mapping values are not allowed here"),
    ("seed: !!python/object:os.system x\n",
     "invalid YAML at line 1, column 7: could not determine a constructor for the tag"),
    ("seed: 1\nseed: 2\n", "invalid YAML at line 2, column 1: found duplicate key seed"),
    ("- 1\n- 2\n", "a config file must be a mapping of 'key: value' lines, got a list"),
    ("42\n", "a config file must be a mapping of 'key: value' lines, got a single value"),
])
@pytest.mark.parametrize("command", ["drr", "phantom"])
def test_config_yaml_errors_are_one_line_with_the_line_number(capsys, tmp_path, files, text, message, command):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    argv = ["drr", files[0]] if command == "drr" else ["phantom"]
    line = fails(capsys, *argv, "--out", tmp_path / "out", "--config", cfg)
    assert f"{cfg}: {message}" in line
    assert not (tmp_path / "out").exists()


def test_binary_config_file(capsys, tmp_path, files):
    line = fails(capsys, "phantom", "--out", tmp_path / "out", "--config", files[0])
    assert "not a YAML text file" in line


@pytest.mark.parametrize("value", ["${oc.env:HOME}", "${ oc.env : HOME }", "${oc.decode:'3'}", "${mine:3}",
                                   "${oc.env:HOME,1}", "${${oc.env:KEY}}"])
def test_config_files_and_overrides_cannot_run_resolvers(capsys, tmp_path, value, monkeypatch):
    monkeypatch.setenv("HOME", "7")  # would resolve to a valid seed: the refusal is not a type error
    cfg = tmp_path / "env.yaml"
    cfg.write_text(f'seed: "{value}"\n')
    line = fails(capsys, "phantom", "--out", tmp_path / "a", "--config", cfg, "shape=[16,16,16]")
    assert f"{cfg}: seed: " in line and "calls the resolver" in line and "not run resolvers" in line
    line = fails(capsys, "phantom", "--out", tmp_path / "b", f"seed={value}", "shape=[16,16,16]")
    assert "command-line overrides: " in line  # '${ oc.env : X }' parses as a mapping there: a type error
    assert "calls the resolver" in line or " " in value
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_plain_interpolation_of_other_keys_still_works(capsys, tmp_path):
    cfg = tmp_path / "ref.yaml"
    cfg.write_text("seed: 3\nnoise_hu: ${seed}\nshape: [16, 16, 16]\n")
    assert main(["phantom", "--out", str(tmp_path / "p"), "--config", str(cfg), "-q"]) == 0, capsys.readouterr().err
    saved = (tmp_path / "p" / "phantom_config.yaml").read_text()
    assert "noise_hu: 3.0" in saved and "${" not in saved


def test_load_config_refuses_resolvers_from_python(tmp_path):
    from synthgen.config import load_config
    from synthgen.data import PhantomConfig

    with pytest.raises(InputError, match="calls the resolver 'oc.env'"):
        load_config(PhantomConfig, overrides=["seed=${oc.env:HOME}"])


def test_lesion_spec_that_is_not_yaml_text(capsys, tmp_path, files):
    ct, labels = files
    line = fails(capsys, "lesion", "insert", ct, "--labels", labels, "--spec", ct, "--out", tmp_path / "o")
    assert f"{ct}: not a YAML text file" in line
    spec = tmp_path / "spec.yaml"
    spec.write_text("lesions:\n  - {type: cyst\n")
    line = fails(capsys, "lesion", "insert", ct, "--labels", labels, "--spec", spec, "--out", tmp_path / "o")
    assert f"{spec}: invalid YAML at line 3" in line


# --------------------------------------------------------------------------- drr
def test_drr_huge_size_refused_with_the_memory_it_needs(capsys, tmp_path, files):
    line = fails(capsys, "drr", files[0], "--size", "100000", "--out", tmp_path / "d")
    assert "size must be 1 or 2 ints (rows, cols) in 1..16384, got [100000]" in line
    assert "would need about 1,490 GiB of memory" in line
    assert not (tmp_path / "d").exists()


def huge_geometry(path, ct_path, size):
    from synthgen.drr.geometry import named_view

    ct = io.read(ct_path)
    proj = dataclasses.replace(named_view("LAT", ct, size=(8, 8)), size=size, name="BIG")
    return proj.to_json(path)


def test_drr_huge_geometry_refused_before_the_named_views_are_written(capsys, tmp_path, files):
    geo = huge_geometry(tmp_path / "big.json", files[0], (100000, 100000))
    out = tmp_path / "d"
    line = fails(capsys, "drr", files[0], "--view", "PA", "--size", "16", "--geometry", geo, "--out", out)
    assert f"{geo}: size 100000x100000 pixels; at most 16384 per side" in line and "1,490 GiB" in line
    assert not out.exists()


def test_drr_view_too_large_for_this_machine_writes_nothing(capsys, tmp_path, files, monkeypatch):
    import synthgen.memory

    monkeypatch.setattr(synthgen.memory, "machine_memory_bytes", lambda: 2**30)
    geo = huge_geometry(tmp_path / "mid.json", files[0], (4000, 4000))
    out = tmp_path / "d"
    line = fails(capsys, "drr", files[0], "--view", "PA", "--size", "16", "--geometry", geo, "--out", out)
    assert "view BIG: 4000x4000 detector pixels would need about 2.4 GiB to render" in line
    assert "more than this machine's 1.0 GiB of memory" in line
    assert not out.exists()


@pytest.mark.parametrize("args,message", [
    (["--scatter", "-1"], "scatter_to_primary must be a number in [0, 10], got -1.0"),
    (["--scatter", "nan"], "scatter_to_primary must be a number in [0, 10], got nan"),
    (["--kev", "1000"], "kev must be a number in [8, 200] keV"),
    (["--kev", "0"], "kev must be a number in [8, 200] keV"),
    (["--kvp", "10"], "kvp must be a number in [40, 150] kV, got 10.0"),
    (["--kvp", "inf"], "kvp must be a number in [40, 150] kV, got inf"),
    (["--dose", "inf"], "photons_per_pixel (dose) must be > 0"),
    (["--dose", "nan"], "photons_per_pixel (dose) must be > 0"),
    (["--sdd", "nan"], "sdd_mm must be a positive number of mm"),
    (["--sdd", "-5"], "sdd_mm must be a positive number of mm"),
    (["--spacing", "inf"], "spacing_mm must be 2 positive floats in mm"),
    (["--size", "0"], "size must be 1 or 2 ints (rows, cols) in 1..16384, got [0]"),
    (["--size", "4", "5", "6"], "size must be 1 or 2 ints (rows, cols)"),
    (["--seed", "-1"], "seed must be a non-negative integer, got -1"),
    (["sid_mm=2000"], "sid_mm must be a positive number of mm below sdd_mm (1020)"),
    (["physics.filtration_mm_al=-1"], "filtration_mm_al must be a number in [0, 50] mm of Al"),
    (["physics.bone_hu=nan"], "bone_hu must be a number in [100, 10000] HU"),
    (["physics.electronic_std_photons=-2"], "electronic_std_photons must be a number in [0, 1e+09]"),
    (["physics.display_high=0"], "display_high (line integral shown as white) must be a number in (0, 1000]"),
    (["physics.mask_threshold_mm=nan"], "mask_threshold_mm must be a number in [0, 10000] mm"),
])
def test_drr_numeric_options_out_of_range(capsys, tmp_path, files, args, message):
    line = fails(capsys, "drr", files[0], "--out", tmp_path / "d", *args)
    assert message in line
    assert not (tmp_path / "d").exists()


def test_drr_settings_validated_from_python():
    from synthgen.drr.job import DRRConfig
    from synthgen.drr.render import XRaySettings

    with pytest.raises(InputError, match=r"scatter_to_primary must be a number in \[0, 10\]"):
        XRaySettings(scatter_to_primary=-1)
    with pytest.raises(InputError, match="size must be 1 or 2 ints"):
        DRRConfig(size=[100000])
    cfg = DRRConfig()
    cfg.size = [0, 5]  # a mutable config is validated again where it is used
    from synthgen.drr.job import projections

    with pytest.raises(InputError, match="size must be 1 or 2 ints"):
        projections(cfg, None)


# --------------------------------------------------------------------------- phantom
@pytest.mark.parametrize("override,message", [
    ("shape=[4096,4096,4096]", "shape 4096x4096x4096 would need about 1,280 GiB to build, more than this machine's"),
    ("spacing=[0,3,3]", "spacing must be 3 positive floats in mm, got (0.0, 3.0, 3.0)"),
    ("spacing=[nan,3,3]", "spacing must be 3 positive floats in mm, got (nan, 3.0, 3.0)"),
    ("spacing=[-1,3,3]", "spacing must be 3 positive floats in mm"),
    ("spacing=[1e6,3,3]", "spacing must be 3 floats in 0.05-100 mm"),
    ("noise_hu=inf", "noise_hu must be a number >= 0 (HU standard deviation, at most 1000), got inf"),
])
def test_phantom_bad_values(capsys, tmp_path, override, message):
    line = fails(capsys, "phantom", "--out", tmp_path / "p", override)
    assert message in line
    assert not (tmp_path / "p").exists()


# --------------------------------------------------------------------------- generate
@pytest.fixture(scope="module")
def shipped_pipe():
    from synthgen.pipelines.latent_ct import TextToCTPipeline

    return TextToCTPipeline.from_pretrained(device="cpu")


@pytest.fixture
def fast_weights(monkeypatch, shipped_pipe):
    """The CLI's ``from_pretrained`` returns the shipped pipeline loaded once for this module."""
    from synthgen.pipelines.latent_ct import LatentCTPipeline

    monkeypatch.setattr(LatentCTPipeline, "from_pretrained",
                        classmethod(lambda cls, *a, **k: cls(**shipped_pipe.components, device="cpu")))
    return shipped_pipe


@pytest.mark.parametrize("args,message", [
    (["--spacing", "1e9"], "spacing must be in 0.1-20 mm, got 1e+09 mm"),
    (["--spacing", "nan"], "spacing must be 3 positive floats in mm, got nan"),
    (["--spacing", "0.5"], "spacing 0.50 x 0.50 x 0.50 mm is outside what these weights were trained on"),
    (["--guidance", "nan"], "guidance must be a finite number in [0, 30] (0: ignore the prompt, 1: no guidance), got nan"),
    (["--guidance", "-1"], "guidance must be a finite number in [0, 30]"),
    (["--guidance", "inf"], "guidance must be a finite number in [0, 30]"),
    (["--steps", "0"], "steps must be an integer in 1..1000, got 0"),
    (["--steps", "-1"], "steps must be an integer in 1..1000, got -1"),
    (["--size", "0", "0", "0"], "size must be 3 integers between 16 and 256 voxels, got (0, 0, 0)"),
    (["--size", "100000", "96", "96"], "size must be 3 integers between 16 and 256 voxels"),
    (["--seed", "-1"], "seed must be a non-negative integer, got -1"),
    (["--scheduler", "euler"], "unknown scheduler 'euler'"),
])
def test_generate_bad_values(capsys, tmp_path, fast_weights, args, message):
    line = fails(capsys, "generate", "chest CT", "--out", tmp_path / "g", *args)
    assert message in line
    assert not (tmp_path / "g").exists()


def test_pipeline_check_inputs_from_python(shipped_pipe, files):
    from synthgen.pipelines.latent_ct import MaskToCTPipeline

    labels = io.read(files[1], kind="label")
    mask_to_ct = MaskToCTPipeline(**shipped_pipe.components, device="cpu")
    with pytest.raises(InputError, match="guidance must be a finite number"):
        mask_to_ct(labels, None, guidance_scale=float("nan"))
    with pytest.raises(InputError, match="num_inference_steps must be an integer"):
        shipped_pipe("chest CT", num_inference_steps=2.5)
    with pytest.raises(InputError, match="unknown scheduler 'euler'"):
        mask_to_ct(labels, scheduler="euler")
    with pytest.raises(InputError, match="generator must be a torch.Generator or None, got int"):
        shipped_pipe("chest CT", generator=3)


# --------------------------------------------------------------------------- lesions
@pytest.mark.parametrize("args,message", [
    (["--location", "nan", "0", "0"], "location must be 'auto' or a world point [x, y, z] of finite mm"),
    (["--location", "inf", "0", "0"], "location must be 'auto' or a world point [x, y, z] of finite mm"),
    (["--seed", "-1"], "seed must be a non-negative integer, got -1"),
    (["--count", "1000000"], "count must be a positive integer (at most 100), got 1000000"),
    (["--count", "0"], "count must be a positive integer (at most 100), got 0"),
    (["--diameter", "nan"], "diameter_mm must be a size in mm (1-200)"),
    (["--margin", "nan"], "margin_mm must be a number in [0, 100]"),
    (["--necrosis", "0.9"], "necrosis must be a number in [0, 0.8]"),
    (["--mass-effect", "inf"], "mass_effect_mm must be a number in [0, 20]"),
])
def test_lesion_insert_bad_values(capsys, tmp_path, files, args, message):
    ct, labels = files
    line = fails(capsys, "lesion", "insert", ct, "--labels", labels, "--out", tmp_path / "o", *args)
    assert message in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("item,message", [
    ("{location: [.nan, 0, 0]}", "location must be 'auto' or a world point"),
    ("{count: true}", "count must be a positive integer (at most 100), got True"),
    ("{rim: 3}", "rim must be true, false or null"),
    ("{necrosis: true}", "necrosis must be a number in [0, 0.8], got True"),
])
def test_lesion_spec_file_bad_values(capsys, tmp_path, files, item, message):
    ct, labels = files
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"lesions:\n  - {item}\n")
    line = fails(capsys, "lesion", "insert", ct, "--labels", labels, "--spec", spec, "--out", tmp_path / "o")
    assert f"{spec}: lesion 1: {message}" in line


# --------------------------------------------------------------------------- fidelity check
@pytest.mark.parametrize("phase,hint", [("bogus", ""), ("arterail", "; did you mean 'arterial'?")])
def test_check_unknown_phase(capsys, tmp_path, files, fast_weights, phase, hint):
    line = fails(capsys, "check", *files, "--phase", phase, "--out", tmp_path / "c.json")
    assert f"unknown phase {phase!r}{hint}; valid: non_contrast, arterial, portal_venous, delayed" in line
    assert not (tmp_path / "c.json").exists()


def test_check_phase_auto_means_estimated(files):
    from synthgen.fidelity import check

    ct, labels = io.read(files[0]), io.read(files[1], kind="label")
    assert check(ct, labels, phase="auto")["phase"] == check(ct, labels)["phase"]
    with pytest.raises(InputError, match="unknown phase 'venous'"):
        check(ct, labels, phase="venous")


# --------------------------------------------------------------------------- output paths
@pytest.mark.parametrize("command", ["convert", "drr"])
def test_output_under_a_file(capsys, tmp_path, files, command):
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    argv = ["convert", files[0], afile / "x.nii.gz"] if command == "convert" else ["drr", files[0], "--out", afile / "d"]
    line = fails(capsys, *argv)
    assert f"{afile} is a file, not a folder" in line
    assert afile.read_text() == "x"


def test_lesion_spec_alias_bomb_and_recursive_alias(capsys, tmp_path, files):
    ct, labels = files
    rows = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    rows += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]" for i in range(8)]
    for name, text in (("bomb.yaml", "\n".join(rows) + "\nlesions: [*i]\n"), ("loop.yaml", "lesions: &l [*l]\n")):
        spec = tmp_path / name
        spec.write_text(text)
        line = fails(capsys, "lesion", "insert", ct, "--labels", labels, "--spec", spec, "--out", tmp_path / "o")
        assert f"{spec}: YAML aliases expand to more than 100000 values" in line

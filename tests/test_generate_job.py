"""The generate job (`synthgen.generate.job`): the one implementation behind `synthgen generate`
and the recipe's ``generate`` step, on the shipped weights at a tiny size."""

from __future__ import annotations

import dataclasses
import gzip
import re

import pytest

from synthgen import io
from synthgen.cli import main
from synthgen.config import load_config
from synthgen.errors import InputError
from synthgen.generate.job import GenerateConfig, run
from synthgen.io.record import InputRef, Record
from synthgen.pipelines.latent_ct import (
    DEFAULT_GUIDANCE,
    DEFAULT_SIZE,
    DEFAULT_SPACING_MM,
    DEFAULT_STEPS,
    TextToCTPipeline,
)
from synthgen.recipes import run_recipe

PROMPT = "chest CT, 3 cm tumour in the liver"
TINY = ["--size", "16", "16", "16", "--steps", "2"]


@pytest.fixture(scope="module")
def fast_weights():
    """The job's ``from_pretrained`` returns the shipped pipeline, loaded once for this module."""
    pipe = TextToCTPipeline.from_pretrained(device="cpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TextToCTPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: pipe))
        yield pipe


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv] + ["-q"])
    out, err = capsys.readouterr()
    return code, out, err


def test_config_defaults_are_the_pipeline_constants():
    cfg = GenerateConfig(prompt=PROMPT)
    assert tuple(cfg.size) == tuple(DEFAULT_SIZE) and cfg.spacing == DEFAULT_SPACING_MM
    assert (cfg.steps, cfg.guidance, cfg.scheduler) == (DEFAULT_STEPS, DEFAULT_GUIDANCE, None)  # None: the weights'
    shipped = load_config(GenerateConfig, paths=["configs/generate.yaml"])
    assert (shipped.stem, shipped.check, shipped.prompt) == ("generated", True, PROMPT)
    with pytest.raises(InputError, match="missing mandatory value: prompt"):
        load_config(GenerateConfig)


def test_cli_help_shows_the_config_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"denoising steps (default {DEFAULT_STEPS})" in text
    assert f"voxels of the generated volume (default {' '.join(map(str, DEFAULT_SIZE))})" in text
    assert "(default nifti)" in text and "--check run the fidelity check on the result --no-texture" in text


def test_cli_and_recipe_write_the_same_ct(capsys, tmp_path, fast_weights):
    code, out, err = cli(capsys, "generate", PROMPT, *TINY, "--seed", "5", "--out", tmp_path / "cli")
    assert code == 0, err
    assert out.splitlines()[0].startswith("generated 16x16x16 at 4 x 4 x 4 mm in ")
    assert "(2 ddim steps, seed 5)" in out.splitlines()[0]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: g\nsteps:\n  - {task: generate, config: [configs/generate.yaml],"
                      " overrides: ['size=[16,16,16]', steps=2, seed=5, check=false]}\n")
    paths = run_recipe(recipe, tmp_path / "recipe", progress=False)["generate"]
    assert paths["ct"] == tmp_path / "recipe" / "generate" / "generated_ct.nii.gz"
    cli_ct = tmp_path / "cli" / "synth_ct.nii.gz"
    assert gzip.decompress(cli_ct.read_bytes()) == gzip.decompress(paths["ct"].read_bytes())
    a, b = Record.read(tmp_path / "cli" / "synth.json"), Record.read(paths["record"])
    assert a.parameters == b.parameters and a.seed == b.seed == 5 and a.inputs == b.inputs
    assert a.outputs == ("synth_ct.nii.gz", "synth_labels.nii.gz")
    saved = load_config(GenerateConfig, paths=[tmp_path / "cli" / "synth_config.yaml"])
    assert saved == GenerateConfig(prompt=PROMPT, size=[16, 16, 16], steps=2, seed=5)


def test_bad_scheduler_through_the_cli_is_one_line(capsys, tmp_path, fast_weights):
    code, _, err = cli(capsys, "generate", "chest CT", "--scheduler", "bogus", "--out", tmp_path / "g")
    assert code == 2
    assert err.strip() == "synthgen generate: error: unknown scheduler 'bogus'; choose one of ddim, dpm"
    assert not (tmp_path / "g").exists()


def test_labels_given_decide_the_grid_and_are_hashed(capsys, tmp_path, fast_weights):
    lab_path = run(GenerateConfig(prompt=PROMPT, size=[16, 16, 16], steps=1), tmp_path / "a")["labels"]
    code, _, err = cli(capsys, "generate", "chest CT", "--labels", lab_path, "--steps", "1", "--out", tmp_path / "b")
    assert code == 0, err
    assert io.read(tmp_path / "b" / "synth_labels.nii.gz").same_grid(io.read(lab_path))
    assert Record.read(tmp_path / "b" / "synth.json").inputs[-1] == InputRef.of(lab_path)
    code, _, err = cli(capsys, "generate", "chest CT", "--labels", lab_path, "--spacing", "5", "--steps", "1",
                       "--out", tmp_path / "c")
    assert code == 0, err
    assert io.read(tmp_path / "c" / "synth_labels.nii.gz").spacing == pytest.approx((5.0, 5.0, 5.0))


def test_dicom_case_with_seg_and_check(tmp_path, fast_weights):
    cfg = GenerateConfig(prompt=PROMPT, size=[16, 16, 16], steps=1, format="dicom", check=True)
    paths = run(cfg, tmp_path)
    assert set(paths) == {"ct", "labels", "seg", "record", "preview", "config", "check"}
    assert paths["ct"].is_dir() and paths["seg"].name == "synth_labels.dcm"
    ct, seg = io.read_pair(paths["ct"], paths["seg"])
    assert seg.same_grid(io.read(paths["labels"])) and ct.synthetic
    assert Record.read(paths["record"]).outputs == ("synth_ct", "synth_labels.nii.gz", "synth_labels.dcm")
    with pytest.raises(InputError, match="already exists"):
        run(cfg, tmp_path)
    again = run(cfg, tmp_path, overwrite=True)  # the series folder is replaced by its own writer
    assert again == paths


@pytest.mark.parametrize(("change", "message"), [
    ({"stem": "../x"}, "stem '../x' cannot be used in a file name"),
    ({"format": "png"}, "format must be one of nifti, dicom, got 'png'"),
    ({"seed": -1}, "seed must be a non-negative integer, got -1"),
    ({"seed": 2**64}, "seed must be at most 9223372036854775807"),
])
def test_bad_config_refused_before_any_work(monkeypatch, tmp_path, change, message):
    def loaded(cls, *a, **k):
        raise AssertionError("weights loaded before the config was checked")

    monkeypatch.setattr(TextToCTPipeline, "from_pretrained", classmethod(loaded))
    with pytest.raises(InputError, match=re.escape(message)):
        run(dataclasses.replace(GenerateConfig(prompt=PROMPT), **change), tmp_path / "o")
    assert not (tmp_path / "o").exists()

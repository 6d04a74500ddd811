"""synthgen.pipelines + synthgen.library + synthgen.fidelity, on tiny freshly trained weights.

Tiny weights cannot make a realistic CT; these tests check the contracts: grid, HU range,
records, seeding, save/load, inpainting locality, errors. Image quality of the shipped
weights is checked by `test_shipped_weights_*` (slow) and reported in the README.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from synthgen.anatomy.ops import organ_mask
from synthgen.cli import main
from synthgen.config import load_config
from synthgen.errors import InputError
from synthgen.library import ENTRIES, label_map_for
from synthgen.pipelines.latent_ct import LesionInpaintPipeline, MaskToCTPipeline, TextToCTPipeline, tiled_decode
from synthgen.text.prompt import parse_prompt
from synthgen.train import TrainConfig, train

TINY = Path(__file__).parent / "tiny_train.yaml"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_run")
    cfg = load_config(TrainConfig, paths=[TINY])
    for stage in ("vae", "ldm", "controlnet", "segmenter"):
        train(stage, cfg, folder, progress=False)
    return folder


@pytest.fixture(scope="module")
def pipe(run):
    return TextToCTPipeline.from_pretrained(run)


@pytest.fixture(scope="module")
def mask_pipe(pipe):
    return MaskToCTPipeline(**pipe.components)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def small_labels():
    return label_map_for(parse_prompt("chest CT"), size=(32, 32, 32), spacing=5.0, seed=0).labels


def test_label_map_from_prompt_has_requested_grid_and_lesion():
    built = label_map_for(parse_prompt("chest CT, 3 cm tumour in the liver"), size=(96, 80, 64), spacing=4.0, seed=1)
    lab = built.labels
    assert lab.shape == (96, 80, 64) and np.allclose(lab.spacing, 4.0)
    assert lab.synthetic
    tumour = organ_mask(lab, "liver_tumor")
    assert tumour.any()
    d = (6 * tumour.sum() * 64 / np.pi) ** (1 / 3)
    assert d == pytest.approx(30, rel=0.2)
    assert organ_mask(lab, "lung").any() and organ_mask(lab, "body").any()
    (rec,) = built.lesions
    assert rec["type"] == "tumor" and rec["organ"] == "liver"


def test_label_map_errors():
    with pytest.raises(InputError, match="covers the neck"):
        label_map_for(parse_prompt("neck CT"), size=(64, 64, 64), spacing=4.0)
    with pytest.raises(InputError, match="covers the head and chest together"):
        label_map_for(parse_prompt("CT of the head and chest"), size=(64, 64, 64), spacing=4.0)
    with pytest.raises(InputError, match="size must be 3 integers"):
        label_map_for(parse_prompt("chest CT"), size=(8, 64, 64), spacing=4.0)


def test_mask_to_ct_output_contract(mask_pipe, small_labels):
    res = mask_pipe(small_labels, "chest CT", num_inference_steps=3, generator=_gen(5))
    ct = res.ct.numpy()
    assert res.ct.shape == small_labels.shape and res.ct.same_grid(small_labels)
    assert ct.dtype == np.int16 and ct.min() >= -1024 and ct.max() <= 3071
    assert res.ct.synthetic and res.labels.synthetic
    rec = res.record
    assert rec.seed == 5 and rec.parameters["steps"] == 3 and rec.synthetic is True
    assert {i.name for i in rec.inputs} == {*(f"{c}/model.safetensors" for c in
                                              ("vae", "unet", "text_encoder", "controlnet", "segmenter")),
                                            "prior.json"}
    again = mask_pipe(small_labels, "chest CT", num_inference_steps=3, generator=_gen(5))
    assert np.array_equal(again.ct.numpy(), ct)  # seeded
    other = mask_pipe(small_labels, "chest CT", num_inference_steps=3, generator=_gen(6))
    assert not np.array_equal(other.ct.numpy(), ct)


def test_text_to_ct_with_dpm_and_odd_size(pipe):
    res = pipe("abdomen CT, 2 cm cyst in the liver", size=(40, 36, 28), spacing=5.0, num_inference_steps=2,
               scheduler="dpm")
    assert res.ct.shape == (40, 36, 28)
    assert res.record.details["label_source"] in ENTRIES
    assert res.record.details["lesions"][0]["type"] == "cyst"


def test_save_pretrained_round_trip(mask_pipe, small_labels, tmp_path):
    out = mask_pipe.save_pretrained(tmp_path / "exported", half=True)
    assert (out / "pipeline.json").exists() and (out / "training_thumbnails.safetensors").exists()
    again = MaskToCTPipeline.from_pretrained(out)
    a = mask_pipe(small_labels, num_inference_steps=2, generator=_gen(1)).ct.numpy().astype(float)
    b = again(small_labels, num_inference_steps=2, generator=_gen(1)).ct.numpy().astype(float)
    assert np.abs(a - b).mean() < 5.0  # float16 storage: within a few HU on average
    with pytest.raises(Exception, match="not empty"):
        mask_pipe.save_pretrained(tmp_path / "exported")


def test_pipeline_errors(pipe, mask_pipe, small_labels, tmp_path):
    with pytest.raises(InputError, match="weights folder not found"):
        MaskToCTPipeline.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a synthgen pipeline folder"):
        MaskToCTPipeline.from_pretrained(tmp_path / "empty")
    with pytest.raises(InputError, match="outside what these weights were trained on"):
        mask_pipe(small_labels.resample(1.0), num_inference_steps=1)
    with pytest.raises(InputError, match="unknown scheduler"):
        mask_pipe(small_labels, num_inference_steps=1, scheduler="euler")
    res = pipe("chest CT, 3 cm tumour in the liver", labels=small_labels, num_inference_steps=1)
    assert any("has no liver_tumor" in w for w in res.record.details["warnings"])  # the map decides, and says so


def test_tiled_decode_matches_whole(pipe):
    z = torch.randn(1, pipe.settings.vae.latent_channels, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = pipe.vae.decode(z)
        assert torch.equal(tiled_decode(pipe.vae, z, tile=16), whole)  # one tile: the plain decode
        tiled = tiled_decode(pipe.vae, z, tile=8, overlap=0.5)
    assert tiled.shape == whole.shape and torch.isfinite(tiled).all()
    # blended tiles track the whole decode (tiny untrained decoders have wide receptive fields,
    # so this is loose; the benchmark reports the HU difference for the shipped weights)
    assert (tiled - whole).abs().mean() < 0.6 * whole.std()


def test_inpainting_changes_only_the_lesion_and_margin(run):
    from synthgen.data import example_ct
    from synthgen.lesions.insert import insert_lesions
    from synthgen.lesions.spec import LesionSpec

    ct, labels = example_ct()
    lo, hi = (100, 100, 40), (420, 400, 133)
    ct, labels = ct.crop_voxels(lo, hi), labels.crop_voxels(lo, hi)
    ins = insert_lesions(ct, labels, LesionSpec(type="tumor", organ="liver", diameter_mm=15, seed=0))
    inpaint = LesionInpaintPipeline.from_pretrained(run)
    res = inpaint(ct, ins.labels, "liver_tumor", num_inference_steps=2, margin_mm=2.0)
    before, after = ct.numpy(), res.ct.numpy()
    from scipy import ndimage

    lesion = ins.labels.numpy() == ins.labels.vocab.id("liver_tumor")
    near = ndimage.distance_transform_edt(~lesion, sampling=ct.spacing) <= 2.0
    assert np.array_equal(before[~near], after[~near])  # bit-identical outside lesion + margin
    assert not np.array_equal(before[lesion], after[lesion])
    assert 0 < res.record.details["changed_voxels"] <= int(near.sum())
    assert res.ct.synthetic


def test_generate_cli_writes_case_and_check(run, tmp_path, capsys):
    rc = main(["-q", "generate", "chest CT, 2 cm tumour in the liver", "--weights", str(run), "--size", "32", "32",
               "32", "--spacing", "5", "--steps", "2", "--out", str(tmp_path / "g"), "--check"])
    assert rc == 0
    out = capsys.readouterr().out
    for name in ("synth_ct.nii.gz", "synth_labels.nii.gz", "synth.json", "synth.png", "synth_check.json"):
        assert (tmp_path / "g" / name).exists(), name
    rec = json.loads((tmp_path / "g" / "synth.json").read_text())
    assert rec["synthetic"] is True and rec["parameters"]["prompt"].startswith("chest CT")
    assert "mask adherence" in out and "organ Dice" in out
    rc = main(["-q", "generate", "chest CT", "--weights", str(run), "--size", "32", "32", "32", "--spacing", "5",
               "--steps", "1", "--out", str(tmp_path / "g")])
    assert rc == 2 and "exists" in capsys.readouterr().err  # nothing overwritten without --overwrite
    rc = main(["-q", "generate", "chest CT", "--weights", str(run), "--size", "32", "32", "32", "--spacing", "5",
               "--steps", "1", "--out", str(tmp_path / "d"), "--format", "dicom"])
    assert rc == 0 and (tmp_path / "d" / "synth_ct").is_dir() and (tmp_path / "d" / "synth_labels.nii.gz").exists()


def test_generate_recipe_step(run, tmp_path):
    from synthgen.recipes import run_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
name: gen
steps:
  - task: generate
    config: [{Path(__file__).parents[1] / 'configs' / 'generate.yaml'}]
    overrides: [weights={run}, "size=[32,32,32]", spacing=5.0, steps=2]
""")
    res = run_recipe(recipe, tmp_path / "out", progress=False)
    paths = res["generate"]
    assert {"ct", "labels", "record", "preview", "config", "check"} <= set(paths)
    check = json.loads(paths["check"].read_text())
    assert set(check["adherence"]) == {"body", "lung", "bone"}

from __future__ import annotations

import json

import pytest

from synthgen import io
from synthgen.cli import main
from synthgen.errors import InputError
from synthgen.expand.evaluation import ARMS
from synthgen.io.record import Record
from synthgen.recipes import known_tasks, load_recipe, run_recipe


def test_quickstart_recipe_loads():
    recipe = load_recipe("pipelines/quickstart.yaml")
    assert [s.task for s in recipe.steps] == ["describe_example", "drr", "lesion", "phantom", "generate"]


def test_run_phantom_recipe_writes_every_step(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: two\nsteps:\n"
        "  - {task: phantom, name: a, config: [configs/phantom_small.yaml], overrides: [seed=1]}\n"
        "  - {task: phantom, name: b, config: [configs/phantom_small.yaml], overrides: [seed=2]}\n"
    )
    out = tmp_path / "out"
    results = run_recipe(recipe, out, progress=False)
    assert set(results) == {"a", "b"}
    a = io.read(results["a"]["ct"]).numpy()
    b = io.read(results["b"]["ct"]).numpy()
    assert a.shape == (64, 64, 48) and (a != b).any()
    run = Record.read(out / "run.json")
    assert run.details["steps"]["a"]["ct"] == "a/phantom_ct.nii.gz"
    assert run.parameters["configs"] == {"a": ["configs/phantom_small.yaml"], "b": ["configs/phantom_small.yaml"]}
    assert [i.name for i in run.inputs] == ["r.yaml", "phantom_small.yaml"]  # the config used twice, hashed once
    assert Record.read(results["b"]["record"]).seed == 2
    assert (out / "recipe.yaml").is_file()
    # A second run refuses to clobber the first.
    with pytest.raises(InputError, match="already exists"):
        run_recipe(recipe, out, progress=False)


def test_quickstart_recipe_end_to_end(tmp_path, example, capsys):
    assert main(["run", "pipelines/quickstart.yaml", "--out", str(tmp_path / "demo"), "-q"]) == 0
    info = json.loads((tmp_path / "demo/describe_example/example_info.json").read_text())
    assert info["ct"]["shape"] == [512, 512, 133]
    names = {s["name"] for s in info["labels"]["structures"]}
    assert {"liver", "aorta", "heart"} <= names
    assert (tmp_path / "demo/phantom/phantom.png").stat().st_size > 10_000
    lesions = Record.read(tmp_path / "demo/lesion/lesions.json").details["lesions"]
    assert len(lesions) == 8 and (tmp_path / "demo/lesion/lesions_preview.png").is_file()
    for view in ("PA", "LAT"):
        rec = Record.read(tmp_path / f"demo/drr/{view}.json").details
        assert rec["physics"]["photons_per_pixel"] == 20000.0 and "heart" in rec["structures"]
    # text -> CT on the shipped weights, with its fidelity check
    gen = Record.read(tmp_path / "demo/generate/generated.json")
    assert gen.parameters["prompt"] == "chest CT, 3 cm tumour in the liver" and gen.synthetic is True
    check = json.loads((tmp_path / "demo/generate/generated_check.json").read_text())
    assert check["adherence"]["lung"]["dice"] >= 0.85 and check["adherence"]["body"]["dice"] >= 0.85
    assert check["lesions"][0]["label"] == "liver_tumor"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nsteps: []\n", "recipe has no steps"),
        ("name: x\nsteps:\n  - {task: teleport}\n", "step 1 has unknown task 'teleport'; known: demo_dataset, describe_example"),
        ("name: x\nsteps:\n  - {task: phantom}\n  - {task: phantom}\n", "step names must be unique"),
        ("name: x\nsteps:\n  - {task: phantom, colour: red}\n", "Key 'colour' not in 'StepConfig'"),
    ],
)
def test_bad_recipes(tmp_path, text, message):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(InputError, match=message):
        load_recipe(p)


def test_known_tasks_listed():
    assert {"phantom", "describe_example"} <= set(known_tasks())


@pytest.mark.parametrize("name", ["demo", "rare_lesion_boost", "xray_from_ct"])
def test_shipped_recipes_load(name):
    recipe = load_recipe(f"pipelines/{name}.yaml")
    assert recipe.steps and all(s.task in known_tasks() for s in recipe.steps)


def test_expander_recipe_chains_steps_by_reference(tmp_path):
    """demo dataset -> expand (a copy; the input untouched) -> X-ray dataset -> evaluate + report, tiny."""
    from synthgen.io.record import sha256_file

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: tiny\nsteps:\n"
        "  - {task: demo_dataset, config: [configs/demo_dataset.yaml], overrides: [cases=8, tumour_cases=3,"
        " 'size=[24,24,20]', spacing=6.0, 'cyst_mm=[14,24]']}\n"
        "  - {task: expand, inputs: ['@demo_dataset/dataset'], config: [configs/expand.yaml]}\n"
        "  - {task: xray_dataset, inputs: ['@expand/dataset'], config: [configs/xray_dataset.yaml],"
        " overrides: ['size=[64,64]', 'views=[PA]']}\n"
        "  - {task: evaluate, inputs: ['@demo_dataset/dataset', '@expand/dataset', '@xray_dataset/preview'],"
        " config: [configs/evaluate.yaml], overrides: [seeds=1, steps=2, val_every=1, batch=1,"
        " 'patch=[16,16,16]', 'channels=[4,8]']}\n"
    )
    out = tmp_path / "out"
    res = run_recipe(recipe, out, progress=False)
    src = res["demo_dataset"]["dataset"]
    before = {p: sha256_file(p) for p in src.rglob("*") if p.is_file()}
    assert res["expand"]["dataset"] == out / "expand" / src.name
    assert not list(src.glob("*/synth_*")) and (res["expand"]["dataset"] / "synthetic_manifest.jsonl").is_file()
    assert {p: sha256_file(p) for p in src.rglob("*") if p.is_file()} == before
    doc = json.loads(res["evaluate"]["evaluation"].read_text())
    assert doc["split"]["synthetic"] > 0 and set(doc["arms"]) == set(ARMS)
    html = res["evaluate"]["report"].read_text()
    assert "preview.png" in html and "liver_tumor" in html
    with pytest.raises(InputError, match="names no earlier step"):
        bad = tmp_path / "bad.yaml"
        bad.write_text("name: b\nsteps:\n  - {task: expand, inputs: ['@nowhere/dataset']}\n")
        run_recipe(bad, tmp_path / "o2", progress=False)


@pytest.mark.slow
def test_demo_recipe_end_to_end(tmp_path, example):
    """The README's main command (about 10 minutes on 2 cores): every step, and a report whose
    evaluation covers three seeds of every arm on the demo task."""
    assert main(["run", "pipelines/demo.yaml", "--out", str(tmp_path / "demo"), "-q"]) == 0
    doc = json.loads((tmp_path / "demo/evaluate/evaluation.json").read_text())
    assert doc["seeds"] == [0, 1, 2] and set(doc["arms"]) == set(ARMS)
    assert doc["split"]["synthetic"] == 24 and doc["split"]["synthetic_dropped"] == 0
    html = (tmp_path / "demo/evaluate/report.html").read_text()
    for name in ("PA_overlay.png", "LAT_overlay.png", "preview.png", "liver_tumor"):
        assert name in html

"""One provenance schema for every writer: each command's JSON records read back with `Record.read`."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthgen import io
from synthgen._version import __version__
from synthgen.cli import main
from synthgen.errors import InputError
from synthgen.io.record import InputRef, Record
from tests.conftest import AFFINES, ramp_volume

#: Result documents that are not provenance records (the fidelity check's verdict).
NOT_RECORDS = ("_check.json",)


def records(folder: Path) -> dict[str, Record]:
    """Every provenance record under ``folder`` by its path relative to it, read with the one schema."""
    return {str(p.relative_to(folder)): Record.read(p) for p in sorted(folder.rglob("*.json"))
            if not p.name.endswith(NOT_RECORDS)}


def ok(*argv) -> None:
    assert main([str(a) for a in argv] + ["-q"]) == 0


def assert_complete(rec: Record, *, generator: str, synthetic: bool = True) -> None:
    assert rec.generator == generator and rec.synthetic is synthetic
    assert rec.synthgen_version == __version__ and rec.created_utc[:2] == "20"
    assert isinstance(rec.parameters, dict) and rec.parameters and rec.outputs
    assert all(len(i.sha256) == 64 for i in rec.inputs)


@pytest.fixture(scope="module")
def phantom_case(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    ok("phantom", "--out", out, "shape=[40,36,32]", "spacing=[8,8,9]", "seed=2")
    return out


def test_phantom_record(phantom_case):
    (rec,) = records(phantom_case).values()
    assert_complete(rec, generator="synthgen.phantom")
    assert rec.seed == 2 and rec.parameters["spacing"] == [8.0, 8.0, 9.0] and rec.inputs == ()


def test_convert_records_mark_real_scans_real(tmp_path, phantom_case):
    real = io.write(ramp_volume(AFFINES["lps"]), tmp_path / "real.nii.gz")
    ok("convert", real, tmp_path / "out" / "real.nrrd")
    ok("convert", phantom_case / "phantom_ct.nii.gz", tmp_path / "out" / "series")
    recs = records(tmp_path / "out")
    assert set(recs) == {"real.nrrd.json", "series.json"}
    assert_complete(recs["real.nrrd.json"], generator="synthgen.convert", synthetic=False)
    assert_complete(recs["series.json"], generator="synthgen.convert", synthetic=True)
    assert recs["real.nrrd.json"].inputs == (InputRef.of(real),) and recs["series.json"].outputs == ("series",)


def test_drr_and_lesion_records(tmp_path, phantom_case):
    ct, labels = phantom_case / "phantom_ct.nii.gz", phantom_case / "phantom_labels.nii.gz"
    ok("drr", ct, "--labels", labels, "--view", "PA", "--size", "24", "--seed", "4", "--out", tmp_path / "drr")
    ok("lesion", "insert", ct, "--labels", labels, "--diameter", "24", "--seed", "1", "--out", tmp_path / "les")
    (drr,) = records(tmp_path / "drr").values()
    assert_complete(drr, generator="synthgen.drr")
    assert drr.seed == 4 and drr.details["view"] == "PA" and "projection_matrix" in drr.details["geometry"]
    assert drr.inputs == (InputRef.of(ct), InputRef.of(labels))
    (les,) = records(tmp_path / "les").values()
    assert_complete(les, generator="synthgen.lesion.insert")
    assert les.seed == 1 and les.parameters["specs"][0]["diameter_mm"] == 24.0
    assert [x["label"] for x in les.details["lesions"]] == ["liver_tumor"]


def test_generate_and_recipe_records(tmp_path):
    ok("generate", "chest CT, 3 cm tumour in the liver", "--size", "16", "16", "16", "--steps", "1", "--check",
       "--out", tmp_path / "gen")
    (gen,) = records(tmp_path / "gen").values()
    assert_complete(gen, generator="synthgen.TextToCTPipeline")
    assert gen.seed == 0 and gen.parameters["prompt"].startswith("chest CT") and gen.inputs  # the weights by hash
    assert "seconds" in gen.details and (tmp_path / "gen" / "synth_check.json").is_file()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: tiny\nsteps:\n"
        "  - {task: phantom, overrides: ['shape=[40,36,32]', 'spacing=[8,8,9]']}\n"
        "  - {task: drr, inputs: ['@phantom/ct', '@phantom/labels'], overrides: ['views=[PA,LAT]', 'size=[24]']}\n"
        "  - {task: generate, config: [configs/generate.yaml], overrides: ['size=[16,16,16]', steps=1, check=false]}\n"
    )
    ok("run", recipe, "--out", tmp_path / "run")
    recs = records(tmp_path / "run")
    assert set(recs) == {"run.json", "phantom/phantom.json", "drr/PA.json", "drr/LAT.json",
                         "generate/generated.json"}
    assert_complete(recs["run.json"], generator="synthgen.run")
    assert recs["run.json"].inputs[0] == InputRef.of(recipe) and len(recs["run.json"].inputs) == 2
    assert recs["run.json"].details["steps"]["drr"]["LAT_record"] == "drr/LAT.json"
    assert recs["drr/LAT.json"].inputs == recs["drr/PA.json"].inputs == (
        InputRef.of(tmp_path / "run/phantom/phantom_ct.nii.gz"), InputRef.of(tmp_path / "run/phantom/phantom_labels.nii.gz"))
    for rec in recs.values():
        assert rec.synthetic is True


@pytest.mark.parametrize(("doc", "message"), [
    ("[]", "a provenance record must be a JSON object, got list"),
    ('{"generator": "x"}', "not a synthgen provenance record (missing synthetic, synthgen_version"),
    ("{", "not valid JSON"),
])
def test_a_record_of_another_schema_is_one_line(tmp_path, doc, message):
    (tmp_path / "r.json").write_text(doc)
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        Record.read(tmp_path / "r.json")

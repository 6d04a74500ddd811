"""`synthgen drr`: files written, their contents, the recorded geometry, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from synthgen import io
from synthgen.cli import main
from synthgen.drr.geometry import Projection, named_view
from synthgen.io.record import Record


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory):
    from synthgen.data import phantom

    d = tmp_path_factory.mktemp("ph")
    ct, labels = phantom(shape=(64, 56, 48), spacing=(6.0, 6.0, 7.0), seed=0)
    io.write(ct, d / "ct.nii.gz")
    io.write(labels, d / "labels.nii.gz")
    return d / "ct.nii.gz", d / "labels.nii.gz", ct


def test_drr_writes_every_output_per_view(capsys, tmp_path, phantom_files):
    ct_path, lab_path, ct = phantom_files
    before = (ct_path.read_bytes(), lab_path.read_bytes())
    out = tmp_path / "drr"
    code = main(["drr", str(ct_path), "--labels", str(lab_path), "--view", "PA", "--view", "LAT",
                 "--size", "48", "64", "--kev", "70", "--dose", "5000", "--seed", "7", "--out", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    for view in ("PA", "LAT"):
        png = Image.open(out / f"{view}.png")
        assert png.mode.startswith("I;16") and png.size == (64, 48)
        line = np.load(out / f"{view}_line_integral.npy")
        assert line.dtype == np.float32 and line.shape == (48, 64) and np.isfinite(line).all()
        labels = np.load(out / f"{view}_labels.npz")
        names = list(labels["names"])
        assert "liver" in names and labels["masks"].shape == (len(names), 48, 64)
        rec = Record.read(out / f"{view}.json")
        view_rec = rec.details
        proj = Projection.from_dict(view_rec["geometry"])
        np.testing.assert_allclose(np.array(view_rec["geometry"]["projection_matrix"]), proj.matrix(), rtol=1e-9)
        assert view_rec["physics"]["kev"] == 70.0 and view_rec["physics"]["photons_per_pixel"] == 5000.0
        assert view_rec["seed"] == 7 + ("PA", "LAT").index(view)  # view k: seed + k
        assert rec.synthetic is True and rec.generator == "synthgen.drr" and rec.seed == 7
        assert rec.parameters["views"] == ["PA", "LAT"] and rec.parameters["physics"]["kev"] == 70.0
        assert {i.name for i in rec.inputs} == {"ct.nii.gz", "labels.nii.gz"}
        assert set(rec.outputs) == {p.name for p in out.glob(f"{view}*") if p.name != f"{view}.json"}
    cfg = (out / "config.yaml").read_text()
    assert "kev: 70.0" in cfg and "- LAT" in cfg
    assert (ct_path.read_bytes(), lab_path.read_bytes()) == before
    # the liver (patient's right) is on the image's left in PA
    labels = np.load(out / "PA_labels.npz")
    liver = labels["masks"][list(labels["names"]).index("liver")]
    assert np.argwhere(liver)[:, 1].mean() < 32


def test_drr_from_explicit_geometry_file(capsys, tmp_path, phantom_files):
    ct_path, _, ct = phantom_files
    geo = named_view("PA", ct, size=(32, 40))
    geo = Projection.from_dict({**geo.to_dict(), "name": "mine"})
    geo.to_json(tmp_path / "geometry.json")
    code = main(["drr", str(ct_path), "--geometry", str(tmp_path / "geometry.json"), "--out", str(tmp_path / "o"), "-q"])
    assert code == 0, capsys.readouterr().err
    rec = Record.read(tmp_path / "o" / "mine.json")
    assert Projection.from_dict(rec.details["geometry"]) == geo
    assert rec.details["spectrum"]["kvp"] == 120.0 and rec.details["physics"]["kev"] is None
    assert [i.name for i in rec.inputs] == ["ct.nii.gz", "geometry.json"]  # the geometry file by hash too


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--view", "XYZ"], "unknown view"),
        (["--view", "PA", "--spacing", "0"], "spacing_mm must be 2 positive floats in mm"),
        (["--view", "PA", "--dose", "-5"], "photons_per_pixel (dose) must be > 0"),
        (["--view", "PA", "physics.colour=1"], "Key 'colour' not in"),
    ],
)
def test_drr_bad_requests_fail_with_one_line(capsys, tmp_path, phantom_files, extra, message):
    ct_path, _, _ = phantom_files
    code = main(["drr", str(ct_path), "--out", str(tmp_path / "o"), "-q", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]


def test_drr_geometry_facing_away_is_refused(capsys, tmp_path, phantom_files):
    ct_path, _, ct = phantom_files
    geo = named_view("PA", ct, size=(16, 16)).to_dict()
    geo["source_mm"], geo["detector_center_mm"] = [0.0, 1500.0, 0.0], [0.0, 2500.0, 0.0]
    geo.pop("projection_matrix")
    (tmp_path / "away.json").write_text(json.dumps(geo))
    code = main(["drr", str(ct_path), "--geometry", str(tmp_path / "away.json"), "--out", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "detector faces away from the volume" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())

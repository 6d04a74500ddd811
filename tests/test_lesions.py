"""Lesion insertion: inside the organ, right size, right HU, host-like noise, nothing else touched."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from scipy import ndimage

from synthgen import io
from synthgen.anatomy.ops import distance_to_surface_mm, organ_mask
from synthgen.errors import GridMismatchError, InputError
from synthgen.lesions.appearance import appearance
from synthgen.lesions.insert import insert_lesions
from synthgen.lesions.job import specs_yaml
from synthgen.lesions.spec import LesionSpec, load_specs
from synthgen.volume import Volume

CASES = [(organ, t) for organ in ("liver", "kidney", "spleen") for t in ("tumor", "cyst", "metastasis", "hemorrhage")] + [
    ("lung", "nodule_solid"), ("lung", "nodule_ground_glass"), ("lung", "metastasis")]


@pytest.fixture(scope="module")
def host():
    """A phantom at 2 mm: the fast host scan (portal-venous contrast)."""
    from synthgen.data import phantom

    return phantom(shape=(176, 128, 150), spacing=(2.0, 2.0, 2.0), seed=3)


def lesion_masks(result, label_id: int) -> np.ndarray:
    return result.labels.numpy() == label_id


def noise_std(hu: np.ndarray, region: np.ndarray) -> float:
    """Robust std of the noise from first differences along i inside ``region`` (smooth anatomy cancels)."""
    both = region[1:] & region[:-1]
    diff = (hu[1:].astype(np.float64) - hu[:-1])[both]
    return float(1.4826 * np.median(np.abs(diff - np.median(diff))) / np.sqrt(2))


def outside_boxes_identical(before: np.ndarray, after: np.ndarray, records) -> bool:
    keep = np.ones(before.shape, bool)
    for r in records:
        keep[tuple(slice(a, b) for a, b in zip(r.box_start, r.box_stop))] = False
    return bool(np.array_equal(before[keep], after[keep]))


def check_lesion(ct: Volume, labels: Volume, result, spec: LesionSpec, *, noise: bool = True) -> None:
    """Every property the issue asks of an insertion, for all lesions of ``result`` (one spec)."""
    from synthgen.anatomy.ops import bounding_box

    rec = result.lesions[0]
    full = lesion_masks(result, rec.label_id)
    box = tuple(slice(a, b) for a, b in zip(*bounding_box(full, margin_vox=12)))
    lesion, organ, hu = full[box], organ_mask(labels, spec.organ)[box], result.ct.numpy()[box]
    # inside the organ, with its margin (the crop reaches 12 voxels, > any margin here, past the lesions;
    # its faces count as outside, which can only make this check stricter)
    assert lesion.any() and organ[lesion].all()
    assert distance_to_surface_mm(organ, ct.spacing)[lesion].min() >= spec.margin_mm
    # size: sphere-equivalent diameter of each written lesion within 10% of the request
    parts, n = ndimage.label(lesion)
    assert n == spec.count
    for k in range(1, n + 1):
        d_eq = np.cbrt(6 * (parts == k).sum() * np.prod(ct.spacing) / np.pi)
        assert abs(d_eq - spec.diameter_mm) <= 0.1 * spec.diameter_mm
    # HU: the lesions' interior (more than 2.1 mm inside: past the soft edge and any 2 mm rim) in range
    look = appearance(spec.type, spec.family, result.phase)
    interior = distance_to_surface_mm(lesion, ct.spacing) > 2.1
    mean = float(hu[interior].mean())
    assert look.low_hu - 10 <= mean <= look.high_hu + 10, (mean, look)
    # noise: inside the lesions like in the organ around them (within 30%); needs enough voxels
    if noise and interior.sum() >= 150:
        ring = ndimage.binary_dilation(lesion, iterations=6) & ~ndimage.binary_dilation(lesion, iterations=2) & organ
        inside, around = noise_std(hu, interior), noise_std(hu, ring)
        assert abs(inside - around) <= 0.3 * around, (inside, around)
    # nothing outside the lesions' boxes changed
    assert outside_boxes_identical(ct.numpy(), result.ct.numpy(), result.lesions)
    assert outside_boxes_identical(labels.numpy(), result.labels.numpy(), result.lesions)


@pytest.mark.parametrize(("organ", "lesion_type"), CASES)
def test_every_organ_and_type_on_the_phantom(host, organ, lesion_type):
    ct, labels = host
    before = (ct.numpy().copy(), labels.numpy().copy())
    # sizes chosen so that every case has >= 150 interior voxels for the noise comparison
    diameter, count, margin = {"kidney": (16.0, 2, 1.5), "lung": (14.0, 3, 2.0)}.get(organ, (24.0, 1, 2.0))
    spec = LesionSpec(type=lesion_type, organ=organ, diameter_mm=diameter, count=count, seed=5, margin_mm=margin)
    result = insert_lesions(ct, labels, spec)
    assert result.phase == "portal_venous"
    # ground-glass texture is heterogeneous on purpose (60 HU std): its noise is not the host's alone
    check_lesion(ct, labels, result, spec, noise=lesion_type != "nodule_ground_glass")
    assert np.array_equal(ct.numpy(), before[0]) and np.array_equal(labels.numpy(), before[1])
    rec = result.lesions[0]
    assert rec.label == f"{organ}_{lesion_type}" and rec.phase == "portal_venous" and rec.seed == 5
    centre_vox = np.rint(ct.world_to_voxel(rec.center_mm)).astype(int)
    assert result.labels.numpy()[tuple(centre_vox)] == rec.label_id


@pytest.mark.parametrize(
    "spec",
    [
        LesionSpec(type="tumor", organ="pancreas", diameter_mm=12.0, margin_mm=1.0, seed=1),
        LesionSpec(type="cyst", organ="pancreas", diameter_mm=10.0, margin_mm=1.0, seed=2),
        LesionSpec(type="metastasis", organ="pancreas", diameter_mm=10.0, margin_mm=1.0, seed=3),
        LesionSpec(type="hemorrhage", organ="pancreas", diameter_mm=10.0, margin_mm=1.0, seed=4),
        LesionSpec(type="cyst", organ="liver", diameter_mm=20.0, seed=5),
        LesionSpec(type="tumor", organ="kidney_left", diameter_mm=14.0, margin_mm=1.5, seed=6),
        LesionSpec(type="nodule_solid", organ="lung", diameter_mm=12.0, seed=7),
    ],
    ids=lambda s: f"{s.organ}-{s.type}",
)
def test_example_ct(example, spec):
    """The real scan (arterial phase): pancreas for every type, and one case for the other organs."""
    ct, labels = example
    result = insert_lesions(ct, labels, spec)
    assert result.phase == "arterial"
    check_lesion(ct, labels, result, spec)


def test_same_seed_same_output_and_different_seed_differs(host):
    ct, labels = host
    spec = LesionSpec(type="tumor", organ="liver", diameter_mm=(12.0, 20.0), count=2, seed=11, mass_effect_mm=2.0)
    a, b = insert_lesions(ct, labels, spec), insert_lesions(ct, labels, spec)
    assert np.array_equal(a.ct.numpy(), b.ct.numpy()) and np.array_equal(a.labels.numpy(), b.labels.numpy())
    assert a.lesions == b.lesions
    c = insert_lesions(ct, labels, dataclasses.replace(spec, seed=12))
    assert not np.array_equal(a.ct.numpy(), c.ct.numpy())


def test_many_lesions_never_overlap(host):
    ct, labels = host
    result = insert_lesions(ct, labels, LesionSpec(type="metastasis", organ="liver", diameter_mm=14.0, count=5, seed=2))
    lesion = lesion_masks(result, result.lesions[0].label_id)
    parts, n = ndimage.label(lesion)
    assert n == 5  # five separate lesions, none merged into another
    voxel_ml = np.prod(ct.spacing) / 1000
    assert abs(lesion.sum() * voxel_ml - sum(r.volume_ml for r in result.lesions)) < 1e-6


def test_mass_effect_pushes_tissue_inside_its_box_only(host):
    ct, labels = host
    spec = LesionSpec(type="tumor", organ="liver", diameter_mm=24.0, seed=4, mass_effect_mm=4.0)
    plain = insert_lesions(ct, labels, dataclasses.replace(spec, mass_effect_mm=0.0))
    pushed = insert_lesions(ct, labels, spec)
    assert outside_boxes_identical(ct.numpy(), pushed.ct.numpy(), pushed.lesions)
    rec = pushed.lesions[0]
    box = tuple(slice(a, b) for a, b in zip(rec.box_start, rec.box_stop))
    lesion = lesion_masks(pushed, rec.label_id)[box]
    around = ndimage.binary_dilation(lesion, iterations=4) & ~lesion
    # tissue right around the lesion moved: labels there differ from the unpushed insertion
    assert (pushed.labels.numpy()[box][around] != plain.labels.numpy()[box][around]).any() or (
        pushed.ct.numpy()[box][around] != plain.ct.numpy()[box][around]).any()
    # the liver keeps about its volume (displacement, not deletion)
    liver_before = (plain.labels.numpy() == 5).sum()
    liver_after = (pushed.labels.numpy() == 5).sum()
    assert abs(liver_after - liver_before) < 0.05 * liver_before


@pytest.mark.parametrize(
    ("spec_kw", "message"),
    [
        ({"type": "tumour"}, "unknown lesion type 'tumour'; did you mean 'tumor'?"),
        ({"organ": "livr"}, "unknown lesion organ 'livr'; did you mean 'liver'?"),
        ({"phase": "venous"}, "unknown phase 'venous'"),
        ({"type": "nodule_solid", "organ": "liver"}, "nodule_solid lesions go into the lung"),
        ({"diameter_mm": 0.0}, "diameter_mm must be a size in mm"),
        ({"diameter_mm": (30.0, 10.0)}, "diameter_mm must be a size in mm"),
        ({"count": 0}, "count must be a positive integer"),
        ({"location": (1.0, 2.0)}, "location must be 'auto' or a world point"),
    ],
)
def test_bad_specs(spec_kw, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        LesionSpec(**spec_kw)


def test_bad_requests_on_a_scan(host):
    ct, labels = host
    with pytest.raises(InputError, match="pancreas is not in this label map"):
        insert_lesions(ct, labels, LesionSpec(type="tumor", organ="pancreas"))
    with pytest.raises(InputError, match="organ too small for a 80 mm lesion"):
        insert_lesions(ct, labels, LesionSpec(type="cyst", organ="kidney", diameter_mm=80.0))
    shifted = labels.replace(affine=labels.affine @ np.diag([1.0, 1.0, 1.0, 1.0]) + np.array(
        [[0, 0, 0, 5.0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(GridMismatchError, match="label map is not on the grid of the CT"):
        insert_lesions(ct, shifted, LesionSpec())


def test_specs_yaml_round_trip(tmp_path):
    specs = [LesionSpec(type="cyst", organ="kidney_left", diameter_mm=(8.0, 12.0), count=2, seed=3),
             LesionSpec(type="nodule_ground_glass", organ="lung", location=(10.0, -20.0, 30.0))]
    p = tmp_path / "lesions.yaml"
    p.write_text(specs_yaml(specs))
    assert load_specs(p) == specs
    p.write_text("lesions:\n  - {type: cyst, colour: red}\n")
    with pytest.raises(InputError, match="lesion 1: unknown key 'colour'"):
        load_specs(p)


def test_specs_from_configs_fall_back_on_the_shipped_copy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a folder that is not a checkout: no configs/ here
    specs = load_specs("configs/lesions_abdomen.yaml")
    assert [(s.type, s.organ) for s in specs[:3]] == [("tumor", "liver"), ("cyst", "liver"), ("metastasis", "spleen")]
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "lesions_abdomen.yaml").write_text("lesions:\n  - {type: cyst, organ: kidney}\n")
    assert load_specs("configs/lesions_abdomen.yaml") == [LesionSpec(type="cyst", organ="kidney")]
    with pytest.raises(InputError, match="configs/missing.yaml: spec file not found"):
        load_specs("configs/missing.yaml")


def test_cli_insert_writes_volumes_record_and_preview(capsys, tmp_path, host):
    from synthgen.cli import main

    ct, labels = host
    io.write(ct, tmp_path / "ct.nii.gz")
    io.write(labels, tmp_path / "labels.nii.gz")
    before = [(tmp_path / n).read_bytes() for n in ("ct.nii.gz", "labels.nii.gz")]
    out = tmp_path / "out"
    code = main(["lesion", "insert", str(tmp_path / "ct.nii.gz"), "--labels", str(tmp_path / "labels.nii.gz"),
                 "--organ", "liver", "--type", "tumor", "--diameter", "18", "--count", "2", "--seed", "1",
                 "--mass-effect", "2", "--preview", "--out", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [
        "lesions.json", "lesions.yaml", "lesions_ct.nii.gz", "lesions_labels.nii.gz", "lesions_preview.png"]
    rec = json.loads((out / "lesions.json").read_text())
    assert rec["synthetic"] is True and len(rec["details"]["lesions"]) == 2
    assert {"center_mm", "diameter_mm", "volume_ml", "mean_hu", "phase", "type", "seed"} <= set(
        rec["details"]["lesions"][0])
    new_ct, new_labels = io.read_pair(out / "lesions_ct.nii.gz", out / "lesions_labels.nii.gz")
    assert new_ct.synthetic and (new_labels.numpy() == 201).any()
    assert [(tmp_path / n).read_bytes() for n in ("ct.nii.gz", "labels.nii.gz")] == before
    assert load_specs(out / "lesions.yaml")[0].count == 2


def test_cli_bad_request_writes_nothing(capsys, tmp_path, host):
    from synthgen.cli import main

    ct, labels = host
    io.write(ct, tmp_path / "ct.nii.gz")
    io.write(labels, tmp_path / "labels.nii.gz")
    out = tmp_path / "out"
    code = main(["lesion", "insert", str(tmp_path / "ct.nii.gz"), "--labels", str(tmp_path / "labels.nii.gz"),
                 "--organ", "kidney", "--type", "cyst", "--diameter", "90", "--out", str(out), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "organ too small" in err[0]
    assert not out.exists() or not any(out.iterdir())


def test_monai_dictionary_transform(host):
    import torch
    from monai.data import MetaTensor

    from synthgen.lesions.transforms import RandLesiond

    ct, labels = host
    affine = torch.tensor(np.array(ct.affine))
    data = {"image": MetaTensor(torch.from_numpy(ct.numpy().copy())[None], affine=affine),
            "label": MetaTensor(torch.from_numpy(labels.numpy().copy())[None], affine=affine)}
    t = RandLesiond(specs=[LesionSpec(type="cyst", organ="liver", diameter_mm=15.0)], prob=1.0)
    t.set_random_state(7)
    a = t(data)
    t.set_random_state(7)
    b = t(data)
    assert isinstance(a["image"], MetaTensor) and a["image"].shape == data["image"].shape
    assert torch.equal(a["image"], b["image"]) and len(a["lesions"]) == 1
    assert int((a["label"] == a["lesions"][0]["label_id"]).sum()) > 0
    skip = RandLesiond(specs=[LesionSpec()], prob=0.0)(data)
    assert skip["lesions"] == [] and torch.equal(skip["image"], data["image"])

"""synthgen.text: prompts -> PromptSpec -> LesionSpec, and captions that read back through the parser."""

from __future__ import annotations

import json

import numpy as np
import pytest

from synthgen.data import phantom
from synthgen.errors import InputError
from synthgen.lesions.spec import LesionSpec, organ_family
from synthgen.text.captions import caption, format_size
from synthgen.text.prompt import Finding, PromptSpec, parse_prompt


@pytest.fixture(scope="module")
def labels():
    _, lab = phantom(shape=(48, 40, 32), spacing=(7, 7, 9))
    return lab


RECORDS = [
    {"label": "liver_cyst", "type": "cyst", "organ": "liver", "diameter_mm": 25.3, "center_mm": (0.0, 0.0, 0.0)},
    {"label": "kidney_tumor", "type": "tumor", "organ": "kidney_left", "diameter_mm": 45.0, "center_mm": (1, 2, 3)},
    {"label": "lung_nodule_ground_glass", "type": "nodule_ground_glass", "organ": "lung_upper_lobe_right",
     "diameter_mm": 7.6, "center_mm": (0, 0, 0)},
    {"label": "lung_nodule_solid", "type": "nodule_solid", "organ": "lung", "diameter_mm": 11.2,
     "center_mm": (0, 0, 0)},
    {"label": "liver_metastasis", "type": "metastasis", "organ": "liver", "diameter_mm": 18.0, "center_mm": (0, 0, 0)},
    {"label": "spleen_hemorrhage", "type": "hemorrhage", "organ": "spleen", "diameter_mm": 33.4,
     "center_mm": (0, 0, 0)},
]


# ------------------------------------------------------------------ prompts
def test_issue_example_liver_lesion():
    spec = parse_prompt("contrast CT of the abdomen, 3 cm hypodense liver lesion")
    assert spec.regions == ("abdomen",)
    assert spec.phase == "portal_venous"
    (f,) = spec.findings
    assert (f.lesion_type, f.organ, f.diameter_mm, f.count) == ("tumor", "liver", 30.0, 1)
    assert "ambiguous 'lesion' read as tumor" in spec.warnings
    assert not any(w.startswith("ignored") for w in spec.warnings)  # "hypodense" is a known adjective


def test_ground_glass_nodules_and_patient():
    spec = parse_prompt("non-contrast chest CT, two 8 mm ground-glass nodules in the right upper lobe, "
                        "65-year-old female")
    assert spec.regions == ("chest",)
    assert spec.phase == "non_contrast"
    (f,) = spec.findings
    assert f == Finding("nodule_ground_glass", "lung_upper_lobe_right", 8.0, 2, None, "right", f.words)
    assert spec.patient == {"age": 65, "sex": "F"}
    assert spec.warnings == ()


def test_three_regions_two_findings():
    spec = parse_prompt("arterial phase CT of chest, abdomen and pelvis with a 4.5 cm enhancing mass in the "
                        "left kidney and multiple liver metastases")
    assert spec.regions == ("chest", "abdomen", "pelvis")
    assert spec.phase == "arterial"
    kidney, liver = spec.findings
    assert (kidney.lesion_type, kidney.organ, kidney.diameter_mm, kidney.count) == ("tumor", "kidney_left", 45.0, 1)
    assert kidney.side == "left"
    assert (liver.lesion_type, liver.organ, liver.diameter_mm, liver.count) == ("metastasis", "liver", None, 3)
    assert "'multiple' read as count 3" in spec.warnings
    assert any("20 mm" in w for w in spec.warnings)  # the default size is announced


def test_unknown_words_are_reported_collapsed():
    spec = parse_prompt("a purple elephant in the liver")
    assert "ignored: 'purple elephant'" in spec.warnings
    assert spec.organs == ("liver",)
    assert spec.findings == ()


@pytest.mark.parametrize("text, phase", [
    ("unenhanced CT of the abdomen", "non_contrast"), ("CT abdomen without contrast", "non_contrast"),
    ("late arterial CT liver", "arterial"), ("portal venous CT", "portal_venous"),
    ("venous phase CT", "portal_venous"), ("delayed phase CT", "delayed"),
    ("contrast-enhanced CT of the chest", "portal_venous"), ("CT of the chest", None),
])
def test_phase_words(text, phase):
    assert parse_prompt(text).phase == phase


@pytest.mark.parametrize("text, thickness", [
    ("CT chest, 1 mm slices", 1.0), ("CT abdomen, slice thickness 2.5 mm", 2.5), ("thin-section CT", 1.0),
    ("CT abdomen", None),
])
def test_slice_thickness(text, thickness):
    spec = parse_prompt(text)
    assert spec.slice_thickness_mm == thickness
    assert spec.findings == ()


def test_sizes_counts_locations_and_regions():
    spec = parse_prompt("CT chest/abdomen/pelvis: 1.5 x 2 cm cyst in segment 7 of the liver; sub-centimeter "
                        "hypodense lesion in the pancreatic tail; several renal cysts, lower pole; 70 yo M")
    assert spec.regions == ("chest", "abdomen", "pelvis")
    cyst, pancreas, renal = spec.findings
    assert (cyst.lesion_type, cyst.organ, cyst.diameter_mm, cyst.location) == ("cyst", "liver", 20.0, "segment 7")
    assert any("largest dimension" in w for w in spec.warnings)
    assert (pancreas.organ, pancreas.diameter_mm, pancreas.location) == ("pancreas", 8.0, "tail")
    assert (renal.lesion_type, renal.organ, renal.count) == ("cyst", "kidney", 3)
    assert spec.patient == {"age": 70, "sex": "M"}
    assert parse_prompt("CAP CT, RLL solid nodule 6mm").regions == ("chest", "abdomen", "pelvis")
    assert parse_prompt("CT, RLL solid nodule 6mm").findings[0].organ == "lung_lower_lobe_right"
    assert parse_prompt("male, age 50").patient == {"age": 50, "sex": "M"}


@pytest.mark.parametrize("text, kind", [
    ("HCC in the liver", "tumor"), ("renal carcinoma", "tumor"), ("cystic lesion of the pancreas", "cyst"),
    ("liver mets", "metastasis"), ("secondary in the liver", "metastasis"), ("GGO right lung", "nodule_ground_glass"),
    ("pulmonary nodule", "nodule_solid"), ("splenic haematoma", "hemorrhage"), ("hepatic bleed", "hemorrhage"),
])
def test_lesion_words(text, kind):
    (f,) = parse_prompt(text).findings
    assert f.lesion_type == kind


def test_negation_gives_no_finding():
    assert parse_prompt("CT abdomen. No focal lesion.").findings == ()


def test_bad_prompts_raise_with_message():
    with pytest.raises(InputError, match="prompt is empty"):
        parse_prompt("   ")
    with pytest.raises(InputError, match="'900 mm'.*outside 1-200 mm"):
        parse_prompt("a 900 mm cyst")
    with pytest.raises(InputError, match="0.5 mm"):
        parse_prompt("a 0.5 mm cyst in the liver")
    with pytest.raises(InputError, match="must be a string"):
        parse_prompt(None)  # type: ignore[arg-type]


def test_lesion_specs_are_valid():
    spec = parse_prompt("arterial CT, a 4.5 cm enhancing mass in the left kidney and multiple liver metastases, "
                        "two 8 mm ground-glass nodules in the RUL")
    specs = spec.lesion_specs(seed=10)
    assert all(isinstance(s, LesionSpec) for s in specs)
    assert [(s.type, s.organ, s.diameter_mm, s.count, s.seed) for s in specs] == [
        ("tumor", "kidney_left", 45.0, 1, 10), ("metastasis", "liver", 20.0, 3, 11),
        ("nodule_ground_glass", "lung_upper_lobe_right", 8.0, 2, 12)]
    assert {s.phase for s in specs} == {"arterial"}
    assert parse_prompt("a 2 cm cyst in the liver").lesion_specs()[0].phase == "auto"


def test_lesion_specs_reject_bad_pair():
    spec = parse_prompt("a 1 cm solid nodule in the spleen")
    with pytest.raises(InputError, match="lung"):
        spec.lesion_specs()


def test_to_dict_is_json():
    spec = parse_prompt("non-contrast chest CT, two 8 mm ground-glass nodules in the right upper lobe")
    d = json.loads(json.dumps(spec.to_dict()))
    assert d["findings"][0]["organ"] == "lung_upper_lobe_right"
    assert d["regions"] == ["chest"]
    assert isinstance(spec, PromptSpec)


# ------------------------------------------------------------------ captions
def test_caption_fixed_phrasing(labels):
    text = caption(labels, lesions=RECORDS[:1], phase="arterial")
    assert text == ("Contrast-enhanced CT of the chest and abdomen in the arterial phase. "
                    "A 2.5 cm hypodense cyst in the liver.")
    assert caption(labels) == "CT of the chest and abdomen. No focal lesion."
    assert format_size(7.64) == "7.6 mm" and format_size(45.0) == "4.5 cm"


@pytest.mark.parametrize("phase", ["non_contrast", "arterial", "portal_venous", "delayed", None])
@pytest.mark.parametrize("seed", [None, 0, 1, 2, 3, 4])
def test_caption_round_trip(labels, phase, seed):
    rng = None if seed is None else np.random.default_rng(seed)
    text = caption(labels, lesions=RECORDS, phase=phase, rng=rng)
    spec = parse_prompt(text)
    assert spec.phase == phase, text
    assert spec.regions == ("chest", "abdomen"), text
    assert len(spec.findings) == len(RECORDS), text
    for f, r in zip(spec.findings, RECORDS):
        assert f.lesion_type == r["type"], text
        assert organ_family(f.organ) == organ_family(r["organ"]), text
        assert abs(f.diameter_mm - r["diameter_mm"]) <= 1.0, text
        assert f.count == 1
    assert not any(w.startswith("ignored") for w in spec.warnings), spec.warnings


def test_caption_round_trip_without_lesions(labels):
    spec = parse_prompt(caption(labels, phase="delayed", rng=np.random.default_rng(5)))
    assert spec.findings == () and spec.phase == "delayed"


def test_caption_seeded_determinism(labels):
    texts = [caption(labels, lesions=RECORDS, phase="arterial", rng=np.random.default_rng(7)) for _ in range(2)]
    assert texts[0] == texts[1]
    variants = {caption(labels, lesions=RECORDS, phase="arterial", rng=np.random.default_rng(s)) for s in range(8)}
    assert len(variants) > 1


def test_caption_regions_from_array():
    arr = np.zeros((4, 4, 4), np.int16)
    arr[0, 0, 0] = 21  # urinary_bladder
    arr[1, 1, 1] = 5  # liver
    assert caption(arr).startswith("CT of the abdomen and pelvis.")


def test_caption_bad_input(labels):
    with pytest.raises(InputError, match="phase must be one of"):
        caption(labels, phase="venous")
    with pytest.raises(InputError, match="lacks diameter_mm"):
        caption(labels, lesions=[{"type": "cyst", "organ": "liver"}])
    with pytest.raises(InputError, match="unknown type"):
        caption(labels, lesions=[{"type": "polyp", "organ": "liver", "diameter_mm": 5.0}])
    with pytest.raises(InputError, match="integer ids"):
        caption(np.zeros((2, 2, 2), np.float32))


def test_prompt_to_insertion_to_caption_round_trip():
    """Prompt -> LesionSpecs -> real insertion into the phantom -> caption of its records -> same findings."""
    import dataclasses

    from synthgen.lesions.insert import insert_lesions

    ct, lab = phantom(shape=(48, 40, 32), spacing=(7, 7, 9))
    spec = parse_prompt("portal venous CT of the chest and abdomen, a 4 cm hypodense cyst in the liver")
    result = insert_lesions(ct, lab, spec.lesion_specs(seed=3))
    records = [dataclasses.asdict(r) for r in result.lesions]
    back = parse_prompt(caption(result.labels, lesions=records, phase=result.phase))
    assert back.phase == spec.phase == "portal_venous"
    (f,) = back.findings
    assert (f.lesion_type, f.organ) == ("cyst", "liver")
    assert abs(f.diameter_mm - records[0]["diameter_mm"]) <= 1.0

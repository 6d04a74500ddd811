"""The shipped text -> CT pipeline is bit-reproducible: a seed gives the same volume, release to release.

The hashes were recorded on the CPU build of torch 2.13.0 before the pipelines were moved
onto the diffusers contract (issue 12); that change must not alter a single voxel.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

PROMPT = "contrast CT of the abdomen, 3 cm tumour in the liver"
RECORDED = {  # scheduler -> (sha256 of the CT's int16 voxels, sha256 of the label map's voxels)
    "ddim": ("48536adb3d167c8ada63b2f07b2ba363a23d13827579d6a1c3c6d655d39fbd34",
             "5a0bd9ca0e1cf89b8afb19799978f18dd9cc9f5fe91c49ffaa1e9c7ce6a03547"),
    "dpm": ("05549b9724f1923baade405a9f4dbe2154a4c9340a999305ae643e6bf6ff44f7",
            "5a0bd9ca0e1cf89b8afb19799978f18dd9cc9f5fe91c49ffaa1e9c7ce6a03547"),
}


def _sha(vol) -> str:
    return hashlib.sha256(np.ascontiguousarray(vol.numpy()).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def pipe():
    from synthgen.pipelines.latent_ct import TextToCTPipeline

    return TextToCTPipeline.from_pretrained(None)


@pytest.mark.parametrize("scheduler", sorted(RECORDED))
def test_same_seed_same_voxels_as_recorded(pipe, scheduler):
    res = pipe(PROMPT, size=(32, 32, 32), spacing=4.0, steps=4, guidance=2.0, seed=3, scheduler=scheduler,
               progress=False)
    assert res.ct.numpy().dtype == np.int16 and res.ct.shape == (32, 32, 32)
    assert (_sha(res.ct), _sha(res.labels)) == RECORDED[scheduler]

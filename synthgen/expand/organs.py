"""Organ masks for scans that come without a label map (classification datasets).

To insert a lesion into a host scan the lesion engine needs the host organ's mask. A
classification set has none, so the shipped organ segmenter (`synthgen.models.segmenter`: liver,
spleen, kidney, heart, aorta; trained by `synthgen train segmenter`) reads it from the CT at its
training resolution (4 mm, the example CT's LAS axis order) and the mask is brought back onto the
host's own grid. The mask is only used to place the lesion; it is written beside the synthetic
image as the lesion's label map.
"""

from __future__ import annotations

import functools

import numpy as np

from synthgen.errors import InputError
from synthgen.lesions.spec import organ_family
from synthgen.models.segmenter import ORGANS, load_segmenter, segment
from synthgen.pipelines.latent_ct import default_weights
from synthgen.vocab import Vocabulary
from synthgen.volume import Volume

#: The segmenter's working grid: spacing (mm) and axis order of its training scans.
SEG_SPACING_MM = 4.0


@functools.lru_cache(maxsize=1)
def _segmenter():
    folder = default_weights() / "segmenter"
    if not (folder / "model.safetensors").exists():
        raise InputError(f"{folder}: no organ segmenter shipped; classification sets cannot be expanded")
    return load_segmenter(folder)


def _as_las(ct: Volume) -> Volume:
    """``ct`` with its axes permuted / flipped (no interpolation) to LAS, the segmenter's training order."""
    ras = ct.to_canonical()
    if ras.orientation[0] != "R":
        return ras
    arr = np.ascontiguousarray(np.asarray(ras.numpy())[::-1])
    affine = ras.affine.copy()
    affine[:3, 3] += affine[:3, 0] * (ras.shape[0] - 1)
    affine[:3, 0] *= -1
    return ras.replace(array=arr, affine=affine)


def organ_labels(ct: Volume, organ: str) -> Volume:
    """A label map on ``ct``'s grid of every organ the segmenter reads (liver, spleen, kidney, heart,
    aorta, named so; the aorta lets the lesion engine estimate the contrast phase); raises when
    ``organ`` (the lesion's host) is not among them or not found."""

    family = organ_family(organ)
    if family not in ORGANS:
        raise InputError(f"cannot find the {organ} without a label map: the organ segmenter knows "
                         f"{', '.join(ORGANS)}")
    work = _as_las(ct).resample(SEG_SPACING_MM)
    pred = segment(_segmenter(), np.asarray(work.numpy(), np.float32))
    vocab = Vocabulary.from_mapping({k: name for k, name in enumerate(ORGANS, start=1)})
    lab = work.replace(array=pred.astype(np.uint8), kind="label", vocab=vocab, units=None)
    out = lab.resample_to(ct)
    if not (np.asarray(out.numpy()) == ORGANS.index(family) + 1).any():
        raise InputError(f"the organ segmenter finds no {family} in this scan")
    return out

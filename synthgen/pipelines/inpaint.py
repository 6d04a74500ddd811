"""The geometry and blending of lesion inpainting (`synthgen.pipelines.latent_ct.LesionInpaintPipeline`).

The work happens on a box around the lesion: the lesion mask grown by ``margin_mm`` is the
region that may change, with a weight of 1 inside the lesion ramping to 0 at the margin; the box
adds model context around it and is resampled to the model's spacing (padded to the UNet
multiple). The generated box is resampled back to the CT's grid and blended with those weights,
so every voxel outside the grown mask keeps its value bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from synthgen.anatomy.ops import bounding_box
from synthgen.errors import InputError
from synthgen.lesions.appearance import correlated_noise, estimate_noise
from synthgen.pipelines.inputs import SPACING_RANGE_MM, check_real, is_int
from synthgen.volume import Volume

#: Largest blending margin around the lesion (mm).
MAX_MARGIN_MM = 50.0
#: Model context around the grown lesion, in model voxels on each side.
CONTEXT_VOXELS = 16


def check_inpaint_inputs(ct: Any, labels: Any, lesion_label: Any, *, model_spacing: Any,
                         margin_mm: Any) -> int:
    """Check the inpainting arguments (one-line `InputError`s); the lesion's label id."""
    check_real("model_spacing", model_spacing, *SPACING_RANGE_MM)
    check_real("margin_mm", margin_mm, 0.0, MAX_MARGIN_MM)
    if not isinstance(ct, Volume) or ct.kind != "intensity":
        raise InputError(f"ct must be an intensity Volume (HU), got {_what(ct)}")
    if not isinstance(labels, Volume) or labels.kind != "label":
        raise InputError(f"labels must be a label Volume (kind='label'), got {_what(labels)}")
    ct.check_same_grid(labels, names=("CT", "label map"))
    if is_int(lesion_label):
        lid = int(lesion_label)
    elif isinstance(lesion_label, str) and labels.vocab is not None:
        lid = labels.vocab.id(lesion_label)
    elif isinstance(lesion_label, str):
        raise InputError("lesion_label must be an id when the label map has no vocabulary")
    else:
        raise InputError(f"lesion_label must be a structure name or id, got {lesion_label!r}")
    if not (labels.numpy() == lid).any():
        raise InputError(f"label {lesion_label!r} has no voxel in the label map")
    return lid


def _what(v: Any) -> str:
    return f"a {v.kind} Volume" if isinstance(v, Volume) else type(v).__name__


@dataclasses.dataclass(frozen=True)
class InpaintBox:
    """The voxels that may change (``weight`` > 0, on the CT's grid) and the box the model sees."""

    mask: np.ndarray  # the lesion
    region: np.ndarray  # the lesion grown by margin_mm: what the model generates
    weight: np.ndarray  # blending weight: 1 inside the lesion, ramping to 0 at margin_mm outside it
    start: tuple[int, ...]
    stop: tuple[int, ...]

    @classmethod
    def around(cls, lesion: np.ndarray, spacing_mm: np.ndarray, *, margin_mm: float,
               model_spacing: float) -> InpaintBox:
        from scipy import ndimage

        grow = ndimage.distance_transform_edt(~lesion, sampling=spacing_mm)
        region = grow <= margin_mm
        weight = np.clip(1.0 - grow / max(margin_mm, 1e-6), 0.0, 1.0) * region
        weight[lesion] = 1.0
        context = [math.ceil(CONTEXT_VOXELS * model_spacing / s) for s in spacing_mm]
        start, stop = bounding_box(region, margin_vox=context)
        return cls(mask=lesion, region=region, weight=weight, start=tuple(start), stop=tuple(stop))

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))


def model_grid(box_ct: Volume, *, model_spacing: float, multiple: int, vocab) -> Volume:
    """An empty label Volume over ``box_ct``'s extent at ``model_spacing``, each axis a multiple
    of ``multiple`` voxels (the UNet's), sharing ``box_ct``'s origin and axes."""
    sp = np.asarray(box_ct.spacing)
    extent = np.asarray(box_ct.shape) * sp
    n = [max(multiple, math.ceil(e / model_spacing / multiple) * multiple) for e in extent]
    affine = box_ct.affine.copy()
    affine[:3, :3] = box_ct.affine[:3, :3] / sp * model_spacing
    return Volume(np.zeros(n, np.int16), affine, kind="label", vocab=vocab)


def latent_known_mask(region: np.ndarray, factor: int) -> np.ndarray:
    """1 where a latent voxel sees no voxel of ``region`` (an image-size mask), float32."""
    from scipy import ndimage

    touched = ndimage.maximum_filter(region, size=factor)[::factor, ::factor, ::factor]
    return 1.0 - touched.astype(np.float32)


def blend(ct: Volume, generated: np.ndarray, box: InpaintBox) -> tuple[np.ndarray, int]:
    """The CT's voxels with ``generated`` (HU on the box) blended in by the box's weights, in
    the CT's dtype; and how many voxels were touched."""
    out = ct.numpy().copy()
    w = box.weight[box.slices]
    inside = w > 0
    sub = out[box.slices]  # a view: writing it writes ``out``
    host = sub[inside].astype(np.float32)
    mixed = (w[inside] * generated[inside] + (1 - w[inside]) * host).astype(np.float32)
    sub[inside] = np.rint(mixed).astype(out.dtype) if np.issubdtype(out.dtype, np.integer) else mixed.astype(out.dtype)
    return out, int(inside.sum())


def with_host_noise(generated: np.ndarray, hu: np.ndarray, lab: np.ndarray, lesion: np.ndarray, spacing_mm,
                    seed: int) -> tuple[np.ndarray, dict | None]:
    """``generated`` + noise with the level and grain of the host tissue around the lesion (None:
    too little host tissue to measure, nothing added); all arrays on the box."""
    from scipy import ndimage

    shell = ndimage.binary_dilation(lesion, iterations=6) & ~ndimage.binary_dilation(lesion, iterations=2)
    if not shell.any():
        return generated, None
    host = np.bincount(lab[shell].astype(np.int64)).argmax()
    region = ndimage.binary_erosion(lab == host) & ~ndimage.binary_dilation(lesion, iterations=2)
    try:
        model = estimate_noise(hu.astype(np.float32), region, spacing_mm=spacing_mm)
    except InputError:
        return generated, None
    noise = correlated_noise(generated.shape, model, spacing_mm=spacing_mm, rng=np.random.default_rng([seed, 7]))
    return generated + noise, {"std_hu": round(float(model.std_hu), 2), "grain_mm": round(float(model.grain_mm), 2)}

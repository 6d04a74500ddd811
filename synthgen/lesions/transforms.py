"""On-the-fly lesion insertion inside a MONAI training pipeline.

`RandLesiond` is a MONAI dictionary transform: given ``data[image_key]`` (CT in HU) and
``data[label_key]`` (label map), channel-first ``(1, I, J, K)`` MetaTensors as MONAI's
``LoadImaged`` + ``EnsureChannelFirstd`` produce them, it inserts the configured
lesions with probability ``prob`` and a seed drawn from the transform's own random
state (so ``set_random_state`` / MONAI's ``set_determinism`` make it reproducible).
Each key's voxel->world affine comes from its MetaTensor (MONAI's default: RAS+ mm); a
plain tensor or array needs ``data[f"{key}_affine"]``. Image and labels must share one
grid (shape and affine): labels on another grid are an error, never re-gridded. The
inserted lesions' records go to ``data["lesions"]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from monai.transforms import MapTransform, Randomizable

from synthgen.errors import InputError
from synthgen.lesions.insert import insert_lesions
from synthgen.lesions.spec import LesionSpec
from synthgen.volume import Volume


class RandLesiond(Randomizable, MapTransform):
    """Insert synthetic lesions into ``data[keys[0]]`` (CT) and ``data[keys[1]]`` (labels)."""

    def __init__(
        self,
        keys: Sequence[Hashable] = ("image", "label"),
        specs: Sequence[LesionSpec] = (LesionSpec(),),
        *,
        prob: float = 1.0,
        vocab=None,
    ) -> None:
        MapTransform.__init__(self, keys)
        if len(self.keys) != 2:
            raise InputError(f"RandLesiond needs two keys (image, label), got {list(self.keys)}")
        if not 0.0 <= prob <= 1.0:
            raise InputError(f"prob must be in [0, 1], got {prob}")
        self.specs = list(specs)
        self.prob = prob
        self.vocab = vocab
        self._apply = False
        self._seed = 0

    def randomize(self, data=None) -> None:
        self._apply = self.R.random_sample() < self.prob
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        image_key, label_key = self.keys
        ct = Volume(_spatial(d[image_key], image_key), _affine(d, image_key))
        labels = Volume(_spatial(d[label_key], label_key), _affine(d, label_key), kind="label", vocab=self.vocab)
        ct.check_same_grid(labels, names=(f"{image_key!r} image", f"{label_key!r} labels"))  # whatever the draw
        self.randomize()
        if not self._apply:
            d.setdefault("lesions", [])
            return d
        specs = [dataclasses.replace(s, seed=self._seed + i) for i, s in enumerate(self.specs)]
        result = insert_lesions(ct, labels, specs)
        d[image_key] = _like(d[image_key], result.ct.numpy())
        d[label_key] = _like(d[label_key], result.labels.numpy())
        d["lesions"] = [dataclasses.asdict(r) for r in result.lesions]
        return d


def _spatial(x, key) -> np.ndarray:
    arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise InputError(f"{key}: expected a (1, I, J, K) or (I, J, K) volume, got shape {arr.shape}")
    return arr


def _affine(d: Mapping, key) -> np.ndarray:
    img = d[key]
    if getattr(img, "affine", None) is not None:
        return np.asarray(img.affine.detach().cpu() if hasattr(img.affine, "detach") else img.affine, dtype=np.float64)
    if f"{key}_affine" in d:
        return np.asarray(d[f"{key}_affine"], dtype=np.float64)
    raise InputError(f"{key}: no affine (use MONAI MetaTensors or give data['{key}_affine'])")


def _like(original, values: np.ndarray):
    """``values`` in the container type of ``original`` (MetaTensor keeps its meta, channel dim kept)."""
    import torch

    out = values[None] if getattr(original, "ndim", 3) == 4 else values
    if hasattr(original, "detach"):
        t = torch.as_tensor(np.ascontiguousarray(out)).to(original.dtype)
        if hasattr(original, "copy_meta_from"):
            from monai.data import MetaTensor

            return MetaTensor(t, meta=original.meta, applied_operations=original.applied_operations)
        return t
    return out.astype(np.asarray(original).dtype)

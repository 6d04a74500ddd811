"""A case as `synthgen evaluate`'s downstream model sees it: canonical orientation, windowed
intensities, labels as class indices (segmentation) or a class index (classification)."""

from __future__ import annotations

import dataclasses

import numpy as np

from synthgen.errors import InputError
from synthgen.expand.evaluation import EvalConfig
from synthgen.volume import Volume

#: Units of a case's image: HU mapped through the config's window onto [-1, 1].
NORMALISED = "HU window -> [-1, 1]"


@dataclasses.dataclass(frozen=True)
class Case:
    """One case as the downstream model sees it.

    ``image``: the CT windowed to [-1, 1] (units `NORMALISED`) in canonical orientation
    (`Volume.to_canonical`: voxel axes as close to R, A, S as the grid allows), so that voxel axis 0
    runs along the patient's left-right axis in every case and the training flip
    (`mirror_left_right`) mirrors left and right, whatever the file's voxel order. Segmentation:
    ``label`` is the label map of class indices (0 background) on the image's grid and ``fg`` the
    voxel indices of each class present. Classification: ``label`` is the class index and the image
    is resampled to the network's input size (its affine says where those voxels lie).
    """

    id: str
    image: Volume
    label: Volume | int
    fg: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def pixels(self) -> np.ndarray:
        """The image array, (I, J, K) float32."""
        return self.image.numpy()

    @property
    def target(self) -> np.ndarray | int:
        """What the model must predict: the (I, J, K) int64 class-index array, or the class index."""
        return self.label.numpy() if isinstance(self.label, Volume) else self.label


def _normalise(hu: np.ndarray, window: list[float]) -> np.ndarray:
    lo, hi = window
    return (np.clip(hu, lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)


def seg_case(ct: Volume, labels: Volume, lut: np.ndarray, cfg: EvalConfig, cid: str) -> Case:
    """A segmentation case from a CT and its label map (one grid): canonical orientation, resampled
    to ``cfg.spacing`` if set, label values mapped to class indices by ``lut`` (value -> index)."""
    ct.check_same_grid(labels, names=(f"{cid} image", f"{cid} label map"))
    ct, labels = ct.to_canonical(), labels.to_canonical()
    if cfg.spacing:
        ct = ct.resample(cfg.spacing)
        labels = labels.resample_to(ct)
    arr = np.asarray(labels.numpy()).astype(np.int64)
    if arr.max() >= lut.size:
        raise InputError(f"{cid}: label value {arr.max()} is not a declared class")
    idx = lut[arr]
    fg = {int(c): np.argwhere(idx == c) for c in np.unique(idx) if c > 0}
    img = _normalise(np.asarray(ct.numpy(), np.float32), cfg.window).astype(np.float32)
    return Case(cid, ct.replace(array=img, units=NORMALISED),
                labels.replace(array=idx, vocab=None, units="class index"), fg)


def cls_case(ct: Volume, cls: int, cfg: EvalConfig, cid: str) -> Case:
    """A classification case: the whole CT in canonical orientation, windowed and resized
    (trilinear, ``align_corners=False``) to ``cfg.size``."""
    import torch

    ct = ct.to_canonical()
    x = torch.from_numpy(_normalise(np.asarray(ct.numpy(), np.float32), cfg.window))[None, None]
    x = torch.nn.functional.interpolate(x, size=tuple(cfg.size), mode="trilinear", align_corners=False)
    scale = np.asarray(ct.shape, float) / np.asarray(cfg.size, float)
    resize = np.eye(4)  # voxel n of the resized grid sits at (n + 0.5) * scale - 0.5 of the original
    resize[:3, :3] = np.diag(scale)
    resize[:3, 3] = 0.5 * scale - 0.5
    return Case(cid, ct.replace(array=x[0, 0].numpy().astype(np.float32), affine=ct.affine @ resize,
                                units=NORMALISED), int(cls))

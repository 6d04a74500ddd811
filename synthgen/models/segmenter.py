"""A small organ segmenter for the fidelity check: does a generated CT show the organs where its
label map puts them? MONAI's 3-D UNet, trained on the real scans of the training data only
(`synthgen train segmenter`), on the intensity transform of `synthgen.models.hu`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from synthgen.config import load_config
from synthgen.models.checkpoint import load_module
from synthgen.models.hu import hu_to_model
from synthgen.vocab import Vocabulary

#: Output classes after background: each a vocabulary name or group.
ORGANS = ("liver", "spleen", "kidney", "heart", "aorta")


@dataclasses.dataclass
class SegmenterConfig:
    channels: list[int] = dataclasses.field(default_factory=lambda: [16, 32, 64, 128])
    num_res_units: int = 1


def build_segmenter(cfg: SegmenterConfig) -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=len(ORGANS) + 1, channels=tuple(cfg.channels),
                strides=(2,) * (len(cfg.channels) - 1), num_res_units=cfg.num_res_units)


def load_segmenter(folder: Path, cfg: SegmenterConfig | None = None) -> torch.nn.Module:
    """The segmenter saved in ``folder`` (``config.yaml`` + ``model.safetensors``), in eval mode;
    ``cfg``: its config when already read. A missing file is a one-line `InputError`."""
    if cfg is None:
        cfg = load_config(SegmenterConfig, paths=[folder / "config.yaml"])
    return load_module(build_segmenter(cfg), folder / "model.safetensors").eval()


def organ_targets(labels_default_ids: np.ndarray) -> np.ndarray:
    """Default-vocabulary label ids -> segmenter class indices (0 background, k = ORGANS[k-1])."""

    v = Vocabulary.default()
    lut = np.zeros(max(256, int(labels_default_ids.max()) + 1), dtype=np.int64)
    for k, organ in enumerate(ORGANS, start=1):
        lut[list(v.ids(organ))] = k
    return lut[labels_default_ids]


@torch.no_grad()
def segment(model: torch.nn.Module, hu: np.ndarray, *, roi: int = 64) -> np.ndarray:
    """Class index per voxel of a CT (HU array), by sliding-window inference."""
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(hu_to_model(hu))[None, None]
    logits = sliding_window_inference(x, roi_size=(roi,) * 3, sw_batch_size=1, predictor=model.eval(),
                                      overlap=0.25, mode="gaussian")
    return logits.argmax(1)[0].numpy().astype(np.uint8)

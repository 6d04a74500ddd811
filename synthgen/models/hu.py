"""The invertible intensity transform the VAE works in: full-range HU <-> model units.

``y = asinh(HU / 100) / asinh(3071 / 100)`` on HU clipped to [-1024, 3071]. It is odd and
monotonic, so nothing inside the range is lost (unlike the ±1000 clip of MAISI): water is 0,
3071 HU (metal, dense cortex) is 1, air (-1024) is -0.73. Near water it is almost linear
(1 HU ≈ 0.0024), so soft tissue keeps its contrast, while bone and air are compressed
logarithmically. `model_to_hu` is the exact inverse on [-0.73, 1].
"""

from __future__ import annotations

import math

import numpy as np
import torch

HU_MIN, HU_MAX = -1024.0, 3071.0
HU_SCALE = 100.0
_NORM = math.asinh(HU_MAX / HU_SCALE)
Y_MIN = math.asinh(HU_MIN / HU_SCALE) / _NORM
Y_MAX = 1.0


def hu_to_model(hu):
    """HU (numpy array or tensor) -> model units; values outside [-1024, 3071] are clipped first."""
    if isinstance(hu, torch.Tensor):
        return torch.asinh(hu.float().clamp(HU_MIN, HU_MAX) / HU_SCALE) / _NORM
    return (np.arcsinh(np.clip(np.asarray(hu, dtype=np.float32), HU_MIN, HU_MAX) / HU_SCALE) / _NORM).astype(np.float32)


def model_to_hu(y):
    """Model units -> HU, clamping ``y`` to the image of [-1024, 3071] first."""
    if isinstance(y, torch.Tensor):
        return torch.sinh(y.float().clamp(Y_MIN, Y_MAX) * _NORM) * HU_SCALE
    return (np.sinh(np.clip(np.asarray(y, dtype=np.float32), Y_MIN, Y_MAX) * _NORM) * HU_SCALE).astype(np.float32)

"""Training previews: a PNG grid of mid-axial slices (HU, soft-tissue window), one row per item."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthgen.report.montage import save_png, window


def mid_axial(vol: np.ndarray) -> np.ndarray:
    """The middle slice along the third voxel axis, rotated for display."""
    return np.rot90(vol[:, :, vol.shape[2] // 2])


def preview_png(rows: list[list[np.ndarray]], path: Path) -> None:
    """Write ``rows`` of 2-D HU slices side by side (window 40 / 600 HU) to ``path``."""
    tiles = [np.concatenate([window(a, center=40, width=600) for a in row], axis=1) for row in rows]
    w = max(t.shape[1] for t in tiles)
    img = np.concatenate([np.pad(t, ((0, 2), (0, w - t.shape[1]))) for t in tiles], axis=0)
    rgb = np.repeat((img * 255).astype(np.uint8)[..., None], 3, axis=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(rgb, path, overwrite=True)

"""Orthogonal-slice montages in radiological display convention.

Axial and coronal views show the patient's right on the image's left; axial
views put anterior at the top, coronal and sagittal views superior at the top,
sagittal views anterior on the left. Pixels are resampled to square so
anisotropic voxels are not stretched.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from synthgen.files.atomic import atomic_path
from synthgen.volume import Volume


def window(hu: np.ndarray, *, center: float = 40.0, width: float = 400.0) -> np.ndarray:
    """HU -> [0, 1] display values through a window (centre, width in HU)."""
    lo = center - width / 2
    return np.clip((np.asarray(hu, dtype=np.float32) - lo) / width, 0.0, 1.0)


def label_colors(n: int = 256) -> np.ndarray:
    """A fixed, well-spread RGB colour per label id (id 0 black)."""
    ids = np.arange(n, dtype=np.float64)
    hue = (ids * 0.618033988749895) % 1.0
    sat = 0.55 + 0.35 * ((ids * 7) % 3) / 2
    val = np.full(n, 0.95)
    rgb = _hsv_to_rgb(hue, sat, val)
    rgb[0] = 0
    return (rgb * 255).astype(np.uint8)


def _hsv_to_rgb(h, s, v) -> np.ndarray:
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros((h.size, 3))
    for k, (r, g, b) in enumerate(table):
        m = i == k
        out[m] = np.stack([r[m], g[m], b[m]], axis=1)
    return out


def orthogonal_views(canon: Volume, center=None) -> list[tuple[np.ndarray, tuple[float, float]]]:
    """Axial, coronal, sagittal slices of a RAS-canonical volume through voxel ``center`` (default the
    middle), with their (row, col) pixel sizes in mm."""
    a = canon.numpy()
    sx, sy, sz = canon.spacing
    i, j, k = (s // 2 for s in canon.shape) if center is None else (int(c) for c in center)
    axial = a[::-1, ::-1, k].T  # rows: anterior->posterior, cols: patient right->left
    coronal = a[::-1, j, ::-1].T  # rows: superior->inferior, cols: right->left
    sagittal = a[i, ::-1, ::-1].T  # rows: superior->inferior, cols: anterior->posterior
    return [(axial, (sy, sx)), (coronal, (sz, sx)), (sagittal, (sz, sy))]


def to_square(img: np.ndarray, pix: tuple[float, float], *, nearest: bool, height: int) -> np.ndarray:
    from PIL import Image

    rows, cols = img.shape[:2]
    h_mm, w_mm = rows * pix[0], cols * pix[1]
    out_h = height
    out_w = max(1, int(round(height * w_mm / h_mm)))
    mode = Image.NEAREST if nearest else Image.BILINEAR
    if img.ndim == 2 and img.dtype != np.uint8:
        pil = Image.fromarray(img.astype(np.float32), mode="F")
        return np.asarray(pil.resize((out_w, out_h), mode))
    return np.asarray(Image.fromarray(img).resize((out_w, out_h), mode))


def montage(
    ct: Volume,
    labels: Volume | None = None,
    *,
    center: float = 40.0,
    width: float = 400.0,
    alpha: float = 0.4,
    height: int = 320,
    hide: tuple[str, ...] = ("body", "fat"),
) -> np.ndarray:
    """RGB uint8 image: axial | coronal | sagittal mid slices, labels blended in colour.

    Structures named in ``hide`` (default: the whole-body envelope and its fat) are not coloured.
    """
    canon = ct.to_canonical()
    views = orthogonal_views(canon)
    if labels is not None:
        labels = _hide(labels, hide)
    label_views = orthogonal_views(labels.to_canonical()) if labels is not None else [None] * 3
    colors = label_colors(int(labels.numpy().max()) + 1 if labels is not None else 1)
    tiles = []
    for (img, pix), lab in zip(views, label_views):
        gray = to_square(window(img, center=center, width=width), pix, nearest=False, height=height)
        rgb = np.repeat((gray * 255).astype(np.uint8)[..., None], 3, axis=2).astype(np.float32)
        if lab is not None:
            ids = to_square(lab[0].astype(np.int32), pix, nearest=True, height=height).astype(int)
            col = colors[np.clip(ids, 0, len(colors) - 1)].astype(np.float32)
            m = (ids > 0)[..., None]
            rgb = np.where(m, (1 - alpha) * rgb + alpha * col, rgb)
        tiles.append(rgb.astype(np.uint8))
        tiles.append(np.zeros((height, 4, 3), np.uint8))
    return np.concatenate(tiles[:-1], axis=1)


def _hide(labels: Volume, names: tuple[str, ...]) -> Volume:
    vocab = labels.vocab
    ids = [vocab.id(n) for n in names if vocab is not None and n in vocab]
    if not ids:
        return labels
    arr = labels.numpy().copy()
    arr[np.isin(arr, ids)] = 0
    return labels.with_array(arr)


def save_png(rgb: np.ndarray, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write an RGB/grey uint8 array as PNG, atomically."""
    from PIL import Image


    with atomic_path(path, overwrite=overwrite) as tmp:
        Image.fromarray(np.asarray(rgb)).save(tmp, format="PNG")
    return Path(path)

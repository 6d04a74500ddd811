"""Side-by-side DRR views with orientation letters on their edges (PIL only, no plotting library)."""

from __future__ import annotations

import numpy as np

#: Letter of the patient direction a world (RAS+) axis points to.
_LETTERS = {(0, 1): "R", (0, -1): "L", (1, 1): "A", (1, -1): "P", (2, 1): "S", (2, -1): "I"}


def direction_letter(vector_mm) -> str:
    """'R', 'L', 'A', 'P', 'S' or 'I' for the dominant component of a world direction (two letters if oblique)."""
    v = np.asarray(vector_mm, dtype=np.float64)
    order = np.argsort(-np.abs(v))
    first = _LETTERS[(int(order[0]), int(np.sign(v[order[0]])))]
    if abs(v[order[1]]) > 0.38 * abs(v[order[0]]):  # more than ~20 degrees off the axis
        return first + _LETTERS[(int(order[1]), int(np.sign(v[order[1]])))]
    return first


def annotate(image: np.ndarray, *, u_axis, v_axis, title: str) -> np.ndarray:
    """RGB uint8 copy of ``image`` (grey [0,1] or RGB uint8) with edge letters and a title."""
    from PIL import Image, ImageDraw

    if image.ndim == 2:
        image = np.repeat((np.clip(image, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    h, w = image.shape[:2]
    u, v = np.asarray(u_axis), np.asarray(v_axis)
    marks = {
        (w - 14, h // 2): direction_letter(u),
        (4, h // 2): direction_letter(-u),
        (w // 2, h - 14): direction_letter(v),
        (w // 2, 2): direction_letter(-v),
    }
    for xy, letter in marks.items():
        draw.text(xy, letter, fill=(255, 220, 0))
    draw.text((4, 2), title, fill=(0, 255, 255))
    return np.asarray(pil)


def panel(images: list[np.ndarray], *, height: int = 256, gap: int = 4) -> np.ndarray:
    """Concatenate RGB images side by side, each resized to ``height`` keeping its aspect ratio."""
    from PIL import Image

    tiles = []
    for img in images:
        h, w = img.shape[:2]
        tiles.append(np.asarray(Image.fromarray(img).resize((max(1, round(w * height / h)), height), Image.BILINEAR)))
        tiles.append(np.zeros((height, gap, 3), np.uint8))
    return np.concatenate(tiles[:-1], axis=1)

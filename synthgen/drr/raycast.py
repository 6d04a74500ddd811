"""Line integrals of a volume along cone-beam rays: ``integral of value dl`` in value x mm.

Two methods, both differentiable with respect to the volume:

* ``"joseph"`` (default, fast): one bilinear sample per volume plane crossed,
  along the axis the rays follow most, times the ray's length between two
  planes (Joseph 1982). Error: interpolation only, second order in the voxel
  size; the median error on a voxelised ellipsoid is well under 1% (tests).
* ``"siddon"`` (exact): the exact length of each ray in every voxel it crosses
  (Siddon 1985), i.e. the exact integral of the piecewise-constant volume.

On CPU both run as parallel numba kernels whose memory is the output plus
one detector row of scratch per thread, whatever the detector size. On CUDA,
Joseph runs as batched ``grid_sample`` over chunks of planes (bounded by
``max_chunk_bytes``); Siddon runs on the CPU kernel and moves back.
Values outside the volume are zero: rays are clipped to its box.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import torch

from synthgen.drr import _kernels
from synthgen.errors import InputError

Method = Literal["joseph", "siddon"]

#: Detector rows per parallel task of the separable kernel (its scratch fits in L2).
_ROW_BLOCK = 16


@dataclasses.dataclass(frozen=True)
class RaySet:
    """Rays in the voxel space of a volume whose axes are permuted to ``perm`` (principal axis first).

    ``source`` (3,) and ``delta`` (rows, cols, 3) are voxel coordinates in the
    permuted order; ray ``(r, c)`` runs from ``source`` to ``source + delta[r, c]``
    (its pixel) and is ``length_mm[r, c]`` long in the world.
    """

    perm: tuple[int, int, int]
    source: np.ndarray
    delta: np.ndarray
    length_mm: np.ndarray


def voxel_rays(affine: np.ndarray, source_mm, targets_mm) -> RaySet:
    """Express world rays (source (3,), pixel targets (rows, cols, 3), RAS mm) in a volume's voxel space."""
    src = np.asarray(source_mm, dtype=np.float64)
    tgt = np.asarray(targets_mm, dtype=np.float64)
    if src.shape != (3,) or tgt.ndim != 3 or tgt.shape[-1] != 3:
        raise InputError(f"rays need a source (3,) and targets (rows, cols, 3), got {src.shape} and {tgt.shape}")
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    s = inv[:3, :3] @ src + inv[:3, 3]
    t = tgt @ inv[:3, :3].T + inv[:3, 3]
    d = t - s
    length = np.linalg.norm(tgt - src, axis=-1)
    principal = int(np.argmax(np.abs(d).reshape(-1, 3).mean(axis=0)))
    perm = (principal, *[a for a in range(3) if a != principal])
    return RaySet(perm, s[list(perm)].copy(), np.ascontiguousarray(d[..., list(perm)]), length)


class _NumbaProject(torch.autograd.Function):
    """Autograd wrapper of the CPU kernels: forward projection and its adjoint (back-projection)."""

    @staticmethod
    def forward(ctx, vol: torch.Tensor, kind: str, args: tuple) -> torch.Tensor:  # type: ignore[override]
        v = vol.detach().numpy()
        rows, cols = args[-1].shape
        out = np.zeros((rows, cols, v.shape[-1]), dtype=np.float32)
        if kind == "separable":
            _kernels.separable_forward(v, *args, out, _ROW_BLOCK)
        else:
            getattr(_kernels, f"{kind}_forward")(v, *args, out)
        ctx.kind, ctx.args, ctx.shape = kind, args, v.shape
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        grad = np.zeros(ctx.shape, dtype=np.float32)
        g = np.ascontiguousarray(grad_out.detach().to(torch.float32).numpy())
        getattr(_kernels, f"{ctx.kind}_adjoint")(g, *ctx.args, grad)
        return torch.from_numpy(grad), None, None


def _cpu_plan(rays: RaySet, n_a: int, method: Method) -> tuple[str, tuple, tuple[int, int, int]]:
    """Choose the CPU kernel; returns (kernel kind, its arguments, the volume layout it reads)."""

    if method == "siddon":
        # Siddon walks each ray voxel by voxel: with the ray's main axis last in memory, most of its
        # steps move to a neighbouring address instead of jumping a whole plane (1.8x faster).
        order = [1, 2, 0]
        layout = tuple(rays.perm[i] for i in order)
        delta = np.ascontiguousarray(rays.delta[..., order])
        return "siddon", (rays.source[order].copy(), delta, rays.length_mm), layout  # type: ignore[return-value]
    plan = _kernels.joseph_plan(rays.source, rays.delta, rays.length_mm, n_a)
    sep = _kernels.separable_plan(plan)
    if sep is None:
        return "joseph", plan, rays.perm
    swap, *rest = sep
    a, b, c = rays.perm
    return "separable", (*rest, plan[-1]), ((a, c, b) if swap else rays.perm)


def _joseph_torch(vol: torch.Tensor, rays: RaySet, *, max_chunk_bytes: int) -> torch.Tensor:
    """Joseph's method with ``grid_sample`` over chunks of planes; vol is (n_a, n_b, n_c, C)."""
    import torch.nn.functional as F

    dev, n_a, n_b, n_c, n_ch = vol.device, *vol.shape
    planes = vol.permute(0, 3, 1, 2)  # (n_a, C, n_b, n_c)
    s = torch.as_tensor(rays.source, dtype=torch.float64, device=dev)
    d = torch.as_tensor(rays.delta, dtype=torch.float64, device=dev)
    rows, cols = d.shape[:2]
    per_plane = rows * cols * (3 + n_ch) * 4
    chunk = max(1, min(n_a, max_chunk_bytes // max(per_plane, 1)))
    acc = torch.zeros(n_ch, rows, cols, dtype=vol.dtype, device=dev)
    scale_b = 2.0 / max(n_b - 1, 1)
    scale_c = 2.0 / max(n_c - 1, 1)
    for m0 in range(0, n_a, chunk):
        m = torch.arange(m0, min(n_a, m0 + chunk), dtype=torch.float64, device=dev)
        t = (m[:, None, None] - s[0]) / d[None, ..., 0]  # (M, rows, cols)
        inside = (t >= 0) & (t <= 1)
        pb = s[1] + t * d[None, ..., 1]
        pc = s[2] + t * d[None, ..., 2]
        grid = torch.stack([pc * scale_c - 1, pb * scale_b - 1], dim=-1).to(vol.dtype)
        samples = F.grid_sample(planes[m0 : m0 + len(m)], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        acc = acc + (samples * inside[:, None].to(vol.dtype)).sum(dim=0)
    step = torch.as_tensor(rays.length_mm, device=dev) / d[..., 0].abs()
    return (acc * step.to(vol.dtype)).permute(1, 2, 0)


def project_volume(
    values: torch.Tensor,
    affine: np.ndarray,
    source_mm,
    targets_mm,
    *,
    method: Method = "joseph",
    layout_cache: dict | None = None,
    max_chunk_bytes: int = 256 * 2**20,
) -> torch.Tensor:
    """Line integrals of ``values`` (C, I, J, K) or (I, J, K) along rays from ``source_mm`` to each pixel.

    Args:
        values: per-mm quantities on the volume grid (e.g. mu in 1/mm, density in g/cm^3).
        affine: the volume's voxel -> RAS mm affine.
        source_mm: (3,) world position of the X-ray source.
        targets_mm: (rows, cols, 3) world positions of the pixel centres.
        method: ``"joseph"`` (fast, interpolating) or ``"siddon"`` (exact path lengths).
        layout_cache: a dict kept by the caller across views of the same volume: the
            channel-last copy each view reads is made once per axis order, not per view
            (ignored when ``values`` requires grad).
        max_chunk_bytes: bound on the scratch memory of the CUDA path.
    Returns:
        (C, rows, cols) float32 tensor (or (rows, cols) for a 3D input) of integrals in value x mm.
    """
    if method not in ("joseph", "siddon"):
        raise InputError(f"method must be 'joseph' or 'siddon', got {method!r}")
    squeeze = values.ndim == 3
    vol = values[None] if squeeze else values
    if vol.ndim != 4 or 0 in vol.shape:
        raise InputError(f"values must be a non-empty (C, I, J, K) or (I, J, K) tensor, got shape {tuple(values.shape)}")
    rays = voxel_rays(affine, source_mm, targets_mm)
    cuda_joseph = vol.device.type != "cpu" and method == "joseph"
    if cuda_joseph:
        kind, args, layout = "torch", (), rays.perm
    else:
        kind, args, layout = _cpu_plan(rays, vol.shape[1 + rays.perm[0]], method)
    laid = _laid_out(vol, layout, layout_cache, cpu=not cuda_joseph)
    if cuda_joseph:
        out = _joseph_torch(laid, rays, max_chunk_bytes=max_chunk_bytes)
    else:
        out = _NumbaProject.apply(laid, kind, args).to(vol.device)
    out = out.permute(2, 0, 1)
    return out[0] if squeeze else out


def _laid_out(vol: torch.Tensor, layout: tuple[int, int, int], cache: dict | None, *, cpu: bool) -> torch.Tensor:
    """``vol`` (C, I, J, K) as a contiguous float32 (n_a, n_b, n_c, C) tensor in the given axis order."""
    key = (layout, cpu)
    if cache is not None and not vol.requires_grad and key in cache:
        return cache[key]
    laid = vol.to(torch.float32).permute(*[p + 1 for p in layout], 0)
    laid = (laid.cpu() if cpu else laid).contiguous()
    if cache is not None and not vol.requires_grad:
        cache[key] = laid
    return laid


def project_labels(
    labels: np.ndarray,
    affine: np.ndarray,
    source_mm,
    targets_mm,
    *,
    ids: list[int],
    layout_cache: dict | None = None,
) -> np.ndarray:
    """Exact thickness (mm) of each structure in ``ids`` along every ray: (len(ids), rows, cols) float32.

    ``layout_cache`` keeps the transposed label map between views, as for `project_volume`."""

    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise InputError(f"label map must be 3D, got shape {lab.shape}")
    rays = voxel_rays(affine, source_mm, targets_mm)
    order = [1, 2, 0]  # the rays' main axis last in memory, as for `siddon` volumes
    layout = tuple(rays.perm[i] for i in order)
    key = ("labels", layout)
    if layout_cache is not None and key in layout_cache:
        lab = layout_cache[key]
    else:
        lab = np.ascontiguousarray(np.transpose(lab, layout))
        if layout_cache is not None:
            layout_cache[key] = lab
    source, delta = rays.source[order].copy(), np.ascontiguousarray(rays.delta[..., order])
    top = int(max(lab.max(initial=0), max(ids, default=0)))
    lut = np.full(top + 1, -1, dtype=np.int64)
    for ch, i in enumerate(ids):
        if i < 0:
            raise InputError(f"label ids must be >= 0, got {i}")
        lut[i] = ch
    out = np.zeros((len(ids), *rays.delta.shape[:2]), dtype=np.float32)
    if ids:
        _kernels.siddon_labels(lab, lut, source, delta, rays.length_mm, out)
    return out

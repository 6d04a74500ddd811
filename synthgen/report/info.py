"""What `synthgen info` shows about a volume: geometry, value range, label summary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from synthgen.anatomy.ops import StructureStats, format_summary, summarize
from synthgen.volume import Volume


def looks_like_label_map(volume: Volume, *, max_ids: int = 512) -> bool:
    """Heuristic for files of unknown kind: non-negative integers with few distinct values."""
    if volume.kind == "label":
        return True
    arr = volume.numpy()
    if not np.issubdtype(arr.dtype, np.integer) or arr.size == 0:
        return False
    lo, hi = int(arr.min()), int(arr.max())
    return lo >= 0 and hi < max_ids and np.unique(arr).size <= 256


def describe(volume: Volume, *, voxel: Sequence[int] | None = None) -> dict[str, Any]:
    """A JSON-able description of ``volume`` (and the world position of ``voxel`` if given)."""
    arr = volume.numpy()
    info: dict[str, Any] = {
        "source": volume.source,
        "format": volume.meta.get("format"),
        "kind": volume.kind,
        "shape": list(volume.shape),
        "spacing_mm": [round(float(s), 6) for s in volume.spacing],
        "orientation": volume.orientation,
        "origin_mm": [round(float(o), 4) for o in volume.origin],
        "direction": np.round(volume.direction, 6).tolist(),
        "dtype": str(arr.dtype),
        "units": volume.units,
        "modality": volume.modality,
        "synthetic": volume.synthetic,
        "field_of_view_mm": [round(float(s), 2) for s in np.asarray(volume.shape) * volume.spacing],
    }
    if arr.size:
        info["range"] = [float(arr.min()), float(arr.max())]
        if volume.kind == "intensity":
            info["mean"] = float(arr.mean(dtype=np.float64))
    if voxel is not None:
        ijk = [int(v) for v in voxel]
        info["voxel"] = ijk
        info["voxel_world_mm"] = [round(float(x), 4) for x in volume.voxel_to_world(ijk)]
        if all(0 <= v < s for v, s in zip(ijk, volume.shape)):
            info["voxel_value"] = float(arr[tuple(ijk)])
    if volume.kind == "label":

        info["structures"] = [
            {"id": s.id, "name": s.name, "voxels": s.voxels, "ml": round(s.volume_ml, 3)} for s in summarize(volume)
        ]
    return info


def format_description(info: dict[str, Any]) -> str:
    """Human-readable text of `describe`'s dict."""
    x = "x".join
    lines = [
        f"source       {info['source']}",
        f"format       {info['format']}   kind {info['kind']}   dtype {info['dtype']}   units {info['units']}",
        f"shape        {x(str(s) for s in info['shape'])} voxels",
        f"spacing      {x(f'{s:.4g}' for s in info['spacing_mm'])} mm",
        f"field        {x(f'{s:.1f}' for s in info['field_of_view_mm'])} mm",
        f"orientation  {info['orientation']} (RAS+ world; voxel axes i, j, k point to these directions)",
        f"origin       ({', '.join(f'{o:.3f}' for o in info['origin_mm'])}) mm, centre of voxel (0, 0, 0)",
        f"synthetic    {'yes' if info['synthetic'] else 'no'}",
    ]
    if "range" in info:
        lo, hi = info["range"]
        unit = info["units"]
        mean = f", mean {info['mean']:.1f}" if "mean" in info else ""
        lines.append(f"range        {lo:g} .. {hi:g} {unit}{mean}")
    if "voxel" in info:
        val = f" = {info['voxel_value']:g}" if "voxel_value" in info else " (outside the grid)"
        world = ", ".join(f"{c:.3f}" for c in info["voxel_world_mm"])
        lines.append(f"voxel        {tuple(info['voxel'])} -> ({world}) mm{val}")
    if "structures" in info:

        stats = [StructureStats(r["id"], r["name"], r["voxels"], r["ml"]) for r in info["structures"]]
        lines.append("structures")
        lines.extend("  " + row for row in format_summary(stats).splitlines())
    return "\n".join(lines)

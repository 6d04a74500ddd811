"""The `synthgen drr` job: views of one CT rendered and written with their labels and records."""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from pathlib import Path

import numpy as np

from synthgen.config import save_config
from synthgen.drr.geometry import Projection, parse_view
from synthgen.drr.physics import to_uint16
from synthgen.drr.render import DRR, DRRRenderer, XRaySettings
from synthgen.errors import InputError
from synthgen.files.atomic import atomic_path, check_writable
from synthgen.files.safepath import safe_name
from synthgen.io.record import Record
from synthgen.memory import format_gib, memory_shortfall
from synthgen.report.montage import label_colors, save_png
from synthgen.vocab import Vocabulary
from synthgen.volume import Volume

#: The ``generator`` of every view's record.
GENERATOR = "synthgen.drr"


@dataclasses.dataclass
class DRRConfig:
    """Schema of configs/drr*.yaml and of the ``synthgen drr`` options.

    ``views``: named views (PA, AP, LAT, RLAT) or C-arm angles (LAO30, RAO20_CAU10, ...);
    ``geometry``: JSON files with explicit world geometries (see README), rendered too.
    ``spacing_mm`` None fits the volume in the detector; ``sid_mm`` None is the view's default.
    """

    views: list[str] = dataclasses.field(default_factory=lambda: ["PA"])
    geometry: list[str] = dataclasses.field(default_factory=list)
    size: list[int] = dataclasses.field(default_factory=lambda: [512, 512])
    spacing_mm: float | None = None
    sdd_mm: float = 1020.0
    sid_mm: float | None = None
    seed: int = 0
    physics: XRaySettings = dataclasses.field(default_factory=XRaySettings)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `InputError` for any value out of range; the physics validates itself (`XRaySettings`).

        Also run by `projections`, as the config is mutable.
        """
        size = list(self.size)
        if len(size) not in (1, 2) or not all(_is_int(n) and 1 <= n <= MAX_DETECTOR_PIXELS for n in size):
            raise InputError(f"size must be 1 or 2 ints (rows, cols) in 1..{MAX_DETECTOR_PIXELS}, got {size}"
                             + (_would_need(size[0], size[-1]) if size else ""))
        if self.spacing_mm is not None and not _positive(self.spacing_mm, 1e3):
            raise InputError(f"spacing_mm must be 2 positive floats in mm (one number here: square pixels, "
                             f"at most 1000), got {self.spacing_mm!r}")
        if not _positive(self.sdd_mm, 1e5):
            raise InputError(f"sdd_mm must be a positive number of mm (at most 100000), got {self.sdd_mm!r}")
        if self.sid_mm is not None and not (_positive(self.sid_mm, 1e5) and self.sid_mm < self.sdd_mm):
            raise InputError(f"sid_mm must be a positive number of mm below sdd_mm ({self.sdd_mm:g}), got {self.sid_mm!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.physics, XRaySettings):
            raise InputError(f"physics must be XRaySettings, got {type(self.physics).__name__}")


#: Largest detector side in pixels (a 16384^2 view is ~40 GiB to render).
MAX_DETECTOR_PIXELS = 16384
#: Memory of a rendering per detector pixel, measured on CPU (rays, material line integrals,
#: intensity, noise, scatter, display: ~140 B), and per pixel with projected labels (~210 B
#: with 55 structures); rounded up: this is to refuse what cannot work, not to plan.
BYTES_PER_PIXEL = 160
BYTES_PER_PIXEL_LABELS = 256


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _positive(v: object, high: float) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and 0 < v <= high


def _would_need(rows: object, cols: object) -> str:
    """``" (a 100000x100000 view would need about 1,490 GiB of memory)"`` when that is 1 GiB or more, else ``""``."""

    if not (_is_int(rows) and _is_int(cols)) or min(rows, cols) < 1:
        return ""
    need = rows * cols * BYTES_PER_PIXEL
    return f" (a {rows}x{cols} view would need about {format_gib(need)} of memory)" if need >= 2**30 else ""


def check_memory(views: list[Projection], *, labels: bool) -> None:
    """Raise `InputError` naming the first view whose rendering cannot fit in this machine's memory."""

    per_px = BYTES_PER_PIXEL_LABELS if labels else BYTES_PER_PIXEL
    for p in views:
        rows, cols = (int(n) for n in p.size)
        need = rows * cols * per_px
        short = memory_shortfall(need)
        if short:
            raise InputError(f"view {p.name}: {rows}x{cols} detector pixels would need about {format_gib(need)} "
                             f"to render, {short}; use a smaller detector size")


def projections(config: DRRConfig, ct: Volume) -> list[Projection]:
    """The geometries a config asks for: its named views, then its geometry files."""
    config.validate()
    if not config.views and not config.geometry:
        raise InputError("no view to render: give --view and/or --geometry")
    size = (config.size[0], config.size[-1])
    kw = {"size": size, "spacing_mm": config.spacing_mm, "sdd_mm": config.sdd_mm}
    if config.sid_mm is not None:
        kw["sid_mm"] = config.sid_mm
    out = [parse_view(v, ct, **kw) for v in config.views]
    for g in config.geometry:
        p = Projection.from_json(g)
        rows, cols = (int(n) for n in p.size)
        if max(rows, cols) > MAX_DETECTOR_PIXELS:
            raise InputError(f"{g}: size {rows}x{cols} pixels; at most {MAX_DETECTOR_PIXELS} per side"
                             + _would_need(rows, cols))
        p.check_faces(ct)
        out.append(p)
    names = [safe_name(p.name, what="view name") for p in out]  # each names the view's files
    if len(set(names)) != len(names):
        raise InputError(f"two views share a name ({', '.join(names)}); give geometry files distinct names")
    return out


def view_paths(stem: str, out_dir: str | os.PathLike, *, labels: bool) -> dict[str, Path]:
    """The files `write_drr` writes for view ``stem`` (the label files when ``labels``)."""
    out = Path(out_dir)
    paths = {
        "display": out / f"{stem}.png",
        "line_integral": out / f"{stem}_line_integral.npy",
        "intensity": out / f"{stem}_intensity.npy",
        "record": out / f"{stem}.json",
    }
    if labels:
        paths["labels"] = out / f"{stem}_labels.npz"
        paths["overlay"] = out / f"{stem}_overlay.png"
    return paths


def write_drr(drr: DRR, out_dir: str | os.PathLike, *, record: Record, overwrite: bool = False) -> dict[str, Path]:
    """Write one view: ``<view>.png`` (16-bit display), ``<view>_line_integral.npy``,
    ``<view>_intensity.npy`` (float32), ``<view>_labels.npz`` + ``<view>_overlay.png`` when
    labels were projected, and ``<view>.json``: ``record`` with the view's geometry, projection
    matrix, physics, spectrum and seed (`DRR.record`) as details, naming the files written.
    """

    paths = view_paths(drr.projection.name, out_dir, labels=bool(drr.masks))
    for p in paths.values():
        check_writable(p, overwrite=overwrite)
    save_png(to_uint16(drr.display.detach().cpu()).astype(np.uint16), paths["display"], overwrite=overwrite)
    for key, t in (("line_integral", drr.line_integral), ("intensity", drr.intensity)):
        with atomic_path(paths[key], overwrite=overwrite) as tmp, open(tmp, "wb") as fh:
            np.save(fh, t.detach().cpu().numpy().astype(np.float32))
    if drr.masks:
        names = sorted(drr.masks)
        with atomic_path(paths["labels"], overwrite=overwrite) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(
                fh,
                names=np.array(names),
                masks=np.stack([drr.masks[n] for n in names]),
                thickness_mm=np.stack([drr.thickness_mm[n] for n in names]),
            )
        save_png(overlay(drr), paths["overlay"], overwrite=overwrite)
    view_record = record.with_details(**drr.record()).with_outputs(p for k, p in paths.items() if k != "record")
    view_record.write(paths["record"], overwrite=overwrite)
    return paths


def overlay(drr: DRR, *, alpha: float = 0.35) -> np.ndarray:
    """RGB uint8 picture of the display image with every projected structure tinted in its colour."""

    gray = (drr.display.detach().cpu().numpy() * 255).astype(np.float32)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    vocab_ids = _ids_by_name(drr)
    colors = label_colors(max(vocab_ids.values(), default=0) + 1).astype(np.float32)
    for name, mask in sorted(drr.masks.items(), key=lambda kv: -kv[1].sum()):
        if name == "body":
            continue
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colors[vocab_ids[name]]
    return rgb.clip(0, 255).astype(np.uint8)


def _ids_by_name(drr: DRR) -> dict[str, int]:
    vocab = Vocabulary.default()
    return {n: (vocab.id(n) if n in vocab else 1 + k) for k, n in enumerate(sorted(drr.masks))}


def run(
    ct: Volume,
    config: DRRConfig,
    out_dir: str | os.PathLike,
    *,
    labels: Volume | None = None,
    inputs: list[str | os.PathLike] = (),  # type: ignore[assignment]
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[dict[str, dict[str, Path]], Path]:
    """Render every view of ``config`` into ``out_dir`` with a provenance record per view (``config``
    as parameters, ``inputs`` and the geometry files hashed, the view's geometry and physics as
    details), and the resolved ``config.yaml`` beside them; returns (paths per view, config path)."""
    from tqdm.auto import tqdm


    config_path = check_writable(Path(out_dir) / "config.yaml", overwrite=overwrite)  # also: no parent is a file
    views = projections(config, ct)  # every view's geometry, size and memory: before anything is written
    check_memory(views, labels=labels is not None)
    for proj in views:
        for p in view_paths(proj.name, out_dir, labels=labels is not None).values():
            check_writable(p, overwrite=overwrite)
    # the run's settings and inputs (geometry files too) by hash; each view adds its own geometry and seed
    record = Record.create(GENERATOR, parameters=dataclasses.asdict(config), seed=config.seed,
                           inputs=[*inputs, *config.geometry])
    renderer = DRRRenderer(ct, labels=labels, bone_hu=config.physics.bone_hu)
    written = {}
    for k, proj in enumerate(tqdm(views, desc="drr", unit="view", disable=not progress)):
        drr = renderer.render(proj, config.physics, seed=config.seed + k)
        written[proj.name] = write_drr(drr, out_dir, overwrite=overwrite, record=record)
    return written, save_config(config, config_path, overwrite=overwrite)

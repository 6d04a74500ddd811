"""CT segmentation dataset -> synthetic X-ray (DRR) segmentation dataset, nnU-Net v2 layout.

`xray_dataset(ds, out, config=...)` reads every case of a 3D segmentation dataset (any layout
`read_dataset` knows), renders the configured views of each CT with the DRR engine
(`synthgen.drr`: default a PA + lateral chest-radiograph geometry), projects the label map
with the same geometry and writes a 2D dataset under ``out``::

    out/imagesTr/<case>_<view>_0000.png   16-bit grey DRR, display form (bone bright by default)
    out/labelsTr/<case>_<view>.png        8-bit, the source dataset's own class values
    out/dataset.json                      nnU-Net v2 keys + a "synthgen" block (synthetic, source)
    out/synthetic_manifest.jsonl          one line per image: case, view, source sha256s, geometry, physics
    out/preview.png                       the first cases' DRRs with their projected labels tinted

Images are displayed as radiographs are read: patient's right on the image's left, head at the
top, whatever the CT's voxel orientation (the geometry works in RAS+ world millimetres).

Overlap rule. A structure covers a pixel when its path length along that pixel's ray exceeds
``physics.mask_threshold_mm``. Where several structures cover a pixel, the pixel takes the class
with the **smallest projected area in that view** (fewest covered pixels), so small structures
(lesions, vessels) are drawn over the organs they lie in or in front of; equal areas go to the
higher class value. Each structure's full projection is also shown in the preview.

Writing. Nothing existing is replaced unless ``overwrite=True``: every target is checked before
the first CT is rendered. Each file is written atomically, ``dataset.json`` last, so a folder
without ``dataset.json`` is an interrupted run. Nothing is written outside ``out``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from synthgen._version import __version__
from synthgen.drr.job import DRRConfig, overlay, projections
from synthgen.drr.physics import to_uint16
from synthgen.drr.render import DRRRenderer
from synthgen.errors import InputError, OverwriteError
from synthgen.expand.dataset import Dataset, Item, read_dataset
from synthgen.files.atomic import write_text
from synthgen.io import read_pair
from synthgen.io.record import Record, sha256_file, write_json
from synthgen.report.montage import save_png
from synthgen.vocab import Vocabulary

GENERATOR = "synthgen.expand.xray"
OVERLAP_RULE = ("smallest projected area wins: among structures whose path length exceeds "
                "mask_threshold_mm at a pixel, the one covering the fewest pixels in that view "
                "(ties: the higher class value)")


@dataclasses.dataclass
class XRayDatasetConfig(DRRConfig):
    """Schema of configs/xray_dataset.yaml (the `xray_dataset` recipe task): `DRRConfig` (views,
    explicit ``geometry`` files, detector ``size`` / ``spacing_mm``, ``sdd_mm``, ``sid_mm``, ``seed``,
    ``physics``), every view rendered for every case, plus ``preview_cases``, how many cases the
    preview montage shows. Image ``k`` of case ``i`` gets noise seed ``seed + i * len(views) + k``;
    ``physics.mask_threshold_mm`` sets label coverage.
    """

    views: list[str] = dataclasses.field(default_factory=lambda: ["PA", "LAT"])
    preview_cases: int = 4

    def drr_config(self) -> DRRConfig:
        """The `synthgen.drr.job.DRRConfig` rendering one case."""
        return DRRConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DRRConfig)})


@dataclasses.dataclass(frozen=True)
class XRayDatasetOutput:
    """What `xray_dataset` wrote: the dataset folder and its index files, images and labels in order."""

    root: Path
    dataset_json: Path
    manifest: Path
    preview: Path
    images: tuple[Path, ...]
    labels: tuple[Path, ...]


def compose_labels(masks: Mapping[int, np.ndarray]) -> np.ndarray:
    """One (rows, cols) uint8 label image from per-class boolean masks ``{class value: mask}``.

    Overlap rule (module docstring): the class covering the fewest pixels is painted last, so it
    wins where masks overlap; equal areas go to the higher class value. Background is 0.
    """
    if not masks:
        raise InputError("compose_labels needs at least one mask")
    shapes = {np.shape(m) for m in masks.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise InputError(f"masks must be 2D and of one shape, got shapes {sorted(shapes)}")
    bad = [v for v in masks if not 0 < int(v) <= 255]
    if bad:
        raise InputError(f"class values must be 1..255 for an 8-bit label image, got {bad}")
    out = np.zeros(next(iter(shapes)), dtype=np.uint8)
    for value in sorted(masks, key=lambda v: (-int(np.count_nonzero(masks[v])), int(v))):
        out[np.asarray(masks[value], dtype=bool)] = value
    return out


def xray_dataset(
    ds: Dataset | str | os.PathLike,
    out: str | os.PathLike,
    *,
    config: XRayDatasetConfig | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> XRayDatasetOutput:
    """Render every case of a CT segmentation dataset into a 2D X-ray dataset under ``out``.

    Args:
        ds: a `Dataset` from `read_dataset`, or a path it reads (nnU-Net/MSD folder, datalist, CSV).
        out: the output folder (created); layout and overlap rule in the module docstring.
        config: views, detector and physics; default `XRayDatasetConfig()`.
        progress: show a progress bar over cases.
        overwrite: replace files a previous run wrote.

    Raises:
        InputError: a classification or empty dataset, class values above 255, a bad view or
            geometry, existing outputs without ``overwrite`` (`OverwriteError`), or a case that
            cannot be read or rendered.
    """
    from tqdm.auto import tqdm


    cfg = config or XRayDatasetConfig()
    if not isinstance(cfg, XRayDatasetConfig):
        raise InputError(f"config must be an XRayDatasetConfig, got {type(cfg).__name__}")
    if cfg.preview_cases < 1:
        raise InputError(f"preview_cases must be >= 1, got {cfg.preview_cases}")
    ds = _check_dataset(ds)
    root = Path(out)
    vocab = _vocabulary(ds)
    drr_cfg = cfg.drr_config()
    first = _read_case(ds.items[0], vocab)
    views = [p.name for p in projections(drr_cfg, first[0])]
    plan = _plan(ds.items, views, root, overwrite=overwrite)
    lines, tiles, images, labels = [], [], [], []
    for i, item in enumerate(tqdm(ds.items, desc="xray dataset", unit="case", disable=not progress)):
        ct, lab = first if i == 0 else _read_case(item, vocab)
        first = None  # keep one case in memory at a time
        source = _source_hashes(item)
        renderer = _renderer(ct, lab, cfg)
        for k, proj in enumerate(projections(drr_cfg, ct)):
            seed = cfg.seed + i * len(views) + k
            drr = renderer.render(proj, cfg.physics, seed=seed)
            image_path, label_path = plan[(item.id, proj.name)]
            label_img = _label_image(drr, ds, item)
            _write_pair(drr, label_img, image_path, label_path, overwrite=overwrite)
            lines.append(_manifest_line(item, drr, label_img, ds, source, root, image_path, label_path))
            images.append(image_path)
            labels.append(label_path)
            if i < cfg.preview_cases:
                tiles.append(_overlay(drr))
    manifest = _write_manifest(lines, root / "synthetic_manifest.jsonl", overwrite=overwrite)
    preview = _write_preview(tiles, len(views), root / "preview.png", overwrite=overwrite)
    meta = _write_dataset_json(ds, cfg, len(images), root / "dataset.json", overwrite=overwrite)
    return XRayDatasetOutput(root, meta, manifest, preview, tuple(images), tuple(labels))


# ------------------------------------------------------------------ input checks
def _check_dataset(ds: Dataset | str | os.PathLike) -> Dataset:
    if not isinstance(ds, Dataset):
        ds = read_dataset(ds)
    where = f"{ds.root} ({ds.layout})"
    if ds.task != "seg":
        raise InputError(f"{where}: is a classification dataset; X-ray labels need a segmentation dataset "
                         "(image + label map per case)")
    if not ds.items:
        raise InputError(f"{where}: has no usable case to render")
    if not any(v != 0 for v in ds.classes):
        raise InputError(f"{where}: declares no foreground class (labels: {ds.classes})")
    big = sorted(v for v in ds.classes if not 0 <= v <= 255)
    if big:
        raise InputError(f"{where}: class values {big} do not fit the 8-bit label PNGs (expected 0..255)")
    ids = [it.id for it in ds.items]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputError(f"{where}: case ids repeat ({', '.join(dup)}); output file names would collide")
    return ds


def _vocabulary(ds: Dataset):
    """The source dataset's classes as a `Vocabulary`, so projected structures carry its names."""

    return Vocabulary.from_mapping({v: n for v, n in ds.classes.items() if v != 0}, source=str(ds.index_file or ds.root))


def _plan(items: Sequence[Item], views: list[str], root: Path, *, overwrite: bool) -> dict[tuple[str, str], tuple[Path, Path]]:
    """Every (case, view) -> (image, label) path, checked to lie in ``root`` and to be writable."""
    images, labels = root / "imagesTr", root / "labelsTr"
    plan = {(it.id, v): (images / f"{it.id}_{v}_0000.png", labels / f"{it.id}_{v}.png") for it in items for v in views}
    targets = [p for pair in plan.values() for p in pair]
    targets += [root / n for n in ("dataset.json", "synthetic_manifest.jsonl", "preview.png")]
    inside = root.resolve()
    for p in targets:
        if p.resolve().parent not in (inside, inside / "imagesTr", inside / "labelsTr"):
            raise InputError(f"case id or view name would write outside {root}: {p}")
    existing = [p for p in targets if p.exists()]
    if existing and not overwrite:
        raise OverwriteError(f"{root}: already holds {len(existing)} of this run's files (e.g. "
                             f"{existing[0].relative_to(root)}); refusing to overwrite them (pass overwrite=True / --overwrite)")
    wanted = set(targets)
    stale = sorted(p for d in (images, labels) if d.is_dir() for p in d.iterdir() if p not in wanted and not p.name.startswith("."))
    if stale:
        raise InputError(f"{root}: imagesTr/labelsTr hold {len(stale)} file(s) this run does not write (e.g. "
                         f"{stale[0].relative_to(root)}); they would mix into the dataset: use an empty folder")
    for d in (images, labels):
        d.mkdir(parents=True, exist_ok=True)
    return plan


# ------------------------------------------------------------------ one case
def _read_case(item: Item, vocab):
    return read_pair(item.image, item.label, vocab=vocab)


def _renderer(ct, lab, cfg: XRayDatasetConfig):
    return DRRRenderer(ct, labels=lab, bone_hu=cfg.physics.bone_hu)


def _source_hashes(item: Item) -> dict[str, dict[str, str]]:
    return {role: {"name": p.name, "sha256": sha256_file(p)} for role, p in (("image", item.image), ("label", item.label))}


def _label_image(drr, ds: Dataset, item: Item) -> np.ndarray:
    """The view's projected masks (keyed by the dataset's class names) as one uint8 class-value image."""
    value_of = {n: v for v, n in ds.classes.items() if v != 0}
    unknown = sorted(set(drr.masks) - set(value_of))
    if unknown:
        raise InputError(f"{item.label}: label values not declared by the dataset: {unknown}")
    masks = {value_of[n]: m for n, m in drr.masks.items()}
    if not masks:
        return np.zeros(drr.projection.size, dtype=np.uint8)
    return compose_labels(masks)


def _write_pair(drr, label_img: np.ndarray, image_path: Path, label_path: Path, *, overwrite: bool) -> None:
    save_png(to_uint16(drr.display.detach().cpu()).astype(np.uint16), image_path, overwrite=overwrite)
    save_png(label_img, label_path, overwrite=overwrite)


def _manifest_line(item, drr, label_img, ds, source, root, image_path, label_path) -> dict:
    rec = drr.record()
    counts = np.bincount(label_img.ravel(), minlength=1)
    return {
        "case": item.id,
        "view": drr.projection.name,
        "image": image_path.relative_to(root).as_posix(),
        "label": label_path.relative_to(root).as_posix(),
        "synthetic": True,
        "generator": GENERATOR,
        "synthgen_version": __version__,
        "source": source,
        "geometry": rec["geometry"],
        "physics": rec["physics"],
        "spectrum": rec["spectrum"],
        "seed": rec["seed"],
        "label_pixels": {ds.classes[v]: int(c) for v, c in enumerate(counts) if v and c},
        "conventions": rec["conventions"],
    }


def _overlay(drr) -> np.ndarray:
    return overlay(drr)


# ------------------------------------------------------------------ dataset files
def _write_manifest(lines: list[dict], path: Path, *, overwrite: bool) -> Path:
    return write_text(path, "".join(json.dumps(x) + "\n" for x in lines), overwrite=overwrite)


def _write_preview(tiles: list[np.ndarray], per_row: int, path: Path, *, overwrite: bool) -> Path:
    """Overlay tiles in a grid, one row per case, one column per view, 4-pixel black gaps."""

    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    rows = -(-len(tiles) // per_row)
    gap = 4
    canvas = np.zeros((rows * (h + gap) - gap, per_row * (w + gap) - gap, 3), dtype=np.uint8)
    for n, t in enumerate(tiles):
        r, c = divmod(n, per_row)
        canvas[r * (h + gap): r * (h + gap) + t.shape[0], c * (w + gap): c * (w + gap) + t.shape[1]] = t
    return save_png(canvas, path, overwrite=overwrite)


def _write_dataset_json(ds: Dataset, cfg: XRayDatasetConfig, n_images: int, path: Path, *, overwrite: bool) -> Path:
    """nnU-Net's ``dataset.json`` with a ``synthgen`` block: the run's provenance (a `Record`'s
    generator, version, time and parameters, under nnU-Net-compatible keys) and the source."""
    record = Record.create(GENERATOR, parameters=dataclasses.asdict(cfg), seed=cfg.seed)
    meta = {
        "channel_names": {"0": "X-ray"},
        "labels": {name: value for value, name in sorted(ds.classes.items())},
        "numTraining": n_images,
        "file_ending": ".png",
        "description": f"Synthetic X-ray (DRR) views of {ds.root.name}, labels projected from its 3D label maps",
        "synthgen": {
            "synthetic": True,
            "kind": "digitally reconstructed radiographs (DRR) rendered from CT",
            "source_layout": ds.layout,
            "source_dataset": ds.root.name,
            "source_cases": len(ds.items),
            "source_cases_skipped": [where for where, _ in ds.problems],
            "views": list(cfg.views),
            "overlap_rule": OVERLAP_RULE,
            "manifest": "synthetic_manifest.jsonl",
            "generator": GENERATOR,
            "synthgen_version": record.synthgen_version,
            "created_utc": record.created_utc,
            "config": record.parameters,
        },
    }
    return write_json(meta, path, overwrite=overwrite)


__all__ = ["OVERLAP_RULE", "XRayDatasetConfig", "XRayDatasetOutput", "compose_labels", "xray_dataset"]

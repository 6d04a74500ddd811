"""Training-set readers: nnU-Net / Medical Segmentation Decathlon, MONAI datalist JSON, CSV.

`read_dataset(path)` recognises the layout and returns a `Dataset`: its items (image, label
file or class name), its class names, its task (``seg`` or ``cls``) and every problem found,
item by item (missing or unreadable file, an image with NaN/inf voxels or not one 3D volume, a
label map that is not integers >= 0 or on another grid than its image, label values or class
names the dataset does not declare). Every file's voxels are read once here. Items with a problem are kept out of
``items`` and listed in ``problems``; nothing stops at the first one.

Layouts:

- **nnU-Net v2 / MSD** (a folder): ``imagesTr/`` + ``labelsTr/`` + ``dataset.json``. Labels come
  from ``"labels"`` as nnU-Net's ``{"name": id}`` or MSD's ``{"id": "name"}``; items from MSD's
  ``"training"`` list when present, else by file name (nnU-Net's ``CASE_0000.nii.gz`` channel
  suffix is matched to ``labelsTr/CASE.nii.gz``).
- **MONAI datalist** (a .json file): ``{"training": [{"image": ..., "label": ...}, ...]}``;
  paths relative to the file's folder (or ``"base_dir"``). A label that is a path makes it a
  segmentation set; a class name or integer makes it classification. Optional ``"labels"``
  declares class names.
- **CSV** (a .csv file) with columns ``image,label`` (classification: label is a class name)
  or ``image,mask`` (segmentation); paths relative to the file's folder.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

from synthgen.errors import InputError
from synthgen.io import as_label_map, read

LAYOUTS = ("nnunet", "datalist", "csv")
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


@dataclasses.dataclass(frozen=True)
class Item:
    """One training case: ``label`` is a label-map path (seg) and ``class_name`` a class (cls)."""

    id: str
    image: Path
    label: Path | None = None
    class_name: str | None = None


@dataclasses.dataclass
class Dataset:
    root: Path
    layout: str
    task: str  # "seg" | "cls"
    classes: dict[int, str]  # seg: label value -> name (0 = background); cls: index -> class name
    items: list[Item]
    problems: list[tuple[str, str]]  # (item id or file, message)
    index_file: Path | None  # dataset.json / datalist / CSV the items came from
    raw: Any = None  # the parsed index file, for writing an updated copy

    @property
    def class_names(self) -> list[str]:
        return [n for i, n in sorted(self.classes.items()) if not (self.task == "seg" and i == 0)]

    def summary(self) -> str:
        head = (f"{self.layout} dataset at {self.root}: {len(self.items)} usable {self.task} items, "
                f"{len(self.classes) - (1 if self.task == 'seg' else 0)} classes")
        if not self.problems:
            return head
        lines = [head, f"{len(self.problems)} item(s) with problems (left out):"]
        lines += [f"  {where}: {msg}" for where, msg in self.problems]
        return "\n".join(lines)


def _strip_image_suffix(name: str) -> str:
    for s in _IMAGE_SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def detect_layout(path: str | Path) -> str:
    p = Path(path)
    if p.is_dir():
        if (p / "imagesTr").is_dir():
            return "nnunet"
        raise InputError(f"{p}: a dataset folder needs imagesTr/ (+ labelsTr/, dataset.json); "
                         "for other layouts pass the datalist .json or the .csv file")
    if not p.exists():
        raise InputError(f"dataset not found: {p}")
    if p.suffix.lower() == ".json":
        return "datalist"
    if p.suffix.lower() == ".csv":
        return "csv"
    raise InputError(f"{p}: unknown dataset layout; expected a folder with imagesTr/, a MONAI datalist .json "
                     "or a .csv of image,label / image,mask")


SYNTH_PREFIX = "synth_"


def read_dataset(path: str | Path, *, check_grids: bool = True, include_synthetic: bool = False) -> Dataset:
    """Read a dataset in any supported layout (see module docstring).

    Cases synthgen added (ids starting ``synth_``) are left out unless ``include_synthetic``:
    an expansion plans from the real cases only, so running it again changes nothing.
    """
    layout = detect_layout(path)
    ds = {"nnunet": _read_nnunet, "datalist": _read_datalist, "csv": _read_csv}[layout](Path(path))
    if not include_synthetic:
        ds.items = [it for it in ds.items if not it.id.startswith(SYNTH_PREFIX)]
    _validate(ds, check_grids=check_grids)
    if not ds.items:
        raise InputError(ds.summary() + "\nno usable item left")
    return ds


# ------------------------------------------------------------------ nnU-Net / MSD
def _labels_from_json(labels: Any, where: str) -> dict[int, str]:
    if not isinstance(labels, dict) or not labels:
        raise InputError(f"{where}: 'labels' must be a non-empty mapping")
    out: dict[int, str] = {}
    for k, v in labels.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):  # nnU-Net v2: name -> id
            i, name = int(v), str(k)
        elif str(k).lstrip("-").isdigit():  # MSD: "id" -> name
            i, name = int(k), str(v)
        else:
            raise InputError(f"{where}: cannot read label entry {k!r}: {v!r} (expected name: id or \"id\": name)")
        out[i] = name
    out.setdefault(0, "background")
    return out


_JSON_KINDS = {list: "list", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def _read_nnunet(root: Path) -> Dataset:
    meta_path = root / "dataset.json"
    problems: list[tuple[str, str]] = []
    raw: dict = {}
    if meta_path.exists():
        try:
            raw = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{meta_path}: not valid JSON ({e.msg}, line {e.lineno})") from None
        if not isinstance(raw, dict):
            raise InputError(f"{meta_path}: expected a JSON object with \"labels\" (and optionally "
                             f"\"training\"), got a JSON {_JSON_KINDS.get(type(raw), type(raw).__name__)}")
        classes = _labels_from_json(raw.get("labels"), str(meta_path))
    else:
        raise InputError(f"{root}: dataset.json missing (it declares the label names)")
    items: list[Item] = []
    if isinstance(raw.get("training"), list) and raw["training"]:
        for k, entry in enumerate(raw["training"]):
            try:
                img = (root / entry["image"]).resolve()
                lab = (root / entry["label"]).resolve()
            except (TypeError, KeyError):
                problems.append((f"training[{k}]", "entry needs 'image' and 'label'"))
                continue
            items.append(Item(id=_strip_image_suffix(img.name), image=img, label=lab))
    else:
        for img in sorted((root / "imagesTr").iterdir()):
            name = _strip_image_suffix(img.name)
            if not img.name.endswith(_IMAGE_SUFFIXES) or img.name.startswith("."):
                continue
            ending = img.name[len(name):]
            case = name[:-5] if len(name) > 5 and name[-5] == "_" and name[-4:].isdigit() else name
            if case != name and not name.endswith("_0000"):
                continue  # extra channels of a multi-modal case
            items.append(Item(id=case, image=img, label=root / "labelsTr" / f"{case}{ending}"))
    return Dataset(root=root, layout="nnunet", task="seg", classes=classes, items=items, problems=problems,
                   index_file=meta_path, raw=raw)


# ------------------------------------------------------------------ MONAI datalist
def _read_datalist(path: Path) -> Dataset:
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    entries = raw.get("training") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{path}: a MONAI datalist needs a non-empty 'training' list of {{image, label}}")
    base = (path.parent / raw.get("base_dir", ".")).resolve()
    labels0 = [e.get("label") if isinstance(e, dict) else None for e in entries]
    is_seg = any(isinstance(v, str) and v.endswith(_IMAGE_SUFFIXES) for v in labels0)
    problems: list[tuple[str, str]] = []
    items: list[Item] = []
    declared = _labels_from_json(raw["labels"], str(path)) if "labels" in raw else None
    for k, e in enumerate(entries):
        if not isinstance(e, dict) or "image" not in e or "label" not in e:
            problems.append((f"training[{k}]", "entry needs 'image' and 'label'"))
            continue
        img = base / str(e["image"])
        iid = _strip_image_suffix(img.name)
        if is_seg:
            items.append(Item(id=iid, image=img, label=base / str(e["label"])))
        else:
            items.append(Item(id=iid, image=img, class_name=_class_of(e["label"], declared)))
    if is_seg:
        classes = declared or {}
    else:
        classes = declared or _classes_from_names(items)
    return Dataset(root=path.parent, layout="datalist", task="seg" if is_seg else "cls", classes=classes,
                   items=items, problems=problems, index_file=path, raw=raw)


def _class_of(value: Any, declared: dict[int, str] | None) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and declared and int(value) in declared:
        return declared[int(value)]
    return str(value)


def _classes_from_names(items: list[Item]) -> dict[int, str]:
    names = sorted({it.class_name for it in items if it.class_name is not None})
    return dict(enumerate(names))


# ------------------------------------------------------------------ CSV
def _read_csv(path: Path) -> Dataset:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip().lower() for c in (reader.fieldnames or [])]
        rows = [{k.strip().lower(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    if "image" not in cols or not ({"label", "mask"} & set(cols)):
        raise InputError(f"{path}: a dataset CSV needs the columns image,label (classification) or image,mask "
                         f"(segmentation); found {', '.join(cols) or 'none'}")
    seg = "mask" in cols
    items, problems = [], []
    for k, r in enumerate(rows, start=2):
        if not r.get("image"):
            problems.append((f"line {k}", "empty image path"))
            continue
        img = path.parent / r["image"]
        iid = _strip_image_suffix(img.name)
        if seg:
            items.append(Item(id=iid, image=img, label=path.parent / r["mask"] if r.get("mask") else None))
        elif not r.get("label"):
            problems.append((f"line {k}", "empty class label"))
        else:
            items.append(Item(id=iid, image=img, class_name=r["label"]))
    classes = {} if seg else _classes_from_names(items)
    return Dataset(root=path.parent, layout="csv", task="seg" if seg else "cls", classes=classes, items=items,
                   problems=problems, index_file=path, raw=rows)


# ------------------------------------------------------------------ validation
def _header(path: Path):
    """(shape, affine, volume or None) of an image file: for NIfTI from the header alone (its
    voxels are read once, by `_contents`); other formats are read whole and the volume returned."""

    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.load(str(path))
        return tuple(int(s) for s in img.shape[:3]), img.affine, None
    v = read(path)
    return v.shape, v.affine, v


def _without_path(e: Exception, path: Path) -> str:
    msg = str(e).splitlines()[0]
    for prefix in (f"{path}: ", f"{path.resolve()}: "):
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg


def _contents(path: Path, *, label: bool, volume=None) -> set[int] | None:
    """Read ``path``'s voxels as the engines will (a 3D volume, finite values; a label map of
    integers >= 0; ``volume``: already read) and return the label values (None for an image);
    raises `InputError`."""
    import numpy as np


    if volume is None:
        volume = read(path, kind="label" if label else None)
    elif label:
        volume = as_label_map(volume, name=str(path))
    return {int(x) for x in np.unique(np.asarray(volume.numpy()))} if label else None


def _validate(ds: Dataset, *, check_grids: bool) -> None:
    """Keep the items the engines can use; every other one goes to ``ds.problems`` with the reason."""
    good: list[Item] = []
    seen_values: set[int] = set()
    for it in ds.items:
        err, values = _item_problem(ds, it, check_grids=check_grids)
        if err is None:
            good.append(it)
            seen_values |= values
        else:
            ds.problems.append((it.id, err))
    if ds.task == "seg" and not ds.classes:
        ds.classes = {0: "background", **{v: f"class_{v}" for v in sorted(seen_values) if v}}
    ds.items = good


def _item_problem(ds: Dataset, it: Item, *, check_grids: bool) -> tuple[str | None, set[int]]:
    """(why ``it`` cannot be used or None, its label values).

    Each file is read once: the image's and label map's voxels are checked as the expander will
    read them (NaN/inf, a 4-D or one-slice image, a float or negative label map are this item's
    problem, not a stop halfway through writing), then the label values against the classes.
    """
    import numpy as np


    if not it.image.exists():
        return f"image file missing: {it.image}", set()
    if ds.task == "seg" and (it.label is None or not it.label.exists()):
        return (f"label file missing: {it.label}" if it.label else "no label file given"), set()
    if ds.task == "cls" and it.class_name not in ds.classes.values():
        return f"unknown class {it.class_name!r} (declared: {', '.join(ds.classes.values())})", set()
    image_vol = label_vol = None
    if check_grids:
        try:
            shape, affine, image_vol = _header(it.image)
            if ds.task == "seg":
                lshape, laffine, label_vol = _header(it.label)
                if lshape != shape or not np.allclose(laffine, affine, atol=1e-3):
                    return (f"label map on another grid than its image ({'x'.join(map(str, lshape))} vs "
                            f"{'x'.join(map(str, shape))} voxels"
                            f"{'' if lshape != shape else ', different affine'})"), set()
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported, not raised
            return f"unreadable: {type(e).__name__}: {str(e).splitlines()[0][:200]}", set()
    values: set[int] = set()
    role, path = "image", it.image
    try:
        if check_grids:
            _contents(it.image, label=False, volume=image_vol)
        if ds.task == "seg":
            role, path = "label map", it.label
            values = _contents(it.label, label=True, volume=label_vol)
    except InputError as e:
        return f"{role} {path.name}: {_without_path(e, path)}", set()
    except Exception as e:  # noqa: BLE001 - as above
        return f"unreadable {role} {path.name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}", set()
    unknown = sorted(values - set(ds.classes)) if ds.classes else []
    if unknown:
        return f"label values not declared in the dataset's labels: {unknown}", set()
    return None, values

"""Write one output case (volumes + provenance record + resolved config + preview PNG), or one
converted file with its record."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from synthgen.config import save_config
from synthgen.errors import InputError
from synthgen.files.atomic import check_writable
from synthgen.files.safepath import check_parent, safe_name
from synthgen.io import format_for_output, read, write
from synthgen.io.dicom_seg import write_dicom_seg
from synthgen.io.record import Record
from synthgen.report.montage import montage, save_png
from synthgen.volume import Volume

#: How `write_case` writes a case's volumes.
CaseFormat = Literal["nifti", "dicom"]
CASE_FORMATS = ("nifti", "dicom")


def sidecar_path(path: str | os.PathLike, suffix: str = ".json") -> Path:
    """The record of one output file, named after the whole file name so no two outputs share one:
    ``out/x.nrrd`` -> ``out/x.nrrd.json``, ``out/x.mha`` -> ``out/x.mha.json``, ``out/series`` (a
    DICOM folder) -> ``out/series.json``."""
    p = Path(path)
    return p.with_name(p.name + suffix)


def case_paths(
    out_dir: str | os.PathLike,
    stem: str,
    *,
    labels: bool = True,
    config: bool = False,
    preview: bool = True,
    format: CaseFormat = "nifti",
) -> dict[str, Path]:
    """The files `write_case` writes, by role: ``ct``, ``record``, and ``labels`` (+ ``seg``, the
    DICOM SEG, for ``format="dicom"``), ``preview``, ``config`` when asked.

    Raises `InputError` for an unsafe ``stem`` (`synthgen.files.safepath.safe_name`) or an unknown format.
    """
    safe_name(stem, what="file name stem")
    if format not in CASE_FORMATS:
        raise InputError(f"format must be one of {', '.join(CASE_FORMATS)}, got {format!r}")
    out = Path(out_dir)
    # DICOM: the CT is a series folder; its labels a SEG referencing it, and NIfTI for the tools that read that
    paths = {"ct": out / (f"{stem}_ct" if format == "dicom" else f"{stem}_ct.nii.gz"), "record": out / f"{stem}.json"}
    if labels:
        paths["labels"] = out / f"{stem}_labels.nii.gz"
        if format == "dicom":
            paths["seg"] = out / f"{stem}_labels.dcm"
    if preview:
        paths["preview"] = out / f"{stem}.png"
    if config:
        paths["config"] = out / f"{stem}_config.yaml"
    return paths


def check_case_writable(paths: dict[str, Path], *, format: CaseFormat = "nifti", overwrite: bool = False) -> None:
    """Raise before anything is written if one of `case_paths`' files may not be written.

    A DICOM series folder is checked by its writer, which replaces only its own files.
    """
    for role, p in paths.items():
        if role == "ct" and format == "dicom":
            check_parent(p)
        else:
            check_writable(p, overwrite=overwrite)


def write_case(
    out_dir: str | os.PathLike,
    stem: str,
    *,
    ct: Volume,
    labels: Volume | None = None,
    record: Record,
    config: Any | None = None,
    preview: bool = True,
    overwrite: bool = False,
    format: CaseFormat = "nifti",
) -> dict[str, Path]:
    """Write ``<stem>_ct.nii.gz``, ``<stem>_labels.nii.gz``, ``<stem>.json`` (``record`` naming the
    volumes written), ``<stem>.png`` and ``<stem>_config.yaml``: every file is named after the
    case, so cases with other stems share a folder.

    ``format="dicom"`` writes the CT as the series folder ``<stem>_ct/`` and the labels also as the
    DICOM SEG ``<stem>_labels.dcm`` referencing it. Every path is checked before anything is
    written, so a refused overwrite leaves the folder as it was. Returns the written paths by role.
    """
    paths = case_paths(out_dir, stem, labels=labels is not None, config=config is not None, preview=preview,
                       format=format)
    check_case_writable(paths, format=format, overwrite=overwrite)
    write(ct, paths["ct"], format=format, overwrite=overwrite)
    if labels is not None:
        write(labels, paths["labels"], overwrite=overwrite)
    if "seg" in paths:
        write_dicom_seg(labels, paths["seg"], series_dir=paths["ct"], overwrite=overwrite)
    volumes = [paths[k] for k in ("ct", "labels", "seg") if k in paths]
    record.with_outputs(volumes).write(paths["record"], overwrite=overwrite)
    if preview:
        save_png(montage(ct, labels), paths["preview"], overwrite=overwrite)
    if config is not None:
        save_config(config, paths["config"], overwrite=overwrite)
    return paths


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    format: str | None = None,
    as_labels: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> tuple[Path, Path]:
    """Read ``src`` (a label map with ``as_labels``) and write it to ``dst`` in ``format`` (default:
    from the extension; a folder is a DICOM series), with its record ``sidecar_path(dst)``.

    Refused before anything is read or written: ``dst`` is ``src``, or ``dst`` or its record exists
    (without ``overwrite``). The record is marked synthetic only when the image was. Returns
    (the written image, its record).
    """
    src, dst = Path(src), Path(dst)
    if src.exists() and dst.exists() and src.resolve() == dst.resolve() and not overwrite:
        raise InputError(f"{dst}: output is the input; refusing to overwrite it (pass --overwrite)")
    fmt = format_for_output(dst, format)
    if fmt != "dicom":  # a series folder is checked by its own writer (only its own files are replaced)
        check_writable(dst, overwrite=overwrite)
    record_path = sidecar_path(dst)
    if record_path.exists() and not overwrite:
        raise InputError(f"{record_path}: already exists; refusing to overwrite it (pass --overwrite)")
    vol = read(src, kind="label" if as_labels else None, allow_one_slice=True, progress=progress)
    out = write(vol, dst, format=fmt, overwrite=overwrite, progress=progress)
    record = Record.create("synthgen.convert", parameters={"format": fmt, "kind": vol.kind}, inputs=[src],
                           outputs=[out], synthetic=vol.synthetic)
    return out, record.write(record_path, overwrite=overwrite)

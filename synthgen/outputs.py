"""Write one output case: volumes + provenance record + resolved config + preview PNG."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from synthgen.config import save_config
from synthgen.files.atomic import check_writable
from synthgen.files.safepath import safe_name
from synthgen.io import write
from synthgen.io.record import write_record
from synthgen.report.montage import montage, save_png
from synthgen.volume import Volume


def sidecar_path(path: str | os.PathLike, suffix: str = ".json") -> Path:
    """The record of one output file, named after the whole file name so no two outputs share one:
    ``out/x.nrrd`` -> ``out/x.nrrd.json``, ``out/x.mha`` -> ``out/x.mha.json``, ``out/series`` (a
    DICOM folder) -> ``out/series.json``."""
    p = Path(path)
    return p.with_name(p.name + suffix)


def write_case(
    out_dir: str | os.PathLike,
    stem: str,
    *,
    ct: Volume,
    labels: Volume | None = None,
    record: Mapping[str, Any],
    config: Any | None = None,
    preview: bool = True,
    overwrite: bool = False,
    ext: str = ".nii.gz",
) -> dict[str, Path]:
    """Write ``<stem>_ct<ext>``, ``<stem>_labels<ext>``, ``<stem>.json``, ``<stem>.png`` and
    ``<stem>_config.yaml``: every file is named after the case, so cases with other stems share a folder.

    ``stem`` must be a safe file name (`synthgen.files.safepath.safe_name`). Every path is
    checked before anything is written, so a refused overwrite leaves the folder as it
    was. Returns the written paths by role.
    """

    safe_name(stem, what="file name stem")
    out = Path(out_dir)
    paths: dict[str, Path] = {"ct": out / f"{stem}_ct{ext}", "record": out / f"{stem}.json"}
    if labels is not None:
        paths["labels"] = out / f"{stem}_labels{ext}"
    if preview:
        paths["preview"] = out / f"{stem}.png"
    if config is not None:
        paths["config"] = out / f"{stem}_config.yaml"
    for p in paths.values():
        check_writable(p, overwrite=overwrite)
    write(ct, paths["ct"], overwrite=overwrite)
    if labels is not None:
        write(labels, paths["labels"], overwrite=overwrite)
    outputs = [paths[k].name for k in ("ct", "labels") if k in paths]
    write_record({**record, "outputs": outputs}, paths["record"], overwrite=overwrite)
    if preview:
        save_png(montage(ct, labels), paths["preview"], overwrite=overwrite)
    if config is not None:
        save_config(config, paths["config"], overwrite=overwrite)
    return paths

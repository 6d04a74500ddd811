"""The `synthgen lesion insert` job: read a CT + labels, insert lesions, write volumes, record, preview."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from synthgen.files.atomic import check_writable, write_text
from synthgen.files.safepath import safe_name
from synthgen.io.record import Record
from synthgen.lesions.insert import InsertResult, insert_lesions
from synthgen.lesions.spec import LesionSpec
from synthgen.outputs import case_paths, write_case
from synthgen.report.lesion_preview import lesion_rows
from synthgen.report.montage import save_png
from synthgen.volume import Volume

#: The ``generator`` of the insertion's record.
GENERATOR = "synthgen.lesion.insert"


def specs_yaml(specs: list[LesionSpec]) -> str:
    """The specs as YAML that `load_specs` reads back (the resolved config written beside outputs)."""
    import yaml

    def plain(spec: LesionSpec) -> dict:
        d = dataclasses.asdict(spec)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    return yaml.safe_dump({"lesions": [plain(s) for s in specs]}, sort_keys=False)


def run(
    ct: Volume,
    labels: Volume,
    specs: list[LesionSpec],
    out_dir: str | os.PathLike,
    *,
    inputs: list[str | os.PathLike] = (),  # type: ignore[assignment]
    overwrite: bool = False,
    preview: bool = False,
    stem: str = "lesions",
) -> tuple[InsertResult, dict[str, Path]]:
    """Insert ``specs`` into the scan and write ``<stem>_ct.nii.gz``, ``<stem>_labels.nii.gz``,
    ``<stem>.json`` (provenance: the specs as parameters, the hashes of ``inputs``, the contrast
    phase and one entry per lesion in details), ``<stem>.yaml`` (the specs) and, with ``preview``,
    ``<stem>_preview.png`` (axial/coronal/sagittal through each lesion, outlined). Nothing is
    written when the request fails."""

    out = Path(out_dir)
    extra = {"specs": out / f"{safe_name(stem, what='file name stem')}.yaml"}
    if preview:
        extra["preview"] = out / f"{stem}_preview.png"
    for p in [*extra.values(), *case_paths(out, stem, preview=False).values()]:
        check_writable(p, overwrite=overwrite)
    result = insert_lesions(ct, labels, specs)
    record = Record.create(
        GENERATOR,
        parameters={"specs": [dataclasses.asdict(s) for s in specs]},
        seed=specs[0].seed,
        inputs=inputs,
        details={"phase": result.phase, "phase_info": result.phase_info,
                 "lesions": [dataclasses.asdict(r) for r in result.lesions]},
    )
    paths = write_case(out, stem, ct=result.ct, labels=result.labels, record=record, preview=False, overwrite=overwrite)
    paths["specs"] = write_text(extra["specs"], specs_yaml(specs), overwrite=overwrite)
    if preview:

        paths["preview"] = save_png(lesion_rows(result.ct, result.labels, result.lesions), extra["preview"], overwrite=overwrite)
    return result, paths

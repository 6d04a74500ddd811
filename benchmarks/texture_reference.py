"""Write assets/fidelity/texture_4mm.json: the fine-texture ranges real patients span at 4 mm.

Reads every real patient of `synthgen.data` that is installed (`synthgen data fetch all`), measures
`synthgen.texture.texture_table` at 4 mm per tissue and writes `reference_ranges` of them: the
table `synthgen check` judges a CT's texture against. Run it again when a source is added:

    .venv/bin/python benchmarks/texture_reference.py [--spacing 4] [--out assets/fidelity/texture_4mm.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from synthgen.data import PATIENTS, MissingSource, patient
from synthgen.files.atomic import write_text
from synthgen.texture import reference_ranges, texture_table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spacing", type=float, default=4.0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "assets/fidelity/texture_4mm.json"))
    args = p.parse_args(argv)
    tables = {}
    for name in PATIENTS:
        try:
            pt = patient(name)
        except MissingSource as e:
            print(f"skipped: {e}", file=sys.stderr)
            continue
        tables[name] = texture_table(pt.ct, pt.labels, spacing_mm=args.spacing)
        print(name, {t: (v.residual_hu, v.nps_centroid) for t, v in tables[name].items()})
    doc = {"spacing_mm": args.spacing, "made_by": "benchmarks/texture_reference.py",
           "statistics": "residual_hu: RMS of CT minus its 1-voxel Gaussian blur inside the tissue (shrunk by one "
                         "voxel); nps_centroid: power-weighted mean frequency (cycles/mm) of the radial NPS of "
                         "6x6-voxel axial ROIs wholly inside the tissue",
           "tissues": reference_ranges(tables)}
    write_text(args.out, json.dumps(doc, indent=1) + "\n", overwrite=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

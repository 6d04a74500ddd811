"""The run folder's training state and its exported weights.

::

    RUN/checkpoints/<stage>/step_NNNNNN/   model, ema, optimizer (.safetensors) + state.json
    RUN/checkpoints/<stage>/loss.jsonl     one line per step
    RUN/<component>/                       model.safetensors (EMA weights), config.yaml, train_info.json

A checkpoint folder is written under a ``.tmp`` name and renamed, so a killed run never leaves a
half checkpoint that ``--resume`` would read; only the newest ``keep`` are kept. The component
folders make the run folder a pipeline folder (`synthgen.pipelines.latent_ct`).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from synthgen.config import save_config
from synthgen.errors import InputError
from synthgen.models.checkpoint import load_module, load_optimizer, save_module, save_optimizer


def checkpoints(run: Path, stage: str) -> list[Path]:
    """The complete checkpoints of ``stage``, oldest first."""
    d = run / "checkpoints" / stage
    return sorted(p for p in d.glob("step_*") if (p / "state.json").exists()) if d.exists() else []


def save_checkpoint(run: Path, stage: str, step: int, *, model: torch.nn.Module, ema: torch.nn.Module,
                    opt: torch.optim.Optimizer, state: dict, keep: int) -> Path:
    """Write ``step_NNNNNN`` (``model``, its EMA twin ``ema``, ``opt``, ``state`` + the step) and
    drop all but the newest ``keep`` checkpoints."""
    d = run / "checkpoints" / stage / f"step_{step:06d}"
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_module(model, tmp / "model.safetensors")
    save_module(ema, tmp / "ema.safetensors")
    save_optimizer(opt, tmp / "optimizer.safetensors")
    (tmp / "state.json").write_text(json.dumps({"step": step, **state}))
    shutil.rmtree(d, ignore_errors=True)
    tmp.rename(d)
    for old in checkpoints(run, stage)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return d


def restore(run: Path, stage: str, model: torch.nn.Module, opt: torch.optim.Optimizer, *,
           resume: bool) -> tuple[int, torch.nn.Module | None]:
    """``(first step, EMA weights)`` to continue ``stage`` from: ``(0, None)`` for a fresh start;
    with ``resume``, the newest checkpoint is loaded into ``model`` and ``opt`` in place and its EMA
    weights come back as a copy of ``model``. Checkpoints without ``resume`` are refused, so a
    second run never overwrites a first one by accident."""
    found = checkpoints(run, stage)
    if not found:
        return 0, None
    if not resume:
        raise InputError(f"{run} already has {stage} checkpoints; pass --resume to continue them "
                         "or choose another --out")
    last = found[-1]
    load_module(model, last / "model.safetensors")
    ema = load_module(copy.deepcopy(model), last / "ema.safetensors")
    load_optimizer(opt, last / "optimizer.safetensors")
    return json.loads((last / "state.json").read_text())["step"], ema


def export_component(run: Path, component: str, module: torch.nn.Module, config: Any, info: dict) -> Path:
    """Write ``RUN/<component>/``: the weights, the config they are built from, ``info``."""
    d = run / component
    d.mkdir(parents=True, exist_ok=True)
    save_module(module, d / "model.safetensors")
    save_config(config, d / "config.yaml", overwrite=True)
    (d / "train_info.json").write_text(json.dumps(info, indent=1))
    return d

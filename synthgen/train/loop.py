"""The training loop every stage runs: AdamW, warm-up + cosine learning rate, gradient clipping,
an EMA of the weights, a loss log, checkpoints, previews; DDP under ``torchrun``.

A stage hands `train_loop` the modules it trains and ``loss_fn(modules, step)``; the loss draws
its own batch from (seed, rank, step), so a resumed run draws the batches an uninterrupted one
would. The loop itself draws no random numbers and leaves the global RNGs alone. Under
``torchrun`` (`Dist`) the loss is wrapped in DDP (gloo on CPU, nccl on CUDA), each rank draws its
own crops, rank 0 writes, and the result holds every rank's weight hash.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthgen.models.checkpoint import state_hash
from synthgen.train.checkpoints import restore, save_checkpoint
from synthgen.train.config import StageConfig

#: ``loss_fn(modules, step)``: the stage's loss on its trained modules (a ModuleDict) at a step.
LossFn = Callable[[torch.nn.ModuleDict, int], torch.Tensor]
#: ``preview(ema_modules, png_path)``: draw a preview from the EMA weights (under no_grad).
PreviewFn = Callable[[torch.nn.ModuleDict, Path], None]


class Dist:
    """Rank and world size of this process; initialises torch.distributed under torchrun."""

    def __init__(self, device: torch.device) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the one that writes."""
        return self.rank == 0

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module)

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def gather_strings(self, s: str) -> list[str]:
        if self.world == 1:
            return [s]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, s)
        return [str(x) for x in out]


class _LossModule(torch.nn.Module):
    """``forward(step)`` = the stage's loss, so DDP wraps one module whose forward is the whole
    step (and synchronises every trained parameter's gradient)."""

    def __init__(self, modules: torch.nn.ModuleDict, loss_fn: LossFn) -> None:
        super().__init__()
        self.trained = modules
        self._loss_fn = loss_fn

    def forward(self, step: int) -> torch.Tensor:
        return self._loss_fn(self.trained, step)


class EMA:
    """Exponential moving average of a module's floating-point state (other state is copied)."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def averaged(self, module: torch.nn.Module) -> torch.nn.Module:
        """A copy of ``module`` holding the averaged weights."""
        twin = copy.deepcopy(module)
        twin.load_state_dict(self.shadow)
        return twin


@dataclasses.dataclass(frozen=True)
class LoopResult:
    final: torch.nn.ModuleDict  # the EMA weights, in eval mode
    losses: list[float]  # one per step run (not those before ``start``)
    seconds: float
    start: int  # the step the run (re)started at
    rank_hashes: list[str]  # weight hash on every rank (equal under DDP)


def lr_factor(step: int, steps: int) -> float:
    """50-step linear warm-up, then cosine decay to 10 % at ``steps``."""
    return min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)))


def train_loop(stage: str, modules: dict[str, torch.nn.Module], loss_fn: LossFn, *, cfg: StageConfig,
               run: Path, dist: Dist, resume: bool, progress: bool = True,
               preview: PreviewFn | None = None) -> LoopResult:
    """Train ``modules`` (name -> module; the stages call the main one ``model``) together for
    ``cfg.steps`` steps of ``loss_fn``, continuing the newest checkpoint of ``stage`` in ``run``
    when ``resume``. Returns the EMA weights, the losses of the steps run and the rank hashes."""
    from tqdm.auto import tqdm

    held = torch.nn.ModuleDict(modules)
    device = next(held.parameters()).device
    opt = torch.optim.AdamW(held.parameters(), lr=cfg.lr, weight_decay=0.0)
    start, ema_weights = restore(run, stage, held, opt, resume=resume)
    ema = EMA(held if ema_weights is None else ema_weights, cfg.ema)
    for g in opt.param_groups:
        g.setdefault("initial_lr", cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(lr_factor, steps=cfg.steps),
                                              last_epoch=start - 1)
    step_loss = dist.wrap(_LossModule(held, loss_fn))
    losses: list[float] = []
    bar = tqdm(range(start, cfg.steps), desc=f"train {stage}", disable=not (progress and dist.main),
               initial=start, total=cfg.steps)
    t0 = time.perf_counter()
    for step in bar:
        held.train()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = step_loss(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(held.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update(held)
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if dist.main:
            _after_step(stage, step + 1, losses[-1], held=held, ema=ema, opt=opt, cfg=cfg, run=run, preview=preview)
    final = ema.averaged(held).eval()
    hashes = dist.gather_strings(state_hash(held))
    dist.barrier()
    return LoopResult(final=final, losses=losses, seconds=time.perf_counter() - t0, start=start,
                      rank_hashes=hashes)


def _after_step(stage: str, done: int, loss: float, *, held: torch.nn.ModuleDict, ema: EMA,
                opt: torch.optim.Optimizer, cfg: StageConfig, run: Path, preview: PreviewFn | None) -> None:
    """Rank 0's writing after step ``done``: the loss line, a checkpoint, a preview when due."""
    log = run / "checkpoints" / stage / "loss.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(json.dumps({"step": done, "loss": loss}) + "\n")
    last = done == cfg.steps
    if done % cfg.checkpoint_every == 0 or last:
        save_checkpoint(run, stage, done, model=held, ema=ema.averaged(held), opt=opt, state={"loss": loss},
                        keep=cfg.keep_checkpoints)
    if preview is not None and (done % cfg.preview_every == 0 or last):
        with torch.no_grad():
            preview(ema.averaged(held).eval(), run / "previews" / stage / f"step_{done:06d}.png")


@contextlib.contextmanager
def private_rng(seed: int | None = None) -> Iterator[None]:
    """Inside, the global torch (CPU) RNG is seeded with ``seed`` (if given); on exit it is back
    where it was. Networks built inside initialise reproducibly (their constructors draw from the
    global RNG) and the caller's random stream is untouched."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        yield

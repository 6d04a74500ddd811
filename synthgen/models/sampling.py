"""The reverse diffusion loop shared by training previews and the pipelines, and its schedulers.

The model generates the latent *residual* around the encoded prior image ``zp``
(`synthgen.models.conditioning.Prior`): ``z = zp + r / scale``. Classifier-free guidance
runs the conditional and unconditional passes as one batch of two.

Schedulers are diffusers' own objects: `SCHEDULERS` names the ones synthgen samples with and
holds, in one place, the settings each is built with; `make_scheduler` builds one on a training
noise schedule, `switch_scheduler` another kind on the noise schedule of a given one. The loop
(`sample_latent`) takes a scheduler object and never builds one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any, Literal

import torch

from synthgen.errors import InputError
from synthgen.models.conditioning import one_hot

SchedulerName = Literal["ddim", "dpm"]


@dataclasses.dataclass(frozen=True)
class SchedulerSpec:
    """A diffusers scheduler class (by name: diffusers is imported only when one is built) and
    the sampling settings synthgen gives it on top of the training noise schedule."""

    class_name: str
    settings: Mapping[str, Any]


#: Name -> the diffusers sampling scheduler and its settings; the one place both are written.
SCHEDULERS: dict[str, SchedulerSpec] = {
    "ddim": SchedulerSpec("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": True,
                                            "timestep_spacing": "trailing"}),
    "dpm": SchedulerSpec("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                         "timestep_spacing": "trailing"}),
}


def check_scheduler_name(name: Any) -> str:
    """``name`` if it is a key of `SCHEDULERS`, else a one-line `InputError` listing them."""
    if not isinstance(name, str) or name not in SCHEDULERS:
        raise InputError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    return name


def scheduler_class(name: str) -> type:
    """The diffusers class of `SCHEDULERS`\\ [name]."""
    import diffusers

    return getattr(diffusers, SCHEDULERS[check_scheduler_name(name)].class_name)


def accepted_settings(cls: type) -> frozenset[str]:
    """The config keys a diffusers scheduler class takes (its constructor's arguments)."""
    return frozenset(inspect.signature(cls.__init__).parameters) - {"self"}


def scheduler_name(scheduler: Any) -> str:
    """The `SCHEDULERS` name of a scheduler object (its class name when it is none of them)."""
    cls = type(scheduler).__name__
    return next((n for n, s in SCHEDULERS.items() if s.class_name == cls), cls)


def make_scheduler(diffusion: Any, name: SchedulerName):
    """A diffusers sampling scheduler on a training noise schedule (a `DiffusionConfig`)."""
    noise = {"num_train_timesteps": diffusion.train_timesteps, "beta_start": diffusion.beta_start,
             "beta_end": diffusion.beta_end, "beta_schedule": "scaled_linear",
             "prediction_type": diffusion.prediction}
    return scheduler_class(name)(**noise, **SCHEDULERS[name].settings)


def switch_scheduler(scheduler: Any, name: SchedulerName | None = None):
    """A new scheduler on ``scheduler``'s noise schedule: of kind ``name`` with its `SCHEDULERS`
    settings, or (None) a fresh copy of ``scheduler`` itself. ``scheduler`` is not changed.

    Only the config keys the new class accepts are carried over (a DDIM-only key such as
    ``clip_sample`` means nothing to DPM-Solver), so nothing is silently ignored.
    """
    if name is None:
        return type(scheduler).from_config(scheduler.config)
    cls = scheduler_class(name)
    shared = {k: v for k, v in scheduler.config.items() if k in accepted_settings(cls)}
    return cls.from_config({**shared, **SCHEDULERS[name].settings})


class _Constant(torch.nn.Module):
    """A module that returns ``value`` whatever it is given."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value

    def forward(self, _: torch.Tensor) -> torch.Tensor:
        return self.value


@contextlib.contextmanager
def fixed_condition(controlnet, cond: torch.Tensor):
    """Within the block, ``controlnet``'s conditioning embedding returns that of ``cond``,
    computed once on entry: the label map is the same at every denoising step, and its embedding
    (convolutions at image size) would otherwise be recomputed at each. The embedding module is
    put back on exit."""
    embedding = controlnet.controlnet_cond_embedding
    controlnet.controlnet_cond_embedding = _Constant(embedding(cond))
    try:
        yield
    finally:
        controlnet.controlnet_cond_embedding = embedding


@torch.no_grad()
def sample_latent(unet, encoder, controlnet, *, scheduler: Any, zp: torch.Tensor, channels: torch.Tensor,
                  tokens: dict, spacing: torch.Tensor, scale: float, steps: int, guidance: float = 1.0,
                  generator: torch.Generator | None = None, known: torch.Tensor | None = None,
                  known_mask: torch.Tensor | None = None, progress: bool = False) -> torch.Tensor:
    """Sample a latent ``(1, C, d, h, w)``; ``zp`` is the prior latent, ``channels`` the label
    channel indices at image size ``(1, D, H, W)`` (used by the ControlNet, if given).

    ``scheduler``: a diffusers scheduler of its own (schedulers keep state between steps; this
    calls its ``set_timesteps``). ``generator``: a CPU generator; the noise is drawn on the CPU
    and moved to the device, so a seed gives the same volume on every device.

    Inpainting: with ``known`` (a latent) and ``known_mask`` (1 where the latent is known, at latent
    size), the known part is re-imposed at every step at the current noise level.
    """
    dev = zp.device
    scheduler.set_timesteps(steps)
    r = torch.randn(zp.shape, generator=generator).to(dev)
    r = r * scheduler.init_noise_sigma
    cfg = guidance != 1.0
    toks = {k: v.to(dev) for k, v in tokens.items()}
    sp = spacing.to(dev)
    if cfg:
        toks = {k: torch.cat([v, v]) for k, v in toks.items()}
        sp = torch.cat([sp, sp])
        drop = torch.tensor([False, True], device=dev)
    else:
        drop = torch.tensor([False], device=dev)
    ctx = encoder(toks, sp, drop)
    cond = one_hot(channels).to(dev) if controlnet is not None else None
    if cond is not None and cfg:
        cond = torch.cat([cond, cond])
    known_r = (known - zp) * scale if known is not None else None
    with fixed_condition(controlnet, cond) if controlnet is not None else contextlib.nullcontext():
        return zp + _denoise(unet, controlnet, scheduler, r, ctx=ctx, cond=cond, cfg=cfg, guidance=guidance,
                             generator=generator, known_r=known_r, known_mask=known_mask, progress=progress) / scale


def _denoise(unet, controlnet, scheduler, r: torch.Tensor, *, ctx, cond, cfg: bool, guidance: float,
             generator, known_r, known_mask, progress: bool) -> torch.Tensor:
    """The reverse loop of `sample_latent` on the residual ``r``: one UNet (+ ControlNet) pass per
    step, conditional and unconditional as one batch when ``cfg``."""
    from tqdm.auto import tqdm

    dev = r.device
    for t in tqdm(scheduler.timesteps, desc="denoise", disable=not progress, leave=False):
        x = torch.cat([r, r]) if cfg else r
        x = scheduler.scale_model_input(x, t)
        tt = torch.full((x.shape[0],), int(t), device=dev, dtype=torch.long)
        kw = {}
        if controlnet is not None:
            down, mid = controlnet(x, tt, controlnet_cond=cond, context=ctx)
            kw = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        out = unet(x, tt, context=ctx, **kw).float()
        if cfg:
            c, u = out.chunk(2)
            out = u + guidance * (c - u)
        r = scheduler.step(out, t, r).prev_sample
        if known_r is not None:
            idx = (scheduler.timesteps == t).nonzero()
            nxt = scheduler.timesteps[idx + 1] if idx + 1 < len(scheduler.timesteps) else None
            noisy = (known_r if nxt is None else
                     scheduler.add_noise(known_r, torch.randn(known_r.shape, generator=generator).to(dev),
                                         nxt.reshape(1)))
            r = known_mask * noisy + (1 - known_mask) * r
    return r

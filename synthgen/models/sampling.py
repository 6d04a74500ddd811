"""The reverse diffusion loop shared by training previews and the pipelines.

The model generates the latent *residual* around the encoded prior image ``zp``
(`synthgen.models.conditioning.Prior`): ``z = zp + r / scale``. Classifier-free guidance
runs the conditional and unconditional passes as one batch of two.
"""

from __future__ import annotations

from typing import Any

import torch

from synthgen.models.conditioning import one_hot

SCHEDULERS = ("ddim", "dpm")


def make_scheduler(diffusion: Any, kind: str = "ddim"):
    """A diffusers sampling scheduler matching the training noise schedule."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    common = {"num_train_timesteps": diffusion.train_timesteps, "beta_start": diffusion.beta_start,
                  "beta_end": diffusion.beta_end, "beta_schedule": "scaled_linear", "prediction_type": diffusion.prediction}
    if kind == "ddim":
        return DDIMScheduler(clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing", **common)
    if kind == "dpm":
        return DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                           timestep_spacing="trailing", **common)
    raise ValueError(f"unknown scheduler {kind!r}; choose one of {', '.join(SCHEDULERS)}")


@torch.no_grad()
def sample_latent(unet, encoder, controlnet, *, zp: torch.Tensor, channels: torch.Tensor, tokens: dict,
                  spacing: torch.Tensor, scale: float, diffusion: Any, steps: int = 30, guidance: float = 1.0,
                  scheduler: str = "ddim", generator: torch.Generator | None = None,
                  known: torch.Tensor | None = None, known_mask: torch.Tensor | None = None,
                  progress: bool = False) -> torch.Tensor:
    """Sample a latent ``(1, C, d, h, w)``; ``zp`` is the prior latent, ``channels`` the label
    channel indices at image size ``(1, D, H, W)`` (used by the ControlNet, if given).

    Inpainting: with ``known`` (a latent) and ``known_mask`` (1 where the latent is known, at latent
    size), the known part is re-imposed at every step at the current noise level.
    """
    from tqdm.auto import tqdm

    dev = zp.device
    sched = make_scheduler(diffusion, scheduler)
    sched.set_timesteps(steps)
    r = torch.randn(zp.shape, generator=generator).to(dev)
    r = r * sched.init_noise_sigma
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
    for t in tqdm(sched.timesteps, desc="denoise", disable=not progress, leave=False):
        x = torch.cat([r, r]) if cfg else r
        x = sched.scale_model_input(x, t)
        tt = torch.full((x.shape[0],), int(t), device=dev, dtype=torch.long)
        kw = {}
        if controlnet is not None:
            down, mid = controlnet(x, tt, controlnet_cond=cond, context=ctx)
            kw = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        out = unet(x, tt, context=ctx, **kw).float()
        if cfg:
            c, u = out.chunk(2)
            out = u + guidance * (c - u)
        r = sched.step(out, t, r).prev_sample
        if known_r is not None:
            idx = (sched.timesteps == t).nonzero()
            nxt = sched.timesteps[idx + 1] if idx + 1 < len(sched.timesteps) else None
            noisy = (known_r if nxt is None else
                     sched.add_noise(known_r, torch.randn(known_r.shape, generator=generator).to(dev),
                                     nxt.reshape(1)))
            r = known_mask * noisy + (1 - known_mask) * r
    return zp + r / scale

"""Sampling pipelines of the latent diffusion stack on the diffusers contract: mask -> CT,
text -> CT, lesion inpainting.

A pipeline is its components (vae, unet, text_encoder, controlnet, scheduler, segmenter, plus
the prior, the texture bank, the settings, the training thumbnails and the weight files' hashes), passed to its
constructor and listed by `LatentCTPipeline.components`, so ``MaskToCTPipeline(**pipe.components)``
converts one pipeline into another; `from_pretrained` / `save_pretrained` read and write them all
(`synthgen.pipelines.folder`). Each ``__call__`` validates every argument first
(`LatentCTPipeline.check_inputs`, one-line `InputError`s), draws all its randomness from
``generator=`` (a CPU `torch.Generator`; None: seeded 0) and returns a frozen `CTPipelineOutput`.

Generation: label map -> prior image ``P`` (each structure its training mean) -> VAE latent
``zp``; the diffusion UNet (+ ControlNet on the grouped one-hot labels, cross-attention on the
spec tokens) samples the residual ``r``; ``z = zp + r / scale`` is decoded (tiled when large),
corrected by the VAE's own error on the prior (``+ P - decode(zp)``) and mapped back to HU; then,
when the weights carry a texture bank, each tissue's detail below a few voxels is synthesised
from the real patients' (`synthgen.models.texture`). Every output is marked synthetic and comes
with its label map and a `Record`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthgen._assets import asset_path
from synthgen._version import __version__
from synthgen.fidelity import check
from synthgen.io.record import Record
from synthgen.lesions.spec import organ_family
from synthgen.library import label_map_for
from synthgen.models.conditioning import Prior, channel_index
from synthgen.models.hu import hu_to_model, model_to_hu
from synthgen.models.sampling import (
    SchedulerName,
    check_scheduler_name,
    sample_latent,
    scheduler_name,
    switch_scheduler,
)
from synthgen.models.text_encoder import collate, spec_to_indices
from synthgen.models.texture import TextureBank, apply_texture
from synthgen.pipelines.folder import (
    PipelineSettings,
    TrainingThumbnails,
    WeightFiles,
    load_components,
    save_components,
)
from synthgen.pipelines.inpaint import (
    InpaintBox,
    blend,
    check_inpaint_inputs,
    latent_known_mask,
    model_grid,
    with_host_noise,
)
from synthgen.pipelines.inputs import (
    check_flag,
    check_generator,
    check_guidance,
    check_label_map,
    check_library_spacing,
    check_prompt,
    check_size,
    check_steps,
    check_tile,
)
from synthgen.text.prompt import PromptSpec, parse_prompt
from synthgen.vocab import Vocabulary
from synthgen.volume import Volume

#: The defaults of every pipeline signature (and of the CLI and configs that call them).
DEFAULT_SIZE = (96, 96, 96)
DEFAULT_SPACING_MM = 4.0
DEFAULT_STEPS = 30
DEFAULT_GUIDANCE = 2.0
#: The scheduler registered for a weights folder that ships none (the shipped weights, training runs).
DEFAULT_SCHEDULER: SchedulerName = "ddim"
DEFAULT_WEIGHTS = "weights/ct-cpu"
#: Latent voxels above which the VAE decodes in tiles of `DECODE_TILE`^3 (memory stays bounded).
TILE_ABOVE = 32**3
DECODE_TILE = 24
#: What `LatentCTPipeline.components` lists: the constructor's arguments but ``device``.
COMPONENTS = ("vae", "unet", "text_encoder", "controlnet", "scheduler", "segmenter", "prior", "texture",
              "settings", "thumbnails", "weights")
_UNSET: Any = object()  # check_inputs: an argument the calling pipeline does not have


@dataclasses.dataclass(frozen=True)
class CTPipelineOutput:
    """A pipeline's result: the CT (HU), its label map on the same grid, and the provenance
    (parameters, seed, the weights by hash; ``details``: seconds, warnings, lesions...)."""

    ct: Volume
    labels: Volume
    record: Record


def default_weights() -> Path:
    return asset_path(*DEFAULT_WEIGHTS.split("/"))


def resolve_generator(generator: torch.Generator | None) -> tuple[torch.Generator, list[str]]:
    """The generator a call draws from (None: seeded 0), and a warning if it had drawn numbers
    before: the seed it records (``initial_seed()``) alone then does not reproduce the output."""
    if generator is None:
        return torch.Generator().manual_seed(0), []
    seed = generator.initial_seed()
    if torch.equal(generator.get_state(), torch.Generator().manual_seed(seed).get_state()):
        return generator, []
    warning = f"the generator had drawn numbers before this call: seed {seed} alone does not reproduce this output"
    return generator, [warning]


def tiled_decode(vae: torch.nn.Module, z: torch.Tensor, *, tile: int | None = None, overlap: float = 0.25,
                 progress: bool = False) -> torch.Tensor:
    """VAE decode of a latent, whole or in overlapping tiles of ``tile``^3 latent voxels blended
    with Gaussian weights (MONAI's sliding window), so memory is bounded by the tile size."""
    if tile is None or all(n <= tile for n in z.shape[2:]):
        return vae.decode(z)
    from monai.inferers import sliding_window_inference

    return sliding_window_inference(z, roi_size=(tile,) * 3, sw_batch_size=1, predictor=vae.decode,
                                    overlap=overlap, mode="gaussian", progress=progress)


def findings_missing(spec: PromptSpec, labels: Volume) -> list[str]:
    """With a user label map the map decides what is drawn: name each prompt finding it lacks."""
    vocab = labels.vocab or Vocabulary.default()
    present = {vocab.name(int(i)) for i in np.unique(labels.numpy()) if int(i) in vocab}
    out = []
    for f in spec.findings:
        kind = {"nodule_solid": "nodule_solid", "nodule_ground_glass": "nodule_ground_glass"}.get(f.lesion_type)
        name = f"lung_{kind}" if kind else f"{organ_family(f.organ)}_{f.lesion_type}"
        if name not in present:
            out.append(f"the given label map has no {name}: the prompt's '{f.words}' is not drawn "
                       "(the label map decides the anatomy; insert lesions with `synthgen lesion insert`)")
    return out


class LatentCTPipeline:
    """The components of the latent CT pipelines and what they share: loading and saving,
    `check_inputs`, the denoising loop and the label map -> CT step. Subclasses add ``__call__``.

    ``scheduler``: the registered diffusers scheduler; a call's ``scheduler="ddim"|"dpm"`` samples
    with that kind on its noise schedule, never changing it. ``segmenter`` (optional, its config in
    ``settings.segmenter``) is the fidelity check's organ segmenter and stays on the CPU.
    ``thumbnails``: the training volumes' thumbnails for the memorisation check. ``weights``: the
    files the components were read from, by hash (the records' inputs); None when built in memory.
    ``device``: None = CUDA when available.
    """

    def __init__(self, *, vae: torch.nn.Module, unet: torch.nn.Module, text_encoder: torch.nn.Module,
                 scheduler: Any, prior: Prior, settings: PipelineSettings, controlnet: torch.nn.Module | None = None,
                 segmenter: torch.nn.Module | None = None, texture: TextureBank | None = None,
                 thumbnails: TrainingThumbnails | None = None, weights: WeightFiles | None = None,
                 device: str | torch.device | None = None) -> None:
        if (segmenter is None) != (settings.segmenter is None):
            raise ValueError("segmenter and settings.segmenter come together (the config is saved with it)")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.vae, self.unet = vae.to(self.device).eval(), unet.to(self.device).eval()
        self.text_encoder = text_encoder.to(self.device).eval()
        self.controlnet = controlnet.to(self.device).eval() if controlnet is not None else None
        self.segmenter = segmenter.eval() if segmenter is not None else None
        self.scheduler, self.prior, self.settings = scheduler, prior, settings
        self.texture, self.thumbnails, self.weights = texture, thumbnails, weights

    @property
    def components(self) -> dict[str, Any]:
        """Every constructor argument but ``device``: ``OtherPipeline(**pipe.components)``."""
        return {name: getattr(self, name) for name in COMPONENTS}

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike | None = None, *,
                        device: str | torch.device | None = None) -> LatentCTPipeline:
        """Load a pipeline folder or training run (None: the shipped default weights)."""
        folder = Path(folder) if folder is not None else default_weights()
        return cls(**load_components(folder, fallback_scheduler=DEFAULT_SCHEDULER), device=device)

    def save_pretrained(self, folder: str | os.PathLike, *, half: bool = False, overwrite: bool = False) -> Path:
        """Write every component to ``folder`` (``half``: weights stored as float16, loaded back as float32)."""
        return save_components(self.components, folder, half=half, overwrite=overwrite)

    @property
    def factor(self) -> int:
        """Image voxels per latent voxel along each axis."""
        return self.settings.vae.downsample

    @property
    def multiple(self) -> int:
        """The image sizes the VAE + UNet take are multiples of this."""
        return self.factor * 2 ** (len(self.settings.unet.channels) - 1)

    def check(self, ct: Volume, labels: Volume, *, phase: str | None = None) -> dict:
        """`synthgen.fidelity.check` with these weights' training thumbnails and organ segmenter."""
        thumbs = self.thumbnails
        return check(ct, labels, phase=phase, segmenter=self.segmenter,
                     training=thumbs.images.astype(np.float32) if thumbs is not None else None,
                     training_sources=list(thumbs.sources) if thumbs is not None else None)

    def check_inputs(self, *, num_inference_steps: Any, scheduler: Any, generator: Any, prompt: Any = None,
                     guidance_scale: Any = _UNSET, labels: Any = _UNSET, size: Any = _UNSET,
                     spacing: Any = _UNSET, tile: Any = _UNSET, **flags: Any) -> None:
        """Raise a one-line `InputError` for the first bad argument of a ``__call__``, before any work.

        Arguments a pipeline's ``__call__`` does not have are left out. ``num_inference_steps``:
        1..1000. ``scheduler``: None (the registered one) or a `synthgen.models.sampling.SCHEDULERS`
        name. ``generator``: None or a CPU `torch.Generator`. ``prompt``: text, a `PromptSpec` or
        None. ``guidance_scale``: a finite number in [0, 30]. ``labels``: a label Volume near these
        weights' training spacings. ``size`` / ``spacing``: those of a label map to build from the
        library (3 integers 16..256; mm, in range, trained on, fitting in memory). ``tile``: None or
        a positive integer. ``flags``: the boolean options, each True or False.
        """
        check_steps(num_inference_steps)
        if scheduler is not None:
            check_scheduler_name(scheduler)
        check_generator(generator)
        check_prompt(prompt)
        if guidance_scale is not _UNSET:
            check_guidance(guidance_scale)
        if labels is not _UNSET:
            check_label_map(labels, self.settings.trained_mm)
        if spacing is not _UNSET:
            check_library_spacing(spacing, self.settings.trained_mm)
        if size is not _UNSET:
            check_size(size)
        if tile is not _UNSET:
            check_tile(tile)
        for name, value in flags.items():
            check_flag(name, value)

    def encode(self, image: np.ndarray) -> torch.Tensor:
        """The VAE latent (its mean) of an image in model units ``(D, H, W)``."""
        return self.vae.encode(torch.from_numpy(image)[None, None].to(self.device))[0]

    def sample(self, zp: torch.Tensor, labels: Volume, spec: PromptSpec | None, spacing_mm, *, steps: int,
               guidance: float, scheduler: SchedulerName | None, generator: torch.Generator,
               known: torch.Tensor | None = None, known_mask: torch.Tensor | None = None,
               progress: bool = False) -> torch.Tensor:
        """The denoising loop (`synthgen.models.sampling.sample_latent`) with these components, on a
        fresh scheduler (``scheduler`` None: the registered one's copy)."""
        return sample_latent(self.unet, self.text_encoder, self.controlnet,
                             scheduler=switch_scheduler(self.scheduler, scheduler), zp=zp,
                             channels=torch.from_numpy(channel_index(labels))[None],
                             tokens=collate([spec_to_indices(spec)]),
                             spacing=torch.tensor(spacing_mm, dtype=torch.float32)[None], scale=self.settings.scale,
                             steps=int(steps), guidance=float(guidance), generator=generator, known=known,
                             known_mask=known_mask, progress=progress)

    def generate_ct(self, labels: Volume, spec: PromptSpec | None, *, generator: torch.Generator, steps: int,
                    guidance: float, scheduler: SchedulerName | None, tile: int | None, prior_correction: bool,
                    texture: bool, progress: bool, details: dict, started: float) -> CTPipelineOutput:
        """The step every label-map-conditioned pipeline shares: a CT for ``labels`` and its record
        (``details`` added to it; ``started``: `time.perf_counter` at the call's start).
        ``texture``: synthesise each tissue's fine detail from the texture bank (when the weights
        have one; seeded by ``generator.initial_seed()``)."""
        hu, tile = self._label_map_to_hu(labels, spec, generator=generator, steps=steps, guidance=guidance,
                                         scheduler=scheduler, tile=tile, prior_correction=prior_correction,
                                         progress=progress)
        ct = Volume(np.clip(np.rint(hu), -1024, 3071).astype(np.int16), labels.affine, kind="intensity", units="HU",
                    modality="CT", source="synthgen latent diffusion", synthetic=True,
                    meta={"generator": f"synthgen {__version__} {type(self).__name__}"})
        texture_info = None
        if texture and self.texture is not None:
            ct, texture_info = apply_texture(ct, labels, self.texture, seed=generator.initial_seed())
        parameters = {
            "prompt": spec.text if spec is not None else None, "spec": spec.to_dict() if spec is not None else None,
            "steps": int(steps), "guidance": float(guidance), "scheduler": self.scheduler_name(scheduler),
            "shape": list(labels.shape), "spacing_mm": [round(float(s), 4) for s in labels.spacing],
            "tile": tile, "prior_correction": bool(prior_correction), "texture": bool(texture),
            "prior_phase": self.prior.phase_for(spec.phase if spec is not None else None)}
        record = self.provenance(parameters, generator=generator, started=started,
                                 details={**details, "controlnet": self.controlnet is not None,
                                          "texture": texture_info})
        return CTPipelineOutput(ct=ct, labels=labels.replace(synthetic=True, source="synthgen label map"),
                                record=record)

    def _label_map_to_hu(self, labels: Volume, spec: PromptSpec | None, *, generator: torch.Generator,
                         steps: int, guidance: float, scheduler: SchedulerName | None, tile: int | None,
                         prior_correction: bool, progress: bool) -> tuple[np.ndarray, int | None]:
        """HU on ``labels``' grid, and the decode tile used. ``prior_correction``: add the VAE's
        reconstruction error of the prior image back, i.e. ``CT = P + decode(zp + r) - decode(zp)``:
        the structure boundaries are exactly the label map's, whatever the VAE blurs; the model
        contributes the texture and the variation inside and across structures."""
        m, shape = self.multiple, labels.shape
        lab = np.zeros([math.ceil(n / m) * m for n in shape], dtype=np.asarray(labels.numpy()).dtype)
        lab[: shape[0], : shape[1], : shape[2]] = labels.numpy()
        padded = labels.replace(array=lab)  # the same origin and axes, grown to the UNet multiple
        phase = spec.phase if spec is not None else None
        prior_img = torch.from_numpy(self.prior.image(padded, phase))[None, None].to(self.device)
        zp = self.vae.encode(prior_img)[0]
        z = self.sample(zp, padded, spec, labels.spacing, steps=steps, guidance=guidance, scheduler=scheduler,
                        generator=generator, progress=progress)
        if tile is None and np.prod(z.shape[2:]) > TILE_ABOVE:
            tile = DECODE_TILE
        y = tiled_decode(self.vae, z, tile=tile, progress=progress)
        if prior_correction:
            y = y + prior_img - tiled_decode(self.vae, zp, tile=tile)
        return model_to_hu(y[0, 0, : shape[0], : shape[1], : shape[2]].float().cpu().numpy()), tile

    def scheduler_name(self, scheduler: SchedulerName | None) -> str:
        """The name of the scheduler a call samples with (``scheduler`` None: the registered one)."""
        return scheduler if scheduler is not None else scheduler_name(self.scheduler)

    def provenance(self, parameters: dict, *, generator: torch.Generator, details: dict, started: float) -> Record:
        """The record of a call: ``parameters`` + the weights folder, the generator's seed, the
        weight files by hash, ``details`` + the seconds since ``started``."""
        folder = str(self.weights.folder) if self.weights is not None else None
        return Record.create(f"synthgen.{type(self).__name__}", parameters={**parameters, "weights": folder},
                             seed=generator.initial_seed(), inputs=self.weights.files if self.weights else (),
                             details={**details, "seconds": round(time.perf_counter() - started, 2)})


class MaskToCTPipeline(LatentCTPipeline):
    """Label map (+ optional prompt) -> CT in HU on the label map's grid."""

    @torch.no_grad()
    def __call__(self, labels: Volume, prompt: str | PromptSpec | None = None, *,
                 num_inference_steps: int = DEFAULT_STEPS, guidance_scale: float = DEFAULT_GUIDANCE,
                 scheduler: SchedulerName | None = None, generator: torch.Generator | None = None,
                 tile: int | None = None, prior_correction: bool = True, texture: bool = True,
                 progress: bool = False) -> CTPipelineOutput:
        """Generate a CT for ``labels`` (a label Volume); ``prompt`` is text, a PromptSpec or None.
        ``tile``: the decode tile in latent voxels (None: whole, or `DECODE_TILE` when large);
        ``prior_correction``, ``texture``: see `LatentCTPipeline.generate_ct`."""
        self.check_inputs(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                          scheduler=scheduler, generator=generator, prompt=prompt, labels=labels, tile=tile,
                          prior_correction=prior_correction, texture=texture, progress=progress)
        started = time.perf_counter()
        spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
        generator, warnings = resolve_generator(generator)
        if spec is not None:
            warnings += [*spec.warnings, *findings_missing(spec, labels)]
        details = {"label_source": "user label map", "lesions": [], "warnings": warnings}
        return self.generate_ct(labels, spec, generator=generator, steps=num_inference_steps,
                                guidance=guidance_scale, scheduler=scheduler, tile=tile,
                                prior_correction=prior_correction, texture=texture, progress=progress,
                                details=details, started=started)


class TextToCTPipeline(LatentCTPipeline):
    """Prompt -> PromptSpec -> label map (library + deformation + lesions) -> CT."""

    @torch.no_grad()
    def __call__(self, prompt: str | PromptSpec, *, labels: Volume | None = None, size=DEFAULT_SIZE,
                 spacing: float = DEFAULT_SPACING_MM, num_inference_steps: int = DEFAULT_STEPS,
                 guidance_scale: float = DEFAULT_GUIDANCE, scheduler: SchedulerName | None = None,
                 generator: torch.Generator | None = None, tile: int | None = None, prior_correction: bool = True,
                 texture: bool = True, progress: bool = False) -> CTPipelineOutput:
        """A CT and its label map for ``prompt``. ``labels``: condition on this label map instead of
        building one (``size`` and ``spacing``, voxels and mm of the built one, are then unused);
        the map decides the anatomy and ``details["warnings"]`` names each finding it lacks.
        The label map library draws from ``generator.initial_seed()``."""
        grid = {"labels": labels} if labels is not None else {"size": size, "spacing": spacing}
        self.check_inputs(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                          scheduler=scheduler, generator=generator, prompt=prompt, tile=tile,
                          prior_correction=prior_correction, texture=texture, progress=progress, **grid)
        started = time.perf_counter()
        spec = prompt if isinstance(prompt, PromptSpec) else parse_prompt(prompt)
        generator, warnings = resolve_generator(generator)
        warnings += spec.warnings
        if labels is not None:
            warnings += findings_missing(spec, labels)
            details = {"label_source": "user label map", "lesions": []}
        else:
            built = label_map_for(spec, size=size, spacing=spacing, seed=generator.initial_seed())
            labels, details = built.labels, {"label_source": built.source, "lesions": built.lesions,
                                             "anatomy": built.anatomy}
        return self.generate_ct(labels, spec, generator=generator, steps=num_inference_steps,
                                guidance=guidance_scale, scheduler=scheduler, tile=tile,
                                prior_correction=prior_correction, texture=texture, progress=progress,
                                details={**details, "warnings": warnings}, started=started)


class LesionInpaintPipeline(LatentCTPipeline):
    """Diffusion inpainting of lesion voxels into a real CT: only voxels inside the lesion mask
    (grown by ``margin_mm``, blended over that margin) change; every other voxel is bit-identical.

    The work happens on a box around the lesion, resampled to the model's spacing: the box's
    latent is known outside the (grown) mask and re-imposed at every step, the lesion is
    generated inside it, decoded, resampled back to the CT's grid and blended
    (`synthgen.pipelines.inpaint`).
    """

    @torch.no_grad()
    def __call__(self, ct: Volume, labels: Volume, lesion_label: str | int, *, model_spacing: float = 3.0,
                 margin_mm: float = 2.0, num_inference_steps: int = DEFAULT_STEPS,
                 scheduler: SchedulerName | None = None, generator: torch.Generator | None = None,
                 prompt: str | PromptSpec | None = None, match_noise: bool = True,
                 progress: bool = False) -> CTPipelineOutput:
        """``ct`` with the voxels of ``lesion_label`` (a name or id of ``labels``, on the CT's grid)
        generated by the model at ``model_spacing`` mm. ``match_noise``: add the host scan's noise
        (level and grain measured in the tissue around the lesion,
        `synthgen.lesions.appearance.estimate_noise`, seeded by ``generator.initial_seed()``) to
        the generated voxels, which the VAE returns smooth."""
        self.check_inputs(num_inference_steps=num_inference_steps, scheduler=scheduler, generator=generator,
                          prompt=prompt, match_noise=match_noise, progress=progress)
        lid = check_inpaint_inputs(ct, labels, lesion_label, model_spacing=model_spacing, margin_mm=margin_mm)
        started = time.perf_counter()
        spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
        generator, warnings = resolve_generator(generator)
        sp = np.asarray(ct.spacing)
        box = InpaintBox.around(labels.numpy() == lid, sp, margin_mm=margin_mm, model_spacing=model_spacing)
        generated = self._generate_box(ct, labels, box, spec, model_spacing=model_spacing, steps=num_inference_steps,
                                       scheduler=scheduler, generator=generator, progress=progress)
        noise = None
        if match_noise:
            generated, noise = with_host_noise(generated, ct.numpy()[box.slices], labels.numpy()[box.slices],
                                               box.mask[box.slices], sp, generator.initial_seed())
        out, changed = blend(ct, generated, box)
        parameters = {"lesion_label": str(lesion_label), "prompt": spec.text if spec is not None else None,
                      "steps": int(num_inference_steps), "scheduler": self.scheduler_name(scheduler),
                      "model_spacing_mm": float(model_spacing), "margin_mm": float(margin_mm),
                      "match_noise": bool(match_noise)}
        record = self.provenance(parameters, generator=generator, started=started,
                                 details={"changed_voxels": changed, "noise": noise, "warnings": warnings})
        return CTPipelineOutput(ct=ct.replace(array=out, synthetic=True), labels=labels, record=record)

    def _generate_box(self, ct: Volume, labels: Volume, box: InpaintBox, spec: PromptSpec | None, *,
                      model_spacing: float, steps: int, scheduler: SchedulerName | None,
                      generator: torch.Generator, progress: bool) -> np.ndarray:
        """HU generated for the box, on the CT's grid: the box at ``model_spacing``, its latent
        known outside the grown lesion, sampled inside it, decoded and resampled back."""
        sub_ct, sub_lab = ct.crop_voxels(box.start, box.stop), labels.crop_voxels(box.start, box.stop)
        grid = model_grid(sub_ct, model_spacing=model_spacing, multiple=self.multiple, vocab=labels.vocab)
        g_ct, g_lab = sub_ct.resample_to(grid, fill=-1024.0), sub_lab.resample_to(grid)
        g_region = Volume(box.region[box.slices].astype(np.uint8), sub_ct.affine, kind="label").resample_to(grid)
        known_mask = torch.from_numpy(latent_known_mask(g_region.numpy() > 0, self.factor))[None, None]
        prior = self.prior.image(g_lab, spec.phase if spec is not None else None)
        z = self.sample(self.encode(prior), g_lab, spec, [model_spacing] * 3, steps=steps,
                        guidance=1.0, scheduler=scheduler, generator=generator,
                        known=self.encode(hu_to_model(g_ct.numpy())), known_mask=known_mask.to(self.device),
                        progress=progress)
        gen_hu = model_to_hu(self.vae.decode(z)[0, 0].float().cpu().numpy())
        return Volume(gen_hu, grid.affine, kind="intensity", units="HU").resample_to(sub_ct, fill=0.0).numpy()

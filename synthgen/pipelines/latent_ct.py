"""Sampling pipelines of the latent diffusion stack: mask -> CT, text -> CT, lesion inpainting.

A pipeline folder (written by `synthgen train`, or by `save_pretrained`) holds::

    pipeline.json          diffusion schedule, latent scale, VAE factor, training spacings
    prior.json             per-structure mean intensity (`synthgen.models.conditioning.Prior`)
    vae/ unet/ text_encoder/ controlnet/    config.yaml + model.safetensors each
    training_thumbnails.safetensors         for the memorisation check

Generation: label map -> prior image ``P`` (each structure its training mean) -> VAE latent
``zp``; the diffusion UNet (+ ControlNet on the grouped one-hot labels, cross-attention on the
spec tokens) samples the residual ``r``; ``z = zp + r / scale`` is decoded (tiled when large),
corrected by the VAE's own error on the prior (``+ P - decode(zp)``) and mapped back to HU. Every output is marked synthetic and comes with its label map and a record
(prompt, spec, seed, steps, scheduler, guidance, model hashes).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthgen._assets import asset_path
from synthgen._version import __version__
from synthgen.anatomy.ops import bounding_box
from synthgen.config import load_config, save_config
from synthgen.errors import InputError
from synthgen.fidelity import check
from synthgen.files.atomic import atomic_dir
from synthgen.lesions.appearance import correlated_noise, estimate_noise
from synthgen.lesions.spec import organ_family
from synthgen.library import MAX_SIZE, label_map_for
from synthgen.memory import format_gib, memory_shortfall
from synthgen.models.checkpoint import file_hash, load_module, save_module
from synthgen.models.conditioning import Prior, channel_index
from synthgen.models.hu import hu_to_model, model_to_hu
from synthgen.models.networks import DiffusionConfig, UNetConfig, VAEConfig, build_controlnet, build_unet, build_vae
from synthgen.models.sampling import SCHEDULERS, sample_latent
from synthgen.models.segmenter import SegmenterConfig, build_segmenter
from synthgen.models.text_encoder import SpecEncoder, collate, spec_to_indices
from synthgen.text.prompt import PromptSpec, parse_prompt
from synthgen.vocab import Vocabulary
from synthgen.volume import Volume, as_spacing_mm

DEFAULT_WEIGHTS = "weights/ct-cpu"
#: Latent voxels above which the VAE decodes in tiles (memory stays bounded).
TILE_ABOVE = 32**3


#: Voxel sizes (mm) a generation accepts at all; the weights' training range narrows it further.
SPACING_RANGE_MM = (0.1, 20.0)
#: Classifier-free guidance scales accepted (0: unconditional on the prompt, 1: none).
GUIDANCE_RANGE = (0.0, 30.0)
#: The library's label maps are cut from a torso box of about 380 x 300 x 340 mm, built at the
#: requested spacing with ~20 bytes per voxel (`synthgen.library`).
LIBRARY_BOX_MM3 = 380.0 * 300.0 * 340.0
LIBRARY_BYTES_PER_VOXEL = 20


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _mm(sp: np.ndarray) -> str:
    """``"4"`` for an isotropic spacing, else ``"0.7 x 0.7 x 2.5"``."""
    return f"{sp[0]:g}" if np.all(sp == sp[0]) else " x ".join(f"{s:g}" for s in sp)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)) and math.isfinite(float(v))


@dataclasses.dataclass
class GenerationResult:
    ct: Volume
    labels: Volume
    record: dict


def default_weights() -> Path:
    return asset_path(*DEFAULT_WEIGHTS.split("/"))


def _read_yaml(path: Path, schema):
    return load_config(schema, paths=[path])


def _folder_settings(folder: Path) -> dict:
    """pipeline.json, or the equivalent read from a training run folder."""
    p = folder / "pipeline.json"
    if p.exists():
        try:
            settings = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"{p}: not valid JSON ({e}); is {folder} a synthgen pipeline folder?") from e
        if not isinstance(settings, dict):
            raise InputError(f"{p}: expected a JSON object of pipeline settings, got {type(settings).__name__}")
        return settings
    run_cfg, lat = folder / "train_config.yaml", folder / "latent.json"
    if run_cfg.exists() and lat.exists():
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(OmegaConf.load(run_cfg))
        d = cfg.get("diffusion", {})
        return {"diffusion": {k: d[k] for k in ("train_timesteps", "beta_start", "beta_end", "prediction") if k in d},
                "scale": json.loads(lat.read_text())["scale"],
                "spacings": cfg.get("data", {}).get("spacings", [3.0, 4.0, 5.0])}
    raise InputError(f"{folder}: not a synthgen pipeline folder (no pipeline.json, nor a training run's "
                     "train_config.yaml + latent.json)")


def tiled_decode(vae: torch.nn.Module, z: torch.Tensor, *, tile: int | None = None, overlap: float = 0.25,
                 progress: bool = False) -> torch.Tensor:
    """VAE decode of a latent, whole or in overlapping tiles of ``tile``^3 latent voxels blended
    with Gaussian weights (MONAI's sliding window), so memory is bounded by the tile size."""
    if tile is None or all(n <= tile for n in z.shape[2:]):
        return vae.decode(z)
    from monai.inferers import sliding_window_inference

    return sliding_window_inference(z, roi_size=(tile,) * 3, sw_batch_size=1, predictor=vae.decode,
                                    overlap=overlap, mode="gaussian", progress=progress)


class MaskToCTPipeline:
    """Label map (+ optional prompt) -> CT in HU on the label map's grid."""

    def __init__(self, vae, unet, encoder, controlnet, prior: Prior, settings: dict, *, vae_config: VAEConfig,
                 unet_config: UNetConfig, folder: Path | None = None,
                 device: str | torch.device | None = None) -> None:
        self.vae_config, self.unet_config = vae_config, unet_config
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.vae, self.unet, self.encoder = vae.to(self.device).eval(), unet.to(self.device).eval(), \
            encoder.to(self.device).eval()
        self.controlnet = controlnet.to(self.device).eval() if controlnet is not None else None
        self.prior = prior
        self.settings = settings
        self.diffusion = DiffusionConfig(**settings["diffusion"])
        self.scale = float(settings["scale"])
        self.folder = folder
        self.factor = 2 ** (len(self.vae_config.channels) - 1)
        self.multiple = self.factor * 2 ** (len(self.unet_config.channels) - 1)
        self._thumbs: tuple | None = None
        self.segmenter: torch.nn.Module | None = None  # the fidelity check's organ segmenter, if shipped

    # ----------------------------------------------------------------- loading / saving
    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike | None = None, *, device=None) -> MaskToCTPipeline:
        """Load a pipeline folder (None: the shipped default weights)."""
        folder = Path(folder) if folder is not None else default_weights()
        if not folder.is_dir():
            raise InputError(f"weights folder not found: {folder} (train one with `synthgen train`, "
                             "see README, or leave --weights out for the shipped default)")
        settings = _folder_settings(folder)
        vae_cfg = _read_yaml(_need(folder / "vae" / "config.yaml"), VAEConfig)
        unet_cfg = _read_yaml(_need(folder / "unet" / "config.yaml"), UNetConfig)
        lc = vae_cfg.latent_channels
        vae = load_module(build_vae(vae_cfg), _need(folder / "vae" / "model.safetensors"))
        unet = load_module(build_unet(unet_cfg, lc), _need(folder / "unet" / "model.safetensors"))
        enc = load_module(SpecEncoder(unet_cfg.context_dim), _need(folder / "text_encoder" / "model.safetensors"))
        cn = None
        if (folder / "controlnet" / "model.safetensors").exists():
            cn = load_module(build_controlnet(unet_cfg, lc), folder / "controlnet" / "model.safetensors")
        prior = Prior.from_mapping(json.loads(_need(folder / "prior.json").read_text()))
        seg = None
        if (folder / "segmenter" / "model.safetensors").exists():

            seg_cfg = _read_yaml(folder / "segmenter" / "config.yaml", SegmenterConfig)
            seg = load_module(build_segmenter(seg_cfg), folder / "segmenter" / "model.safetensors").eval()
            seg.config = seg_cfg
        pipe = cls(vae, unet, enc, cn, prior, settings, vae_config=vae_cfg, unet_config=unet_cfg, folder=folder,
                   device=device)
        pipe.segmenter = seg
        return pipe

    def save_pretrained(self, folder: str | os.PathLike, *, half: bool = False, overwrite: bool = False) -> Path:
        """Write the pipeline folder (``half``: weights stored as float16, loaded back as float32)."""

        with atomic_dir(folder, overwrite=overwrite) as tmp:
            parts = {"vae": (self.vae, self.vae_config), "unet": (self.unet, self.unet_config),
                     "text_encoder": (self.encoder, {"dim": self.encoder.dim}),
                     "controlnet": (self.controlnet, self.unet_config),
                     "segmenter": (self.segmenter, getattr(self.segmenter, "config", None))}
            for name, (module, cfg) in parts.items():
                if module is None:
                    continue
                (tmp / name).mkdir()
                save_module(module, tmp / name / "model.safetensors", half=half)
                save_config(cfg, tmp / name / "config.yaml", overwrite=True)
            (tmp / "prior.json").write_text(self.prior.to_json())
            (tmp / "pipeline.json").write_text(json.dumps({**self.settings, "synthgen": __version__}, indent=1))
            if self.folder is not None and (self.folder / "training_thumbnails.safetensors").exists():
                import shutil

                shutil.copyfile(self.folder / "training_thumbnails.safetensors",
                                tmp / "training_thumbnails.safetensors")
        return Path(folder)

    def model_hashes(self) -> dict[str, str]:
        if self.folder is None:
            return {}
        return {c: file_hash(p)[:16] for c in ("vae", "unet", "text_encoder", "controlnet", "segmenter")
                if (p := self.folder / c / "model.safetensors").exists()}

    def training_thumbnails(self) -> tuple[np.ndarray | None, list[str] | None]:
        if self._thumbs is None:
            p = self.folder / "training_thumbnails.safetensors" if self.folder else None
            if p is None or not p.exists():
                self._thumbs = (None, None)
            else:
                from safetensors import safe_open

                with safe_open(str(p), framework="np") as f:
                    self._thumbs = (f.get_tensor("thumbnails").astype(np.float32),
                                    json.loads(f.metadata()["sources"]))
        return self._thumbs

    def check(self, ct: Volume, labels: Volume, *, phase: str | None = None) -> dict:
        """`synthgen.fidelity.check` with these weights' training thumbnails and organ segmenter."""

        thumbs, sources = self.training_thumbnails()
        return check(ct, labels, phase=phase, training=thumbs, training_sources=sources, segmenter=self.segmenter)

    # ----------------------------------------------------------------- generation
    def check_inputs(self, *, steps: Any, guidance: Any, scheduler: Any, seed: Any, spacing: Any = None,
                     size: Any = None) -> None:
        """Raise `InputError` for any generation option out of range, before any work is done.

        ``steps``: an integer in 1..1000. ``guidance``: a finite number in `GUIDANCE_RANGE`;
        0 ignores the prompt (unconditional text tokens), 1 is the conditional model without
        classifier-free guidance, above 1 follows the prompt more strongly. ``seed``: an
        integer >= 0. ``spacing`` (mm, one number or three): finite, in `SPACING_RANGE_MM` and
        within these weights' training range. ``size``: 3 integers, 16 to
        `synthgen.library.MAX_SIZE` voxels.
        """
        if scheduler not in SCHEDULERS:
            raise InputError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if not _is_int(steps) or not 1 <= steps <= 1000:
            raise InputError(f"steps must be an integer in 1..1000, got {steps!r}")
        lo, hi = GUIDANCE_RANGE
        if not _is_real(guidance) or not lo <= guidance <= hi:
            raise InputError(f"guidance must be a finite number in [{lo:g}, {hi:g}] (0: ignore the prompt, "
                             f"1: no guidance), got {guidance!r}")
        if not _is_int(seed) or seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed!r}")
        if spacing is not None:
            self._check_spacing(spacing)
        if size is not None:

            try:
                dims = tuple(size) if np.ndim(size) else (size,) * 3
            except TypeError:
                dims = (size,)
            if len(dims) != 3 or not all(_is_int(n) and 16 <= n <= MAX_SIZE for n in dims):
                raise InputError(f"size must be 3 integers between 16 and {MAX_SIZE} voxels, got {size!r}")

    def _check_spacing(self, spacing: Any, *, what: str = "spacing") -> np.ndarray:
        sp = as_spacing_mm(spacing, name=what)
        lo, hi = SPACING_RANGE_MM
        if (sp < lo).any() or (sp > hi).any():
            raise InputError(f"{what} must be in {lo:g}-{hi:g} mm, got {_mm(sp)} mm")
        self._check_trained_spacing(sp, what=what)
        need = LIBRARY_BOX_MM3 / float(np.prod(sp)) * LIBRARY_BYTES_PER_VOXEL  # the label map is built on this box
        short = memory_shortfall(need)
        if short:
            raise InputError(f"{what} {_mm(sp)} mm: building the label map would need "
                             f"about {format_gib(need)}, {short}")
        return sp

    def _check_trained_spacing(self, sp: np.ndarray, *, what: str) -> None:
        lo, hi = min(self.settings.get("spacings", [3.0])), max(self.settings.get("spacings", [5.0]))
        if (sp < lo * 0.75).any() or (sp > hi * 1.25).any():
            raise InputError(
                f"{what} {' x '.join(f'{s:.2f}' for s in sp)} mm is outside what these weights "
                f"were trained on ({lo:g}-{hi:g} mm); resample it (e.g. `--spacing 4`)")

    def check_labels(self, labels: Volume) -> None:
        if not isinstance(labels, Volume) or labels.kind != "label":
            raise InputError("the conditioning label map must be a label Volume (kind='label')")
        self._check_trained_spacing(np.asarray(labels.spacing), what="label map spacing")
        if max(labels.shape) > 512:
            raise InputError(f"label map of {labels.shape} voxels is too large for one generation (max 512 per axis)")

    @torch.no_grad()
    def __call__(self, labels: Volume, prompt: Any = None, *, steps: int = 30, guidance: float = 2.0,
                 seed: int = 0, scheduler: str = "ddim", tile: int | None = None, prior_correction: bool = True,
                 progress: bool = False) -> GenerationResult:
        """Generate a CT for ``labels`` (a label Volume); ``prompt`` is text, a PromptSpec or None.

        ``prior_correction``: add the VAE's reconstruction error of the prior image back to the
        decoded image, i.e. ``CT = prior + decode(zp + r) - decode(zp)``: the structure boundaries
        are exactly the label map's, whatever the VAE blurs; the model contributes the texture and
        the variation inside and across structures.
        """

        self.check_inputs(steps=steps, guidance=guidance, scheduler=scheduler, seed=seed)
        self.check_labels(labels)
        spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
        if spec is not None and not isinstance(spec, PromptSpec):
            raise InputError(f"prompt must be text or a PromptSpec, got {type(prompt).__name__}")
        t0 = time.perf_counter()
        m = self.multiple
        shape = labels.shape
        padded_shape = [math.ceil(n / m) * m for n in shape]
        lab = np.zeros(padded_shape, dtype=np.asarray(labels.numpy()).dtype)
        lab[: shape[0], : shape[1], : shape[2]] = labels.numpy()
        lab_vol = labels.replace(array=lab)
        prior_img = torch.from_numpy(self.prior.image(lab_vol))[None, None].to(self.device)
        zp = self.vae.encode(prior_img)[0]
        channels = torch.from_numpy(channel_index(lab_vol))[None]
        tokens = collate([spec_to_indices(spec)])
        spacing = torch.tensor(labels.spacing, dtype=torch.float32)[None]
        gen = torch.Generator().manual_seed(int(seed))
        z = sample_latent(self.unet, self.encoder, self.controlnet, zp=zp, channels=channels, tokens=tokens,
                          spacing=spacing, scale=self.scale, diffusion=self.diffusion, steps=int(steps),
                          guidance=float(guidance), scheduler=scheduler, generator=gen, progress=progress)
        if tile is None and np.prod(z.shape[2:]) > TILE_ABOVE:
            tile = 24
        y = tiled_decode(self.vae, z, tile=tile, progress=progress)
        if prior_correction:  # add back the VAE's reconstruction error of the prior image
            y = y + prior_img - tiled_decode(self.vae, zp, tile=tile)
        hu = model_to_hu(y[0, 0, : shape[0], : shape[1], : shape[2]].float().cpu().numpy())
        ct = Volume(np.rint(hu).astype(np.int16), labels.affine, kind="intensity", units="HU", modality="CT",
                    source="synthgen latent diffusion", synthetic=True,
                    meta={"generator": f"synthgen {__version__} MaskToCTPipeline"})
        record = {
            "generator": f"synthgen {__version__}", "pipeline": type(self).__name__,
            "prompt": spec.text if spec is not None else None, "spec": spec.to_dict() if spec is not None else None,
            "seed": int(seed), "steps": int(steps), "scheduler": scheduler, "guidance": float(guidance),
            "shape": list(shape), "spacing_mm": [round(float(s), 4) for s in labels.spacing],
            "weights": str(self.folder) if self.folder else None, "model_hashes": self.model_hashes(),
            "controlnet": self.controlnet is not None, "tiled_decode": tile, "prior_correction": prior_correction,
            "seconds": None, "synthetic": True,
        }
        record["seconds"] = round(time.perf_counter() - t0, 2)
        out_labels = labels.replace(synthetic=True, source="synthgen label map")
        return GenerationResult(ct=ct, labels=out_labels, record=record)


def _need(p: Path) -> Path:
    if not p.exists():
        raise InputError(f"{p}: missing from the weights folder (an incomplete training run or export?)")
    return p


class TextToCTPipeline(MaskToCTPipeline):
    """Prompt -> PromptSpec -> label map (library + deformation + lesions) -> CT."""

    @torch.no_grad()
    def __call__(self, prompt: str, *, labels: Volume | None = None, size=(96, 96, 96), spacing: float = 4.0,
                 steps: int = 30, guidance: float = 2.0, seed: int = 0, scheduler: str = "ddim",
                 tile: int | None = None, prior_correction: bool = True, progress: bool = False) -> GenerationResult:
        built = labels is None  # size and spacing are those of the label map built here (else unused)
        self.check_inputs(steps=steps, guidance=guidance, scheduler=scheduler, seed=seed,
                          spacing=spacing if built else None, size=size if built else None)
        spec = parse_prompt(prompt)
        lesions: list[dict] = []
        source = "user label map"
        warnings = list(spec.warnings)
        if labels is not None:
            warnings += _findings_missing(spec, labels)
        else:
            built = label_map_for(spec, size=size, spacing=spacing, seed=seed)
            labels, lesions, source = built.labels, built.lesions, built.source
        res = super().__call__(labels, spec, steps=steps, guidance=guidance, seed=seed, scheduler=scheduler,
                               tile=tile, prior_correction=prior_correction, progress=progress)
        res.record.update(pipeline=type(self).__name__, label_source=source, lesions=lesions, warnings=warnings)
        return res


def _with_host_noise(gen: np.ndarray, hu: np.ndarray, lab: np.ndarray, lesion: np.ndarray, spacing,
                     seed: int) -> tuple[np.ndarray, dict | None]:
    """``gen`` + noise with the level and grain of the host tissue around the lesion (None: too
    little host tissue to measure, nothing added)."""
    from scipy import ndimage


    shell = ndimage.binary_dilation(lesion, iterations=6) & ~ndimage.binary_dilation(lesion, iterations=2)
    if not shell.any():
        return gen, None
    host = np.bincount(lab[shell].astype(np.int64)).argmax()
    region = ndimage.binary_erosion(lab == host) & ~ndimage.binary_dilation(lesion, iterations=2)
    try:
        model = estimate_noise(hu.astype(np.float32), region, spacing_mm=spacing)
    except InputError:
        return gen, None
    noise = correlated_noise(gen.shape, model, spacing_mm=spacing, rng=np.random.default_rng([seed, 7]))
    return gen + noise, {"std_hu": round(float(model.std_hu), 2), "grain_mm": round(float(model.grain_mm), 2)}


def _findings_missing(spec, labels: Volume) -> list[str]:
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


class LesionInpaintPipeline(MaskToCTPipeline):
    """Diffusion inpainting of lesion voxels into a real CT: only voxels inside the lesion mask
    (grown by ``margin_mm``, blended over that margin) change; every other voxel is bit-identical.

    The work happens on a box around the lesion, resampled to the model's spacing: the box's
    latent is known outside the (grown) mask and re-imposed at every step, the lesion is
    generated inside it, decoded, resampled back to the CT's grid and blended.
    """

    @torch.no_grad()
    def __call__(self, ct: Volume, labels: Volume, lesion_label: str | int, *, model_spacing: float = 3.0,
                 margin_mm: float = 2.0, steps: int = 30, seed: int = 0, scheduler: str = "ddim",
                 prompt: Any = None, match_noise: bool = True, progress: bool = False) -> GenerationResult:
        """``match_noise``: add the host scan's noise (level and grain measured in the tissue around
        the lesion, `synthgen.lesions.appearance.estimate_noise`) to the generated voxels, which
        the VAE returns smooth."""
        from scipy import ndimage


        self.check_inputs(steps=steps, guidance=1.0, scheduler=scheduler, seed=seed)
        lo, hi = SPACING_RANGE_MM
        if not _is_real(model_spacing) or not lo <= model_spacing <= hi:
            raise InputError(f"model_spacing must be a number of mm in {lo:g}-{hi:g}, got {model_spacing!r}")
        if not _is_real(margin_mm) or not 0 <= margin_mm <= 50:
            raise InputError(f"margin_mm must be a number of mm in [0, 50], got {margin_mm!r}")
        ct.check_same_grid(labels, names=("CT", "label map"))
        vocab = labels.vocab
        lid = lesion_label if isinstance(lesion_label, int) else (vocab.id(lesion_label) if vocab else None)
        if lid is None:
            raise InputError("lesion_label must be an id when the label map has no vocabulary")
        lab = labels.numpy()
        mask = lab == lid
        if not mask.any():
            raise InputError(f"label {lesion_label!r} has no voxel in the label map")
        sp = np.asarray(ct.spacing)
        grow = ndimage.distance_transform_edt(~mask, sampling=sp)
        region = grow <= margin_mm
        weight = np.clip(1.0 - grow / max(margin_mm, 1e-6), 0.0, 1.0) * region  # 1 inside, ramps to 0
        weight[mask] = 1.0
        ctx_mm = 16.0 * model_spacing  # context around the lesion for the model
        margin_vox = [math.ceil(ctx_mm / s) for s in sp]
        box = bounding_box(region, margin_vox=margin_vox)
        sl = tuple(slice(a, b) for a, b in zip(*box))
        sub_ct, sub_lab = ct.crop_voxels(*box), labels.crop_voxels(*box)
        m = self.multiple
        # model grid: the box resampled to model_spacing, padded to the UNet multiple
        extent = np.asarray(sub_ct.shape) * sp
        n = [max(m, math.ceil(e / model_spacing / m) * m) for e in extent]
        grid_affine = sub_ct.affine.copy()
        grid_affine[:3, :3] = sub_ct.affine[:3, :3] / sp * model_spacing
        target = Volume(np.zeros(n, np.int16), grid_affine, kind="label", vocab=vocab)
        g_ct = sub_ct.resample_to(target, fill=-1024.0)
        g_lab = sub_lab.resample_to(target)
        g_region = Volume(region[sl].astype(np.uint8), sub_ct.affine, kind="label").resample_to(target).numpy() > 0
        y = torch.from_numpy(hu_to_model(g_ct.numpy()))[None, None].to(self.device)
        known = self.vae.encode(y)[0]
        zp = self.vae.encode(torch.from_numpy(self.prior.image(g_lab))[None, None].to(self.device))[0]
        f = self.factor
        lat_mask = torch.from_numpy(
            ndimage.maximum_filter(g_region, size=f)[::f, ::f, ::f].astype(np.float32))[None, None].to(self.device)

        spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
        z = sample_latent(self.unet, self.encoder, self.controlnet, zp=zp,
                          channels=torch.from_numpy(channel_index(g_lab))[None], tokens=collate([spec_to_indices(spec)]),
                          spacing=torch.tensor([model_spacing] * 3, dtype=torch.float32)[None], scale=self.scale,
                          diffusion=self.diffusion, steps=steps, guidance=1.0, scheduler=scheduler,
                          generator=torch.Generator().manual_seed(int(seed)), known=known,
                          known_mask=1.0 - lat_mask, progress=progress)
        gen_hu = model_to_hu(self.vae.decode(z)[0, 0].float().cpu().numpy())
        back = Volume(gen_hu, grid_affine, kind="intensity", units="HU").resample_to(sub_ct, fill=0.0).numpy()
        noise_info = None
        if match_noise:
            back, noise_info = _with_host_noise(back, sub_ct.numpy(), lab[sl], mask[sl], sp, seed)
        out = ct.numpy().copy()
        w = weight[sl]
        inside = w > 0
        blended = out[sl].astype(np.float32)
        blended[inside] = w[inside] * back[inside] + (1 - w[inside]) * blended[inside]
        sub = out[sl]
        sub[inside] = np.rint(blended[inside]).astype(out.dtype) if np.issubdtype(out.dtype, np.integer) \
            else blended[inside].astype(out.dtype)
        new_ct = ct.replace(array=out, synthetic=True)
        record = {"generator": f"synthgen {__version__}", "pipeline": type(self).__name__,
                  "lesion_label": str(lesion_label), "seed": int(seed), "steps": int(steps),
                  "scheduler": scheduler, "model_spacing_mm": model_spacing, "margin_mm": margin_mm,
                  "changed_voxels": int(inside.sum()), "noise": noise_info, "model_hashes": self.model_hashes(),
                  "synthetic": True}
        return GenerationResult(ct=new_ct, labels=labels, record=record)

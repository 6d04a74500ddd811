"""The diffusers contract of the latent CT pipelines, on tiny networks built by the real classes on CPU.

Components are constructor arguments and round-trip through save_pretrained / from_pretrained;
every `__call__` checks its arguments first (one-line `InputError`s), draws from ``generator=``,
samples with the registered scheduler unless asked for another (without changing it), and
returns a frozen output with a `Record`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json

import numpy as np
import pytest
import torch

from synthgen.errors import InputError
from synthgen.io.record import Record
from synthgen.library import ENTRIES
from synthgen.models.conditioning import N_CHANNELS, Prior
from synthgen.models.networks import DiffusionConfig, UNetConfig, VAEConfig, build_controlnet, build_unet, build_vae
from synthgen.models.sampling import SCHEDULERS, make_scheduler, switch_scheduler
from synthgen.models.segmenter import SegmenterConfig, build_segmenter
from synthgen.models.text_encoder import SpecEncoder
from synthgen.models.texture import TextureBank
from synthgen.pipelines.folder import PipelineSettings, TrainingThumbnails
from synthgen.pipelines.latent_ct import (
    COMPONENTS,
    CTPipelineOutput,
    LatentCTPipeline,
    LesionInpaintPipeline,
    MaskToCTPipeline,
    TextToCTPipeline,
)
from synthgen.vocab import Vocabulary
from synthgen.volume import Volume

SETTINGS = PipelineSettings(
    diffusion=DiffusionConfig(), scale=0.7, spacings=(4.0, 5.0),
    vae=VAEConfig(channels=[8, 8], latent_channels=4, norm_num_groups=4),
    unet=UNetConfig(channels=[8, 8], attention_levels=[False, True], norm_num_groups=4, num_head_channels=8,
                    context_dim=16, control_channels=[4, 8]),
    segmenter=SegmenterConfig(channels=[4, 8]))


def _components(scheduler: str = "ddim") -> dict:
    """Tiny randomly initialised networks (seeded without touching the caller's global RNG)."""
    s = SETTINGS
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        lc = s.vae.latent_channels
        nets = {"vae": build_vae(s.vae), "unet": build_unet(s.unet, lc), "text_encoder": SpecEncoder(16),
                "controlnet": build_controlnet(s.unet, lc), "segmenter": build_segmenter(s.segmenter)}
    prior = Prior(by_name={"liver": 0.1}, by_channel=[-1.0 + 0.1 * k for k in range(N_CHANNELS)])
    thumbs = TrainingThumbnails(images=np.linspace(0, 1, 2 * 8**3, dtype=np.float16).reshape(2, 8, 8, 8),
                                sources=("phantom-0", "example-0"))
    grain = np.random.default_rng(0).normal(0, 15, (4, 4, 4, 4)).round().astype(np.int16)
    texture = TextureBank(spacings=(5.0,), block=4, sigma_vox=1.5, detail={(5.0, "liver"): grain},
                          inside={(5.0, "liver"): np.ones(grain.shape, bool)}, sources=("noise",))
    return {**nets, "scheduler": make_scheduler(s.diffusion, scheduler), "prior": prior, "settings": s,
            "texture": texture, "thumbnails": thumbs, "weights": None}


@pytest.fixture(scope="module")
def pipe():
    return MaskToCTPipeline(**_components(), device="cpu")


@pytest.fixture(scope="module")
def labels():
    v = Vocabulary.default()
    a = np.zeros((16, 16, 16), np.uint8)
    a[2:14, 2:14, 2:14] = v.id("body")
    a[5:11, 4:12, 5:11] = v.id("liver")
    a[7:9, 7:9, 7:9] = v.id("liver_tumor")
    return Volume(a, np.diag([5.0, 5.0, 5.0, 1.0]), kind="label", vocab=v)


def _settings(scheduler) -> dict:
    """A scheduler's config without diffusers' bookkeeping (``_class_name``, ``_use_default_values``...)."""
    return {k: v for k, v in scheduler.config.items() if not k.startswith("_")}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _run(pipe, labels, **kw) -> CTPipelineOutput:
    return pipe(labels, "abdomen CT, 1 cm tumour in the liver", num_inference_steps=1, **kw)


def test_components_are_the_constructor_arguments(pipe):
    params = set(inspect.signature(LatentCTPipeline.__init__).parameters) - {"self", "device"}
    assert set(pipe.components) == set(COMPONENTS) == params
    text = TextToCTPipeline(**pipe.components, device="cpu")
    assert all(text.components[k] is v for k, v in pipe.components.items())


def test_constructor_needs_the_segmenter_config():
    comps = _components()
    with pytest.raises(ValueError, match="segmenter and settings.segmenter"):
        MaskToCTPipeline(**{**comps, "settings": dataclasses.replace(SETTINGS, segmenter=None)})


def test_save_pretrained_round_trips_every_component(pipe, labels, tmp_path):
    folder = pipe.save_pretrained(tmp_path / "p")
    assert (folder / "scheduler" / "scheduler_config.json").is_file()
    again = MaskToCTPipeline.from_pretrained(folder, device="cpu")
    for name in ("vae", "unet", "text_encoder", "controlnet", "segmenter"):
        a, b = pipe.components[name].state_dict(), again.components[name].state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert type(again.scheduler) is type(pipe.scheduler) and _settings(again.scheduler) == _settings(pipe.scheduler)
    assert again.prior == pipe.prior and again.settings == pipe.settings
    assert again.texture.detail.keys() == pipe.texture.detail.keys()
    assert all(np.array_equal(again.texture.detail[k], pipe.texture.detail[k]) for k in pipe.texture.detail)
    assert np.array_equal(again.thumbnails.images, pipe.thumbnails.images)
    assert again.thumbnails.sources == pipe.thumbnails.sources
    assert again.weights.folder == folder
    assert {f.name for f in again.weights.files} == {
        *(f"{c}/model.safetensors" for c in ("vae", "unet", "text_encoder", "controlnet", "segmenter")), "prior.json",
        "texture/bank.safetensors"}
    before, after = _run(pipe, labels, generator=_gen(1)), _run(again, labels, generator=_gen(1))
    assert np.array_equal(before.ct.numpy(), after.ct.numpy())  # bit-identical through the round trip
    assert {f.name for f in after.record.inputs} == {f.name for f in again.weights.files}
    assert after.record.parameters["weights"] == str(folder)


def test_a_saved_dpm_scheduler_is_the_registered_one(labels, tmp_path):
    dpm = MaskToCTPipeline(**_components("dpm"), device="cpu")
    again = MaskToCTPipeline.from_pretrained(dpm.save_pretrained(tmp_path / "dpm"), device="cpu")
    assert type(again.scheduler).__name__ == SCHEDULERS["dpm"].class_name
    out = _run(again, labels, generator=_gen(2))
    assert out.record.parameters["scheduler"] == "dpm"
    assert np.array_equal(out.ct.numpy(), _run(dpm, labels, generator=_gen(2)).ct.numpy())


def test_a_named_scheduler_is_built_on_the_registered_one_without_changing_it(pipe, labels):
    d = DiffusionConfig()
    assert _settings(switch_scheduler(make_scheduler(d, "ddim"), "dpm")) == _settings(make_scheduler(d, "dpm"))
    assert _settings(switch_scheduler(make_scheduler(d, "dpm"), "ddim")) == _settings(make_scheduler(d, "ddim"))
    registered = dict(pipe.scheduler.config)
    named = _run(pipe, labels, scheduler="dpm", generator=_gen(3))
    assert dict(pipe.scheduler.config) == registered and type(pipe.scheduler).__name__ == "DDIMScheduler"
    dpm = MaskToCTPipeline(**{**pipe.components, "scheduler": make_scheduler(d, "dpm")}, device="cpu")
    assert np.array_equal(named.ct.numpy(), _run(dpm, labels, generator=_gen(3)).ct.numpy())
    assert named.record.parameters["scheduler"] == "dpm"
    assert _run(pipe, labels, generator=_gen(3)).record.parameters["scheduler"] == "ddim"


def test_generator_seeds_the_output_and_the_record(pipe, labels):
    default = _run(pipe, labels)
    assert default.record.seed == 0
    assert np.array_equal(default.ct.numpy(), _run(pipe, labels, generator=_gen(0)).ct.numpy())
    assert not np.array_equal(default.ct.numpy(), _run(pipe, labels, generator=_gen(1)).ct.numpy())
    used = _gen(5)
    torch.randn(3, generator=used)
    out = _run(pipe, labels, generator=used)
    assert out.record.seed == 5
    assert any("drawn numbers before this call" in w for w in out.record.details["warnings"])
    assert not any("drawn numbers" in w for w in _run(pipe, labels, generator=_gen(5)).record.details["warnings"])


def test_output_is_frozen_with_a_record(pipe, labels):
    out = _run(pipe, labels, generator=_gen(4), guidance_scale=1.5)
    assert out.ct.same_grid(labels) and out.ct.numpy().dtype == np.int16 and out.ct.synthetic
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.ct = out.labels  # type: ignore[misc]
    rec = out.record
    assert isinstance(rec, Record) and rec.generator == "synthgen.MaskToCTPipeline" and rec.synthetic
    assert rec.seed == 4 and rec.inputs == ()  # built in memory: no weight files
    p = rec.parameters
    assert (p["steps"], p["guidance"], p["scheduler"], p["shape"]) == (1, 1.5, "ddim", [16, 16, 16])
    assert p["prompt"].startswith("abdomen CT") and p["spec"]["findings"]
    assert {"seconds", "label_source", "lesions", "warnings", "controlnet"} <= set(rec.details)
    assert Record.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec


def test_text_to_ct_records_its_label_map(pipe):
    text = TextToCTPipeline(**pipe.components, device="cpu")
    out = text("abdomen CT, 2 cm cyst in the liver", size=(20, 16, 16), spacing=5.0, num_inference_steps=1,
               generator=_gen(7))
    assert out.ct.shape == (20, 16, 16) and out.record.generator == "synthgen.TextToCTPipeline"
    assert out.record.details["label_source"] in ENTRIES  # a library entry: a real patient or the phantom
    assert out.record.details["anatomy"]["entry"] == out.record.details["label_source"]
    assert out.record.details["lesions"][0]["type"] == "cyst" and out.record.seed == 7


def test_inpainting_record_and_locality(pipe, labels):
    inpaint = LesionInpaintPipeline(**pipe.components, device="cpu")
    hu = np.where(labels.numpy() > 0, 40, -1000).astype(np.int16)
    ct = Volume(hu, labels.affine, kind="intensity", units="HU")
    out = inpaint(ct, labels, "liver_tumor", model_spacing=5.0, margin_mm=0.0, num_inference_steps=1,
                  scheduler="dpm", generator=_gen(8), match_noise=False)
    lesion = labels.numpy() == labels.vocab.id("liver_tumor")
    assert np.array_equal(out.ct.numpy()[~lesion], hu[~lesion])
    rec = out.record
    assert rec.generator == "synthgen.LesionInpaintPipeline" and rec.seed == 8
    assert rec.details["changed_voxels"] == int(lesion.sum()) and rec.parameters["scheduler"] == "dpm"


def _ct(labels):
    return Volume(np.zeros(labels.shape, np.int16), labels.affine, kind="intensity", units="HU")


@pytest.mark.parametrize("call,message", [
    (lambda p, lab: p(lab, num_inference_steps=0), "num_inference_steps must be an integer in 1..1000, got 0"),
    (lambda p, lab: p(lab, num_inference_steps=2.5), "num_inference_steps must be an integer"),
    (lambda p, lab: p(lab, guidance_scale=float("nan")), "guidance_scale: classifier-free guidance must be a finite"),
    (lambda p, lab: p(lab, scheduler="euler"), "unknown scheduler 'euler'; choose one of ddim, dpm"),
    (lambda p, lab: p(lab, generator=3), "generator must be a torch.Generator or None, got int"),
    (lambda p, lab: p(lab, prompt=3), "prompt must be text, a PromptSpec or None, got int"),
    (lambda p, lab: p(lab, tile=0), "tile must be None or a positive integer"),
    (lambda p, lab: p(lab, prior_correction="yes"), "prior_correction must be True or False"),
    (lambda p, lab: p(_ct(lab)), "the conditioning label map must be a label Volume"),
    (lambda p, lab: p(None), "the conditioning label map must be a label Volume (kind='label'), got NoneType"),
    (lambda p, lab: p(lab.resample(1.0)), "outside what these weights were trained on (4-5 mm)"),
    (lambda p, lab: TextToCTPipeline(**p.components)("chest CT", size=(8, 64, 64)), "size must be 3 integers"),
    (lambda p, lab: TextToCTPipeline(**p.components)("chest CT", spacing=float("nan")), "spacing must be 3 positive"),
    (lambda p, lab: TextToCTPipeline(**p.components)("chest CT", spacing=50.0), "spacing must be in 0.1-20 mm"),
    (lambda p, lab: TextToCTPipeline(**p.components)(None), "prompt must be a string"),
    (lambda p, lab: LesionInpaintPipeline(**p.components)(_ct(lab), lab, "liver_tumor", num_inference_steps=-1),
     "num_inference_steps must be an integer"),
    (lambda p, lab: LesionInpaintPipeline(**p.components)(_ct(lab), lab, "liver_tumor", scheduler="pndm"),
     "unknown scheduler 'pndm'"),
    (lambda p, lab: LesionInpaintPipeline(**p.components)(_ct(lab), lab, "liver_tumor", model_spacing=0.0),
     "model_spacing must be a number of mm in [0.1, 20], got 0.0"),
    (lambda p, lab: LesionInpaintPipeline(**p.components)(_ct(lab), lab, "liver_tumor", margin_mm=float("inf")),
     "margin_mm must be a number of mm in [0, 50]"),
    (lambda p, lab: LesionInpaintPipeline(**p.components)(_ct(lab), lab, "kidney_cyst"),
     "label 'kidney_cyst' has no voxel in the label map"),
    (lambda p, lab: LesionInpaintPipeline(**p.components)(_ct(lab), lab, True),
     "lesion_label must be a structure name or id, got True"),
    (lambda p, lab: LesionInpaintPipeline(**p.components)(lab, lab, "liver_tumor"), "ct must be an intensity Volume (HU), got a label Volume"),
    (lambda p, lab: LesionInpaintPipeline(**p.components)(_ct(lab).crop_voxels((0, 0, 0), (8, 8, 8)), lab, 1),
     "label map is not on the grid of the CT"),
])
def test_bad_arguments_are_one_line_errors_before_any_work(pipe, labels, monkeypatch, call, message):
    def no_work(*a, **k):
        raise AssertionError("sampled before checking the arguments")

    monkeypatch.setattr(LatentCTPipeline, "sample", no_work)
    with pytest.raises(InputError) as e:
        call(pipe, labels)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("edit,message", [
    (lambda f: _edit_json(f / "pipeline.json", extra=1), "unknown settings extra"),
    (lambda f: _edit_json(f / "pipeline.json", scale=-1), "scale and spacings must be positive numbers"),
    (lambda f: _edit_json(f / "pipeline.json", diffusion={"steps": 3}), "diffusion must be an object with keys"),
    (lambda f: _edit_json(f / "scheduler" / "scheduler_config.json", _class_name="PNDMScheduler"),
     "scheduler class 'PNDMScheduler' is not one synthgen samples with"),
    (lambda f: _edit_json(f / "scheduler" / "scheduler_config.json", warp=2), "unknown DDIMScheduler settings warp"),
    (lambda f: (f / "prior.json").write_text("[1"), "prior.json: not valid JSON"),
    (lambda f: (f / "unet" / "config.yaml").unlink(), "missing from the weights folder"),
])
def test_from_pretrained_is_strict(pipe, tmp_path, edit, message):
    folder = pipe.save_pretrained(tmp_path / "p")
    edit(folder)
    with pytest.raises(InputError) as e:
        MaskToCTPipeline.from_pretrained(folder, device="cpu")
    assert message in str(e.value) and "\n" not in str(e.value)


def _edit_json(path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

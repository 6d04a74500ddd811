"""synthgen.models: HU transform, conditioning, spec encoder, networks and checkpoints (training: test_train.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from synthgen.config import load_config
from synthgen.errors import InputError
from synthgen.models.checkpoint import load_module, load_optimizer, save_module, save_optimizer, state_hash
from synthgen.models.conditioning import CHANNEL_NAMES, N_CHANNELS, Prior, channel_index, one_hot
from synthgen.models.hu import HU_MAX, HU_MIN, hu_to_model, model_to_hu
from synthgen.models.networks import VAEConfig, build_controlnet, build_unet, build_vae
from synthgen.models.text_encoder import CONTEXT_TOKENS, SpecEncoder, collate, spec_to_indices
from synthgen.text.prompt import parse_prompt
from synthgen.train import TrainConfig
from synthgen.vocab import Vocabulary
from synthgen.volume import Volume

TINY = Path(__file__).parent / "tiny_train.yaml"


def tiny_config(*overrides: str) -> TrainConfig:
    return load_config(TrainConfig, paths=[TINY], overrides=list(overrides))


# ------------------------------------------------------------------ HU transform
def test_hu_transform_is_invertible_over_the_full_range():
    hu = np.linspace(HU_MIN, HU_MAX, 40961, dtype=np.float32)
    y = hu_to_model(hu)
    assert np.all(np.diff(y) > 0)  # strictly monotonic: no two HU values collide
    assert np.abs(model_to_hu(y) - hu).max() < 0.05
    assert y.min() >= -1 and y.max() == pytest.approx(1.0)
    # bone and metal survive (no +-1000 clip): 2000 and 3000 HU stay distinct
    assert model_to_hu(hu_to_model(np.float32(2000))) == pytest.approx(2000, abs=0.1)
    # torch and numpy agree; out-of-range HU is clipped to the range
    t = hu_to_model(torch.tensor([-3000.0, 40.0, 5000.0]))
    assert model_to_hu(t).tolist() == pytest.approx([HU_MIN, 40.0, HU_MAX], abs=0.01)


def test_soft_tissue_keeps_contrast():
    # 10 HU apart in soft tissue must be a usable difference in model units (> 0.02)
    assert hu_to_model(np.float32(50)) - hu_to_model(np.float32(40)) > 0.02


# ------------------------------------------------------------------ conditioning
def test_channels_follow_names_not_ids():
    default = Vocabulary.default()
    other = Vocabulary.from_mapping({1: "liver", 2: "rib_left_3", 3: "aorta", 4: "lung_upper_lobe_left",
                                     5: "liver_tumor", 7: "something_new"})
    arr = np.array([0, 1, 2, 3, 4, 5, 7], dtype=np.uint8).reshape(7, 1, 1)
    got = channel_index(Volume(arr, np.eye(4), kind="label", vocab=other)).ravel()
    names = [CHANNEL_NAMES[c] for c in got]
    assert names == ["outside", "liver", "bone", "artery", "lung", "lesion", "body"]
    arr2 = np.array([default.id(n) for n in ("liver", "rib_left_3", "aorta")], dtype=np.uint8).reshape(3, 1, 1)
    assert [CHANNEL_NAMES[c] for c in channel_index(Volume(arr2, np.eye(4), kind="label")).ravel()] == \
        ["liver", "bone", "artery"]
    oh = one_hot(got.reshape(7, 1, 1))
    assert oh.shape == (1, N_CHANNELS, 7, 1, 1) and torch.all(oh.sum(1) == 1)


def test_prior_measures_means_and_falls_back_by_channel():
    d = Vocabulary.default()
    lab = np.array([0, d.id("liver"), d.id("liver"), d.id("aorta")], dtype=np.uint8)
    y = hu_to_model(np.array([-1000, 60, 80, 400], dtype=np.float32))
    prior = Prior.measure([(y, lab)])
    assert model_to_hu(np.float32(prior.by_name["liver"])) == pytest.approx(70, abs=1.0)
    img = prior.image(Volume(np.array([d.id("liver"), d.id("heart"), d.id("rib_left_1")], np.uint8)
                             .reshape(3, 1, 1), np.eye(4), kind="label"))
    assert img[0, 0, 0] == pytest.approx(prior.by_name["liver"])
    assert img[1, 0, 0] == pytest.approx(prior.by_channel[CHANNEL_NAMES.index("artery")])  # heart: aorta's channel
    assert model_to_hu(img[2]).item() == pytest.approx(500, abs=1)  # unseen channel: the documented fallback
    again = Prior.from_mapping(json.loads(prior.to_json()))
    assert again.by_name == pytest.approx(prior.by_name)


def test_prior_per_phase_gives_each_phase_its_own_aorta():
    d = Vocabulary.default()
    lab = np.array([d.id("liver"), d.id("aorta"), d.id("aorta")], dtype=np.uint8)
    arterial = (hu_to_model(np.array([70, 380, 360], np.float32)), lab, "arterial")
    plain = (hu_to_model(np.array([55, 40, 40], np.float32)), lab, "non_contrast")
    more = (hu_to_model(np.array([70, 370, 370], np.float32)), lab, "arterial")
    prior = Prior.measure([arterial, plain, more])
    assert prior.default_phase == "arterial"  # the phase with the most voxels
    aorta = Volume(np.array([d.id("aorta")], np.uint8).reshape(1, 1, 1), np.eye(4), kind="label")
    hu = {ph: model_to_hu(prior.image(aorta, ph)).item() for ph in ("arterial", "non_contrast", None, "delayed")}
    assert hu["arterial"] == pytest.approx(370, abs=2) and hu["non_contrast"] == pytest.approx(40, abs=1)
    assert hu[None] == hu["arterial"]  # no phase stated: the default phase
    assert 100 < hu["delayed"] < 370  # a phase never trained on: the pooled mean
    again = Prior.from_mapping(json.loads(prior.to_json()))
    assert again.by_phase["arterial"] == pytest.approx(prior.by_phase["arterial"]) and again.default_phase == "arterial"


# ------------------------------------------------------------------ spec encoder
def test_spec_encoder_tokens_and_guidance_dropout():
    enc = SpecEncoder(dim=16)
    a = spec_to_indices(parse_prompt("arterial chest CT, 3 cm tumour in the liver"))
    b = spec_to_indices(parse_prompt("non-contrast abdomen CT, two 1 cm cysts in the left kidney"))
    toks = collate([a, b])
    sp = torch.tensor([[4.0, 4.0, 4.0], [4.0, 4.0, 4.0]])
    ctx = enc(toks, sp)
    assert ctx.shape == (2, CONTEXT_TOKENS, 16)
    assert not torch.allclose(ctx[0], ctx[1])
    dropped = enc(toks, sp, torch.tensor([True, True]))
    assert torch.allclose(dropped[0], dropped[1])  # unconditional: the specs no longer matter
    other_spacing = enc(toks, torch.tensor([[2.0, 2.0, 2.0], [4.0, 4.0, 4.0]]), torch.tensor([True, True]))
    assert not torch.allclose(other_spacing[0], dropped[0])  # ...but spacing still does
    none = spec_to_indices(None)
    assert not none["present"].any()


# ------------------------------------------------------------------ networks + checkpoints
def test_networks_save_load_round_trip(tmp_path):
    cfg = tiny_config()
    lc = cfg.vae.latent_channels
    for module in (build_vae(cfg.vae), build_unet(cfg.unet, lc), build_controlnet(cfg.unet, lc), SpecEncoder(16)):
        p = save_module(module, tmp_path / "m.safetensors")
        clone = _rebuild(module, cfg)
        assert state_hash(clone) != state_hash(module)
        load_module(clone, p)
        assert state_hash(clone) == state_hash(module)
    with pytest.raises(InputError, match="do not fit") as e:
        load_module(build_vae(VAEConfig(channels=[8, 16, 16], norm_num_groups=4)), tmp_path / "m.safetensors")
    # the keys a user needs to see, on one line: the text encoder's are unexpected, the VAE's missing
    assert "missing: " in str(e.value) and "unexpected: " in str(e.value) and "\n" not in str(e.value)
    wide = build_vae(VAEConfig(channels=[8, 16, 16], norm_num_groups=4))
    p = save_module(wide, tmp_path / "vae.safetensors")
    with pytest.raises(InputError, match=r"\(\d+ of another shape \(file vs model\): decoder\.blocks\.0\.conv\.bias \(16,\) vs \(8,\), .* and \d+ more\)"):
        load_module(build_vae(VAEConfig(channels=[4, 8, 8], norm_num_groups=4)), p)
    with pytest.raises(InputError, match="not found"):
        load_module(build_vae(cfg.vae), tmp_path / "missing.safetensors")


def _rebuild(module, cfg):
    torch.manual_seed(999)
    lc = cfg.vae.latent_channels
    name = type(module).__name__
    return {"AutoencoderKL": lambda: build_vae(cfg.vae), "DiffusionModelUNet": lambda: build_unet(cfg.unet, lc),
            "ControlNet": lambda: build_controlnet(cfg.unet, lc), "SpecEncoder": lambda: SpecEncoder(16)}[name]()


def test_optimizer_state_round_trip_without_pickle(tmp_path):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
    save_optimizer(opt, tmp_path / "opt.safetensors")
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    load_optimizer(opt2, tmp_path / "opt.safetensors")
    a, b = opt.state_dict(), opt2.state_dict()
    for pid in a["state"]:
        for k, v in a["state"][pid].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][pid][k]))
    assert a["param_groups"] == b["param_groups"]

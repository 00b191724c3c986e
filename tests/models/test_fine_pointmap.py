"""The full-resolution pointmap path of Geo4DUNet: function-preserving growth, per-pixel reach, config errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from geo4d_policy.config import ConfigError
from geo4d_policy.models.config import VAEConfig
from geo4d_policy.models.generator import Geo4DUNet
from tests.models.model_fixtures import F, H, W, tiny_config

PATCH_VAE = VAEConfig(block_out_channels=(16, 32, 32, 32), norm_num_groups=8, latent_channels=192, codec="patch")


def _config(fine: int, **kw):
    cfg = tiny_config(pointmap_vae=PATCH_VAE, **kw)
    return dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, fine_pointmap_channels=fine))


def _inputs(cfg, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c, h, w = cfg.target_channels, H // 8, W // 8
    x = torch.randn(2, 2, F, c, h, w, generator=g)
    cond = torch.randn(2, 2, c, h, w, generator=g)
    return x, torch.tensor([0.1, -0.4]), cond, torch.zeros(2, dtype=torch.long), torch.zeros(2, 3)


def _run(net, args):
    x, c_noise, cond, tasks, added = args
    with torch.no_grad():
        return net(x, c_noise, cond, task_ids=tasks, added_time_ids=added)


@pytest.mark.parametrize("separate", [True, False])
def test_growing_the_path_keeps_the_function(separate):
    torch.manual_seed(0)
    old = Geo4DUNet(_config(0, separate_decoders=separate)).eval()
    new = Geo4DUNet(_config(32, separate_decoders=separate)).eval()
    missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("fine.") for k in missing)
    args = _inputs(old.config)
    assert torch.allclose(_run(new, args), _run(old, args), atol=1e-6)


def test_the_path_reaches_single_pixels():
    """Once trained (here: its zero-initialised output layers set at random), a pointmap output pixel
    depends on the noisy input's same pixel, which the 8x8-patch U-Net alone squeezes through a few
    channels; the RGB outputs are the U-Net's."""
    torch.manual_seed(0)
    net = Geo4DUNet(_config(32)).eval()
    for m in (net.fine.to_unet, *(h.out for h in net.fine.heads)):
        torch.nn.init.normal_(m.weight, std=0.1)
    x, c_noise, cond, tasks, added = _inputs(net.config)
    x.requires_grad_(True)
    out = net(x, c_noise, cond, task_ids=tasks, added_time_ids=added)
    rgb = net.config.latent_channels
    pm_out = torch.nn.functional.pixel_shuffle(out[0, 1, 0, rgb:][None], 8)[0]  # view m, frame 0: (3, H, W)
    (grad,) = torch.autograd.grad(pm_out[2, 13, 21], x)
    pix = torch.nn.functional.pixel_shuffle(grad[0, 1, 0, rgb:][None], 8)[0]
    assert pix[:, 13, 21].abs().sum() > 0
    # 2x2 blocks: the same pixel's block gets more weight than a pixel of the next 8x8 patch.
    assert pix[:, 12:14, 20:22].abs().sum() > pix[:, 4:6, 28:30].abs().sum()


def test_config_errors():
    with pytest.raises(ConfigError, match="multiple of 32"):
        _config(40)
    with pytest.raises(ConfigError, match="patch codec"):
        cfg = tiny_config()
        dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, fine_pointmap_channels=32))


def test_parameter_summary_counts_the_path():
    from geo4d_policy.models.pipeline import Generator4D, parameter_summary

    s = parameter_summary(Generator4D(_config(32)))
    assert s["fine_pointmap_path"] > 0
    parts = sum(v for k, v in s.items() if k not in ("unet_total", "total"))
    assert parts == s["total"]

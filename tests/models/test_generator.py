"""Geo4DUNet: shapes, independent decoders, cross-view attention direction, zero-init identity."""

from __future__ import annotations

import pytest
import torch

from model_fixtures import F, tiny_config
from geo4d_policy.models.generator import Geo4DUNet, build_unet, load_svd_unet_weights

B, h, w = 2, 4, 5


def _inputs(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = cfg.target_channels
    x = torch.randn(B, 2, F, c, h, w, generator=g)
    cond = torch.randn(B, 2, c, h, w, generator=g)
    c_noise = torch.randn(B, generator=g)
    return x, c_noise, cond, torch.tensor([0, 1]), torch.tensor([[2.0, 0.0, 0.0]] * B)


def _run(model, x, c_noise, cond, tasks, ids):
    with torch.no_grad():
        return model(x, c_noise, cond, task_ids=tasks, added_time_ids=ids)


def _randomise_cross_view(model):
    g = torch.Generator().manual_seed(5)
    for layer in model.cross_view:
        for p in layer.attn.to_out[0].parameters():
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.mark.parametrize("use_pointmaps,c", [(True, 8), (False, 4)])
def test_output_shapes_and_channels(use_pointmaps, c):
    torch.manual_seed(0)
    cfg = tiny_config(use_pointmaps=use_pointmaps)
    model = Geo4DUNet(cfg).eval()
    assert model.unet.conv_in.in_channels == 2 * c and model.unet.conv_out.out_channels == c
    assert model.decoder_m.conv_out.out_channels == c
    out = _run(model, *_inputs(cfg))
    assert out.shape == (B, 2, F, c, h, w)
    assert torch.isfinite(out).all()


def test_decoder_m_has_its_own_weights():
    torch.manual_seed(0)
    cfg = tiny_config(cross_view_attention=False)
    model = Geo4DUNet(cfg).eval()
    ptr_n = {p.data_ptr() for p in model.unet.parameters()}
    assert not any(p.data_ptr() in ptr_n for p in model.decoder_m.parameters())
    inp = _inputs(cfg)
    base = _run(model, *inp)
    with torch.no_grad():
        for p in model.decoder_m.parameters():
            p.add_(0.1)
    out = _run(model, *inp)
    assert torch.equal(out[:, 0], base[:, 0])  # n unchanged
    assert not torch.allclose(out[:, 1], base[:, 1])  # m changed
    with torch.no_grad():
        for p in model.unet.up_blocks.parameters():
            p.add_(0.1)
    out2 = _run(model, *inp)
    assert torch.equal(out2[:, 1], out[:, 1])  # without cross-view attention, m ignores n's decoder
    assert not torch.allclose(out2[:, 0], out[:, 0])


def test_branch_m_attends_to_branch_n_and_not_the_reverse():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = Geo4DUNet(cfg).eval()
    _randomise_cross_view(model)
    x, c_noise, cond, tasks, ids = _inputs(cfg)
    base = _run(model, x, c_noise, cond, tasks, ids)

    x_n = x.clone()
    x_n[:, 0] += 1.0  # perturb view n's input
    out = _run(model, x_n, c_noise, cond, tasks, ids)
    assert not torch.allclose(out[:, 1], base[:, 1], atol=1e-5)

    x_m = x.clone()
    x_m[:, 1] += 1.0  # perturb view m's input
    out = _run(model, x_m, c_noise, cond, tasks, ids)
    assert torch.equal(out[:, 0], base[:, 0])

    # Perturbing n's decoder changes m through the cross-view layers; m's decoder never reaches n.
    with torch.no_grad():
        for p in model.decoder_m.parameters():
            p.add_(0.1)
    out = _run(model, x, c_noise, cond, tasks, ids)
    assert torch.equal(out[:, 0], base[:, 0])


def test_without_cross_view_attention_views_are_independent():
    torch.manual_seed(0)
    cfg = tiny_config(cross_view_attention=False)
    model = Geo4DUNet(cfg).eval()
    x, c_noise, cond, tasks, ids = _inputs(cfg)
    base = _run(model, x, c_noise, cond, tasks, ids)
    x2 = x.clone()
    x2[:, 0] += 1.0
    assert torch.equal(_run(model, x2, c_noise, cond, tasks, ids)[:, 1], base[:, 1])


def test_zero_initialised_cross_attention_leaves_view_n_equal_to_plain_unet():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = Geo4DUNet(cfg).eval()
    x, c_noise, cond, tasks, ids = _inputs(cfg)
    out = _run(model, x, c_noise, cond, tasks, ids)
    with torch.no_grad():
        ehs = model.context(tasks)  # (B, 2, L, D)
        ref_n = model.unet(model.unet_inputs(x, cond)[:, 0], c_noise, ehs[:, 0], ids).sample
    assert torch.allclose(out[:, 0], ref_n, atol=1e-5)
    # The fresh decoder m is a copy of decoder n and the cross-view layers start as identities:
    # view m's output is the plain U-Net applied to view m's inputs and context.
    with torch.no_grad():
        ref_m = model.unet(model.unet_inputs(x, cond)[:, 1], c_noise, ehs[:, 1], ids).sample
    assert torch.allclose(out[:, 1], ref_m, atol=1e-5)


def test_views_get_their_own_context():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = Geo4DUNet(cfg)
    ctx = model.context(torch.tensor([0, 2]))
    assert ctx.shape == (2, 2, 2, cfg.unet.cross_attention_dim)
    assert torch.equal(ctx[0, 0, 0], model.view_tokens[0]) and torch.equal(ctx[0, 1, 0], model.view_tokens[1])
    assert torch.equal(ctx[1, 0, 1], model.task_tokens.weight[2])


def test_svd_weights_load_into_the_pointmap_layout():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = Geo4DUNet(cfg)
    svd = build_unet(tiny_config(use_pointmaps=False))  # an "SVD-like" U-Net: 8 in, 4 out
    missing = load_svd_unet_weights(model, svd.state_dict())
    assert missing == []
    w = model.unet.conv_in.weight
    assert torch.equal(w[:, 0:4], svd.conv_in.weight[:, 0:4])
    assert torch.equal(w[:, 8:12], svd.conv_in.weight[:, 4:8])
    assert torch.all(w[:, 4:8] == 0) and torch.all(w[:, 12:16] == 0)
    assert torch.equal(model.decoder_m.conv_out.weight, model.unet.conv_out.weight)
    assert model.decoder_m.conv_out.weight.data_ptr() != model.unet.conv_out.weight.data_ptr()

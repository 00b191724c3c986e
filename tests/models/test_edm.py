"""EDM maths (checked against diffusers' EDMEulerScheduler), loss weights, sampler, CFG."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import EDMEulerScheduler

from model_fixtures import F, tiny_config
from geo4d_policy.models.edm import (
    drop_conditioning,
    edm_loss,
    karras_sigmas,
    latent_weights,
    precondition,
    sample_edm,
)
from geo4d_policy.models.generator import Geo4DUNet


def test_karras_schedule_and_preconditioning_match_diffusers():
    sched = EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, rho=7.0)
    sched.set_timesteps(25)
    ours = karras_sigmas(25, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    assert ours.shape == (26,) and ours[-1] == 0
    assert torch.allclose(ours, sched.sigmas.float(), rtol=1e-5)
    sigma = torch.tensor([0.01, 0.5, 3.0, 80.0])
    c_skip, c_out, c_in, c_noise = precondition(sigma, 0.5)
    x, y = torch.randn(4), torch.randn(4)
    assert torch.allclose(c_in * x, sched.precondition_inputs(x, sigma))
    assert torch.allclose(c_noise, sched.precondition_noise(sigma))
    assert torch.allclose(c_skip * x + c_out * y, sched.precondition_outputs(x, y, sigma))


def test_latent_weights_gripper_any_and_validity_floor():
    cfg = tiny_config()
    grip = torch.zeros(1, 2, 1, 16, 16, dtype=torch.bool)
    grip[0, 0, 0, 3, 3] = True
    valid = torch.ones(1, 2, 1, 16, 16, dtype=torch.bool)
    valid[0, 1, 0, :8, :8] = False
    valid[0, 1, 0, 8:12, 8:] = False
    gw, vw = latent_weights(gripper=grip, valid=valid, factor=8, edm=cfg.edm)
    assert gw[0, 0, 0].tolist() == [[2.0, 1.0], [1.0, 1.0]] and torch.all(gw[0, 1] == 1.0)
    assert torch.allclose(vw[0, 1, 0], torch.tensor([[0.1, 1.0], [1.0, 0.55]]))
    assert torch.all(vw[0, 0] == 1.0)


def _model_and_cond(cfg, seed=0):
    torch.manual_seed(seed)
    model = Geo4DUNet(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(1, 2, cfg.target_channels, 4, 5, generator=g) * 0.5
    return model, cond, torch.tensor([0])


def test_seeded_sampling_is_deterministic():
    cfg = tiny_config()
    model, cond, tasks = _model_and_cond(cfg)

    def run(seed, steps=3):
        g = torch.Generator().manual_seed(seed)
        return sample_edm(model, cond, task_ids=tasks, config=cfg, num_steps=steps, generator=g)

    a, b, c = run(1), run(1), run(2)
    assert a.shape == (1, 2, F, 8, 4, 5)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, run(1, steps=2))


def test_classifier_free_guidance_changes_the_sample():
    cfg = tiny_config()
    model, cond, tasks = _model_and_cond(cfg)
    # Make the conditioning matter: perturb the input conv so the condition channels count.
    with torch.no_grad():
        model.unet.conv_in.weight.add_(0.2 * torch.randn_like(model.unet.conv_in.weight))

    def run(w):
        g = torch.Generator().manual_seed(0)
        return sample_edm(model, cond, task_ids=tasks, config=cfg, num_steps=2, generator=g, guidance_scale=w)

    plain, same, guided = run(1.0), run(1.0), run(3.0)
    assert torch.equal(plain, same)
    assert not torch.allclose(plain, guided, atol=1e-4)
    # The unconditional inputs really are different: zero latents and the null task token.
    c_u, t_u = drop_conditioning(model, cond, tasks, torch.tensor([True]))
    assert torch.all(c_u == 0) and t_u.item() == model.null_task_id


def test_conditioning_dropout_in_training_uses_the_null_token():
    cfg = tiny_config()
    cfg = dataclasses.replace(cfg, edm=dataclasses.replace(cfg.edm, cond_drop_prob=0.5))
    model, cond, _ = _model_and_cond(cfg)
    seen = []
    hook = model.task_tokens.register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
    x0 = torch.randn(8, 2, F, 8, 4, 5) * 0.5
    loss, metrics = edm_loss(
        model, x0, cond.expand(8, -1, -1, -1, -1), task_ids=torch.zeros(8, dtype=torch.long), config=cfg,
        generator=torch.Generator().manual_seed(0),
    )
    hook.remove()
    ids = seen[0]
    assert (ids == model.null_task_id).any() and (ids == 0).any()
    assert torch.isfinite(loss) and set(metrics) >= {"loss_rgb_n", "loss_rgb_m", "loss_pm_n", "loss_pm_m"}


def test_loss_terms_and_weights():
    """loss = RGB(n + m) + lambda * PM(n + m->n); a 2x weight everywhere doubles it."""
    cfg = tiny_config()
    model, cond, tasks = _model_and_cond(cfg)
    x0 = torch.randn(2, 2, F, 8, 4, 5) * 0.5
    cond2 = cond.expand(2, -1, -1, -1, -1)

    def run(c, **kw):
        return edm_loss(model, x0, cond2, task_ids=tasks.expand(2), config=c,
                        generator=torch.Generator().manual_seed(0), **kw)

    with torch.no_grad():
        loss, m = run(cfg)
        assert abs(m["loss_rgb"] - (m["loss_rgb_n"] + m["loss_rgb_m"])) < 1e-4 * m["loss"]
        assert abs(m["loss"] - (m["loss_rgb"] + m["loss_pm"])) < 1e-4 * m["loss"]
        cfg3 = dataclasses.replace(cfg, edm=dataclasses.replace(cfg.edm, pointmap_loss_weight=3.0))
        assert abs(run(cfg3)[1]["loss"] - (m["loss_rgb"] + 3 * m["loss_pm"])) < 1e-4 * m["loss"]
        twice = run(cfg, gripper_weight=torch.full((2, 2, F, 4, 5), 2.0))[0]
        assert torch.allclose(twice, 2 * loss)


@pytest.mark.parametrize("scales", [(1.0, 1.0, 1.0, 1.0), (1.0, 0.5, 2.0, 3.0)])
def test_residual_targets_diffuse_the_scaled_change_from_the_conditioning_frame(scales):
    """Residual training is plain training on ``(x0 - cond) * S``; residual sampling divides by S
    and adds ``cond`` back (S: ``change_scale`` per view, RGB channels then pointmap channels)."""
    from geo4d_policy.models.edm import change_scale

    cfg = tiny_config()
    res = dataclasses.replace(cfg, edm=dataclasses.replace(cfg.edm, residual=True, change_scale=scales))
    s = change_scale(res, device="cpu")
    lat = cfg.latent_channels
    for view, (rgb, pm) in enumerate((scales[0::2], scales[1::2])):
        assert s[0, view, 0, :lat].unique().tolist() == [rgb] and s[0, view, 0, lat:].unique().tolist() == [pm]
    model, cond, tasks = _model_and_cond(cfg)
    x0 = torch.randn(2, 2, F, 8, 4, 5) * 0.5
    cond2 = cond.expand(2, -1, -1, -1, -1)

    def loss(c, x):
        return edm_loss(model, x, cond2, task_ids=tasks.expand(2), config=c,
                        generator=torch.Generator().manual_seed(0))[0]

    def sample(c):
        return sample_edm(model, cond, task_ids=tasks, config=c, num_steps=3,
                          generator=torch.Generator().manual_seed(1))

    with torch.no_grad():
        assert torch.allclose(loss(res, x0), loss(cfg, (x0 - cond2[:, :, None]) * s))
        assert not torch.allclose(loss(res, x0), loss(cfg, x0))
        assert torch.allclose(sample(res), sample(cfg) / s + cond[:, :, None], atol=1e-6)


def test_residual_targets_refuse_conditioning_dropout():
    from geo4d_policy.models.config import ConfigError, EDMConfig

    with pytest.raises(ConfigError, match="residual"):
        EDMConfig(residual=True, cond_drop_prob=0.1)


def test_change_scale_needs_residual_targets_and_four_positive_numbers():
    from geo4d_policy.models.config import ConfigError, EDMConfig

    with pytest.raises(ConfigError, match="residual"):
        EDMConfig(change_scale=(1.0, 1.0, 2.0, 1.0))
    for bad in ((1.0, 1.0, 2.0), (1.0, 1.0, 0.0, 1.0), (1.0, float("nan"), 1.0, 1.0)):
        with pytest.raises(ConfigError, match="four positive numbers"):
            EDMConfig(residual=True, change_scale=bad)
    assert EDMConfig(residual=True, change_scale=[1, 1, 2.2, 1]).change_scale == (1.0, 1.0, 2.2, 1.0)

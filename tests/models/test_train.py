"""The training loop: checkpoints, exact resume, VAE runs, and a tiny model overfitting a clip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model_fixtures import TASK, batch_factory, synthetic_batch, tiny_config
from geo4d_policy.models.pipeline import Generator4D
from geo4d_policy.models.vae import VAE
from geo4d_policy.train.config import TrainConfig
from geo4d_policy.train.trainer import train


def _cfg(**kw) -> TrainConfig:
    base = dict(kind="generator", model=tiny_config(), tasks=(TASK,), max_steps=4, ckpt_every=2, log_every=1,
                warmup_steps=2, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def test_train_resume_is_exact_and_the_checkpoint_samples(tmp_path):
    factory = batch_factory(3)
    full = train(_cfg(max_steps=4), data_iter_factory=factory, out_dir=tmp_path / "full")
    part = train(_cfg(max_steps=2), data_iter_factory=factory, out_dir=tmp_path / "part")
    assert part.checkpoint.name == "step_2" and (tmp_path / "part" / "last").read_text().strip() == "step_2"
    with pytest.raises(FileExistsError):
        train(_cfg(max_steps=4), data_iter_factory=factory, out_dir=tmp_path / "part")
    resumed = train(_cfg(max_steps=4), data_iter_factory=factory, out_dir=tmp_path / "part", resume=True)
    assert resumed.step == 4
    for name in ("model.safetensors", "training_state/raw.safetensors"):
        a = load_file(str(full.checkpoint / name))
        b = load_file(str(resumed.checkpoint / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    lines = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    # The run directory loads as a generator and samples.
    gen = Generator4D.from_pretrained(tmp_path / "part", task=TASK)
    b = synthetic_batch(0, b=1)
    rgb = ((b["rgb_cond"][0].permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    pts = gen.normalization.denormalize(b["pm_cond"][0].permute(0, 2, 3, 1)).numpy()
    pts[..., 2] += 1.0  # in front of the cameras
    out = gen.predict(rgb, pts[0], pts[1], num_steps=2)
    assert np.isfinite(out["pointmaps"]).all()


def test_vae_runs_write_calibrated_vaes_and_feed_the_generator(tmp_path):
    factory = batch_factory(2)
    img_cfg = _cfg(kind="image_vae", max_steps=2, vae_max_images=8)
    img = train(img_cfg, data_iter_factory=factory, out_dir=tmp_path / "img")
    pmv = train(
        _cfg(kind="pointmap_vae", max_steps=2, vae_max_images=8, init_from=str(tmp_path / "img")),
        data_iter_factory=factory,
        out_dir=tmp_path / "pm",
    )
    vae = VAE.from_pretrained(pmv.checkpoint, kind="pointmap")
    assert vae.config.scaling_factor != 1.0
    gen = train(
        _cfg(max_steps=1, image_vae=str(img.out_dir), pointmap_vae=str(pmv.out_dir)),
        data_iter_factory=factory,
        out_dir=tmp_path / "gen",
    )
    g = Generator4D.from_pretrained(gen.checkpoint)
    assert g.config.pointmap_vae.scaling_factor == vae.config.scaling_factor
    assert torch.equal(g.pointmap_vae.model.encoder.conv_in.weight, vae.model.encoder.conv_in.weight)


def _eval_loss(model: Generator4D, batch) -> float:
    """EDM loss at fixed noise draws (same sigmas and noise before and after training)."""
    g = torch.Generator().manual_seed(123)
    total = 0.0
    with torch.no_grad():
        for _ in range(4):
            total += model.training_loss(batch, generator=g)[0].item()
    return total / 4


def test_tiny_model_overfits_one_clip(tmp_path):
    clip = synthetic_batch(0, b=1)

    def factory(*, epoch, rank, world_size):
        return [clip] * 10

    cfg = _cfg(max_steps=60, ckpt_every=1000, log_every=10, lr=1e-3, warmup_steps=5, ema_decay=0.8)
    torch.manual_seed(cfg.seed)
    before = Generator4D(tiny_config(), trained_tasks=[TASK])  # the trainer's initial model (same seed)
    result = train(cfg, data_iter_factory=factory, out_dir=tmp_path / "fit")
    after = Generator4D.from_pretrained(result.checkpoint)
    same_vae = before.image_vae.model.encoder.conv_in.weight, after.image_vae.model.encoder.conv_in.weight
    assert torch.equal(*same_vae)
    l0, l1 = _eval_loss(before, clip), _eval_loss(after, clip)
    assert l1 < l0 / 3, (l0, l1)


def _calibrated_random_vaes(tmp_path, clip) -> tuple[str, str]:
    """Random tiny VAEs whose latent scale is measured on the clip (std = sigma_data)."""
    cfg = tiny_config()
    torch.manual_seed(1)
    paths = []
    for kind, vcfg, key in (("image", cfg.image_vae, "rgb"), ("pointmap", cfg.pointmap_vae, "pm")):
        vae = VAE(vcfg, kind=kind).eval()
        frames = clip[key].reshape(-1, 3, *clip[key].shape[-2:])
        valid = clip["valid"].reshape(-1, *clip[key].shape[-2:]) if kind == "pointmap" else None
        vae.calibrate([(frames, valid)] if valid is not None else [frames], target_std=cfg.edm.sigma_data)
        vae.save_pretrained(tmp_path / f"{kind}_vae")
        paths.append(str(tmp_path / f"{kind}_vae"))
    return paths[0], paths[1]


@pytest.mark.slow
def test_tiny_model_overfit_clip_is_reproduced_by_the_sampler(tmp_path):
    one = synthetic_batch(0, b=1)
    clip = {k: v.expand(4, *v.shape[1:]).contiguous() for k, v in one.items()}  # 4 noise draws per step
    image_vae, pointmap_vae = _calibrated_random_vaes(tmp_path, one)

    def factory(*, epoch, rank, world_size):
        return [clip] * 50

    cfg = _cfg(max_steps=300, ckpt_every=1000, log_every=50, lr=1e-3, warmup_steps=10, ema_decay=0.95,
               image_vae=image_vae, pointmap_vae=pointmap_vae)
    result = train(cfg, data_iter_factory=factory, out_dir=tmp_path / "fit")
    gen = Generator4D.from_pretrained(result.checkpoint)
    with torch.no_grad():
        cond = gen.encode_frames(one["rgb_cond"], one["pm_cond"], one["valid_cond"])
        x0 = gen.encode_frames(one["rgb"], one["pm"], one["valid"])
        z = gen.sample(cond, gen.unet.task_ids([TASK]), num_steps=25, seed=0)
    mse = float(((z - x0) ** 2).mean())
    print(f"sample MSE {mse:.4f}, target variance {float(x0.var()):.4f}")
    assert mse < 0.3 * float(x0.var()), (mse, float(x0.var()))


@pytest.mark.slow
def test_compiled_unet_trains_like_the_eager_one(tmp_path):
    """``compile_unet`` changes kernels, not the run: same checkpoint keys, close weights and losses."""
    factory = batch_factory(3)
    eager = train(_cfg(max_steps=2), data_iter_factory=factory, out_dir=tmp_path / "eager")
    compiled = train(_cfg(max_steps=2, compile_unet=True), data_iter_factory=factory, out_dir=tmp_path / "comp")
    a = load_file(str(eager.checkpoint / "model.safetensors"))
    b = load_file(str(compiled.checkpoint / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4), k
    assert abs(eager.metrics["loss"] - compiled.metrics["loss"]) <= 1e-3 * abs(eager.metrics["loss"])

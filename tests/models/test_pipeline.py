"""Generator4D: predict on raw observations, NaN safety, resizing, save/load, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_fixtures import F, H, TASK, W, tiny_config
from geo4d_policy.models.checkpoint import CheckpointError
from geo4d_policy.models.pipeline import Generator4D, parameter_summary
from geo4d_policy.models.vae import VAE


def _obs(h=H, w=W, seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, size=(2, h, w, 3), dtype=np.uint8)
    yy, xx = np.meshgrid(np.linspace(-0.3, 0.3, h), np.linspace(-0.4, 0.4, w), indexing="ij")
    pm = np.stack([xx, yy, 0.8 + 0.1 * xx], axis=-1).astype(np.float32)
    return rgb, pm, pm[:, ::-1].copy()


@pytest.fixture(scope="module")
def model() -> Generator4D:
    torch.manual_seed(0)
    return Generator4D(tiny_config(), trained_tasks=[TASK]).eval()


def test_predict_shapes_units_and_timings(model):
    rgb, pn, pm = _obs()
    out = model.predict(rgb, pn, pm, num_steps=2, seed=0)
    assert out["rgb"].shape == (2, F, H, W, 3) and out["rgb"].dtype == np.uint8
    assert out["pointmaps"].shape == (2, F, H, W, 3) and out["pointmaps"].dtype == np.float32
    assert np.isfinite(out["pointmaps"]).all()
    assert out["task"] == TASK
    assert set(out["timings"]) == {"encode", "sample", "decode", "total", "batch_size"}
    again = model.predict(rgb, pn, pm, num_steps=2, seed=0)
    assert np.array_equal(out["rgb"], again["rgb"]) and np.array_equal(out["pointmaps"], again["pointmaps"])
    only_pm = model.predict(rgb, pn, pm, num_steps=2, seed=0, decode_rgb=False)
    assert only_pm["rgb"] is None and np.array_equal(only_pm["pointmaps"], out["pointmaps"])


def test_a_batch_of_requests_gives_each_its_own_prediction(model):
    """predict_many (the shared server's batched path) equals one predict per request."""
    requests = []
    for k in range(3):
        rgb, pn, pm = _obs(seed=k)
        requests.append({"rgb": rgb, "pointmap_n": pn, "pointmap_m": pm, "seed": 10 + k})
    batch = model.predict_many(requests, num_steps=2)
    assert [b["timings"]["batch_size"] for b in batch] == [3, 3, 3]
    for req, got in zip(requests, batch):
        alone = model.predict(req["rgb"], req["pointmap_n"], req["pointmap_m"], seed=req["seed"], num_steps=2)
        np.testing.assert_allclose(got["pointmaps"], alone["pointmaps"], atol=1e-4)
        assert np.abs(got["rgb"].astype(int) - alone["rgb"].astype(int)).max() <= 1
    assert not np.allclose(batch[0]["pointmaps"], batch[1]["pointmaps"])
    with pytest.raises(ValueError, match="unknown request field"):
        model.predict_many([{**requests[0], "sed": 1}])


def test_decoding_the_first_frames_gives_those_frames_of_a_full_decode(model):
    """``frames`` (a replan's tracked frames): the video is sampled whole, only its first frames
    are decoded, and they are the full decode's, for every request of a batch; resized outputs too.
    Equal to float32 rounding: the decoder's kernels see another batch and may sum in another order
    (1e-5 m with one torch thread, exact with two); a shifted or wrong frame differs by metres."""
    requests = []
    for k, (h, w) in enumerate([(H, W), (H + 8, W - 8)]):
        rgb, pn, pm = _obs(h, w, seed=k)
        requests.append({"rgb": rgb, "pointmap_n": pn, "pointmap_m": pm, "seed": 20 + k})
    full = model.predict_many(requests, num_steps=2)
    first = model.predict_many(requests, num_steps=2, frames=2)
    assert F > 2
    for a, b in zip(full, first):
        assert b["rgb"].shape[1] == 2 and b["pointmaps"].shape[1] == 2
        np.testing.assert_allclose(b["pointmaps"], a["pointmaps"][:, :2], atol=1e-4)
        assert np.abs(b["rgb"].astype(int) - a["rgb"][:, :2].astype(int)).max() <= 1
    assert model.predict(*_obs(), num_steps=2, seed=0, frames=F + 5)["rgb"].shape[1] == F  # at most all
    with pytest.raises(ValueError, match="frames must be a positive"):
        model.predict_many(requests, num_steps=2, frames=0)


def test_nan_and_invalid_points_do_not_propagate(model):
    rgb, pn, pm = _obs()
    valid_n = np.ones((H, W), bool)
    valid_n[:5, :7] = False
    pn_nan, pm_inf = pn.copy(), pm.copy()
    pn_nan[:5, :7] = np.nan
    pm_inf[10:12, 3] = np.inf
    pm_inf[0, 0, 2] = -1.0  # behind the camera: invalid by default
    out = model.predict(rgb, pn_nan, pm_inf, valid_n=valid_n, num_steps=2, seed=0)
    assert np.isfinite(out["pointmaps"]).all()
    # Whatever sat in invalid pixels is irrelevant: the same observation with other garbage there
    # gives the identical prediction.
    pn_other, pm_other = pn.copy(), pm.copy()
    pn_other[:5, :7] = 123.0
    pm_other[10:12, 3] = -7.0
    pm_other[0, 0, 2] = -2.0
    valid_m = np.ones((H, W), bool)
    valid_m[10:12, 3] = False
    other = model.predict(rgb, pn_other, pm_other, valid_n=valid_n, valid_m=valid_m, num_steps=2, seed=0)
    assert np.array_equal(out["pointmaps"], other["pointmaps"])


def test_other_resolutions_are_resized_or_refused(model):
    rgb, pn, pm = _obs(h=48, w=60)
    out = model.predict(rgb, pn, pm, num_steps=1)
    assert out["rgb"].shape == (2, F, 48, 60, 3) and out["pointmaps"].shape == (2, F, 48, 60, 3)
    with pytest.raises(ValueError, match="resolution"):
        model.predict(rgb, pn, pm, num_steps=1, on_resolution_mismatch="error")


def test_bad_inputs_and_unknown_task_are_refused(model):
    rgb, pn, pm = _obs()
    with pytest.raises(ValueError, match="uint8"):
        model.predict(rgb.astype(np.float32), pn, pm)
    with pytest.raises(ValueError, match="not on"):
        model.predict(rgb, pn, pm, task="PutSpatulaOnTable")


def test_save_load_round_trip_gives_identical_predictions(model, tmp_path):
    model.save_pretrained(tmp_path / "gen")
    back = Generator4D.from_pretrained(tmp_path / "gen", task=TASK, config=tiny_config())
    rgb, pn, pm = _obs(seed=3)
    a = model.predict(rgb, pn, pm, num_steps=2, seed=5)
    b = back.predict(rgb, pn, pm, num_steps=2, seed=5)
    assert np.array_equal(a["rgb"], b["rgb"]) and np.array_equal(a["pointmaps"], b["pointmaps"])
    for (k, v), (_, w) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(v, w), k


def test_checkpoints_of_another_task_or_config_are_refused(model, tmp_path):
    model.save_pretrained(tmp_path / "gen")
    with pytest.raises(CheckpointError, match="not trained on 'PutSpatulaOnTable'"):
        Generator4D.from_pretrained(tmp_path / "gen", task="put_spatula_on_table")
    with pytest.raises(CheckpointError, match="cross_view_attention"):
        Generator4D.from_pretrained(tmp_path / "gen", config=tiny_config(cross_view_attention=False))
    VAE(tiny_config().image_vae).save_pretrained(tmp_path / "vae")
    with pytest.raises(CheckpointError, match="geo4d-vae"):
        Generator4D.from_pretrained(tmp_path / "vae")


def test_fp16_checkpoint_loads_and_bf16_weights_predict(model, tmp_path):
    model.save_pretrained(tmp_path / "gen16", dtype=torch.float16)
    back = Generator4D.from_pretrained(tmp_path / "gen16")
    rgb, pn, pm = _obs()
    assert np.isfinite(back.predict(rgb, pn, pm, num_steps=1)["pointmaps"]).all()
    bf16 = Generator4D.from_pretrained(tmp_path / "gen16", dtype=torch.bfloat16)
    out = bf16.predict(rgb, pn, pm, num_steps=1)
    assert out["pointmaps"].dtype == np.float32 and np.isfinite(out["pointmaps"]).all()


def test_rgb_only_variant_predicts_rgb():
    torch.manual_seed(0)
    m = Generator4D(tiny_config(use_pointmaps=False), trained_tasks=[TASK]).eval()
    assert m.pointmap_vae is None and parameter_summary(m)["pointmap_vae"] == 0
    rgb, _, _ = _obs()
    out = m.predict(rgb, num_steps=1)
    assert out["rgb"].shape == (2, F, H, W, 3) and out["pointmaps"] is None


def test_conditioning_validity_defaults_to_points_in_front_of_the_camera(model):
    from model_fixtures import synthetic_batch

    batch = synthetic_batch(0, b=1)
    assert torch.equal(model.conditioning_validity(batch["pm_cond"]), batch["valid_cond"])
    no_mask = {k: v for k, v in batch.items() if k != "valid_cond"}
    with torch.no_grad():
        a = model.training_loss(batch, generator=torch.Generator().manual_seed(0))[0]
        b = model.training_loss(no_mask, generator=torch.Generator().manual_seed(0))[0]
    assert torch.equal(a, b)


def test_int8_storage_halves_the_file_and_keeps_predictions(model, tmp_path):
    import os

    rgb, pn, pm = _obs()
    model.save_pretrained(tmp_path / "fp16", dtype=torch.float16)
    model.save_pretrained(tmp_path / "int8", dtype=torch.int8)
    size = {k: os.path.getsize(tmp_path / k / "model.safetensors") for k in ("fp16", "int8")}
    assert size["int8"] < 0.8 * size["fp16"]
    a = Generator4D.from_pretrained(tmp_path / "fp16").predict(rgb, pn, pm, num_steps=2, seed=0)
    b = Generator4D.from_pretrained(tmp_path / "int8").predict(rgb, pn, pm, num_steps=2, seed=0)
    scale = np.abs(a["pointmaps"]).mean()
    assert np.abs(a["pointmaps"] - b["pointmaps"]).mean() < 0.05 * scale


def test_int8_round_trip_of_a_matrix():
    from geo4d_policy.models.checkpoint import INT8_SCALE_SUFFIX, dequantize_int8, quantize_int8

    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 128, generator=g) * torch.linspace(0.01, 3.0, 64)[:, None]  # rows of very different range
    q = quantize_int8({"w": w, "b": torch.randn(64, generator=g), "i": torch.arange(3)})
    assert q["w"].dtype == torch.int8 and q["b"].dtype == torch.float16 and q["i"].dtype == torch.int64
    assert "w" + INT8_SCALE_SUFFIX in q
    back = dequantize_int8(q)
    assert set(back) == {"w", "b", "i"}
    # Per-row scaling: each row's error is within half a quantisation step of that row's range.
    err = (back["w"] - w).abs().amax(dim=1)
    assert torch.all(err <= w.abs().amax(dim=1) / 127 / 2 + 1e-6)

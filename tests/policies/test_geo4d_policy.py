"""The geo4d policy: checkpoint errors, a short-horizon rollout with a tiny model, the shared server."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from model_fixtures import tiny_config  # noqa: E402

from geo4d_policy.interface import ActionChunk  # noqa: E402
from geo4d_policy.models.pipeline import Generator4D  # noqa: E402
from geo4d_policy.policies import PolicyUnavailableError  # noqa: E402
from geo4d_policy.policies.generator_server import GeneratorClient, GeneratorServer  # noqa: E402
from geo4d_policy.policies.geo4d import generator_inputs, local_predictor, make_policy  # noqa: E402

TASK = "PutSpatulaOnTable"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = Generator4D(tiny_config(), trained_tasks=[TASK]).eval()
    path = tmp_path_factory.mktemp("gen") / "tiny"
    model.save_pretrained(path)
    return path


def test_missing_checkpoint_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(PolicyUnavailableError, match=r"no generator checkpoint at .*nope.*geo4d-train"):
        make_policy(task=TASK, checkpoint=str(tmp_path / "nope"), device="cpu")


def test_checkpoint_of_another_task_is_refused(tiny_checkpoint):
    with pytest.raises(PolicyUnavailableError, match="not trained on.*PlaceAppleFromBowlIntoBin.*geo4d-train"):
        make_policy(task="PlaceAppleFromBowlIntoBin", checkpoint=str(tiny_checkpoint), device="cpu")


def test_short_horizon_rollout_with_the_tiny_model(tiny_checkpoint):
    from sim.env import make_env

    policy = make_policy(task=TASK, checkpoint=str(tiny_checkpoint), device="cpu", num_steps=2)
    policy.config = type(policy.config)(max_lost_replans=100)
    env = make_env(TASK)
    obs = env.reset(7)
    policy.reset(seed=7)
    for _ in range(2):
        chunk = policy.act(obs)
        assert isinstance(chunk, ActionChunk) and len(chunk) >= 1
        for arm in ("left", "right"):
            assert np.isfinite(chunk.X_TG[arm]).all() and np.isfinite(chunk.width[arm]).all()
        for action in chunk:
            obs, done, _ = env.step(action)
    d = policy.diagnostics()
    assert d["replans"] == 2 and d["predict_s_mean"] > 0 and d["track_s_mean"] > 0
    # Uncalibrated: camera m's pose is estimated from each prediction (an untrained generator's
    # is not trusted, and the record says why).
    pose = d["view_m_pose"]
    assert pose["calibrated"] == 0 and pose["estimated"] + pose["fallback"] == 2
    assert pose["fallback"] == 0 or pose["last_fallback_reason"]
    stages = policy.replan_seconds()
    assert all(len(v) == 2 for v in stages.values()) and d["generate_s_mean"] > 0 and d["control_s_mean"] > 0
    for k in range(2):  # the stages add up to the replan
        assert sum(stages[s][k] for s in ("generate", "segment", "track", "control")) == pytest.approx(
            stages["replan"][k], rel=1e-6)
    assert "generator_sample_s_mean" in d


def test_server_predictions_equal_local_ones(tiny_checkpoint):
    model = Generator4D.from_pretrained(tiny_checkpoint)
    rng = np.random.default_rng(0)
    h, w = 24, 30  # resized to the model's 32x40 and back, like any off-size view
    pm = np.stack([*np.meshgrid(np.linspace(-0.2, 0.2, w), np.linspace(-0.1, 0.1, h)), np.full((h, w), 0.9)], -1)
    inputs = {"rgb": rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8), "pointmap_n": pm.astype(np.float32),
              "pointmap_m": pm.astype(np.float32), "valid_n": np.ones((h, w), bool), "valid_m": np.ones((h, w), bool)}
    local = local_predictor(model)(inputs, task=TASK, seed=3, num_steps=2)
    server = GeneratorServer(model)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = GeneratorClient(server.address)
        remote = client(inputs, task=TASK, seed=3, num_steps=2)
        assert np.array_equal(remote["pointmaps"], local["pointmaps"]) and np.array_equal(remote["rgb"], local["rgb"])
        with pytest.raises(RuntimeError, match="generator server: .*PlaceAppleFromBowlIntoBin"):
            client(inputs, task="PlaceAppleFromBowlIntoBin", seed=3, num_steps=2)
        client.close()
    finally:
        server.close()
    assert server.served == 1
    with pytest.raises(ValueError, match="unix:"):
        GeneratorClient("localhost:1234")


def _ask_together(server: GeneratorServer, inputs: list, tasks: list, *, seeds: list,
                  frames: list | None = None) -> dict[int, object]:
    """Each request from its own client at once (as parallel episodes do): results or errors."""
    results: dict[int, object] = {}

    def ask(i: int) -> None:
        client = GeneratorClient(server.address, frames=None if frames is None else frames[i])
        try:
            results[i] = client(inputs[i], task=tasks[i], seed=seeds[i], num_steps=2)
        except RuntimeError as e:
            results[i] = e
        client.close()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_server_batches_concurrent_clients_and_isolates_bad_requests(tiny_checkpoint):
    model = Generator4D.from_pretrained(tiny_checkpoint)
    h, w = 32, 40
    pm = np.stack([*np.meshgrid(np.linspace(-0.2, 0.2, w), np.linspace(-0.1, 0.1, h)), np.full((h, w), 0.9)], -1)
    rng = np.random.default_rng(1)
    inputs = [{"rgb": rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8), "pointmap_n": pm.astype(np.float32),
               "pointmap_m": pm.astype(np.float32)} for _ in range(4)]
    tasks = [TASK, TASK, TASK, "PlaceAppleFromBowlIntoBin"]  # the last one: a task the model lacks
    server = GeneratorServer(model, max_batch=4, batch_window_s=1.0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        results = _ask_together(server, inputs, tasks, seeds=list(range(4)))
    finally:
        server.close()
    assert isinstance(results[3], RuntimeError) and "PlaceAppleFromBowlIntoBin" in str(results[3])
    for i in range(3):
        alone = model.predict(**inputs[i], task=TASK, seed=i, num_steps=2)
        np.testing.assert_allclose(results[i]["pointmaps"], alone["pointmaps"], atol=1e-4)
    assert server.served == 3 and server.batches < 4  # requests arriving together share a batch


def test_tracker_engine_and_device_are_policy_settings_checked_before_anything_loads(tiny_checkpoint):
    from geo4d_policy.policies.policy_config import PolicyOptionError

    policy = make_policy(task=TASK, checkpoint=str(tiny_checkpoint), device="cpu", **{"video.tracker.engine": "numpy"})
    assert policy.config.tracker.engine == "numpy" and policy.config.tracker.device == "auto"
    with pytest.raises(PolicyOptionError, match="tracker engine must be one of auto, numpy, torch, got 'jax'"):
        make_policy(task=TASK, checkpoint=str(tiny_checkpoint), device="cpu", **{"video.tracker.engine": "jax"})
    with pytest.raises(PolicyOptionError, match="tracker device must be auto, cpu, cuda or cuda:<index>, got 'gpu'"):
        make_policy(task=TASK, checkpoint=str(tiny_checkpoint), device="cpu", **{"video.tracker.device": "gpu"})


def test_generator_inputs_use_each_views_own_frame():
    from sim.env import make_env

    env = make_env(TASK)
    obs = env.reset(3)
    x = generator_inputs(obs)
    assert x["rgb"].shape == (2, 128, 160, 3)
    # Each pointmap is in its own camera frame: positive depth where valid.
    for key in ("n", "m"):
        z = x[f"pointmap_{key}"][..., 2][x[f"valid_{key}"]]
        assert z.size > 0 and (z > 0).all()


def _inputs(rng: np.random.Generator, h: int = 32, w: int = 40) -> dict[str, np.ndarray]:
    pm = np.stack([*np.meshgrid(np.linspace(-0.2, 0.2, w), np.linspace(-0.1, 0.1, h)), np.full((h, w), 0.9)], -1)
    return {"rgb": rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8), "pointmap_n": pm.astype(np.float32),
            "pointmap_m": pm.astype(np.float32)}


def test_a_gpu_out_of_memory_fails_only_the_request_that_does_not_fit(tiny_checkpoint):
    """Injected failure: predict_many runs out of GPU memory whenever the request with seed 13 is
    in it. The batch is retried request by request; only that request's episode gets the error."""
    from geo4d_policy.eval.worker import error_reason
    from geo4d_policy.policies.generator_server import GeneratorOutOfMemoryError

    model = Generator4D.from_pretrained(tiny_checkpoint)
    real = model.predict_many

    def predict_many(requests, **kwargs):
        if any(r.get("seed") == 13 for r in requests):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real(requests, **kwargs)

    model.predict_many = predict_many
    rng = np.random.default_rng(2)
    inputs = [_inputs(rng) for _ in range(3)]
    seeds = [5, 13, 7]
    server = GeneratorServer(model, max_batch=3, batch_window_s=1.0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        results = _ask_together(server, inputs, [TASK] * 3, seeds=seeds)
        # The server goes on: a later request is served.
        client = GeneratorClient(server.address)
        later = client(inputs[0], task=TASK, seed=5, num_steps=2)
        client.close()
    finally:
        server.close()
    assert isinstance(results[1], GeneratorOutOfMemoryError)
    reason = error_reason(results[1])
    assert reason.startswith("error: GeneratorOutOfMemoryError: the generator server ran out of GPU memory")
    for i in (0, 2):
        alone = real([{**inputs[i], "task": TASK, "seed": seeds[i]}], num_steps=2)[0]
        np.testing.assert_allclose(results[i]["pointmaps"], alone["pointmaps"], atol=1e-4)
    np.testing.assert_array_equal(later["pointmaps"], results[0]["pointmaps"])
    assert server.out_of_memory >= 2 and server.served == 3


def test_a_fixed_batch_unet_pads_without_changing_any_rows_result(tiny_checkpoint):
    """The compiled server runs every batch at max_batch: padded rows must not leak into real ones."""
    from geo4d_policy.policies.generator_server import FixedBatchUNet

    plain = Generator4D.from_pretrained(tiny_checkpoint)
    padded = FixedBatchUNet.install(Generator4D.from_pretrained(tiny_checkpoint), 4)
    assert isinstance(padded.unet, FixedBatchUNet) and padded.device == plain.device
    rng = np.random.default_rng(3)
    requests = [{**_inputs(rng), "task": TASK, "seed": s} for s in (1, 2)]
    calls = []
    inner_forward = padded.unet._inner.forward

    def spy(x, *args, **kwargs):
        calls.append(x.shape[0])
        return inner_forward(x, *args, **kwargs)

    padded.unet._inner.forward = spy
    both = padded.predict_many(requests, num_steps=2)
    one = padded.predict_many(requests[:1], num_steps=2)
    assert set(calls) == {4}  # every U-Net call ran at the fixed batch
    for r, out in zip(requests, both):
        ref = plain.predict_many([r], num_steps=2)[0]
        np.testing.assert_allclose(out["pointmaps"], ref["pointmaps"], atol=1e-4)
        np.testing.assert_allclose(out["rgb"].astype(int), ref["rgb"].astype(int), atol=1)
    np.testing.assert_allclose(one[0]["pointmaps"], both[0]["pointmaps"], atol=1e-4)


def test_decode_frames_gives_the_tracked_frames_of_a_full_decode_locally_and_from_the_server(tiny_checkpoint):
    """``decode_frames``: the policy's predictor returns only the first frames, those of a full
    decode; through the server, clients batched together may ask for different numbers."""
    from geo4d_policy.policies.policy_config import PolicyOptionError

    model = Generator4D.from_pretrained(tiny_checkpoint)
    rng = np.random.default_rng(4)
    x = [_inputs(rng) for _ in range(2)]
    full = [local_predictor(model)(x[i], task=TASK, seed=9 + i, num_steps=2) for i in range(2)]
    assert full[0]["pointmaps"].shape[1] == 4
    policy = make_policy(task=TASK, checkpoint=str(tiny_checkpoint), device="cpu", num_steps=2, execute_frames=2,
                         decode_frames=3)
    got = policy.predictor(x[0], task=TASK, seed=9, num_steps=2)
    assert got["pointmaps"].shape[1] == 3 and got["rgb"].shape[1] == 3
    np.testing.assert_allclose(got["pointmaps"], full[0]["pointmaps"][:, :3], atol=1e-5)
    np.testing.assert_array_equal(got["rgb"], full[0]["rgb"][:, :3])
    server = GeneratorServer(model, max_batch=2, batch_window_s=10.0)  # closes as soon as both are in
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        served = _ask_together(server, x, [TASK] * 2, seeds=[9, 10], frames=[3, None])
    finally:
        server.close()
    assert server.batches == 1
    assert served[0]["pointmaps"].shape[1] == 3 and served[1]["pointmaps"].shape[1] == 4
    for i in range(2):
        np.testing.assert_allclose(served[i]["pointmaps"], full[i]["pointmaps"][:, :served[i]["pointmaps"].shape[1]],
                                   atol=1e-4)
    # Fewer frames than a replan tracks (execute_frames 4 + 1): refused before anything loads.
    with pytest.raises(PolicyOptionError, match=r"decode_frames=2 decodes fewer frames than a replan tracks \(5"):
        make_policy(task=TASK, checkpoint=str(tiny_checkpoint), device="cpu", decode_frames=2)

"""The diffusion_policy baseline end to end on tiny synthetic datasets: train, resume, export, act.

One module-scoped pair of synthetic datasets (two tasks, 32x40 images) and one tiny training run
are shared by the tests; everything is seeded and runs on the CPU in one process.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from geo4d_policy.cli.train import main as train_main
from geo4d_policy.data.synthetic import gripper_boxes, make_dataset, render, sample_cameras
from geo4d_policy.interface import ARM_NAMES, ActionChunk, ArmState, CameraFrame, Observation
from geo4d_policy.models.diffusion_policy import DiffusionPolicyModel
from geo4d_policy.policies import Policy, PolicyUnavailableError, make_policy, policy_diagnostics
from geo4d_policy.policies import diffusion_policy as dp_policy
from geo4d_policy.policies.policy_config import PolicyOptionError
from geo4d_policy.train.diffusion_policy import load_dp_train_config, train_diffusion_policy

APPLE, SPATULA, CEREAL = "PlaceAppleFromBowlIntoBin", "PutSpatulaOnTable", "StoreCerealBoxUnderShelf"


def _config(**overrides):
    base = {"max_steps": 4, "ckpt_every": 2, "log_every": 1, "progress": False, "batch_size": 4, "probe_size": 2}
    return load_dp_train_config("tiny", overrides={**base, **overrides})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp")
    make_dataset(root / "apple", seeds=[0, 1], n_frames=4, resolution=(32, 40), task=APPLE)
    make_dataset(root / "spatula", seeds=[5], n_frames=4, resolution=(32, 40), task=SPATULA)
    data = [str(root / "apple"), str(root / "spatula")]
    result = train_diffusion_policy(_config(), data_dirs=data, out_dir=root / "run")
    return root, data, result


def _observation(t: float, *, task: str = APPLE, size: tuple[int, int] = (32, 40), seed: int = 0) -> Observation:
    """Two rendered evaluation views and both arms' states, like the environment's."""
    specs = sample_cameras(np.random.default_rng(seed), n=2, resolution=size)
    arms, boxes = {}, []
    for i, arm in enumerate(ARM_NAMES):
        X = np.diag([1.0, -1.0, -1.0, 1.0])
        X[:3, 3] = [-0.15 + 0.02 * t, (0.25 if arm == "left" else -0.25), 0.2]
        arms[arm] = ArmState(np.zeros(7), np.zeros(7), X, 0.04 + 0.01 * i)
        boxes += gripper_boxes(arm, X[:3, 3], 0.04)
    frames = {}
    for s in specs:
        rgb, depth, _ = render(s, boxes)
        frames[s.name] = CameraFrame(s, rgb, depth, np.zeros(depth.shape, np.int32), {})
    names = tuple(s.name for s in specs)
    return Observation(task=task, time=t, arms=arms, camera_specs={s.name: s for s in specs}, cameras=frames,
                       eval_cameras=names, train_cameras=())


def test_training_writes_run_directory_and_resumes_exactly(setup, tmp_path):
    root, data, full = setup
    run = root / "run"
    assert full.step == 4 and (run / "last").read_text().strip() == "step_4"
    info = json.loads((full.checkpoint / "config.json").read_text())
    assert info["tasks"] == [APPLE, SPATULA] and set(info["normalization"]) == {APPLE, SPATULA}
    # The probe: per-arm errors on training episodes, held-out episodes (apple seed 1; the
    # single spatula episode is all training) and held-out episodes seen from held-out views.
    assert info["training"]["val_seeds"] == {data[0]: [1], data[1]: []}
    probe = info["training"]["probe"]
    for name in ("train", "val", "val_novel"):
        for arm in ARM_NAMES:
            assert {f"{name}/{arm}/pos_mm", f"{name}/{arm}/rot_deg", f"{name}/{arm}/width_mm"} <= set(probe)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in lines if "val/left/pos_mm" in r] == [2, 4]
    assert (run / "train_config.yaml").is_file() and (full.checkpoint / "training_state" / "optimizer.pt").is_file()
    # A time budget of 0 s stops after the first step (with a checkpoint); resuming to step 4
    # gives the weights of the uninterrupted run.
    part = tmp_path / "part"
    stopped = train_diffusion_policy(_config(max_time_s=0.0), data_dirs=data, out_dir=part)
    assert stopped.step == 1 and stopped.checkpoint.name == "step_1"
    with pytest.raises(FileExistsError):
        train_diffusion_policy(_config(), data_dirs=data, out_dir=part)
    resumed = train_diffusion_policy(_config(), data_dirs=data, out_dir=part, resume=True)
    assert resumed.step == 4
    for name in ("model.safetensors", "training_state/raw.safetensors"):
        a, b = load_file(str(full.checkpoint / name)), load_file(str(resumed.checkpoint / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    lines = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4]
    # Another model config or other data is refused.
    with pytest.raises(ValueError, match="another model config"):
        bigger = _config()
        bigger.model.encoder.feature_dim = 32
        train_diffusion_policy(bigger, data_dirs=data, out_dir=part, resume=True)
    with pytest.raises(ValueError, match="other data"):
        train_diffusion_policy(_config(max_steps=5), data_dirs=data[:1], out_dir=part, resume=True)


def test_cli_trains_and_exports_fp16(setup, tmp_path, capsys):
    _, data, _ = setup
    args = ["diffusion_policy", "--config", "tiny", "--data", data[1], "--out", str(tmp_path / "run"),
            "--steps", "2", "--batch-size", "2", "--export", str(tmp_path / "ship")]
    assert train_main(args) == 0
    assert (tmp_path / "run" / "last").read_text().strip() == "step_2"
    weights = load_file(str(tmp_path / "ship" / "model.safetensors"))
    assert all(v.dtype == torch.float16 for v in weights.values() if v.is_floating_point())
    assert not (tmp_path / "ship" / "training_state").exists()
    model = DiffusionPolicyModel.from_pretrained(tmp_path / "ship", task=SPATULA)
    assert model.trained_tasks == (SPATULA,)
    assert train_main(args[:-2]) == 2 and "already holds a training run" in capsys.readouterr().err


def test_act_returns_a_valid_seeded_chunk(setup):
    root, _, result = setup
    policy = make_policy("diffusion_policy", task="place_apple_from_bowl_into_bin", checkpoint=str(root / "run"))
    assert isinstance(policy, Policy) and policy.name == "diffusion_policy"
    obs = [_observation(t) for t in (0.0, 0.8, 1.6)]
    policy.reset(seed=3)
    chunks = [policy.act(o) for o in obs]
    for chunk in chunks:
        assert isinstance(chunk, ActionChunk) and len(chunk) == 8 and set(chunk.X_TG) == set(ARM_NAMES)
        for arm in ARM_NAMES:
            X = chunk.X_TG[arm]
            assert X.shape == (8, 4, 4) and np.isfinite(X).all()
            R = X[:, :3, :3]
            assert np.allclose(R @ R.transpose(0, 2, 1), np.eye(3), atol=1e-6)
            assert np.allclose(X[:, 3], [0, 0, 0, 1])
            assert ((chunk.width[arm] >= 0) & (chunk.width[arm] <= 0.08)).all()
    # History: only the observations the next call can still use are kept.
    assert [h[0] for h in policy._history] == [0.8, 1.6]
    # Same seed and observations -> same actions; another seed -> other actions.
    again = make_policy("diffusion_policy", task=APPLE, checkpoint=str(result.checkpoint))
    again.reset(seed=3)
    for o, c in zip(obs, chunks):
        c2 = again.act(o)
        assert all(np.array_equal(c.X_TG[a], c2.X_TG[a]) for a in ARM_NAMES)
    again.reset(seed=4)
    assert not np.array_equal(again.act(obs[0]).X_TG["left"], chunks[0].X_TG["left"])
    diag = policy_diagnostics(policy)
    assert diag["dp_calls"] == 3 and diag["dp_inference_mean_s"] > 0 and diag["dp_num_inference_steps"] == 4
    # Images of another size are resized to the model's; options are passed through.
    other = make_policy("diffusion_policy", task=APPLE, checkpoint=str(root / "run"), num_inference_steps=2,
                        n_action_steps=4, scheduler="ddpm")
    other.reset(seed=0)
    assert len(other.act(_observation(0.0, size=(48, 60)))) == 4
    with pytest.raises(PolicyOptionError, match="unknown diffusion_policy policy option 'guidance'.*scheduler"):
        make_policy("diffusion_policy", task=APPLE, checkpoint=str(root / "run"), guidance=2.0)


def test_missing_or_wrong_checkpoints_say_how_to_make_one(setup, tmp_path, monkeypatch):
    root, _, _ = setup
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        make_policy("diffusion_policy", task=APPLE, checkpoint=str(missing))
    assert str(missing) in str(err.value) and "geo4d-train diffusion_policy" in str(err.value)
    monkeypatch.setattr(dp_policy, "DEFAULT_CHECKPOINT_DIR", tmp_path / "ship")
    with pytest.raises(PolicyUnavailableError) as err:
        make_policy("diffusion_policy", task=APPLE)
    msg = str(err.value)
    assert str(tmp_path / "ship") in msg and str(tmp_path / "ship" / APPLE) in msg
    assert "geo4d-train diffusion_policy" in msg
    # A checkpoint of other tasks is refused, naming them and the command.
    with pytest.raises(PolicyUnavailableError, match="not on StoreCerealBoxUnderShelf") as err:
        make_policy("diffusion_policy", task=CEREAL, checkpoint=str(root / "run"))
    assert "geo4d-train diffusion_policy" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PolicyUnavailableError, match="not a Diffusion Policy checkpoint"):
        make_policy("diffusion_policy", task=APPLE, checkpoint=str(tmp_path / "empty"))
    # The default location: a per-task sub-directory is found.
    DiffusionPolicyModel.from_pretrained(root / "run").save_pretrained(tmp_path / "ship" / SPATULA)
    policy = make_policy("diffusion_policy", task=SPATULA)
    assert policy.checkpoint == str(tmp_path / "ship" / SPATULA)
    # A multi-task checkpoint at the default location serves its tasks and names them for others.
    DiffusionPolicyModel.from_pretrained(root / "run").save_pretrained(tmp_path / "ship")
    assert make_policy("diffusion_policy", task=APPLE).checkpoint == str(tmp_path / "ship")
    with pytest.raises(PolicyUnavailableError, match=r"found only .*ship \(trained on \['Place"):
        make_policy("diffusion_policy", task=CEREAL)


def test_policy_pairs_fresh_images_with_the_state_of_their_step(setup):
    """Training and rollout both see observation steps obs_stride (5) apart, each image taken at
    the time of the state it is paired with."""
    from geo4d_policy.data.actions import poses_to_vectors
    from geo4d_policy.data.datasets import PolicyDataset, frame_of_step
    from geo4d_policy.data.format import EpisodeReader, load_meta

    root, _, _ = setup
    ds = PolicyDataset(root / "apple", normalize=False, views=("cam00", "cam01"))
    with EpisodeReader(root / "apple" / load_meta(root / "apple").episodes[0].file) as r:
        robot = r.robot()
        frames = frame_of_step(r.video_time, robot.time)
        image_10 = r.rgb("cam01", frames[10])
    state = poses_to_vectors(robot.X_TG, robot.width)
    assert [s for k, s in ds.samples if k == 0] == [0, 5, 10, 15]
    sample = ds[2]  # step 10: observation steps 5 and 10
    assert np.allclose(sample["state"].numpy(), state[[5, 10]])
    np.testing.assert_allclose((sample["rgb"][1, 1].movedim(0, -1).numpy() + 1) * 127.5, image_10, atol=1e-3)
    assert np.allclose(ds[0]["state"].numpy(), state[[0, 0]])  # before the start: step 0
    with pytest.raises(ValueError, match="obs_stride"):
        PolicyDataset(root / "apple", obs_stride=0)

    # Rollout: the loop shows the policy every executed observation; it acts every 8 steps and
    # keeps (renders) only the observations its next call looks back to.
    policy = make_policy("diffusion_policy", task=APPLE, checkpoint=str(root / "run"))
    policy.reset(seed=0)
    for step in range(17):
        o = _observation(step / 10)
        if step % 8 == 0:
            policy.act(o)
            if step == 16:
                now = policy._observation_tensors(o)
        policy.observe(o)
    assert [round(h[0] * 10) for h in policy._history] == [11, 16]
    expected = policy._observation_tensors(_observation(1.1))
    assert torch.equal(policy._history[0][1], expected[0]) and torch.equal(policy._history[1][1], now[0])
    assert policy_diagnostics(policy)["dp_history_misses"] == 0
    # Without observe (a bare loop) the nearest older observation stands in, and is counted.
    bare = make_policy("diffusion_policy", task=APPLE, checkpoint=str(root / "run"))
    bare.reset(seed=0)
    for t in (0.0, 0.8, 1.6):
        bare.act(_observation(t))
    assert policy_diagnostics(bare)["dp_history_misses"] == 2


def test_idle_arm_stays_exactly_where_the_demonstrations_kept_it(tmp_path):
    # Spatula and cereal never move the left arm: its dimensions have zero range and are held,
    # so even an untrained network commands exactly the recorded pose and width.
    from geo4d_policy.data.actions import poses_to_vectors, vectors_to_poses
    from geo4d_policy.data.datasets import compute_normalization
    from geo4d_policy.data.format import EpisodeReader

    make_dataset(tmp_path / "spatula", seeds=[0, 1], n_frames=4, task=SPATULA, idle_arms=("left",))
    stats = compute_normalization(tmp_path / "spatula")
    torch.manual_seed(0)
    model = DiffusionPolicyModel(_config().model, trained_tasks=[SPATULA], normalization={SPATULA: stats})
    model.save_pretrained(tmp_path / "ckpt")
    with EpisodeReader(tmp_path / "spatula" / "episodes" / "episode_0.h5") as r:
        robot = r.robot()
        X_idle = robot.action_X_TG["left"][0]
        w_idle = robot.action_width["left"][0]
    expected = vectors_to_poses(poses_to_vectors({a: robot.action_X_TG[a][:1] for a in ARM_NAMES},
                                                 {a: robot.action_width[a][:1] for a in ARM_NAMES}))
    policy = make_policy("diffusion_policy", task=SPATULA, checkpoint=str(tmp_path / "ckpt"))
    policy.reset(seed=0)
    for t in (0.0, 0.8):
        chunk = policy.act(_observation(t, task=SPATULA))
        assert np.array_equal(chunk.X_TG["left"], np.broadcast_to(expected[0]["left"][0], (8, 4, 4)))
        assert np.allclose(chunk.X_TG["left"], X_idle, atol=1e-6) and np.all(chunk.width["left"] == np.float32(w_idle))
        assert not np.allclose(chunk.X_TG["right"][:, :3, 3], X_idle[:3, 3], atol=0.05)


def test_device_frame_store_serves_the_loader_samples(setup):
    from geo4d_policy.train.diffusion_policy import make_policy_data
    from geo4d_policy.train.dp_frames import PolicyFrameStore

    _, data, _ = setup
    cfg = _config()
    pdata = make_policy_data(data, model=cfg.model, batch_size=4, num_workers=0, seed=0, val_fraction=0.05)
    store = PolicyFrameStore(pdata.parts, resolution=tuple(cfg.model.resolution), device="cpu")
    assert len(store) == len(pdata.dataset) == 8  # apple seed 0 and spatula seed 5, 4 frame steps each
    # The frames live in an RGB-only FrameStore of the training episodes and views, resized.
    assert store.frames.seeds.tolist() == [0, 5] and store.frames.depth_mm is None
    assert store.frames.resolution == tuple(cfg.model.resolution) and store.n_cams == len(pdata.parts[0][0].cams)
    idx, cams = store.batch_indices(5, seed=0, step=3)
    assert np.array_equal(idx, store.batch_indices(5, seed=0, step=3)[0]) and (cams[:, 0] != cams[:, 1]).all()
    # Several processes: each draws the global batch from (seed, step) and keeps its rows.
    rows = [store.batch_indices(3, seed=0, step=3, rank=r, world=2) for r in range(2)]
    whole = store.batch_indices(6, seed=0, step=3)
    assert all(np.array_equal(np.concatenate([r[i] for r in rows]), whole[i]) for i in range(2))
    batch = store.gather(np.arange(8), np.tile([[2, 7]], (8, 1)))
    offset = 0
    for ds, task_id, _ in pdata.parts:
        ds_fixed = type(ds)(ds.root, seeds=[ds.episode_entries[k].seed for k in {k for k, _ in ds.samples}],
                            views=(f"cam{ds.cams[2]:02d}", f"cam{ds.cams[7]:02d}"), obs_stride=ds.obs_stride,
                            resolution=ds.resolution, normalize=False)
        for i in range(len(ds_fixed)):
            want = ds_fixed[i]
            got = {k: v[offset + i] for k, v in batch.items()}
            # Frames are stored as uint8 after the loader's resize: within half a grey level.
            assert (got["rgb"] - want["rgb"]).abs().max() <= 0.5 / 127.5 + 1e-6
            assert torch.allclose(got["action"], _normalized(pdata, task_id, "action", want["action"]), atol=1e-6)
            assert torch.allclose(got["state"], _normalized(pdata, task_id, "state", want["state"]), atol=1e-6)
            assert torch.equal(got["action_pad"], want["action_pad"]) and int(got["task_id"]) == task_id
        offset += len(ds_fixed)


def _normalized(pdata, task_id, kind, x):
    from geo4d_policy.data.actions import normalize_minmax

    stats = next(s for _, t, s in pdata.parts if t == task_id)
    return normalize_minmax(x, stats[kind])


def test_device_frames_resume_exactly_and_init_from_continues(setup, tmp_path):
    root, data, _ = setup
    full = train_diffusion_policy(_config(frames_on_device=True), data_dirs=data, out_dir=tmp_path / "full")
    part = train_diffusion_policy(_config(frames_on_device=True, max_time_s=0.0), data_dirs=data,
                                  out_dir=tmp_path / "part")
    assert part.step == 1
    resumed = train_diffusion_policy(_config(frames_on_device=True), data_dirs=data, out_dir=tmp_path / "part",
                                     resume=True)
    a = load_file(str(full.checkpoint / "model.safetensors"))
    b = load_file(str(resumed.checkpoint / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # A fresh run from the exported checkpoint keeps its weights, scaling and step count.
    from geo4d_policy.train.diffusion_policy import export_checkpoint

    export_checkpoint(full.checkpoint, tmp_path / "ship", dtype=torch.int8)
    more = train_diffusion_policy(_config(init_from=str(tmp_path / "ship"), max_steps=2), data_dirs=data,
                                  out_dir=tmp_path / "more")
    info = json.loads((more.checkpoint / "config.json").read_text())
    assert info["training"]["total_steps"] == 6 and info["training"]["init_from"] == str(tmp_path / "ship")
    assert info["normalization"] == json.loads((tmp_path / "ship" / "config.json").read_text())["normalization"]
    again = train_diffusion_policy(_config(init_from=str(tmp_path / "ship"), max_steps=3), data_dirs=data,
                                   out_dir=tmp_path / "more", resume=True)
    assert json.loads((again.checkpoint / "config.json").read_text())["training"]["total_steps"] == 7
    with pytest.raises(ValueError, match="ship was trained with another Diffusion Policy config:\n  cond_dim"):
        bigger = _config(init_from=str(tmp_path / "ship"))
        bigger.model.cond_dim = 32
        train_diffusion_policy(bigger, data_dirs=data, out_dir=tmp_path / "other")


def test_legacy_refuse_stops_a_v1_checkpoint_before_any_episode(setup, tmp_path):
    from geo4d_policy.models.checkpoint import CheckpointError

    _, _, result = setup
    v1 = tmp_path / "v1"
    DiffusionPolicyModel.from_pretrained(result.checkpoint).save_pretrained(v1)
    info = json.loads((v1 / "config.json").read_text())
    info["version"] = 1  # the format before the normalisation floor
    info.pop("normalization_min_range")
    (v1 / "config.json").write_text(json.dumps(info))
    config = dp_policy.DiffusionPolicyInferenceConfig(checkpoint=str(v1), legacy="refuse")
    # The synthetic demonstrations never turn the grippers: their rotation components have no range.
    with pytest.raises(CheckpointError, match="version-1 checkpoint.*PutSpatulaOnTable action"):
        dp_policy.preflight(task="PutSpatulaOnTable", config=config)
    with pytest.raises(CheckpointError, match="version-1 checkpoint"):
        make_policy("diffusion_policy", task="PutSpatulaOnTable", checkpoint=str(v1), legacy="refuse")
    dp_policy.preflight(task="PutSpatulaOnTable", config=dataclasses.replace(config, legacy="repair"))
    with pytest.raises(PolicyOptionError, match="legacy"):
        make_policy("diffusion_policy", task="PutSpatulaOnTable", checkpoint=str(v1), legacy="ignore")

"""The diffusion_policy baseline end to end on tiny synthetic datasets: train, resume, export, act.

One module-scoped pair of synthetic datasets (two tasks, 32x40 images) and one tiny training run
are shared by the tests; everything is seeded and runs on the CPU in one process.
"""

from __future__ import annotations

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
    assert "probe_pos_err_m" in info["training"]["probe"]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in lines if "probe_pos_err_m" in r] == [2, 4]
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
    # History: only the observations the next call can still use are kept (0.8 s back).
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


def test_policy_samples_space_observations_like_the_policy_sees_them(setup):
    # The model's observation steps are obs_stride (8) control steps apart, the replanning period.
    from geo4d_policy.data.actions import poses_to_vectors
    from geo4d_policy.data.datasets import PolicyDataset
    from geo4d_policy.data.format import EpisodeReader, load_meta

    root, _, _ = setup
    ds = PolicyDataset(root / "apple", obs_stride=8, normalize=False, views=("cam00", "cam01"))
    with EpisodeReader(root / "apple" / load_meta(root / "apple").episodes[0].file) as r:
        robot = r.robot()
    state = poses_to_vectors(robot.X_TG, robot.width)
    assert np.allclose(ds[10]["state"].numpy(), state[[2, 10]])
    assert np.allclose(ds[3]["state"].numpy(), state[[0, 3]])  # before the start: step 0
    with pytest.raises(ValueError, match="obs_stride"):
        PolicyDataset(root / "apple", obs_stride=0)

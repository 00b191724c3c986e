"""The dreamitate baseline: checkpoint checks and a short-horizon rollout with tiny models."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from model_fixtures import tiny_config  # noqa: E402

from geo4d_policy.models.pipeline import Generator4D  # noqa: E402
from geo4d_policy.perception.segmenter import GripperSegmenter, SegmenterConfig  # noqa: E402
from geo4d_policy.policies import PolicyUnavailableError  # noqa: E402
from geo4d_policy.policies.dreamitate import make_policy  # noqa: E402

TASK = "PutSpatulaOnTable"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("dreamitate")
    Generator4D(tiny_config(use_pointmaps=False), trained_tasks=[TASK]).eval().save_pretrained(root / "rgb")
    Generator4D(tiny_config(), trained_tasks=[TASK]).eval().save_pretrained(root / "geo4d")
    GripperSegmenter(SegmenterConfig(channels=(8, 8, 16))).eval().save_pretrained(root / "seg")
    return {"rgb": root / "rgb", "geo4d": root / "geo4d", "seg": root / "seg"}


def test_missing_or_wrong_checkpoints_are_refused_with_the_fix(checkpoints, tmp_path):
    with pytest.raises(PolicyUnavailableError, match="no gripper segmenter at .*geo4d-train segmenter"):
        make_policy(task=TASK, checkpoint=str(checkpoints["rgb"]), segmenter=str(tmp_path / "none"), device="cpu")
    with pytest.raises(PolicyUnavailableError, match="no RGB-only generator checkpoint at .*small_rgb"):
        make_policy(task=TASK, checkpoint=str(tmp_path / "none"), segmenter=str(checkpoints["seg"]), device="cpu")
    with pytest.raises(PolicyUnavailableError, match="RGB \\+ pointmap"):
        make_policy(task=TASK, checkpoint=str(checkpoints["geo4d"]), segmenter=str(checkpoints["seg"]), device="cpu")
    with pytest.raises(PolicyUnavailableError, match="not trained on"):
        make_policy(task="PlaceAppleFromBowlIntoBin", checkpoint=str(checkpoints["rgb"]),
                    segmenter=str(checkpoints["seg"]), device="cpu")


@pytest.mark.slow  # about 6 min on 2 CPU cores: render-and-compare searches on an untrained segmenter's noise
def test_short_horizon_rollout_with_tiny_models(checkpoints):
    from sim.env import make_env

    policy = make_policy(task=TASK, checkpoint=str(checkpoints["rgb"]), segmenter=str(checkpoints["seg"]),
                         device="cpu", num_steps=2, execute_frames=2)
    policy.config = type(policy.config)(max_lost_replans=100, control=policy.config.control)
    env = make_env(TASK)
    obs = env.reset(4)
    policy.reset(seed=4)
    for _ in range(2):
        chunk = policy.act(obs)
        assert len(chunk) >= 1 and all(np.isfinite(chunk.X_TG[a]).all() for a in ("left", "right"))
        for action in chunk:
            obs, _, _ = env.step(action)
    d = policy.diagnostics()
    assert d["replans"] == 2 and d["track_s_mean"] > 0


def test_segmenter_option_auto_is_the_shipped_one_and_none_is_refused(tmp_path):
    # Dreamitate cannot run without a segmenter: "auto" names the shipped one (it used to be
    # refused as "no gripper segmenter at auto"), "none" and a missing path stop the run early.
    from geo4d_policy.policies.dreamitate import DreamitatePolicyConfig, preflight
    from geo4d_policy.policies.video_policy import DEFAULT_SEGMENTER, check_segmenter_option

    assert check_segmenter_option("auto", required=True) == DEFAULT_SEGMENTER
    server = {"server": "unix:/x#00"}
    preflight(task=TASK, config=DreamitatePolicyConfig(segmenter="auto"), runtime=server)
    with pytest.raises(PolicyUnavailableError, match="needs a gripper segmenter.*segmenter=auto\\|DIR$"):
        preflight(task=TASK, config=DreamitatePolicyConfig(segmenter="none"), runtime=server)
    with pytest.raises(PolicyUnavailableError, match="no gripper segmenter at .*missing"):
        preflight(task=TASK, config=DreamitatePolicyConfig(segmenter=str(tmp_path / "missing")), runtime=server)
    # Policies that can run without one keep "none" and an absent shipped checkpoint as "no segmenter".
    assert check_segmenter_option("none") is None


def test_arm_static_in_prediction_compares_silhouettes():
    from geo4d_policy.policies.dreamitate import arm_static_in_prediction

    now = np.zeros((2, 32, 40), bool)
    now[:, 10:24, 10:24] = True
    same = np.repeat(now[:, None], 3, axis=1)
    assert arm_static_in_prediction(now, same)
    shifted = same.copy()
    shifted[1, 2] = np.roll(now[1], 4, axis=1)  # one view, one frame: 4 px (IoU 0.56)
    assert not arm_static_in_prediction(now, shifted)
    nudged = same.copy()
    nudged[0, 1] = np.roll(now[0], 1, axis=0)  # 1 px (IoU 0.87): within the idle tolerance
    assert arm_static_in_prediction(now, nudged)
    unseen = np.zeros_like(same)
    assert arm_static_in_prediction(np.zeros_like(now), unseen)  # nothing to track either way
    appears = unseen.copy()
    appears[0, 2, 5:9, 5:9] = True
    assert not arm_static_in_prediction(np.zeros_like(now), appears)
    with pytest.raises(ValueError, match="differ"):
        arm_static_in_prediction(now, same[:1])


def test_idle_arm_is_not_tracked_by_the_rgb_oracle():
    # Spatula: the left arm never moves; in the expert's own future the right arm reaches for the
    # spatula. Only the right arm is handed to the (expensive) RGB pose search.
    from geo4d_policy.policies import make_policy as make
    from sim.env import make_env

    env = make_env(TASK)
    obs = env.reset(4)
    policy = make("rgb_oracle", task=TASK, labels="ground_truth", device="cpu")
    policy.reset(seed=4)
    policy._cmd = {a: (obs.arms[a].X_TG, False) for a in obs.arms}
    video = policy.predict_video(obs)
    assert video.pointmaps is None and video.rgb.shape[:2] == (2, policy.frames_to_track)
    assert policy.moving_arms(obs, video) == ["right"]
    # From the prediction alone too: the look-ahead keeps the idle arm still.
    policy.idle_arms = "prediction"
    assert policy.moving_arms(obs, video) == ["right"]
    policy.idle_arms = "none"
    assert policy.moving_arms(obs, video) == ["left", "right"]
    policy.idle_arms = "prediction"
    # A prediction in which nothing moves (the current frames repeated) tracks no arm at all,
    # and the chunk holds both arms where they are commanded.
    still = type(video)(pointmaps=None, valid=None, rgb=np.repeat(video.rgb[:, :1], video.rgb.shape[1], axis=1),
                        part_labels={a: np.repeat(policy.labels_now(obs, a)[:, None], video.rgb.shape[1], axis=1)
                                     for a in obs.arms})
    assert policy.moving_arms(obs, still) == []
    tracks = policy.track(obs, still)
    assert tracks == {} and policy.diagnostics()["arms_static"] == 2


def test_a_prediction_where_nothing_moves_holds_both_arms_without_pose_search():
    # "Repeat the current frame" as the predictor: the shipped segmenter sees the same images now
    # and in every predicted frame, so neither arm is tracked and the chunk holds both.
    from geo4d_policy.policies.dreamitate import DreamitatePolicy
    from geo4d_policy.policies.video_policy import DEFAULT_SEGMENTER, load_segmenter
    from sim.env import make_env

    if not DEFAULT_SEGMENTER.exists():
        pytest.skip("no shipped segmenter")

    def repeat_current(inputs, *, task, seed, num_steps):
        return {"rgb": np.repeat(np.asarray(inputs["rgb"])[:, None], 10, axis=1)}

    env = make_env(TASK)
    obs = env.reset(4)
    policy = DreamitatePolicy(task=TASK, predictor=repeat_current, segmenter=load_segmenter("auto"))
    policy.reset(seed=4)
    chunk = policy.act(obs)
    d = policy.diagnostics()
    assert (d["arms_tracked"], d["arms_static"], d["lost_replans"]) == (0, 2, 0)
    for arm in ("left", "right"):
        assert np.allclose(chunk.X_TG[arm], obs.arms[arm].X_TG, atol=1e-9)


def test_task_idle_arms_are_the_demonstrations_zero_range_arms():
    # The table Dreamitate uses is the fact the Diffusion Policy reads from its data: the arms
    # whose commands have zero range over the demonstrations (the shipped checkpoint's statistics).
    import json

    from geo4d_policy.policies.diffusion_policy import DEFAULT_CHECKPOINT_DIR
    from geo4d_policy.policies.dreamitate import TASK_IDLE_ARMS

    path = DEFAULT_CHECKPOINT_DIR / "config.json"
    if not path.is_file():
        pytest.skip("no shipped Diffusion Policy checkpoint")
    norm = json.loads(path.read_text())["normalization"]
    for task, stats in norm.items():
        rng = np.asarray(stats["action"]["max"]) - np.asarray(stats["action"]["min"])
        idle = tuple(arm for a, arm in enumerate(("left", "right")) if np.all(rng[10 * a:10 * a + 10] == 0))
        assert TASK_IDLE_ARMS.get(task, ()) == idle, task
    # A setting outside the choices is refused before any episode, naming them.
    from geo4d_policy.policies import make_policy as make
    from geo4d_policy.policies.dreamitate import DreamitatePolicy, RGBPerceptionConfig
    from geo4d_policy.policies.policy_config import PolicyOptionError

    with pytest.raises(PolicyOptionError, match="demonstrations.*prediction.*none"):
        make("dreamitate", task=TASK, server="unix:/x#00", idle_arms="left")
    with pytest.raises(ValueError, match="demonstrations, prediction, none"):
        DreamitatePolicy(task=TASK, predictor=None, segmenter=None, perception=RGBPerceptionConfig(idle_arms="left"))

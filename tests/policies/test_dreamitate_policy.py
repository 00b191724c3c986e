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

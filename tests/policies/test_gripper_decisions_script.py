"""scripts/gripper_decisions.py: replays recorded gripper decisions against the truth, on
development-seed records only."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geo4d_policy.interface import dev_seed, eval_seed
from geo4d_policy.policies.video_policy import GripperStateInputs


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("gripper_decisions")


def _run(tmp_path, name: str, seed: int):
    # A hand descending onto its object whose readings say "closed" one frame early; the truth
    # closes at the stop (frame 2). Close-at-rest gets it right; without it the hand closes early.
    z = np.array([0.30, 0.27, 0.24, 0.24, 0.30])
    inputs = GripperStateInputs(raw=np.array([False, True, True, True, True]), observed=np.ones(5, bool),
                                pose_ok=np.ones(5, bool), positions=np.c_[np.zeros((5, 2)), z], start=False,
                                start_position=np.array([0.0, 0.0, 0.33]), peak_z=0.33)
    arm = {"state": {**inputs.to_dict(), "true_closed": "00111"}, "idle_hold": False, "true_motion_mm": 90.0}
    record = {"task": "PlaceAppleFromBowlIntoBin", "policy": "oracle", "seed": seed, "episode_index": 0,
              "success": True, "duration_s": 1.0, "sim_time_s": 1.0, "failure_reason": None,
              "oracle_replans": [{"t": 0.0, "right": arm}]}
    run = tmp_path / name
    run.mkdir()
    (run / "episodes.jsonl").write_text(json.dumps(record) + "\n")
    return run


def test_replays_each_rule_on_dev_records_and_refuses_other_streams(script, tmp_path, capsys):
    dev = _run(tmp_path, "dev", dev_seed(0, 0))
    assert script.main([str(dev), "--json", str(tmp_path / "out.json")]) == 0
    counts = json.loads((tmp_path / "out.json").read_text())["PlaceAppleFromBowlIntoBin"]
    variants = counts["variants"]
    assert variants["default"] == {"frames": 4, "closed_early": 0, "open_early": 0, "replans_changed": 0}
    assert variants["no close-at-rest"]["closed_early"] == 1 and variants["no close-at-rest"]["replans_changed"] == 1
    assert counts["idle"] == {"replans": 1, "idle_holds": 0, "held_while_moving": 0}
    assert "no policy_config.yaml" in capsys.readouterr().err  # replayed with the oracle's defaults
    evaluation = _run(tmp_path, "eval", eval_seed(0, 0))
    assert script.main([str(evaluation)]) == 2
    assert "ran on the eval seed stream" in capsys.readouterr().err

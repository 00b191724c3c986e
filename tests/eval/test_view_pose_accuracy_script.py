"""scripts/view_pose_accuracy.py: on a recorded dataset the estimate of camera m's pose from its
own next frame recovers the calibration, and noise in the "prediction" moves it."""

from __future__ import annotations

import json

import pytest

from geo4d_policy.data import synthetic


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("view_pose_accuracy")


def test_the_estimate_recovers_the_recorded_calibration(script, tmp_path):
    root = tmp_path / "apple"
    synthetic.make_dataset(root, seeds=[0], n_frames=4, resolution=(48, 64))
    out = tmp_path / "vp.json"
    assert script.main(["--data", str(root), "--clips", "3", "--out", str(out)]) == 0
    exact = json.loads(out.read_text())[str(root)]
    assert exact["summary"]["trusted"] == exact["summary"]["clips"] > 0
    assert exact["summary"]["trans_mm_max"] < 0.5 and exact["summary"]["rot_deg_max"] < 0.05
    assert script.main(["--data", str(root), "--clips", "3", "--noise", "0.01", "--out", str(out)]) == 0
    noisy = json.loads(out.read_text())[str(root)]["summary"]
    assert noisy["residual_mm_median"] > 5.0 and noisy["trans_mm_median"] > exact["summary"]["trans_mm_median"]

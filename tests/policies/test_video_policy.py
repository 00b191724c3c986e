"""Shared video-policy helpers: gripper-state debouncing."""

from __future__ import annotations

import numpy as np

from geo4d_policy.policies.video_policy import debounce


def test_gripper_state_debounce():
    s = np.array([False, True, False, True, True, True])
    assert debounce(s, start=False, frames=2).tolist() == [False, False, False, True, True, True]
    assert debounce(s, start=False, frames=1).tolist() == s.tolist()
    # A change in the last frame cannot be confirmed yet.
    assert debounce(np.array([True, True, False]), start=True, frames=2).tolist() == [True, True, True]

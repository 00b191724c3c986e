"""Receding-horizon chunks: speed limits, timing, gripper schedule, idle arms, truncation, bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from geo4d_policy.control.receding_horizon import (
    ArmKeyframes,
    RecedingHorizonConfig,
    hold_chunk,
    is_idle,
    keyframes_to_chunk,
    truncate_keyframes,
)
from geo4d_policy.control.trajectory import distance_to_polyline, max_speeds
from geo4d_policy.interface import CONTROL_HZ


def _pose(x, y=0.0, z=0.3, yaw=0.0):
    X = np.eye(4)
    c, s = np.cos(yaw), np.sin(yaw)
    X[:2, :2] = [[c, -s], [s, c]]
    X[:3, 3] = [x, y, z]
    return X


CFG = RecedingHorizonConfig()


def test_slow_keyframes_keep_the_video_pace():
    kf = ArmKeyframes(np.stack([_pose(0.02 * k) for k in range(1, 5)]), np.zeros(4, bool))
    chunk = keyframes_to_chunk({"left": (_pose(0.0), False)}, {"left": kf}, config=CFG)
    # 4 frames at 2 Hz -> 2 s -> 20 steps, each keyframe reached at the end of its segment.
    assert len(chunk) == 4 * CFG.steps_per_frame == 20
    for k in range(4):
        np.testing.assert_allclose(chunk.X_TG["left"][(k + 1) * 5 - 1], kf.X_TG[k], atol=1e-12)


def test_fast_keyframes_are_slowed_to_the_speed_limits():
    # 0.5 m and 120 deg within one 0.5 s frame: far beyond 0.3 m/s and 70 deg/s.
    kf = ArmKeyframes(_pose(0.5, yaw=np.deg2rad(120))[None], np.zeros(1, bool))
    chunk = keyframes_to_chunk({"right": (_pose(0.0), False)}, {"right": kf}, config=CFG)
    lin, ang = max_speeds(chunk.X_TG["right"])
    assert lin <= CFG.linear_speed + 1e-9 and ang <= CFG.angular_speed + 1e-9
    assert len(chunk) >= int(np.ceil(0.5 / CFG.linear_speed * CONTROL_HZ))
    np.testing.assert_allclose(chunk.X_TG["right"][-1], kf.X_TG[0], atol=1e-12)


def test_gripper_closes_on_arrival_then_settles_and_idle_arms_hold():
    kf = ArmKeyframes(np.stack([_pose(0.02), _pose(0.04)]), np.array([False, True]))
    start = {"left": (_pose(0.0), False), "right": (_pose(0.1, y=-0.3), True)}
    chunk = keyframes_to_chunk(start, {"left": kf}, config=CFG)
    w, X = chunk.width["left"], chunk.X_TG["left"]
    settle = CFG.grasp_settle_steps
    assert len(w) == 10 + settle
    # Open over both segments until the arm stands at frame 2's pose; closed there, and it waits.
    assert np.all(w[:9] == CFG.open_width) and np.all(w[9:] == CFG.closed_width)
    np.testing.assert_allclose(X[9:], np.repeat(kf.X_TG[1][None], 1 + settle, axis=0), atol=1e-12)
    # The arm without keyframes holds its pose and its (closed) gripper for the whole chunk.
    assert np.allclose(chunk.X_TG["right"], start["right"][0]) and np.all(chunk.width["right"] == CFG.closed_width)


def test_release_opens_after_lowering_and_otherwise_before_moving():
    cfg = CFG
    # Lowered by 3 cm (more than release_descent) while still closed: opens at the bottom.
    down = ArmKeyframes(_pose(0.0, z=0.27)[None], np.array([False]))
    chunk = keyframes_to_chunk({"left": (_pose(0.0), True)}, {"left": down}, config=cfg)
    w = chunk.width["left"]
    assert np.all(w[:4] == cfg.closed_width) and np.all(w[4:] == cfg.open_width)
    assert chunk.X_TG["left"][4, 2, 3] == pytest.approx(0.27)
    # Moved sideways by 1.5 cm or risen by 3 cm: opens where it stands, waits, then moves open
    # (fingers never open while the hand moves: they would drag the object along).
    wait = 1 + cfg.release_wait_steps
    for goal in (_pose(0.0, y=-0.015), _pose(0.0, z=0.33), _pose(-0.04, z=0.31)):
        kf = ArmKeyframes(goal[None], np.array([False]))
        chunk = keyframes_to_chunk({"left": (_pose(0.0), True)}, {"left": kf}, config=cfg)
        w, X = chunk.width["left"], chunk.X_TG["left"]
        assert len(w) == wait + 5 and np.all(w == cfg.open_width)
        np.testing.assert_allclose(X[:wait], np.repeat(_pose(0.0)[None], wait, axis=0))
        np.testing.assert_allclose(X[-1], goal, atol=1e-12)
    with pytest.raises(ValueError, match="release_wait_steps"):
        dataclasses.replace(CFG, release_wait_steps=-1)
    with pytest.raises(ValueError, match="corner_leg"):
        dataclasses.replace(CFG, corner_leg=0.0)
    with pytest.raises(ValueError, match="max_gap_frames"):
        dataclasses.replace(CFG, max_gap_frames=-1)


SLIDE_SET_DOWN_TOLERANCE = 0.002
"""Commanded poses of a slide-then-set-down stay within 2 mm of the path the video shows."""


def _slide_then_set_down(t: np.ndarray) -> np.ndarray:
    """The expert's motion: slide 12 cm along +x at 0.1 m/s, then set down 3 cm at 0.1 m/s (the
    turn at t = 1.2 s, between two 2 Hz frames)."""
    x = np.minimum(0.1 * t, 0.12)
    z = 0.10 - np.clip(0.1 * (t - 1.2), 0.0, 0.03)
    return np.stack([_pose(xi, y=-0.1, z=zi) for xi, zi in zip(x, z)])


def test_slide_then_set_down_keeps_its_corner():
    path = np.array([[0.0, -0.1, 0.10], [0.12, -0.1, 0.10], [0.12, -0.1, 0.07]])
    frames = _slide_then_set_down(0.5 * np.arange(1, 5))  # the 2 Hz keyframes: the corner is not one
    kf = ArmKeyframes(frames, np.ones(4, bool))
    start = {"right": (_pose(0.0, y=-0.1, z=0.10), True)}
    incoming = {"right": np.array([0.01, 0.0, 0.0])}  # it was sliding along +x already
    chunk = keyframes_to_chunk(start, {"right": kf}, config=CFG, incoming=incoming)
    p = chunk.X_TG["right"][:, :3, 3]
    assert distance_to_polyline(p, path).max() <= SLIDE_SET_DOWN_TOLERANCE
    np.testing.assert_allclose(p[-1], path[-1], atol=1e-12)
    assert max_speeds(chunk.X_TG["right"])[0] <= CFG.linear_speed + 1e-9
    # The same keyframes in straight lines cut the corner by more than a centimetre.
    straight = keyframes_to_chunk(start, {"right": kf}, config=dataclasses.replace(CFG, keep_corners=False),
                                  incoming=incoming)
    assert distance_to_polyline(straight.X_TG["right"][:, :3, 3], path).max() > 0.01
    # A lift entered rising keeps its corner too (up first, then across) ...
    up = ArmKeyframes(_pose(0.05, y=-0.1, z=0.14)[None], np.ones(1, bool))
    chunk = keyframes_to_chunk({"right": (_pose(0.0, y=-0.1, z=0.10), True)}, {"right": up}, config=CFG,
                               incoming={"right": np.array([0.0, 0.0, 0.01])})
    lifted = np.array([[0.0, -0.1, 0.10], [0.0, -0.1, 0.14], [0.05, -0.1, 0.14]])
    assert distance_to_polyline(chunk.X_TG["right"][:, :3, 3], lifted).max() <= 1e-9
    # ... while a diagonal motion entered diagonally stays straight.
    chunk = keyframes_to_chunk({"right": (_pose(0.0, y=-0.1, z=0.10), True)}, {"right": up}, config=CFG,
                               incoming={"right": np.array([0.01, 0.0, 0.008])})
    diagonal = np.array([[0.0, -0.1, 0.10], [0.05, -0.1, 0.14]])
    assert distance_to_polyline(chunk.X_TG["right"][:, :3, 3], diagonal).max() <= 1e-9


def test_idle_detection_and_truncation_at_low_confidence():
    X0 = _pose(0.0)
    small = ArmKeyframes(np.stack([_pose(0.004), _pose(0.006, yaw=0.02)]), np.zeros(2, bool))
    assert is_idle(X0, small, start_closed=False, config=CFG)
    assert not is_idle(X0, small, start_closed=True, config=CFG)  # the gripper state changes
    assert not is_idle(X0, ArmKeyframes(_pose(0.05)[None], np.zeros(1, bool)), start_closed=False, config=CFG)
    poses = [_pose(0.01 * k) for k in range(1, 7)]
    gap1 = dataclasses.replace(CFG, max_gap_frames=1)
    # One unconfident frame between trusted ones is bridged: its pose is interpolated.
    kf = truncate_keyframes(poses, [False] * 6, [0.9, 0.8, 0.1, 0.9, 0.9, 0.9], config=gap1)
    assert len(kf.X_TG) == 4
    np.testing.assert_allclose(kf.X_TG[2], _pose(0.03), atol=1e-12)  # halfway between 0.02 and 0.04
    # Two in a row (more than max_gap_frames) cut the keyframes before them.
    kf = truncate_keyframes(poses, [False] * 6, [0.9, 0.8, 0.1, 0.1, 0.9, 0.9], config=gap1)
    assert len(kf.X_TG) == 2
    # An unconfident last executed frame has nothing to bridge to.
    kf = truncate_keyframes(poses, [False] * 6, [0.9, 0.9, 0.9, 0.1, 0.9, 0.9], config=gap1)
    assert len(kf.X_TG) == 3
    # An unconfident first frame is bridged from the commanded pose (X_start)...
    kf = truncate_keyframes(poses, [True] * 6, [0.2, 0.9, 0.9, 0.9, 0.9, 0.9], config=gap1, X_start=X0)
    assert len(kf.X_TG) == 4 and kf.closed.all()
    np.testing.assert_allclose(kf.X_TG[0], _pose(0.01), atol=1e-12)
    # ... or, without one, waits at the first trusted pose.
    kf = truncate_keyframes(poses, [False] * 6, [0.2, 0.9, 0.9, 0.9, 0.9, 0.9], config=gap1)
    np.testing.assert_allclose(kf.X_TG[0], poses[1], atol=1e-12)
    # A wider gap setting bridges two frames, each at its own place along the way.
    kf = truncate_keyframes(poses, [False] * 6, [0.2, 0.2, 0.9, 0.9, 0.9, 0.9],
                            config=dataclasses.replace(CFG, max_gap_frames=2), X_start=X0)
    np.testing.assert_allclose(kf.X_TG[:2, 0, 3], [0.01, 0.02], atol=1e-12)
    kf = truncate_keyframes(poses, [False] * 6, [0.9] * 6, config=CFG)
    assert len(kf.X_TG) == CFG.execute_frames
    hold = hold_chunk({"left": (X0, True)}, config=CFG)
    assert len(hold) == CFG.hold_steps and np.all(hold.width["left"] == CFG.closed_width)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="finite"):
        ArmKeyframes(np.full((1, 4, 4), np.nan), np.zeros(1, bool))
    with pytest.raises(ValueError, match="gripper states"):
        ArmKeyframes(np.stack([_pose(0.0)] * 2), np.zeros(3, bool))
    with pytest.raises(ValueError, match="without a start"):
        keyframes_to_chunk({}, {"left": ArmKeyframes(_pose(0.0)[None], np.zeros(1, bool))}, config=CFG)
    with pytest.raises(ValueError, match="closed_width"):
        RecedingHorizonConfig(closed_width=0.1)
    with pytest.raises(ValueError):
        RecedingHorizonConfig(execute_frames=0)


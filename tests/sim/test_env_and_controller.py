"""Env observations and bad input; the controller's speed and workspace limits."""

import numpy as np
import pytest

from geo4d_policy.interface import Action, ArmCommand, gripper_link_names
from sim.env import StaleObservationError, make_env
from sim.station import gripper_down

TASK = "PlaceAppleFromBowlIntoBin"


@pytest.fixture(scope="module")
def env():
    return make_env(TASK)


def _hold(obs, **overrides):
    arms = {a: ArmCommand(obs.arms[a].X_TG, obs.arms[a].width) for a in obs.arms}
    arms.update(overrides)
    return Action(arms)


def test_observation_contents(env):
    obs = env.reset(123)
    assert obs.task == TASK and obs.time == pytest.approx(0.0)
    assert set(obs.arms) == {"left", "right"}
    assert obs.eval_cameras == ("cam12", "cam13") and len(obs.train_cameras) == 12
    assert not set(obs.eval_cameras) & set(obs.train_cameras)
    frame = obs.cameras["cam12"]
    assert frame.rgb.shape == (128, 160, 3) and frame.rgb.dtype == np.uint8
    assert frame.depth.dtype == np.float32 and (frame.depth >= 0).all() and (frame.depth > 0).any()
    names = gripper_link_names("right")
    for part in names.values():
        assert part in frame.label_map
    assert "apple/apple" in frame.label_map and "bin/bin" in frame.label_map
    # Masks are taken by name; the table covers much of the image, the background the rest.
    assert frame.mask("table/table").mean() > 0.2
    assert set(obs.privileged.object_poses) >= {"apple", "fruit", "bowl", "bin"}


def test_stale_camera_access_refused(env):
    obs = env.reset(5)
    obs2, _, _ = env.step(_hold(obs))
    with pytest.raises(StaleObservationError):
        obs.cameras["cam12"]
    assert obs2.cameras["cam13"].rgb.shape == (128, 160, 3)


def test_bad_input(env):
    obs = env.reset(6)
    with pytest.raises(ValueError, match="unknown arm"):
        env.step(Action({"middle": ArmCommand(np.eye(4), 0.0)}))
    bad = np.eye(4)
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match="invalid command"):
        env.step(_hold(obs, left=ArmCommand(bad, 0.08)))
    with pytest.raises(ValueError):
        env.reset(-1)
    fresh = make_env(TASK)
    with pytest.raises(RuntimeError, match="reset"):
        fresh.step(_hold(obs))


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match="PutSpatulaOnTable"):
        make_env("FoldLaundry")


def test_controller_speed_and_workspace_limits(env):
    obs = env.reset(7)
    # A target far outside the workspace box (x > 0.2): the flange must stop at the box and
    # never exceed 0.4 m/s on the way.
    target = gripper_down((0.6, 0.3, 0.3))
    positions = [obs.arms["left"].X_TG[:3, 3]]
    for _ in range(40):
        obs, _, _ = env.step(_hold(obs, left=ArmCommand(target, 0.08)))
        positions.append(obs.arms["left"].X_TG[:3, 3])
    speeds = np.linalg.norm(np.diff(positions, axis=0), axis=1) / 0.1
    # The controller's desired flange moves at <= 0.4 m/s; the measured one may overshoot by a
    # few percent while the joint PD catches up (an unlimited move would be several times faster).
    assert 0.3 < speeds.max() <= 0.4 * 1.1
    final = positions[-1]
    assert final[0] == pytest.approx(0.2, abs=0.01)
    np.testing.assert_allclose(final[1:], [0.3, 0.3], atol=0.01)


def test_snapshot_restore_reproduces_the_episode_exactly():
    a, b = make_env("PutSpatulaOnTable"), make_env("PutSpatulaOnTable")
    obs = a.reset(5)
    X = obs.arms["right"].X_TG.copy()
    X[:3, 3] += [0.05, 0.0, 0.05]
    act = Action({"right": ArmCommand(X, 0.04)})
    for _ in range(5):
        obs, _, _ = a.step(act)
    snap = obs.privileged.snapshot()
    b.reset(5)
    obs_b = b.restore(snap)
    assert obs_b.time == pytest.approx(obs.time)
    for _ in range(5):
        obs, _, _ = a.step(act)
        obs_b, _, _ = b.step(act)
    for arm in obs.arms:
        np.testing.assert_array_equal(obs.arms[arm].q, obs_b.arms[arm].q)
    for name, X_a in obs.privileged.object_poses.items():
        np.testing.assert_array_equal(X_a, obs_b.privileged.object_poses[name])
    stale = obs_b.privileged.snapshot
    b.step(act)
    with pytest.raises(StaleObservationError):
        stale()
    c = make_env("PutSpatulaOnTable")
    c.reset(6)
    with pytest.raises(ValueError, match="seed 5 cannot be restored"):
        c.restore(snap)


def test_sanity_control_views():
    # train: the episode's own first two training cameras; fixed-train: one pair for every seed.
    from geo4d_policy.interface import FIXED_VIEWS_DATA_SEED, data_seed

    own = make_env(TASK, views="train")
    obs = own.reset(11)
    assert obs.eval_cameras == ("cam00", "cam01") and set(obs.eval_cameras) <= set(obs.train_cameras)
    fixed = make_env(TASK, views="fixed-train")
    specs = [fixed.reset(seed).camera_specs for seed in (11, 12)]
    reference = make_env(TASK).reset(data_seed(FIXED_VIEWS_DATA_SEED, 0)).camera_specs
    for s in specs:
        assert np.allclose(s["cam00"].X_TC, reference["cam00"].X_TC) and np.allclose(s["cam01"].X_TC,
                                                                                     reference["cam01"].X_TC)
    assert not np.allclose(obs.camera_specs["cam00"].X_TC, reference["cam00"].X_TC)
    with pytest.raises(ValueError, match="heldout, train, fixed-train"):
        make_env(TASK, views="novel")

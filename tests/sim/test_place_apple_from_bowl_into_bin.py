"""PlaceAppleFromBowlIntoBin: layout determinism, success predicates on hand-placed states, expert."""

import numpy as np
import pytest
from pydrake.math import RigidTransform

from geo4d_policy.interface import eval_seed
from geo4d_policy.eval.episode import run_episode
from sim.env import make_env
from sim.experts import make_expert_policy
from sim.station import build_station, pose
from sim.tasks import make_task

TASK = "PlaceAppleFromBowlIntoBin"


def _layout(seed):
    return make_task(TASK).layout_for_seed(seed)


def test_same_seed_same_layout_and_ranges():
    a, b, c = _layout(3), _layout(3), _layout(4)
    assert a.to_dict() == b.to_dict()
    assert a.to_dict() != c.to_dict()
    for seed in range(20):
        p = _layout(seed).params
        assert 0.05 <= p["bowl_xy"][0] <= 0.25 and -0.5 <= p["bowl_xy"][1] <= -0.3
        assert -0.23 <= p["bin_xy"][0] <= -0.16 and 0.43 <= p["bin_xy"][1] <= 0.58
        assert abs(p["bin_yaw"]) <= np.pi / 4


@pytest.fixture(scope="module")
def station_and_layout():
    from sim.env import load_env_config

    layout = _layout(11)
    station = build_station(config=load_env_config().station, objects=layout.objects)
    return station, layout


def _place(station, obj, X):
    station.reset()
    station.plant.SetFreeBodyPose(station.plant_context, station.body(obj), RigidTransform(X))
    station.advance(0.6)


def test_predicate_positive_apple_in_bin(station_and_layout):
    station, layout = station_and_layout
    X_bin = station.body_pose("bin")
    _place(station, "apple", pose((X_bin[0, 3], X_bin[1, 3], 0.06)))
    ev = make_task(TASK).evaluate(station, layout)
    assert ev.success, ev.reason


def test_predicate_negative_apple_still_in_bowl(station_and_layout):
    station, layout = station_and_layout
    station.reset()
    station.advance(0.6)
    ev = make_task(TASK).evaluate(station, layout)
    assert not ev.success and "apple" in ev.reason


def test_predicate_negative_apple_beside_bin(station_and_layout):
    station, layout = station_and_layout
    X_bin = station.body_pose("bin")
    _place(station, "apple", pose((X_bin[0, 3] + 0.05, X_bin[1, 3] - 0.25, 0.04)))
    ev = make_task(TASK).evaluate(station, layout)
    assert not ev.success and "not over bin" in ev.reason


def test_expert_succeeds_on_a_seed():
    env = make_env(TASK)
    policy = make_expert_policy(task=TASK)
    seed = eval_seed(0, 0)
    progress = run_episode(env, policy, seed=seed)
    obs, info = progress.obs, progress.info
    assert info.success, info.failure_reason
    assert info.time < env.t_max

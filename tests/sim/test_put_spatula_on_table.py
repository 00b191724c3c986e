"""PutSpatulaOnTable: layout determinism and ranges, success predicates on hand-placed states, expert."""

import numpy as np
import pytest
from pydrake.math import RigidTransform
from pydrake.multibody.inverse_kinematics import InverseKinematics
from pydrake.solvers import Solve

from geo4d_policy.interface import dev_seed, eval_seed
from sim.assets_gen.objects import SPATULA_HANDLE, SPATULA_HANDLE_END
from sim.assets_gen.robot import TCP_Z
from sim.env import make_env
from sim.experts import make_expert_policy
from sim.station import build_station, gripper_down, pose
from sim.tasks import make_task
from sim.tasks.put_spatula_on_table import TARGET_XYZ

TASK = "PutSpatulaOnTable"
REST_Z = SPATULA_HANDLE[2] / 2  # spatula origin height when it lies flat on the table


def _layout(seed):
    return make_task(TASK).layout_for_seed(seed)


def test_same_seed_same_layout_and_ranges():
    a, b, c = _layout(3), _layout(3), _layout(4)
    assert a.to_dict() == b.to_dict()
    assert a.to_dict() != c.to_dict()
    yaws = []
    for seed in range(20):
        layout = _layout(seed)
        crock = layout.placement("crock")
        spatula = layout.placement("spatula")
        x, y, z = crock.X_TO[:3, 3]
        assert crock.fixed and -0.05 <= x <= 0.05 and -0.15 <= y <= -0.05 and z == pytest.approx(0.01)
        X_TS = spatula.X_TO
        assert not spatula.fixed
        np.testing.assert_allclose(X_TS[:2, 3], (x, y))
        assert 0.14 <= X_TS[2, 3] - z <= 0.16
        # Pitched 90 deg: the handle end (+x) points straight down, the thin axis is horizontal.
        np.testing.assert_allclose(X_TS[:3, 0], (0, 0, -1), atol=1e-9)
        yaws.append(np.arctan2(X_TS[1, 2], X_TS[0, 2]))
        assert layout.params["target_xyz"] == list(TARGET_XYZ)
    assert np.ptp(yaws) > np.pi  # random yaw over the whole circle


def test_layouts_start_without_penetration():
    from sim.env import load_env_config

    cfg = load_env_config().station
    for seed in (eval_seed(0, i) for i in range(8)):
        layout = _layout(seed)
        station = build_station(config=cfg, objects=layout.objects)
        station.reset()
        query = station.scene_graph.get_query_output_port().Eval(station.sg_context)
        inspector = station.scene_graph.model_inspector()
        hits = [(inspector.GetName(p.id_A), inspector.GetName(p.id_B), p.depth)
                for p in query.ComputePointPairPenetration()]
        assert not hits, (seed, hits)


def test_a_layout_that_does_not_settle_is_replaced(monkeypatch):
    """Development seed 2000000026's layout diverges while settling: reset uses the seed's next
    layout attempt (the same in every env of the seed), while its neighbour keeps attempt 0."""
    import sim.env

    task, bad = make_task(TASK), dev_seed(0, 26)
    env = make_env(TASK)
    env.layout = task.layout_for_seed(bad)
    assert env.build_and_settle() > sim.env.SETTLED_SPEED_LIMIT
    env.reset(bad)
    assert env.layout_attempt == 1
    assert env.station.max_speed() <= sim.env.SETTLED_SPEED_LIMIT
    assert env.layout.to_dict() == task.layout_for_seed(bad, 1).to_dict() != task.layout_for_seed(bad).to_dict()
    env.reset(dev_seed(0, 25))
    assert env.layout_attempt == 0 and env.layout.to_dict() == task.layout_for_seed(dev_seed(0, 25)).to_dict()
    with pytest.raises(ValueError, match="attempt"):
        task.layout_for_seed(bad, -1)
    monkeypatch.setattr(sim.env, "MAX_LAYOUT_ATTEMPTS", 2)
    monkeypatch.setattr(sim.env, "SETTLED_SPEED_LIMIT", -1.0)
    with pytest.raises(RuntimeError, match=r"seed 2000000025: no layout settled \(attempt 0: .*attempt 1: "):
        env.reset(dev_seed(0, 25))


@pytest.fixture(scope="module")
def station_and_layout():
    from sim.env import load_env_config

    layout = _layout(5)
    station = build_station(config=load_env_config().station, objects=layout.objects)
    return station, layout


def _evaluate(station, layout):
    return make_task(TASK).evaluate(station, layout)


def _step(station, dt=0.01):
    # The discrete plant reports contacts sampled at its last step: step once after editing poses.
    station.advance(dt)


def _lay_flat(station, xy, yaw, z=REST_Z - 2e-4):
    """Spatula lying flat on the table (its thin axis vertical), origin at ``xy``."""
    station.plant.SetFreeBodyPose(station.plant_context, station.body("spatula"),
                                  RigidTransform(pose((*xy, z), (0.0, 0.0, yaw))))


def test_predicate_positive_spatula_flat_in_target_box(station_and_layout):
    station, layout = station_and_layout
    station.reset()
    _lay_flat(station, (-0.12, -0.5), np.pi)  # handle end toward -x, at x = -0.258
    station.advance(0.3)
    ev = _evaluate(station, layout)
    assert ev.success, ev.reason


def test_predicate_negative_spatula_standing_in_crock(station_and_layout):
    station, layout = station_and_layout
    station.reset()
    station.advance(0.6)
    ev = _evaluate(station, layout)
    assert not ev.success and ev.reason == "spatula origin outside target box"


def test_predicate_negative_handle_end_outside_box(station_and_layout):
    station, layout = station_and_layout
    station.reset()
    # Origin 0.04 m inside the box's -y edge (y = -0.7), handle end pointing out across it.
    _lay_flat(station, (-0.2, -0.66), -np.pi / 2)
    ev = _evaluate(station, layout)
    assert not ev.success and ev.reason == "spatula handle end outside target box", ev.reason


def test_predicate_negative_hovering_above_table(station_and_layout):
    station, layout = station_and_layout
    station.reset()
    _lay_flat(station, (-0.12, -0.5), np.pi, z=0.03)  # inside the box (z < 0.04) but not touching
    _step(station)
    ev = _evaluate(station, layout)
    assert not ev.success and ev.reason == "spatula not on table"


def _right_arm_q(station, X_TG):
    """Joint positions putting the right flange at ``X_TG`` (IK on the station plant)."""
    plant = station.plant
    ik = InverseKinematics(plant, plant.CreateDefaultContext())
    X = RigidTransform(X_TG)
    frame = plant.GetFrameByName("panda_link8", station.arm_instances["right"])
    p = X.translation()
    ik.AddPositionConstraint(frame, [0, 0, 0], plant.world_frame(), p - 1e-4, p + 1e-4)
    ik.AddOrientationConstraint(frame, RigidTransform().rotation(), plant.world_frame(), X.rotation(), 1e-3)
    q = ik.q()
    q0 = plant.GetPositions(station.plant_context)
    # Only the right arm moves: pin every other position at its current value.
    right = plant.GetJointIndices(station.arm_instances["right"])
    right_pos = [plant.get_joint(j).position_start() for j in right
                 if plant.get_joint(j).num_positions() == 1]
    others = [i for i in range(plant.num_positions()) if i not in right_pos]
    ik.prog().AddBoundingBoxConstraint(q0[others], q0[others], q[others])
    ik.prog().SetInitialGuess(q, q0)
    result = Solve(ik.prog())
    assert result.is_success()
    return result.GetSolution(q)[right_pos]


def test_predicate_negative_finger_still_touches(station_and_layout):
    station, layout = station_and_layout
    station.reset()
    xy, yaw = np.array([-0.12, -0.5]), np.pi
    # A top-down grasp across the handle's width (the spatula's y axis is T's y here), fingertips
    # 3 mm above the table.
    grasp = np.r_[xy + [0.05, 0.0], 2 * REST_Z]
    X_TG = gripper_down(grasp + [0.0, 0.0, TCP_Z], yaw=0.0)
    q = _right_arm_q(station, X_TG)
    station.reset(arm_q={"left": np.array(station.config.left.q_home), "right": q},
                  width=SPATULA_HANDLE[1] - 0.002)
    _lay_flat(station, xy, yaw)
    _step(station, 0.05)
    ev = _evaluate(station, layout)
    assert not ev.success and ev.reason == "a finger still touches spatula", ev.reason
    # The same state without the gripper is a success: only the finger spoils it.
    station.reset()
    _lay_flat(station, xy, yaw)
    _step(station, 0.05)
    ev = _evaluate(station, layout)
    assert ev.success, ev.reason


def test_handle_end_point_is_the_model_constant():
    from sim.tasks.put_spatula_on_table import spatula_points

    pts = spatula_points(pose((0.1, 0.2, 0.3), (0.0, np.pi / 2, 0.0)))
    np.testing.assert_allclose(pts["origin"], (0.1, 0.2, 0.3))
    np.testing.assert_allclose(pts["handle end"], (0.1, 0.2, 0.3 - SPATULA_HANDLE_END), atol=1e-12)


def test_expert_succeeds_on_a_seed():
    env = make_env(TASK)
    policy = make_expert_policy(task=TASK)
    seed = eval_seed(0, 0)
    obs = env.reset(seed)
    policy.reset(seed=seed)
    done = False
    while not done:
        for action in policy.act(obs):
            obs, done, info = env.step(action)
            if done:
                break
    assert info.success, info.failure_reason
    assert info.time < env.t_max

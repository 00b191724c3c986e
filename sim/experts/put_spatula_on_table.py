"""Expert for PutSpatulaOnTable: the right arm takes the spatula out of the crock and lays it flat
in the target box.

The spatula stands handle-end down, blade up. The gripper closes across the handle's width (the
spatula's local y) a few centimetres below the blade, approaching toward one of the handle's flat
faces (along +-local z) tilted down from the horizontal so that the palm passes beside the handle
and below the blade. It pulls the spatula out along its axis until the handle end clears the crock,
then turns it while carrying it so that it lies flat (thin axis vertical) with its handle end
pointing back along the approach, and releases it a few millimetres above the table with the
origin and the handle end well inside the target box. The release pose is computed from the grasp
measured after the lift (privileged state), so a grasp that slipped is still laid flat in place.

Which face to approach, the wrist posture (the hand can be turned half a turn about its approach
axis), the approach tilt and the last stretch (straight down beside the blade, or along the
approach axis) are chosen per episode: candidates are tried in order of preference by replaying
their motions through a copy of the station's arm controller (it integrates its own joint targets,
so this predicts exactly where the commanded arm goes, contacts aside), and the first one that
reaches every waypoint is used. The crock stands close to the right arm's base, where some
approach headings leave the differential IK stuck at joint limits.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import numpy as np
from pydrake.math import RigidTransform, RotationMatrix

from geo4d_policy.control.trajectory import DEFAULT_ANGULAR_SPEED, DEFAULT_LINEAR_SPEED, plan_segment
from geo4d_policy.interface import CONTROL_HZ
from sim.assets_gen.objects import SPATULA_HANDLE, SPATULA_HANDLE_END
from sim.assets_gen.robot import FINGER_JOINT_Z, FINGER_SIZE, HAND_YAW, PALM_SIZE, PALM_Z0, TCP_Z
from sim.experts.base import Grip, Hold, Move
from sim.kinematic_replay import KinematicReplay
from sim.station import gripper_down
from sim.tasks.put_spatula_on_table import TARGET_BOX_HI, TARGET_BOX_LO, TARGET_XYZ

ARM = "right"
OPEN, CLOSED = 0.08, 0.0
GRASP_LOCAL_X = -0.09  # grasp point on the handle axis (spatula x; the blade starts at -0.133)
GRASP_DEPTH = 0.003  # the handle centre lies this far beyond the TCP (fingertips near its far face)
# Approach tilts from straight down (pi/2 = horizontal). Below ~48 deg the palm's leading edge
# reaches across the handle above the grasp point and knocks the spatula over.
GRASP_TILTS = (np.deg2rad(50.0), np.deg2rad(65.0))
# Preferred approach headings (about T's z): [HEADING_MIN, HEADING_MIN + 180 deg), i.e. from the
# robot's side; below FLIP_BELOW the hand is preferably turned half a turn about its approach.
HEADING_MIN = np.deg2rad(-80.0)
FLIP_BELOW = np.deg2rad(-55.0)
STANDOFF = 0.12  # pre-grasp distance of the TCP from the grasp point
STAGE_UP = 0.12  # staging pose this far above the pre-grasp
GRASP_SPEED, LIFT_SPEED, PLACE_SPEED = 0.1, 0.15, 0.1  # m/s of the slow segments
LIFT = 0.20  # pull-out distance along the spatula's axis (the handle end rises ~7 cm above the rim)
# Before turning the spatula, carry it upright this far toward the release spot (and a little up),
# so that its swinging handle end stays clear of the crock.
CARRY_STEP, CARRY_UP = 0.15, 0.03
REST_Z = SPATULA_HANDLE[2] / 2 + 0.004  # spatula origin height at release (handle 4 mm above table)
HAND_CLEARANCE = 0.003  # minimum height of the fingers and palm above the table at release
PLACE_ABOVE = 0.12  # pre-place height above the release pose
# Turns of the laid spatula about the vertical, tried in order (see plan_place).
PLACE_YAW_OFFSETS = (0.0, np.pi / 2, -np.pi / 2, np.pi)
# The success predicate's target box in T's xy ([-0.35, -0.7] .. [0.0, -0.3]) and a margin kept
# inside it.
BOX_LO = np.asarray(TARGET_XYZ[:2]) + TARGET_BOX_LO[:2]
BOX_HI = np.asarray(TARGET_XYZ[:2]) + TARGET_BOX_HI[:2]
BOX_MARGIN = 0.035
PREFERRED_TCP_XY = np.array([-0.08, -0.5])  # release spot of the grasp point, well inside the arm's reach
REACH_TOL, REACH_ROT_TOL = 0.004, np.deg2rad(2.0)  # waypoint tolerances of the kinematic check


def _wrap(angle: float) -> float:
    return float((angle + np.pi) % (2 * np.pi) - np.pi)


def _spatula(obs) -> np.ndarray:
    return obs.privileged.object_poses["spatula"]


def grasp_rotation(heading: float, tilt: float, flip: bool) -> np.ndarray:
    """Gripper rotation approaching along the horizontal ``heading``, tilted ``tilt`` from straight
    down (pi/2 = horizontal), fingers closing horizontally across the approach; ``flip`` turns the
    hand half a turn about its approach axis (the same grasp, another wrist posture)."""
    R = (RotationMatrix.MakeZRotation(heading) @ RotationMatrix.MakeYRotation(-tilt)
         @ RigidTransform(gripper_down((0, 0, 0), np.pi if flip else 0.0)).rotation())
    return R.matrix()


def gripper_pose(R_TG: np.ndarray, tcp) -> np.ndarray:
    """``X_TG`` with rotation ``R_TG`` and its TCP at ``tcp``."""
    X = np.eye(4)
    X[:3, :3] = R_TG
    X[:3, 3] = np.asarray(tcp, dtype=float) - TCP_Z * R_TG[:, 2]
    return X


def tcp_of(X_TG: np.ndarray) -> np.ndarray:
    return X_TG[:3, 3] + TCP_Z * X_TG[:3, 2]


@dataclasses.dataclass(frozen=True)
class GraspPlan:
    """One way to grasp the standing spatula: poses and the choices that produced them."""

    X_stage: np.ndarray
    X_pre: np.ndarray
    X_grasp: np.ndarray
    s: float  # the approach heads along s * (spatula z)
    heading: float
    tilt: float
    flip: bool
    vertical: bool  # last stretch straight down (beside the blade) instead of along the approach


def grasp_plan(X_TS: np.ndarray, *, s: float, tilt: float, flip: bool, vertical: bool) -> GraspPlan:
    """The grasp approaching the face ``s * (spatula z)``.

    Planned for an upright spatula with the measured heading of its thin axis, then carried along
    with the spatula's actual orientation, so a slightly leaning spatula is grasped square to its
    faces."""
    n = X_TS[:3, 2]
    psi = float(np.arctan2(n[1], n[0]))
    heading = _wrap(psi if s > 0 else psi + np.pi)
    R_TS_upright = (RotationMatrix.MakeZRotation(psi) @ RotationMatrix.MakeYRotation(np.pi / 2)).matrix()
    R = X_TS[:3, :3] @ R_TS_upright.T @ grasp_rotation(heading, tilt, flip)
    p_axis = X_TS[:3, :3] @ [GRASP_LOCAL_X, 0.0, 0.0] + X_TS[:3, 3]
    X_grasp = gripper_pose(R, p_axis - GRASP_DEPTH * R[:, 2])
    X_pre = X_grasp.copy()
    if vertical:
        X_pre[2, 3] += STANDOFF
    else:
        X_pre[:3, 3] -= STANDOFF * R[:, 2]
    X_stage = X_pre.copy()
    X_stage[2, 3] += STAGE_UP
    return GraspPlan(X_stage, X_pre, X_grasp, s, heading, tilt, flip, vertical)


def grasp_candidates(X_TS: np.ndarray) -> list[GraspPlan]:
    """Every grasp the expert knows, most preferred first."""
    n = X_TS[:3, 2]
    psi = float(np.arctan2(n[1], n[0]))
    s_pref = 1.0 if _wrap(psi - HEADING_MIN) >= 0 else -1.0
    out = []
    for vertical, tilt, s in itertools.product((True, False), GRASP_TILTS, (s_pref, -s_pref)):
        heading = _wrap(psi if s > 0 else psi + np.pi)
        flip_pref = _wrap(heading - HEADING_MIN) < _wrap(FLIP_BELOW - HEADING_MIN)
        for flip in (flip_pref, not flip_pref):
            out.append(grasp_plan(X_TS, s=s, tilt=tilt, flip=flip, vertical=vertical))
    return out


def lift_pose(X_grasp: np.ndarray, X_TS: np.ndarray) -> np.ndarray:
    """Gripper pose after pulling the spatula out along its axis (blade first)."""
    X = X_grasp.copy()
    X[:3, 3] -= LIFT * X_TS[:3, 0]
    return X


def place_origin_xy(u_xy: np.ndarray, tcp_offset_xy: np.ndarray) -> np.ndarray:
    """Spatula origin on the table for a handle-end direction ``u_xy``: both the origin and the
    handle end inside the target box (with margin), the TCP (at origin + ``tcp_offset_xy``) as
    close to the preferred release spot as that allows."""
    lo, hi = BOX_LO + BOX_MARGIN, BOX_HI - BOX_MARGIN
    end = SPATULA_HANDLE_END * u_xy
    o_lo = np.maximum(lo, lo - end)
    o_hi = np.minimum(hi, hi - end)
    return np.clip(PREFERRED_TCP_XY - tcp_offset_xy, o_lo, np.maximum(o_lo, o_hi))


def _lowest_hand_z(X_TG: np.ndarray, width: float) -> float:
    """Lowest corner of the finger and palm boxes (fingers at opening ``width``) in T."""
    sx, sy, sz = FINGER_SIZE
    px, py, pz = PALM_SIZE
    pts = []
    for sign in (1.0, -1.0):
        for x, y, z in itertools.product((-sx / 2, sx / 2), (width / 2, width / 2 + sy),
                                         (FINGER_JOINT_Z, FINGER_JOINT_Z + sz)):
            pts.append([x, sign * y, z])
        for x, z in itertools.product((-px / 2, px / 2), (PALM_Z0, PALM_Z0 + pz)):
            pts.append([x, sign * py / 2, z])
    R_TH = X_TG[:3, :3] @ RotationMatrix.MakeZRotation(HAND_YAW).matrix()
    return float((np.array(pts) @ R_TH.T + X_TG[:3, 3])[:, 2].min())


def plan_place(X_TG: np.ndarray, X_TS: np.ndarray, s: float, heading: float, width: float,
               yaw_offset: float = 0.0) -> np.ndarray:
    """Release ``X_TG`` laying the spatula flat, from the grasp measured now (gripper ``X_TG``,
    spatula ``X_TS``). The handle end points back along the approach heading (the least wrist
    rotation: a quarter turn about the closing axis), turned by ``yaw_offset`` about T's z."""
    X_SG = np.linalg.inv(X_TS) @ X_TG
    yaw = heading + np.pi + yaw_offset
    u = np.array([np.cos(yaw), np.sin(yaw), 0.0])  # handle end direction on the table
    z_s = np.array([0.0, 0.0, -s])  # the spatula's thin axis: the approached face ends up on top
    X_TS_goal = np.eye(4)
    X_TS_goal[:3, :3] = np.column_stack([u, np.cross(z_s, u), z_s])
    tcp_offset = tcp_of(X_TS_goal @ X_SG)[:2]
    X_TS_goal[:2, 3] = place_origin_xy(u[:2], tcp_offset)
    X_TS_goal[2, 3] = REST_Z
    X_TG_goal = X_TS_goal @ X_SG
    X_TG_goal[2, 3] += max(0.0, HAND_CLEARANCE - _lowest_hand_z(X_TG_goal, width))
    return X_TG_goal


@functools.lru_cache(maxsize=1)
def _reach_check() -> KinematicReplay:
    return KinematicReplay(ARM)


N_PICK_WAYPOINTS = 4  # stage, pre-grasp, grasp, lift


def place_waypoints(X_lift: np.ndarray, X_goal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(carry, above-release) poses between the lift and the release ``X_goal``."""
    X_carry = X_lift.copy()
    step = tcp_of(X_goal)[:2] - tcp_of(X_lift)[:2]
    X_carry[:2, 3] += CARRY_STEP * step / max(np.linalg.norm(step), 1e-9)
    X_carry[2, 3] += CARRY_UP
    X_above = X_goal.copy()
    X_above[2, 3] += PLACE_ABOVE
    return X_carry, X_above


def motion_waypoints(plan: GraspPlan, X_TS: np.ndarray, yaw_offset: float = 0.0
                     ) -> list[tuple[np.ndarray, float]]:
    """The whole pick-and-place as (gripper pose, linear speed), for a grasp that holds as planned."""
    X_lift = lift_pose(plan.X_grasp, X_TS)
    X_TS_lifted = X_lift @ np.linalg.inv(plan.X_grasp) @ X_TS
    X_goal = plan_place(X_lift, X_TS_lifted, plan.s, plan.heading, SPATULA_HANDLE[1], yaw_offset)
    X_carry, X_above = place_waypoints(X_lift, X_goal)
    return [(plan.X_stage, DEFAULT_LINEAR_SPEED), (plan.X_pre, DEFAULT_LINEAR_SPEED),
            (plan.X_grasp, GRASP_SPEED), (X_lift, LIFT_SPEED), (X_carry, DEFAULT_LINEAR_SPEED),
            (X_above, DEFAULT_LINEAR_SPEED), (X_goal, PLACE_SPEED)]


def choose_grasp(X_TS: np.ndarray, q0: np.ndarray, X0: np.ndarray) -> tuple[GraspPlan, float]:
    """The most preferred (grasp, place yaw offset) whose whole motion the controller can follow
    from joint targets ``q0`` (last command ``X0``)."""
    candidates = grasp_candidates(X_TS)
    check = _reach_check()
    for plan in candidates:
        for yaw_offset in PLACE_YAW_OFFSETS:
            miss = check.first_miss(q0, X0, motion_waypoints(plan, X_TS, yaw_offset), tol=REACH_TOL,
                                    rot_tol=REACH_ROT_TOL)
            if miss is None:
                return plan, yaw_offset
            if miss < N_PICK_WAYPOINTS:
                break  # the grasp itself is out of reach
    return candidates[0], 0.0


def _lifted(obs, z0: float) -> bool:
    return _spatula(obs)[2, 3] > z0 + 0.6 * LIFT


def script(obs):
    plan, yaw_offset = None, 0.0
    X_cmd = obs.arms[ARM].X_TG.copy()  # the expert starts from the measured pose
    for _attempt in range(3):
        X_TS = _spatula(obs)
        z0 = X_TS[2, 3]
        plan, yaw_offset = choose_grasp(X_TS, obs.arms[ARM].q, X_cmd)
        obs = yield Move(ARM, plan.X_stage, width=OPEN)
        obs = yield Move(ARM, plan.X_pre)
        # Aim at where the spatula stands now (it may have been nudged since the plan was made).
        X_grasp = grasp_plan(_spatula(obs), s=plan.s, tilt=plan.tilt, flip=plan.flip,
                             vertical=plan.vertical).X_grasp
        obs = yield Move(ARM, X_grasp, linear_speed=GRASP_SPEED)
        obs = yield Grip(ARM, CLOSED, duration=1.0)
        X_lift = lift_pose(X_grasp, _spatula(obs))
        obs = yield Move(ARM, X_lift, linear_speed=LIFT_SPEED)
        X_cmd = X_lift
        if _lifted(obs, z0):
            break
        obs = yield Grip(ARM, OPEN, duration=0.6)
        X_cmd = X_lift.copy()
        X_cmd[2, 3] += 0.05
        obs = yield Move(ARM, X_cmd)
    state = obs.arms[ARM]
    X_goal = plan_place(state.X_TG, _spatula(obs), plan.s, plan.heading, max(state.width, SPATULA_HANDLE[1]),
                        yaw_offset)
    X_carry, X_above = place_waypoints(X_cmd, X_goal)
    obs = yield Move(ARM, X_carry)
    obs = yield Move(ARM, X_above)
    obs = yield Move(ARM, X_goal, linear_speed=PLACE_SPEED)
    obs = yield Hold(0.3)
    obs = yield Grip(ARM, OPEN, duration=0.6)
    X_up = X_goal.copy()
    X_up[2, 3] += 0.12
    obs = yield Move(ARM, X_up, linear_speed=LIFT_SPEED)
    yield Hold(2.0)


__all__ = ["GraspPlan", "choose_grasp", "grasp_candidates", "plan_place", "script"]

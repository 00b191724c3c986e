"""Expert for StoreCerealBoxUnderShelf: the right arm takes box 1 from the shelf's top level and
slides it onto the lower level next to box 0; the left arm stays home.

Grasp (privileged state): from the side, along the box's long (0.15 m) axis, from the end facing
the robot, the approach tilted ``PITCH`` below the horizontal; the fingers close across the box's
0.0505 m thickness at its upper edge (TCP ``GRIP_IN`` inside the end face, ``GRIP_DOWN`` below
the top, so the palm stays clear of the box). The fingers squeeze position-controlled
(``GRIP_WIDTH``), which keeps the box centred between them.

Carry and insertion: after the lift the expert measures the box in the hand and from then on
commands gripper poses that put the *box* where it should be (``X_TG = X_TB_desired @ X_BG``),
so an off-centre grasp is compensated. The box is turned to yaw 90 deg and carried back out over
the top level's front edge, lowered in front of the lower level and slid in along +x
``SLIDE_HEIGHT`` above it, ``FINGER_GAP`` short of its target along -y (the finger between the
two boxes needs that room). The box slowly sags about the finger axis (its centre of mass is
~4.5 cm beyond the grasp and SAP friction creeps), so the slide is split into legs, each starting
with a fresh measurement that brings the box upright again. The box is set down, measured once
more, released by opening the fingers while the hand shifts along -y (so the finger between the
boxes drifts only into the middle of its gap rather than into box 0), and the hand backs out
along -x. The episode ends as soon as the fingers let go of the box at its target.

Typical result: box 1 ends ~13 mm (the finger gap) and ~3 mm short of its target along -y and
-x (tolerance 20 mm), after ~15 s of simulated time.
"""

from __future__ import annotations

import numpy as np

from sim.assets_gen.objects import CEREAL_BOX_SIZE, SHELF_SIZE
from sim.assets_gen.robot import FINGER_SIZE, TCP_Z
from sim.experts.base import Grip, Hold, Move
from sim.experts.grasping import side_tcp_pose

ARM = "right"
PITCH = np.deg2rad(25.0)  # approach tilted this far below the horizontal
# The hand rolled 180 deg about the approach (see ``side_tcp_pose``): with it the right arm can
# reach both the top level and low in front of the lower level (the other roll runs joint 6 into
# its limit when going down). The arm is first brought to the approach heading 0 (straight +x),
# which puts its wrist on the branch (joint 5 near -2.6 rad) that covers every heading in
# [-45, 45] deg; coming from home straight to a heading > 0 it may take the other branch, from
# which it cannot turn back to heading 0.
FLIP = True
OPEN = 0.08
BOX_T, BOX_L, BOX_H = CEREAL_BOX_SIZE  # thickness (local x), length (local y), height (z)
# Squeeze by commanding a width below the box's thickness, but not fully closed: both finger
# joints then stay below their effort limit, so their position loops keep the box centred
# between them (fully closed, both saturate and the box drifts freely along the closing axis).
GRIP_WIDTH = BOX_T - 0.03  # about 30 N per finger (effort limit 35 N)
GRIP_IN = 0.03  # TCP this far (horizontally) inside the box's near end face ...
GRIP_DOWN = 0.02  # ... and this far below its top: the palm stays ~9 mm clear of the box's edge
PRE_GRASP = 0.08  # back-off of the pre-grasp pose along the approach
LIFT = 0.03  # box bottom above the top level while it is carried off
SLIDE_HEIGHT = 0.03  # box bottom above the lower level while it is slid in (margin for tracking error)
SLIDE_LEGS = 3
SET_HEIGHT = 0.0015  # box bottom above the lower level when it is released
FINGER_GAP = 0.0135  # box 1 stops this far short of its target along -y (finger: 0.012 m)
CLEAR = 0.02  # clearance of the box's far end from the shelf's front edge when going down
RELEASE_STEPS = 5
FINGER_T = FINGER_SIZE[1]
SLOW, MEDIUM = 0.1, 0.2


def _yaw(X: np.ndarray) -> float:
    return float(np.arctan2(X[1, 0], X[0, 0]))


def _box_pose(xyz, yaw: float) -> np.ndarray:
    X = np.eye(4)
    c, s = np.cos(yaw), np.sin(yaw)
    X[:2, :2] = [[c, -s], [s, c]]
    X[:3, 3] = xyz
    return X


def _approach_yaw(box_yaw: float) -> float:
    """Yaw of a horizontal approach along the box's long side, toward +x (the box is symmetric
    under a half turn, so the result is wrapped into (-pi/2, pi/2])."""
    phi = box_yaw - np.pi / 2
    return float((phi + np.pi / 2) % np.pi - np.pi / 2)


def _grasp_tcp(X_TB: np.ndarray) -> tuple[np.ndarray, float]:
    """TCP at the box's upper edge facing the robot, and the approach heading."""
    phi = _approach_yaw(_yaw(X_TB))
    u = np.array([np.cos(phi), np.sin(phi), 0.0])
    tcp = X_TB[:3, 3] - (BOX_L / 2 - GRIP_IN) * u
    tcp[2] = X_TB[2, 3] + BOX_H - GRIP_DOWN
    return tcp, phi


def _approach(phi: float) -> np.ndarray:
    return np.array([np.cos(phi) * np.cos(PITCH), np.sin(phi) * np.cos(PITCH), -np.sin(PITCH)])


def _hand(tcp, phi: float) -> np.ndarray:
    return side_tcp_pose(tcp, approach_yaw=phi, pitch_down=PITCH, flip=FLIP)


def _measure_grasp(obs) -> np.ndarray:
    """``X_BG``: the gripper frame in box 1's frame, as held now (privileged state)."""
    return np.linalg.inv(obs.privileged.object_poses["cereal_box_1"]) @ obs.arms[ARM].X_TG


def _release(obs, X_cmd: np.ndarray):
    """Open the fingers while shifting the hand along -y so that the finger between the boxes
    (on box 1's +y side) only drifts into the middle of its gap instead of pushing box 0."""
    P = obs.privileged.object_poses
    face1 = P["cereal_box_1"][1, 3] + BOX_T / 2  # box 1's +y face
    face0 = P["cereal_box_0"][1, 3] - BOX_T / 2  # box 0's -y face
    X_TG = obs.arms[ARM].X_TG
    hand_y0 = X_TG[1, 3] + TCP_Z * X_TG[1, 2]  # TCP (between the fingers)
    face_from = hand_y0 + BOX_T / 2  # inner face of the +y finger now
    face_to = min(face_from + 0.002, 0.5 * (face0 + face1) - FINGER_T / 2)
    for k in range(1, RELEASE_STEPS + 1):
        s = k / RELEASE_STEPS
        width = BOX_T + s * (OPEN - BOX_T)
        X_cmd = X_cmd.copy()
        tcp_y = face_from + s * (face_to - face_from) - width / 2
        X_cmd[1, 3] += tcp_y - (X_cmd[1, 3] + TCP_Z * X_cmd[1, 2])
        obs = yield Move(ARM, X_cmd, width=width, linear_speed=0.05)
    return obs, X_cmd


def _pick(obs, retries: int = 1):
    """Grasp box 1 at its upper edge facing the robot and lift it off the top level."""
    for _ in range(retries + 1):
        X_TB = obs.privileged.object_poses["cereal_box_1"]
        tcp, phi = _grasp_tcp(X_TB)
        obs = yield Move(ARM, _hand(tcp - 1.5 * PRE_GRASP * _approach(0.0), 0.0), width=OPEN)
        obs = yield Move(ARM, _hand(tcp - PRE_GRASP * _approach(phi), phi))
        obs = yield Move(ARM, _hand(tcp, phi), linear_speed=SLOW)
        obs = yield Grip(ARM, GRIP_WIDTH, duration=1.0)
        obs = yield Move(ARM, _hand(tcp + [0, 0, LIFT], phi), linear_speed=SLOW)
        if obs.privileged.object_poses["cereal_box_1"][2, 3] > X_TB[2, 3] + LIFT / 2:
            return obs
        obs = yield Grip(ARM, OPEN, duration=0.5)
        obs = yield Move(ARM, _hand(tcp - PRE_GRASP * _approach(phi) + [0, 0, LIFT], phi))
    return obs


def script(obs):
    params = obs.privileged.layout
    target = np.asarray(params["target_xyz"], dtype=float)
    shelf_front_x = params["shelf_xyz"][0] - SHELF_SIZE[0] / 2
    lower_z, top_z = params["lower_z"], params["top_z"]

    # ---- pick box 1 from the top level (re-grasp if it did not come up) ----------------------
    obs = yield from _pick(obs)

    # ---- from here on, command the box: X_TG = X_TB_desired @ X_BG (measured grasp) ----------
    X_TB = obs.privileged.object_poses["cereal_box_1"]
    X_BG = _measure_grasp(obs)
    yaw_f = np.pi / 2 if np.cos(_yaw(X_TB) - np.pi / 2) >= 0 else -np.pi / 2

    def hand_for(box_xyz, X_BG):
        return _box_pose(box_xyz, yaw_f) @ X_BG

    y_ins = target[1] - FINGER_GAP
    x_out = shelf_front_x - BOX_L / 2 - CLEAR  # box origin x with its far end clear of the shelf
    obs = yield Move(ARM, hand_for((x_out, y_ins, top_z + LIFT), X_BG), linear_speed=MEDIUM)
    obs = yield Move(ARM, hand_for((x_out, y_ins, lower_z + SLIDE_HEIGHT), X_BG), linear_speed=MEDIUM)
    # Slide in along +x in a few legs, each time re-measuring the box in the hand first: the box
    # slowly sags about the finger axis under its weight (the grasp is ~4.5 cm short of its
    # centre of mass), and each leg starts with it upright again.
    x_from = x_out
    for k in range(1, SLIDE_LEGS + 1):
        X_BG = _measure_grasp(obs)
        x_to = x_out + (target[0] - x_out) * k / SLIDE_LEGS
        obs = yield Move(ARM, hand_for((x_from, y_ins, lower_z + SLIDE_HEIGHT), X_BG), linear_speed=SLOW)
        obs = yield Move(ARM, hand_for((x_to, y_ins, lower_z + SLIDE_HEIGHT), X_BG), linear_speed=SLOW)
        x_from = x_to
    X_BG = _measure_grasp(obs)
    obs = yield Move(ARM, hand_for((target[0], y_ins, lower_z + SLIDE_HEIGHT), X_BG), linear_speed=SLOW)
    obs = yield Move(ARM, hand_for((target[0], y_ins, lower_z + SET_HEIGHT), X_BG), linear_speed=SLOW)
    # Standing on the level the box is upright again, and its sag had moved its foot back
    # (toward -x) by a few millimetres: measure once more and put it where it belongs.
    X_BG = _measure_grasp(obs)
    obs = yield Move(ARM, hand_for((target[0], y_ins, lower_z + SET_HEIGHT), X_BG), linear_speed=SLOW)

    # ---- release -----------------------------------------------------------------------------
    X_cmd = hand_for((target[0], y_ins, lower_z + SET_HEIGHT), X_BG)
    obs = yield Grip(ARM, BOX_T, duration=0.3)  # stop squeezing
    obs, X_cmd = yield from _release(obs, X_cmd)
    # Back out along the approach (-x). (The episode ends as soon as the fingers let go.)
    X_out = X_cmd.copy()
    X_out[0, 3] -= 0.15
    obs = yield Move(ARM, X_out, linear_speed=SLOW)
    yield Hold(2.0)

"""Gripper pose helpers shared by the scripted experts.

The controller clamps ``panda_link8`` into lbm_eval's workspace box (x <= 0.2 m in T), while
objects may lie further out (the bowl reaches x = 0.28 m). :func:`tcp_pose` therefore tilts the
approach toward +x just enough that the flange stays inside the box while the fingertip centre
(TCP, 0.1034 m along the flange's z axis) reaches the object.
"""

from __future__ import annotations

import numpy as np
from pydrake.math import RigidTransform, RotationMatrix

from sim.assets_gen.robot import TCP_Z
from sim.station import gripper_down

MAX_FLANGE_X = 0.19  # a centimetre inside the workspace box's x <= 0.2


def tcp_pose(tcp_xyz, *, yaw: float = 0.0, pitch: float | None = None, max_flange_x: float = MAX_FLANGE_X
             ) -> np.ndarray:
    """``X_TG`` placing the TCP at ``tcp_xyz`` with a top-down approach tilted toward +x.

    Args:
        tcp_xyz: fingertip-centre position in T.
        yaw: finger closing direction about T's z (0 = fingers close along T's y).
        pitch: tilt of the approach toward +x (rad); by default the smallest tilt that keeps the
            flange at x <= ``max_flange_x``.
    """
    tcp = np.asarray(tcp_xyz, dtype=float)
    if pitch is None:
        overshoot = tcp[0] - max_flange_x
        pitch = 0.0 if overshoot <= 0 else float(np.arcsin(min(1.0, overshoot / TCP_Z)))
    X_down = RigidTransform(gripper_down((0, 0, 0), yaw))
    R = RotationMatrix.MakeYRotation(-pitch) @ X_down.rotation()
    approach = R.col(2)  # the flange's z axis, pointing from flange to fingertips
    return RigidTransform(R, tcp - TCP_Z * approach).GetAsMatrix4()


def side_tcp_pose(tcp_xyz, *, approach_yaw: float = 0.0, pitch_down: float = 0.0, flip: bool = False
                  ) -> np.ndarray:
    """``X_TG`` placing the TCP at ``tcp_xyz`` for a grasp from the side (e.g. into a shelf).

    The flange's z axis (flange -> fingertips) points along the approach direction: heading
    ``approach_yaw`` about T's z (0 = along +x), tilted ``pitch_down`` below the horizontal
    (0 = horizontal, pi/2 = straight down as :func:`tcp_pose`). The fingers close horizontally,
    perpendicular to the approach heading (``approach_yaw`` = 0: along T's y). ``flip`` rolls the
    hand 180 deg about the approach axis (the same grasp with the fingers swapped), which may
    suit the arm's joint limits better.

    The flange must stay at x <= 0.2 (workspace box): with a horizontal approach along +x the TCP
    reaches x <= 0.2 + ``TCP_Z`` = 0.3034 at most.
    """
    tcp = np.asarray(tcp_xyz, dtype=float)
    R = (RotationMatrix.MakeZRotation(approach_yaw) @ RotationMatrix.MakeYRotation(-(np.pi / 2 - pitch_down))
         @ RigidTransform(gripper_down((0, 0, 0), 0.0)).rotation())
    if flip:
        R = R @ RotationMatrix.MakeZRotation(np.pi)
    approach = R.col(2)
    return RigidTransform(R, tcp - TCP_Z * approach).GetAsMatrix4()

"""Replay of gripper commands through a copy of one arm's controller: where the commanded arm goes.

The station's :class:`~sim.controller.ArmController` integrates its own joint targets, so feeding
a copy the same 10 Hz commands predicts the commanded arm's path exactly, contacts and dynamics
aside (the simulated joints track those targets stiffly). Experts use it to check that a motion is
within the arm's reach before committing to it; tests use it to measure how closely the arm
executes a chunk.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from pydrake.math import RigidTransform, RotationMatrix

from geo4d_policy.control.trajectory import DEFAULT_ANGULAR_SPEED, plan_segment
from geo4d_policy.interface import CONTROL_HZ, GRIPPER_OPEN_WIDTH


class KinematicReplay:
    """A private copy of ``arm``'s controller (the station's configuration from ``configs/env.yaml``)."""

    def __init__(self, arm: str = "right") -> None:
        from sim.controller import ArmController
        from sim.env import load_env_config
        from sim.station import make_control_plant

        cfg = load_env_config().station
        mount = cfg.mount(arm)
        self.q_home = np.array(mount.q_home, dtype=float)
        self._ctrl = ArmController(make_control_plant(mount), q_home=self.q_home, dt=cfg.control_dt,
                                   limits=cfg.limits)
        self._ctx = self._ctrl.CreateDefaultContext()
        self._ticks = max(1, int(round(1.0 / (CONTROL_HZ * cfg.control_dt))))

    def forward_kinematics(self, q: np.ndarray) -> np.ndarray:
        """``X_TG`` of the flange at joint positions ``q``."""
        return self._ctrl.forward_kinematics(np.asarray(q, dtype=float)).GetAsMatrix4()

    def _start(self, q0: np.ndarray) -> None:
        self._ctx.SetDiscreteState(self._ctrl.initial_state(np.asarray(q0, dtype=float), GRIPPER_OPEN_WIDTH))
        self._ctrl.GetInputPort("width_cmd").FixValue(self._ctx, [GRIPPER_OPEN_WIDTH])

    def _command(self, X_TG: np.ndarray) -> np.ndarray:
        """Hold ``X_TG`` as the command for one control period; the joint targets reached."""
        self._ctrl.GetInputPort("X_TG_cmd").FixValue(self._ctx, RigidTransform(np.asarray(X_TG, dtype=float)))
        for _ in range(self._ticks):
            self._ctx.SetDiscreteState(self._ctrl.EvalUniquePeriodicDiscreteUpdate(self._ctx).value())
        return self._ctx.get_discrete_state_vector().get_value()[:7].copy()

    def track(self, q0: np.ndarray, commands: Iterable[np.ndarray]) -> np.ndarray:
        """(N, 4, 4) flange poses reached at the end of each 10 Hz command, from joint targets ``q0``."""
        self._start(q0)
        return np.stack([self.forward_kinematics(self._command(X)) for X in commands])

    def first_miss(self, q0: np.ndarray, X0: np.ndarray, waypoints: Sequence[tuple[np.ndarray, float]], *,
                   tol: float, rot_tol: float) -> int | None:
        """Index of the first ``(X_TG, linear_speed)`` segment whose end the arm misses by more than
        ``tol`` (m) or ``rot_tol`` (rad), starting at joint targets ``q0`` with last command ``X0``
        (segments planned as the experts plan them); None if it reaches all."""
        self._start(q0)
        X_prev = np.asarray(X0, dtype=float)
        for i, (X_goal, speed) in enumerate(waypoints):
            for X in plan_segment(X_prev, X_goal, linear_speed=speed, angular_speed=DEFAULT_ANGULAR_SPEED):
                q = self._command(X)
            X = self.forward_kinematics(q)
            if (np.linalg.norm(X[:3, 3] - X_goal[:3, 3]) > tol
                    or RotationMatrix(X[:3, :3].T @ X_goal[:3, :3]).ToAngleAxis().angle() > rot_tol):
                return i
            X_prev = X_goal
        return None

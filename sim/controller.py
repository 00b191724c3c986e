"""Per-arm differential-IK controller with lbm_eval's velocity and workspace limits.

Input each control tick: an absolute target pose of ``panda_link8`` in T and a gripper width.
The controller clamps the target position into the gripper workspace box, moves its internal
desired pose toward the target no faster than 0.4 m/s and 90 deg/s, solves one differential-IK
QP (Drake's ``DoDifferentialInverseKinematics``: joint position/velocity limits, null-space
centering to a home posture) on an arm-only control plant, integrates the joint positions and
outputs desired joint states that the simulated plant tracks with stiff, implicit joint PD
(gravity is compensated by disabling it on the robot, as a joint-impedance controller would).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from pydrake.common.value import AbstractValue
from pydrake.math import RigidTransform
from pydrake.multibody.inverse_kinematics import (
    DifferentialInverseKinematicsParameters,
    DifferentialInverseKinematicsStatus,
    DoDifferentialInverseKinematics,
)
from pydrake.multibody.plant import MultibodyPlant
from pydrake.systems.framework import BasicVector, LeafSystem

from sim.assets_gen.robot import FINGER_TRAVEL, FINGER_VELOCITY, JOINT_LOWER, JOINT_UPPER, JOINT_VELOCITY


@dataclasses.dataclass(frozen=True)
class ControllerLimits:
    """lbm_eval's differential-IK limits."""

    max_linear_speed: float = 0.4  # m/s
    max_angular_speed: float = np.deg2rad(90.0)  # rad/s
    workspace_lo: tuple[float, float, float] = (-0.375, -0.7, 0.015)
    workspace_hi: tuple[float, float, float] = (0.2, 0.7, 0.9)
    # Keep joints a little inside Franka's limits so the PD never pushes into the stops.
    joint_margin: float = 0.02
    centering_gain: float = 0.2


def clamp_to_workspace(X_TG: np.ndarray, limits: ControllerLimits) -> np.ndarray:
    """Return ``X_TG`` with its position clamped into the gripper workspace box."""
    out = np.array(X_TG, dtype=np.float64, copy=True)
    out[:3, 3] = np.clip(out[:3, 3], limits.workspace_lo, limits.workspace_hi)
    return out


def step_toward(X_cur: RigidTransform, X_goal: RigidTransform, dt: float, limits: ControllerLimits
                ) -> tuple[np.ndarray, np.ndarray]:
    """Spatial velocity (w, v) that moves ``X_cur`` toward ``X_goal`` within the speed limits."""
    dp = X_goal.translation() - X_cur.translation()
    v = dp / dt
    speed = np.linalg.norm(v)
    if speed > limits.max_linear_speed:
        v *= limits.max_linear_speed / speed
    R_err = X_goal.rotation().multiply(X_cur.rotation().inverse())
    aa = R_err.ToAngleAxis()
    w = aa.axis() * aa.angle() / dt
    wn = np.linalg.norm(w)
    if wn > limits.max_angular_speed:
        w *= limits.max_angular_speed / wn
    return w, v


class ArmController(LeafSystem):
    """Differential-IK position controller for one Panda arm and its gripper.

    Input ports: ``X_TG_cmd`` (AbstractValue[RigidTransform]), ``width_cmd`` (1).
    Output ports: ``arm_desired_state`` (14: q, v), ``finger_desired_state`` (4),
    ``status`` (2: last DiffIK status code, commanded-vs-reachable pose error in metres).
    """

    def __init__(self, control_plant: MultibodyPlant, *, q_home: np.ndarray, dt: float,
                 limits: ControllerLimits = ControllerLimits()) -> None:
        super().__init__()
        self._plant = control_plant
        self._ctx = control_plant.CreateDefaultContext()
        self._frame_E = control_plant.GetFrameByName("panda_link8")
        self._dt = dt
        self._limits = limits
        n = control_plant.num_positions()
        assert n == 7, n
        params = DifferentialInverseKinematicsParameters(n, n)
        params.set_time_step(dt)
        margin = limits.joint_margin
        params.set_joint_position_limits((JOINT_LOWER + margin, JOINT_UPPER - margin))
        params.set_joint_velocity_limits((-JOINT_VELOCITY, JOINT_VELOCITY))
        params.set_nominal_joint_position(np.asarray(q_home, dtype=float))
        params.set_joint_centering_gain(limits.centering_gain * np.eye(n))
        self._params = params
        self._q_home = np.asarray(q_home, dtype=float)

        self._X_in = self.DeclareAbstractInputPort("X_TG_cmd", AbstractValue.Make(RigidTransform()))
        self._w_in = self.DeclareVectorInputPort("width_cmd", 1)
        # Discrete state: q_des (7), v_des (7), width_des (1), status (1), error (1).
        self._state = self.DeclareDiscreteState(17)
        self.DeclarePeriodicDiscreteUpdateEvent(dt, 0.0, self._update)
        self.DeclareVectorOutputPort("arm_desired_state", 14, self._out_arm, {self.xd_ticket()})
        self.DeclareVectorOutputPort("finger_desired_state", 4, self._out_fingers, {self.xd_ticket()})
        self.DeclareVectorOutputPort("status", 2, self._out_status, {self.xd_ticket()})

    def initial_state(self, q: np.ndarray, width: float) -> np.ndarray:
        """Discrete state for an arm at rest at ``q`` with the gripper at ``width``."""
        x = np.zeros(17)
        x[:7] = q
        x[14] = width
        return x

    def forward_kinematics(self, q: np.ndarray) -> RigidTransform:
        """Pose of ``panda_link8`` in T for joint positions ``q`` (on the control plant)."""
        self._plant.SetPositions(self._ctx, q)
        return self._plant.CalcRelativeTransform(self._ctx, self._plant.world_frame(), self._frame_E)

    def _update(self, context, discrete_state) -> None:
        x = context.get_discrete_state_vector().get_value().copy()
        q = x[:7]
        X_goal = RigidTransform(clamp_to_workspace(self._X_in.Eval(context).GetAsMatrix4(), self._limits))
        X_cur = self.forward_kinematics(q)
        w, v = step_toward(X_cur, X_goal, self._dt, self._limits)
        V = np.concatenate([w, v])
        self._plant.SetVelocities(self._ctx, x[7:14])
        # At some postures the QP is infeasible for the full speed request (joint velocity limits);
        # a smaller step in the same direction usually is, and keeps the arm from stalling forever.
        qd = np.zeros(7)
        for scale in (1.0, 0.5, 0.25, 0.1):
            result = DoDifferentialInverseKinematics(self._plant, self._ctx, scale * V, self._frame_E, self._params)
            if (result.status == DifferentialInverseKinematicsStatus.kSolutionFound
                    and result.joint_velocities is not None):
                qd = np.asarray(result.joint_velocities).reshape(-1)
                break
        q_new = np.clip(q + qd * self._dt, JOINT_LOWER, JOINT_UPPER)
        width_cmd = float(np.clip(self._w_in.Eval(context)[0], 0.0, 2 * FINGER_TRAVEL))
        dw = np.clip(width_cmd - x[14], -2 * FINGER_VELOCITY * self._dt, 2 * FINGER_VELOCITY * self._dt)
        x[:7] = q_new
        x[7:14] = qd
        x[14] += dw
        x[15] = float(int(result.status))
        x[16] = float(np.linalg.norm(X_goal.translation() - self.forward_kinematics(q_new).translation()))
        discrete_state.set_value(x)

    def _out_arm(self, context, output: BasicVector) -> None:
        output.SetFromVector(context.get_discrete_state_vector().get_value()[:14])

    def _out_fingers(self, context, output: BasicVector) -> None:
        w = context.get_discrete_state_vector().get_value()[14]
        output.SetFromVector([w / 2, w / 2, 0.0, 0.0])

    def _out_status(self, context, output: BasicVector) -> None:
        output.SetFromVector(context.get_discrete_state_vector().get_value()[15:17])

"""Pose trajectories at the control rate: interpolation between keyframes within speed limits.

Used by the scripted experts (``sim/experts``) and by the receding-horizon controller that turns
2 Hz tracked gripper poses into 10 Hz waypoints. numpy/scipy only, so the simulator may import it.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from geo4d_policy.interface import CONTROL_HZ

DEFAULT_LINEAR_SPEED = 0.3  # m/s, below the controller's 0.4 m/s limit
DEFAULT_ANGULAR_SPEED = np.deg2rad(70.0)  # rad/s, below its 90 deg/s limit


def rotation_angle(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle (rad) of the relative rotation between two rotation matrices."""
    return float(Rotation.from_matrix(R_a.T @ R_b).magnitude())


def segment_steps(X_a: np.ndarray, X_b: np.ndarray, *, linear_speed: float = DEFAULT_LINEAR_SPEED,
                  angular_speed: float = DEFAULT_ANGULAR_SPEED, rate_hz: float = CONTROL_HZ,
                  min_steps: int = 1) -> int:
    """Number of control steps needed to go from ``X_a`` to ``X_b`` within the speed limits."""
    dist = float(np.linalg.norm(X_b[:3, 3] - X_a[:3, 3]))
    ang = rotation_angle(X_a[:3, :3], X_b[:3, :3])
    duration = max(dist / linear_speed, ang / angular_speed)
    return max(min_steps, int(np.ceil(duration * rate_hz - 1e-9)))


def interpolate_poses(X_a: np.ndarray, X_b: np.ndarray, n_steps: int, *, smooth: bool = True) -> np.ndarray:
    """``n_steps`` poses from just after ``X_a`` to exactly ``X_b`` (linear position, slerp rotation).

    With ``smooth`` the progress follows a smoothstep profile (zero velocity at both ends),
    which keeps the peak speed at 1.5x the average; callers size ``n_steps`` accordingly.
    """
    if n_steps < 1:
        raise ValueError("n_steps must be >= 1")
    s = np.arange(1, n_steps + 1) / n_steps
    if smooth:
        s = s * s * (3 - 2 * s)
    rots = Rotation.from_matrix(np.stack([X_a[:3, :3], X_b[:3, :3]]))
    R = Slerp([0.0, 1.0], rots)(s).as_matrix()
    out = np.tile(np.eye(4), (n_steps, 1, 1))
    out[:, :3, :3] = R
    out[:, :3, 3] = X_a[:3, 3] + s[:, None] * (X_b[:3, 3] - X_a[:3, 3])
    return out


def plan_segment(X_a: np.ndarray, X_b: np.ndarray, *, linear_speed: float = DEFAULT_LINEAR_SPEED,
                 angular_speed: float = DEFAULT_ANGULAR_SPEED, rate_hz: float = CONTROL_HZ,
                 smooth: bool = True) -> np.ndarray:
    """Poses at ``rate_hz`` from ``X_a`` to ``X_b`` whose peak speed respects the limits."""
    # The smoothstep profile peaks at 1.5x the mean speed.
    factor = 1.5 if smooth else 1.0
    n = segment_steps(X_a, X_b, linear_speed=linear_speed / factor, angular_speed=angular_speed / factor,
                      rate_hz=rate_hz)
    return interpolate_poses(X_a, X_b, n, smooth=smooth)


def resample_poses(times: np.ndarray, poses: np.ndarray, query_times: np.ndarray) -> np.ndarray:
    """Poses at ``query_times`` interpolated from keyframes (``times`` increasing); clamped at the ends."""
    times = np.asarray(times, float)
    if times.ndim != 1 or len(times) != len(poses) or len(times) < 1:
        raise ValueError("times and poses must be matching non-empty sequences")
    if np.any(np.diff(times) <= 0):
        raise ValueError("keyframe times must be strictly increasing")
    q = np.clip(np.asarray(query_times, float), times[0], times[-1])
    if len(times) == 1:
        return np.repeat(np.asarray(poses)[:1], len(q), axis=0)
    rot = Slerp(times, Rotation.from_matrix(np.asarray(poses)[:, :3, :3]))(q).as_matrix()
    out = np.tile(np.eye(4), (len(q), 1, 1))
    out[:, :3, :3] = rot
    for k in range(3):
        out[:, k, 3] = np.interp(q, times, np.asarray(poses)[:, k, 3])
    return out


def max_speeds(poses: np.ndarray, *, rate_hz: float = CONTROL_HZ) -> tuple[float, float]:
    """Largest linear (m/s) and angular (rad/s) speed between consecutive poses."""
    if len(poses) < 2:
        return 0.0, 0.0
    lin = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1).max() * rate_hz
    ang = max(rotation_angle(poses[i, :3, :3], poses[i + 1, :3, :3]) for i in range(len(poses) - 1)) * rate_hz
    return float(lin), float(ang)


def distance_to_polyline(points: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Distance of each of ``points`` (N, 3) to the polyline through ``vertices`` (M, 3), M >= 2:
    how far an executed or commanded path strays from the path it should follow."""
    points, vertices = np.asarray(points, dtype=float), np.asarray(vertices, dtype=float)
    out = np.full(len(points), np.inf)
    for a, b in zip(vertices[:-1], vertices[1:]):
        ab = b - a
        t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
        out = np.minimum(out, np.linalg.norm(points - (a + t[:, None] * ab), axis=1))
    return out

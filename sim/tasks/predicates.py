"""Reusable success predicates on a :class:`~sim.station.Station` state (lbm_eval's vocabulary).

All geometry is in the task frame; objects are addressed by model instance name.
"""

from __future__ import annotations

import numpy as np

from geo4d_policy.interface import ARM_NAMES
from sim.station import Station

FINGER_BODIES = tuple(f"{arm}/panda_{side}finger" for arm in ARM_NAMES for side in ("left", "right"))


def touching(station: Station, a: str, b: str, *, pairs: set[frozenset[str]] | None = None) -> bool:
    """Whether any body of object/instance ``a`` touches any body of ``b`` (``"table"`` works too)."""
    pairs = station.contact_pairs() if pairs is None else pairs
    bodies_a, bodies_b = station.bodies_of(a), station.bodies_of(b)
    return any(len(p) == 2 and (set(p) & bodies_a) and (set(p) & bodies_b) for p in pairs)


def fingers_touching(station: Station, obj: str, *, pairs: set[frozenset[str]] | None = None) -> bool:
    """Whether any finger of either gripper touches ``obj``."""
    pairs = station.contact_pairs() if pairs is None else pairs
    bodies = station.bodies_of(obj)
    return any((set(p) & bodies) and (set(p) & set(FINGER_BODIES)) for p in pairs)


def relative_position(station: Station, obj: str, frame_X_TF: np.ndarray) -> np.ndarray:
    """Position of ``obj``'s centre of mass in frame F (given as ``X_TF``)."""
    body = station.body(obj)
    p_TO = body.CalcCenterOfMassInBodyFrame(station.plant_context)
    X_TB = station.body_pose(obj)
    p_T = X_TB[:3, :3] @ p_TO + X_TB[:3, 3]
    X_FT = np.linalg.inv(frame_X_TF)
    return X_FT[:3, :3] @ p_T + X_FT[:3, 3]


def on_top_of(station: Station, obj: str, container: str, *, xy_tol: float = 0.10,
              dz_range: tuple[float, float] = (0.0, 0.06), pairs: set[frozenset[str]] | None = None
              ) -> tuple[bool, str]:
    """lbm_eval's "on top of" test: centre of mass within ``xy_tol`` in xy of the container's
    bottom frame, ``dz_range[0] <= dz < dz_range[1]``, in contact with the container, no
    finger touching the object. Returns (holds, why not)."""
    pairs = station.contact_pairs() if pairs is None else pairs
    p = relative_position(station, obj, station.body_pose(container))
    if np.hypot(p[0], p[1]) >= xy_tol:
        return False, f"{obj} not over {container} (xy offset {np.hypot(p[0], p[1]):.3f} m)"
    if not dz_range[0] <= p[2] < dz_range[1]:
        return False, f"{obj} not resting in {container} (dz {p[2]:.3f} m)"
    if not touching(station, obj, container, pairs=pairs):
        return False, f"{obj} not in contact with {container}"
    if fingers_touching(station, obj, pairs=pairs):
        return False, f"a finger still touches {obj}"
    return True, ""


def upright_angle(X_TO: np.ndarray) -> float:
    """Angle (rad) between the object's z axis and T's z axis."""
    return float(np.arccos(np.clip(X_TO[2, 2], -1.0, 1.0)))

"""PutSpatulaOnTable: take the spatula out of the utensil crock and lay it on the table.

Layout (TASKS.md, lbm_eval): the utensil crock is fixed at x in [-0.05, 0.05], y in
[-0.15, -0.05] (its origin, the centre of its inside bottom, 0.01 m above the table: the bottom
plate's thickness). A flat wooden spatula stands in it, handle end down: its origin (the handle
centre) 0.15 m (+-0.01) above the crock origin, pitched 90 deg (roll-pitch-yaw (0, pi/2, yaw),
which points the spatula's +x, the handle end, down), random yaw; it drops at most ~2 cm onto the
crock bottom before t = 0 and stands there, passing through the crock's divider insert (see
``sim/assets_gen/objects.py``: the spatula's handle is 0.276 m long so that its end reaches the
bottom from that height; the crock uses point contact, which keeps it standing). The target
frame lies on the table at (-0.2, -0.5, 0). Distractors, placed where the right arm's path does
not pass but the cameras (x 0.2..0.6, looking at the origin) see them: a drying rack with plates
(fixed, front right), a mug holder with two mugs (fixed, front left) and a free spoon (left of
the crock).

Success (t_max 40 s): the spatula origin and its handle-end point both lie in the box
[-0.15, -0.2, 0] .. [0.2, 0.2, 0.04] of the target frame, the spatula touches the table and no
finger touches it. The right arm does the task; the left arm stays at home.
"""

from __future__ import annotations

import numpy as np

from sim.assets_gen.objects import SPATULA_HANDLE_END
from sim.station import ObjectPlacement, pose
from sim.tasks.base import Evaluation, Layout, Task
from sim.tasks.predicates import fingers_touching, touching

CROCK_Z = 0.01  # crock origin (inside bottom) above the table top
SPATULA_HEIGHT = 0.15  # spatula origin above the crock origin at spawn (+- SPATULA_HEIGHT_JITTER)
SPATULA_HEIGHT_JITTER = 0.01
TARGET_XYZ = (-0.2, -0.5, 0.0)
TARGET_BOX_LO = np.array([-0.15, -0.2, 0.0])
TARGET_BOX_HI = np.array([0.2, 0.2, 0.04])


def spatula_points(X_TS: np.ndarray) -> dict[str, np.ndarray]:
    """The spatula's checked points in T: its origin (handle centre) and its handle end."""
    end = X_TS[:3, :3] @ [SPATULA_HANDLE_END, 0.0, 0.0] + X_TS[:3, 3]
    return {"origin": X_TS[:3, 3].copy(), "handle end": end}


def in_box(p_T: np.ndarray, X_TF: np.ndarray, lo, hi) -> bool:
    """Whether point ``p_T`` (in T) lies in the box ``[lo, hi]`` of frame F (``X_TF``)."""
    p_F = X_TF[:3, :3].T @ (np.asarray(p_T, dtype=float) - X_TF[:3, 3])
    return bool(np.all(p_F >= lo) and np.all(p_F <= hi))


class PutSpatulaOnTable(Task):
    name = "PutSpatulaOnTable"
    t_max = 40.0
    arms = ("right",)

    def sample_layout(self, rng: np.random.Generator) -> Layout:
        crock_xy = rng.uniform([-0.05, -0.15], [0.05, -0.05])
        spatula_z = CROCK_Z + SPATULA_HEIGHT + rng.uniform(-SPATULA_HEIGHT_JITTER, SPATULA_HEIGHT_JITTER)
        spatula_yaw = rng.uniform(-np.pi, np.pi)
        rack_xy = rng.uniform([0.30, -0.45], [0.40, -0.30])
        rack_yaw = rng.uniform(-0.3, 0.3)
        mug_xy = rng.uniform([0.28, 0.15], [0.38, 0.35])
        mug_yaw = rng.uniform(-np.pi, np.pi)
        spoon_xy = rng.uniform([0.0, 0.12], [0.10, 0.28])  # clear of crock and mug holder at any yaw
        spoon_yaw = rng.uniform(-np.pi, np.pi)
        objects = (
            ObjectPlacement("crock", "crock.sdf", pose((*crock_xy, CROCK_Z)), fixed=True),
            ObjectPlacement("spatula", "spatula.sdf",
                            pose((*crock_xy, spatula_z), (0.0, np.pi / 2, spatula_yaw))),
            ObjectPlacement("drying_rack", "drying_rack.sdf", pose((*rack_xy, 0.0), (0, 0, rack_yaw)),
                            fixed=True),
            ObjectPlacement("mug_holder", "mug_holder.sdf", pose((*mug_xy, 0.0), (0, 0, mug_yaw)),
                            fixed=True),
            ObjectPlacement("spoon", "spoon.sdf", pose((*spoon_xy, 0.0005), (0, 0, spoon_yaw))),
        )
        params = {"crock_xy": crock_xy.tolist(), "spatula_z": float(spatula_z),
                  "spatula_yaw": float(spatula_yaw), "target_xyz": list(TARGET_XYZ)}
        return Layout(objects=objects, params=params)

    def evaluate(self, station, layout: Layout) -> Evaluation:
        pairs = station.contact_pairs()
        X_TF = pose(layout.params.get("target_xyz", TARGET_XYZ))
        for label, p in spatula_points(station.body_pose("spatula")).items():
            if not in_box(p, X_TF, TARGET_BOX_LO, TARGET_BOX_HI):
                return Evaluation(False, f"spatula {label} outside target box")
        if not touching(station, "spatula", "table", pairs=pairs):
            return Evaluation(False, "spatula not on table")
        if fingers_touching(station, "spatula", pairs=pairs):
            return Evaluation(False, "a finger still touches spatula")
        return Evaluation(True)

    def placement_error(self, station, layout: Layout) -> float:
        """Horizontal distance of the spatula's origin (handle centre) to the target frame's
        origin on the table (the success box spans -0.15..0.2 m along x and +-0.2 m along y
        around it)."""
        X_TS = station.body_pose("spatula")
        target = np.asarray(layout.params.get("target_xyz", TARGET_XYZ), dtype=float)
        return float(np.linalg.norm(X_TS[:2, 3] - target[:2]))


TASK_CLASS = PutSpatulaOnTable

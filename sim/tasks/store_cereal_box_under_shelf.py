"""StoreCerealBoxUnderShelf: take the cereal box from the shelf's top level and store it on the
lower level, standing next to the box already there (pick-and-insert under occlusion).

Layout (TASKS.md, lbm_eval; positions in T, the table-top centre):
  * shelf (fixed): two levels, open side facing -x (the robots), back panel at +x (toward the
    cameras, so the insertion happens behind it). Its origin (the lower level's top surface,
    ``sim.assets_gen.objects``) sits at ``SHELF_XYZ``; the top level's surface is
    ``SHELF_TOP_Z`` above it.
  * box 0 (``cereal_box_0``, free): stands on the lower level at the fixed place ``BOX0_XY``,
    yaw +90 deg or flipped (-90 deg), chosen by the seed: its thin side (0.0505 m) along y.
  * box 1 (``cereal_box_1``, free): stands on the top level at ``BOX1_XY`` + jitter
    (x +-0.02, y +-0.05), yaw 90 deg +-45 deg.
  * target for box 1: box 0's place shifted by one box width (``CEREAL_BOX_SIZE[0]``,
    0.0505 m) along -y, i.e. standing against box 0's -y side (``params["target_xyz"]``).
  * distractors: a bin (fixed) and a bowl (fixed) with a fruit in it on the left (+y) half of the
    table, a free bell pepper in front of the shelf's +y end; none is in the right arm's way.

The expert (``sim/experts/store_cereal_box_under_shelf.py``) uses the right arm only.

Success (t_max 55 s), every predicate at once:
  * box 1's origin (the centre of its bottom face) is within ``POS_TOL`` = 0.02 m (3-D distance)
    of the target, and box 1 is upright: its z axis within ``UPRIGHT_TOL`` = 5 deg of vertical;
  * box 0's origin moved less than ``BOX0_MOVE_TOL`` = 0.01 m from its place (its spawn pose,
    ``SPAWN_DZ`` = 1 mm above the level, so settling alone accounts for ~1 mm) and box 0 is
    still upright (same 5 deg);
  * no finger touches box 1 (the box has been released, as in lbm_eval's other "placed"
    predicates), so an episode does not end while the box is still held.
"""

from __future__ import annotations

import numpy as np

from sim.assets_gen.objects import CEREAL_BOX_SIZE, SHELF_PLATE, SHELF_SIZE, SHELF_TOP_Z
from sim.station import ObjectPlacement, pose
from sim.tasks.base import Evaluation, Layout, Task, random_rotation
from sim.tasks.predicates import fingers_touching, upright_angle

# The shelf's origin (the lower level's surface) sits one plate thickness above the table.
SHELF_XYZ = (0.315, -0.10, SHELF_PLATE)  # open front at x = 0.185, back panel at x = 0.445
BOX0_XY = (0.29, -0.08)  # box 0's fixed place on the lower level (front face 0.03 m inside the front edge)
BOX1_XY = (0.255, -0.13)  # box 1's nominal place on the top level
BOX1_JITTER = (0.02, 0.05)
BOX1_YAW_JITTER = np.pi / 4
SPAWN_DZ = 0.001  # boxes are spawned this far above their support and settle

POS_TOL = 0.02
UPRIGHT_TOL = np.deg2rad(5.0)
BOX0_MOVE_TOL = 0.01

LOWER_Z = SHELF_XYZ[2]
TOP_Z = SHELF_XYZ[2] + SHELF_TOP_Z


def box_target_xyz() -> np.ndarray:
    """Box 1's target origin: box 0's place shifted one box width along -y (on the lower level)."""
    return np.array([BOX0_XY[0], BOX0_XY[1] - CEREAL_BOX_SIZE[0], LOWER_Z])


class StoreCerealBoxUnderShelf(Task):
    name = "StoreCerealBoxUnderShelf"
    t_max = 55.0
    arms = ("right",)

    def sample_layout(self, rng: np.random.Generator) -> Layout:
        box0_yaw = float(rng.choice([np.pi / 2, -np.pi / 2]))
        box1_xy = np.asarray(BOX1_XY) + rng.uniform(-1, 1, size=2) * BOX1_JITTER
        box1_yaw = float(np.pi / 2 + rng.uniform(-BOX1_YAW_JITTER, BOX1_YAW_JITTER))
        bin_xy = rng.uniform([-0.22, 0.44], [-0.14, 0.54])
        bin_yaw = float(rng.uniform(-0.3, 0.3))
        bowl_xy = rng.uniform([0.06, 0.32], [0.16, 0.42])
        fruit_jitter = rng.uniform(-0.02, 0.02, size=2)
        pepper_xy = np.array([-0.02, 0.14]) + rng.uniform(-0.04, 0.04, size=2)
        box0_xyz = (BOX0_XY[0], BOX0_XY[1], LOWER_Z + SPAWN_DZ)
        box1_xyz = (float(box1_xy[0]), float(box1_xy[1]), TOP_Z + SPAWN_DZ)
        objects = (
            ObjectPlacement("shelf", "shelf.sdf", pose(SHELF_XYZ), fixed=True),
            ObjectPlacement("cereal_box_0", "cereal_box.sdf", pose(box0_xyz, (0, 0, box0_yaw))),
            ObjectPlacement("cereal_box_1", "cereal_box.sdf", pose(box1_xyz, (0, 0, box1_yaw))),
            ObjectPlacement("bin", "bin.sdf", pose((*bin_xy, 0.012), (0, 0, bin_yaw)), fixed=True),
            ObjectPlacement("bowl", "bowl.sdf", pose((*bowl_xy, 0.01)), fixed=True),
            ObjectPlacement("fruit", "fruit.sdf",
                            pose((*(bowl_xy + fruit_jitter), 0.08), random_rotation(rng))),
            ObjectPlacement("bell_pepper", "bell_pepper.sdf",
                            pose((*pepper_xy, 0.045), (0, 0, rng.uniform(-np.pi, np.pi)))),
        )
        params = {
            "shelf_xyz": list(SHELF_XYZ),
            "shelf_size": [*SHELF_SIZE, SHELF_TOP_Z],
            "lower_z": LOWER_Z,
            "top_z": TOP_Z,
            "box0_xyz": list(box0_xyz),
            "box0_yaw": box0_yaw,
            "box1_xyz": list(box1_xyz),
            "box1_yaw": box1_yaw,
            "target_xyz": box_target_xyz().tolist(),
            "bin_xy": bin_xy.tolist(),
            "bowl_xy": bowl_xy.tolist(),
        }
        return Layout(objects=objects, params=params)

    def evaluate(self, station, layout: Layout) -> Evaluation:
        """All predicates; ``reason`` lists every one that fails ("; "-separated)."""
        params = layout.params
        X0 = station.body_pose("cereal_box_0")
        X1 = station.body_pose("cereal_box_1")
        failed = []
        moved = float(np.linalg.norm(X0[:3, 3] - np.asarray(params["box0_xyz"])))
        if moved >= BOX0_MOVE_TOL:
            failed.append(f"cereal_box_0 moved {moved:.3f} m from its place (limit {BOX0_MOVE_TOL} m)")
        tilt0 = upright_angle(X0)
        if tilt0 >= UPRIGHT_TOL:
            failed.append(f"cereal_box_0 not upright (tilted {np.rad2deg(tilt0):.1f} deg)")
        err = self.placement_error(station, layout)
        if err >= POS_TOL:
            failed.append(f"cereal_box_1 not at its target ({err:.3f} m away, limit {POS_TOL} m)")
        tilt1 = upright_angle(X1)
        if tilt1 >= UPRIGHT_TOL:
            failed.append(f"cereal_box_1 not upright (tilted {np.rad2deg(tilt1):.1f} deg)")
        if fingers_touching(station, "cereal_box_1"):
            failed.append("a finger still touches cereal_box_1")
        return Evaluation(not failed, "; ".join(failed))

    def placement_error(self, station, layout: Layout) -> float:
        """3-D distance of box 1's origin to its target (the quantity ``POS_TOL`` bounds)."""
        X1 = station.body_pose("cereal_box_1")
        return float(np.linalg.norm(X1[:3, 3] - np.asarray(layout.params["target_xyz"])))


TASK_CLASS = StoreCerealBoxUnderShelf

"""PlaceAppleFromBowlIntoBin: bimanual, the apple goes from the bowl via a hand-over place to the bin.

Layout (TASKS.md, lbm_eval): bowl fixed at x in [0.05, 0.25], y in [-0.5, -0.3]; a first fruit
in the bowl (spawned at z 0.08, xy jitter +-0.03, random orientation) and the apple spawned
above it (z 0.18, same jitter) settle on top of each other; bin fixed at x in [-0.23, -0.16],
y in [0.43, 0.58], yaw +-45 deg. Distractors: a shelf (with a cereal box on its top level),
a free bell pepper near (-0.1, -0.4) +-0.1 and a cutting board near x 0.16, y in [0.33, 0.47].
The hand-over place is a fixed spot on the table between the arms (``params["handover"]``).

Success (t_max 55 s): the apple is on top of the bin bottom (centre of mass within 0.10 m in xy,
0 <= dz < 0.06 m, touching the bin, no finger touching it) AND the first fruit is still in the
bowl by the same test.
"""

from __future__ import annotations

import numpy as np

from sim.station import ObjectPlacement, pose
from sim.tasks.base import Evaluation, Layout, Task, random_rotation
from sim.tasks.predicates import on_top_of, relative_position


class PlaceAppleFromBowlIntoBin(Task):
    name = "PlaceAppleFromBowlIntoBin"
    t_max = 55.0
    arms = ("right", "left")
    handover = (-0.10, 0.0)

    def sample_layout(self, rng: np.random.Generator) -> Layout:
        bowl_xy = rng.uniform([0.05, -0.5], [0.25, -0.3])
        jitter = rng.uniform(-0.03, 0.03, size=2)
        bin_xy = rng.uniform([-0.23, 0.43], [-0.16, 0.58])
        bin_yaw = rng.uniform(-np.pi / 4, np.pi / 4)
        pepper_xy = np.array([-0.1, -0.4]) + rng.uniform(-0.1, 0.1, size=2)
        board_xy = np.array([0.16, rng.uniform(0.33, 0.47)])
        objects = (
            ObjectPlacement("bowl", "bowl.sdf", pose((*bowl_xy, 0.01)), fixed=True),
            ObjectPlacement("fruit", "fruit.sdf", pose((*(bowl_xy + jitter), 0.08), random_rotation(rng))),
            ObjectPlacement("apple", "apple.sdf", pose((*(bowl_xy + jitter), 0.18), (0, 0, rng.uniform(-np.pi, np.pi)))),
            ObjectPlacement("bin", "bin.sdf", pose((*bin_xy, 0.012), (0, 0, bin_yaw)), fixed=True),
            ObjectPlacement("shelf", "shelf.sdf", pose((0.45, 0.05, 0.018)), fixed=True),
            ObjectPlacement("cereal_box", "cereal_box.sdf", pose((0.45, 0.12, 0.318), (0, 0, np.pi / 2))),
            ObjectPlacement("bell_pepper", "bell_pepper.sdf", pose((*pepper_xy, 0.045), (0, 0, rng.uniform(-np.pi, np.pi)))),
            ObjectPlacement("cutting_board", "cutting_board.sdf", pose((*board_xy, 0.0), (0, 0, rng.uniform(-0.2, 0.2)))),
        )
        params = {"bowl_xy": bowl_xy.tolist(), "bin_xy": bin_xy.tolist(), "bin_yaw": float(bin_yaw),
                  "handover": list(self.handover)}
        return Layout(objects=objects, params=params)

    def evaluate(self, station, layout: Layout) -> Evaluation:
        pairs = station.contact_pairs()
        ok, why = on_top_of(station, "apple", "bin", pairs=pairs)
        if not ok:
            return Evaluation(False, why)
        ok, why = on_top_of(station, "fruit", "bowl", pairs=pairs)
        if not ok:
            return Evaluation(False, why)
        return Evaluation(True)

    def placement_error(self, station, layout: Layout) -> float:
        """Horizontal distance of the apple's centre of mass to the centre of the bin bottom
        (the "on top of" test allows 0.10 m)."""
        p = relative_position(station, "apple", station.body_pose("bin"))
        return float(np.hypot(p[0], p[1]))


TASK_CLASS = PlaceAppleFromBowlIntoBin

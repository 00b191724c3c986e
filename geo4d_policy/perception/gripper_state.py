"""Gripper open/close state from the finger points of a (predicted) pointmap.

This module owns the paper's open/close rule (section 3.4): split one gripper's finger points
into two clusters, measure the distance between the cluster centroids, and call the gripper
closed below a threshold. Here the threshold has hysteresis (two thresholds), and the distance
is also turned into an opening-width estimate through the CAD model.

Clustering:
  * with per-finger labels (left/right finger masks), the labels are the clusters;
  * with a tracked pose ``X_CG``, points are projected onto the gripper's closing axis and
    split at the gripper's mid-plane; the distance is measured *along the closing axis*, which
    removes the offsets that one-sided visibility adds in the other two directions;
  * with neither, 2-means (seeded by the two extreme points along the cloud's principal axis),
    and the distance is the 3-D centroid distance.

Thresholds are centroid distances in metres. Defaults come from the model: ``d(w)`` is the
centroid distance at opening ``w`` (``w + 2 * finger_centroid_offset``); the gripper closes
below ``d(close_fraction * stroke)`` and opens above ``d(open_fraction * stroke)`` (fractions
0.5 / 0.6 by default, so holding a 3 cm object reads as closed). Objects nearly as wide as the
stroke (the 7.4 cm apple in PlaceAppleFromBowlIntoBin) leave only millimetres between "holding"
and "open": use :meth:`GripperStateEstimator.for_object_width` for such tasks.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from geo4d_policy.perception.gripper_model import PART_LEFT, PART_RIGHT, GripperModel

State = Literal["open", "closed"]


@dataclasses.dataclass(frozen=True)
class FingerMeasurement:
    """Centroid distance of one frame's finger clusters.

    Attributes:
        distance: centroid distance (m), or None when a cluster is missing or too small.
        width: opening width implied by ``distance`` through the model (m), or None.
        centroids: (2, 3) cluster centroids in the input frame (left/first cluster first), or None.
        counts: points in each cluster.
        method: ``"labels"``, ``"pose"`` or ``"kmeans"``.
    """

    distance: float | None
    width: float | None
    centroids: np.ndarray | None
    counts: tuple[int, int]
    method: str


def _kmeans2(points: np.ndarray, *, iterations: int = 20) -> np.ndarray:
    """Deterministic 2-means: boolean assignment to the second cluster."""
    c = points.mean(axis=0)
    _, _, Vt = np.linalg.svd(points - c, full_matrices=False)
    proj = (points - c) @ Vt[0]
    centers = np.stack([points[np.argmin(proj)], points[np.argmax(proj)]])
    assign = proj > 0
    for _ in range(iterations):
        d = np.linalg.norm(points[:, None, :] - centers[None], axis=2)
        new = d[:, 1] < d[:, 0]
        if new.all() or (~new).all():
            break
        centers = np.stack([points[~new].mean(axis=0), points[new].mean(axis=0)])
        if np.array_equal(new, assign):
            break
        assign = new
    return assign


def measure_finger_opening(
    points: np.ndarray,
    *,
    model: GripperModel | None = None,
    X_CG: np.ndarray | None = None,
    part_labels: np.ndarray | None = None,
    min_points: int = 5,
) -> FingerMeasurement:
    """Split finger points into two clusters and measure their centroid distance.

    Args:
        points: (N, 3) finger points (both fingers of one gripper) in any camera frame.
        model: the gripper model (default: :meth:`GripperModel.load`).
        X_CG: tracked gripper pose in that frame; enables the closing-axis split.
        part_labels: optional (N,) part codes (1 left finger, 2 right finger; others ignored).
        min_points: smallest cluster that counts; a finger hidden behind the palm must not
            read as a closed gripper.

    Returns:
        A :class:`FingerMeasurement` (``distance`` None when it cannot be measured).
    """
    model = model or GripperModel.load()
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    finite = np.isfinite(pts).all(axis=1)
    labels = None if part_labels is None else np.asarray(part_labels).reshape(-1)[finite]
    pts = pts[finite]
    axis_C = None
    if X_CG is not None and np.isfinite(X_CG).all():
        axis_C = np.asarray(X_CG)[:3, :3] @ model.closing_axis_G
    if labels is not None:
        a, b = labels == PART_LEFT, labels == PART_RIGHT
        method = "labels"
    elif axis_C is not None:
        s = (pts - np.asarray(X_CG)[:3, 3]) @ axis_C
        a, b = s > 0, s <= 0
        method = "pose"
    else:
        if len(pts) < 2 * min_points:
            return FingerMeasurement(None, None, None, (0, 0), "kmeans")
        second = _kmeans2(pts)
        a, b = ~second, second
        method = "kmeans"
    counts = (int(a.sum()), int(b.sum()))
    if min(counts) < min_points:
        return FingerMeasurement(None, None, None, counts, method)
    ca, cb = pts[a].mean(axis=0), pts[b].mean(axis=0)
    if axis_C is not None:
        distance = float(abs((ca - cb) @ axis_C))
    else:
        distance = float(np.linalg.norm(ca - cb))
    width = float(np.clip(model.width_from_centroid_distance(distance), 0.0, model.stroke))
    return FingerMeasurement(distance, width, np.stack([ca, cb]), counts, method)


@dataclasses.dataclass(frozen=True)
class GripperStateEstimate:
    """One frame's state: ``state``, the measured distance/width (None if unmeasured), whether
    the state was held from the previous frame for lack of a measurement."""

    state: State
    distance: float | None
    width: float | None
    held: bool

    @property
    def closed(self) -> bool:
        return self.state == "closed"


class GripperStateEstimator:
    """Open/closed with hysteresis from finger centroid distances, one instance per arm.

    Args:
        model: the gripper model (default: :meth:`GripperModel.load`); sets default thresholds.
        close_below: centroid distance (m) under which an open gripper becomes closed.
        open_above: centroid distance (m) over which a closed gripper becomes open
            (must be >= ``close_below``).
        close_fraction, open_fraction: defaults of the two thresholds as fractions of the
            stroke, through the model's centroid distance ``d(w)``.
        initial_state: state before the first measurement; None decides on the first
            measurement by the mid-point of the two thresholds.
    """

    def __init__(self, model: GripperModel | None = None, *, close_below: float | None = None,
                 open_above: float | None = None, close_fraction: float = 0.5, open_fraction: float = 0.6,
                 initial_state: State | None = None) -> None:
        self.model = model or GripperModel.load()
        d = self.model.finger_centroid_distance
        self.close_below = float(close_below if close_below is not None else d(close_fraction * self.model.stroke))
        self.open_above = float(open_above if open_above is not None else d(open_fraction * self.model.stroke))
        if not self.open_above >= self.close_below:
            raise ValueError(f"open_above ({self.open_above}) must be >= close_below ({self.close_below})")
        self._initial = initial_state
        self.reset()

    @classmethod
    def for_object_width(cls, object_width: float, *, model: GripperModel | None = None,
                         margin_fraction: float = 0.35, hysteresis_fraction: float = 0.15) -> GripperStateEstimator:
        """Thresholds placed between "holding an object this wide" and "fully open".

        The close threshold sits ``margin_fraction`` of the way from the object's width to the
        stroke, the open threshold a further ``hysteresis_fraction`` of that gap (fingers that
        release an object next to a surface do not always open fully: the spatula expert's hand
        opens to 56 mm on the table, under a 58 mm threshold at 0.3).
        """
        model = model or GripperModel.load()
        gap = model.stroke - float(object_width)
        if gap <= 0:
            raise ValueError(f"object width {object_width} leaves no room below the stroke {model.stroke}")
        w_close = object_width + margin_fraction * gap
        w_open = w_close + hysteresis_fraction * gap
        return cls(model, close_below=model.finger_centroid_distance(w_close),
                   open_above=model.finger_centroid_distance(w_open))

    @property
    def decision_width(self) -> float:
        """Opening (m) at the mid-point of the two thresholds: where "closed" and "open" split
        when a measured width is scored against this estimator (ground truth of evaluations)."""
        return self.model.width_from_centroid_distance(0.5 * (self.close_below + self.open_above))

    def reset(self, *, initial_state: State | None = None) -> None:
        """Forget the state; start from ``initial_state`` if given (e.g. the robot's measured
        width now), else from the constructor's."""
        self._state: State | None = initial_state if initial_state is not None else self._initial

    @property
    def state(self) -> State | None:
        return self._state

    def update(self, measurement: FingerMeasurement | float | None) -> GripperStateEstimate:
        """Advance by one frame with a measurement (or a bare centroid distance, or None)."""
        if isinstance(measurement, FingerMeasurement):
            distance = measurement.distance
        else:
            distance = None if measurement is None else float(measurement)
        if distance is None or not np.isfinite(distance):
            # No measurement: hold the state (open if there never was one: the safe default
            # for a gripper that has not been seen to close).
            return GripperStateEstimate(self._state or "open", None, None, True)
        if self._state is None:
            mid = 0.5 * (self.close_below + self.open_above)
            self._state = "closed" if distance < mid else "open"
        elif self._state == "open" and distance < self.close_below:
            self._state = "closed"
        elif self._state == "closed" and distance > self.open_above:
            self._state = "open"
        width = float(np.clip(self.model.width_from_centroid_distance(distance), 0.0, self.model.stroke))
        return GripperStateEstimate(self._state, distance, width, False)

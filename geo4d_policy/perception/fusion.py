"""Two-view fusion of per-frame gripper tracks, and conversion to the task frame.

This module owns the last step of the paper's section 3.4: the tracker runs on view n's
pointmap ``X^n`` and on view m's ``X^{m->n}`` (both in camera n's frame), and for every frame
the more confident result is kept; ``X_CnG`` is then mapped to the task frame with ``X_TCn``,
the only extrinsic a policy knows. Both arms go through the same code.

Ties go to view n (its pointmap is the reference the generator is anchored to). A frame lost
in both views holds the previous fused pose with confidence 0 and status ``"lost"``.

The finger opening is chosen separately from the pose: it comes from the view whose tracker
saw the fingers best (:func:`choose_finger_view`), which is often not the view with the most
confident pose. The fingers are a few pixels each at 128x160 and often hidden behind the palm or the held
object, so one view may fit the palm best (high pose confidence) with no finger point, its fitted
opening then only the tracker's prior (half the stroke: "closed" for every task's threshold),
while the other view sees both fingers (docs/decisions.md). Frames whose pose the views
contradict are lost (:func:`fail_safe`).

For the RGB-only Dreamitate baseline it owns :func:`fuse_rays` and :func:`fuse_rgb_views`:
ray-midpoint translation and chordal-mean rotation of two calibrated views' per-view estimates.

Camera m's pose in camera n, which view m's pixels need (the ICP tracker's projection, the
consistency check, an image-based tracker run in camera m), is estimated without calibration by
:mod:`~geo4d_policy.perception.view_pose`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from geo4d_policy.data.geometry import checked_transform, invert_transform, nearest_rotation
from geo4d_policy.perception.gripper_model import GripperModel
from geo4d_policy.perception.pose_tracker import TrackingFrame, TrackResult
from geo4d_policy.perception.projection import see_through_fraction


@dataclasses.dataclass(frozen=True)
class FusedPose:
    """One frame of a fused track.

    Attributes:
        X_TG: 4x4 gripper pose in the task frame.
        X_CnG: 4x4 gripper pose in camera n's frame.
        confidence: of the chosen view (0 when lost in both).
        source: ``"n"``, ``"m"``, or ``"none"`` when both views lost the gripper.
        status: ``"ok"`` or ``"lost"``.
        width: finger opening reported by the tracker of the finger view (``finger_source``),
            if any.
        finger_points: inlier points on the (left, right) finger in the finger view (how well
            ``width`` was observed).
        finger_source: the view ``width`` and ``finger_points`` come from (see
            :func:`choose_finger_view`); None means ``source`` (fusions that pick one view for both).
        fitness: the pose view's tracker fitness (share of its considered points the model explains).
        views_apart_mm: distance (mm) between the two views' poses when both tracked the frame.
    """

    X_TG: np.ndarray
    X_CnG: np.ndarray
    confidence: float
    source: Literal["n", "m", "none"]
    status: Literal["ok", "lost"]
    width: float | None = None
    finger_points: tuple[int, int] = (0, 0)
    finger_source: Literal["n", "m", "none"] | None = None
    fitness: float = 0.0
    views_apart_mm: float | None = None

    @property
    def view_index(self) -> int:
        """Index of the pose's view (0 = n, 1 = m) into a two-view stack (``"none"`` -> 0)."""
        return 1 if self.source == "m" else 0

    @property
    def finger_view(self) -> int:
        """Index of the finger view (0 = n, 1 = m) into a two-view stack (``"none"`` -> 0)."""
        return 1 if (self.finger_source or self.source) == "m" else 0


def _finger_evidence(result: TrackResult) -> tuple[int, int]:
    """How well a result observed the fingers: (points on the less seen finger, on both)."""
    left, right = (int(x) for x in result.finger_points)
    return min(left, right), left + right


def choose_finger_view(candidates: Sequence[tuple[TrackResult, str]],
                       pose_source: str) -> tuple[TrackResult, str]:
    """The candidate (result, view) whose tracker saw the fingers best.

    Ranked by the finger inliers on the less seen finger, then on both fingers: with both fingers
    seen the opening is fitted from both sides, and on recorded apple clips the fitted width's
    error falls from a median 9 mm with a finger unseen to 0.3 mm with five points on each.
    Ties (e.g. no finger seen in either view) keep the pose's view, ``pose_source``. (A gate
    that let a view compete only while its pose agreed with the pose view's was dropped: it
    changed no reading on development seeds; docs/decisions.md.)

    Args:
        candidates: the frame's usable ``(result, view name)`` pairs (tracked, finite pose).
        pose_source: the view the pose was taken from (one of the candidates).

    Returns:
        The chosen ``(result, view name)``.
    """
    by_view = {name: r for r, name in candidates}
    best = (by_view[pose_source], pose_source)
    for r, name in candidates:
        if name != pose_source and _finger_evidence(r) > _finger_evidence(best[0]):
            best = (r, name)
    return best


def fuse_views(
    results_n: Sequence[TrackResult],
    results_m: Sequence[TrackResult] | None,
    *,
    X_TCn: np.ndarray,
) -> list[FusedPose]:
    """Per frame, keep the more confident of the two views' results and express it in T.

    Args:
        results_n: per-frame results of the tracker on ``X^n``.
        results_m: per-frame results on ``X^{m->n}`` (same length), or None for one view.
        X_TCn: pose of camera n in the task frame.

    Returns:
        One :class:`FusedPose` per frame.
    """
    X_TCn = np.asarray(X_TCn, dtype=np.float64)
    if X_TCn.shape != (4, 4) or not np.isfinite(X_TCn).all():
        raise ValueError(f"X_TCn must be a finite 4x4 transform, got shape {X_TCn.shape}")
    if results_m is not None and len(results_m) != len(results_n):
        raise ValueError(f"view n has {len(results_n)} frames, view m {len(results_m)}")
    out: list[FusedPose] = []
    for t, rn in enumerate(results_n):
        rm = None if results_m is None else results_m[t]
        cands = [(rn, "n")] + ([(rm, "m")] if rm is not None else [])
        ok = [(r, s) for r, s in cands if r.ok and r.confidence > 0 and np.isfinite(r.X_CG).all()]
        if ok:
            # max() keeps the first of equals, so view n wins ties.
            best, src = max(ok, key=lambda rs: rs[0].confidence)
            X_CnG = np.asarray(best.X_CG, dtype=np.float64)
            # The opening from the view that saw the fingers best, not necessarily the pose's
            # (see the module docstring).
            fr, fsrc = choose_finger_view(ok, src)
            apart = None
            if len(ok) == 2:
                apart = float(np.linalg.norm(np.asarray(ok[0][0].X_CG)[:3, 3] - np.asarray(ok[1][0].X_CG)[:3, 3])) * 1e3
            out.append(FusedPose(X_TCn @ X_CnG, X_CnG.copy(), float(best.confidence), src, "ok", fr.width,
                                 tuple(fr.finger_points), fsrc, float(best.fitness), apart))
            continue
        if out:
            X_CnG = out[-1].X_CnG
            width = out[-1].width
        else:
            # Nothing good yet: the trackers' held poses (their hints) are the best guess.
            held = [r for r, _ in cands if np.isfinite(r.X_CG).all()]
            X_CnG = np.asarray(held[0].X_CG, dtype=np.float64) if held else np.eye(4)
            width = held[0].width if held else None
        out.append(FusedPose(X_TCn @ X_CnG, X_CnG.copy(), 0.0, "none", "lost", width))
    return out


@dataclasses.dataclass(frozen=True)
class FailSafeConfig:
    """When :func:`fail_safe` loses a tracked frame (the values were read off development-seed
    data; docs/decisions.md).

    Attributes:
        enabled: apply the check; False reports the tracks as tracked (the ablation).
        see_through_limit: a fused pose whose gripper surface is seen through
            (:func:`~geo4d_policy.perception.projection.see_through_fraction`) by more than this
            share in every view with a known projection is lost.
        unsegmented_min_fitness: a pose tracked in an unsegmented frame must explain at least
            this share of the points inside the gripper's box at that pose.
        views_apart_mm: where both views tracked a frame but their poses lie more than this
            (mm) apart, one of them is wrong ...
        disagreed_min_fitness: ... and the fused pose is kept only if its model explains at
            least this share of its view's points.
    """

    enabled: bool = True
    see_through_limit: float = 0.3
    unsegmented_min_fitness: float = 0.7
    views_apart_mm: float = 30.0
    disagreed_min_fitness: float = 0.9

    def __post_init__(self) -> None:
        shares = (self.see_through_limit, self.unsegmented_min_fitness, self.disagreed_min_fitness)
        if not all(0.0 <= v <= 1.0 for v in shares) or not self.views_apart_mm > 0:
            raise ValueError("fail-safe shares (see_through_limit, unsegmented_min_fitness, disagreed_min_fitness) "
                             f"must be in [0, 1] and views_apart_mm > 0, got {shares} and {self.views_apart_mm}")


def fail_safe(fused: Sequence[FusedPose], views: Sequence[Sequence[TrackingFrame]], *,
              model: GripperModel, config: FailSafeConfig | None = None) -> list[FusedPose]:
    """Mark as lost the fused frames whose pose the frames themselves contradict.

    A tracker fitting the gripper model to whatever lies near its prediction (unsegmented
    frames, or a segmentation that failed) can report a confident pose centimetres off the
    gripper. Three checks of the pose against its frames catch that, and a frame failing any
    becomes ``"lost"`` (confidence 0, the previous fused pose held), as :func:`fuse_views`
    marks a frame both views lost (thresholds: :class:`FailSafeConfig`):

    * seen through: at a pose off the gripper the cameras see through much of the model's
      surface (a gripper there would hide the scene they see), which a pose on the gripper
      does not: more than ``see_through_limit`` in each view with a known projection;
    * unexplained points: in an unsegmented frame the tracker's fitness is the share of the
      points inside the gripper's box at its pose that the model explains; a pose on the
      gripper explains nearly all of them, one on the scene beside it leaves many: a pose view
      frame without labels and a fitness below ``unsegmented_min_fitness``;
    * disagreeing views: both views tracked the frame, more than ``views_apart_mm`` apart, and
      the chosen pose's fitness is below ``disagreed_min_fitness`` (the segmentation of one
      view can take the held object for the gripper, and its fit then looks fair).

    Args:
        fused: one arm's fused track.
        views: per frame, the views' :class:`TrackingFrame` as they were tracked (view n first;
            their labels or mask tell a segmented frame), with, for a view whose pixels are not
            camera n's, its ``K`` and ``X_CnCv`` (without them the projection is fitted to the
            pointmap, which only holds for view n).
        model: the gripper model.
        config: the thresholds (default :class:`FailSafeConfig`); ``enabled=False`` returns
            the track unchanged.
    """
    if len(views) != len(fused):
        raise ValueError(f"{len(fused)} fused frames but {len(views)} frames of views")
    cfg = config or FailSafeConfig()
    if not cfg.enabled:
        return list(fused)
    out: list[FusedPose] = []
    for f, frame_views in zip(fused, views):
        if f.status == "ok":
            width = model.stroke / 2 if f.width is None else float(f.width)
            shares = [s for s in (see_through_fraction(v, f.X_CnG, width, model=model) for v in frame_views)
                      if s is not None]
            pose_view = frame_views[min(f.view_index, len(frame_views) - 1)]
            unexplained = not pose_view.segmented and f.fitness < cfg.unsegmented_min_fitness
            disagreed = (f.views_apart_mm is not None and f.views_apart_mm > cfg.views_apart_mm
                         and f.fitness < cfg.disagreed_min_fitness)
            if unexplained or disagreed or (shares and min(shares) > cfg.see_through_limit):
                held = out[-1] if out else f
                f = dataclasses.replace(f, X_TG=held.X_TG.copy(), X_CnG=held.X_CnG.copy(), confidence=0.0,
                                        source="none", status="lost")
        out.append(f)
    return out


def fuse_arms(
    per_arm: Mapping[str, tuple[Sequence[TrackResult], Sequence[TrackResult] | None]],
    *,
    X_TCn: np.ndarray,
) -> dict[str, list[FusedPose]]:
    """:func:`fuse_views` for each arm: ``{arm: (results_n, results_m)}`` -> ``{arm: fused}``."""
    return {arm: fuse_views(rn, rm, X_TCn=X_TCn) for arm, (rn, rm) in per_arm.items()}


# --------------------------------------------------------------------------------------------
# Two-view ray fusion of RGB-only estimates (Dreamitate's stereo step)
# --------------------------------------------------------------------------------------------


def fuse_rays(
    X_C1G: np.ndarray,
    X_C2G: np.ndarray,
    *,
    X_TC1: np.ndarray,
    X_TC2: np.ndarray,
    confidences: Sequence[float] | None = None,
    min_ray_angle: float = float(np.deg2rad(2.0)),
) -> np.ndarray:
    """Fuse two views' gripper poses into one ``X_TG`` (Dreamitate's stereo step).

    Translation: each view's estimate defines a ray from its camera centre through the
    estimated gripper origin (the image position is what an RGB-only estimate gets right;
    its depth is only as good as the model-size argument). The fused origin is the midpoint
    of the two rays' closest points, weighted by confidence (equal confidences give the plain
    midpoint). When the rays are within ``min_ray_angle`` of parallel, or the closest points
    lie behind a camera, triangulation says nothing and the confidence-weighted mean of the
    two per-view positions is used instead.

    Rotation: the chordal L2 mean, i.e. the rotation nearest (Frobenius) to the
    confidence-weighted sum of the two rotation matrices.

    Args:
        X_C1G: 4x4 gripper pose in camera 1.
        X_C2G: 4x4 gripper pose in camera 2.
        X_TC1: 4x4 pose of camera 1 in the task frame.
        X_TC2: 4x4 pose of camera 2 in the task frame.
        confidences: two non-negative weights (default equal; all zero also means equal).
        min_ray_angle: rays closer to parallel than this (radians) are not triangulated.

    Returns:
        4x4 ``X_TG``.

    Raises:
        ValueError: a pose is not a finite 4x4, or the confidences are not two finite
            non-negative numbers.
    """
    X_TG1 = checked_transform(X_TC1, "X_TC1") @ checked_transform(X_C1G, "X_C1G")
    X_TG2 = checked_transform(X_TC2, "X_TC2") @ checked_transform(X_C2G, "X_C2G")
    w = np.ones(2) if confidences is None else np.asarray(confidences, dtype=np.float64).reshape(-1)
    if w.shape != (2,) or not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"confidences must be two finite non-negative numbers, got {confidences}")
    w = np.ones(2) if w.sum() <= 0 else w / w.sum()
    p1, p2 = X_TG1[:3, 3], X_TG2[:3, 3]
    o1, o2 = np.asarray(X_TC1, dtype=np.float64)[:3, 3], np.asarray(X_TC2, dtype=np.float64)[:3, 3]
    X = np.eye(4)
    X[:3, :3] = nearest_rotation(w[0] * X_TG1[:3, :3] + w[1] * X_TG2[:3, :3])
    X[:3, 3] = w[0] * p1 + w[1] * p2
    d1, d2 = p1 - o1, p2 - o2
    n1, n2 = np.linalg.norm(d1), np.linalg.norm(d2)
    if n1 < 1e-9 or n2 < 1e-9:
        return X  # an estimate at a camera centre defines no ray
    d1, d2 = d1 / n1, d2 / n2
    # Closest points o1 + s d1 and o2 + t d2 of the two lines (unit directions).
    b = float(d1 @ d2)
    sin2 = 1.0 - b * b
    if sin2 < np.sin(min_ray_angle) ** 2:
        return X
    r = o1 - o2
    s = (b * float(d2 @ r) - float(d1 @ r)) / sin2
    t = (float(d2 @ r) - b * float(d1 @ r)) / sin2
    if s <= 0.0 or t <= 0.0:
        return X  # the rays meet behind a camera: the estimates are inconsistent
    X[:3, 3] = w[0] * (o1 + s * d1) + w[1] * (o2 + t * d2)
    return X


def fuse_rgb_views(
    results_1: Sequence[TrackResult],
    results_2: Sequence[TrackResult],
    *,
    X_TC1: np.ndarray,
    X_TC2: np.ndarray,
) -> list[FusedPose]:
    """Per frame, :func:`fuse_rays` of two views' RGB-only results, as :class:`FusedPose`.

    View 1 plays view n (``X_CnG`` is in camera 1, ``source="n"``), view 2 view m. When both
    views are ok the poses are ray-fused with their confidences as weights (``source="n"``,
    confidence the mean of the two: ``FusedPose`` has no two-view source); when one view is
    lost the other view's full pose is used; when both are, the previous fused pose is held
    (confidence 0, ``source="none"``, status ``"lost"``), or before any good frame view 1's held
    pose (its hint), else view 2's.

    Args:
        results_1: per-frame results of the estimator in camera 1 (``X_C1G``).
        results_2: per-frame results in camera 2 (same length).
        X_TC1: 4x4 pose of camera 1 in the task frame.
        X_TC2: 4x4 pose of camera 2 in the task frame.

    Returns:
        One :class:`FusedPose` per frame.

    Raises:
        ValueError: the sequences differ in length or a camera pose is not a finite 4x4.
    """
    X_TC1 = checked_transform(X_TC1, "X_TC1")
    X_TC2 = checked_transform(X_TC2, "X_TC2")
    if len(results_1) != len(results_2):
        raise ValueError(f"view 1 has {len(results_1)} frames, view 2 {len(results_2)}")
    X_C1T = invert_transform(X_TC1)

    def usable(r: TrackResult) -> bool:
        return r.ok and r.confidence > 0 and np.isfinite(r.X_CG).all()

    out: list[FusedPose] = []
    for r1, r2 in zip(results_1, results_2):
        ok1, ok2 = usable(r1), usable(r2)
        if ok1 and ok2:
            X_TG = fuse_rays(r1.X_CG, r2.X_CG, X_TC1=X_TC1, X_TC2=X_TC2,
                             confidences=(r1.confidence, r2.confidence))
            widths = [r.width for r in (r1, r2) if r.width is not None]
            fused = FusedPose(X_TG, X_C1T @ X_TG, 0.5 * (r1.confidence + r2.confidence), "n", "ok",
                              float(np.mean(widths)) if widths else None)
        elif ok1 or ok2:
            r, X_TC, src = (r1, X_TC1, "n") if ok1 else (r2, X_TC2, "m")
            X_TG = X_TC @ np.asarray(r.X_CG, dtype=np.float64)
            fused = FusedPose(X_TG, X_C1T @ X_TG, float(r.confidence), src, "ok", r.width)
        elif out:
            prev = out[-1]
            fused = FusedPose(prev.X_TG.copy(), prev.X_CnG.copy(), 0.0, "none", "lost", prev.width)
        else:
            held = [(r, X_TC) for r, X_TC in ((r1, X_TC1), (r2, X_TC2)) if np.isfinite(r.X_CG).all()]
            X_TG = held[0][1] @ np.asarray(held[0][0].X_CG, dtype=np.float64) if held else np.eye(4)
            fused = FusedPose(X_TG, X_C1T @ X_TG, 0.0, "none", "lost", held[0][0].width if held else None)
        out.append(fused)
    return out

"""Tracking both grippers through a predicted two-view 4D video (the paper's section 3.4, per replan).

This module owns the step between a video source (the generator, the oracle's look-ahead, ...)
and the receding-horizon controller:

* :class:`PredictedVideo`: F future frames of both views, pointmaps in camera n's frame
  (``X^n`` and ``X^{m->n}``), optional RGB and per-arm part labels (from a segmenter, or ground
  truth for the oracle).
* :class:`CurrentView`: the conditioning frame of view n as observed (real depth, and part
  labels from the simulator's label image: SAM2's role in the paper), where every track starts.
* :func:`track_video`: for each arm, register the gripper on the current frame (seeded with the
  pose the robot reports, ``X_CnT @ X_TG``), track it through view n's and view m's predicted
  pointmaps, keep the more confident view per frame (:func:`fusion.fuse_views`) and measure the
  finger opening per frame in the view that saw the fingers best (the tracker's fitted opening
  where it saw them well, else the finger-cluster centroid distance where the fingers are
  segmented, else the fitted opening), mapped to a centroid distance. Frames whose fused pose
  the views contradict are lost (:func:`fusion.fail_safe`).

Both views' tracks start from the same registered frame: ``X^{m->n}`` lives in camera n's frame,
so the current view n is the right first frame for both, and no calibration of m is needed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from geo4d_policy.data.geometry import invert_transform
from geo4d_policy.perception.fusion import FailSafeConfig, FusedPose, fail_safe, fuse_views
from geo4d_policy.perception.gripper_model import PART_LEFT, PART_RIGHT, GripperModel
from geo4d_policy.perception.gripper_state import measure_finger_opening
from geo4d_policy.perception.icp_core import ICPTrackerConfig
from geo4d_policy.perception.icp_tracker import ICPGripperTracker, register_all, track_all
from geo4d_policy.perception.pose_tracker import PoseTracker, TrackingFrame, TrackResult
from geo4d_policy.perception.projection import finger_see_through


MIN_MASK_PIXELS = 20
"""A segmented frame with fewer gripper pixels than this is tracked as unsegmented."""

SEEN_FINGER_POINTS = 8
"""Tracker inliers on a finger from which its fitted opening is trusted over point centroids."""


def fingers_seen(fused: FusedPose) -> bool:
    """Whether the frame's finger view saw a finger well (``SEEN_FINGER_POINTS`` inliers): the
    fitted opening is then a measurement, not the tracker's prior."""
    return max(fused.finger_points) >= SEEN_FINGER_POINTS

FINGER_REGION_MARGIN = 0.005
"""Masked points more than this beyond the finger joints (along G's z) count as finger points."""


@dataclasses.dataclass(frozen=True)
class PredictedVideo:
    """F predicted frames of views n and m.

    Attributes:
        pointmaps: (2, F, H, W, 3) float points in camera n's frame (view 0 = n, 1 = m), or
            None for an RGB-only video (then ``rgb`` is required).
        valid: (2, F, H, W) bool validity (None with ``pointmaps``).
        rgb: optional (2, F, H, W, 3) uint8 frames.
        part_labels: optional arm -> (2, F, H, W) int part codes (-1 none, 0 palm, 1/2 fingers).
        masks: optional arm -> (2, F, H, W) bool masks of the whole gripper, used for frames
            without part labels (a segmenter whose finger classes are unreliable still
            separates the gripper from the scene).
    """

    pointmaps: np.ndarray | None
    valid: np.ndarray | None
    rgb: np.ndarray | None = None
    part_labels: Mapping[str, np.ndarray] | None = None
    masks: Mapping[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.pointmaps is None:  # an RGB-only video (the Dreamitate baseline)
            rgb = np.asarray(self.rgb) if self.rgb is not None else None
            if rgb is None or rgb.ndim != 5 or rgb.shape[0] != 2 or rgb.shape[-1] != 3:
                raise ValueError("a video without pointmaps needs rgb of shape (2, F, H, W, 3)")
            grid = rgb.shape[:-1]
        else:
            pm = np.asarray(self.pointmaps)
            if pm.ndim != 5 or pm.shape[0] != 2 or pm.shape[-1] != 3:
                raise ValueError(f"pointmaps must be (2, F, H, W, 3), got {pm.shape}")
            valid = np.asarray(self.valid, dtype=bool) & np.isfinite(pm).all(axis=-1)
            if valid.shape != pm.shape[:-1]:
                raise ValueError(f"valid must be {pm.shape[:-1]}, got {np.shape(self.valid)}")
            object.__setattr__(self, "valid", valid)
            grid = pm.shape[:-1]
        for name, per_arm in (("part_labels", self.part_labels), ("masks", self.masks)):
            for arm, lab in (per_arm or {}).items():
                if np.shape(lab) != grid:
                    raise ValueError(f"{name}[{arm!r}] must be {grid}, got {np.shape(lab)}")

    @property
    def num_frames(self) -> int:
        return int(np.shape(self.pointmaps if self.pointmaps is not None else self.rgb)[1])


@dataclasses.dataclass(frozen=True)
class CurrentView:
    """The observed conditioning frame of view n.

    Attributes:
        pointmap: (H, W, 3) points in camera n's frame (from the measured depth).
        valid: (H, W) bool.
        part_labels: arm -> (H, W) part codes of that arm's gripper (None: unsegmented).
    """

    pointmap: np.ndarray
    valid: np.ndarray
    part_labels: Mapping[str, np.ndarray | None]


@dataclasses.dataclass(frozen=True)
class ArmTrack:
    """One arm through one prediction.

    Attributes:
        fused: fused poses of the tracked frames (1..F of the prediction, or fewer with ``max_frames``).
        registration: the result on the current frame (frame 0, view n).
        finger_distance: (F,) finger-cluster centroid distance per frame (m), NaN if unmeasured.
        per_view: the trackers' raw results on predicted frames, ``(view n, view m)``.
    """

    fused: list[FusedPose]
    registration: TrackResult
    finger_distance: np.ndarray
    per_view: tuple[list[TrackResult], list[TrackResult]]

    @property
    def confidence(self) -> np.ndarray:
        return np.array([f.confidence for f in self.fused])

    @property
    def X_TG(self) -> np.ndarray:
        return np.stack([f.X_TG for f in self.fused]) if self.fused else np.zeros((0, 4, 4))


def _frame_mask(masks: np.ndarray | None, valid: np.ndarray, t: int) -> np.ndarray | None:
    mask = None if masks is None else masks[t]
    if mask is not None and int(np.count_nonzero(mask & valid[t])) < MIN_MASK_PIXELS:
        # The segmenter missed the gripper in this (generated, often blurry) frame: track it
        # unsegmented near its predicted pose rather than declaring it lost.
        mask = None
    return mask


def _same_icp(a: PoseTracker, b: PoseTracker) -> bool:
    """Whether ``b`` registering on ``a``'s frame would end in ``a``'s state (same model, options)."""
    return (isinstance(a, ICPGripperTracker) and isinstance(b, ICPGripperTracker) and a.model is b.model
            and a.config == b.config)


FREE_SPACE_MIN_DIFFERENCE = 3
"""Seen-through finger samples by which the chosen candidate opening must beat the others."""

FREE_SPACE_MIN_RATIO = 1.5
"""... and the others must show at least this multiple of its seen-through samples."""


def free_space_opening(X_CnG: np.ndarray, views: Sequence[TrackingFrame], *, model: GripperModel,
                       widths: Sequence[float], min_difference: int = FREE_SPACE_MIN_DIFFERENCE,
                       min_ratio: float = FREE_SPACE_MIN_RATIO) -> float | None:
    """Of the candidate openings, the one whose fingers the views' free space contradicts least.

    Where the fingers show (almost) no points, their points cannot tell the opening, but the
    scene around them can: a finger at a wrong opening would stand where a camera sees through
    to something farther (:func:`projection.finger_see_through`). Both views count: on recorded
    apple clips view n alone rarely decides. A few seen-through samples come with any opening
    (a finger is a few pixels wide, and a rounded projection lands some of its samples on the
    pixels beside it), more where more of the fingers is in view, so a candidate must beat the
    others both by a count and by a ratio.

    Args:
        X_CnG: the gripper pose in camera n's frame.
        views: the frames to test in (each with the projection of its own pixels, see
            :func:`projection.finger_see_through`); views without one are skipped.
        model: the gripper model.
        widths: candidate openings (m), e.g. the task's held-object width and the stroke.
        min_difference: every other candidate must have at least this many more samples.
        min_ratio: ... and at least this multiple of the best one's samples.

    Returns:
        The chosen opening, or None when no view can be projected or no candidate is clearly best.
    """
    counts = np.zeros(len(widths))
    used = False
    for frame in views:
        c = finger_see_through(frame, X_CnG, [float(w) for w in widths], model=model)
        if c is None:
            continue
        counts += np.asarray(c, dtype=np.float64)
        used = True
    if not used or len(widths) < 2:
        return None
    order = np.argsort(counts, kind="stable")
    best, runner_up = counts[order[0]], counts[order[1]]
    if runner_up < max(best + min_difference, min_ratio * best):
        return None
    return float(widths[int(order[0])])


def fused_finger_distance(fused: FusedPose, points: np.ndarray, valid: np.ndarray, *, model: GripperModel,
                          part_labels: np.ndarray | None = None, mask: np.ndarray | None = None,
                          views: Sequence[TrackingFrame] | None = None,
                          candidate_widths: Sequence[float] | None = None) -> float:
    """Finger centroid distance of one fused frame (NaN if unmeasurable): what open/close reads.

    When the tracker saw a finger well (``SEEN_FINGER_POINTS`` inliers), its fitted opening is
    used: fitting the finger models accounts for the parts of the fingers out of view, which
    bias a centroid of the visible points (a finger half hidden inside the shelf read as closed
    and dragged the released box back out). Otherwise the clusters in the chosen view: with
    part labels the labelled fingers; with a whole-gripper mask the masked points beyond the
    palm (the finger region of the tracked pose), split by the closing axis; else the fitted
    opening.

    The measurement is taken in the fused frame's finger view (``fused.finger_view``: the view
    whose tracker saw the fingers best), not necessarily the view its pose came from; callers
    pass that view's pointmap and segmentation. Both views' points are in camera n's frame, so
    the fused pose splits either view's finger points.

    Where the fingers were not seen well and ``candidate_widths`` and ``views`` are given, the
    free space around the fingers in all views chooses among the candidate openings first
    (:func:`free_space_opening`): a few finger pixels, or none, leave the clusters and the fitted
    opening to noise and to the tracker's prior (on recorded apple clips the fitted opening of
    such frames stuck at a value read from one or two finger pixels for the rest of a track).
    If the free space does not decide and the finger view has no finger inlier at all, the
    frame is unmeasured (NaN) rather than read from the tracker's prior.

    Args:
        fused: the frame's fused pose (its finger view is the one ``points`` belong to).
        points, valid: (H, W, 3) pointmap of that view in camera n's frame and its validity.
        model: the gripper model.
        part_labels: optional (H, W) part codes of that view.
        mask: optional (H, W) whole-gripper mask of that view (used without part labels).
        views: optional frames of every view (pointmaps in camera n's frame, each with its
            pixels' projection) for the free-space choice.
        candidate_widths: optional openings the hand takes in the task (e.g. holding its object,
            and the stroke); None leaves the free-space choice out.
    """
    fitted = fused.status == "ok" and fused.width is not None and np.isfinite(fused.width)
    if fitted and fingers_seen(fused):
        return float(model.finger_centroid_distance(float(np.clip(fused.width, 0.0, model.stroke))))
    if fused.status == "ok" and views and candidate_widths:
        w = free_space_opening(fused.X_CnG, views, model=model, widths=candidate_widths)
        if w is not None:
            return float(model.finger_centroid_distance(w))
        if max(fused.finger_points) == 0:
            # No finger inlier in the finger view and no clear free space: the fitted opening is
            # the tracker's prior (at first half the stroke), not a reading; none is better.
            return float("nan")
    if fused.status == "ok" and (part_labels is not None or mask is not None):
        pts = np.asarray(points)
        if part_labels is not None:
            lab = np.asarray(part_labels)
            sel = valid & ((lab == PART_LEFT) | (lab == PART_RIGHT))
            m = measure_finger_opening(pts[sel], model=model, X_CG=fused.X_CnG, part_labels=lab[sel])
        else:
            q = pts[valid & np.asarray(mask, dtype=bool)].astype(np.float64)
            X_GC = invert_transform(fused.X_CnG)
            z_G = q @ X_GC[2, :3] + X_GC[2, 3]
            finger = (z_G > model.finger_joint_z + FINGER_REGION_MARGIN) & (z_G < model.tcp_z + FINGER_REGION_MARGIN)
            m = measure_finger_opening(q[finger], model=model, X_CG=fused.X_CnG)
        # A distance the open gripper cannot reach means the clusters hold other points (e.g. a
        # held object segmented as gripper): no measurement rather than a false "open".
        if m.distance is not None and m.distance <= model.finger_centroid_distance(model.stroke) + FINGER_REGION_MARGIN:
            return float(m.distance)
    if fitted:
        return float(model.finger_centroid_distance(float(np.clip(fused.width, 0.0, model.stroke))))
    return float("nan")


def _finger_distance(video: PredictedVideo, arm: str, fused: FusedPose, t: int, model: GripperModel, *,
                     candidate_widths: Sequence[float] | None = None,
                     view_cameras: Sequence[tuple[np.ndarray | None, np.ndarray | None]] | None = None) -> float:
    """:func:`fused_finger_distance` of frame ``t`` of a predicted video (in the finger view)."""
    v = fused.finger_view
    labels = (video.part_labels or {}).get(arm)
    masks = (video.masks or {}).get(arm)
    views = None
    if candidate_widths is not None:
        cams = view_cameras or [(None, None)] * 2
        views = [TrackingFrame(video.pointmaps[u, t], np.asarray(video.valid[u, t], dtype=bool), K=cams[u][0],
                               X_CnCv=cams[u][1]) for u in range(video.pointmaps.shape[0])]
    return fused_finger_distance(fused, video.pointmaps[v, t], np.asarray(video.valid[v, t], dtype=bool), model=model,
                                 part_labels=None if labels is None else labels[v, t],
                                 mask=None if masks is None else masks[v, t],
                                 views=views, candidate_widths=candidate_widths)


def track_video(
    video: PredictedVideo,
    current: CurrentView,
    *,
    X_TCn: np.ndarray,
    X_TG_now: Mapping[str, np.ndarray],
    width_now: Mapping[str, float] | None = None,
    max_frames: int | None = None,
    model: GripperModel | None = None,
    tracker_config: ICPTrackerConfig | None = None,
    trackers: Mapping[str, Sequence[PoseTracker]] | None = None,
    single_view: bool = False,
    candidate_widths: Sequence[float] | None = None,
    view_cameras: Sequence[tuple[np.ndarray | None, np.ndarray | None]] | None = None,
    fail_safe_config: FailSafeConfig | None = None,
) -> dict[str, ArmTrack]:
    """Track every arm of ``X_TG_now`` through ``video`` (see the module docstring).

    Args:
        video: the predicted frames.
        current: the observed frame of view n the tracks start from.
        X_TCn: pose of camera n in T (the only extrinsic a policy knows).
        X_TG_now: arm -> the arm's measured gripper pose in T (proprioception).
        width_now: arm -> measured finger opening (m), the trackers' starting width.
        max_frames: track only the first frames (a policy executes only a few of them).
        model: the gripper model (default: the repository's).
        tracker_config: options of the default ICP trackers.
        trackers: optional arm -> (tracker for view n, tracker for view m) to use instead.
        single_view: track only in view n (ablation; ``video`` still holds both views).
        candidate_widths: openings the hand takes in the task (e.g. holding its object, and the
            stroke); where the fingers were not seen well, the free space around them chooses
            among these (:func:`fused_finger_distance`). None leaves that out.
        view_cameras: per view, ``(K, X_CnCv)`` of the camera that owns its pixels (view n:
            ``X_CnCv`` None), for the trackers' projection and camera-facing surface, the
            free-space choice and the consistency check. ``(None, None)`` for view m (its pose
            unknown): the projection is fitted to the pointmap, which holds for view n only, so
            view m then gives no occlusion or free-space evidence and its camera-facing surface
            is judged from camera n. A ``K`` without ``X_CnCv`` means camera n's pixels.
        fail_safe_config: when frames whose fused pose the views contradict are lost
            (:func:`fusion.fail_safe`; default :class:`~geo4d_policy.perception.fusion.FailSafeConfig`,
            ``enabled=False`` for none).

    Returns:
        arm -> :class:`ArmTrack`.
    """
    if video.pointmaps is None:
        raise ValueError("track_video tracks in pointmaps: this video is RGB-only")
    model = model or GripperModel.load()
    X_CnT = invert_transform(np.asarray(X_TCn, dtype=np.float64))
    cams = list(view_cameras) if view_cameras is not None else [(None, None)] * 2
    if len(cams) != 2:
        raise ValueError(f"view_cameras needs (K, X_CnCv) for views n and m, got {len(cams)} entries")
    F = video.num_frames if max_frames is None else max(1, min(int(max_frames), video.num_frames))
    views = (0,) if single_view else (0, 1)
    pairs: dict[str, list[PoseTracker]] = {}
    hints: dict[str, np.ndarray] = {}
    for arm, X_TG in X_TG_now.items():
        hints[arm] = X_CnT @ np.asarray(X_TG, dtype=np.float64)
        if trackers is not None and arm in trackers:
            pairs[arm] = list(trackers[arm])
        else:
            base = ICPGripperTracker(model, config=tracker_config)
            pairs[arm] = [base, base.clone()]
    # Every view's track starts on the current view n with the robot's pose as hint: register
    # once per arm and copy the state to view m's tracker when registering it would do the same.
    reg_jobs, reg_of = [], {}
    for arm in X_TG_now:
        first = TrackingFrame(current.pointmap, current.valid, None, current.part_labels.get(arm), K=cams[0][0])
        for v in views:
            pair = pairs[arm]
            if v > 0 and _same_icp(pair[0], pair[v]):
                continue
            reg_of[(arm, v)] = len(reg_jobs)
            reg_jobs.append((pair[v], first, hints[arm]))
    for tracker, _, _ in reg_jobs:
        tracker.reset()
    reg_results = register_all(reg_jobs)
    registration: dict[tuple[str, int], TrackResult] = {}
    for arm in X_TG_now:
        pair = pairs[arm]
        width = None if width_now is None else width_now.get(arm)
        for v in views:
            if (arm, v) not in reg_of:
                pair[v].copy_state_from(pair[0])
                registration[(arm, v)] = registration[(arm, 0)]
                continue
            registration[(arm, v)] = reg_results[reg_of[(arm, v)]]
            if not registration[(arm, v)].ok and hasattr(pair[v], "start_from"):
                # The current view does not show this gripper (occluded or out of frame), but the
                # robot reports where it is: track the predicted frames from there.
                pair[v].start_from(hints[arm], width=width)
    per_view: dict[tuple[str, int], list[TrackResult]] = {(arm, v): [] for arm in X_TG_now for v in views}
    tracked: dict[tuple[str, int], list[TrackingFrame]] = {key: [] for key in per_view}
    for t in range(F):
        jobs, keys = [], []
        for arm in X_TG_now:
            labels = (video.part_labels or {}).get(arm)
            masks = (video.masks or {}).get(arm)
            for v in views:
                frame = TrackingFrame(video.pointmaps[v, t], video.valid[v, t],
                                      _frame_mask(None if masks is None else masks[v], video.valid[v], t),
                                      None if labels is None else labels[v, t], K=cams[v][0], X_CnCv=cams[v][1])
                jobs.append((pairs[arm][v], frame))
                keys.append((arm, v))
                tracked[(arm, v)].append(frame)
        for key, result in zip(keys, track_all(jobs)):
            per_view[key].append(result)
    out: dict[str, ArmTrack] = {}
    for arm in X_TG_now:
        res_n = per_view[(arm, 0)]
        res_m = None if single_view else per_view[(arm, 1)]
        fused = fuse_views(res_n, res_m, X_TCn=X_TCn)
        if fail_safe_config is None or fail_safe_config.enabled:
            # Each frame as it was tracked, with the projection of its own pixels.
            fused = fail_safe(fused, [[tracked[(arm, v)][t] for v in views] for t in range(len(fused))],
                              model=model, config=fail_safe_config)
        dist = np.array([_finger_distance(video, arm, f, t, model, candidate_widths=candidate_widths,
                                          view_cameras=view_cameras) for t, f in enumerate(fused)])
        out[arm] = ArmTrack(fused, registration[(arm, 0)], dist, (res_n, res_m or []))
    return out

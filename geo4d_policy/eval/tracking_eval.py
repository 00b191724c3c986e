"""Gripper tracking accuracy on ground-truth RGB-D video of held-out views (``geo4d-eval-tracking``).

This module owns the evaluation of the perception half of the pipeline in isolation from the
generator: the frames a perfect generator would predict (the recorded future frames of two
held-out cameras) go through the same steps as a policy's prediction, and the result is
compared with the robot's measured gripper poses.

Per clip (a start frame t, ``n_future`` following 2 Hz frames, two distinct held-out cameras
n and m drawn at random) and per arm visible at t:
  * pointmaps from the recorded depth: ``X^n`` in camera n's frame and ``X^{m->n}`` through the
    ground-truth ``X_CnCm`` (the generator's job; misregistration perturbs it, see below);
  * :func:`~geo4d_policy.perception.pose_tracker.track_gripper_sequences` on both views, with part
    labels (:data:`LABEL_SOURCES`) from the recorded masks or from a :class:`GripperSegmenter`
    on the recorded RGB, on frame t only (then unsegmented frames, as on a predicted video
    with a first-frame mask) or on every frame; frame t's pose hint is the robot's measured
    pose (a policy always knows it), unless ``use_hint`` is off; each view with the camera that
    owns its pixels (intrinsics, and for view m the recorded ``X_CnCm``), from which the
    tracker judges image border, occlusion and camera-facing surface;
  * :func:`~geo4d_policy.perception.fusion.fuse_views` (most confident view per frame for the
    pose, mapped to T with ``X_TCn``; the view that saw the fingers best for the opening);
  * open/closed with :class:`~geo4d_policy.perception.gripper_state.GripperStateEstimator` on
    :func:`~geo4d_policy.perception.video_tracking.fused_finger_distance` of the finger view:
    the tracker's fitted opening where it saw a finger well, else (``free_space``, tasks with an
    object width) the one of "holding the object" and "open" whose fingers the two views' free
    space contradicts clearly less, or no reading (the state held) when that does not decide
    and the finger view has no finger inlier, else the finger-cluster centroid distance of the
    labelled finger points, else the fitted opening (fingers are a few pixels each at 128x160).
    This is how the video policy reads it (``VideoPolicyConfig.free_space``), except that the
    policy estimates camera m's pose from the prediction (:func:`video_policy.view_cameras`)
    where the eval takes the recorded calibration; ``free_space=False`` measures the reading
    without the free-space step.

Ground truth: the tracker's ``X_CG`` is the pose of ``G`` = ``panda_link8`` (the gripper model's
frame, :mod:`~geo4d_policy.perception.gripper_model`), the frame the dataset records as
``robot/X_TG`` at 10 Hz; video frames are recorded on robot steps, so each frame's pose is the
robot sample at the same time. Open/closed: the robot's measured width against the
estimator's decision width (the width whose centroid distance is the mid-point of its two
hysteresis thresholds). Thresholds are per task (:attr:`TrackingEvalConfig.object_width`):
the default "closed below half the stroke" never fires for the apple, which the hand holds at
6.3 cm of its 8 cm stroke.

Metrics are over the future frames (t+1 ... t+F; frame t is the registration): translation
error median / p90 (mm), rotation error median / p90 (deg), lost rate (fused status
``"lost"``: both views lost the gripper, or the frames contradict the fused pose,
:func:`~geo4d_policy.perception.fusion.fail_safe`), open/close accuracy (also split by whether the
fingers were seen well in the finger view), and tracking time per frame (both views and fusion,
wall clock). Lost frames keep the held pose and count in the errors. Failing safe:
``far_off_rate`` is the share of frames more than :data:`FAR_OFF_MM` off, and
``confidently_wrong_rate`` the share that is that far off yet reported with a confidence the
policy trusts (:data:`TRUSTED_CONFIDENCE`, not lost): those frames would be executed.

The default label source is the policy's setting: labels on every frame, from the segmenter
(``segmenter_all``) or, without one, from the recorded masks (``masks_all``).

Degradations of the recorded frames (each evaluated separately, seeded per clip):
  * ``noise``: Gaussian depth noise (``depth_noise_m``) on valid pixels of both views;
  * ``dropout``: a random ``dropout`` share of pixels of both views becomes invalid;
  * ``misreg``: view m's points are moved by a rigid error of ``misreg_m`` / ``misreg_deg``
    (random directions) in camera n's frame: an imperfect ``X^{m->n}``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from geo4d_policy.control.receding_horizon import RecedingHorizonConfig
from geo4d_policy.data.format import DatasetError, EpisodeReader, load_meta
from geo4d_policy.data.geometry import (
    depth_to_pointmap,
    invert_transform,
    relative_camera_transform,
    transform_points,
)
from geo4d_policy.perception.fusion import FailSafeConfig, fail_safe, fuse_views
from geo4d_policy.perception.gripper_model import GripperModel
from geo4d_policy.perception.gripper_state import GripperStateEstimator
from geo4d_policy.perception.metrics import pose_errors
from geo4d_policy.task_settings import held_object_widths
from geo4d_policy.perception.icp_core import ICPTrackerConfig
from geo4d_policy.perception.icp_tracker import ICPGripperTracker
from geo4d_policy.perception.pose_tracker import TrackingFrame, part_label_image, track_gripper_sequences
from geo4d_policy.perception.video_tracking import fingers_seen, fused_finger_distance

DEGRADATIONS: tuple[str, ...] = ("none", "noise", "dropout", "misreg")

FAR_OFF_MM = 30.0
"""A tracked frame further than this from the truth must not be trusted (the tracking must fail
safe: low confidence or lost)."""

TRUSTED_CONFIDENCE = RecedingHorizonConfig().min_confidence
"""The confidence from which the policy executes a tracked frame."""
LABEL_SOURCES: tuple[str, ...] = ("masks", "masks_all", "segmenter", "segmenter_all")
"""Where part labels come from: the recorded masks or the segmenter on the recorded RGB, on frame t
only (then unsegmented frames, as on a predicted video with a first-frame mask) or on every
frame (``_all``: a segmenter run on every predicted RGB frame; ``masks_all`` is its upper bound)."""


@dataclasses.dataclass
class TrackingEvalConfig:
    """Options of :func:`evaluate_tracking`.

    Attributes:
        clips: clips drawn per dataset (fewer if the dataset has fewer start frames).
        n_future: future frames per clip (10, as a prediction).
        degradations: which of :data:`DEGRADATIONS` to run (each on every clip).
        depth_noise_m: std of the ``noise`` degradation (m).
        dropout: share of pixels dropped by ``dropout``.
        misreg_m, misreg_deg: size of the ``misreg`` rigid error of view m.
        labels: part-label sources to evaluate (:data:`LABEL_SOURCES`).
        segmenter: checkpoint of the segmenter (needed for ``labels`` containing it).
        use_hint: seed frame t's registration with the robot's measured pose (and the gripper state
            with its measured width, as a policy knows both).
        min_part_pixels: an arm is evaluated on a clip when at least this many of its valid
            gripper pixels are in the recorded masks of frame t in one of the two views.
        object_width: task -> width (m) of the object the hand closes on; the task's estimator
            uses :meth:`GripperStateEstimator.for_object_width` (tasks not listed: defaults;
            default: the tasks' ``held_object_width`` in ``configs/tasks.yaml``).
        free_space: where the fingers were not seen well, choose between this width and the
            stroke by the views' free space around the fingers
            (:func:`~geo4d_policy.perception.video_tracking.free_space_opening`); tasks without
            an object width never do.
        fail_safe: when frames whose fused pose the views contradict are lost, as the policy
            loses them (:func:`~geo4d_policy.perception.fusion.fail_safe`); ``enabled: false``
            measures the tracker without that check.
        seed: clip, camera-pair and degradation draws.
        tracker: options of the ICP trackers (both views); ``tracker.engine`` / ``tracker.device``
            choose the numpy (CPU) or torch (GPU) numerics, whose results must agree.
    """

    clips: int = 10
    n_future: int = 10
    degradations: tuple[str, ...] = ("none",)
    depth_noise_m: float = 0.005
    dropout: float = 0.2
    misreg_m: float = 0.01
    misreg_deg: float = 1.0
    labels: tuple[str, ...] = ("masks_all",)
    segmenter: str | None = None
    use_hint: bool = True
    min_part_pixels: int = 20
    object_width: dict[str, float] = dataclasses.field(default_factory=held_object_widths)
    free_space: bool = True
    fail_safe: FailSafeConfig = dataclasses.field(default_factory=FailSafeConfig)
    seed: int = 0
    tracker: ICPTrackerConfig = dataclasses.field(default_factory=ICPTrackerConfig)

    def __post_init__(self) -> None:
        self.degradations = tuple(self.degradations)
        self.labels = tuple(self.labels)
        bad = [d for d in self.degradations if d not in DEGRADATIONS]
        if bad or not self.degradations:
            raise ValueError(f"unknown degradation(s) {bad}; choose from {list(DEGRADATIONS)}")
        bad = [s for s in self.labels if s not in LABEL_SOURCES]
        if bad or not self.labels:
            raise ValueError(f"unknown label source(s) {bad}; choose from {list(LABEL_SOURCES)}")
        if self.needs_segmenter and not self.segmenter:
            raise ValueError("the segmenter label sources need a segmenter checkpoint")
        if self.clips < 1 or self.n_future < 1:
            raise ValueError(f"clips and n_future must be >= 1, got {self.clips}, {self.n_future}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def needs_segmenter(self) -> bool:
        return any(s.startswith("segmenter") for s in self.labels)


# --------------------------------------------------------------------------------------------
# Clips
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Clip:
    """One evaluation clip: episode file, frames, the two held-out cameras (n first)."""

    task: str
    path: Path
    episode_seed: int
    frames: tuple[int, ...]
    cams: tuple[str, str]


@dataclasses.dataclass
class ClipData:
    """The recorded frames of a clip (view axis first: 0 = n, 1 = m).

    Attributes:
        rgb: (2, T, H, W, 3) uint8.
        depth: (2, T, H, W) float32 metres (0 invalid).
        masks: (2, T, H, W) uint8 packed part bits.
        K: (2, 3, 3) intrinsics.
        X_TC: (2, 4, 4) camera poses in T.
        X_TG: arm -> (T, 4, 4) measured gripper poses at the frame times.
        width: arm -> (T,) measured widths.
    """

    rgb: np.ndarray
    depth: np.ndarray
    masks: np.ndarray
    K: np.ndarray
    X_TC: np.ndarray
    X_TG: dict[str, np.ndarray]
    width: dict[str, np.ndarray]


def check_dataset(root: str | os.PathLike[str]) -> None:
    """Raise :class:`DatasetError` unless ``root`` is a dataset with two or more held-out cameras."""
    p = Path(root)
    if not p.is_dir():
        raise DatasetError(f"dataset directory {p} does not exist")
    meta = load_meta(p)
    if len(meta.heldout_indices) < 2:
        raise DatasetError(f"{p}: {len(meta.heldout_indices)} held-out camera(s) in meta.json; tracking is "
                           "evaluated on two held-out views (a policy's views are never training views)")
    if not meta.episodes:
        raise DatasetError(f"{p}: no episodes")


def sample_clips(root: str | os.PathLike[str], *, n_clips: int, n_future: int, seed: int) -> list[Clip]:
    """``n_clips`` seeded clips of a dataset: start frames with ``n_future`` recorded frames after
    them (episodes too short for one contribute none), each with a random held-out camera pair.

    A collected episode can end with a video frame after its last robot step (the final
    observation is filmed but commands nothing, so no robot state is recorded with it); a clip
    drawn to end on such a frame is moved back to end on the last frame with ground truth, so
    that every frame of a clip has a measured gripper pose (the draw itself, and so every other
    clip of a seed, is unchanged)."""
    check_dataset(root)
    root = Path(root)
    meta = load_meta(root)
    starts = [(e, t) for e in meta.episodes for t in range(e.n_frames - n_future)]
    if not starts:
        raise DatasetError(f"{root}: no episode has {n_future + 1} frames")
    stride = max(int(round(meta.robot_hz / meta.video_hz)), 1)
    rng = np.random.default_rng([seed, 11])
    pick = rng.choice(len(starts), size=min(n_clips, len(starts)), replace=False)
    clips = []
    for i in sorted(pick):
        e, t = starts[int(i)]
        # Video frame k is filmed on robot step k * stride (frames start with step 0).
        last = min(e.n_frames - 1, (e.n_steps - 1) // stride)
        t = min(t, last - n_future)
        n, m = rng.choice(meta.heldout_indices, size=2, replace=False)
        if t < 0:
            continue
        clips.append(Clip(meta.task, root / e.file, e.seed, tuple(range(t, t + n_future + 1)),
                          (meta.camera_names[int(n)], meta.camera_names[int(m)])))
    return clips


def load_clip(clip: Clip) -> ClipData:
    """Read a clip's frames and the robot's state at the frame times."""
    with EpisodeReader(clip.path) as r:
        frames = list(clip.frames)
        robot = r.robot()
        # Frames are recorded on robot steps: match times (1 ms tolerance for float round-off).
        t_video = r.video_time[frames]
        steps = np.searchsorted(robot.time, t_video - 1e-3)
        steps = np.clip(steps, 0, len(robot.time) - 1)
        if np.max(np.abs(robot.time[steps] - t_video)) > 0.051:
            raise DatasetError(f"{clip.path}: video frames do not fall on robot steps")
        return ClipData(
            rgb=np.stack([r.rgb(c, frames) for c in clip.cams]),
            depth=np.stack([r.depth(c, frames) for c in clip.cams]),
            masks=np.stack([r.masks(c, frames) for c in clip.cams]),
            K=np.stack([r.K(c) for c in clip.cams]),
            X_TC=np.stack([r.X_TC(c) for c in clip.cams]),
            X_TG={a: robot.X_TG[a][steps] for a in r.arms},
            width={a: robot.width[a][steps] for a in r.arms},
        )


# --------------------------------------------------------------------------------------------
# Degradations
# --------------------------------------------------------------------------------------------


def random_rigid_error(rng: np.random.Generator, *, translation: float, rotation_deg: float) -> np.ndarray:
    """4x4 rigid transform with a rotation of exactly ``rotation_deg`` about a random axis and a
    translation of exactly ``translation`` in a random direction."""
    axis = rng.normal(size=3)
    d = rng.normal(size=3)
    X = np.eye(4)
    X[:3, :3] = Rotation.from_rotvec(np.deg2rad(rotation_deg) * axis / np.linalg.norm(axis)).as_matrix()
    X[:3, 3] = translation * d / np.linalg.norm(d)
    return X


def view_pointmaps(data: ClipData, degradation: str, config: TrackingEvalConfig, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(2, T, H, W, 3) pointmaps in camera n's frame and their (2, T, H, W) validity, degraded."""
    depth = data.depth.copy()
    if degradation == "noise":
        ok = depth > 0
        depth[ok] += rng.normal(scale=config.depth_noise_m, size=int(ok.sum())).astype(np.float32)
        depth[ok] = np.maximum(depth[ok], 1e-3)
    elif degradation == "dropout":
        depth[rng.random(depth.shape) < config.dropout] = 0.0
    pm, valid = [], []
    X_CnCm = relative_camera_transform(data.X_TC[0], data.X_TC[1])
    if degradation == "misreg":
        X_CnCm = random_rigid_error(rng, translation=config.misreg_m, rotation_deg=config.misreg_deg) @ X_CnCm
    for v in range(2):
        p, ok = depth_to_pointmap(depth[v], data.K[v])
        if v == 1:
            p = np.where(ok[..., None], transform_points(X_CnCm, p), 0.0).astype(np.float32)
        pm.append(p)
        valid.append(ok)
    return np.stack(pm), np.stack(valid)


# --------------------------------------------------------------------------------------------
# One arm through one clip
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ArmClipResult:
    """Per-future-frame outcome of one arm on one clip.

    ``fingers_seen`` marks the frames whose finger view saw a finger well
    (:func:`~geo4d_policy.perception.video_tracking.fingers_seen`, what a policy calls an
    observed frame); on the others the opening read is mostly the tracker's prior.
    """

    trans_mm: np.ndarray
    rot_deg: np.ndarray
    lost: np.ndarray
    state_correct: np.ndarray
    gt_closed: np.ndarray
    seconds: float
    n_frames_tracked: int
    fingers_seen: np.ndarray | None = None
    confidence: np.ndarray | None = None


def decision_width(estimator: GripperStateEstimator) -> float:
    """Opening (m) at the mid-point of the estimator's two thresholds: the ground-truth cut."""
    return estimator.decision_width


def track_arm_clip(
    arm: str,
    data: ClipData,
    pointmaps: np.ndarray,
    valid: np.ndarray,
    labels: Sequence[Sequence[np.ndarray | None]],
    *,
    model: GripperModel,
    estimator: GripperStateEstimator,
    use_hint: bool,
    candidate_widths: Sequence[float] | None = None,
    tracker_config: ICPTrackerConfig | None = None,
    fail_safe_config: FailSafeConfig | None = None,
) -> ArmClipResult:
    """Track ``arm`` through both views of a clip, fuse, and score the future frames.

    Args:
        arm: arm name.
        data: the clip's recorded data (ground truth and camera poses).
        pointmaps, valid: (2, T, H, W, 3) / (2, T, H, W) from :func:`view_pointmaps`.
        labels: per view, per frame, (H, W) part codes or None (unsegmented frame); frame t
            must be segmented unless ``use_hint``.
        model: the gripper model.
        estimator: open/closed estimator of the task (reset here).
        use_hint: seed the registration with the measured pose and the state with the measured width.
        candidate_widths: openings for the free-space choice of frames whose fingers were not
            seen well (see :func:`~geo4d_policy.perception.video_tracking.fused_finger_distance`);
            None leaves it out.
        tracker_config: options of the ICP trackers (default: the defaults; ``engine`` and
            ``device`` choose the numpy or the torch path).
        fail_safe_config: when frames whose fused pose the views contradict are lost
            (:func:`~geo4d_policy.perception.fusion.fail_safe`, as the policy does; default
            :class:`~geo4d_policy.perception.fusion.FailSafeConfig`).
    """
    X_TCn = data.X_TC[0]
    T = pointmaps.shape[1]
    X_CnG0 = invert_transform(X_TCn) @ data.X_TG[arm][0]
    # Each view with its own pixels' camera (view m's pixels hold X^{m->n}), for the trackers'
    # projection and camera-facing surface, the consistency check and free space: the recorded
    # calibration, as the generator's X^{m->n} implies it (misreg leaves it exact).
    X_CnCv = (None, relative_camera_transform(data.X_TC[0], data.X_TC[1]))
    t0 = time.perf_counter()
    results = track_gripper_sequences([
        dict(pointmaps=pointmaps[v], valid=valid[v], part_labels=list(labels[v]), K=data.K[v], X_CnCv=X_CnCv[v],
             first_pose_hint=X_CnG0 if use_hint else None, tracker=ICPGripperTracker(model, config=tracker_config))
        for v in range(2)])
    fused = fuse_views(results[0], results[1], X_TCn=X_TCn)
    if fail_safe_config is None or fail_safe_config.enabled:
        fused = fail_safe(fused, [[TrackingFrame(pointmaps[u, k], valid[u, k], part_labels=labels[u][k], K=data.K[u],
                                                 X_CnCv=X_CnCv[u]) for u in range(2)] for k in range(T)],
                          model=model, config=fail_safe_config)
    seconds = time.perf_counter() - t0
    est = np.stack([f.X_TG for f in fused[1:]])
    trans, rot = pose_errors(est, data.X_TG[arm][1:])
    lost = np.array([f.status == "lost" for f in fused[1:]])
    confidence = np.array([f.confidence for f in fused[1:]])

    cut = decision_width(estimator)
    # Like the pose, the state starts from the robot's measurement when hinting (as a policy does).
    estimator.reset(initial_state=("closed" if data.width[arm][0] < cut else "open") if use_hint else None)
    states = []
    for k, f in enumerate(fused):
        v = f.finger_view  # the view that saw the fingers best, as in track_video
        views = None
        if candidate_widths is not None:
            views = [TrackingFrame(pointmaps[u, k], valid[u, k], K=data.K[u], X_CnCv=X_CnCv[u]) for u in range(2)]
        d = fused_finger_distance(f, pointmaps[v, k], valid[v, k], model=model, part_labels=labels[v][k],
                                  views=views, candidate_widths=candidate_widths)
        states.append(estimator.update(d if np.isfinite(d) else None).closed)
    gt_closed = np.asarray(data.width[arm][1:]) < cut
    correct = np.array(states[1:]) == gt_closed
    seen = np.array([fingers_seen(f) for f in fused[1:]])
    return ArmClipResult(trans, rot, lost, correct, gt_closed, seconds, T, seen, confidence)


# --------------------------------------------------------------------------------------------
# The evaluation
# --------------------------------------------------------------------------------------------


def summarize(parts: Sequence[ArmClipResult]) -> dict[str, Any]:
    """Pooled metrics of several arm-clip results (only the counts when there are none).

    ``n_clips`` counts arm-clips (one arm through one clip), ``n_frames`` their future frames;
    ``ms_per_frame`` is the tracking time of one arm per frame (both views and the fusion);
    ``trans_mm_median_tracked`` leaves out the lost frames.
    """
    if not parts:
        return {"n_clips": 0, "n_frames": 0}
    trans = np.concatenate([p.trans_mm for p in parts])
    rot = np.concatenate([p.rot_deg for p in parts])
    lost = np.concatenate([p.lost for p in parts])
    ok = ~lost
    return {
        "n_clips": len(parts),
        "n_frames": int(trans.size),
        "trans_mm_median": float(np.median(trans)),
        "trans_mm_p90": float(np.percentile(trans, 90)),
        "rot_deg_median": float(np.median(rot)),
        "rot_deg_p90": float(np.percentile(rot, 90)),
        "trans_mm_median_tracked": float(np.median(trans[ok])) if ok.any() else float("nan"),
        "lost_rate": float(lost.mean()),
        "open_close_accuracy": float(np.concatenate([p.state_correct for p in parts]).mean()),
        # The accuracy of always answering the majority state is max(this, 1 - this).
        "gt_closed_fraction": float(np.concatenate([p.gt_closed for p in parts]).mean()),
        "ms_per_frame": float(1e3 * sum(p.seconds for p in parts) / sum(p.n_frames_tracked for p in parts)),
        **_finger_visibility(parts),
        **_fail_safe(parts),
    }


def _fail_safe(parts: Sequence[ArmClipResult]) -> dict[str, float]:
    """``far_off_rate`` and ``confidently_wrong_rate`` (module docstring)."""
    if any(p.confidence is None for p in parts):
        return {}
    far = np.concatenate([p.trans_mm for p in parts]) > FAR_OFF_MM
    trusted = ~np.concatenate([p.lost for p in parts]) & (np.concatenate([p.confidence for p in parts])
                                                          >= TRUSTED_CONFIDENCE)
    return {"far_off_rate": float(far.mean()), "confidently_wrong_rate": float((far & trusted).mean())}


def _finger_visibility(parts: Sequence[ArmClipResult]) -> dict[str, float]:
    """Share of frames whose fingers were seen well, and the open/close accuracy on those and on
    the rest: at 128x160 the fingers of a hand closed on an object are often hidden in both views
    (apple: 17 % of frames with at most 2 finger points in either), where no finger reading can
    tell the state; this separates that limit from errors in reading seen fingers."""
    if any(p.fingers_seen is None for p in parts):
        return {}
    seen = np.concatenate([p.fingers_seen for p in parts])
    correct = np.concatenate([p.state_correct for p in parts])
    return {
        "fingers_seen_fraction": float(seen.mean()),
        "open_close_accuracy_fingers_seen": float(correct[seen].mean()) if seen.any() else float("nan"),
        "open_close_accuracy_fingers_unseen": float(correct[~seen].mean()) if (~seen).any() else float("nan"),
    }


def _estimator_for(task: str, config: TrackingEvalConfig, model: GripperModel) -> GripperStateEstimator:
    width = config.object_width.get(task)
    if width is None:
        return GripperStateEstimator(model)
    return GripperStateEstimator.for_object_width(width, model=model)


def evaluate_tracking(
    data_dirs: Sequence[str | os.PathLike[str]],
    config: TrackingEvalConfig,
    *,
    progress: Callable[[str], None] | None = None,
    model: GripperModel | None = None,
) -> dict[str, Any]:
    """Run the evaluation (see the module docstring) on each dataset.

    Args:
        data_dirs: geo4d-collect datasets (one task each; two datasets of one task are pooled).
        config: options.
        progress: called with a short description after each clip (for progress bars).
        model: the gripper model (default: the repository's).

    Returns:
        ``{"tasks": {task: {label_source: {degradation: {"all": metrics, "arms": {arm: metrics},
        "skipped_not_visible": n}}}}, "clips": [per-clip records]}`` with metrics as
        :func:`summarize`.

    Raises:
        DatasetError: a directory is missing, not a dataset, or has fewer than two held-out views.
    """
    for d in data_dirs:
        check_dataset(d)
    model = model or GripperModel.load()
    segmenter = None
    if config.needs_segmenter:
        # torch is imported only when a segmenter is evaluated.
        from geo4d_policy.perception import segmenter as seg

        segmenter = seg.GripperSegmenter.from_pretrained(config.segmenter)
    clips = [c for d in data_dirs
             for c in sample_clips(d, n_clips=config.clips, n_future=config.n_future, seed=config.seed)]
    parts: dict[tuple[str, str, str, str], list[ArmClipResult]] = {}
    skipped: dict[tuple[str, str, str], int] = {}
    records = []
    for ci, clip in enumerate(clips):
        data = load_clip(clip)
        arms = list(data.X_TG)
        T = len(clip.frames)
        estimator = _estimator_for(clip.task, config, model)
        held = config.object_width.get(clip.task)
        candidates = (held, model.stroke) if config.free_space and held is not None else None
        # Per-frame part codes, [view][frame], of each arm from each base source.
        every: dict[str, dict[str, list[list[np.ndarray]]]] = {
            "masks": {a: [[part_label_image(data.masks[v, k], a) for k in range(T)] for v in range(2)]
                      for a in arms}}
        if segmenter is not None:
            classes = segmenter.predict(data.rgb.reshape(-1, *data.rgb.shape[2:])).reshape(data.rgb.shape[:4])
            every["segmenter"] = {a: [[seg.part_labels_for_arm(classes[v, k], a) for k in range(T)]
                                      for v in range(2)] for a in arms}
        label_sets = {src: {a: [lab[:1] + [None] * (T - 1) if not src.endswith("_all") else lab
                                for lab in every[src.removesuffix("_all")][a]] for a in arms}
                      for src in config.labels}
        # Visibility from the recorded masks, so that every label source sees the same arms.
        visible = {a: max(int(((every["masks"][a][v][0] >= 0) & (data.depth[v, 0] > 0)).sum())
                          for v in range(2)) >= config.min_part_pixels for a in arms}
        record = {"task": clip.task, "episode_seed": clip.episode_seed,
                  "frames": [clip.frames[0], clip.frames[-1]], "cams": list(clip.cams),
                  "arms": [a for a in arms if visible[a]], "results": {}}
        for di, degradation in enumerate(config.degradations):
            rng = np.random.default_rng([config.seed, ci, di])
            pm, valid = view_pointmaps(data, degradation, config, rng)
            for source in config.labels:
                for arm in arms:
                    if not visible[arm]:
                        key = (clip.task, source, degradation)
                        skipped[key] = skipped.get(key, 0) + 1
                        continue
                    r = track_arm_clip(arm, data, pm, valid, label_sets[source][arm], model=model,
                                       estimator=estimator, use_hint=config.use_hint,
                                       candidate_widths=candidates, tracker_config=config.tracker,
                                       fail_safe_config=config.fail_safe)
                    parts.setdefault((clip.task, source, degradation, arm), []).append(r)
                    record["results"][f"{source}/{degradation}/{arm}"] = {
                        "trans_mm_median": float(np.median(r.trans_mm)), "lost": int(r.lost.sum()),
                        "state_correct": int(r.state_correct.sum())}
        records.append(record)
        if progress is not None:
            progress(f"{clip.task} ep{clip.episode_seed} t{clip.frames[0]} ({ci + 1}/{len(clips)})")
    tasks: dict[str, Any] = {}
    for task in dict.fromkeys(c.task for c in clips):
        for source in config.labels:
            for degradation in config.degradations:
                per_arm = {arm: summarize(v) for (t, s, d, arm), v in parts.items()
                           if (t, s, d) == (task, source, degradation)}
                pooled = [r for (t, s, d, _), v in parts.items() if (t, s, d) == (task, source, degradation)
                          for r in v]
                tasks.setdefault(task, {}).setdefault(source, {})[degradation] = {
                    "all": summarize(pooled), "arms": per_arm,
                    "skipped_not_visible": skipped.get((task, source, degradation), 0)}
    return {"tasks": tasks, "clips": records}

"""Gripper pose tracking: the types every tracker shares and the :class:`PoseTracker` protocol.

This module owns:
  * :class:`TrackResult`, what every tracker returns per frame (``X_CG``, confidence, status).
  * :class:`TrackingFrame`, one view's frame as a tracker sees it (pointmap in camera n's frame,
    validity, gripper masks, optionally RGB and intrinsics for image-based trackers).
  * :class:`PoseTracker`, the protocol: ``register`` on a first frame, then ``track`` frame by frame.
  * :func:`part_label_image`, per-arm part codes from the packed masks of a dataset or label image.
  * :func:`pose_delta`, the translation / rotation between two poses (motion gates, metrics).
  * :func:`track_gripper_sequence` / :func:`track_gripper_sequences`, the sequence drivers used
    by evaluation and tests (several sequences advance together).

The default tracker, model-based ICP of the gripper CAD model, is
:class:`geo4d_policy.perception.icp_tracker.ICPGripperTracker`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from geo4d_policy.data.geometry import checked_transform

RIGID_TOL = 1e-4
"""How far from rigid (orthonormality, last row) a given camera pose may be before it is refused."""

Status = Literal["ok", "lost"]

@dataclasses.dataclass(frozen=True)
class TrackResult:
    """One frame's tracking output.

    Attributes:
        X_CG: 4x4 pose of the gripper frame ``G`` in the camera frame the points were given in
            (camera n's frame for both views). Always finite; when ``status == "lost"`` it is
            the last good pose (or the hint / identity if there never was one).
        confidence: in [0, 1]; exactly 0 when lost.
        status: ``"ok"`` or ``"lost"``.
        fitness: fraction of the considered observed points within ``inlier_dist`` of the model.
        coverage: fraction of the camera-facing model surface with an observed point nearby.
        rmse: RMS distance (m) of the inliers to the model (``inf`` when there are none).
        n_points: observed points considered (after masking, cropping and subsampling).
        n_inliers: how many of them are inliers.
        width: finger opening (m) fitted along with the pose, if the tracker estimates it. With
            no finger in view (``finger_points`` both small, e.g. top-down views, where the palm
            hides the fingers in either state) it stays near its prior (the last estimate, at
            first half the stroke).
        finger_points: inlier points on the (left, right) finger at the accepted pose.
        reason: why the frame is lost (empty for ``"ok"``).
    """

    X_CG: np.ndarray
    confidence: float
    status: Status
    fitness: float = 0.0
    coverage: float = 0.0
    rmse: float = float("inf")
    n_points: int = 0
    n_inliers: int = 0
    width: float | None = None
    finger_points: tuple[int, int] = (0, 0)
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclasses.dataclass(frozen=True)
class TrackingFrame:
    """One view's frame as handed to a tracker. Everything is in camera n's frame.

    View m's points ``X^{m->n}`` are in camera n's frame, but its pixels are camera m's: what
    lies inside that image, what it hides and which side of the gripper faces the camera are
    camera m's. ``X_CnCv`` says where that camera is; the ICP tracker projects, tests
    visibility and coverage, and picks the camera-facing model surface with it
    (:mod:`~geo4d_policy.perception.icp_core`). Without it a frame is taken as camera n's own.

    Attributes:
        pointmap: (H, W, 3) points (``X^n`` or ``X^{m->n}``).
        valid: (H, W) bool validity of the pointmap.
        mask: (H, W) bool gripper mask of this arm, or None when the frame is unsegmented (then
            the tracker uses the points near its predicted pose). An all-False mask means "the
            segmenter saw no gripper" and gives a lost frame.
        part_labels: optional (H, W) int part codes (-1 none, 0 palm, 1 left finger, 2 right
            finger, see :mod:`gripper_model`); where given, it replaces ``mask``.
        rgb: optional (H, W, 3) uint8 image, for image-based trackers.
        K: optional 3x3 intrinsics of the camera that owns the pixels, for image-based trackers.
        X_CnCv: optional pose, in camera n, of the camera that owns the pixels (None = camera n
            itself): known from calibration (evaluation, the oracle) or estimated from the
            prediction (:mod:`~geo4d_policy.perception.view_pose`).

    Raises:
        ValueError: ``K`` not a finite 3x3, or ``X_CnCv`` not a finite rigid 4x4.
    """

    pointmap: np.ndarray
    valid: np.ndarray
    mask: np.ndarray | None = None
    part_labels: np.ndarray | None = None
    rgb: np.ndarray | None = None
    K: np.ndarray | None = None
    X_CnCv: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.K is not None:
            K = np.asarray(self.K, dtype=np.float64)
            if K.shape != (3, 3) or not np.isfinite(K).all():
                raise ValueError(f"TrackingFrame.K must be a finite 3x3 intrinsics matrix, got shape {K.shape}")
        if self.X_CnCv is not None:
            object.__setattr__(self, "X_CnCv", checked_transform(self.X_CnCv, "TrackingFrame.X_CnCv",
                                                                 rigid_tol=RIGID_TOL))

    @property
    def camera_pose(self) -> np.ndarray:
        """``X_CnCv``, the identity for camera n's own pixels."""
        return np.eye(4) if self.X_CnCv is None else self.X_CnCv.copy()

    def points(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The valid (and segmented) points, (N, 3) float64, and their part codes or None."""
        pm = np.asarray(self.pointmap, dtype=np.float64)
        sel = np.asarray(self.valid, dtype=bool) & np.isfinite(pm).all(axis=-1)
        labels = None
        if self.part_labels is not None:
            lab = np.asarray(self.part_labels)
            sel &= lab >= 0
            labels = lab[sel].astype(np.int64)
        elif self.mask is not None:
            sel &= np.asarray(self.mask, dtype=bool)
        return pm[sel], labels

    @property
    def segmented(self) -> bool:
        return self.mask is not None or self.part_labels is not None


def part_label_image(packed_masks: np.ndarray, arm: str) -> np.ndarray:
    """(H, W) part codes of one arm (-1 none, 0 palm, 1 left finger, 2 right finger) from the
    packed uint8 part masks of :mod:`geo4d_policy.data.masks`."""
    from geo4d_policy.data.masks import part_bits, unpack_mask

    packed = np.asarray(packed_masks)
    out = np.full(packed.shape, -1, dtype=np.int8)
    for code, part in enumerate(("hand", "left_finger", "right_finger")):
        out[unpack_mask(packed, part_bits(arms=(arm,), parts=(part,)))] = code
    return out


Observation = np.ndarray | TrackingFrame
"""What trackers accept per frame: (N, 3) points in camera n's frame, or a :class:`TrackingFrame`."""


@runtime_checkable
class PoseTracker(Protocol):
    """Register a gripper on a first frame, then track it frame by frame.

    Implementations must never raise on bad data (empty, all-invalid, gripper out of view):
    they return ``status="lost"``, ``confidence=0`` and a finite pose instead.
    """

    def register(
        self, observation: Observation, *, part_labels: np.ndarray | None = None,
        init_pose: np.ndarray | None = None,
    ) -> TrackResult:
        """(Re)start tracking on ``observation``; ``init_pose`` is an optional ``X_CG`` guess."""
        ...

    def track(self, observation: Observation, *, part_labels: np.ndarray | None = None) -> TrackResult:
        """Track into the next frame from the current state."""
        ...

    def reset(self) -> None:
        """Forget all state."""
        ...


def pose_delta(X_a: np.ndarray, X_b: np.ndarray) -> tuple[float, float]:
    """Translation (m) and rotation (rad) between two poses (of the same frame in the same frame)."""
    dt = float(np.linalg.norm(X_b[:3, 3] - X_a[:3, 3]))
    cos = (np.trace(X_a[:3, :3].T @ X_b[:3, :3]) - 1.0) / 2.0
    return dt, float(np.arccos(np.clip(cos, -1.0, 1.0)))


def track_gripper_sequence(
    pointmaps: np.ndarray,
    valid: np.ndarray,
    masks: np.ndarray | Sequence[np.ndarray | None] | None = None,
    *,
    part_labels: np.ndarray | Sequence[np.ndarray | None] | None = None,
    rgb: np.ndarray | None = None,
    K: np.ndarray | None = None,
    X_CnCv: np.ndarray | None = None,
    first_pose_hint: np.ndarray | None = None,
    tracker: PoseTracker | None = None,
) -> list[TrackResult]:
    """Track one arm's gripper through a (predicted) pointmap video of one view.

    Args:
        pointmaps: (T, H, W, 3) points in camera n's frame (``X^n`` or ``X^{m->n}``).
        valid: (T, H, W) bool validity.
        masks: (T, H, W) bool masks of this arm's gripper (all parts), or a length-T sequence
            with ``None`` for unsegmented frames (e.g. predicted frames with only the first one
            segmented), or None (no segmentation at all: then ``first_pose_hint`` is needed).
        part_labels: like ``masks`` but (H, W) int part codes (-1 none, 0 palm, 1 left finger,
            2 right finger); where given for a frame it replaces the mask.
        rgb: optional (T, H, W, 3) uint8 frames (image-based trackers).
        K: optional 3x3 intrinsics of the camera that owns the pixels.
        X_CnCv: optional pose of that camera in camera n (None: camera n; see
            :class:`TrackingFrame`). With ``K`` it gives the tracker the view's projection.
        first_pose_hint: optional ``X_CG`` guess for frame 0 (e.g. ``X_CnT @ X_TG`` of the
            current robot state, which a policy always knows).
        tracker: the tracker (default: a new
            :class:`~geo4d_policy.perception.icp_tracker.ICPGripperTracker`).

    Returns:
        T :class:`TrackResult`; frame 0 registers, later frames track.
    """
    return track_gripper_sequences([dict(pointmaps=pointmaps, valid=valid, masks=masks, part_labels=part_labels,
                                         rgb=rgb, K=K, X_CnCv=X_CnCv, first_pose_hint=first_pose_hint,
                                         tracker=tracker)])[0]


def track_gripper_sequences(sequences: Sequence[Mapping[str, Any]]) -> list[list[TrackResult]]:
    """Several independent sequences (e.g. the two views of a clip) tracked together.

    Each mapping holds :func:`track_gripper_sequence`'s arguments. Frame by frame, the trackers
    advance together (:func:`~geo4d_policy.perception.icp_tracker.track_all`: ICP trackers in
    lock-step, so a batching engine serves all sequences in one call); the results equal
    tracking each sequence alone.

    Raises:
        ValueError: malformed arrays (or ``K`` / ``X_CnCv``, see :class:`TrackingFrame`), or a
            frame 0 without segmentation or pose hint.
    """
    from geo4d_policy.perception.icp_tracker import ICPGripperTracker, register_all, track_all

    frames, trackers, hints = [], [], []
    for seq in sequences:
        pointmaps = np.asarray(seq["pointmaps"])
        valid = np.asarray(seq["valid"], dtype=bool)
        if pointmaps.ndim != 4 or pointmaps.shape[-1] != 3 or valid.shape != pointmaps.shape[:-1]:
            raise ValueError(f"pointmaps must be (T, H, W, 3) with valid (T, H, W); got {pointmaps.shape}, "
                             f"{valid.shape}")
        T = len(pointmaps)

        def per_frame(x, name):
            if x is None:
                return [None] * T
            if len(x) != T:
                raise ValueError(f"{name} has {len(x)} frames, pointmaps {T}")
            return list(x)

        masks_t = per_frame(seq.get("masks"), "masks")
        labels_t = per_frame(seq.get("part_labels"), "part_labels")
        rgb_t = per_frame(seq.get("rgb"), "rgb")
        seq_frames = [TrackingFrame(pointmaps[t], valid[t], masks_t[t], labels_t[t], rgb_t[t], seq.get("K"),
                                    seq.get("X_CnCv")) for t in range(T)]
        hint = seq.get("first_pose_hint")
        if T and not seq_frames[0].segmented and hint is None:
            raise ValueError("frame 0 needs a mask/part labels or a first_pose_hint")
        frames.append(seq_frames)
        trackers.append(seq.get("tracker") if seq.get("tracker") is not None else ICPGripperTracker())
        hints.append(hint)
    results: list[list[TrackResult]] = [[] for _ in sequences]
    for t in range(max((len(f) for f in frames), default=0)):
        live = [i for i in range(len(frames)) if t < len(frames[i])]
        if t == 0:
            out = register_all([(trackers[i], frames[i][0], hints[i]) for i in live])
        else:
            out = track_all([(trackers[i], frames[i][t]) for i in live])
        for i, r in zip(live, out):
            results[i].append(r)
    return results

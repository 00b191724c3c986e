"""Gripper 6DoF pose tracking in (predicted) pointmaps: the tracker protocol and the default ICP tracker.

This module owns:
  * :class:`TrackResult`, what every tracker returns per frame (``X_CG``, confidence, status).
  * :class:`TrackingFrame`, one view's frame as a tracker sees it (pointmap in camera n's frame,
    validity, gripper masks, optionally RGB and intrinsics for image-based trackers).
  * :class:`PoseTracker`, the protocol: ``register`` on a first frame, then ``track`` frame by frame.
  * :class:`ICPGripperTracker`, the default, offline tracker: model-based registration of the
    gripper CAD model (:mod:`geo4d_policy.perception.gripper_model`) to the observed points.
  * :func:`track_gripper_sequence`, the sequence driver used by policies and evaluation.
  * :func:`finger_see_through`, negative evidence on a finger opening: finger surface a camera
    would see but sees through (used where the fingers show no points).

The ICP tracker, in brief (the why is in the comments):
  * Observed points are matched to the nearest model sample of the palm or of a finger; the
    finger opening ``w`` is a free 7th parameter, so an opening or closing gripper does not drag
    the pose. With part labels (from label images or a per-part segmenter) each point is only
    matched to its own part. Gauss-Newton moves ``w`` only locally, so every accepted frame also
    scores a grid of openings over the whole stroke at its pose and re-fits from the best one
    when it explains the points better and both fingers support it (``width_search_step``).
  * Each Gauss-Newton step minimises point-to-plane residuals plus a small point-to-point term
    (the plane term converges fast on the boxy gripper, the point term removes the sliding
    freedom of planar patches), Huber-weighted, over correspondences within a distance that
    shrinks over the iterations (coarse-to-fine trimming of outliers).
  * Registration without a trustworthy pose runs several hypotheses: the 24 axis-aligned
    orientations mapping the model's principal axes onto the observed cloud's, each refined by
    a short ICP on a subsample; the best few are refined on all points. Hypotheses are scored by
    ``fitness`` (observed points explained by the model) times ``coverage`` (camera-facing model
    surface that has observed points near it): a partial view fits several poses well, but only
    the right one also leaves no visible model surface unobserved.
  * Tracking starts from the previous pose (optionally a constant-velocity prediction), looks
    only at points near it, and rejects results that jump more than ``max_translation`` /
    ``max_rotation`` per frame (the gate widens while the gripper is lost). A rejected or
    unconfident frame triggers a gated re-registration, and if that fails too the frame is
    ``"lost"``: confidence 0 and the last good pose held, never an exception or a NaN.
  * ``confidence = fitness * min(1, coverage / coverage_ref)``, in [0, 1].
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from geo4d_policy.data.geometry import invert_transform
from geo4d_policy.perception.gripper_model import PART_HAND, PART_LEFT, PART_RIGHT, GripperModel

Status = Literal["ok", "lost"]


# --------------------------------------------------------------------------------------------
# Shared types
# --------------------------------------------------------------------------------------------


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
            itself). Only image-based trackers need it, to recover that camera's own depth
            from ``X^{m->n}``; see :func:`fusion.estimate_relative_pose`.
    """

    pointmap: np.ndarray
    valid: np.ndarray
    mask: np.ndarray | None = None
    part_labels: np.ndarray | None = None
    rgb: np.ndarray | None = None
    K: np.ndarray | None = None
    X_CnCv: np.ndarray | None = None

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


# --------------------------------------------------------------------------------------------
# Small SE(3) helpers
# --------------------------------------------------------------------------------------------


def pose_delta(X_a: np.ndarray, X_b: np.ndarray) -> tuple[float, float]:
    """Translation (m) and rotation (rad) between two poses (of the same frame in the same frame)."""
    dt = float(np.linalg.norm(X_b[:3, 3] - X_a[:3, 3]))
    cos = (np.trace(X_a[:3, :3].T @ X_b[:3, :3]) - 1.0) / 2.0
    return dt, float(np.arccos(np.clip(cos, -1.0, 1.0)))


def _orthonormalize(X: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(X[:3, :3])
    R = U @ Vt
    if np.linalg.det(R) < 0:
        U[:, -1] *= -1
        R = U @ Vt
    out = np.eye(4)
    out[:3, :3] = R
    out[:3, 3] = X[:3, 3]
    return out


def _octahedral_rotations() -> np.ndarray:
    """The 24 proper signed-permutation matrices (all axis-aligned orientations)."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            M = np.zeros((3, 3))
            M[np.arange(3), perm] = signs
            if np.linalg.det(M) > 0:
                out.append(M)
    return np.stack(out)


_OCTAHEDRAL = _octahedral_rotations()


def _visible_samples(pC: np.ndarray, nC: np.ndarray, *, cell: float = 0.006) -> np.ndarray:
    """Mask of model samples (camera frame) a camera at the origin would see.

    Back faces are culled, then a coarse z-buffer (cells of about ``cell`` metres at the
    samples' mean depth) keeps the nearest sample per cell and those within a centimetre behind
    it: a cheap stand-in for rendering, good enough to place registration seeds.
    """
    z = pC[:, 2]
    ok = (np.einsum("ij,ij->i", nC, pC) < 0) & (z > 1e-3)
    if not ok.any():
        return ok
    idx = np.flatnonzero(ok)
    zs = z[idx]
    scale = float(np.mean(zs)) / cell
    u = np.floor(pC[idx, 0] / zs * scale).astype(np.int64)
    v = np.floor(pC[idx, 1] / zs * scale).astype(np.int64)
    key = (u - u.min()) * (v.max() - v.min() + 1) + (v - v.min())
    zmin = np.full(key.max() + 1, np.inf)
    np.minimum.at(zmin, key, zs)
    out = np.zeros(len(pC), dtype=bool)
    out[idx[zs <= zmin[key] + 0.01]] = True
    return out


def _principal_axes(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroid and a right-handed frame of principal axes (columns, decreasing variance)."""
    c = points.mean(axis=0)
    _, vecs = np.linalg.eigh(np.cov((points - c).T) + 1e-12 * np.eye(3))
    axes = vecs[:, ::-1]
    if np.linalg.det(axes) < 0:
        axes[:, 2] *= -1
    return c, axes


class _Occlusion:
    """Which model points a frame's camera could see: the frame's own pointmap as a depth buffer.

    A model point projecting onto a pixel whose observed point lies clearly nearer the camera
    is hidden by the scene (a shelf, the held object): it is not expected in the observation,
    and coverage must not count it as missing. The projection is the frame's ``K`` and camera
    pose ``X_CnCv`` when it carries them; otherwise the pixels' camera is taken to sit at the
    origin (true for view n's own pointmap) and ``K`` is fitted to the pointmap, a fit checked
    by its reprojection error (a pointmap of another camera, e.g. ``X^{m->n}`` without its
    pose, fails the check and gets no occlusion model).
    """

    def __init__(self, frame: TrackingFrame, points: np.ndarray, valid: np.ndarray, *,
                 rng: np.random.Generator, samples: int = 400, max_error_px: float = 0.75) -> None:
        self.points = points
        self.valid = valid
        self.ok = False
        if frame.K is not None:
            K = np.asarray(frame.K, dtype=np.float64)
            X_CnCv = np.eye(4) if frame.X_CnCv is None else np.asarray(frame.X_CnCv, dtype=np.float64)
            R, t = X_CnCv[:3, :3], X_CnCv[:3, 3]
            self.P = K @ np.c_[R.T, -R.T @ t]
            self.center = t.copy()
            self.ok = bool(np.isfinite(self.P).all())
            return
        rows, cols = np.nonzero(valid)
        if len(rows) < 50:
            return
        pick = rng.choice(len(rows), min(samples, len(rows)), replace=False)
        X = points[rows[pick], cols[pick]]
        if np.any(X[:, 2] <= 1e-6):
            return
        K = np.eye(3)
        for axis, pix in ((0, cols[pick]), (1, rows[pick])):
            A = np.c_[X[:, axis] / X[:, 2], np.ones(len(X))]
            (f, c), *_ = np.linalg.lstsq(A, pix.astype(np.float64), rcond=None)
            if not np.median(np.abs(A @ [f, c] - pix)) <= max_error_px or f <= 0:
                return
            K[axis, axis], K[axis, 2] = f, c
        self.P = np.c_[K, np.zeros(3)]
        self.center = np.zeros(3)
        self.ok = True

    def _lookup(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Project ``pts``: the mask of those inside the image, their indices, whether their pixel
        holds an observed point, and the camera distances of that point and of theirs."""
        h = np.c_[pts, np.ones(len(pts))] @ self.P.T
        front = h[:, 2] > 1e-9
        uv = np.full((len(pts), 2), -1, dtype=np.int64)
        uv[front] = np.round(h[front, :2] / h[front, 2:3]).astype(np.int64)
        H, W = self.valid.shape
        inside = front & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
        idx = np.flatnonzero(inside)
        obs_ok = self.valid[uv[idx, 1], uv[idx, 0]]
        d_obs = np.linalg.norm(self.points[uv[idx, 1], uv[idx, 0]] - self.center, axis=1)
        d_pt = np.linalg.norm(pts[idx] - self.center, axis=1)
        return inside, idx, obs_ok, d_obs, d_pt

    def expected(self, pts: np.ndarray, *, margin: float) -> np.ndarray:
        """Mask of ``pts`` inside the image and not hidden behind an observed point."""
        inside, idx, obs_ok, d_obs, d_pt = self._lookup(pts)
        out = inside.copy()
        out[idx[obs_ok & (d_obs < d_pt - margin)]] = False
        return out

    def seen_through(self, pts: np.ndarray, *, margin: float) -> np.ndarray:
        """Mask of ``pts`` inside the image whose pixel shows free space at them: the observed
        point lies more than ``margin`` beyond them, or the pixel has no point. A surface there
        would have hidden what the camera saw."""
        _, idx, obs_ok, d_obs, d_pt = self._lookup(pts)
        out = np.zeros(len(pts), dtype=bool)
        out[idx] = ~obs_ok | (d_obs > d_pt + margin)
        return out


def finger_see_through(frame: TrackingFrame, X_CG: np.ndarray, width: float, *, model: GripperModel,
                       margin: float = 0.01, samples: int = 700, seed: int = 0) -> int | None:
    """Finger surface samples at opening ``width`` that ``frame``'s camera faces but sees through.

    Negative evidence on the opening where the fingers show no points (at 128x160 a finger is a
    few pixels, often none): a finger at this opening would hide whatever the camera saw behind
    it, so each camera-facing finger sample whose pixel shows a surface more than ``margin``
    beyond it (or nothing) speaks against the opening. Samples hidden behind nearer observed
    surface (the palm, a held object) say nothing. Counts at two openings compare only on the
    same frame and pose.

    Args:
        frame: the view (pointmap in camera n's frame; its ``K`` / ``X_CnCv`` when its pixels
            are not camera n's, else the projection is fitted to the pointmap as for occlusion).
        X_CG: gripper pose in camera n's frame.
        width: the opening to test (m).
        model: the gripper model.
        margin: how far beyond a finger sample the observed surface must be (m).
        samples: surface samples per finger.
        seed: sample seed.

    Returns:
        The count, or None when the frame's projection is unknown.
    """
    pm = np.asarray(frame.pointmap, dtype=np.float64)
    ok = np.asarray(frame.valid, dtype=bool) & np.isfinite(pm).all(axis=-1)
    occ = _Occlusion(frame, pm, ok, rng=np.random.default_rng(seed))
    if not occ.ok:
        return None
    parts = model.sample_points(width=width, counts=samples, seed=seed, parts=("left_finger", "right_finger"))
    pts = np.concatenate([p.points for p in parts.values()]) @ X_CG[:3, :3].T + X_CG[:3, 3]
    nrm = np.concatenate([p.normals for p in parts.values()]) @ X_CG[:3, :3].T
    facing = np.einsum("ij,ij->i", nrm, pts - occ.center) < 0
    return int(occ.seen_through(pts[facing], margin=margin).sum())


# --------------------------------------------------------------------------------------------
# The ICP tracker
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ICPTrackerConfig:
    """Options of :class:`ICPGripperTracker` (metres, radians).

    Attributes:
        model_points: surface samples per part (palm, each finger) for matching and scoring.
        max_points: observed points used per ICP run (random subsample beyond that).
        coarse_points: observed points used for the short per-hypothesis runs.
        iterations: Gauss-Newton iterations of a full run.
        coarse_iterations: iterations of a per-hypothesis run.
        corr_dist_register: initial correspondence distance when registering.
        corr_dist_track: initial correspondence distance when tracking.
        corr_dist_min: the correspondence distance is annealed down to this.
        corr_decay: factor applied to the correspondence distance at each iteration.
        huber_delta: Huber threshold on correspondence distances.
        point_to_point_weight: weight of the point-to-point rows relative to point-to-plane.
        facing_neighbours: match observed points only to model samples facing the camera,
            searched among this many nearest samples (1 disables the facing test).
        inlier_dist: a point within this distance of the model is an inlier.
        coverage_ref: coverage at (or above) which confidence is not reduced: self-occlusion,
            holes and pixel spacing keep the coverage of a perfect fit below 1.
        min_points: fewer considered points than this is a lost frame.
        clutter_margin: for unsegmented frames, fitness counts the points within this margin
            of the gripper's box at the fitted pose.
        min_confidence: results below this are not accepted.
        good_confidence: a tracked result at or above this is not second-guessed (no extra
            ICP run from the previous pose).
        min_search_confidence: acceptance threshold of a registration found by the
            multi-hypothesis search (no hint, or the hint failed).
        max_translation: largest accepted per-frame translation of ``G`` (m); predicted video
            runs at 2 Hz and the controller's limit is 0.4 m/s, so 0.2 m is generous.
        max_rotation: largest accepted per-frame rotation (rad).
        constant_velocity: predict the next pose by repeating the last motion.
        fit_width: estimate the finger opening as a free parameter.
        fingers_in_pose: let finger correspondences drive the pose too (with a free width they
            do not bias it); False registers the pose on the palm alone.
        initial_width: opening assumed before any estimate (default: half the stroke).
        occlusion_aware: in coverage, leave out the model surface that the frame's own pointmap
            shows hidden behind the scene (see ``_Occlusion``), so a gripper partly under a
            shelf is not scored as a poor fit.
        occlusion_margin: a model point is hidden when the observed point on its pixel is at
            least this much nearer the camera (m).
        min_visible_fraction: coverage is taken over at least this fraction of the camera-facing
            model surface, so a gripper almost entirely hidden still gets a low confidence.
        width_prior: weight pulling the width to its previous value (regularises frames where
            the fingers are barely seen).
        width_search_step: grid step (m) of the global search over the opening done at the
            accepted pose of every frame (0 disables it). Gauss-Newton only moves the width
            locally and stalls in a shallow minimum a few millimetres from its start (on a
            recorded apple frame: 64 mm started from the previous 64 mm, 79 mm started from
            80 mm, robot at 80 mm), and the start is the previous frame's width, so a stalled
            width sticks for the rest of the track.
        reacquire: try a gated multi-hypothesis re-registration before declaring a frame lost,
            and on frames tracked below ``search_below``.
        search_below: confidence under which a tracked frame also gets the gated search.
        n_fine_hypotheses: registration hypotheses refined on all points.
        seed: seed of the subsampling (results are deterministic).
    """

    model_points: tuple[int, int, int] = (3000, 700, 700)
    max_points: int = 1000
    coarse_points: int = 250
    iterations: int = 30
    coarse_iterations: int = 12
    corr_dist_register: float = 0.05
    corr_dist_track: float = 0.03
    corr_dist_min: float = 0.01
    corr_decay: float = 0.75
    huber_delta: float = 0.004
    point_to_point_weight: float = 0.3
    facing_neighbours: int = 6
    facing_in_coarse: bool = False
    inlier_dist: float = 0.006
    coverage_ref: float = 0.6
    min_points: int = 25
    clutter_margin: float = 0.01
    min_confidence: float = 0.25
    good_confidence: float = 0.6
    min_search_confidence: float = 0.5
    max_translation: float = 0.2
    max_rotation: float = float(np.deg2rad(60.0))
    constant_velocity: bool = True
    fit_width: bool = True
    fingers_in_pose: bool = True
    initial_width: float | None = None
    occlusion_aware: bool = True
    occlusion_margin: float = 0.015
    min_visible_fraction: float = 0.25
    width_prior: float = 1e-3
    width_search_step: float = 0.002
    reacquire: bool = True
    search_below: float = 0.8
    n_fine_hypotheses: int = 3
    seed: int = 0


@dataclasses.dataclass
class _Fit:
    X_CG: np.ndarray
    width: float
    fitness: float = 0.0
    coverage: float = 0.0
    rmse: float = float("inf")
    n_points: int = 0
    n_inliers: int = 0
    finger_points: tuple[int, int] = (0, 0)

    @property
    def score(self) -> float:
        return self.fitness * self.coverage


class ICPGripperTracker:
    """Default :class:`PoseTracker`: robust model-based ICP with a free finger opening.

    Args:
        model: the gripper model (default: :meth:`GripperModel.load`).
        config: options; keyword ``overrides`` replace single fields of it.

    Example:
        >>> tracker = ICPGripperTracker()
        >>> first = tracker.register(points0, init_pose=X_CG_hint)
        >>> results = [tracker.track(p) for p in later_points]
    """

    def __init__(self, model: GripperModel | None = None, *, config: ICPTrackerConfig | None = None,
                 **overrides) -> None:
        self.model = model or GripperModel.load()
        self.config = dataclasses.replace(config or ICPTrackerConfig(), **overrides)
        c = self.config
        counts = dict(zip(("hand", "left_finger", "right_finger"), c.model_points))
        samples = self.model.sample_points(width=0.0, counts=counts, seed=c.seed)
        # Fingers are stored at width 0; width w shifts them by +-w/2 along the closing axis.
        self._axis = self.model.closing_axis_G
        self._pts = [samples[p].points for p in ("hand", "left_finger", "right_finger")]
        self._nrm = [samples[p].normals for p in ("hand", "left_finger", "right_finger")]
        self._trees = [cKDTree(p) for p in self._pts]
        self._lo = [p.min(axis=0) for p in self._pts]
        self._hi = [p.max(axis=0) for p in self._pts]
        self._cluttered = False
        self._sign = np.array([0.0, 1.0, -1.0])
        all_pts = np.concatenate([self._pts[0], self._pts[1] + 0.5 * self.model.stroke * self._axis,
                                  self._pts[2] - 0.5 * self.model.stroke * self._axis])
        self._model_centroid = all_pts.mean(axis=0)
        self._model_axes = _principal_axes(all_pts)[1]
        self._crop_center_G = self.model.center_G
        self._crop_radius = self.model.radius
        self.reset()

    # ---------------------------------------------------------------------------------------
    # State
    # ---------------------------------------------------------------------------------------

    def reset(self) -> None:
        self._occlusion: _Occlusion | None = None
        self._X_last: np.ndarray | None = None
        self._X_prev: np.ndarray | None = None
        self._width = self.config.initial_width if self.config.initial_width is not None else 0.5 * self.model.stroke
        self._n_lost = 0
        self._hint: np.ndarray | None = None
        self._rng = np.random.default_rng(self.config.seed)

    @property
    def last_pose(self) -> np.ndarray | None:
        """The last accepted ``X_CG`` (None before the first success)."""
        return None if self._X_last is None else self._X_last.copy()

    # ---------------------------------------------------------------------------------------
    # Public API
    # ---------------------------------------------------------------------------------------

    def register(self, observation: Observation, *, part_labels: np.ndarray | None = None,
                 init_pose: np.ndarray | None = None) -> TrackResult:
        """Find the gripper in a first frame and (re)start tracking from there.

        Args:
            observation: (N, 3) points in camera n's frame (already segmented to this arm's
                gripper) or a :class:`TrackingFrame`.
            part_labels: optional (N,) part codes of the points (-1 unknown, 0 palm, 1 left
                finger, 2 right finger); ignored for a :class:`TrackingFrame` (it has its own).
            init_pose: optional ``X_CG`` guess (e.g. from proprioception: ``X_CnT @ X_TG``). It is
                tried first, and kept as the held pose if the frame is lost.

        Returns:
            The frame's :class:`TrackResult`.
        """
        self.reset()
        hint = self._valid_pose(init_pose)
        # Kept until a registration succeeds, so that track() can retry with it.
        self._hint = hint
        q, labels, reason = self._prepare(observation, part_labels, center=None, radius=None)
        if reason:
            return self._lost(reason, held=hint)
        fit = None
        if hint is not None:
            fit = self._refine(q, labels, hint, self._width, corr_start=self.config.corr_dist_register)
            fit_ok = self._confidence(fit) >= self.config.min_confidence
            if fit_ok:
                dt, dr = pose_delta(hint, fit.X_CG)
                fit_ok = dt <= self.config.max_translation and dr <= self.config.max_rotation
            if not fit_ok:
                fit = None
        threshold = self.config.min_confidence
        if fit is None:
            fit = self._multi_hypothesis(q, labels, extra_seeds=[hint] if hint is not None else [])
            # A pose found by search rather than confirmed near a hint must be more convincing:
            # wrong fits of one-sided views reach fitness but leave visible model surface unseen.
            threshold = max(threshold, self.config.min_search_confidence)
        if fit is None or self._confidence(fit) < threshold:
            return self._lost("no confident registration", held=hint, fit=fit)
        fit = self._search_width(q, labels, fit, accept=lambda f: self._confidence(f) >= threshold)
        return self._accept(fit)

    def start_from(self, X_CG: np.ndarray, *, width: float | None = None) -> None:
        """Start tracking from a pose known without measuring it (e.g. the robot's own report of
        its gripper when the first frame does not show it); :meth:`track` continues from here.

        Raises:
            ValueError: ``X_CG`` is not a finite 4x4 transform.
        """
        X = self._valid_pose(X_CG)
        if X is None:
            raise ValueError("start_from needs a finite 4x4 pose")
        self.reset()
        self._X_last = X
        self._hint = X
        if width is not None and np.isfinite(width):
            self._width = float(np.clip(width, 0.0, self.model.stroke))

    def track(self, observation: Observation, *, part_labels: np.ndarray | None = None) -> TrackResult:
        """Track the gripper into the next frame.

        Before any successful registration this registers instead (with the last hint). Points
        far from the predicted pose are ignored, and a :class:`TrackingFrame` without mask or
        part labels is treated as unsegmented (the whole scene: fitness is then measured inside
        the gripper's box only); bare (N, 3) points are taken as this gripper's points.
        """
        if self._X_last is None:
            return self.register(observation, part_labels=part_labels, init_pose=self._hint)
        c = self.config
        gate_t = c.max_translation * (1 + self._n_lost)
        gate_r = min(np.pi, c.max_rotation * (1 + self._n_lost))
        X_pred = self._predict()
        center = X_pred[:3, :3] @ self._crop_center_G + X_pred[:3, 3]
        q, labels, reason = self._prepare(observation, part_labels, center=center,
                                          radius=self._crop_radius + gate_t)
        if reason:
            return self._lost(reason)

        def acceptable(f: _Fit | None) -> bool:
            if f is None or self._confidence(f) < c.min_confidence:
                return False
            dt, dr = pose_delta(self._X_last, f.X_CG)
            return dt <= gate_t and dr <= gate_r

        starts = [X_pred] if np.allclose(X_pred, self._X_last) else [X_pred, self._X_last]
        fit = self._refine(q, labels, starts[0], self._width, corr_start=c.corr_dist_track)
        if len(starts) > 1 and not (acceptable(fit) and self._confidence(fit) >= c.good_confidence):
            # The motion model may have overshot (e.g. the gripper stopped): also try standing still.
            still = self._refine(q, labels, starts[1], self._width, corr_start=c.corr_dist_track)
            fit = max((fit, still), key=lambda f: f.score)

        if c.reacquire and (not acceptable(fit) or self._confidence(fit) < c.search_below):
            # Lost, or a mediocre fit (often a local minimum when most of the gripper is hidden):
            # a gated multi-hypothesis search, kept only if it explains the frame better.
            seeds = list(starts)
            for axis in np.eye(3):  # the motion model's guess shifted by 2 cm: nearby basins
                for sign in (-1.0, 1.0):
                    X = X_pred.copy()
                    X[:3, 3] += sign * 0.02 * axis
                    seeds.append(X)
            gated = self._multi_hypothesis(q, labels, extra_seeds=seeds, gate=(self._X_last, gate_t, gate_r))
            if acceptable(gated) and (not acceptable(fit) or gated.score > fit.score):
                fit = gated
        if not acceptable(fit):
            return self._lost("no confident fit within the motion gate", fit=fit)
        fit = self._search_width(q, labels, fit, accept=acceptable)
        return self._accept(fit)

    def score_pose(self, points: np.ndarray, X_CG: np.ndarray, *, width: float | None = None,
                   part_labels: np.ndarray | None = None, segmented: bool = True) -> TrackResult:
        """Evaluate a given pose against observed points without changing the tracking state.

        Used to put a comparable confidence on poses from other trackers (e.g. FoundationPose).
        ``segmented=False`` scores fitness only on the points inside the gripper's box.
        """
        self._cluttered = not segmented
        self._occlusion = None  # bare points: no depth buffer to tell hidden surface from missing
        q = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        finite = np.isfinite(q).all(axis=1)
        labels = None if part_labels is None else np.asarray(part_labels)[finite]
        q = q[finite]
        X = self._valid_pose(X_CG)
        if X is None or len(q) < self.config.min_points:
            return TrackResult(np.eye(4) if X is None else X, 0.0, "lost", n_points=len(q),
                               reason="too few points or invalid pose")
        fit = self._evaluate(q, labels, X, self._width if width is None else width)
        conf = self._confidence(fit)
        return TrackResult(X, conf, "ok" if conf >= self.config.min_confidence else "lost",
                           fit.fitness, fit.coverage, fit.rmse, fit.n_points, fit.n_inliers, fit.width)

    # ---------------------------------------------------------------------------------------
    # Internals
    # ---------------------------------------------------------------------------------------

    @staticmethod
    def _valid_pose(X: np.ndarray | None) -> np.ndarray | None:
        if X is None:
            return None
        X = np.asarray(X, dtype=np.float64)
        if X.shape != (4, 4) or not np.isfinite(X).all():
            return None
        return _orthonormalize(X)

    def _predict(self) -> np.ndarray:
        if self.config.constant_velocity and self._X_prev is not None and self._n_lost == 0:
            # The last motion, taken in the gripper's own frame, applied once more.
            X_delta = invert_transform(self._X_prev) @ self._X_last
            return _orthonormalize(self._X_last @ X_delta)
        return self._X_last.copy()

    def _prepare(self, observation: Observation, part_labels, *, center, radius):
        """Finite points (cropped around ``center``), their labels, or a reason to give up."""
        # Unsegmented frames carry clutter near the gripper: fitness is then measured inside
        # the model's box only (see _evaluate).
        self._cluttered = False
        self._occlusion = None
        if isinstance(observation, TrackingFrame):
            if self.config.occlusion_aware:
                pm = np.asarray(observation.pointmap, dtype=np.float64)
                ok = np.asarray(observation.valid, dtype=bool) & np.isfinite(pm).all(axis=-1)
                occ = _Occlusion(observation, pm, ok, rng=np.random.default_rng(self.config.seed))
                self._occlusion = occ if occ.ok else None
            if observation.mask is not None and observation.part_labels is None \
                    and not np.asarray(observation.mask, dtype=bool).any():
                return None, None, "empty mask"
            q, labels = observation.points()
            self._cluttered = not observation.segmented
        else:
            q = np.asarray(observation, dtype=np.float64)
            if q.size == 0:
                return None, None, "no points"
            q = q.reshape(-1, 3)
            labels = None if part_labels is None else np.asarray(part_labels).reshape(-1)
            if labels is not None and len(labels) != len(q):
                raise ValueError(f"part_labels has {len(labels)} entries for {len(q)} points")
        finite = np.isfinite(q).all(axis=1)
        if labels is not None:
            finite &= labels >= 0
        if center is not None:
            finite &= np.linalg.norm(q - center, axis=1) <= radius
        q = q[finite]
        labels = None if labels is None else labels[finite].astype(np.int64)
        if len(q) < self.config.min_points:
            return None, None, f"too few points ({len(q)} < {self.config.min_points})"
        if len(q) > self.config.max_points:
            idx = np.sort(self._rng.choice(len(q), self.config.max_points, replace=False))
            q = q[idx]
            labels = None if labels is None else labels[idx]
        return q, labels, ""

    def _lost(self, reason: str, *, held: np.ndarray | None = None, fit: _Fit | None = None) -> TrackResult:
        self._n_lost += 1
        X = self._X_last if self._X_last is not None else (held if held is not None else self._hint)
        if X is None:
            X = np.eye(4)
        return TrackResult(X.copy(), 0.0, "lost",
                           fitness=0.0 if fit is None else fit.fitness,
                           coverage=0.0 if fit is None else fit.coverage,
                           rmse=float("inf") if fit is None else fit.rmse,
                           n_points=0 if fit is None else fit.n_points,
                           n_inliers=0 if fit is None else fit.n_inliers,
                           width=self._width, reason=reason)

    def _accept(self, fit: _Fit) -> TrackResult:
        self._X_prev = self._X_last if self._n_lost == 0 else None
        self._X_last = fit.X_CG.copy()
        self._width = fit.width
        self._n_lost = 0
        return TrackResult(fit.X_CG.copy(), self._confidence(fit), "ok", fit.fitness, fit.coverage, fit.rmse,
                           fit.n_points, fit.n_inliers, fit.width if self.config.fit_width else None,
                           fit.finger_points)

    def _search_width(self, q: np.ndarray, labels: np.ndarray | None, fit: _Fit, *,
                      accept: Callable[[_Fit], bool]) -> _Fit:
        """Re-fit from the best opening of a grid over the whole stroke at the fit's pose.

        The grid is scored by the truncated squared distance of the points to the model (what
        the inlier count measures, made continuous so that a plateau of equal counts still has a
        best width). Only a grid width that explains the points better than the fitted one is
        refined from, and that refit is kept only if it is acceptable and scores higher
        (``_Fit.score``, the criterion every other choice between fits uses): with no finger in
        view every width explains the points equally and the fit is left as it is, and a grid
        width that only one finger's points support is not refined from.
        """
        c = self.config
        if not c.fit_width or c.width_search_step <= 0:
            return fit
        X_GC = invert_transform(fit.X_CG)
        qG = q @ X_GC[:3, :3].T + X_GC[:3, 3]
        if labels is not None:
            # Palm-labelled points do not depend on the width.
            keep = labels != PART_HAND
            qG, lab = qG[keep], labels[keep]
        else:
            lab = None
        if len(qG) == 0:
            return fit
        tau = c.inlier_dist

        def cost(w: float) -> float:
            d, *_ = self._match(qG, lab, w, max_dist=tau)
            return float(np.sum(np.minimum(d, tau) ** 2))

        grid = np.arange(0.0, self.model.stroke + 0.5 * c.width_search_step, c.width_search_step)
        costs = np.array([cost(float(w)) for w in grid])
        best = float(grid[int(np.argmin(costs))])
        # A grid point that is not better than the fitted width by more than noise (a quarter of
        # one point's inlier radius squared) is the same basin.
        if costs.min() >= cost(fit.width) - 0.25 * tau ** 2:
            return fit
        # The opening is the gap between the two fingers: points on one finger alone fit any
        # width once the pose slides along the closing axis (on recorded apple frames such
        # one-sided fits fall on the right side of the open/closed cut about half the time).
        d, part, _, _ = self._match(qG, lab, best, max_dist=tau)
        if not (np.any((d <= tau) & (part == PART_LEFT)) and np.any((d <= tau) & (part == PART_RIGHT))):
            return fit
        alt = self._refine(q, labels, fit.X_CG, best, corr_start=c.corr_dist_min)
        return alt if accept(alt) and alt.score > fit.score else fit

    def _confidence(self, fit: _Fit | None) -> float:
        if fit is None:
            return 0.0
        return float(np.clip(fit.fitness, 0, 1) * min(1.0, fit.coverage / self.config.coverage_ref))

    # --- correspondences ---------------------------------------------------------------------

    def _match(self, qG: np.ndarray, labels: np.ndarray | None, width: float, max_dist: float = np.inf,
               cam_G: np.ndarray | None = None):
        """Nearest model sample for each point: (distance, part, model point, normal) in G.

        Points with no sample within ``max_dist`` get distance ``inf`` (a bounded search is
        several times faster, and such points are rejected anyway). With ``cam_G`` (the camera
        centre in G) only samples facing the camera are eligible: a one-sided observation
        matched to back faces would otherwise pull the model through itself, a deep local
        minimum when the start is a few centimetres off.
        """
        shift = [np.zeros(3), 0.5 * width * self._axis, -0.5 * width * self._axis]
        n = len(qG)
        dist = np.full(n, np.inf)
        part = np.full(n, -1, dtype=np.int64)
        idx = np.zeros(n, dtype=np.int64)
        kq = 1 if cam_G is None else self.config.facing_neighbours
        for k in (PART_HAND, PART_LEFT, PART_RIGHT):
            sel = np.ones(n, dtype=bool) if labels is None else labels == k
            if not sel.any():
                continue
            d, i = self._trees[k].query(qG[sel] - shift[k], k=kq, distance_upper_bound=max_dist)
            if kq > 1:
                facing = np.einsum("ij,ij->i", self._nrm[k], self._pts[k] + shift[k] - cam_G) < 0
                # Sentinel index len(tree) (no neighbour) maps to "not facing".
                ok = np.append(facing, False)[i] & np.isfinite(d)
                first = np.argmax(ok, axis=1)
                rows = np.arange(len(d))
                d = np.where(ok[rows, first], d[rows, first], np.inf)
                i = i[rows, first]
            better = d < dist[sel]
            where = np.flatnonzero(sel)[better]
            dist[where], part[where], idx[where] = d[better], k, i[better]
        p = np.zeros((n, 3))
        nrm = np.zeros((n, 3))
        for k in (PART_HAND, PART_LEFT, PART_RIGHT):
            sel = part == k
            p[sel] = self._pts[k][idx[sel]] + shift[k]
            nrm[sel] = self._nrm[k][idx[sel]]
        return dist, part, p, nrm

    # --- Gauss-Newton ICP --------------------------------------------------------------------

    def _refine(self, q: np.ndarray, labels: np.ndarray | None, X_CG: np.ndarray, width: float, *,
                corr_start: float, iterations: int | None = None, corr_min: float | None = None,
                decay: float | None = None, facing: bool = True) -> _Fit:
        c = self.config
        iterations = iterations or c.iterations
        corr_min = c.corr_dist_min if corr_min is None else corr_min
        decay = c.corr_decay if decay is None else decay
        X_GC = invert_transform(X_CG)
        w = float(width)
        w_prev = w
        n_pose = 6
        for it in range(iterations):
            # Coarse-to-fine trimming: the correspondence radius shrinks geometrically.
            corr = max(corr_min, corr_start * decay ** it)
            qG = q @ X_GC[:3, :3].T + X_GC[:3, 3]
            cam_G = X_GC[:3, 3] if facing and c.facing_neighbours > 1 else None
            dist, part, p, nrm = self._match(qG, labels, w, max_dist=corr, cam_G=cam_G)
            sel = dist <= corr
            if sel.sum() < 6:
                break
            qs, ps, ns, ds = qG[sel], p[sel], nrm[sel], dist[sel]
            s = self._sign[part[sel]]
            m = len(qs)
            wt = np.where(ds <= c.huber_delta, 1.0, c.huber_delta / np.maximum(ds, 1e-12))
            # Rows: one point-to-plane residual n.(q - p) and three point-to-point residuals
            # (q - p) per correspondence; unknowns (omega, v, width), with the update applied
            # as q <- q + omega x q + v and finger samples moving by +-width/2 along the axis.
            J = np.zeros((4 * m, 7))
            r = np.zeros(4 * m)
            J[:m, :3] = np.cross(qs, ns)
            J[:m, 3:6] = ns
            J[:m, 6] = -0.5 * s * (ns @ self._axis)
            r[:m] = np.einsum("ij,ij->i", ns, qs - ps)
            # -[q]_x rows for the point-to-point block, laid out as x rows, y rows, z rows.
            zero = np.zeros(m)
            skew = (np.stack([zero, qs[:, 2], -qs[:, 1]], 1), np.stack([-qs[:, 2], zero, qs[:, 0]], 1),
                    np.stack([qs[:, 1], -qs[:, 0], zero], 1))
            for a in range(3):
                rows = slice((a + 1) * m, (a + 2) * m)
                J[rows, :3] = skew[a]
                J[rows, 3 + a] = 1.0
                J[rows, 6] = -0.5 * s * self._axis[a]
                r[rows] = qs[:, a] - ps[:, a]
            weights = np.concatenate([wt, np.tile(c.point_to_point_weight * wt, 3)])
            if not c.fingers_in_pose:
                J[np.tile(s != 0, 4), :n_pose] = 0.0
            Jw = J * weights[:, None]
            H = Jw.T @ J
            g = Jw.T @ r
            # Damping keeps the solve well posed (e.g. no finger seen -> width unobservable).
            H[np.diag_indices(6)] += 1e-6 * m
            if c.fit_width:
                H[6, 6] += c.width_prior * m + 1e-9
                g[6] += c.width_prior * m * (w - w_prev)
            else:
                H[6, :] = 0.0
                H[:, 6] = 0.0
                H[6, 6] = 1.0
                g[6] = 0.0
            try:
                delta = -np.linalg.solve(H, g)
            except np.linalg.LinAlgError:
                break
            if not np.isfinite(delta).all():
                break
            step = np.eye(4)
            step[:3, :3] = Rotation.from_rotvec(delta[:3]).as_matrix()
            step[:3, 3] = delta[3:6]
            X_GC = step @ X_GC
            w = float(np.clip(w + delta[6], 0.0, self.model.stroke))
            if corr <= corr_min and np.linalg.norm(delta[:3]) < 2e-4 and np.linalg.norm(delta[3:6]) < 1e-4:
                break
        X = _orthonormalize(invert_transform(X_GC))
        return self._evaluate(q, labels, X, w)

    def _evaluate(self, q: np.ndarray, labels: np.ndarray | None, X_CG: np.ndarray, width: float) -> _Fit:
        c = self.config
        X_GC = invert_transform(X_CG)
        qG = q @ X_GC[:3, :3].T + X_GC[:3, 3]
        dist, part, _, _ = self._match(qG, labels, width, max_dist=c.inlier_dist)
        inl = dist <= c.inlier_dist
        if self._cluttered:
            # Fitness over the points inside the gripper's box (+ margin) at this pose: the
            # scene around it is not the tracker's to explain.
            lo, hi = self._bounds(width)
            near = np.all((qG >= lo - c.clutter_margin) & (qG <= hi + c.clutter_margin), axis=1)
        else:
            near = np.ones(len(q), dtype=bool)
        n_near = int(near.sum())
        fitness = float(inl[near].mean()) if n_near >= c.min_points else 0.0
        rmse = float(np.sqrt(np.mean(dist[inl] ** 2))) if inl.any() else float("inf")
        # Coverage: camera-facing model samples with an observed point within a radius that
        # adapts to the observed point spacing (pixel footprint grows with distance).
        tree = cKDTree(q)
        if len(q) > 1:
            spacing = float(np.median(tree.query(q, k=2)[0][:, 1]))
        else:
            spacing = 0.0
        radius = max(c.inlier_dist, 1.5 * spacing)
        pts = np.concatenate([self._pts[0], self._pts[1] + 0.5 * width * self._axis,
                              self._pts[2] - 0.5 * width * self._axis])
        nrm = np.concatenate(self._nrm)
        if labels is not None:
            # Only score the parts that the segmentation claims to have seen.
            present = [np.any(labels == k) for k in range(3)]
            keep = np.concatenate([np.full(len(self._pts[k]), present[k]) for k in range(3)])
            pts, nrm = pts[keep], nrm[keep]
        pC = pts @ X_CG[:3, :3].T + X_CG[:3, 3]
        nC = nrm @ X_CG[:3, :3].T
        facing = (np.einsum("ij,ij->i", nC, pC) < 0) & (pC[:, 2] > 0)
        if facing.any():
            d, _ = tree.query(pC[facing], k=1, distance_upper_bound=radius)
            hit = np.isfinite(d)
            occ = self._occlusion
            if occ is not None:
                expect = occ.expected(pC[facing], margin=c.occlusion_margin)
                denom = max(float(expect.sum()), c.min_visible_fraction * len(expect), 1.0)
                coverage = float(min(1.0, (hit & expect).sum() / denom))
            else:
                coverage = float(np.mean(hit))
        else:
            coverage = 0.0
        fingers = (int((inl & (part == PART_LEFT)).sum()), int((inl & (part == PART_RIGHT)).sum()))
        return _Fit(X_CG, width, fitness, coverage, rmse, n_near, int((inl & near).sum()), fingers)

    def _bounds(self, width: float) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounds in G of the model's samples at ``width``."""
        lo = np.minimum.reduce([self._lo[0], self._lo[1] + 0.5 * width * self._axis,
                                self._lo[2] - 0.5 * width * self._axis])
        hi = np.maximum.reduce([self._hi[0], self._hi[1] + 0.5 * width * self._axis,
                                self._hi[2] - 0.5 * width * self._axis])
        return lo, hi

    # --- registration ------------------------------------------------------------------------

    def _seeds(self, q: np.ndarray) -> list[np.ndarray]:
        """Orientation seeds around the observed cloud's principal axes, with translations."""
        c_obs, axes_obs = _principal_axes(q)
        pts = np.concatenate(self._pts)
        nrm = np.concatenate(self._nrm)
        seeds = []
        for M in _OCTAHEDRAL:
            R = axes_obs @ M @ self._model_axes.T
            t = c_obs - R @ self._model_centroid
            # Only the visible part of the model is observed: match the centroid of the model
            # surface a camera would see under this orientation instead (twice, as visibility
            # depends on the position).
            for _ in range(2):
                vis = _visible_samples(pts @ R.T + t, nrm @ R.T)
                if vis.sum() < 10:
                    break
                t = c_obs - R @ pts[vis].mean(axis=0)
            X = np.eye(4)
            X[:3, :3] = R
            X[:3, 3] = t
            seeds.append(X)
        return seeds

    def _multi_hypothesis(self, q: np.ndarray, labels: np.ndarray | None, *,
                          extra_seeds: Sequence[np.ndarray] = (),
                          gate: tuple[np.ndarray, float, float] | None = None) -> _Fit | None:
        c = self.config

        def subsample(n):
            if len(q) <= n:
                return q, labels
            idx = np.sort(self._rng.choice(len(q), n, replace=False))
            return q[idx], None if labels is None else labels[idx]

        seeds = self._seeds(q)
        if gate is not None:
            X_ref, gt, gr = gate
            seeds = [X for X in seeds if pose_delta(X_ref, X)[1] <= gr + np.deg2rad(30)]
        candidates = list(extra_seeds) + seeds
        qc, lc = subsample(c.coarse_points)
        coarse = []
        for X0 in candidates:
            # Seeds can be 30 deg / 4 cm off: keep the correspondence radius wide for longer.
            f = self._refine(qc, lc, X0, self._width, corr_start=c.corr_dist_register,
                             iterations=c.coarse_iterations, corr_min=2 * c.corr_dist_min, decay=0.85,
                             facing=c.facing_in_coarse)
            if gate is not None:
                dt, dr = pose_delta(gate[0], f.X_CG)
                if dt > gate[1] or dr > gate[2]:
                    continue
            coarse.append(f)
        if not coarse:
            return None
        coarse.sort(key=lambda f: f.score, reverse=True)
        fine = [self._refine(q, labels, f.X_CG, f.width, corr_start=c.corr_dist_track)
                for f in coarse[: c.n_fine_hypotheses]]
        if gate is not None:
            fine = [f for f in fine if pose_delta(gate[0], f.X_CG)[0] <= gate[1]
                    and pose_delta(gate[0], f.X_CG)[1] <= gate[2]]
            if not fine:
                return None
        return max(fine, key=lambda f: f.score)


# --------------------------------------------------------------------------------------------
# Sequence driver
# --------------------------------------------------------------------------------------------


def track_gripper_sequence(
    pointmaps: np.ndarray,
    valid: np.ndarray,
    masks: np.ndarray | Sequence[np.ndarray | None] | None = None,
    *,
    part_labels: np.ndarray | Sequence[np.ndarray | None] | None = None,
    rgb: np.ndarray | None = None,
    K: np.ndarray | None = None,
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
        K: optional 3x3 intrinsics of the view (image-based trackers).
        first_pose_hint: optional ``X_CG`` guess for frame 0 (e.g. ``X_CnT @ X_TG`` of the
            current robot state, which a policy always knows).
        tracker: the tracker (default: a new :class:`ICPGripperTracker`).

    Returns:
        T :class:`TrackResult`; frame 0 registers, later frames track.
    """
    pointmaps = np.asarray(pointmaps)
    valid = np.asarray(valid, dtype=bool)
    if pointmaps.ndim != 4 or pointmaps.shape[-1] != 3 or valid.shape != pointmaps.shape[:-1]:
        raise ValueError(f"pointmaps must be (T, H, W, 3) with valid (T, H, W); got {pointmaps.shape}, {valid.shape}")
    T = len(pointmaps)

    def per_frame(x, name):
        if x is None:
            return [None] * T
        if len(x) != T:
            raise ValueError(f"{name} has {len(x)} frames, pointmaps {T}")
        return list(x)

    masks_t = per_frame(masks, "masks")
    labels_t = per_frame(part_labels, "part_labels")
    rgb_t = per_frame(rgb, "rgb")
    tracker = tracker if tracker is not None else ICPGripperTracker()
    results = []
    for t in range(T):
        frame = TrackingFrame(pointmaps[t], valid[t], masks_t[t], labels_t[t], rgb_t[t], K)
        if t == 0:
            if not frame.segmented and first_pose_hint is None:
                raise ValueError("frame 0 needs a mask/part labels or a first_pose_hint")
            results.append(tracker.register(frame, init_pose=first_pose_hint))
        else:
            results.append(tracker.track(frame))
    return results

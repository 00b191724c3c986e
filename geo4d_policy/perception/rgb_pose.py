"""RGB-only gripper pose estimation: the Dreamitate baseline's perception, per view.

Dreamitate generates RGB-only video of two views and recovers the gripper's 6DoF pose in each
view from the image alone (MegaPose's role: render-and-compare of the known CAD model against
the segmented gripper, scale fixed by the model's known size), then fuses the two per-view
estimates: the translation is the midpoint of the closest points of the two camera rays through
the per-view gripper origins, the rotation an average. As in our geo4d pipeline, the policy
knows both views' calibrated ``X_TC`` (for fairness, Dreamitate gets them too).

This module owns :class:`RGBPoseEstimator`, a :class:`~geo4d_policy.perception.pose_tracker.PoseTracker`
that uses only a frame's segmentation (part labels or a gripper mask), the intrinsics and a prior
pose; it never reads the pointmap or depth. ``X_CG`` is in the camera that owns the pixels. Its
parts live beside it: the renderer (:mod:`geo4d_policy.perception.silhouette`), the cost of a pose
(:mod:`geo4d_policy.perception.rgb_objective`) and the two-view fusion
(:func:`~geo4d_policy.perception.fusion.fuse_rays`, :func:`~geo4d_policy.perception.fusion.fuse_rgb_views`).
On a GPU (``device``) the hypotheses are rendered and scored there with torch, and the pattern
search polls every coordinate per batch; the numpy path stays the default without one.

The estimator, in brief (the why is in the comments):
  * Pose parameters are the image position of the model's centre (normalised image coordinates),
    the log of its depth, a rotation about the camera axes through that centre, and the finger
    opening: image-space motion, scale and rotation are then nearly decoupled, which suits a
    coordinate-wise search.
  * Poses are rendered ``supersample`` times finer (less for large masks) and compared as
    fractional coverage of each pixel by each part: a binary silhouette only changes when the
    pose moves a boundary across a pixel centre, and a search on it stalls on plateaus a few
    degrees from the optimum.
  * The cost of a pose is an overlap term plus ``edge_weight`` times the mean distance (pixels,
    clipped) from the rendered outlines (whole silhouette and, with part labels, each part) to
    the observed ones (distance transforms computed once per frame): overlap is flat once the
    silhouettes stop overlapping, the edge term still points the way. The overlap term is by
    default a per-part likelihood (each observed label is a pixel-centre sample, whose
    probability is the rendered coverage of that label), or the soft whole-silhouette IoU plus
    the mean soft per-part IoU (``overlap="iou"``); the likelihood measured more accurate.
  * Each start is first aligned: the rendered silhouette's centroid is moved onto the observed
    one and the depth scaled by ``sqrt(rendered area / observed area)``: depth along the ray is
    resolved by the model's known size. A Hooke-Jeeves pattern search then refines all seven
    parameters coarse-to-fine (step sizes halve until a fraction of a pixel / degree).
  * Registration and tracking start from the prior (the hint; the constant-velocity
    prediction, then the previous pose). When registering, or when no prior's coarse fit
    reaches ``good_iou`` or it costs more than ``max_cost_ratio`` times the last frame's fit,
    six starts tilted by ``start_angle`` about the camera axes around the first prior are
    searched too and the best two refined: out-of-plane rotation has shallow local minima in a
    silhouette. Without any prior (or when the prior-based fit fails while tracking), a coarse
    search over a fixed set of orientations runs (MegaPose's coarse stage), and its result must
    reach ``min_search_iou``.
  * Accuracy is bounded by the image: at 128x160 and 0.8 m the gripper covers about 200 pixels
    and a 5 deg turn moves its outline by about a pixel; some silhouettes are genuinely
    ambiguous (a turn towards or away from the camera), which is what the two-view fusion and
    the geo4d pointmaps address.
  * ``confidence`` is the final whole-silhouette IoU; below ``min_iou``, or with an empty or
    too small mask, the frame is ``"lost"``: confidence 0 and the last good pose held, never an
    exception or a NaN for bad frames. Malformed arguments (intrinsics that are not a finite 3x3
    with positive focal lengths, a non-finite prior pose) raise ``ValueError``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from scipy.spatial.transform import Rotation

from geo4d_policy.data.geometry import checked_transform, invert_transform
from geo4d_policy.perception.gripper_model import PARTS, GripperModel
from geo4d_policy.perception.rgb_objective import Objective
from geo4d_policy.perception.silhouette import SilhouetteRenderer, TorchSilhouetteRenderer, check_intrinsics
from geo4d_policy.perception.pose_tracker import Observation, TrackingFrame, TrackResult


@dataclasses.dataclass(frozen=True)
class RGBPoseConfig:
    """Options of :class:`RGBPoseEstimator` (metres, radians, pixels).

    Attributes:
        min_pixels: fewer segmented pixels than this is a lost frame (nothing to compare with).
        min_iou: a fit whose whole-silhouette IoU is below this is not accepted.
        good_iou: a fit from the prior at or above this is not second-guessed with extra starts.
        min_search_iou: acceptance threshold of a pose found by the prior-free coarse search.
        overlap: ``"likelihood"`` (default): mean over the observed gripper pixels of the
            negative log of the rendered coverage of each pixel's observed label (background
            included); ``"iou"``: ``1 - soft IoU`` of the whole silhouette plus ``part_weight``
            times ``1 - mean soft per-part IoU``. On 16 seeded 128x160 cases at 0.8 m (start
            3 cm / 10 deg off) the likelihood gave median/max rotation errors of 1.7/5.1 deg
            against 2.7/6.1 deg, and depth errors of 7/26 mm against 9/33 mm.
        eps: floor added to coverages in the likelihood (a pixel whose centre lies on a sliver
            of a part can be labelled with it at zero sampled coverage).
        part_weight: weight of the per-part term of the ``"iou"`` overlap.
        edge_weight: cost per pixel of mean boundary distance.
        max_edge_px: boundary distances are clipped here, so that a stray part cannot dominate.
        supersample: poses are rendered this many times finer (per axis) and compared as pixel
            coverage; 3 suits 128x160 images, 2 is enough from 256x320 up.
        max_subpixels: the factor is lowered for frames whose mask times its square exceeds this.
        step_px: initial step of the image position of the model centre (pixels).
        step_log_depth: initial step of the log depth.
        step_rotation: initial rotation step about each camera axis.
        step_width: initial step of the finger opening.
        min_step_scale: the search stops when the step scale falls below this (steps halve).
        max_evaluations: cost evaluations of one search (a render each).
        coarse_step_scale: the per-start coarse search stops at this step scale.
        start_angle: tilt of the extra starts about each camera axis (the capture range of one
            start is about half of it).
        n_refine: starts refined to the end after the coarse stage.
        widen_register: always add the tilted starts when registering (a first frame's hint
            may be further off than the previous frame's pose is when tracking).
        max_cost_ratio: when tracking, a coarse fit costing more than this times the last
            accepted frame's cost gets the tilted starts too (consecutive frames of the same
            gripper fit about equally well at the right pose).
        align_iterations: centroid/scale alignment passes per start.
        n_search_rotations: orientations tried by the prior-free coarse search.
        constant_velocity: predict the next pose by repeating the last motion.
        fit_width: estimate the finger opening as a 7th parameter.
        initial_width: opening assumed before any estimate (default: half the stroke).
        seed: seed of the prior-free search's orientation set (results are deterministic).
    """

    min_pixels: int = 20
    min_iou: float = 0.5
    good_iou: float = 0.85
    min_search_iou: float = 0.7
    part_weight: float = 0.5
    edge_weight: float = 0.05
    max_edge_px: float = 8.0
    supersample: int = 3
    max_subpixels: int = 5000
    overlap: Literal["likelihood", "iou"] = "likelihood"
    eps: float = 0.05
    step_px: float = 4.0
    step_log_depth: float = 0.08
    step_rotation: float = float(np.deg2rad(8.0))
    step_width: float = 0.02
    min_step_scale: float = 1.0 / 32.0
    max_evaluations: int = 400
    coarse_step_scale: float = 0.25
    start_angle: float = float(np.deg2rad(15.0))
    n_refine: int = 2
    widen_register: bool = True
    max_cost_ratio: float = 1.3
    align_iterations: int = 2
    n_search_rotations: int = 96
    constant_velocity: bool = True
    fit_width: bool = True
    initial_width: float | None = None
    seed: int = 0


POLL_BATCH = 2
"""Coordinates polled per speculative batch of :func:`_pattern_search` (two trials each) with the
numpy renderer: measured fastest of 1, 2 and 7 on the policy's 128x160 frames
(``scripts/bench_rgb_pose.py``), as a render's per-call overhead is about the cost of one pose's
pixel work."""

TORCH_POLL_BATCH = 7
"""The same with the torch renderer: every coordinate at once (a GPU renders a batch of 15
hypotheses in about the time of one; the search visits the same points either way)."""


def _pattern_search(costs: Callable[[np.ndarray], np.ndarray], p0: np.ndarray, steps: np.ndarray, *,
                    min_scale: float, max_evaluations: int, scale: float = 1.0,
                    f0: float | None = None, poll_batch: int = POLL_BATCH) -> tuple[np.ndarray, float, float]:
    """Hooke-Jeeves pattern search: coordinate polls, pattern moves, halving steps.

    Gradient-free because a rendered silhouette, hence the cost, is piecewise constant in the
    pose (at the sub-pixel scale). Returns ``(p, cost, final step scale)``.

    ``costs`` maps (B, n) points to (B,) costs. The coordinate polls of an exploration are
    sequential (each starts from the best point so far), but until one succeeds they all start
    from the same point: the next ``poll_batch`` coordinates' polls are evaluated
    speculatively as one batch and the sequential rule is replayed over it; after a success
    the following polls are batched from the new point. The search visits exactly the points,
    takes exactly the moves and counts exactly the evaluations of the one-at-a-time search
    (``costs`` must give a point the same value in any batch); the unused polls of a batch are
    the price of fewer, larger renders.
    """
    active = np.flatnonzero(steps > 0)
    p = np.asarray(p0, dtype=np.float64).copy()
    f = float(costs(p[None])[0]) if f0 is None else float(f0)
    evals = 1

    def explore(base: np.ndarray, fb: float | None) -> tuple[np.ndarray, float]:
        """One exploration around ``base``; ``fb`` None evaluates ``base`` in the first batch."""
        nonlocal evals
        x, fx = base.copy(), fb
        k = 0  # next coordinate (index into ``active``) to poll
        while k < len(active) or fx is None:
            idx = active[k:k + poll_batch]
            trials = np.repeat(x[None], 2 * len(idx), axis=0)
            rows = np.arange(len(idx))
            trials[2 * rows, idx] += scale * steps[idx]
            trials[2 * rows + 1, idx] -= scale * steps[idx]
            if fx is None:
                f_all = costs(np.concatenate([x[None], trials]))
                fx, f_trials = float(f_all[0]), f_all[1:]
            else:
                f_trials = costs(trials)
            moved = False
            for j in range(len(idx)):
                for sign in (0, 1):
                    evals += 1
                    if f_trials[2 * j + sign] < fx:
                        x, fx, moved = trials[2 * j + sign], float(f_trials[2 * j + sign]), True
                        break
                if moved:
                    k += j + 1
                    break
            if not moved:
                k += len(idx)
        return x, fx

    while scale >= min_scale and evals < max_evaluations:
        x, fx = explore(p, f)
        if fx >= f:
            scale *= 0.5
            continue
        # Pattern moves: keep going in the direction that just paid off while it pays.
        while evals < max_evaluations:
            p_prev, p, f = p, x, fx
            x, fx = explore(p + (p - p_prev), None)
            evals += 1
            if fx >= f:
                break
    return p, f, scale


@dataclasses.dataclass
class _Candidate:
    p: np.ndarray
    R_ref: np.ndarray
    cost: float
    scale: float = 1.0


class RGBPoseEstimator:
    """RGB-only :class:`~geo4d_policy.perception.pose_tracker.PoseTracker`: render-and-compare of the
    gripper model against the frame's segmented gripper (MegaPose's role in Dreamitate).

    Only the frame's part labels (or, without them, its gripper mask) and the intrinsics of the
    camera that owns the pixels are used; the pointmap, depth and ``X_CnCv`` are ignored, and
    ``X_CG`` is in that camera's frame (convert with that camera's ``X_TC``, e.g. in
    :func:`fuse_rgb_views`).

    Args:
        model: the gripper model (default: :meth:`GripperModel.load`).
        K: intrinsics used for frames that carry none (``TrackingFrame.K`` wins when set).
        config: options; keyword ``overrides`` replace single fields of it.
        device: None (default) renders and scores hypotheses with numpy; a torch device
            (``"cuda"``) does it there with :class:`~geo4d_policy.perception.silhouette.TorchSilhouetteRenderer`
            and polls every coordinate per batch (:data:`TORCH_POLL_BATCH`). The estimates agree
            with numpy's to float rounding of the costs.
        renderer: a renderer to use (and share between estimators of one thread), instead of
            a new one for ``device``.

    Example:
        >>> est = RGBPoseEstimator(K=K)
        >>> first = est.register(labels_0, init_pose=X_CG_hint)
        >>> results = [est.track(labels) for labels in later_labels]
    """

    def __init__(self, model: GripperModel | None = None, *, K: np.ndarray | None = None,
                 config: RGBPoseConfig | None = None, device: Any = None,
                 renderer: SilhouetteRenderer | None = None, **overrides) -> None:
        self.model = model or GripperModel.load()
        self.config = dataclasses.replace(config or RGBPoseConfig(), **overrides)
        self.K = None if K is None else check_intrinsics(K)
        if renderer is None:
            renderer = SilhouetteRenderer(self.model) if device is None else \
                TorchSilhouetteRenderer(self.model, device=device)
        self.renderer = renderer
        self._poll_batch = TORCH_POLL_BATCH if isinstance(renderer, TorchSilhouetteRenderer) else POLL_BATCH
        self.reset()

    # ---------------------------------------------------------------------------------------
    # State
    # ---------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget all state (poses, width, hint)."""
        self._X_last: np.ndarray | None = None
        self._X_prev: np.ndarray | None = None
        self._hint: np.ndarray | None = None
        self._last_cost: float | None = None
        c = self.config
        self._width = c.initial_width if c.initial_width is not None else 0.5 * self.model.stroke
        self._n_lost = 0

    @property
    def last_pose(self) -> np.ndarray | None:
        """The last accepted ``X_CG`` (None before the first success)."""
        return None if self._X_last is None else self._X_last.copy()

    # ---------------------------------------------------------------------------------------
    # Public API
    # ---------------------------------------------------------------------------------------

    def register(self, observation: Observation, *, part_labels: np.ndarray | None = None,
                 init_pose: np.ndarray | None = None, init_width: float | None = None) -> TrackResult:
        """Estimate the pose in a first frame and (re)start tracking from there.

        Args:
            observation: a :class:`TrackingFrame` (its ``part_labels``, else its ``mask``, and its
                ``K`` are used) or an (H, W) segmentation image: integer part codes (-1 none,
                0 palm, 1 left finger, 2 right finger) or a bool gripper mask.
            part_labels: (H, W) part codes replacing a bare image's segmentation; ignored for a
                :class:`TrackingFrame` (it has its own).
            init_pose: prior ``X_CG`` in the pixels' camera (e.g. ``X_CT @ X_TG`` from
                proprioception). Without it a prior-free coarse search runs.
            init_width: prior finger opening (default: the current estimate).

        Returns:
            The frame's :class:`TrackResult`.

        Raises:
            ValueError: ``init_pose`` is not a finite 4x4, no valid intrinsics are available, or
                the observation is a float array (points are not a segmentation).
        """
        hint = None if init_pose is None else checked_transform(init_pose, "init_pose")
        self.reset()
        self._hint = hint
        if init_width is not None and np.isfinite(init_width):
            self._width = float(np.clip(init_width, 0.0, self.model.stroke))
        objective, reason = self._objective(observation, part_labels)
        if reason:
            return self._lost(reason)
        if hint is not None:
            best = self._fit(objective, [hint], widen=self.config.widen_register)
            if self._iou(objective, best) >= self.config.min_iou:
                return self._accept(objective, best)
        best = self._search(objective)
        if best is None or self._iou(objective, best) < self.config.min_search_iou:
            return self._lost("no confident fit", objective=objective, candidate=best)
        return self._accept(objective, best)

    def track(self, observation: Observation, *, part_labels: np.ndarray | None = None) -> TrackResult:
        """Estimate the pose in the next frame, starting from the previous one.

        Before any successful registration this registers instead (with the last hint).
        """
        if self._X_last is None:
            return self.register(observation, part_labels=part_labels, init_pose=self._hint)
        objective, reason = self._objective(observation, part_labels)
        if reason:
            return self._lost(reason)
        X_pred = self._predict()
        priors = [X_pred] if np.allclose(X_pred, self._X_last) else [X_pred, self._X_last]
        best = self._fit(objective, priors, widen=False)
        if self._iou(objective, best) < self.config.min_iou:
            # Lost the thread (a fast motion, a bad frame before): search without the prior.
            found = self._search(objective)
            if found is not None and self._iou(objective, found) >= self.config.min_search_iou:
                best = found
            else:
                return self._lost("no confident fit", objective=objective, candidate=best)
        return self._accept(objective, best)

    # ---------------------------------------------------------------------------------------
    # Internals
    # ---------------------------------------------------------------------------------------

    def _objective(self, observation: Observation, part_labels: np.ndarray | None
                   ) -> tuple[Objective | None, str]:
        """The frame's objective, or a reason why the frame cannot be used."""
        K = self.K
        if isinstance(observation, TrackingFrame):
            if observation.K is not None:
                K = check_intrinsics(observation.K)
            if observation.part_labels is not None:
                seg, has_parts = np.asarray(observation.part_labels), True
            elif observation.mask is not None:
                seg, has_parts = np.asarray(observation.mask), False
            else:
                return None, "unsegmented frame (RGB-only estimation needs a gripper mask)"
        else:
            seg = np.asarray(observation if part_labels is None else part_labels)
            if np.issubdtype(seg.dtype, np.floating):
                raise ValueError("RGBPoseEstimator takes a segmentation image (int part codes or bool "
                                 "mask) or a TrackingFrame, not points")
            has_parts = seg.dtype != np.bool_
        if K is None:
            raise ValueError("no intrinsics: pass K= to RGBPoseEstimator or set TrackingFrame.K")
        if seg.ndim != 2 or min(seg.shape) < 3:
            return None, f"segmentation must be an (H, W) image, got shape {seg.shape}"
        if has_parts:
            observed = np.where((seg >= 0) & (seg < len(PARTS)), seg, -1).astype(np.int8)
        else:
            observed = np.where(seg.astype(bool), 0, -1).astype(np.int8)
        n = int(np.count_nonzero(observed >= 0))
        if n == 0:
            return None, "empty mask"
        if n < self.config.min_pixels:
            return None, f"mask too small ({n} < {self.config.min_pixels} pixels)"
        return Objective(self.renderer, observed, has_parts, K, self.config), ""

    def _steps(self, objective: Objective) -> np.ndarray:
        c = self.config
        return np.array([c.step_px / objective.K[0, 0], c.step_px / objective.K[1, 1], c.step_log_depth,
                         c.step_rotation, c.step_rotation, c.step_rotation,
                         c.step_width if c.fit_width else 0.0])

    def _search_from(self, objective: Objective, cand: _Candidate, *, min_scale: float) -> _Candidate:
        c = self.config
        p, f, scale = _pattern_search(lambda Q: objective.costs(Q, cand.R_ref), cand.p, self._steps(objective),
                                      min_scale=min_scale, max_evaluations=c.max_evaluations,
                                      scale=cand.scale, f0=cand.cost, poll_batch=self._poll_batch)
        return _Candidate(p, cand.R_ref, f, scale)

    def _start(self, objective: Objective, X_CG: np.ndarray, width: float) -> _Candidate:
        p, R_ref = objective.params_from_pose(X_CG, width)
        p = objective.align(p, R_ref, iterations=self.config.align_iterations)
        return _Candidate(p, R_ref, objective.cost(p, R_ref))

    def _fit(self, objective: Objective, priors: Sequence[np.ndarray], *, widen: bool) -> _Candidate:
        """Coarse-to-fine search from the priors, in order until one looks right; widened with
        starts tilted around the first prior when ``widen`` or when none does."""
        c = self.config
        coarse: list[_Candidate] = []
        for X in priors:
            coarse.append(self._search_from(objective, self._start(objective, X, self._width),
                                            min_scale=c.coarse_step_scale))
            if self._looks_right(objective, coarse[-1]):
                break
        else:
            widen = True
        if widen:
            # Tilted starts escape the local minima of out-of-plane rotation (a silhouette
            # changes little when the gripper turns towards or away from the camera). They are
            # placed around the first prior, not around its coarse fit: measured more robust, as
            # they then sample the prior's neighbourhood whichever way its own search went.
            for axis in np.eye(3):
                for sign in (1.0, -1.0):
                    tilt = Rotation.from_rotvec(sign * c.start_angle * axis)
                    start = self._start(objective, self._rotated_about_center(priors[0], tilt), self._width)
                    coarse.append(self._search_from(objective, start, min_scale=c.coarse_step_scale))
        coarse.sort(key=lambda k: k.cost)
        # Refining a second candidate only pays when the starts disagreed about the basin.
        n_refine = c.n_refine if widen else 1
        fine = [self._search_from(objective, k, min_scale=c.min_step_scale) for k in coarse[:n_refine]]
        return min(fine, key=lambda k: k.cost)

    def _looks_right(self, objective: Objective, cand: _Candidate) -> bool:
        """Whether a coarse fit needs no second opinion: a good IoU, and (when tracking) a cost
        not much above the last accepted frame's (a local minimum fits visibly worse)."""
        if self._iou(objective, cand) < self.config.good_iou:
            return False
        return self._last_cost is None or cand.cost <= self.config.max_cost_ratio * self._last_cost

    def _search(self, objective: Objective) -> _Candidate | None:
        """Prior-free coarse stage: a fixed set of orientations, each placed on the observed
        centroid's ray at the depth its silhouette area implies, the best few refined."""
        c = self.config
        rotations = Rotation.random(c.n_search_rotations, random_state=c.seed).as_matrix()
        # A nominal depth to start from; align() corrects it by the area ratio.
        ray = objective.K_inv @ np.array([*objective.obs_centroid, 1.0])
        starts = []
        for R in rotations:
            X = np.eye(4)
            X[:3, :3] = R
            X[:3, 3] = ray / ray[2] - R @ objective.center_G
            starts.append(self._start(objective, X, self._width))
        starts.sort(key=lambda k: k.cost)
        coarse = [self._search_from(objective, k, min_scale=c.coarse_step_scale)
                  for k in starts[: 2 * c.n_refine]]
        coarse.sort(key=lambda k: k.cost)
        fine = [self._search_from(objective, k, min_scale=c.min_step_scale) for k in coarse[: c.n_refine]]
        return min(fine, key=lambda k: k.cost) if fine else None

    def _rotated_about_center(self, X_CG: np.ndarray, rotation: Rotation) -> np.ndarray:
        """``X_CG`` turned by ``rotation`` (camera axes) about the model centre."""
        c = X_CG[:3, :3] @ self.model.center_G + X_CG[:3, 3]
        X = np.eye(4)
        X[:3, :3] = rotation.as_matrix() @ X_CG[:3, :3]
        X[:3, 3] = c - X[:3, :3] @ self.model.center_G
        return X

    @staticmethod
    def _iou(objective: Objective, cand: _Candidate) -> float:
        return objective.iou(cand.p, cand.R_ref)[0]

    def _predict(self) -> np.ndarray:
        if self.config.constant_velocity and self._X_prev is not None and self._n_lost == 0:
            # The last motion, taken in the gripper's own frame, applied once more.
            return checked_transform(self._X_last @ invert_transform(self._X_prev) @ self._X_last, "X_pred")
        return self._X_last.copy()

    def _accept(self, objective: Objective, cand: _Candidate) -> TrackResult:
        X, width = objective.pose_from_params(cand.p, cand.R_ref)
        iou, inter = objective.iou(cand.p, cand.R_ref)
        self._X_prev = self._X_last if self._n_lost == 0 else None
        self._X_last = X.copy()
        if self.config.fit_width:
            self._width = width
        self._n_lost = 0
        self._last_cost = cand.cost
        return TrackResult(X, float(np.clip(iou, 0.0, 1.0)), "ok", fitness=iou, coverage=iou,
                           n_points=objective.n_obs, n_inliers=inter, width=self._width)

    def _lost(self, reason: str, *, objective: Objective | None = None,
              candidate: _Candidate | None = None) -> TrackResult:
        self._n_lost += 1
        X = self._X_last if self._X_last is not None else self._hint
        iou = 0.0 if objective is None or candidate is None else self._iou(objective, candidate)
        return TrackResult(np.eye(4) if X is None else X.copy(), 0.0, "lost", fitness=iou, coverage=iou,
                           n_points=0 if objective is None else objective.n_obs,
                           width=self._width, reason=reason)

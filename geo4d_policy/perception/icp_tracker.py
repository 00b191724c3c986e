"""The default, offline gripper tracker: model-based ICP of the gripper CAD model, with gating.

This module owns the tracker's decisions; the numerics are an engine's
(:mod:`geo4d_policy.perception.icp_core`: numpy reference; :mod:`geo4d_policy.perception.icp_torch`:
batched torch, the GPU path):
  * :class:`ICPGripperTracker`, a :class:`~geo4d_policy.perception.pose_tracker.PoseTracker`.
  * :func:`register_all` / :func:`track_all`, several trackers (views, arms) advanced by one
    frame together: the ICP trackers' work is handed to the engine in lock-step, so a batching
    engine does one batched call where a loop would do one per tracker. Results equal those of
    calling each tracker alone (the decisions are the same code; only the engine's arithmetic
    differs).

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
    the right one also leaves no visible model surface unobserved. Choices between poses take
    the coverage over the model surface inside the image (``Fit.score``): surface beyond the
    image border is no evidence, and counting it favoured poses slid along the viewing ray into
    the image over the true pose of a gripper cut by the border.
  * Tracking starts from the previous pose (optionally a constant-velocity prediction), looks
    only at points near it, and rejects results that jump more than ``max_translation`` /
    ``max_rotation`` per frame (the gate widens while the gripper is lost). A rejected or
    unconfident frame triggers a gated re-registration, and if that fails too the frame is
    ``"lost"``: confidence 0 and the last good pose held, never an exception or a NaN.
  * ``confidence = fitness * min(1, coverage / coverage_ref)``, in [0, 1].
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np

from geo4d_policy.data.geometry import invert_transform, transform_points
from geo4d_policy.perception.gripper_model import GripperModel
from geo4d_policy.perception.icp_core import (
    OCTAHEDRAL,
    EvaluateJob,
    Fit,
    ICPProblem,
    ICPTrackerConfig,
    Job,
    RefineJob,
    WidthJob,
    make_engine,
    orthonormalize,
    principal_axes,
    visible_samples,
)
from geo4d_policy.perception.pose_tracker import Observation, PoseTracker, TrackingFrame, TrackResult, pose_delta
from geo4d_policy.perception.projection import PixelProjection

__all__ = ["ICPGripperTracker", "ICPTrackerConfig", "register_all", "track_all"]

Steps = Generator[list[Job], list[Any], Any]
"""A tracker decision in progress: yields the jobs it needs, receives their results, returns its own."""


class ICPGripperTracker:
    """Default :class:`~geo4d_policy.perception.pose_tracker.PoseTracker`: robust model-based ICP
    with a free finger opening.

    Args:
        model: the gripper model (default: :meth:`GripperModel.load`).
        config: options; keyword ``overrides`` replace single fields of it.

    Raises:
        ValueError: an unknown ``engine`` or ``device`` in the config.

    Example:
        >>> tracker = ICPGripperTracker()
        >>> first = tracker.register(points0, init_pose=X_CG_hint)
        >>> results = [tracker.track(p) for p in later_points]
    """

    def __init__(self, model: GripperModel | None = None, *, config: ICPTrackerConfig | None = None,
                 **overrides) -> None:
        self.model = model or GripperModel.load()
        self.config = dataclasses.replace(config or ICPTrackerConfig(), **overrides)
        self.engine = make_engine(self.model, self.config)
        self.samples = self.engine.samples
        self._crop_center_G = self.model.center_G
        self._crop_radius = self.model.radius
        self.reset()

    # ---------------------------------------------------------------------------------------
    # State
    # ---------------------------------------------------------------------------------------

    def reset(self) -> None:
        self._X_last: np.ndarray | None = None
        self._X_prev: np.ndarray | None = None
        self._width = self.config.initial_width if self.config.initial_width is not None else 0.5 * self.model.stroke
        self._n_lost = 0
        self._hint: np.ndarray | None = None
        self._rng = np.random.default_rng(self.config.seed)

    def clone(self) -> ICPGripperTracker:
        """A tracker in the same state, sharing the model and the engine (cheap)."""
        other = copy.copy(self)
        other.copy_state_from(self)
        return other

    def copy_state_from(self, other: ICPGripperTracker) -> None:
        """Take ``other``'s tracking state (poses, opening, losses, hint, subsampling RNG)."""
        for name in ("_X_last", "_X_prev", "_hint"):
            value = getattr(other, name)
            setattr(self, name, None if value is None else value.copy())
        self._width = other._width
        self._n_lost = other._n_lost
        self._rng = copy.deepcopy(other._rng)

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
        return _drive(self.engine, [self.register_steps(observation, part_labels=part_labels,
                                                        init_pose=init_pose)])[0]

    def track(self, observation: Observation, *, part_labels: np.ndarray | None = None) -> TrackResult:
        """Track the gripper into the next frame.

        Before any successful registration this registers instead (with the last hint). Points
        far from the predicted pose are ignored, and a :class:`TrackingFrame` without mask or
        part labels is treated as unsegmented (the whole scene: fitness is then measured inside
        the gripper's box only); bare (N, 3) points are taken as this gripper's points.
        """
        return _drive(self.engine, [self.track_steps(observation, part_labels=part_labels)])[0]

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

    def score_pose(self, points: np.ndarray, X_CG: np.ndarray, *, width: float | None = None,
                   part_labels: np.ndarray | None = None, segmented: bool = True) -> TrackResult:
        """Evaluate a given pose against observed points without changing the tracking state.

        Used to put a comparable confidence on poses from other trackers (e.g. FoundationPose).
        ``segmented=False`` scores fitness only on the points inside the gripper's box. Bare
        points carry no depth buffer, so no model surface counts as hidden.
        """
        q = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        finite = np.isfinite(q).all(axis=1)
        labels = None if part_labels is None else np.asarray(part_labels)[finite]
        q = q[finite]
        X = self._valid_pose(X_CG)
        if X is None or len(q) < self.config.min_points:
            return TrackResult(np.eye(4) if X is None else X, 0.0, "lost", n_points=len(q),
                               reason="too few points or invalid pose")
        problem = ICPProblem(q, labels, cluttered=not segmented)
        fit = self.engine.run([EvaluateJob(problem, X, self._width if width is None else width)])[0]
        conf = self._confidence(fit)
        return TrackResult(X, conf, "ok" if conf >= self.config.min_confidence else "lost",
                           fit.fitness, fit.coverage, fit.rmse, fit.n_points, fit.n_inliers, fit.width)

    # ---------------------------------------------------------------------------------------
    # Decisions, as steps that hand their numerics to the engine
    # ---------------------------------------------------------------------------------------

    def register_steps(self, observation: Observation, *, part_labels: np.ndarray | None = None,
                       init_pose: np.ndarray | None = None) -> Steps:
        """:meth:`register` as steps (see :func:`register_all`)."""
        c = self.config
        self.reset()
        hint = self._valid_pose(init_pose)
        # Kept until a registration succeeds, so that track() can retry with it.
        self._hint = hint
        problem, reason = self._prepare(observation, part_labels, center=None, radius=None)
        if reason:
            return self._lost(reason, held=hint)
        fit = None
        if hint is not None:
            (fit,) = yield [RefineJob(problem, hint, self._width, corr_start=c.corr_dist_register)]
            fit_ok = self._confidence(fit) >= c.min_confidence
            if fit_ok:
                dt, dr = pose_delta(hint, fit.X_CG)
                fit_ok = dt <= c.max_translation and dr <= c.max_rotation
            if not fit_ok:
                fit = None
        threshold = c.min_confidence
        if fit is None:
            fit = yield from self._multi_hypothesis(problem, extra_seeds=[hint] if hint is not None else [])
            # A pose found by search rather than confirmed near a hint must be more convincing:
            # wrong fits of one-sided views reach fitness but leave visible model surface unseen.
            threshold = max(threshold, c.min_search_confidence)
        if fit is None or self._confidence(fit) < threshold:
            return self._lost("no confident registration", held=hint, fit=fit)
        fit = yield from self._search_width(problem, fit, accept=lambda f: self._confidence(f) >= threshold)
        return self._accept(fit)

    def track_steps(self, observation: Observation, *, part_labels: np.ndarray | None = None) -> Steps:
        """:meth:`track` as steps (see :func:`track_all`)."""
        if self._X_last is None:
            return (yield from self.register_steps(observation, part_labels=part_labels, init_pose=self._hint))
        c = self.config
        gate_t = c.max_translation * (1 + self._n_lost)
        gate_r = min(np.pi, c.max_rotation * (1 + self._n_lost))
        X_pred = self._predict()
        center = X_pred[:3, :3] @ self._crop_center_G + X_pred[:3, 3]
        problem, reason = self._prepare(observation, part_labels, center=center, radius=self._crop_radius + gate_t)
        if reason:
            return self._lost(reason)

        def acceptable(f: Fit | None) -> bool:
            if f is None or self._confidence(f) < c.min_confidence:
                return False
            dt, dr = pose_delta(self._X_last, f.X_CG)
            return dt <= gate_t and dr <= gate_r

        starts = [X_pred] if np.allclose(X_pred, self._X_last) else [X_pred, self._X_last]
        (fit,) = yield [RefineJob(problem, starts[0], self._width, corr_start=c.corr_dist_track)]
        if len(starts) > 1 and not (acceptable(fit) and self._confidence(fit) >= c.good_confidence):
            # The motion model may have overshot (e.g. the gripper stopped): also try standing still.
            (still,) = yield [RefineJob(problem, starts[1], self._width, corr_start=c.corr_dist_track)]
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
            gated = yield from self._multi_hypothesis(problem, extra_seeds=seeds,
                                                      gate=(self._X_last, gate_t, gate_r))
            if acceptable(gated) and (not acceptable(fit) or gated.score > fit.score):
                fit = gated
        if not acceptable(fit):
            return self._lost("no confident fit within the motion gate", fit=fit)
        fit = yield from self._search_width(problem, fit, accept=acceptable)
        return self._accept(fit)

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
        return orthonormalize(X)

    def _predict(self) -> np.ndarray:
        if self.config.constant_velocity and self._X_prev is not None and self._n_lost == 0:
            # The last motion, taken in the gripper's own frame, applied once more.
            X_delta = invert_transform(self._X_prev) @ self._X_last
            return orthonormalize(self._X_last @ X_delta)
        return self._X_last.copy()

    def _prepare(self, observation: Observation, part_labels, *, center, radius) -> tuple[ICPProblem | None, str]:
        """The frame's problem (finite points cropped around ``center``, their labels), or a
        reason to give up."""
        # Unsegmented frames carry clutter near the gripper: fitness is then measured inside
        # the model's box only (see NumpyICPEngine._evaluate).
        cluttered = False
        occlusion = None
        X_CnCv = None
        if isinstance(observation, TrackingFrame):
            X_CnCv = observation.X_CnCv
            if self.config.occlusion_aware:
                occ = PixelProjection.of_frame(observation, seed=self.config.seed)
                occlusion = occ if occ.ok else None
            if observation.mask is not None and observation.part_labels is None \
                    and not np.asarray(observation.mask, dtype=bool).any():
                return None, "empty mask"
            q, labels = observation.points()
            cluttered = not observation.segmented
        else:
            q = np.asarray(observation, dtype=np.float64)
            if q.size == 0:
                return None, "no points"
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
            return None, f"too few points ({len(q)} < {self.config.min_points})"
        if len(q) > self.config.max_points:
            idx = np.sort(self._rng.choice(len(q), self.config.max_points, replace=False))
            q = q[idx]
            labels = None if labels is None else labels[idx]
        return ICPProblem(q, labels, cluttered, occlusion, X_CnCv), ""

    def _lost(self, reason: str, *, held: np.ndarray | None = None, fit: Fit | None = None) -> TrackResult:
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

    def _accept(self, fit: Fit) -> TrackResult:
        self._X_prev = self._X_last if self._n_lost == 0 else None
        self._X_last = fit.X_CG.copy()
        self._width = fit.width
        self._n_lost = 0
        return TrackResult(fit.X_CG.copy(), self._confidence(fit), "ok", fit.fitness, fit.coverage, fit.rmse,
                           fit.n_points, fit.n_inliers, fit.width if self.config.fit_width else None,
                           fit.finger_points)

    def _search_width(self, problem: ICPProblem, fit: Fit, *, accept: Callable[[Fit], bool]) -> Steps:
        """Re-fit from the best opening of a grid over the whole stroke at the fit's pose.

        The grid is scored by the truncated squared distance of the points to the model (what
        the inlier count measures, made continuous so that a plateau of equal counts still has a
        best width). Only a grid width that explains the points better than the fitted one is
        refined from, and that refit is kept only if it is acceptable and scores higher
        (``Fit.score``, the criterion every other choice between fits uses): with no finger in
        view every width explains the points equally and the fit is left as it is, and a grid
        width that only one finger's points support is not refined from.
        """
        c = self.config
        if not c.fit_width or c.width_search_step <= 0:
            return fit
        tau = c.inlier_dist
        grid = np.arange(0.0, self.model.stroke + 0.5 * c.width_search_step, c.width_search_step)
        (res,) = yield [WidthJob(problem, fit.X_CG, fit.width, grid)]
        if res.both_fingers is None:  # only palm points: the opening does not matter
            return fit
        best = float(grid[int(np.argmin(res.costs))])
        # A grid point that is not better than the fitted width by more than noise (a quarter of
        # one point's inlier radius squared) is the same basin.
        if res.costs.min() >= res.fit_cost - 0.25 * tau ** 2:
            return fit
        # The opening is the gap between the two fingers: points on one finger alone fit any
        # width once the pose slides along the closing axis (on recorded apple frames such
        # one-sided fits fall on the right side of the open/closed cut about half the time).
        if not res.both_fingers:
            return fit
        (alt,) = yield [RefineJob(problem, fit.X_CG, best, corr_start=c.corr_dist_min)]
        return alt if accept(alt) and alt.score > fit.score else fit

    def _confidence(self, fit: Fit | None) -> float:
        if fit is None:
            return 0.0
        return float(np.clip(fit.fitness, 0, 1) * min(1.0, fit.coverage / self.config.coverage_ref))

    # --- registration ------------------------------------------------------------------------

    def _seeds(self, problem: ICPProblem, *, max_rotation_from: tuple[np.ndarray, float] | None = None
               ) -> list[np.ndarray]:
        """Orientation seeds around the observed cloud's principal axes, with translations; with
        ``max_rotation_from`` ``(X_ref, angle)`` only the orientations within ``angle`` of
        ``X_ref``'s (placing a seed, the costly part, does not change its orientation)."""
        S = self.samples
        c_obs, axes_obs = principal_axes(problem.q)
        # Visibility is the frame's own camera's (camera m for X^{m->n}): test it in that frame.
        X_CvCn = None if problem.X_CnCv is None else invert_transform(problem.X_CnCv)
        pts = np.concatenate(S.points)
        nrm = np.concatenate(S.normals)
        seeds = []
        for M in OCTAHEDRAL:
            R = axes_obs @ M @ S.axes.T
            if max_rotation_from is not None:
                X_R = np.eye(4)
                X_R[:3, :3] = R
                if pose_delta(max_rotation_from[0], X_R)[1] > max_rotation_from[1]:
                    continue
            t = c_obs - R @ S.centroid
            # Only the visible part of the model is observed: match the centroid of the model
            # surface a camera would see under this orientation instead (twice, as visibility
            # depends on the position).
            for _ in range(2):
                pC, nC = pts @ R.T + t, nrm @ R.T
                if X_CvCn is not None:
                    pC, nC = transform_points(X_CvCn, pC), nC @ X_CvCn[:3, :3].T
                vis = visible_samples(pC, nC)
                if vis.sum() < 10:
                    break
                t = c_obs - R @ pts[vis].mean(axis=0)
            X = np.eye(4)
            X[:3, :3] = R
            X[:3, 3] = t
            seeds.append(X)
        return seeds

    def _multi_hypothesis(self, problem: ICPProblem, *, extra_seeds: Sequence[np.ndarray] = (),
                          gate: tuple[np.ndarray, float, float] | None = None) -> Steps:
        """The best of short ICP runs from ``extra_seeds`` and the 24 axis-aligned orientations of
        the observed cloud, the best ``n_fine_hypotheses`` refined on all points; with ``gate``,
        only fits within it."""
        c = self.config
        q = problem.q
        near = None if gate is None else (gate[0], gate[2] + np.deg2rad(30))
        seeds = self._seeds(problem, max_rotation_from=near)
        candidates = list(extra_seeds) + seeds
        if len(q) <= c.coarse_points:
            coarse_problem = problem
        else:
            coarse_problem = problem.subset(np.sort(self._rng.choice(len(q), c.coarse_points, replace=False)))
        # Seeds can be 30 deg / 4 cm off: keep the correspondence radius wide for longer.
        fits = yield [RefineJob(coarse_problem, X0, self._width, corr_start=c.corr_dist_register,
                                iterations=c.coarse_iterations, corr_min=2 * c.corr_dist_min, decay=0.85,
                                facing=c.facing_in_coarse) for X0 in candidates]
        coarse = []
        for f in fits:
            if gate is not None:
                dt, dr = pose_delta(gate[0], f.X_CG)
                if dt > gate[1] or dr > gate[2]:
                    continue
            coarse.append(f)
        if not coarse:
            return None
        coarse.sort(key=lambda f: f.score, reverse=True)
        fine = yield [RefineJob(problem, f.X_CG, f.width, corr_start=c.corr_dist_track)
                      for f in coarse[: c.n_fine_hypotheses]]
        if gate is not None:
            fine = [f for f in fine if pose_delta(gate[0], f.X_CG)[0] <= gate[1]
                    and pose_delta(gate[0], f.X_CG)[1] <= gate[2]]
            if not fine:
                return None
        return max(fine, key=lambda f: f.score)


# --------------------------------------------------------------------------------------------
# Several trackers in lock-step
# --------------------------------------------------------------------------------------------


def _drive(engine: Any, steps: Sequence[Steps]) -> list[Any]:
    """Run decision steps together: each round hands every pending job of every tracker to the
    engine in one call, then lets each tracker continue with its own results."""
    results: list[Any] = [None] * len(steps)
    waiting: dict[int, list[Job]] = {}

    def advance(i: int, value: Any) -> None:
        try:
            jobs = steps[i].send(value)
        except StopIteration as stop:
            results[i] = stop.value
            return
        waiting[i] = jobs

    for i in range(len(steps)):
        advance(i, None)
    while waiting:
        rounds = list(waiting.items())
        waiting.clear()
        outs = engine.run([job for _, jobs in rounds for job in jobs])
        k = 0
        for i, jobs in rounds:
            advance(i, outs[k:k + len(jobs)])
            k += len(jobs)
    return results


def _drive_grouped(trackers: Sequence[ICPGripperTracker], steps: Sequence[Steps]) -> list[Any]:
    """:func:`_drive` per engine (trackers of different models or configs do not share one)."""
    results: list[Any] = [None] * len(steps)
    groups: dict[int, list[int]] = {}
    for i, t in enumerate(trackers):
        groups.setdefault(id(t.engine), []).append(i)
    for idx in groups.values():
        for i, r in zip(idx, _drive(trackers[idx[0]].engine, [steps[i] for i in idx])):
            results[i] = r
    return results


def register_all(jobs: Sequence[tuple[PoseTracker, Observation, np.ndarray | None]]) -> list[TrackResult]:
    """Register several trackers, ``(tracker, observation, init_pose)`` each (e.g. both arms):
    ICP trackers in lock-step (one engine call per round for all of them), others one by one.
    The results equal registering each alone."""
    out: list[TrackResult | None] = [None] * len(jobs)
    icp = [i for i, (t, _, _) in enumerate(jobs) if isinstance(t, ICPGripperTracker)]
    steps = [jobs[i][0].register_steps(jobs[i][1], init_pose=jobs[i][2]) for i in icp]
    for i, r in zip(icp, _drive_grouped([jobs[i][0] for i in icp], steps)):
        out[i] = r
    for i, (tracker, observation, hint) in enumerate(jobs):
        if out[i] is None:
            out[i] = tracker.register(observation, init_pose=hint)
    return out


def track_all(jobs: Sequence[tuple[PoseTracker, Observation]]) -> list[TrackResult]:
    """Track several trackers into their next frame, ``(tracker, observation)`` each (e.g. both
    views of both arms): ICP trackers in lock-step, others one by one. The results equal
    tracking each alone."""
    out: list[TrackResult | None] = [None] * len(jobs)
    icp = [i for i, (t, _) in enumerate(jobs) if isinstance(t, ICPGripperTracker)]
    steps = [jobs[i][0].track_steps(jobs[i][1]) for i in icp]
    for i, r in zip(icp, _drive_grouped([jobs[i][0] for i in icp], steps)):
        out[i] = r
    for i, (tracker, observation) in enumerate(jobs):
        if out[i] is None:
            out[i] = tracker.track(observation)
    return out

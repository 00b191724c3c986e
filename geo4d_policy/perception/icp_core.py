"""The numeric core of the ICP gripper tracker: its options, the work it asks for, and the reference engine.

This module owns:
  * :class:`ICPTrackerConfig`, every option of the tracker and of its numerics.
  * :class:`ModelSamples`, the gripper model as the tracker matches against it: surface samples
    and normals per part (palm, left finger, right finger) in ``G`` with the fingers at opening
    0 (an opening ``w`` shifts them by ``+-w/2`` along the closing axis).
  * The work items an :class:`~geo4d_policy.perception.icp_tracker.ICPGripperTracker` hands to an
    engine: :class:`ICPProblem` (one frame's observed points), :class:`RefineJob` (Gauss-Newton
    ICP from a start pose and opening, then scoring), :class:`EvaluateJob` (scoring a given pose)
    and :class:`WidthJob` (the grid of openings at a pose); results are :class:`Fit` and
    :class:`WidthCosts`.
  * :class:`NumpyICPEngine`, the reference numerics (KD-trees; the jobs of one call batched);
    the torch engine (:mod:`geo4d_policy.perception.icp_torch`) computes the same jobs by brute
    force and must agree with it.
  * :func:`run_jobs` and :func:`pack_clouds`, how both engines batch jobs.
  * :func:`make_engine`, the engine a config asks for (shared by every tracker of that model
    and config, so building a tracker per replan costs nothing).

The algorithm (the why of each rule is in the comments of the code):
  * Observed points are matched to the nearest model sample of the palm or of a finger (with
    part labels, only of their own part; with ``facing`` only among samples facing the camera);
    the finger opening is a free 7th parameter.
  * Each Gauss-Newton step minimises point-to-plane residuals plus a small point-to-point term,
    Huber-weighted, over correspondences within a distance that shrinks over the iterations.
  * A fit is scored by ``fitness`` (observed points within ``inlier_dist`` of the model) and
    ``coverage`` (camera-facing model surface with observed points near it, leaving out what the
    frame shows hidden behind the scene); poses are compared on the surface inside the image
    (``Fit.frame_coverage``), confidence also counts the surface beyond the image border.
  * "The camera" is the one that took the frame's pixels (``ICPProblem.X_CnCv``: camera m for
    view m's ``X^{m->n}``, whose points are in camera n's frame); facing, in front of and
    projection are all judged from it.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from geo4d_policy.data.geometry import invert_transform
from geo4d_policy.perception.gripper_model import PART_HAND, PART_LEFT, PART_RIGHT, GripperModel
from geo4d_policy.perception.projection import PixelProjection


ENGINES = ("auto", "numpy", "torch")
"""The tracker's numerics (:attr:`ICPTrackerConfig.engine`)."""


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
            model surface, so a gripper almost entirely hidden (or out of the image) still gets a
            low confidence; the coverage that chooses between poses takes it over the part of
            that surface inside the image (:class:`Fit`).
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
        engine: the numerics: ``numpy`` (the reference, KD-trees on the CPU), ``torch``
            (brute-force matching batched over jobs, views and arms; the GPU path) or ``auto``
            (torch on a CUDA ``device``, numpy otherwise).
        device: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``:
            where the torch engine runs (the numpy engine is always on the CPU).
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
    engine: str = "auto"
    device: str = "auto"

    def __post_init__(self) -> None:
        from geo4d_policy.devices import DEVICE_CHOICES, is_device_name

        if self.engine not in ENGINES:
            raise ValueError(f"tracker engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if not is_device_name(self.device):
            raise ValueError(f"tracker device must be {DEVICE_CHOICES}, got {self.device!r}")


# --------------------------------------------------------------------------------------------
# Small SE(3) helpers
# --------------------------------------------------------------------------------------------


def orthonormalize(X: np.ndarray) -> np.ndarray:
    """The nearest rigid transform to ``X`` (rotation block projected onto SO(3) by SVD)."""
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


OCTAHEDRAL = _octahedral_rotations()
"""(24, 3, 3) all axis-aligned orientations (registration seeds)."""


def visible_samples(pC: np.ndarray, nC: np.ndarray, *, cell: float = 0.006) -> np.ndarray:
    """Mask of model samples (in the frame of the camera that looks, at its origin) it would see.

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


def principal_axes(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroid and a right-handed frame of principal axes (columns, decreasing variance)."""
    c = points.mean(axis=0)
    _, vecs = np.linalg.eigh(np.cov((points - c).T) + 1e-12 * np.eye(3))
    axes = vecs[:, ::-1]
    if np.linalg.det(axes) < 0:
        axes[:, 2] *= -1
    return c, axes


# --------------------------------------------------------------------------------------------
# The model as the tracker sees it
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class ModelSamples:
    """Surface samples of the gripper parts in ``G``, fingers at opening 0.

    Attributes:
        points, normals: per part (palm, left finger, right finger), (M_k, 3) each.
        axis: the closing axis in ``G``; opening ``w`` moves the left finger by ``+w/2 * axis``
            and the right one by ``-w/2 * axis``.
        sign: (3,) the shift sign of each part (0 palm, +1 left, -1 right).
        lo, hi: per part, axis-aligned bounds of its samples at opening 0.
        stroke: the model's largest opening.
        centroid, axes: centroid and principal axes of the open gripper's samples (seeds).
    """

    points: tuple[np.ndarray, np.ndarray, np.ndarray]
    normals: tuple[np.ndarray, np.ndarray, np.ndarray]
    axis: np.ndarray
    sign: np.ndarray
    lo: tuple[np.ndarray, np.ndarray, np.ndarray]
    hi: tuple[np.ndarray, np.ndarray, np.ndarray]
    stroke: float
    centroid: np.ndarray
    axes: np.ndarray

    @classmethod
    def of(cls, model: GripperModel, counts: Sequence[int], *, seed: int) -> ModelSamples:
        samples = model.sample_points(width=0.0, counts=dict(zip(("hand", "left_finger", "right_finger"), counts)),
                                      seed=seed)
        parts = ("hand", "left_finger", "right_finger")
        pts = tuple(samples[p].points for p in parts)
        nrm = tuple(samples[p].normals for p in parts)
        axis = model.closing_axis_G
        all_pts = np.concatenate([pts[0], pts[1] + 0.5 * model.stroke * axis, pts[2] - 0.5 * model.stroke * axis])
        return cls(pts, nrm, axis, np.array([0.0, 1.0, -1.0]), tuple(p.min(axis=0) for p in pts),
                   tuple(p.max(axis=0) for p in pts), float(model.stroke), all_pts.mean(axis=0),
                   principal_axes(all_pts)[1])

    def shift(self, k: int, width: np.ndarray) -> np.ndarray:
        """The translation (..., 3) of part ``k``'s samples at openings ``width`` (...)."""
        return (0.5 * self.sign[k] * width)[..., None] * self.axis

    def box_sq_dist(self, k: int, x: np.ndarray) -> np.ndarray:
        """Squared distance (...) of points ``x`` (..., 3), in part ``k``'s frame, to the part's
        bounding box (0 inside)."""
        gap = np.maximum(np.maximum(self.lo[k] - x, x - self.hi[k]), 0.0)
        return np.einsum("...i,...i->...", gap, gap)

    def bounds(self, width: float) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounds in G of the model's samples at ``width``."""
        lo = np.minimum.reduce([self.lo[0], self.lo[1] + 0.5 * width * self.axis,
                                self.lo[2] - 0.5 * width * self.axis])
        hi = np.maximum.reduce([self.hi[0], self.hi[1] + 0.5 * width * self.axis,
                                self.hi[2] - 0.5 * width * self.axis])
        return lo, hi


# --------------------------------------------------------------------------------------------
# Work items
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class ICPProblem:
    """One frame's observed points as a registration sees them.

    Attributes:
        q: (N, 3) float64 points in camera n's frame (masked, cropped, subsampled).
        labels: (N,) int64 part codes, or None (match every part).
        cluttered: unsegmented frame: fitness counts only the points inside the gripper's box.
        occlusion: the frame's projection (coverage leaves out model surface hidden behind the
            scene), or None.
        X_CnCv: pose in camera n of the camera that owns the frame's pixels (None: camera n).
            Which model surface faces the camera (matching and coverage) and what lies in front
            of it are judged from this camera: view m's points are in camera n's frame, but
            camera m saw them.
        cache: per-engine derived data (KD-tree, point spacing, device tensors).
    """

    q: np.ndarray
    labels: np.ndarray | None = None
    cluttered: bool = False
    occlusion: PixelProjection | None = None
    X_CnCv: np.ndarray | None = None
    cache: dict[str, Any] = dataclasses.field(default_factory=dict)

    def subset(self, idx: np.ndarray) -> ICPProblem:
        """The same frame with only the points ``idx``."""
        return ICPProblem(self.q[idx], None if self.labels is None else self.labels[idx], self.cluttered,
                          self.occlusion, self.X_CnCv)

    @property
    def camera_center(self) -> np.ndarray:
        """(3,) the centre of the frame's camera in camera n's frame."""
        return np.zeros(3) if self.X_CnCv is None else self.X_CnCv[:3, 3].copy()

    @property
    def camera_axis(self) -> np.ndarray:
        """(3,) the frame's camera's viewing direction (its z axis) in camera n's frame."""
        return np.array([0.0, 0.0, 1.0]) if self.X_CnCv is None else self.X_CnCv[:3, 2].copy()


@dataclasses.dataclass(frozen=True, eq=False)
class RefineJob:
    """Gauss-Newton ICP of ``problem`` from ``X_CG`` and opening ``width``, then scoring.

    ``iterations`` / ``corr_min`` / ``decay`` default to the config's; ``corr_start`` is the
    first correspondence radius; ``facing`` matches points only to camera-facing samples.
    """

    problem: ICPProblem
    X_CG: np.ndarray
    width: float
    corr_start: float
    iterations: int | None = None
    corr_min: float | None = None
    decay: float | None = None
    facing: bool = True


@dataclasses.dataclass(frozen=True, eq=False)
class EvaluateJob:
    """Score ``X_CG`` at opening ``width`` against ``problem`` (no motion)."""

    problem: ICPProblem
    X_CG: np.ndarray
    width: float


@dataclasses.dataclass(frozen=True, eq=False)
class WidthJob:
    """The truncated squared distance of the non-palm points at pose ``X_CG`` for every opening
    of ``grid`` and for ``width`` (the fitted one)."""

    problem: ICPProblem
    X_CG: np.ndarray
    width: float
    grid: np.ndarray


Job = RefineJob | EvaluateJob | WidthJob


@dataclasses.dataclass
class Fit:
    """A scored pose: see :class:`~geo4d_policy.perception.pose_tracker.TrackResult` for the fields.

    ``coverage`` (what the confidence uses) is taken over at least ``min_visible_fraction`` of
    the whole camera-facing model surface, so a gripper mostly out of the image or hidden is
    trusted less. ``frame_coverage`` (what :attr:`score` uses to choose between poses) is taken
    over the part of that surface inside the image only: surface beyond the image border is
    neither seen nor contradicted, so it says nothing about where the gripper is, and a floor
    counting it would favour poses that slide more of the model into the image (along the
    viewing ray) over the true one of a gripper cut by the border.
    """

    X_CG: np.ndarray
    width: float
    fitness: float = 0.0
    coverage: float = 0.0
    rmse: float = float("inf")
    n_points: int = 0
    n_inliers: int = 0
    finger_points: tuple[int, int] = (0, 0)
    frame_coverage: float = 0.0

    @property
    def score(self) -> float:
        """What every choice between fits compares: ``fitness * frame_coverage``."""
        return self.fitness * self.frame_coverage


@dataclasses.dataclass(frozen=True)
class WidthCosts:
    """Result of a :class:`WidthJob`.

    Attributes:
        costs: (G,) cost of every grid opening.
        fit_cost: cost at the job's ``width``.
        both_fingers: whether, at the best grid opening, both fingers have an inlier point.
            None when there were no non-palm points.
    """

    costs: np.ndarray
    fit_cost: float
    both_fingers: bool | None


# --------------------------------------------------------------------------------------------
# The reference engine
# --------------------------------------------------------------------------------------------


def pack_clouds(clouds: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> tuple[np.ndarray, np.ndarray]:
    """Clouds padded to one length, as the engines batch them: points (J, N, 3) (padding 0) and
    labels (J, N) (-1 unlabelled, i.e. any part; -2 padding)."""
    J = len(clouds)
    n = max(1, max(len(q) for q, _ in clouds))
    q = np.zeros((J, n, 3))
    lab = np.full((J, n), -2, dtype=np.int64)
    for j, (qj, lj) in enumerate(clouds):
        q[j, :len(qj)] = qj
        lab[j, :len(qj)] = -1 if lj is None else lj
    return q, lab


def run_jobs(engine: Any, jobs: Sequence[Job]) -> list[Any]:
    """Each job's result (:class:`Fit` or :class:`WidthCosts`), in order, as an engine computes
    them: the jobs of a kind together (refines by their facing test, all evaluations, opening
    grids by their length), through the engine's ``_refine(jobs, facing=)``,
    ``_evaluate_jobs(jobs)`` and ``_width_costs(jobs)``."""
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        if isinstance(job, RefineJob):
            key: tuple = ("refine", bool(job.facing and engine.config.facing_neighbours > 1))
        elif isinstance(job, EvaluateJob):
            key = ("evaluate",)
        elif isinstance(job, WidthJob):
            key = ("width", len(job.grid))
        else:
            raise TypeError(f"unknown ICP job {type(job).__name__}")
        groups.setdefault(key, []).append(i)
    out: list[Any] = [None] * len(jobs)
    for key, idx in groups.items():
        batch = [jobs[i] for i in idx]
        if key[0] == "refine":
            results = engine._refine(batch, facing=key[1])
        elif key[0] == "evaluate":
            results = engine._evaluate_jobs(batch)
        else:
            results = engine._width_costs(batch)
        for i, r in zip(idx, results):
            out[i] = r
    return out


class NumpyICPEngine:
    """The reference numerics: KD-trees over the model samples, the jobs of one call together.

    Every Gauss-Newton iteration of all refine jobs of a call is one step over the padded batch
    (one tree query per part for all their points, 7x7 solves batched), and evaluations share one
    coverage query per observed cloud: on a small CPU the cost of a job is mostly the per-call
    overhead of numpy and the tree, not arithmetic, and a search hands over dozens of jobs at
    once. A job that converged, ran out of correspondences or of iterations stops changing
    while the others go on; results do not depend on which jobs share a call (up to rounding
    of the batched sums).
    """

    name = "numpy"

    def __init__(self, samples: ModelSamples, config: ICPTrackerConfig) -> None:
        self.samples = samples
        self.config = config
        self._trees = [cKDTree(p) for p in samples.points]
        self._P_all = np.concatenate(samples.points)
        self._N_all = np.concatenate(samples.normals)
        self._part_all = np.concatenate([np.full(len(p), k) for k, p in enumerate(samples.points)])
        self._half_sign_all = 0.5 * samples.sign[self._part_all]
        ptp = config.point_to_point_weight
        self._row_weights = np.array([1.0, ptp, ptp, ptp])  # plane row, then the three point rows

    def run(self, jobs: Sequence[Job]) -> list[Any]:
        """Each job's result (:class:`Fit` or :class:`WidthCosts`), in order (:func:`run_jobs`)."""
        return run_jobs(self, jobs)

    # --- correspondences ---------------------------------------------------------------------

    def match(self, qG: np.ndarray, lab: np.ndarray, width: np.ndarray, max_dist: np.ndarray,
              cam_G: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nearest model sample of each point of a padded batch: (distance, part, sample index),
        (J, N) each, for points ``qG`` (J, N, 3) in G with labels ``lab`` (J, N) (-1 any part, -2
        padding) at openings ``width`` (J,).

        Points with no sample strictly within their job's ``max_dist`` (J,) get distance ``inf``
        (a bounded search is several times faster, and such points are rejected anyway), part -1.
        With ``cam_G`` (J, 3) (each job's camera centre in G) only samples facing the camera are
        eligible, found among the ``facing_neighbours`` nearest: a one-sided observation matched
        to back faces would otherwise pull the model through itself, a deep local minimum when
        the start is a few centimetres off. Ties between parts go to the earlier part.
        """
        S = self.samples
        J, N, _ = qG.shape
        dist = np.full((J, N), np.inf)
        part = np.full((J, N), -1, dtype=np.int64)
        idx = np.zeros((J, N), dtype=np.int64)
        kq = 1 if cam_G is None else self.config.facing_neighbours
        radii = max_dist[:1] if (max_dist == max_dist[0]).all() else np.unique(max_dist)
        # Unlabelled points are candidates of every part: gathered once.
        any_part = lab == -1
        j_any, n_any = np.nonzero(any_part)
        q_any = qG[j_any, n_any]
        for k in (PART_HAND, PART_LEFT, PART_RIGHT):
            own = lab == k
            if own.any():
                jj, nn = np.nonzero(own | any_part)
                qk = qG[jj, nn]
            else:
                jj, nn, qk = j_any, n_any, q_any
            if not len(jj):
                continue
            shift = S.shift(k, width)  # (J, 3)
            x = qk - shift[jj]
            # A part can only give a point a match within its radius and nearer than the one it
            # has if the part's bounding box is that near: the other points are not searched
            # (the same result; a tree prunes them too, but slower per point).
            limit = np.minimum(max_dist[jj], dist[jj, nn]) + 1e-9
            near = S.box_sq_dist(k, x) < limit * limit
            if not near.all():
                jj, nn, x = jj[near], nn[near], x[near]
                if not len(jj):
                    continue
            d, i = self._query(k, x, max_dist[jj], radii, 1)
            if kq > 1:
                # The first camera-facing one among the kq nearest. Most points' nearest sample
                # faces the camera (they were seen): only the others need the kq nearest.
                found = np.flatnonzero(np.isfinite(d))
                r = found[~self._facing(k, i[found], shift[jj[found]], cam_G[jj[found]])]
                if len(r):
                    d_r, i_r = self._query(k, x[r], max_dist[jj[r]], radii, kq)
                    n_k = len(S.points[k])
                    # Sentinel index len(tree): no neighbour.
                    facing = self._facing(k, np.minimum(i_r, n_k - 1), shift[jj[r]][:, None, :],
                                          cam_G[jj[r]][:, None, :]) & (i_r < n_k) & np.isfinite(d_r)
                    first = np.argmax(facing, axis=1)
                    rows = np.arange(len(r))
                    d[r] = np.where(facing[rows, first], d_r[rows, first], np.inf)
                    i[r] = i_r[rows, first]
            better = d < dist[jj, nn]
            jb, nb = jj[better], nn[better]
            dist[jb, nb], part[jb, nb], idx[jb, nb] = d[better], k, i[better]
        return dist, part, idx

    def _facing(self, k: int, i: np.ndarray, shift: np.ndarray, cam_G: np.ndarray) -> np.ndarray:
        """Whether samples ``i`` (any shape) of part ``k``, shifted by ``shift``, face the camera at
        ``cam_G`` (both broadcast against ``i``'s shape + (3,))."""
        S = self.samples
        rel = S.points[k][i] + shift - cam_G
        return np.einsum("...j,...j->...", S.normals[k][i], rel) < 0

    def _query(self, k: int, x: np.ndarray, bound: np.ndarray, radii: np.ndarray, kq: int
               ) -> tuple[np.ndarray, np.ndarray]:
        """Part ``k``'s tree queried for the ``kq`` nearest samples of points ``x`` in the part's
        frame strictly within their radius ``bound`` (one query per distinct radius of ``radii``):
        (distances, indices), (n,) each for ``kq`` 1, else (n, kq)."""
        if len(radii) == 1:
            return self._trees[k].query(x, k=kq, distance_upper_bound=radii[0])
        shape = (len(x),) if kq == 1 else (len(x), kq)
        d = np.full(shape, np.inf)
        i = np.full(shape, len(self.samples.points[k]), dtype=np.int64)
        for b in radii:
            rows = np.flatnonzero(bound == b)
            if len(rows):
                d[rows], i[rows] = self._trees[k].query(x[rows], k=kq, distance_upper_bound=b)
        return d, i

    def _matched_samples(self, part: np.ndarray, idx: np.ndarray, width: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
        """Model points (at each job's opening) and normals of matches, (J, N, 3) each; zeros
        for points without a match."""
        S = self.samples
        p = np.zeros(part.shape + (3,))
        nrm = np.zeros(part.shape + (3,))
        for k in (PART_HAND, PART_LEFT, PART_RIGHT):
            jj, nn = np.nonzero(part == k)
            p[jj, nn] = S.points[k][idx[jj, nn]] + S.shift(k, width[jj])
            nrm[jj, nn] = S.normals[k][idx[jj, nn]]
        return p, nrm

    # --- Gauss-Newton ICP --------------------------------------------------------------------

    def _normal_equations(self, qG: np.ndarray, p: np.ndarray, nrm: np.ndarray, s: np.ndarray,
                          wt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """H (J, 7, 7) and g (J, 7) of the weighted rows: per correspondence one point-to-plane
        residual ``n.(q - p)`` and three point-to-point residuals ``q - p``; unknowns (omega, v,
        width), with the update applied as ``q <- q + omega x q + v`` and finger samples moving
        by +-width/2 along the closing axis (rows ``[q x n, n, -s/2 n.axis]`` and
        ``[-[q]_x, I, -s/2 axis]``). ``wt`` (J, N) is 0 for points without a correspondence."""
        c = self.config
        axis = self.samples.axis
        J, N, _ = qG.shape
        diff = qG - p
        half = -0.5 * s
        A = np.zeros((J, N, 4, 7))
        A[..., 0, :3] = np.cross(qG, nrm)
        A[..., 0, 3:6] = nrm
        A[..., 0, 6] = half * (nrm @ axis)
        qx, qy, qz = qG[..., 0], qG[..., 1], qG[..., 2]
        # -[q]_x, then the identity, then the finger shift.
        A[..., 1, 1], A[..., 1, 2] = qz, -qy
        A[..., 2, 0], A[..., 2, 2] = -qz, qx
        A[..., 3, 0], A[..., 3, 1] = qy, -qx
        A[..., 1, 3] = A[..., 2, 4] = A[..., 3, 5] = 1.0
        A[..., 1:, 6] = half[..., None] * axis
        if not c.fingers_in_pose:
            A[..., :6] *= (s == 0)[..., None, None]
        res = np.empty((J, N, 4))
        res[..., 0] = np.einsum("jni,jni->jn", nrm, diff)
        res[..., 1:] = diff
        Aw = (A * (wt[..., None] * self._row_weights)[..., None]).reshape(J, 4 * N, 7)
        A = A.reshape(J, 4 * N, 7)
        Awt = Aw.transpose(0, 2, 1)
        return Awt @ A, (Awt @ res.reshape(J, 4 * N, 1))[..., 0]

    def _refine(self, jobs: Sequence[RefineJob], *, facing: bool) -> list[Fit]:
        """Gauss-Newton ICP of every job from its start pose and opening (all iterations of the
        batch in lock-step), then their scores."""
        c = self.config
        J = len(jobs)
        q, lab = pack_clouds([(j.problem.q, j.problem.labels) for j in jobs])
        X_GC = invert_transform(np.stack([j.X_CG for j in jobs]))
        R, t = X_GC[:, :3, :3].copy(), X_GC[:, :3, 3].copy()
        w = np.array([j.width for j in jobs], dtype=np.float64)
        w_prev = w.copy()
        iters = np.array([j.iterations or c.iterations for j in jobs])
        corr_start = np.array([j.corr_start for j in jobs], dtype=np.float64)
        corr_min = np.array([c.corr_dist_min if j.corr_min is None else j.corr_min for j in jobs],
                            dtype=np.float64)
        decay = np.array([c.corr_decay if j.decay is None else j.decay for j in jobs], dtype=np.float64)
        # Each frame's camera centre (camera m's for X^{m->n}): the facing test's viewpoint.
        center = np.stack([j.problem.camera_center for j in jobs])
        active = np.ones(J, dtype=bool)
        for it in range(int(iters.max())):
            active &= iters > it
            a = np.flatnonzero(active)
            if not len(a):
                break
            whole = len(a) == J
            Ra, ta, wa = (R, t, w) if whole else (R[a], t[a], w[a])
            qa, la = (q, lab) if whole else (q[a], lab[a])
            # Coarse-to-fine trimming: the correspondence radius shrinks geometrically.
            cmin = corr_min[a]
            corr = np.maximum(cmin, corr_start[a] * decay[a] ** it)
            qG = qa @ Ra.transpose(0, 2, 1) + ta[:, None, :]
            cam_G = np.einsum("jik,jk->ji", Ra, center[a]) + ta if facing else None
            dist, part, idx = self.match(qG, la, wa, corr, cam_G)
            p, nrm = self._matched_samples(part, idx, wa)
            sel = dist <= corr[:, None]
            m = sel.sum(axis=1).astype(np.float64)
            s = np.where(sel, self.samples.sign[np.maximum(part, 0)], 0.0)
            wt = np.where(sel, c.huber_delta / np.maximum(np.where(sel, dist, 0.0), c.huber_delta), 0.0)
            H, g = self._normal_equations(qG, p, nrm, s, wt)
            # Damping keeps the solve well posed (e.g. no finger seen -> width unobservable).
            d6 = np.arange(6)
            H[:, d6, d6] += 1e-6 * m[:, None]
            if c.fit_width:
                H[:, 6, 6] += c.width_prior * m + 1e-9
                g[:, 6] += c.width_prior * m * (wa - w_prev[a])
            else:
                H[:, 6, :] = 0.0
                H[:, :, 6] = 0.0
                H[:, 6, 6] = 1.0
                g[:, 6] = 0.0
            # Jobs with too few correspondences stop (their system is replaced by a harmless one).
            enough = m >= 6
            H[~enough] = np.eye(7)
            g[~enough] = 0.0
            delta, solved = _solve_all(H, g)
            ok = enough & solved & np.isfinite(delta).all(axis=1)
            delta[~ok] = 0.0
            Rs = Rotation.from_rotvec(delta[:, :3]).as_matrix()
            R_new = Rs @ Ra
            t_new = np.einsum("jik,jk->ji", Rs, ta) + delta[:, 3:6]
            w_new = np.clip(wa + delta[:, 6], 0.0, self.samples.stroke)
            converged = (corr <= cmin) & (np.linalg.norm(delta[:, :3], axis=1) < 2e-4) \
                & (np.linalg.norm(delta[:, 3:6], axis=1) < 1e-4)
            # A job that stopped (too few correspondences, no solution) keeps its last pose.
            R[a[ok]], t[a[ok]], w[a[ok]] = R_new[ok], t_new[ok], w_new[ok]
            active[a] = ok & ~converged
        X_GC = np.zeros((J, 4, 4))
        X_GC[:, :3, :3], X_GC[:, :3, 3], X_GC[:, 3, 3] = R, t, 1.0
        X_CG = np.stack([orthonormalize(X) for X in invert_transform(X_GC)])
        return self._evaluate([j.problem for j in jobs], X_CG, w, packed=(q, lab))

    # --- scoring -----------------------------------------------------------------------------

    def _tree_and_spacing(self, problem: ICPProblem) -> tuple[cKDTree, float]:
        """The observed points' KD-tree and median nearest-neighbour spacing (cached per problem)."""
        cached = problem.cache.get("numpy_tree")
        if cached is None:
            q = problem.q
            tree = cKDTree(q)
            spacing = float(np.median(tree.query(q, k=2)[0][:, 1])) if len(q) > 1 else 0.0
            cached = problem.cache["numpy_tree"] = (tree, spacing)
        return cached

    def _evaluate(self, problems: Sequence[ICPProblem], X_CG: np.ndarray, width: np.ndarray, *,
                  packed: tuple[np.ndarray, np.ndarray] | None = None) -> list[Fit]:
        """Score poses ``X_CG`` (J, 4, 4) at openings ``width`` (J,), one per problem."""
        c = self.config
        S = self.samples
        J = len(problems)
        q, lab = packed if packed is not None else pack_clouds([(p.q, p.labels) for p in problems])
        valid = lab >= -1
        X_GC = invert_transform(X_CG)
        qG = q @ X_GC[:, :3, :3].transpose(0, 2, 1) + X_GC[:, None, :3, 3]
        dist, part, _ = self.match(qG, lab, width, np.full(J, c.inlier_dist))
        inl = dist <= c.inlier_dist
        cluttered = np.array([p.cluttered for p in problems])
        near = valid.copy()
        if cluttered.any():
            # Fitness over the points inside the gripper's box (+ margin) at this pose: the
            # scene around it is not the tracker's to explain.
            for j in np.flatnonzero(cluttered):
                lo, hi = S.bounds(float(width[j]))
                near[j] &= np.all((qG[j] >= lo - c.clutter_margin) & (qG[j] <= hi + c.clutter_margin), axis=1)
        n_near = near.sum(axis=1)
        n_in_near = (inl & near).sum(axis=1)
        n_inl = inl.sum(axis=1)
        sq = np.where(inl, dist, 0.0) ** 2
        coverage, frame_coverage = self._coverage(problems, X_CG, width)
        out = []
        for j in range(J):
            fitness = float(n_in_near[j] / n_near[j]) if n_near[j] >= c.min_points else 0.0
            rmse = float(np.sqrt(sq[j].sum() / n_inl[j])) if n_inl[j] else float("inf")
            fingers = (int((inl[j] & (part[j] == PART_LEFT)).sum()),
                       int((inl[j] & (part[j] == PART_RIGHT)).sum()))
            out.append(Fit(X_CG[j].copy(), float(width[j]), fitness, float(coverage[j]), rmse, int(n_near[j]),
                           int(n_in_near[j]), fingers, float(frame_coverage[j])))
        return out

    def _coverage(self, problems: Sequence[ICPProblem], X_CG: np.ndarray, width: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
        """``coverage`` and ``frame_coverage`` (:class:`Fit`) of each pose: camera-facing model
        samples with an observed point within a radius that adapts to the observed point spacing
        (pixel footprint grows with distance); one tree query (and one occlusion lookup) per
        observed cloud for all the poses scored against it."""
        c = self.config
        S = self.samples
        J = len(problems)
        R, t = X_CG[:, :3, :3], X_CG[:, :3, 3]
        pG = self._P_all + (self._half_sign_all * width[:, None])[..., None] * S.axis  # (J, M, 3)
        pC = pG @ R.transpose(0, 2, 1) + t[:, None, :]
        nC = self._N_all @ R.transpose(0, 2, 1)
        center = np.stack([p.camera_center for p in problems])
        axis = np.stack([p.camera_axis for p in problems])
        # Facing the frame's own camera (camera m for X^{m->n}), and in front of it.
        ray = pC - center[:, None, :]
        facing = (np.einsum("jmi,jmi->jm", nC, ray) < 0) & (np.einsum("jmi,ji->jm", ray, axis) > 0)
        for j, p in enumerate(problems):
            if p.labels is not None:
                # Only score the parts that the segmentation claims to have seen.
                present = np.array([np.any(p.labels == k) for k in range(3)])
                facing[j] &= present[self._part_all]
        coverage = np.zeros(J)
        frame_coverage = np.zeros(J)
        groups: dict[int, list[int]] = {}
        for j, p in enumerate(problems):
            groups.setdefault(id(p), []).append(j)
        for js in groups.values():
            problem = problems[js[0]]
            tree, spacing = self._tree_and_spacing(problem)
            radius = max(c.inlier_dist, 1.5 * spacing)
            counts = facing[js].sum(axis=1)
            pts = pC[js][facing[js]]
            if not len(pts):
                continue
            d, _ = tree.query(pts, k=1, distance_upper_bound=radius)
            hit = np.isfinite(d)
            bounds = np.concatenate([[0], np.cumsum(counts)])
            occ = problem.occlusion
            if occ is not None:
                inside, expect = occ.visibility(pts, margin=c.occlusion_margin)
            for u, j in enumerate(js):
                sl = slice(bounds[u], bounds[u + 1])
                if counts[u] == 0:
                    continue
                if occ is not None:
                    seen, n_exp = float((hit[sl] & expect[sl]).sum()), float(expect[sl].sum())
                    coverage[j] = min(1.0, seen / max(n_exp, c.min_visible_fraction * float(counts[u]), 1.0))
                    n_inside = float(inside[sl].sum())
                    frame_coverage[j] = min(1.0, seen / max(n_exp, c.min_visible_fraction * n_inside, 1.0))
                else:
                    coverage[j] = frame_coverage[j] = float(np.mean(hit[sl]))
        return coverage, frame_coverage

    # --- the opening grid --------------------------------------------------------------------

    def _evaluate_jobs(self, jobs: Sequence[EvaluateJob]) -> list[Fit]:
        return self._evaluate([j.problem for j in jobs], np.stack([j.X_CG for j in jobs]),
                              np.array([j.width for j in jobs], dtype=np.float64))

    def _width_costs(self, jobs: Sequence[WidthJob]) -> list[WidthCosts]:
        return [self._width_cost(j) for j in jobs]

    def _width_cost(self, job: WidthJob) -> WidthCosts:
        tau = self.config.inlier_dist
        qG, lab = width_points(job)
        if len(qG) == 0:
            return WidthCosts(np.zeros(len(job.grid)), 0.0, None)
        S = self.samples
        widths = np.append(np.asarray(job.grid, dtype=np.float64), float(job.width))
        n, G = len(qG), len(widths)
        # Nearest sample per point and opening, as match() finds it: the palm does not move with
        # the opening (matched once), each finger is queried for all openings in one call.
        dist = np.full((G, n), np.inf)
        part = np.full((G, n), -1, dtype=np.int64)
        for k in (PART_HAND, PART_LEFT, PART_RIGHT):
            sel = np.ones(n, dtype=bool) if lab is None else lab == k
            if not sel.any():
                continue
            cols = np.flatnonzero(sel)
            if k == PART_HAND:
                d, _ = self._trees[k].query(qG[sel], k=1, distance_upper_bound=tau)
                d = np.broadcast_to(d, (G, len(d)))
            else:
                x = qG[sel][None] - S.shift(k, widths)[:, None]  # (G, n_k, 3)
                # Only points whose finger box (at that opening) is nearer than tau and than their
                # match so far can change (as in match()).
                limit = np.minimum(tau, dist[:, cols]) + 1e-9
                near = S.box_sq_dist(k, x) < limit * limit
                d = np.full(near.shape, np.inf)
                if near.any():
                    d[near], _ = self._trees[k].query(x[near], k=1, distance_upper_bound=tau)
            better = d < dist[:, cols]
            dist[:, cols] = np.where(better, d, dist[:, cols])
            part[:, cols] = np.where(better, k, part[:, cols])
        costs = np.sum(np.minimum(dist, tau) ** 2, axis=1)
        best = int(np.argmin(costs[:-1]))
        inl = dist[best] <= tau
        both = bool(np.any(inl & (part[best] == PART_LEFT)) and np.any(inl & (part[best] == PART_RIGHT)))
        return WidthCosts(costs[:-1], float(costs[-1]), both)


def _solve_all(H: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``-H^-1 g`` of a batch of systems (J, 7, 7), (J, 7), and which could be solved (a singular
    one gets zeros and False)."""
    try:
        return -np.linalg.solve(H, g[..., None])[..., 0], np.ones(len(H), dtype=bool)
    except np.linalg.LinAlgError:
        out = np.zeros_like(g)
        ok = np.ones(len(H), dtype=bool)
        for j in range(len(H)):
            try:
                out[j] = -np.linalg.solve(H[j], g[j])
            except np.linalg.LinAlgError:
                ok[j] = False
        return out, ok


def width_points(job: WidthJob) -> tuple[np.ndarray, np.ndarray | None]:
    """The points a :class:`WidthJob` scores, in G: palm-labelled points do not depend on the opening."""
    X_GC = invert_transform(job.X_CG)
    q, labels = job.problem.q, job.problem.labels
    qG = q @ X_GC[:3, :3].T + X_GC[:3, 3]
    if labels is None:
        return qG, None
    keep = labels != PART_HAND
    return qG[keep], labels[keep]


# --------------------------------------------------------------------------------------------
# Engine choice
# --------------------------------------------------------------------------------------------

def engine_choice(config: ICPTrackerConfig) -> tuple[str, str]:
    """(engine, device) a config resolves to: ``auto`` is torch on CUDA, numpy otherwise.

    Raises:
        ValueError: a CUDA device this machine lacks (names are checked by the config).
    """
    from geo4d_policy.devices import check_device

    if config.engine == "numpy":
        return "numpy", "cpu"
    try:
        device = check_device(config.device)
    except ValueError as e:
        raise ValueError(f"tracker {e}") from None
    if config.engine == "auto":
        return ("torch", device) if device.startswith("cuda") else ("numpy", "cpu")
    return "torch", device


_ENGINES: dict[tuple, Any] = {}
_MAX_ENGINES = 8


def make_engine(model: GripperModel, config: ICPTrackerConfig) -> Any:
    """The engine for ``model`` and ``config`` (cached: trackers of one model and config share it).

    Raises:
        ValueError: an unknown engine or device name, or a CUDA device this machine lacks.
    """
    engine, device = engine_choice(config)
    key = (id(model), config, engine, device)
    hit = _ENGINES.get(key)
    if hit is not None:
        return hit[1]
    samples = ModelSamples.of(model, config.model_points, seed=config.seed)
    if engine == "numpy":
        made: Any = NumpyICPEngine(samples, config)
    else:
        from geo4d_policy.perception.icp_torch import TorchICPEngine

        made = TorchICPEngine(samples, config, device=device)
    if len(_ENGINES) >= _MAX_ENGINES:
        _ENGINES.pop(next(iter(_ENGINES)))
    _ENGINES[key] = (model, made)  # the model is kept alive so that its id is not reused
    return made

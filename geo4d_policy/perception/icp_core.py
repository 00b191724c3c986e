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
  * :class:`NumpyICPEngine`, the reference numerics (KD-trees, one job at a time); the torch
    engine (:mod:`geo4d_policy.perception.icp_torch`) batches the same jobs and must agree with it.
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

    def shifts(self, width: float) -> list[np.ndarray]:
        """Per part, the translation of its samples at opening ``width``."""
        return [np.zeros(3), 0.5 * width * self.axis, -0.5 * width * self.axis]

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


class NumpyICPEngine:
    """The reference numerics: KD-trees over the model samples, one job at a time."""

    name = "numpy"

    def __init__(self, samples: ModelSamples, config: ICPTrackerConfig) -> None:
        self.samples = samples
        self.config = config
        self._trees = [cKDTree(p) for p in samples.points]

    def run(self, jobs: Sequence[Job]) -> list[Any]:
        """Each job's result (:class:`Fit` or :class:`WidthCosts`), in order."""
        out: list[Any] = []
        for job in jobs:
            if isinstance(job, RefineJob):
                out.append(self.refine(job))
            elif isinstance(job, EvaluateJob):
                out.append(self.evaluate(job.problem, job.X_CG, job.width))
            elif isinstance(job, WidthJob):
                out.append(self.width_costs(job))
            else:
                raise TypeError(f"unknown ICP job {type(job).__name__}")
        return out

    # --- correspondences ---------------------------------------------------------------------

    def match(self, qG: np.ndarray, labels: np.ndarray | None, width: float, max_dist: float = np.inf,
              cam_G: np.ndarray | None = None):
        """Nearest model sample for each point: (distance, part, model point, normal) in G.

        Points with no sample within ``max_dist`` get distance ``inf`` (a bounded search is
        several times faster, and such points are rejected anyway). With ``cam_G`` (the camera
        centre in G) only samples facing the camera are eligible, found among the
        ``facing_neighbours`` nearest: a one-sided observation matched to back faces would
        otherwise pull the model through itself, a deep local minimum when the start is a few
        centimetres off.
        """
        S = self.samples
        shift = S.shifts(width)
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
                facing = np.einsum("ij,ij->i", S.normals[k], S.points[k] + shift[k] - cam_G) < 0
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
            p[sel] = S.points[k][idx[sel]] + shift[k]
            nrm[sel] = S.normals[k][idx[sel]]
        return dist, part, p, nrm

    # --- Gauss-Newton ICP --------------------------------------------------------------------

    def refine(self, job: RefineJob) -> Fit:
        c = self.config
        q, labels = job.problem.q, job.problem.labels
        iterations = job.iterations or c.iterations
        corr_min = c.corr_dist_min if job.corr_min is None else job.corr_min
        decay = c.corr_decay if job.decay is None else job.decay
        axis = self.samples.axis
        X_GC = invert_transform(job.X_CG)
        w = float(job.width)
        w_prev = w
        n_pose = 6
        for it in range(iterations):
            # Coarse-to-fine trimming: the correspondence radius shrinks geometrically.
            corr = max(corr_min, job.corr_start * decay ** it)
            qG = q @ X_GC[:3, :3].T + X_GC[:3, 3]
            cam_G = X_GC[:3, :3] @ job.problem.camera_center + X_GC[:3, 3] \
                if job.facing and c.facing_neighbours > 1 else None
            dist, part, p, nrm = self.match(qG, labels, w, max_dist=corr, cam_G=cam_G)
            sel = dist <= corr
            if sel.sum() < 6:
                break
            qs, ps, ns, ds = qG[sel], p[sel], nrm[sel], dist[sel]
            s = self.samples.sign[part[sel]]
            m = len(qs)
            wt = np.where(ds <= c.huber_delta, 1.0, c.huber_delta / np.maximum(ds, 1e-12))
            # Rows: one point-to-plane residual n.(q - p) and three point-to-point residuals
            # (q - p) per correspondence; unknowns (omega, v, width), with the update applied
            # as q <- q + omega x q + v and finger samples moving by +-width/2 along the axis.
            J = np.zeros((4 * m, 7))
            r = np.zeros(4 * m)
            J[:m, :3] = np.cross(qs, ns)
            J[:m, 3:6] = ns
            J[:m, 6] = -0.5 * s * (ns @ axis)
            r[:m] = np.einsum("ij,ij->i", ns, qs - ps)
            # -[q]_x rows for the point-to-point block, laid out as x rows, y rows, z rows.
            zero = np.zeros(m)
            skew = (np.stack([zero, qs[:, 2], -qs[:, 1]], 1), np.stack([-qs[:, 2], zero, qs[:, 0]], 1),
                    np.stack([qs[:, 1], -qs[:, 0], zero], 1))
            for a in range(3):
                rows = slice((a + 1) * m, (a + 2) * m)
                J[rows, :3] = skew[a]
                J[rows, 3 + a] = 1.0
                J[rows, 6] = -0.5 * s * axis[a]
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
            w = float(np.clip(w + delta[6], 0.0, self.samples.stroke))
            if corr <= corr_min and np.linalg.norm(delta[:3]) < 2e-4 and np.linalg.norm(delta[3:6]) < 1e-4:
                break
        X = orthonormalize(invert_transform(X_GC))
        return self.evaluate(job.problem, X, w)

    def _tree_and_spacing(self, problem: ICPProblem) -> tuple[cKDTree, float]:
        """The observed points' KD-tree and median nearest-neighbour spacing (cached per problem)."""
        cached = problem.cache.get("numpy_tree")
        if cached is None:
            q = problem.q
            tree = cKDTree(q)
            spacing = float(np.median(tree.query(q, k=2)[0][:, 1])) if len(q) > 1 else 0.0
            cached = problem.cache["numpy_tree"] = (tree, spacing)
        return cached

    def evaluate(self, problem: ICPProblem, X_CG: np.ndarray, width: float) -> Fit:
        c = self.config
        S = self.samples
        q, labels = problem.q, problem.labels
        X_GC = invert_transform(X_CG)
        qG = q @ X_GC[:3, :3].T + X_GC[:3, 3]
        dist, part, _, _ = self.match(qG, labels, width, max_dist=c.inlier_dist)
        inl = dist <= c.inlier_dist
        if problem.cluttered:
            # Fitness over the points inside the gripper's box (+ margin) at this pose: the
            # scene around it is not the tracker's to explain.
            lo, hi = S.bounds(width)
            near = np.all((qG >= lo - c.clutter_margin) & (qG <= hi + c.clutter_margin), axis=1)
        else:
            near = np.ones(len(q), dtype=bool)
        n_near = int(near.sum())
        fitness = float(inl[near].mean()) if n_near >= c.min_points else 0.0
        rmse = float(np.sqrt(np.mean(dist[inl] ** 2))) if inl.any() else float("inf")
        # Coverage: camera-facing model samples with an observed point within a radius that
        # adapts to the observed point spacing (pixel footprint grows with distance).
        tree, spacing = self._tree_and_spacing(problem)
        radius = max(c.inlier_dist, 1.5 * spacing)
        shift = S.shifts(width)
        pts = np.concatenate([S.points[k] + shift[k] for k in range(3)])
        nrm = np.concatenate(S.normals)
        if labels is not None:
            # Only score the parts that the segmentation claims to have seen.
            present = [np.any(labels == k) for k in range(3)]
            keep = np.concatenate([np.full(len(S.points[k]), present[k]) for k in range(3)])
            pts, nrm = pts[keep], nrm[keep]
        pC = pts @ X_CG[:3, :3].T + X_CG[:3, 3]
        nC = nrm @ X_CG[:3, :3].T
        # Facing the frame's own camera (camera m for X^{m->n}), and in front of it.
        ray = pC - problem.camera_center
        facing = (np.einsum("ij,ij->i", nC, ray) < 0) & (ray @ problem.camera_axis > 0)
        if facing.any():
            d, _ = tree.query(pC[facing], k=1, distance_upper_bound=radius)
            hit = np.isfinite(d)
            occ = problem.occlusion
            if occ is not None:
                inside, expect = occ.visibility(pC[facing], margin=c.occlusion_margin)
                seen, n_exp = float((hit & expect).sum()), float(expect.sum())
                coverage = min(1.0, seen / max(n_exp, c.min_visible_fraction * len(expect), 1.0))
                frame_coverage = min(1.0, seen / max(n_exp, c.min_visible_fraction * float(inside.sum()), 1.0))
            else:
                coverage = frame_coverage = float(np.mean(hit))
        else:
            coverage = frame_coverage = 0.0
        fingers = (int((inl & (part == PART_LEFT)).sum()), int((inl & (part == PART_RIGHT)).sum()))
        return Fit(X_CG, width, fitness, coverage, rmse, n_near, int((inl & near).sum()), fingers, frame_coverage)

    # --- the opening grid --------------------------------------------------------------------

    def width_costs(self, job: WidthJob) -> WidthCosts:
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
            if k == PART_HAND:
                d, _ = self._trees[k].query(qG[sel], k=1, distance_upper_bound=tau)
                d = np.broadcast_to(d, (G, len(d)))
            else:
                shifts = np.stack([S.shifts(float(w))[k] for w in widths])  # (G, 3)
                d, _ = self._trees[k].query((qG[sel][None] - shifts[:, None]).reshape(-1, 3), k=1,
                                            distance_upper_bound=tau)
                d = d.reshape(G, -1)
            cols = np.flatnonzero(sel)
            better = d < dist[:, cols]
            dist[:, cols] = np.where(better, d, dist[:, cols])
            part[:, cols] = np.where(better, k, part[:, cols])
        costs = np.sum(np.minimum(dist, tau) ** 2, axis=1)
        best = int(np.argmin(costs[:-1]))
        inl = dist[best] <= tau
        both = bool(np.any(inl & (part[best] == PART_LEFT)) and np.any(inl & (part[best] == PART_RIGHT)))
        return WidthCosts(costs[:-1], float(costs[-1]), both)


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

"""The numpy ICP engine's batching: matches equal a brute-force search, and a job's result does not
depend on the jobs that share its call (the tracker hands a search's hypotheses, and several
trackers' jobs, over together)."""

from __future__ import annotations

import numpy as np
import pytest

from geo4d_policy.perception.gripper_model import GripperModel
from scipy.spatial.transform import Rotation

from geo4d_policy.perception.icp_core import (
    EvaluateJob,
    ICPProblem,
    ICPTrackerConfig,
    RefineJob,
    make_engine,
    pack_clouds,
)
from geo4d_policy.perception.pose_tracker import TrackingFrame, pose_delta
from geo4d_policy.perception.projection import PixelProjection
from geo4d_policy.perception.synthetic import render_gripper, smooth_trajectory

K = np.array([[150.0, 0.0, 80.0], [0.0, 150.0, 64.0], [0.0, 0.0, 1.0]])
SMALL = ICPTrackerConfig(model_points=(900, 250, 250), max_points=300, coarse_points=120, engine="numpy")


@pytest.fixture(scope="module")
def model():
    return GripperModel.load()


@pytest.fixture(scope="module")
def engine(model):
    return make_engine(model, SMALL)


def _brute_match(S, qG, lab, width, max_dist, cam_G, kq):
    """Nearest eligible sample by exhaustive search (with ``cam_G``: the first camera-facing one
    among the ``kq`` nearest), strictly within the radius; the earlier part on ties."""
    J, N, _ = qG.shape
    dist = np.full((J, N), np.inf)
    part = np.full((J, N), -1)
    idx = np.zeros((J, N), dtype=np.int64)
    for j in range(J):
        for n in range(N):
            for k in range(3):
                if lab[j, n] not in (-1, k):
                    continue
                P = S.points[k] + 0.5 * S.sign[k] * width[j] * S.axis
                d = np.linalg.norm(P - qG[j, n], axis=1)
                order = np.argsort(d, kind="stable")[:kq]
                if cam_G is not None:
                    facing = np.einsum("ij,ij->i", S.normals[k][order], P[order] - cam_G[j]) < 0
                    order = order[facing][:1]
                else:
                    order = order[:1]
                if len(order) and d[order[0]] < max_dist[j] and d[order[0]] < dist[j, n]:
                    dist[j, n], part[j, n], idx[j, n] = d[order[0]], k, order[0]
    return dist, part, idx


@pytest.mark.parametrize("facing", [False, True])
def test_matches_equal_an_exhaustive_search(engine, facing):
    """Labelled and unlabelled points, two radii in one call: the bounding-box skip and the
    per-radius tree queries find what an exhaustive search finds."""
    S = engine.samples
    rng = np.random.default_rng(3)
    clouds = []
    for j in range(3):
        k = rng.integers(0, 3, 40)
        base = np.stack([S.points[kk][rng.integers(len(S.points[kk]))] for kk in k])
        q = base + rng.normal(0.0, 0.012, base.shape)
        clouds.append((q, k if j == 1 else None))
    q, lab = pack_clouds(clouds)
    width = np.array([0.0, 0.03, 0.07])
    max_dist = np.array([0.01, 0.03, 0.01])
    cam_G = np.array([[0.0, 0.0, 0.6], [0.3, 0.2, -0.5], [0.0, -0.6, 0.1]]) if facing else None
    got = engine.match(q, lab, width, max_dist, cam_G)
    want = _brute_match(S, q, lab, width, max_dist, cam_G, SMALL.facing_neighbours if facing else 1)
    assert np.isfinite(want[0]).sum() > 30 and np.isinf(want[0]).sum() > 5  # both outcomes occur
    assert set(want[1][np.isfinite(want[0])].tolist()) == {0, 1, 2}
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(got[1], want[1])
    finite = np.isfinite(want[0])
    np.testing.assert_array_equal(got[2][finite], want[2][finite])


def _problems(model):
    """A labelled frame, a masked one (no labels) with its projection, and an unsegmented one
    with a table behind the gripper; their true poses."""
    traj = smooth_trajectory(3, seed=5, travel=0.08, rotation=np.deg2rad(20))
    out = []
    for k, X in enumerate(traj):
        plane = np.c_[np.random.default_rng(k).uniform(-0.2, 0.2, (2000, 2)), np.zeros(2000)]
        table = X[:3, 3] + np.array([0.0, 0.0, 0.1]) + plane
        v = render_gripper(model, X, 0.02 + 0.02 * k, K, 128, 160, seed=k, noise=0.001,
                           background=table if k == 2 else None)
        if k == 0:
            sel = v.valid & (v.part_labels >= 0)
            problem = ICPProblem(v.pointmap[sel], v.part_labels[sel].astype(np.int64))
        elif k == 1:
            sel = v.valid & (v.part_labels >= 0)
            occ = PixelProjection.of_frame(TrackingFrame(v.pointmap, v.valid, K=K))
            problem = ICPProblem(v.pointmap[sel], None, occlusion=occ)
        else:
            sel = v.valid & (np.linalg.norm(v.pointmap - X[:3, 3], axis=-1) < 0.15)
            problem = ICPProblem(v.pointmap[sel], None, cluttered=True)
        out.append((problem, X))
    return out


def _perturbed(X, rng, t=0.01, r_deg=5.0):
    Y = X.copy()
    rotvec = rng.normal(size=3) * np.deg2rad(r_deg) / np.sqrt(3)
    Y[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix() @ X[:3, :3]
    Y[:3, 3] += rng.normal(size=3) * t / np.sqrt(3)
    return Y


def test_a_jobs_result_does_not_depend_on_the_jobs_sharing_its_call(model, engine):
    rng = np.random.default_rng(0)
    jobs = []
    for problem, X in _problems(model):
        for _ in range(2):
            start = _perturbed(X, rng)
            # A track (or fine) run and a coarse hypothesis from the same start.
            jobs.append(RefineJob(problem, start, 0.04, corr_start=SMALL.corr_dist_track))
            jobs.append(RefineJob(problem, start, 0.04, corr_start=SMALL.corr_dist_register, iterations=6,
                                  corr_min=0.02, decay=0.85, facing=False))
        jobs.append(EvaluateJob(problem, X, 0.03))
    together = engine.run(jobs)
    alone = [engine.run([job])[0] for job in jobs]
    for a, b in zip(together, alone):
        assert np.abs(a.X_CG - b.X_CG).max() < 1e-9  # rounding of the batched sums only
        assert abs(a.width - b.width) < 1e-9
        assert abs(a.fitness - b.fitness) < 1e-12 and abs(a.coverage - b.coverage) < 1e-12
        assert abs(a.frame_coverage - b.frame_coverage) < 1e-12
        assert a.finger_points == b.finger_points and a.n_points == b.n_points
    # Not a comparison of failures: the full runs land on the true poses.
    truths = [X for _, X in _problems(model) for _ in range(2)]
    full = [f for f, j in zip(together, jobs) if isinstance(j, RefineJob) and j.iterations is None]
    assert max(pose_delta(f.X_CG, X)[0] for f, X in zip(full, truths)) < 0.004


def test_a_singular_system_stops_only_its_own_job(model, engine):
    """A job with too few correspondences stops where it started; the others in its call go on."""
    problem, X = _problems(model)[0]
    far = X.copy()
    far[:3, 3] += np.array([0.5, 0.0, 0.0])  # nothing within any correspondence radius
    start = _perturbed(X, np.random.default_rng(1))
    stuck, moved = engine.run([RefineJob(problem, far, 0.04, corr_start=0.03),
                               RefineJob(problem, start, 0.04, corr_start=0.03)])
    assert pose_delta(stuck.X_CG, far)[0] < 1e-12 and stuck.width == 0.04
    assert pose_delta(moved.X_CG, X)[0] < 0.004

"""The ICP engines: the numpy reference's batching (matches equal an exhaustive search; a job's
result does not depend on the jobs sharing its call), and the torch engine (the GPU path) against
it, on CPU torch.

Stated tolerance of the torch engine: every tracked pose within 1e-6 m and 1e-6 rad of the numpy
engine's, openings within 1e-6 m, confidences within 1e-6, the same statuses (both engines compute
in float64; on these clouds and on recorded oracle replans they agree to about 1e-14).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from geo4d_policy.perception.gripper_model import GripperModel
from geo4d_policy.perception.icp_core import (
    EvaluateJob,
    ICPProblem,
    ICPTrackerConfig,
    RefineJob,
    engine_choice,
    make_engine,
    pack_clouds,
)
from geo4d_policy.perception.icp_tracker import ICPGripperTracker
from geo4d_policy.perception.pose_tracker import TrackingFrame, pose_delta, track_gripper_sequences
from geo4d_policy.perception.projection import PixelProjection, finger_see_through
from geo4d_policy.perception.synthetic import (
    gripper_cut_by_border,
    gripper_cut_by_border_in_view_m,
    render_gripper,
    smooth_trajectory,
)

K = np.array([[150.0, 0.0, 80.0], [0.0, 150.0, 64.0], [0.0, 0.0, 1.0]])
SMALL = ICPTrackerConfig(model_points=(900, 250, 250), max_points=300, coarse_points=120, engine="numpy")
"""A small config: the torch engine runs brute force, which is slow on a CPU."""


@pytest.fixture(scope="module")
def model():
    return GripperModel.load()


def _table(X_CG: np.ndarray, seed: int) -> np.ndarray:
    """Background points: a plane 10 cm behind the gripper, as clutter for unsegmented frames."""
    rng = np.random.default_rng(seed)
    c = X_CG[:3, 3] + np.array([0.0, 0.0, 0.10])
    return c + np.c_[rng.uniform(-0.2, 0.2, (3000, 2)), np.zeros(3000)]


def _sequence(model, seed: int, n: int = 3, *, clutter: bool = False):
    traj = smooth_trajectory(n, seed=seed, travel=0.08, rotation=np.deg2rad(20))
    views = [render_gripper(model, X, 0.02 + 0.012 * k, K, 128, 160, seed=seed + k, noise=0.001,
                            background=_table(X, seed + k) if clutter else None) for k, X in enumerate(traj)]
    return traj, (np.stack([v.pointmap for v in views]), np.stack([v.valid for v in views]),
                  np.stack([v.part_labels for v in views]))


def _sequences(model, engine: str):
    cfg = dataclasses.replace(SMALL, engine=engine, device="cpu")
    seqs = []
    traj, (pm, valid, lab) = _sequence(model, 1)
    # Part labels on every frame, registration without a hint (the multi-hypothesis search).
    seqs.append(dict(pointmaps=pm, valid=valid, part_labels=list(lab), K=K,
                     tracker=ICPGripperTracker(model, config=cfg)))
    traj2, (pm2, valid2, lab2) = _sequence(model, 4, clutter=True)
    # A first-frame mask and the pose hint, then unsegmented frames with a table behind.
    seqs.append(dict(pointmaps=pm2, valid=valid2, masks=[lab2[0] >= 0] + [None] * (len(pm2) - 1),
                     first_pose_hint=traj2[0], K=K, tracker=ICPGripperTracker(model, config=cfg)))
    return seqs, (traj, traj2)


def _agree(a, b):
    assert a.status == b.status
    dt, dr = pose_delta(a.X_CG, b.X_CG)
    assert dt < 1e-6 and dr < 1e-6
    assert abs(a.confidence - b.confidence) < 1e-6
    assert (a.width is None) == (b.width is None)
    if a.width is not None:
        assert abs(a.width - b.width) < 1e-6
    assert a.finger_points == b.finger_points


def test_the_torch_engine_tracks_as_the_numpy_reference_does(model):
    """Numpy tracks each sequence alone; torch tracks both together (lock-step, one padded batch
    per round): the same results, so batching changes nothing either."""
    ref_seqs, trajs = _sequences(model, "numpy")
    ref = [track_gripper_sequences([seq])[0] for seq in ref_seqs]
    got = track_gripper_sequences(_sequences(model, "torch")[0])
    assert make_engine(model, dataclasses.replace(SMALL, engine="torch", device="cpu")).name == "torch"
    # The comparison is not of two failures: labelled frames track to millimetres, unsegmented
    # frames with a table behind the gripper to about a centimetre (small model samples).
    for r_seq, g_seq, traj, bound in zip(ref, got, trajs, (0.003, 0.015)):
        assert len(r_seq) == len(g_seq) == len(traj)
        for r, g in zip(r_seq, g_seq):
            _agree(r, g)
        assert all(r.ok for r in r_seq)
        assert max(pose_delta(r.X_CG, X)[0] for r, X in zip(r_seq, traj)) < bound


def test_score_pose_agrees_between_engines(model):
    traj, (pm, valid, lab) = _sequence(model, 2, n=1)
    pts, labels = pm[0][valid[0]], lab[0][valid[0]]
    out = []
    for engine in ("numpy", "torch"):
        tracker = ICPGripperTracker(model, config=dataclasses.replace(SMALL, engine=engine, device="cpu"))
        out.append(tracker.score_pose(pts, traj[0], width=0.02, part_labels=labels))
    assert out[0].confidence > 0.5
    _agree(out[0], out[1])


@pytest.mark.parametrize("view", ["n", "m"])
def test_a_gripper_cut_by_the_image_border_is_scored_and_tracked_alike(model, view):
    """Both coverages (the confidence's, over the whole camera-facing surface, and the one poses
    are chosen by, over the surface inside the image) agree between the engines, here where
    the border hides most of the gripper and they differ; so do the tracks of a still gripper.
    View m: the same gripper taken by camera m and given in camera n's frame with camera m's
    pose, so the facing test (matching and coverage) and the projection are camera m's."""
    frames, X = [], None
    for k in range(3):
        if view == "n":  # no K: the projection is fitted to the pointmap
            X, _, v = gripper_cut_by_border(model, seed=k)
            frames.append(TrackingFrame(v.pointmap, v.valid, part_labels=v.part_labels))
        else:
            X, X_CnCm, K_m, v = gripper_cut_by_border_in_view_m(model, seed=k)
            frames.append(TrackingFrame(v.pointmap, v.valid, part_labels=v.part_labels, K=K_m, X_CnCv=X_CnCm))
    camera = frames[0].camera_pose
    ray = X[:3, 3] - camera[:3, 3]
    slid = X.copy()
    slid[:3, 3] += 0.02 * ray / np.linalg.norm(ray)  # 2 cm further along the viewing ray
    q, labels = frames[0].points()
    problem = ICPProblem(q, labels, occlusion=PixelProjection.of_frame(frames[0]), X_CnCv=frames[0].X_CnCv)
    fits = {}
    for engine in ("numpy", "torch"):
        engine_ = make_engine(model, dataclasses.replace(SMALL, engine=engine, device="cpu"))
        fits[engine] = engine_.run([EvaluateJob(problem, P, 0.08) for P in (X, slid)])
    for a, b in zip(fits["numpy"], fits["torch"]):
        assert abs(a.coverage - b.coverage) < 1e-9 and abs(a.frame_coverage - b.frame_coverage) < 1e-9
    truth, moved = fits["numpy"]
    assert truth.frame_coverage > truth.coverage + 0.2  # most of the gripper is beyond the border
    assert truth.score > moved.score
    tracks = [track_gripper_sequences([dict(
        pointmaps=np.stack([f.pointmap for f in frames]), valid=np.stack([f.valid for f in frames]),
        part_labels=[f.part_labels for f in frames], K=frames[0].K, X_CnCv=frames[0].X_CnCv, first_pose_hint=X,
        tracker=ICPGripperTracker(model, config=dataclasses.replace(SMALL, engine=engine, device="cpu")))])[0]
        for engine in ("numpy", "torch")]
    for r, g in zip(*tracks):
        _agree(r, g)
    assert all(r.ok and pose_delta(r.X_CG, X)[0] < 0.006 for r in tracks[0])


def test_engine_and_device_names_are_checked():
    with pytest.raises(ValueError, match="tracker engine must be one of auto, numpy, torch"):
        engine_choice(ICPTrackerConfig(engine="jax"))
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda"):
        engine_choice(ICPTrackerConfig(engine="torch", device="tpu"))
    assert engine_choice(ICPTrackerConfig(engine="numpy", device="cuda")) == ("numpy", "cpu")
    import torch

    if not torch.cuda.is_available():
        assert engine_choice(ICPTrackerConfig()) == ("numpy", "cpu")  # auto: numpy without a GPU
        with pytest.raises(ValueError, match="tracker device 'cuda' asked for, but this machine has no usable GPU"):
            engine_choice(ICPTrackerConfig(engine="torch", device="cuda"))


def test_see_through_counts_of_several_openings_equal_one_at_a_time(model):
    traj, (pm, valid, _) = _sequence(model, 3, n=1)
    frame = TrackingFrame(pm[0], valid[0], K=K)
    widths = [0.0, 0.03, 0.08]
    counts = finger_see_through(frame, traj[0], widths, model=model)
    assert list(counts) == [finger_see_through(frame, traj[0], w, model=model) for w in widths]
    assert counts[0] != counts[2]  # the openings differ in free space


# --- the numpy engine's batching -----------------------------------------------------------


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

"""RGB-only gripper pose estimation (Dreamitate's perception): renderer, estimator, ray fusion.

Silhouettes are rendered with the module's own rasteriser at known poses (seeded); the
estimator sees only their part labels, the intrinsics and a prior pose.
"""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from geo4d_policy.interface import CameraIntrinsics, look_at
from geo4d_policy.perception.gripper_model import GripperModel
from geo4d_policy.perception.metrics import pose_errors
from geo4d_policy.perception import rgb_objective, rgb_pose
from geo4d_policy.perception.fusion import fuse_rays, fuse_rgb_views
from geo4d_policy.perception.rgb_pose import RGBPoseEstimator
from geo4d_policy.perception.silhouette import SilhouetteRenderer
from geo4d_policy.perception.synthetic import look_at_pose, smooth_trajectory
from geo4d_policy.perception.pose_tracker import PoseTracker, TrackingFrame, TrackResult

# The policy's cameras: 128x160 with lbm_eval's horizontal field of view (fx = 381 * 160 / 640).
F_128 = 381.0 * 160 / 640
K_128 = CameraIntrinsics(160, 128, F_128, F_128, 79.5, 63.5).K
# The paper's resolution, 256x320.
K_256 = CameraIntrinsics(320, 256, 2 * F_128, 2 * F_128, 159.5, 127.5).K


@pytest.fixture(scope="module")
def model():
    return GripperModel.load()


@pytest.fixture(scope="module")
def renderer(model):
    return SilhouetteRenderer(model)


def _rot_z(deg):
    X = np.eye(4)
    X[:3, :3] = Rotation.from_euler("z", deg, degrees=True).as_matrix()
    return X


def _perturbed(X, rng, *, translation=0.03, angle=np.deg2rad(10.0)):
    """``X`` moved by ``translation`` along and turned by ``angle`` about random directions."""
    d = rng.normal(size=3)
    a = rng.normal(size=3)
    Y = X.copy()
    Y[:3, :3] = Rotation.from_rotvec(angle * a / np.linalg.norm(a)).as_matrix() @ X[:3, :3]
    Y[:3, 3] += translation * d / np.linalg.norm(d)
    return Y


def _lateral_and_depth(X_est, X_gt):
    """Translation error (m) across and along the camera ray through the true position."""
    err = X_est[:3, 3] - X_gt[:3, 3]
    ray = X_gt[:3, 3] / np.linalg.norm(X_gt[:3, 3])
    along = float(err @ ray)
    return float(np.linalg.norm(err - along * ray)), abs(along)


def _frame(labels, K):
    h, w = labels.shape
    return TrackingFrame(np.zeros((h, w, 3), np.float32), np.zeros((h, w), bool), part_labels=labels, K=K)


# --------------------------------------------------------------------------------------------
# Renderer
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("z", [0.5, 1.0])
def test_palm_seen_from_behind_matches_hand_computed_extent(model, z):
    # Hand frame aligned with the camera (G is H turned by -45 deg), G at depth z on the
    # optical axis, fingers pointing away: the palm box (y in +-0.095 m, its near face at
    # depth z + 0.0065) spans rows |v - cy| <= f 0.095 / (z + 0.0065), symmetric about the
    # centre row, and hides the fingers behind it completely. (Without the wrist link, which
    # would hide the middle: next test.)
    X = _rot_z(45.0)
    X[2, 3] = z
    labels = SilhouetteRenderer(model, occlusion=False).render(X, K=K_128, shape=(128, 160), width=0.08)
    rows = np.flatnonzero((labels >= 0).any(axis=1))
    half = F_128 * 0.095 / (z + 0.0065)
    expected = np.flatnonzero(np.abs(np.arange(128) - 63.5) <= half)
    assert np.array_equal(rows, expected)
    assert np.count_nonzero(labels == 1) == 0 and np.count_nonzero(labels == 2) == 0
    # Columns: the flange disk (r = 0.04 at depth z) on the -x side, the bump (x = 0.048 at
    # depth z + 0.0115) on the +x side.
    cols = np.flatnonzero((labels >= 0).any(axis=0))
    assert abs(cols[0] - (79.5 - F_128 * 0.04 / z)) <= 1.0
    assert abs(cols[-1] - (79.5 + F_128 * 0.048 / (z + 0.0115))) <= 1.0


@pytest.mark.parametrize("z", [0.5, 1.0])
def test_wrist_link_hides_the_palm_behind_it(model, renderer, z):
    # Same view as above: link7's cylinder (r = 0.045 m, a 24-gon, in G from z = -0.097 to
    # -0.007) stands between the camera and the palm; its near cap at depth z - 0.097 hides a
    # disc of radius f 0.045 / (z - 0.097) (times cos(pi / 24) at the polygon's flats) about the
    # image centre: no gripper pixel inside it. Elsewhere the image is the unoccluded one.
    X = _rot_z(45.0)
    X[2, 3] = z
    plain = SilhouetteRenderer(model, occlusion=False).render(X, K=K_128, shape=(128, 160), width=0.08)
    labels = renderer.render(X, K=K_128, shape=(128, 160), width=0.08)
    v, u = np.mgrid[0:128, 0:160]
    d = np.hypot(u - 79.5, v - 63.5)
    r_out = F_128 * 0.045 / (z - 0.097)
    hidden = (d < r_out * np.cos(np.pi / 24) - 0.5) & (plain >= 0)
    assert hidden.sum() > 30 and np.all(labels[hidden] == -1)
    outside = d > r_out + 0.5
    assert np.array_equal(labels[outside], plain[outside])


def test_area_scales_with_inverse_square_depth(renderer):
    areas = []
    for z in (0.4, 0.8):
        X = look_at_pose(np.array([0.0, 0.0, z]), roll=0.3)
        # The model centre on the optical axis at depth z.
        X[:3, 3] = np.array([0.0, 0.0, z]) - X[:3, :3] @ renderer.model.center_G
        areas.append(np.count_nonzero(renderer.render(X, K=K_256, shape=(256, 320), width=0.04) >= 0))
    assert areas[0] / areas[1] == pytest.approx(4.0, rel=0.08)


def test_nearest_part_wins_each_pixel(renderer):
    # Looking at the fingertips (G's z axis towards the camera): the fingers are in front of
    # the palm, the left finger (+y of the hand) above the image centre, the right one below.
    X = _rot_z(45.0)
    X[:3, :3] = Rotation.from_euler("x", 180, degrees=True).as_matrix() @ X[:3, :3]
    X[2, 3] = 0.6
    labels = renderer.render(X, K=K_256, shape=(256, 320), width=0.06)
    left_v = np.nonzero(labels == 1)[0]
    right_v = np.nonzero(labels == 2)[0]
    assert left_v.size > 20 and right_v.size > 20
    assert left_v.mean() < 127.5 < right_v.mean()
    # The fingers are drawn over the palm, whose pixels surround them on both sides.
    palm_v, palm_u = np.nonzero(labels == 0)
    finger_u = np.nonzero(labels >= 1)[1]
    assert palm_v.min() < left_v.min() and palm_v.max() > right_v.max()
    assert palm_u.min() < finger_u.min() and palm_u.max() > finger_u.max()
    # Same scene without back-face culling (meshes are closed): identical.
    unculled = SilhouetteRenderer(renderer.model, cull_back_faces=False)
    for X_t in smooth_trajectory(12, seed=4, depth=0.5):
        a = renderer.render(X_t, K=K_128, shape=(128, 160), width=0.03)
        b = unculled.render(X_t, K=K_128, shape=(128, 160), width=0.03)
        assert np.array_equal(a, b)


def test_renderer_rejects_bad_arguments_and_handles_empty_views(renderer):
    X = look_at_pose(np.array([0.0, 0.0, 0.6]))
    with pytest.raises(ValueError):
        renderer.render(X, K=K_128[:2], shape=(128, 160), width=0.04)
    with pytest.raises(ValueError):
        renderer.render(np.full((4, 4), np.nan), K=K_128, shape=(128, 160), width=0.04)
    with pytest.raises(ValueError):
        renderer.render(X, K=K_128, shape=(0, 160), width=0.04)
    behind = X.copy()
    behind[2, 3] = -0.6
    assert np.all(renderer.render(behind, K=K_128, shape=(128, 160), width=0.04) == -1)


# --------------------------------------------------------------------------------------------
# Estimator
# --------------------------------------------------------------------------------------------


def test_is_a_pose_tracker(model):
    assert isinstance(RGBPoseEstimator(model, K=K_128), PoseTracker)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_a_pose_from_its_silhouette_from_3cm_10deg_away(model, renderer, seed):
    rng = np.random.default_rng(seed)
    X = look_at_pose(np.array([rng.uniform(-0.1, 0.1), rng.uniform(-0.08, 0.08), 0.8]),
                     roll=rng.uniform(-np.pi, np.pi))
    width = rng.uniform(0.01, 0.08)
    labels = renderer.render(X, K=K_256, shape=(256, 320), width=width)
    prior = _perturbed(X, rng)
    # supersample=2 is enough at 256x320 (the default 3 is for 128x160).
    result = RGBPoseEstimator(model, supersample=2).register(_frame(labels, K_256), init_pose=prior)
    assert result.ok and result.confidence > 0.9
    lateral, depth = _lateral_and_depth(result.X_CG, X)
    _, rot_deg = pose_errors(result.X_CG, X)
    assert lateral < 0.01 and depth < 0.03 and rot_deg[0] < 5.0, (lateral, depth, rot_deg)
    assert abs(result.width - width) < 0.01


def test_tracks_a_short_trajectory_at_the_policy_resolution(model, renderer):
    traj = smooth_trajectory(6, seed=2, depth=0.7, travel=0.12, rotation=np.deg2rad(30.0))
    widths = np.linspace(0.08, 0.03, len(traj))
    est = RGBPoseEstimator(model, K=K_128)
    prior = _perturbed(traj[0], np.random.default_rng(5), translation=0.02, angle=np.deg2rad(8.0))
    results = []
    for t, (X, w) in enumerate(zip(traj, widths)):
        labels = renderer.render(X, K=K_128, shape=(128, 160), width=w)
        results.append(est.register(labels, init_pose=prior) if t == 0 else est.track(labels))
    assert all(r.ok and 0.0 < r.confidence <= 1.0 for r in results)
    errors = np.array([_lateral_and_depth(r.X_CG, X) for r, X in zip(results, traj)])
    _, rot_deg = pose_errors(np.stack([r.X_CG for r in results]), traj)
    # 128x160 at 0.7 m: the gripper spans about 30x15 pixels.
    assert errors[:, 0].max() < 0.01 and errors[:, 1].max() < 0.03, errors
    assert np.median(rot_deg) < 3.0 and rot_deg.max() < 6.0, rot_deg


def test_batched_costs_and_speculative_polls_change_nothing(model, renderer, monkeypatch):
    # A pose costs bit for bit the same alone or in any batch, and the pattern search takes the
    # same path whatever the speculative batch size (exact ties between poses with the same
    # render must break the same way). Each comparison uses a fresh objective: an objective
    # remembers the scores it computed.
    X = look_at_pose(np.array([0.02, -0.01, 0.8]), roll=0.7)
    labels = renderer.render(X, K=K_128, shape=(128, 160), width=0.05)

    def fresh():
        return rgb_objective.Objective(renderer, labels, True, K_128, rgb_pose.RGBPoseConfig())

    p0, R_ref = fresh().params_from_pose(_perturbed(X, np.random.default_rng(3)), 0.04)
    P = p0 + np.random.default_rng(4).normal(scale=[0.01, 0.01, 0.03, 0.05, 0.05, 0.05, 0.01], size=(9, 7))
    together = fresh().costs(P, R_ref)
    assert np.array_equal(together, np.concatenate([fresh().costs(p[None], R_ref) for p in P]))
    assert np.array_equal(together[3:6], fresh().costs(P[3:6], R_ref))
    steps = np.array([0.04, 0.04, 0.08, 0.14, 0.14, 0.14, 0.02])
    paths = []
    for batch in (1, 2, 7):
        monkeypatch.setattr(rgb_pose, "POLL_BATCH", batch)
        objective = fresh()
        p, f, scale = rgb_pose._pattern_search(lambda Q: objective.costs(Q, R_ref), p0, steps,
                                               min_scale=1 / 32, max_evaluations=400)
        paths.append((p, f, scale))
    for p, f, scale in paths[1:]:
        assert np.array_equal(p, paths[0][0]) and f == paths[0][1] and scale == paths[0][2]
    assert paths[0][1] < fresh().cost(p0, R_ref)


def test_objective_renders_each_point_once(renderer):
    # Scores are remembered per (reference rotation, parameter vector): a batch with repeats and
    # points seen before renders only the new points and returns the same values.
    X = look_at_pose(np.array([0.0, 0.01, 0.75]), roll=-0.4)
    labels = renderer.render(X, K=K_128, shape=(128, 160), width=0.03)
    objective = rgb_objective.Objective(renderer, labels, True, K_128, rgb_pose.RGBPoseConfig())
    p0, R_ref = objective.params_from_pose(X, 0.03)
    P = p0 + np.random.default_rng(5).normal(scale=[0.01, 0.01, 0.03, 0.05, 0.05, 0.05, 0.01], size=(4, 7))
    first = objective.scores(P[:2], R_ref)
    assert objective.evaluations == 2
    again = objective.scores(np.stack([P[1], P[2], P[1], P[0], P[3], P[2]]), R_ref)
    assert objective.evaluations == 4
    for a, b in zip(first, again):
        assert np.array_equal(a, b[[3, 0]])
    assert again[0][1] == again[0][5] and np.isfinite(again[0]).all()
    # Another reference rotation is another point.
    objective.scores(P[:1], R_ref @ rgb_objective._rotvecs_to_matrices(np.array([[0.0, 0.0, 0.3]]))[0])
    assert objective.evaluations == 5


def test_registers_without_a_prior(model, renderer):
    X = look_at_pose(np.array([0.05, -0.03, 0.7]), roll=1.0)
    labels = renderer.render(X, K=K_128, shape=(128, 160), width=0.05)
    result = RGBPoseEstimator(model, K=K_128).register(labels)
    assert result.ok and result.confidence > 0.9
    trans_mm, rot_deg = pose_errors(result.X_CG, X)
    assert trans_mm[0] < 30.0 and rot_deg[0] < 10.0


def test_bad_frames_are_lost_not_errors(model, renderer):
    X = look_at_pose(np.array([0.0, 0.02, 0.7]), roll=0.5)
    labels = renderer.render(X, K=K_128, shape=(128, 160), width=0.04)
    est = RGBPoseEstimator(model, K=K_128)
    first = est.register(labels, init_pose=X)
    assert first.ok

    def assert_lost_holding(r):
        assert r.status == "lost" and r.confidence == 0.0 and r.reason
        assert np.isfinite(r.X_CG).all() and np.allclose(r.X_CG, first.X_CG)

    assert_lost_holding(est.track(np.full((128, 160), -1, dtype=np.int8)))  # empty
    tiny = np.full((128, 160), -1, dtype=np.int8)
    tiny[60:62, 70:73] = 0
    assert_lost_holding(est.track(tiny))  # too small
    assert_lost_holding(est.track(np.zeros((128, 160), dtype=bool)))  # empty bool mask
    unsegmented = TrackingFrame(np.zeros((128, 160, 3)), np.ones((128, 160), bool), K=K_128)
    assert_lost_holding(est.track(unsegmented))
    # Scattered pixels, nothing like the gripper: no confident fit.
    noise = np.where(np.random.default_rng(0).random((128, 160)) < 0.3, 0, -1).astype(np.int8)
    noise[:40] = -1
    noise[90:] = -1
    assert_lost_holding(est.track(noise))
    # Back on a good frame: tracked again.
    assert est.track(labels).ok
    # A bare mask (no part labels) works too; an empty frame before any fit holds the hint.
    mask_only = RGBPoseEstimator(model, K=K_128).register(labels >= 0, init_pose=X)
    assert mask_only.ok and mask_only.confidence > 0.8
    held = RGBPoseEstimator(model, K=K_128).register(np.zeros((128, 160), bool), init_pose=X)
    assert held.status == "lost" and np.allclose(held.X_CG, X)


def test_estimator_rejects_bad_arguments(model, renderer):
    labels = renderer.render(look_at_pose(np.array([0.0, 0.0, 0.7])), K=K_128, shape=(128, 160), width=0.04)
    with pytest.raises(ValueError):
        RGBPoseEstimator(model, K=np.eye(2))
    with pytest.raises(ValueError):
        RGBPoseEstimator(model).register(labels)  # no intrinsics anywhere
    est = RGBPoseEstimator(model, K=K_128)
    with pytest.raises(ValueError):
        est.register(labels, init_pose=np.full((4, 4), np.inf))
    with pytest.raises(ValueError):
        est.register(np.zeros((100, 3)), init_pose=np.eye(4))  # points, not a segmentation
    with pytest.raises(ValueError):
        est.register(_frame(labels, np.ones((3, 4))), init_pose=np.eye(4))


# --------------------------------------------------------------------------------------------
# Fusion
# --------------------------------------------------------------------------------------------


def _cameras():
    X_TC1 = look_at(np.array([0.5, -0.4, 0.9]), np.zeros(3))
    X_TC2 = look_at(np.array([0.4, 0.5, 0.8]), np.zeros(3))
    return X_TC1, X_TC2


def _in_camera(X_TC, X_TG):
    return np.linalg.inv(X_TC) @ X_TG


def test_fuse_rays_intersects_rays_through_a_known_point():
    X_TC1, X_TC2 = _cameras()
    X_TG = look_at_pose(np.array([0.05, -0.02, 0.15]))
    # Each view gets the direction right but the depth wrong (as a model-size estimate can).
    X_C1G = _in_camera(X_TC1, X_TG)
    X_C2G = _in_camera(X_TC2, X_TG)
    X_C1G[:3, 3] *= 1.1
    X_C2G[:3, 3] *= 0.85
    fused = fuse_rays(X_C1G, X_C2G, X_TC1=X_TC1, X_TC2=X_TC2)
    assert np.allclose(fused[:3, 3], X_TG[:3, 3], atol=1e-9)
    assert np.allclose(fused[:3, :3], X_TG[:3, :3], atol=1e-9)


def test_fuse_rays_midpoint_weights_and_rotation_mean():
    X_TC1, X_TC2 = _cameras()
    p = np.array([0.0, 0.0, 0.1])
    X_TG = np.eye(4)
    X_TG[:3, 3] = p
    # Skew rays: view 2's point is 1 cm off along z (perpendicular-ish to both rays).
    X_TG2 = X_TG.copy()
    X_TG2[:3, 3] = p + np.array([0.0, 0.0, 0.01])
    X_TG1 = X_TG.copy()
    X_TG1[:3, :3] = Rotation.from_rotvec([0.0, 0.0, 0.2]).as_matrix()
    X_TG2[:3, :3] = Rotation.from_rotvec([0.0, 0.0, -0.2]).as_matrix()
    args = dict(X_TC1=X_TC1, X_TC2=X_TC2)
    mid = fuse_rays(_in_camera(X_TC1, X_TG1), _in_camera(X_TC2, X_TG2), **args)
    # The closest points lie on the two rays; the midpoint is between them.
    o1, o2 = X_TC1[:3, 3], X_TC2[:3, 3]
    d1 = (p - o1) / np.linalg.norm(p - o1)
    d2 = (X_TG2[:3, 3] - o2) / np.linalg.norm(X_TG2[:3, 3] - o2)
    n = np.cross(d1, d2)
    gap = abs((o2 - o1) @ n) / np.linalg.norm(n)
    assert 0.0 < gap < 0.01
    assert np.linalg.norm(mid[:3, 3] - p) < 0.01
    # The chordal mean of +-0.2 rad about z is the identity.
    assert np.allclose(mid[:3, :3], np.eye(3), atol=1e-9)
    # All weight on view 1: its ray's closest point, and its rotation.
    one = fuse_rays(_in_camera(X_TC1, X_TG1), _in_camera(X_TC2, X_TG2), confidences=(1.0, 0.0), **args)
    assert np.linalg.norm(np.cross(one[:3, 3] - o1, d1)) < 1e-9
    assert np.allclose(one[:3, :3], X_TG1[:3, :3])


def test_fuse_rays_near_parallel_rays_fall_back_to_the_per_view_positions():
    X_TC1 = look_at(np.array([0.6, 0.0, 0.9]), np.zeros(3))
    X_TC2 = X_TC1.copy()
    X_TC2[:3, 3] += np.array([0.0, 0.001, 0.0])  # a 1 mm baseline: rays under 1 deg apart
    p1 = np.eye(4)
    p1[:3, 3] = [0.0, 0.0, 0.0]
    p2 = np.eye(4)
    p2[:3, 3] = [0.02, 0.0, 0.01]
    fused = fuse_rays(_in_camera(X_TC1, p1), _in_camera(X_TC2, p2), X_TC1=X_TC1, X_TC2=X_TC2,
                      confidences=(3.0, 1.0))
    assert np.all(np.isfinite(fused))
    assert np.allclose(fused[:3, 3], 0.75 * p1[:3, 3] + 0.25 * p2[:3, 3])
    # Exactly parallel (the same camera twice) too.
    same = fuse_rays(_in_camera(X_TC1, p1), _in_camera(X_TC1, p2), X_TC1=X_TC1, X_TC2=X_TC1)
    assert np.allclose(same[:3, 3], 0.5 * (p1[:3, 3] + p2[:3, 3]))


def test_fuse_rays_rejects_bad_inputs():
    X_TC1, X_TC2 = _cameras()
    with pytest.raises(ValueError):
        fuse_rays(np.full((4, 4), np.nan), np.eye(4), X_TC1=X_TC1, X_TC2=X_TC2)
    with pytest.raises(ValueError):
        fuse_rays(np.eye(4), np.eye(4), X_TC1=np.eye(3), X_TC2=X_TC2)
    with pytest.raises(ValueError):
        fuse_rays(np.eye(4), np.eye(4), X_TC1=X_TC1, X_TC2=X_TC2, confidences=(1.0, -1.0))
    with pytest.raises(ValueError):
        fuse_rgb_views([], [TrackResult(np.eye(4), 0.5, "ok")], X_TC1=X_TC1, X_TC2=X_TC2)


def test_fuse_rgb_views_uses_the_other_view_when_one_is_lost():
    X_TC1, X_TC2 = _cameras()
    X_TG = look_at_pose(np.array([0.0, 0.1, 0.2]))
    X_TG_b = look_at_pose(np.array([0.05, 0.1, 0.2]), roll=0.4)
    ok1 = TrackResult(_in_camera(X_TC1, X_TG), 0.9, "ok", width=0.04)
    ok2 = TrackResult(_in_camera(X_TC2, X_TG), 0.8, "ok", width=0.06)
    only2 = TrackResult(_in_camera(X_TC2, X_TG_b), 0.7, "ok", width=0.02)
    lost1 = TrackResult(_in_camera(X_TC1, X_TG), 0.0, "lost")
    lost2 = TrackResult(_in_camera(X_TC2, X_TG), 0.0, "lost")
    fused = fuse_rgb_views([lost1, ok1, lost1, lost1], [lost2, ok2, only2, lost2], X_TC1=X_TC1, X_TC2=X_TC2)
    assert [f.status for f in fused] == ["lost", "ok", "ok", "lost"]
    assert [f.source for f in fused] == ["none", "n", "m", "none"]
    # Before any good frame: view 1's held pose.
    assert np.allclose(fused[0].X_TG, X_TG)
    assert np.allclose(fused[1].X_TG, X_TG) and fused[1].confidence == pytest.approx(0.85)
    assert fused[1].width == pytest.approx(0.05)
    assert np.allclose(fused[1].X_CnG, _in_camera(X_TC1, X_TG))
    assert np.allclose(fused[2].X_TG, X_TG_b) and fused[2].width == 0.02
    assert np.allclose(fused[3].X_TG, X_TG_b) and fused[3].confidence == 0.0


def test_end_to_end_two_views_of_rendered_silhouettes(model, renderer):
    """Per-view estimates from each camera's silhouette, fused in the task frame."""
    X_TC1, X_TC2 = _cameras()
    X_TG = np.eye(4)
    X_TG[:3, :3] = Rotation.from_euler("xyz", [180, 10, 30], degrees=True).as_matrix()
    X_TG[:3, 3] = [0.05, 0.0, 0.25]
    rng = np.random.default_rng(3)
    results = []
    for X_TC in (X_TC1, X_TC2):
        X_CG = _in_camera(X_TC, X_TG)
        labels = renderer.render(X_CG, K=K_128, shape=(128, 160), width=0.05)
        est = RGBPoseEstimator(model, K=K_128)
        results.append([est.register(labels, init_pose=_perturbed(X_CG, rng, translation=0.02,
                                                                    angle=np.deg2rad(8.0)))])
    fused = fuse_rgb_views(results[0], results[1], X_TC1=X_TC1, X_TC2=X_TC2)[0]
    assert fused.status == "ok" and fused.source == "n"
    trans_mm, rot_deg = pose_errors(fused.X_TG, X_TG)
    assert trans_mm[0] < 15.0 and rot_deg[0] < 5.0, (trans_mm, rot_deg)


def test_torch_renderer_and_costs_match_numpy_on_cpu(model, renderer):
    # The GPU path's renderer and objective, run on the CPU: identical label images (no pixel
    # differs) and costs equal to 1e-9 (float rounding of differently ordered sums).
    from geo4d_policy.perception.silhouette import TorchSilhouetteRenderer

    torch_renderer = TorchSilhouetteRenderer(model, device="cpu")
    traj = smooth_trajectory(4, seed=3, depth=0.8, travel=0.08, rotation=np.deg2rad(40.0))
    widths = np.linspace(0.0, 0.08, 4)
    for s in (1, 3):
        K = K_128.copy()
        K[:2] *= s
        K[:2, 2] += 0.5 * (s - 1)
        shape = (128 * s, 160 * s)
        assert np.array_equal(torch_renderer.render_many(traj, K=K, shape=shape, widths=widths),
                              renderer.render_many(traj, K=K, shape=shape, widths=widths))
    labels = renderer.render(traj[0], K=K_128, shape=(128, 160), width=0.05)
    rng = np.random.default_rng(0)
    for overlap in ("likelihood", "iou"):
        for observed, parts in ((labels, True), (np.where(labels >= 0, 0, -1).astype(np.int8), False)):
            config = rgb_pose.RGBPoseConfig(overlap=overlap)
            a = rgb_objective.Objective(renderer, observed, parts, K_128, config)
            b = rgb_objective.Objective(torch_renderer, observed, parts, K_128, config)
            p0, R = a.params_from_pose(traj[1], 0.04)
            P = p0[None] + rng.normal(size=(6, 7)) * np.array([0.01, 0.01, 0.05, 0.1, 0.1, 0.1, 0.01])
            for x, y in zip(a._scores(P, R), b._scores(P, R)):
                np.testing.assert_allclose(x, y, rtol=0, atol=1e-9)
    est = RGBPoseEstimator(model, K=K_128, device="cpu")
    assert isinstance(est.renderer, TorchSilhouetteRenderer) and est._poll_batch == rgb_pose.TORCH_POLL_BATCH

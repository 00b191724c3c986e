"""Camera m's pose in camera n from pixel-aligned pointmaps (geo4d_policy.perception.view_pose)."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from geo4d_policy.data.geometry import depth_to_pointmap, transform_points
from geo4d_policy.perception.view_pose import estimate_relative_pose, estimate_view_pose, fit_relative_pose

K = np.array([[95.25, 0.0, 79.5], [0.0, 95.25, 63.5], [0.0, 0.0, 1.0]])


def _X_CnCm(seed: int = 7) -> np.ndarray:
    X = np.eye(4)
    X[:3, :3] = Rotation.from_rotvec(np.deg2rad(70.0) * np.array([0.2, 1.0, 0.1]) / np.linalg.norm([0.2, 1, 0.1])
                                     ).as_matrix()
    X[:3, 3] = np.random.default_rng(seed).uniform(-0.8, 0.8, 3)
    return X


def _scene(rng, H=128, W=160):
    """View m's observed points in its own frame: a tilted table and a box, 0.6-1.2 m away."""
    v, u = np.mgrid[:H, :W]
    depth = 1.2 - 0.004 * v + 0.02 * np.sin(u / 9.0)
    depth[40:80, 60:110] -= 0.25
    depth[rng.random(depth.shape) < 0.05] = 0.0  # holes
    return depth_to_pointmap(depth.astype(np.float32), K)


def test_a_known_transform_is_recovered_despite_many_outliers(rng):
    """40 % of the pixels moved (gross outliers, more than the 20 % the trimmed start drops):
    the threshold re-solves still find the transform to well under a millimetre / 0.05 deg."""
    X = _X_CnCm()
    src = rng.uniform(-0.5, 0.5, (40, 50, 3)) + [0, 0, 1.0]
    dst = src @ X[:3, :3].T + X[:3, 3] + rng.normal(scale=0.001, size=src.shape)
    bad = rng.random(dst.shape[:2]) < 0.4
    dst[bad] += rng.uniform(-0.3, 0.3, (bad.sum(), 3))
    valid = rng.random(src.shape[:2]) > 0.05
    est, inliers, res = fit_relative_pose(src, dst, valid=valid)
    assert np.linalg.norm(est[:3, 3] - X[:3, 3]) < 5e-4
    assert Rotation.from_matrix(est[:3, :3].T @ X[:3, :3]).magnitude() < np.deg2rad(0.05)
    # The inliers are (nearly) the good pixels.
    good = ~bad[valid]
    assert (inliers & ~good).sum() < 0.02 * good.sum() and (good & ~inliers).sum() < 0.02 * good.sum()
    assert len(res) == valid.sum()
    np.testing.assert_allclose(estimate_relative_pose(src, dst, valid=valid), est)


def test_the_view_pose_of_a_static_scene_and_when_it_is_not_trusted(rng):
    X = _X_CnCm()
    pm, valid = _scene(rng)
    pmn = np.where(valid[..., None], transform_points(X, pm), 0.0)
    # A gripper moved between the frames: its pixels are left out by the static mask.
    moved = np.zeros(valid.shape, bool)
    moved[10:25, 20:45] = True
    pmn[moved] += [0.05, -0.03, 0.02]
    est = estimate_view_pose(pm, valid, pmn, valid, static=~moved)
    assert est.ok and est.n_points == int((valid & ~moved).sum()) and est.residual_m < 1e-4
    assert np.linalg.norm(est.X_CnCm[:3, 3] - X[:3, 3]) < 1e-5
    assert est.record()["source"] == "estimated"
    # Without the mask the moved pixels are outliers of the fit, not of the pose.
    loose = estimate_view_pose(pm, valid, pmn, valid)
    assert loose.ok and np.linalg.norm(loose.X_CnCm[:3, 3] - X[:3, 3]) < 1e-4

    # Too few static pixels: no pose, a reason, and the record says it fell back.
    few = estimate_view_pose(pm, valid, pmn, valid, static=moved)
    assert not few.ok and "too few" in few.reason and few.record()["source"] == "fallback"
    # A prediction unrelated to the observation (noise): no pose rather than a wrong one.
    noise = rng.uniform(-1.0, 1.0, pm.shape) + [0, 0, 2.0]
    bad = estimate_view_pose(pm, valid, noise, valid)
    assert not bad.ok and bad.reason and bad.residual_m > 0.01


def test_malformed_inputs_are_refused(rng):
    pm, valid = _scene(rng, 8, 10)
    with pytest.raises(ValueError, match="one shape"):
        estimate_view_pose(pm, valid, pm[:, :5], valid)
    with pytest.raises(ValueError, match="valid_mn"):
        estimate_view_pose(pm, valid, pm, valid[:4])
    with pytest.raises(ValueError, match="static"):
        estimate_view_pose(pm, valid, pm, valid, static=np.ones(3, bool))
    with pytest.raises(ValueError, match="at least 3"):
        fit_relative_pose(pm[:1, :2], pm[:1, :2])
    with pytest.raises(ValueError, match="one shape"):
        fit_relative_pose(pm[..., :2], pm[..., :2])

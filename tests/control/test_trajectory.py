import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from geo4d_policy.control.trajectory import interpolate_poses, max_speeds, plan_segment, resample_poses


def _pose(xyz, rotvec=(0, 0, 0)):
    X = np.eye(4)
    X[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    X[:3, 3] = xyz
    return X


def test_plan_segment_respects_speed_limits_and_ends_at_goal():
    a, b = _pose((0, 0, 0.5)), _pose((0.3, -0.2, 0.2), (0, 0, np.pi / 2))
    poses = plan_segment(a, b, linear_speed=0.3, angular_speed=np.deg2rad(60))
    np.testing.assert_allclose(poses[-1], b, atol=1e-12)
    lin, ang = max_speeds(np.concatenate([a[None], poses]))
    assert lin <= 0.3 + 1e-9 and ang <= np.deg2rad(60) + 1e-9


def test_interpolate_hand_computed_midpoint():
    a, b = _pose((0, 0, 0)), _pose((1, 0, 0), (0, 0, np.pi / 2))
    mid = interpolate_poses(a, b, 2, smooth=False)[0]
    np.testing.assert_allclose(mid[:3, 3], [0.5, 0, 0])
    assert Rotation.from_matrix(mid[:3, :3]).magnitude() == pytest.approx(np.pi / 4)


def test_resample_clamps_and_interpolates():
    poses = np.stack([_pose((0, 0, 0)), _pose((1, 0, 0))])
    out = resample_poses(np.array([0.0, 1.0]), poses, np.array([-1.0, 0.25, 2.0]))
    np.testing.assert_allclose(out[:, 0, 3], [0.0, 0.25, 1.0])
    with pytest.raises(ValueError):
        resample_poses(np.array([1.0, 0.0]), poses, np.array([0.5]))

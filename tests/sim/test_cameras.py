import numpy as np
import pytest

from geo4d_policy.interface import look_at
from sim.cameras import CameraConfig, sample_cameras, split_names


def test_sampler_respects_bounds_and_looks_at_origin(rng):
    cfg = CameraConfig()
    specs = sample_cameras(rng, cfg)
    assert len(specs) == 16 and len({s.name for s in specs}) == 16
    for s in specs:
        p = s.X_TC[:3, 3]
        assert 0.2 <= p[0] <= 0.6 and -0.5 <= p[1] <= 0.5 and 0.7 <= p[2] <= 1.2
        assert 0.7 <= np.linalg.norm(p) <= 1.2
        R = s.X_TC[:3, :3]
        np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-9)
        assert np.linalg.det(R) == pytest.approx(1.0)
        # The optical axis (+z) points at the origin and the image's "down" (+y) points downward.
        np.testing.assert_allclose(R[:, 2], -p / np.linalg.norm(p), atol=1e-9)
        assert R[2, 1] < 0


def test_origin_projects_to_image_centre(rng):
    cfg = CameraConfig()
    spec = sample_cameras(rng, cfg)[0]
    X_CT = np.linalg.inv(spec.X_TC)
    p_C = X_CT[:3, :3] @ np.zeros(3) + X_CT[:3, 3]
    uv = spec.intrinsics.K @ p_C
    np.testing.assert_allclose(uv[:2] / uv[2], [spec.intrinsics.cx, spec.intrinsics.cy], atol=1e-9)


def test_same_seed_same_cameras():
    a = sample_cameras(np.random.default_rng([7, 1]))
    b = sample_cameras(np.random.default_rng([7, 1]))
    c = sample_cameras(np.random.default_rng([8, 1]))
    assert all(np.array_equal(x.X_TC, y.X_TC) for x, y in zip(a, b))
    assert not all(np.array_equal(x.X_TC, y.X_TC) for x, y in zip(a, c))


def test_split_is_fixed_and_disjoint():
    train, held, eval_views = split_names()
    assert len(train) == 12 and len(held) == 4 and not set(train) & set(held)
    assert eval_views == held[:2]


def test_look_at_hand_computed():
    X = look_at(np.array([1.0, 0.0, 0.0]), np.zeros(3))
    np.testing.assert_allclose(X[:3, 2], [-1, 0, 0])  # forward
    np.testing.assert_allclose(X[:3, 0], [0, 1, 0])  # right = +y seen from +x
    np.testing.assert_allclose(X[:3, 1], [0, 0, -1])  # down


def test_bad_config_refused():
    with pytest.raises(ValueError):
        CameraConfig(n_train=16)
    with pytest.raises(ValueError):
        CameraConfig(height=0)

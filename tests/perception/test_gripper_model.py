import numpy as np
import pytest

from geo4d_policy.perception.gripper_model import PARTS, GripperModel


@pytest.fixture(scope="module")
def model():
    return GripperModel.load()


def test_frames_follow_the_asset_spec(model):
    # Hand frame = link8 turned -45 deg about z; fingers at +-w/2 along the hand's y.
    assert np.allclose(model.X_GH[:3, 1], [np.sqrt(0.5), np.sqrt(0.5), 0.0])
    X_left = model.X_GB("left_finger", 0.06)
    X_right = model.X_GB("right_finger", 0.06)
    assert np.allclose(X_left[:3, 3] - X_right[:3, 3], 0.06 * model.closing_axis_G)
    assert np.isclose(X_left[2, 3], model.finger_joint_z)
    assert np.allclose(model.X_G_TCP[:3, 3], [0, 0, 0.1034])
    # Widths are clipped to the stroke.
    assert np.allclose(model.X_GB("left_finger", 1.0), model.X_GB("left_finger", model.stroke))


def test_samples_lie_on_the_parts_and_are_reproducible(model):
    s = model.sample_points(width=0.08, counts=500, seed=3)
    assert set(s) == set(PARTS)
    for part in PARTS:
        assert s[part].points.shape == (500, 3)
        assert np.allclose(np.linalg.norm(s[part].normals, axis=1), 1.0)
        mesh = model.meshes_in_G(0.08)[part]
        assert np.all(s[part].points >= mesh.bounds[0] - 1e-9) and np.all(s[part].points <= mesh.bounds[1] + 1e-9)
    again = model.sample_points(width=0.08, counts=500, seed=3)
    assert np.array_equal(again["hand"].points, s["hand"].points)
    # Fingers open symmetrically about the closing axis' origin.
    axis = model.closing_axis_G
    assert np.all(s["left_finger"].points @ axis > 0.04 - 1e-9)
    assert np.all(s["right_finger"].points @ axis < -0.04 + 1e-9)


def test_centroid_distance_model(model):
    off = model.finger_centroid_offset()
    assert 0.004 < off < 0.012
    assert np.isclose(model.finger_centroid_distance(0.03), 0.03 + 2 * off)
    assert np.isclose(model.width_from_centroid_distance(model.finger_centroid_distance(0.05)), 0.05)


def test_missing_assets_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="gripper.json"):
        GripperModel.load(tmp_path)

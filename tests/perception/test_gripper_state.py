import numpy as np
import pytest

from geo4d_policy.perception.gripper_model import PART_LEFT, PART_RIGHT, GripperModel
from geo4d_policy.perception.gripper_state import GripperStateEstimator, measure_finger_opening
from geo4d_policy.perception.synthetic import gripper_cloud, smooth_trajectory


@pytest.fixture(scope="module")
def model():
    return GripperModel.load()


def _finger_points(model, X, width, seed):
    c = gripper_cloud(model, X, width, n_points=6000, noise=0.002, drop=0.2, outliers=0.0, seed=seed)
    fingers = np.isin(c.part_labels, (PART_LEFT, PART_RIGHT))
    return c.points[fingers], c.part_labels[fingers]


@pytest.mark.parametrize("width, closed", [(0.08, False), (0.0, True), (0.03, True)])
@pytest.mark.parametrize("method", ["pose", "kmeans", "labels"])
def test_open_and_closed_grippers(model, width, closed, method):
    X = smooth_trajectory(1, seed=7)[0]
    pts, labels = _finger_points(model, X, width, seed=1)
    m = measure_finger_opening(pts, model=model, X_CG=X if method == "pose" else None,
                               part_labels=labels if method == "labels" else None)
    assert m.method == method and m.distance is not None
    if method != "kmeans" or width > 0:
        # One-sided visibility biases the centroids by a few mm at most.
        assert abs(m.width - width) < 0.008, m
    est = GripperStateEstimator(model)
    assert est.update(m).closed == closed


def test_hysteresis_and_missing_measurements(model):
    est = GripperStateEstimator(model)
    lo, hi = est.close_below, est.open_above
    assert hi > lo
    mid = 0.5 * (lo + hi)
    d_open, d_closed = model.finger_centroid_distance(0.08), model.finger_centroid_distance(0.0)
    seq = [d_open, mid, lo - 1e-3, mid, hi - 1e-4, None, hi + 1e-3, mid, d_closed]
    states = [est.update(d).state for d in seq]
    assert states == ["open", "open", "closed", "closed", "closed", "closed", "open", "open", "closed"]
    held = GripperStateEstimator(model).update(None)
    assert held.held and held.state == "open"


def test_a_hidden_finger_is_not_a_closed_gripper(model):
    X = smooth_trajectory(1, seed=7)[0]
    pts, labels = _finger_points(model, X, 0.08, seed=2)
    only_left = pts[labels == PART_LEFT]
    m = measure_finger_opening(only_left, model=model, X_CG=X)
    assert m.distance is None
    est = GripperStateEstimator(model, initial_state="open")
    assert est.update(m).state == "open"


def test_thresholds_for_a_wide_object(model):
    # The 7.4 cm apple: holding it must read closed, a fully open gripper open.
    est = GripperStateEstimator.for_object_width(0.074, model=model)
    assert est.update(model.finger_centroid_distance(0.08)).state == "open"
    assert est.update(model.finger_centroid_distance(0.074)).state == "closed"
    with pytest.raises(ValueError):
        GripperStateEstimator(model, close_below=0.05, open_above=0.04)


def test_reset_can_start_from_a_measured_state():
    est = GripperStateEstimator(initial_state="open")
    est.reset(initial_state="closed")
    assert est.update(None).closed  # no measurement: the given start state holds
    est.reset()
    assert not est.update(None).closed  # back to the constructor's

"""track_video: both views from the current frame, masks, finger state from masked points, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from geo4d_policy.perception.gripper_model import GripperModel
from geo4d_policy.perception.synthetic import look_at_pose, render_gripper
from geo4d_policy.perception.video_tracking import CurrentView, PredictedVideo, track_video

H, W = 96, 128
K = np.array([[110.0, 0, W / 2], [0, 110.0, H / 2], [0, 0, 1]])


def _scene(widths, *, step=0.02):
    model = GripperModel.load()
    poses = [look_at_pose(np.array([-0.05 + step * k, 0.0, 0.55])) for k in range(len(widths))]
    views = [render_gripper(model, X, w, K, H, W, samples=40000, seed=k) for k, (X, w) in enumerate(zip(poses, widths))]
    return model, poses, views


def test_tracks_the_masked_gripper_and_reads_the_finger_state():
    widths = [0.08, 0.08, 0.0, 0.0]
    model, poses, views = _scene(widths)
    cur = views[0]
    current = CurrentView(cur.pointmap, cur.valid, {"left": cur.part_labels.astype(np.int8)})
    fut = views[1:]
    pm = np.stack([[v.pointmap for v in fut]] * 2)
    valid = np.stack([[v.valid for v in fut]] * 2)
    masks = np.stack([[v.part_labels >= 0 for v in fut]] * 2)
    video = PredictedVideo(pm, valid, masks={"left": masks})
    X_TCn = np.eye(4)
    tracks = track_video(video, current, X_TCn=X_TCn, X_TG_now={"left": poses[0]}, model=model)
    tr = tracks["left"]
    assert tr.registration.ok and len(tr.fused) == 3
    err = np.linalg.norm(tr.X_TG[:, :3, 3] - np.stack(poses[1:])[:, :3, 3], axis=1)
    assert err.max() < 0.01, err
    d_open, d_closed = model.finger_centroid_distance(0.08), model.finger_centroid_distance(0.0)
    mid = 0.5 * (d_open + d_closed)
    assert tr.finger_distance[0] > mid and tr.finger_distance[1] < mid and tr.finger_distance[2] < mid


def test_bad_input():
    with pytest.raises(ValueError, match="rgb of shape"):
        PredictedVideo(None, None)
    with pytest.raises(ValueError, match="pointmaps must be"):
        PredictedVideo(np.zeros((3, 2, 4, 4, 3)), np.ones((3, 2, 4, 4), bool))
    rgb_only = PredictedVideo(None, None, rgb=np.zeros((2, 2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="RGB-only"):
        track_video(rgb_only, CurrentView(np.zeros((4, 4, 3)), np.zeros((4, 4), bool), {}), X_TCn=np.eye(4),
                    X_TG_now={"left": np.eye(4)})


class _Scripted:
    """A stub tracker returning one fixed result on every frame."""

    def __init__(self, result):
        self.result = result

    def reset(self):
        pass

    def register(self, observation, *, part_labels=None, init_pose=None):
        return self.result

    def track(self, observation, *, part_labels=None):
        return self.result


def test_the_finger_state_is_read_in_the_view_that_saw_the_fingers():
    # PlaceAppleFromBowlIntoBin, traced: the view looking down on the open hand had the best pose
    # (confidence 1.0) but no finger point, so its opening was the tracker's prior (half the
    # stroke, "closed"); the side view saw both fingers at 80 mm. The opening must come from it.
    from geo4d_policy.perception.tracker import TrackResult

    model = GripperModel.load()
    X = look_at_pose(np.array([0.0, 0.0, 0.55]))
    top = _Scripted(TrackResult(X, 1.0, "ok", width=0.04, finger_points=(0, 0)))
    side = _Scripted(TrackResult(X, 0.75, "ok", width=0.08, finger_points=(16, 15)))
    pm = np.zeros((2, 3, 4, 4, 3), np.float32)
    video = PredictedVideo(pm, np.ones((2, 3, 4, 4), bool))
    current = CurrentView(pm[0, 0], np.ones((4, 4), bool), {"left": None})
    tr = track_video(video, current, X_TCn=np.eye(4), X_TG_now={"left": X}, model=model,
                     trackers={"left": (top, side)})["left"]
    assert [f.source for f in tr.fused] == ["n"] * 3 and [f.finger_source for f in tr.fused] == ["m"] * 3
    assert np.allclose(tr.finger_distance, model.finger_centroid_distance(0.08))

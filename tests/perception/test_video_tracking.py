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
    from geo4d_policy.perception.pose_tracker import TrackResult

    model = GripperModel.load()
    X = look_at_pose(np.array([0.0, 0.0, 0.55]))
    top = _Scripted(TrackResult(X, 1.0, "ok", fitness=1.0, width=0.04, finger_points=(0, 0)))
    side = _Scripted(TrackResult(X, 0.75, "ok", fitness=1.0, width=0.08, finger_points=(16, 15)))
    pm = np.zeros((2, 3, 4, 4, 3), np.float32)
    video = PredictedVideo(pm, np.ones((2, 3, 4, 4), bool))
    current = CurrentView(pm[0, 0], np.ones((4, 4), bool), {"left": None})
    tr = track_video(video, current, X_TCn=np.eye(4), X_TG_now={"left": X}, model=model,
                     trackers={"left": (top, side)})["left"]
    assert [f.source for f in tr.fused] == ["n"] * 3 and [f.finger_source for f in tr.fused] == ["m"] * 3
    assert np.allclose(tr.finger_distance, model.finger_centroid_distance(0.08))
    # Unsegmented frames whose pose explains few of its points are lost (fusion.fail_safe) unless
    # the check is off.
    poor = _Scripted(TrackResult(X, 1.0, "ok", fitness=0.5, width=0.04, finger_points=(0, 0)))
    from geo4d_policy.perception.fusion import FailSafeConfig

    for check, status in ((True, "lost"), (False, "ok")):
        tr = track_video(video, current, X_TCn=np.eye(4), X_TG_now={"left": X}, model=model,
                         trackers={"left": (poor, poor)}, fail_safe_config=FailSafeConfig(enabled=check))["left"]
        assert [f.status for f in tr.fused] == [status] * 3


@pytest.mark.parametrize("true_width, stale_width", [(0.063, 0.08), (0.08, 0.063)])
def test_unseen_fingers_are_read_from_the_free_space_around_them(true_width, stale_width):
    # PlaceAppleFromBowlIntoBin, traced: on half the frames no view sees a finger well, and the
    # opening read there was the tracker's prior, which stuck at a value read from one or two
    # finger pixels (80 mm for a hand holding the apple at 62 mm). The scene behind the fingers
    # still tells: fingers at the wrong opening would stand where the camera sees the plate.
    from geo4d_policy.perception.fusion import FusedPose
    from geo4d_policy.perception.gripper_model import PART_HAND
    from geo4d_policy.perception.pose_tracker import TrackingFrame
    from geo4d_policy.perception.video_tracking import fused_finger_distance

    model = GripperModel.load()
    X = look_at_pose(np.array([0.0, 0.0, 0.55]), roll=0.3)
    gx, gy = np.meshgrid(np.linspace(-0.4, 0.4, 300), np.linspace(-0.3, 0.3, 220))
    plate = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, 0.75)], axis=1)  # 20 cm behind the hand
    view = render_gripper(model, X, true_width, K, H, W, samples=40000, seed=0, background=plate)
    palm_only = np.where(view.part_labels == PART_HAND, PART_HAND, -1)  # the fingers unlabelled: unseen
    fused = FusedPose(X, X, 1.0, "n", "ok", width=stale_width, finger_points=(0, 0))
    frame = TrackingFrame(view.pointmap, view.valid, K=K)
    before = fused_finger_distance(fused, view.pointmap, view.valid, model=model, part_labels=palm_only)
    after = fused_finger_distance(fused, view.pointmap, view.valid, model=model, part_labels=palm_only,
                                  views=[frame], candidate_widths=(0.063, model.stroke))
    assert before == pytest.approx(model.finger_centroid_distance(stale_width))  # the stale prior
    assert after == pytest.approx(model.finger_centroid_distance(true_width))
    # A view whose projection is unknown (another camera's pixels, no K) gives no choice, and
    # with no finger inlier the stale prior is no reading either.
    other = TrackingFrame(view.pointmap[:, ::-1], view.valid[:, ::-1])
    assert np.isnan(fused_finger_distance(fused, view.pointmap, view.valid, model=model, part_labels=palm_only,
                                          views=[other], candidate_widths=(0.063, model.stroke)))


def test_no_finger_and_no_free_space_evidence_is_no_reading():
    # No finger sample of either candidate opening is in the image, so free space cannot choose,
    # and with no finger inlier the tracker's width is only its prior.
    from geo4d_policy.perception.fusion import FusedPose
    from geo4d_policy.perception.pose_tracker import TrackingFrame
    from geo4d_policy.perception.video_tracking import fused_finger_distance

    model = GripperModel.load()
    X = look_at_pose(np.array([0.0, 0.0, 0.55]), roll=0.3)
    view = render_gripper(model, X, 0.063, K, H, W, samples=40000, seed=0)
    away = np.eye(4)
    away[:3, 3] = [0.0, 0.0, -1.0]  # the gripper behind the camera: no finger sample in the image
    fused = FusedPose(away, away, 1.0, "n", "ok", width=0.04, finger_points=(0, 0))
    frame = TrackingFrame(view.pointmap, view.valid, K=K)
    d = fused_finger_distance(fused, view.pointmap, view.valid, model=model, views=[frame],
                              candidate_widths=(0.063, model.stroke))
    assert np.isnan(d)
    # Without the free-space step the prior is still read.
    assert fused_finger_distance(fused, view.pointmap, view.valid, model=model) == pytest.approx(
        model.finger_centroid_distance(0.04))


def test_track_video_reads_unseen_fingers_from_free_space_with_the_views_cameras():
    # The policy's path: track_video passes every view with its camera to the reading. View n
    # holds a plate behind the hand; view m's pixels are only usable with their camera given.
    from geo4d_policy.perception.gripper_model import PART_HAND
    from geo4d_policy.perception.pose_tracker import TrackResult

    model = GripperModel.load()
    X = look_at_pose(np.array([0.0, 0.0, 0.55]), roll=0.3)
    gx, gy = np.meshgrid(np.linspace(-0.4, 0.4, 300), np.linspace(-0.3, 0.3, 220))
    plate = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, 0.75)], axis=1)
    view = render_gripper(model, X, 0.063, K, H, W, samples=40000, seed=0, background=plate)
    palm_only = np.where(view.part_labels == PART_HAND, PART_HAND, -1)
    stale = _Scripted(TrackResult(X, 1.0, "ok", width=0.08, finger_points=(0, 0)))
    pm = np.stack([[view.pointmap] * 2] * 2)
    valid = np.stack([[view.valid] * 2] * 2)
    video = PredictedVideo(pm, valid, part_labels={"left": np.stack([[palm_only] * 2] * 2)})
    current = CurrentView(view.pointmap, view.valid, {"left": palm_only})

    def run(**kw):
        return track_video(video, current, X_TCn=np.eye(4), X_TG_now={"left": X}, model=model,
                           trackers={"left": (stale, stale)}, **kw)["left"].finger_distance

    assert np.allclose(run(), model.finger_centroid_distance(0.08))  # the stale width
    held = model.finger_centroid_distance(0.063)
    assert np.allclose(run(candidate_widths=(0.063, model.stroke)), held)  # view n's projection is fitted
    assert np.allclose(run(candidate_widths=(0.063, model.stroke), view_cameras=[(K, None), (K, np.eye(4))]), held)

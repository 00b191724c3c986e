import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from geo4d_policy.perception.fusion import FusedPose, fuse_arms, fuse_views
from geo4d_policy.perception.pose_tracker import TrackResult


def _pose(seed):
    rng = np.random.default_rng(seed)
    X = np.eye(4)
    X[:3, :3] = Rotation.random(random_state=seed).as_matrix()
    X[:3, 3] = rng.uniform(-0.5, 0.5, 3)
    return X


def _offset(*, mm: float, deg: float) -> np.ndarray:
    """A rigid offset of ``mm`` along (1, 1, 0)/sqrt(2) and ``deg`` about (0, 1, 1)/sqrt(2)."""
    X = np.eye(4)
    X[:3, :3] = Rotation.from_rotvec(np.deg2rad(deg) * np.array([0, 1, 1]) / np.sqrt(2)).as_matrix()
    X[:3, 3] = mm * 1e-3 * np.array([1, 1, 0]) / np.sqrt(2)
    return X


def _res(X, conf, status="ok"):
    return TrackResult(X, conf if status == "ok" else 0.0, status)


X_TCn = _pose(100)


def test_picks_the_more_confident_view_and_converts_with_X_TCn():
    Xa, Xb = _pose(1), _pose(2)
    rn = [_res(Xa, 0.9), _res(Xa, 0.3), _res(Xa, 0.5)]
    rm = [_res(Xb, 0.4), _res(Xb, 0.8), _res(Xb, 0.5)]
    fused = fuse_views(rn, rm, X_TCn=X_TCn)
    assert [f.source for f in fused] == ["n", "m", "n"]  # ties go to the reference view
    assert np.allclose(fused[0].X_TG, X_TCn @ Xa)
    assert np.allclose(fused[1].X_TG, X_TCn @ Xb)
    assert np.allclose(fused[1].X_CnG, Xb)
    assert fused[1].confidence == 0.8


def test_lost_in_both_views_holds_the_previous_fused_pose():
    Xa, Xb = _pose(3), _pose(4)
    rn = [_res(Xa, 0.7), _res(Xb, 0.0, "lost"), _res(Xb, 0.0, "lost")]
    rm = [_res(Xb, 0.0, "lost"), _res(Xb, 0.0, "lost"), _res(Xb, 0.6)]
    fused = fuse_views(rn, rm, X_TCn=X_TCn)
    assert fused[1].status == "lost" and fused[1].source == "none" and fused[1].confidence == 0.0
    assert np.allclose(fused[1].X_TG, X_TCn @ Xa)
    assert fused[2].source == "m"
    # Lost from the first frame: the trackers' held pose, still finite.
    first = fuse_views([_res(Xa, 0.0, "lost")], None, X_TCn=X_TCn)[0]
    assert first.status == "lost" and np.allclose(first.X_TG, X_TCn @ Xa)


def test_both_arms_and_bad_input():
    Xl, Xr = _pose(5), _pose(6)
    out = fuse_arms({"left": ([_res(Xl, 0.9)], [_res(Xr, 0.1)]), "right": ([_res(Xr, 0.2)], [_res(Xl, 0.6)])},
                    X_TCn=X_TCn)
    assert np.allclose(out["left"][0].X_TG, X_TCn @ Xl)
    assert np.allclose(out["right"][0].X_TG, X_TCn @ Xl) and out["right"][0].source == "m"
    with pytest.raises(ValueError):
        fuse_views([_res(Xl, 0.9)], [], X_TCn=X_TCn)
    with pytest.raises(ValueError):
        fuse_views([_res(Xl, 0.9)], None, X_TCn=np.full((4, 4), np.nan))


def test_the_opening_comes_from_the_view_that_saw_the_fingers_best():
    # Traced on PlaceAppleFromBowlIntoBin (ground-truth masks): a view looking down on the hand
    # fits the palm best but sees no finger, so its opening is only its prior; the other view
    # sees both fingers. The pose comes from the first, the opening from the second. The two
    # views agree on the pose to within 2 mm and 1 deg, as they do on recorded frames.
    Xa = _pose(7)
    Xb = Xa @ _offset(mm=2.0, deg=1.0)
    top = TrackResult(Xa, 1.0, "ok", width=0.040, finger_points=(0, 0))
    side = TrackResult(Xb, 0.75, "ok", width=0.080, finger_points=(16, 15))
    f = fuse_views([top], [side], X_TCn=X_TCn)[0]
    assert f.source == "n" and np.allclose(f.X_CnG, Xa) and f.confidence == 1.0
    assert f.finger_source == "m" and f.finger_view == 1
    assert f.width == 0.080 and f.finger_points == (16, 15)
    # Ranked by the less seen finger first: (4, 5) beats (0, 12).
    one_sided = TrackResult(Xa, 1.0, "ok", width=0.050, finger_points=(0, 12))
    both = TrackResult(Xb, 0.9, "ok", width=0.078, finger_points=(4, 5))
    assert fuse_views([one_sided], [both], X_TCn=X_TCn)[0].width == 0.078
    # Ties (nothing seen in either view) keep the pose's view; a lost view is never used.
    tie = fuse_views([TrackResult(Xa, 0.6, "ok", width=0.05)], [TrackResult(Xb, 0.8, "ok", width=0.07)],
                     X_TCn=X_TCn)[0]
    assert tie.source == "m" and tie.finger_source == "m" and tie.width == 0.07
    lost = fuse_views([TrackResult(Xa, 0.6, "ok", width=0.05)],
                      [TrackResult(Xb, 0.0, "lost", width=0.07, finger_points=(20, 20))], X_TCn=X_TCn)[0]
    assert lost.finger_source == "n" and lost.width == 0.05
    # Fusions that set no finger source read the pose's view.
    assert FusedPose(np.eye(4), np.eye(4), 1.0, "m", "ok").finger_view == 1


def test_fail_safe_loses_frames_whose_pose_the_views_see_through():
    import dataclasses

    from geo4d_policy.perception.fusion import FailSafeConfig, fail_safe
    from geo4d_policy.perception.gripper_model import GripperModel
    from geo4d_policy.perception.synthetic import render_gripper
    from geo4d_policy.perception.pose_tracker import TrackingFrame
    from geo4d_policy.perception.projection import see_through_fraction

    model = GripperModel.load()
    H, W = 128, 160
    f = 381 * W / 640
    K = np.array([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1]])
    X_CG = np.eye(4)
    X_CG[:3, :3] = Rotation.from_euler("xyz", [150, 10, 30], degrees=True).as_matrix()
    X_CG[:3, 3] = [0.02, -0.01, 0.6]
    rng = np.random.default_rng(0)
    wall = np.column_stack([rng.uniform(-0.8, 0.8, 30000), rng.uniform(-0.6, 0.6, 30000), np.full(30000, 0.9)])
    view = render_gripper(model, X_CG, 0.04, K, H, W, background=wall)
    frame = TrackingFrame(view.pointmap, view.valid, part_labels=view.part_labels, K=K)
    off = X_CG.copy()
    off[:3, 3] += [0.04, 0.03, 0.0]  # 5 cm beside the gripper, in front of the wall
    on_share, off_share = (see_through_fraction(frame, X, 0.04, model=model) for X in (X_CG, off))
    cfg = FailSafeConfig()
    assert on_share < 0.1 < cfg.see_through_limit < off_share
    fused = [FusedPose(X_TCn @ X, X, 0.95, "n", "ok", 0.04, fitness=0.6) for X in (X_CG, off, X_CG)]
    out = fail_safe(fused, [[frame]] * 3, model=model)
    assert [o.status for o in out] == ["ok", "lost", "ok"] and out[1].confidence == 0.0
    np.testing.assert_allclose(out[1].X_CnG, X_CG)  # the previous pose held, as fuse_views does
    # A second view that shows a gripper at that pose keeps it (every view must contradict it).
    there = render_gripper(model, off, 0.04, K, H, W, background=wall)
    out = fail_safe(fused, [[frame, TrackingFrame(there.pointmap, there.valid, K=K)]] * 3, model=model)
    assert [o.status for o in out] == ["ok", "ok", "ok"]
    # In unsegmented frames a pose must also explain most points in the gripper's box.
    bare = TrackingFrame(view.pointmap, view.valid, K=K)
    assert [o.status for o in fail_safe(fused, [[bare]] * 3, model=model)] == ["lost"] * 3
    explained = [dataclasses.replace(f, fitness=cfg.unsegmented_min_fitness) for f in fused]
    assert [o.status for o in fail_safe(explained, [[bare]] * 3, model=model)] == ["ok", "lost", "ok"]
    # Two views 5 cm apart: only a pose that explains its view's points well is kept.
    apart = [dataclasses.replace(f, X_TG=X_TCn @ X_CG, X_CnG=X_CG, views_apart_mm=50.0, fitness=fit)
             for f, fit in zip(fused, (0.95, 0.85, 0.6))]
    assert [o.status for o in fail_safe(apart, [[frame]] * 3, model=model)] == ["ok", "lost", "lost"]
    with pytest.raises(ValueError, match="frames of views"):
        fail_safe(fused, [[frame]], model=model)
    # Off, the track is reported as tracked; thresholds are checked where they are set.
    assert [o.status for o in fail_safe(fused, [[bare]] * 3, model=model, config=FailSafeConfig(enabled=False))] \
        == ["ok"] * 3
    with pytest.raises(ValueError, match="must be in"):
        FailSafeConfig(see_through_limit=1.5)
    # fuse_views reports how far apart the views' poses were.
    Xb = X_CG.copy()
    Xb[:3, 3] += [0.0, 0.0, 0.04]
    two = fuse_views([_res(X_CG, 0.9)], [_res(Xb, 0.5)], X_TCn=X_TCn)[0]
    assert two.views_apart_mm == pytest.approx(40.0) and two.fitness == 0.0
    assert fuse_views([_res(X_CG, 0.9)], [_res(Xb, 0.0, "lost")], X_TCn=X_TCn)[0].views_apart_mm is None

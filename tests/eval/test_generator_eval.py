"""geo4d-eval-video: the tracked-gripper metric on a rendered CAD gripper (near zero on the true
frames, the known offset on shifted ones), and the refusals (training episodes, no motion)."""

import numpy as np
import pytest
import yaml

from geo4d_policy.config import CONFIG_DIR
from geo4d_policy.data.format import DatasetError
from geo4d_policy.data.geometry import depth_to_pointmap, invert_transform, transform_points
from geo4d_policy.data.masks import pack_masks
from geo4d_policy.data.synthetic import make_dataset
from geo4d_policy.eval.generator_eval import (
    ClipFrames,
    GeneratorEvalConfig,
    _track_job,
    check_not_training_data,
    frame_metrics,
    training_seeds_of,
)
from geo4d_policy.interface import look_at
from geo4d_policy.perception.gripper_model import GripperModel
from geo4d_policy.perception.synthetic import render_gripper, smooth_trajectory

N_FUTURE = 4


@pytest.fixture(scope="module")
def clip():
    """Two cameras watch the right gripper (the CAD model, rendered) move 12 cm in front of a wall."""
    model = GripperModel.load()
    H, W = 128, 160
    f = 381 * W / 640
    K = np.array([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1]])
    X_TC = np.stack([look_at(np.array([0.7, 0.15, 0.55]), np.zeros(3)),
                     look_at(np.array([0.6, -0.3, 0.6]), np.zeros(3))])
    T = N_FUTURE + 1
    X_TG = X_TC[0] @ smooth_trajectory(T, seed=4, depth=0.75, travel=0.12, rotation=np.deg2rad(25.0))
    widths = np.full(T, 0.08)
    rng = np.random.default_rng(0)
    X_CnCm = invert_transform(X_TC[0]) @ X_TC[1]
    rgb, pts, valid, masks = [], [], [], []
    for v in range(2):
        X_CT = invert_transform(X_TC[v])
        wall = np.column_stack([rng.uniform(-0.8, 0.8, 30000), rng.uniform(-0.6, 0.6, 30000), np.full(30000, 1.1)])
        p_v, ok_v, m_v = [], [], []
        for t in range(T):
            view = render_gripper(model, X_CT @ X_TG[t], widths[t], K, H, W, seed=t, background=wall)
            depth = np.where(view.valid, view.pointmap[..., 2], 0.0)
            p, ok = depth_to_pointmap(depth, K)
            if v == 1:
                p = np.where(ok[..., None], transform_points(X_CnCm, p), 0.0)
            lab = view.part_labels
            p_v.append(p.astype(np.float32))
            ok_v.append(ok)
            m_v.append(pack_masks({"right_hand": lab == 0, "right_left_finger": lab == 1,
                                   "right_right_finger": lab == 2}))
        rgb.append(np.zeros((T, H, W, 3), np.uint8))
        pts.append(np.stack(p_v))
        valid.append(np.stack(ok_v))
        masks.append(np.stack(m_v))
    pts, valid = np.stack(pts), np.stack(valid)
    own_m = transform_points(invert_transform(X_CnCm), pts[1, 0])
    return ClipFrames(task="StoreCerealBoxUnderShelf", episode_seed=0, start=0, rgb=np.stack(rgb), points=pts,
                      valid=valid, masks=np.stack(masks), own_points_m=own_m, K=np.stack([K, K]), X_TC=X_TC,
                      X_TG={"right": X_TG}, width={"right": widths})


def _job(clip, points):
    return {"key": ("x", 0), "clip": clip, "points": points, "rgb": clip.rgb[:, 1:], "labels": None,
            "arms": ["right"]}


def test_tracked_gripper_error_is_near_zero_on_true_frames_and_the_offset_on_shifted_ones(clip):
    true = np.where(clip.valid[:, 1:, ..., None], clip.points[:, 1:], np.nan).astype(np.float32)
    r = _track_job(_job(clip, true))["arms"]["right"]
    assert r["trans_mm"].shape == (N_FUTURE,) and not r["lost"].any()
    # A few mm: pixels are ~8 mm at this range (see test_tracking_eval).
    assert np.median(r["trans_mm"]) < 8.0 and np.median(r["rot_deg"]) < 3.0, r
    shift = np.array([0.0, 0.03, 0.0], np.float32)  # 3 cm in camera n's frame, every future frame
    moved = _track_job(_job(clip, true + shift))["arms"]["right"]
    assert np.all(np.abs(moved["trans_mm"] - 30.0) < 8.0), moved["trans_mm"]
    m_true = frame_metrics(clip, clip.rgb[:, 1:], true)
    m_moved = frame_metrics(clip, clip.rgb[:, 1:], true + shift)
    assert np.allclose(m_true["gripper_px_mm"], 0.0, atol=1e-3) and np.allclose(m_true["abs_rel"], 0.0, atol=1e-6)
    assert np.allclose(m_moved["gripper_px_mm"], 30.0, atol=1e-2)


def test_single_view_tracks_view_n_alone(clip):
    """With single_view, view m's points play no part: a view m moved 10 cm gives the same track."""
    true = np.where(clip.valid[:, 1:, ..., None], clip.points[:, 1:], np.nan).astype(np.float32)
    bad_m = true.copy()
    bad_m[1] += np.array([0.1, 0.0, 0.0], np.float32)
    a = _track_job({**_job(clip, true), "single_view": True})["arms"]["right"]
    b = _track_job({**_job(clip, bad_m), "single_view": True})["arms"]["right"]
    np.testing.assert_array_equal(a["trans_mm"], b["trans_mm"])
    assert np.median(a["trans_mm"]) < 8.0 and not a["lost"].any(), a
    assert GeneratorEvalConfig(single_view=True).single_view


def test_recorded_labels_are_the_future_masks(clip):
    """segmenter="recorded" labels each future frame with its recorded masks (the tracker then
    sees the true parts); the value is accepted by the config."""
    from geo4d_policy.eval.generator_eval import RECORDED_LABELS
    from geo4d_policy.perception.pose_tracker import part_label_image

    labels = part_label_image(clip.masks[:, 1:], "right")
    assert labels.shape == clip.masks[:, 1:].shape and set(np.unique(labels)) <= {-1, 0, 1, 2}
    assert (labels[0, 0] >= 0).sum() == ((clip.masks[0, 1] != 0)).sum()
    true = np.where(clip.valid[:, 1:, ..., None], clip.points[:, 1:], np.nan).astype(np.float32)
    r = _track_job({**_job(clip, true), "labels": {"right": labels}})["arms"]["right"]
    assert np.median(r["trans_mm"]) < 8.0 and not r["lost"].any(), r
    assert GeneratorEvalConfig(segmenter=RECORDED_LABELS).segmenter == "recorded"


def test_moving_arm_figures_leave_the_idle_arm_out():
    """The pooled track median mixes an idle arm (easy) with the moving one; the moving-arm
    figures take only arms that move >= min_motion_m within the summary window."""
    from geo4d_policy.eval.generator_eval import MOVING_KEYS, _summarize_row

    F = 6
    frame_vals = {k: [np.zeros((2, F))] for k in ("abs_rel", "delta1", "gripper_px_mm", "psnr")}
    idle = {"trans_mm": np.full(F, 2.0), "rot_deg": np.zeros(F), "state_correct": np.ones(F, bool),
            "lost": np.zeros(F, bool), "moved_m": np.full(F, 0.001), "motion_share": np.full(F, np.nan)}
    moving = {"trans_mm": np.full(F, 80.0), "rot_deg": np.zeros(F), "state_correct": np.ones(F, bool),
              "lost": np.array([0, 1, 1, 0, 0, 0], bool), "moved_m": np.linspace(0.01, 0.06, F),
              "motion_share": np.array([np.nan, 0.1, 0.2, 0.3, 0.4, 0.9])}
    r = _summarize_row(frame_vals, [{"left": idle, "right": moving}, {"left": idle}], (1, 5), 0.02)
    s = r["summary"]
    assert s["gripper_track_mm_median"] == 2.0  # 3 arm-clips pooled: the idle arm's 2 mm wins
    assert s["moving_arm_track_mm_median"] == 80.0 and s["moving_arm_lost_rate"] == 0.4
    assert np.isclose(s["moving_arm_motion_share_median"], 0.25)  # frames 2-5 of the window; NaN left out
    assert r["n_moving_arm_clips"] == 1 and r["n_arm_clips"] == 3
    r0 = _summarize_row(frame_vals, [{"left": idle}], (1, 5), 0.02)
    assert all(np.isnan(r0["summary"][k]) for k in MOVING_KEYS)


def test_motion_share_is_one_for_the_recorded_future_and_zero_for_the_current_frame(clip):
    from geo4d_policy.eval.generator_eval import motion_share
    from geo4d_policy.perception.pose_tracker import part_label_image

    true = np.where(clip.valid[:, 1:, ..., None], clip.points[:, 1:], np.nan).astype(np.float32)
    labels = part_label_image(clip.masks[0, 1:], "right")
    share = motion_share(clip, true, labels, "right")
    assert np.isfinite(share).all() and np.allclose(share, 1.0), share
    still = np.repeat(np.where(clip.valid[:, :1, ..., None], clip.points[:, :1], np.nan), N_FUTURE, axis=1)
    still_labels = np.repeat(part_label_image(clip.masks[0, :1], "right"), N_FUTURE, axis=0)
    assert np.allclose(motion_share(clip, still.astype(np.float32), still_labels, "right"), 0.0, atol=1e-6)
    assert np.isnan(motion_share(clip, true, None, "right")).all()


def test_training_episodes_are_refused():
    cfg = {"training": {"train_config": {"data_seeds": {"PutSpatulaOnTable": [0, 1, 2]}}}}
    seeds = training_seeds_of(cfg)
    check_not_training_data(seeds, "PutSpatulaOnTable", [700000, 700001], "val")
    check_not_training_data(seeds, "PlaceAppleFromBowlIntoBin", [0, 1], "val")  # another task's seeds
    with pytest.raises(DatasetError, match=r"were used to train this checkpoint \(seeds \[1, 2\]\)"):
        check_not_training_data(seeds, "PutSpatulaOnTable", [1, 2, 700000], "val")
    assert training_seeds_of({}) is None


def test_cli_refuses_bad_input(tmp_path, capsys):
    """Training episodes, a dataset without gripper motion, a mismatched autoencoder: exit 2 with reasons."""
    import torch

    from geo4d_policy.cli.eval_video import main as eval_main
    from geo4d_policy.cli.train import main as train_main
    from geo4d_policy.models.pipeline import Generator4D
    from geo4d_policy.models.vae import VAE

    make_dataset(tmp_path / "data", seeds=range(2), n_frames=12, resolution=(32, 40))
    make_dataset(tmp_path / "val", seeds=[500], n_frames=12, resolution=(32, 40))
    cfg = yaml.safe_load((CONFIG_DIR / "model" / "tiny.yaml").read_text())
    cfg.update(height=32, width=40)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    common = ["--data", str(tmp_path / "data"), "--config", str(tmp_path / "tiny.yaml"), "--batch-size", "1",
              "--workers", "0"]
    for kind in ("rgb", "pointmap"):
        assert train_main(["vae", "--modality", kind, "--out", str(tmp_path / kind), "--steps", "1", *common]) == 0
    assert train_main(["generator", "--task", "all", "--out", str(tmp_path / "gen"), "--image-vae",
                       str(tmp_path / "rgb"), "--pointmap-vae", str(tmp_path / "pointmap"), "--steps", "1",
                       *common]) == 0
    ev = ["--checkpoint", str(tmp_path / "gen"), "--clips", "2", "--steps", "1", "--segmenter", "none"]
    assert eval_main([*ev, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "e1")]) == 2
    assert "were used to train this checkpoint" in capsys.readouterr().err
    # The diagnostic flag lets them through (here to the next refusal: no clip at 32x40).
    assert eval_main([*ev, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "e1"),
                      "--training-episodes"]) == 2
    err = capsys.readouterr().err
    assert "no clip" in err and "were used to train" not in err
    # At 32x40 no gripper shows 20 pixels: no clip qualifies, which is said, not averaged over.
    assert eval_main([*ev, "--data", str(tmp_path / "val"), "--out", str(tmp_path / "e2")]) == 2
    assert "no clip" in capsys.readouterr().err
    # A pointmap autoencoder of another size than the checkpoint's config: refused by name.
    g = Generator4D.from_pretrained(tmp_path / "gen")
    cfg["pointmap_vae"]["latent_channels"] = 8
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(cfg))
    assert train_main(["vae", "--modality", "pointmap", "--out", str(tmp_path / "pm8"), "--steps", "1",
                       *common[:2], "--config", str(tmp_path / "other.yaml"), *common[4:]]) == 0
    rc = train_main(["generator", "--task", "all", "--out", str(tmp_path / "gen2"), "--image-vae",
                     str(tmp_path / "rgb"), "--pointmap-vae", str(tmp_path / "pm8"), "--steps", "1", *common])
    err = capsys.readouterr().err
    assert rc == 2 and "pointmap VAE checkpoint does not match" in err and "latent_channels" in err
    assert isinstance(g.pointmap_vae, VAE) and torch.is_tensor(next(g.parameters()))


def test_config_rejects_unknown_rows():
    with pytest.raises(ValueError, match="unknown row"):
        GeneratorEvalConfig(rows=("generator", "oracle"))

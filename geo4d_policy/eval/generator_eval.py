"""What the policy needs from the generator: the tracked gripper in predicted frames (``geo4d-eval-video``).

Whole-image depth says little about whether a policy can act on a prediction: the gripper is a
few hundred pixels of a 128x160 frame. This evaluation measures what the next stage consumes,
on the policy's own two cameras (view n = the first held-out camera, view m = the second; m's
points predicted in n's frame) and on validation episodes the checkpoint never saw (its
training config records the data seeds it was trained on; overlapping episodes are refused).

Clips: start frames where a gripper moves at least ``min_motion_m`` over the executed frames and
is visible in one of the two views (``min_part_pixels`` gripper pixels); ``clips`` per task,
seeded. A dataset with no such clip is an error, not an empty average.

Rows, for the same clips:
  * ``generator``: the model's prediction from the current frame (``steps`` Euler steps);
  * ``autoencoder``: the recorded future frames through the model's own autoencoders (encode,
    decode): the ceiling of any generator built on them;
  * ``repeat_current``: the current frame repeated (view m's points moved to n's frame with the
    recorded calibration): the floor.

Per row, view and future frame: depth AbsRel and delta1 on valid pixels (view m in its own frame,
as :mod:`~geo4d_policy.eval.video_metrics`), median 3D error on ground-truth gripper pixels (mm),
RGB PSNR. Per row, arm and future frame: the policy's own tracking path on the row's frames
(:func:`~geo4d_policy.perception.video_tracking.track_video`: segmenter on the row's RGB, or as
a diagnostic the recorded future masks (``segmenter="recorded"``); the current frame's labels
from the recorded masks, registration seeded with the measured pose, both views fused (view n
alone with ``single_view``), free space for unseen fingers) against the logged robot pose
(translation mm, rotation deg) and open/close against the measured width (the task's estimator
on the finger distance). Summaries pool the frames the policy executes (``summary_frames``, 1-5
by default): tracking errors pooled over arms, clips and frames per task; depth and pixel metrics
per task and view; the headline numbers are means over tasks (and views).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import multiprocessing as mp
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from geo4d_policy.data.format import DatasetError
from geo4d_policy.data.frame_store import FrameStore
from geo4d_policy.data.masks import part_bits

ROWS: tuple[str, ...] = ("generator", "autoencoder", "repeat_current")
SUMMARY_KEYS: tuple[str, ...] = ("gripper_track_mm_median", "gripper_track_mm_p90", "gripper_track_deg_median",
                                 "open_close_acc", "abs_rel", "delta1", "gripper_px_mm_median", "psnr")
# ``segmenter`` value that labels every row's frames with the recorded future masks instead of a
# segmenter: a diagnostic that separates the predicted geometry from the segmentation of the
# predicted RGB (never the policy's setting: a policy has no future masks).
RECORDED_LABELS = "recorded"
# Figures of the arms that move (the policy's target; an idle arm is easy to track and dominates
# the pooled medians): arms whose logged gripper moves >= ``min_motion_m`` from the current frame
# within the summary window; their tracking, and the share of their motion the row's frames show
# (:func:`motion_share`).
MOVING_KEYS: tuple[str, ...] = ("moving_arm_track_mm_median", "moving_arm_track_mm_p90", "moving_arm_lost_rate",
                                 "moving_arm_motion_share_median")
MIN_DEPTH = 0.05  # predicted points nearer than this are invalid (as the geo4d policy reads them)


@dataclasses.dataclass
class GeneratorEvalConfig:
    """Options of :func:`evaluate_generator` (see the module docstring)."""

    clips: int = 30
    steps: int = 25
    seed: int = 0
    rows: tuple[str, ...] = ROWS
    min_motion_m: float = 0.02
    min_part_pixels: int = 20
    summary_frames: tuple[int, int] = (1, 5)
    segmenter: str | None = "auto"
    workers: int = 0
    batch_size: int = 16
    single_view: bool = False  # track in view n only (the policy's ``single_view`` ablation)
    # Diagnostic: allow episodes the checkpoint trained on (how well it fits them, against how
    # well it generalises); never a reported figure, and recorded in the results.
    training_episodes: bool = False

    def __post_init__(self) -> None:
        self.rows = tuple(self.rows)
        bad = [r for r in self.rows if r not in ROWS]
        if bad or not self.rows:
            raise ValueError(f"unknown row(s) {bad}; choose from {list(ROWS)}")
        if self.clips < 1 or self.steps < 1:
            raise ValueError(f"clips and steps must be >= 1, got {self.clips}, {self.steps}")
        lo, hi = self.summary_frames
        if not 1 <= lo <= hi:
            raise ValueError(f"summary_frames must be 1 <= first <= last, got {self.summary_frames}")


# --------------------------------------------------------------------------------------------
# Validation data
# --------------------------------------------------------------------------------------------


def training_seeds_of(checkpoint_config: Mapping[str, Any]) -> dict[str, set[int]] | None:
    """task -> data seeds a checkpoint was trained on (None when it does not record them)."""
    seeds = (checkpoint_config.get("training") or {}).get("train_config", {}).get("data_seeds")
    if not seeds:
        return None
    return {t: {int(s) for s in v} for t, v in seeds.items()}


def check_not_training_data(train_seeds: Mapping[str, set[int]] | None, task: str, seeds: Sequence[int],
                            where: str) -> None:
    """Raise :class:`DatasetError` when any episode of ``where`` is one the checkpoint trained on."""
    if train_seeds is None:
        return
    overlap = sorted(set(int(s) for s in seeds) & set(train_seeds.get(task, ())))
    if overlap:
        raise DatasetError(
            f"{where}: {len(overlap)} episode(s) of {task} were used to train this checkpoint (seeds "
            f"{overlap[:8]}{' ...' if len(overlap) > 8 else ''}); evaluate on validation episodes from another "
            "data-seed range (geo4d-collect --seed B with a base the training data did not use)")


def select_clips(store: FrameStore, *, n_clips: int, n_future: int, cams: tuple[int, int], seed: int,
                 min_motion_m: float, min_part_pixels: int, motion_frames: int) -> list[tuple[int, int]]:
    """Seeded (episode, start frame) clips where a gripper moves and is seen (module docstring).

    Raises:
        DatasetError: no start frame qualifies.
    """
    out: list[tuple[int, int]] = []
    X = store.X_TG[..., :3, 3].cpu().numpy()  # (E, A, T, 3)
    masks = store.masks[:, list(cams)]  # (E, 2, T, H, W)
    bits = [part_bits(arms=(a,)) for a in store.arms]
    for e in range(store.num_episodes):
        nf = int(store.n_frames[e])
        last_start = nf - 1 - motion_frames
        if last_start < 0:
            continue
        ts = np.arange(last_start + 1)
        move = np.linalg.norm(X[e][:, ts + motion_frames] - X[e][:, ts], axis=-1)  # (A, S)
        px = torch.stack([((masks[e, :, : last_start + 1] & b) != 0).flatten(2).sum(-1).amax(0) for b in bits])
        seen = px.cpu().numpy() >= min_part_pixels  # (A, S)
        ok = ((move >= min_motion_m) & seen).any(axis=0)
        out += [(e, int(t)) for t in ts[ok]]
    if not out:
        raise DatasetError(
            f"no clip of {store.sources} has a gripper that moves >= {min_motion_m * 100:.0f} cm within "
            f"{motion_frames} frames while visible in the evaluation views ({min_part_pixels}+ pixels)")
    rng = np.random.default_rng([seed, 23])
    pick = rng.choice(len(out), size=min(n_clips, len(out)), replace=False)
    return [out[i] for i in sorted(pick)]


# --------------------------------------------------------------------------------------------
# Frames of one clip
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ClipFrames:
    """Ground truth of one clip (view axis first: 0 = n, 1 = m; frame 0 = the current frame)."""

    task: str
    episode_seed: int
    start: int
    rgb: np.ndarray  # (2, F+1, H, W, 3) uint8
    points: np.ndarray  # (2, F+1, H, W, 3) in camera n's frame
    valid: np.ndarray  # (2, F+1, H, W)
    masks: np.ndarray  # (2, F+1, H, W) packed part bits
    own_points_m: np.ndarray  # (H, W, 3) view m's current frame in m's own frame (generator input)
    K: np.ndarray  # (2, 3, 3)
    X_TC: np.ndarray  # (2, 4, 4)
    X_TG: dict[str, np.ndarray]  # arm -> (F+1, 4, 4)
    width: dict[str, np.ndarray]  # arm -> (F+1,)


def clip_frames(store: FrameStore, e: int, t: int, *, n_future: int, cams: tuple[int, int]) -> ClipFrames:
    dev = store.device
    frames = torch.clamp(torch.arange(t, t + n_future + 1, device=dev), max=int(store.n_frames[e]) - 1)
    k = len(frames)
    ee = torch.full((k,), e, device=dev)
    n, m = cams
    pts, valid = [], []
    for src in (n, m):
        p, ok = store.pointmaps(ee, torch.full((k,), src, device=dev), frames, torch.full((k,), n, device=dev))
        pts.append(p.permute(0, 2, 3, 1))
        valid.append(ok)
    own_m, _ = store.pointmaps(ee[:1], torch.full((1,), m, device=dev), frames[:1])
    fr = frames.cpu().numpy()
    task = store.tasks[int(store.task_ids[e])]
    return ClipFrames(
        task=task, episode_seed=int(store.seeds[e]), start=t,
        rgb=torch.stack([store.rgb[e, c, frames] for c in cams]).cpu().numpy(),
        points=torch.stack(pts).cpu().numpy(), valid=torch.stack(valid).cpu().numpy(),
        masks=torch.stack([store.masks[e, c, frames] for c in cams]).cpu().numpy(),
        own_points_m=own_m[0].permute(1, 2, 0).cpu().numpy(),
        K=store.K[e, list(cams)].cpu().numpy().astype(np.float64),
        X_TC=store.X_TC[e, list(cams)].cpu().numpy().astype(np.float64),
        X_TG={a: store.X_TG[e, i, fr].cpu().numpy().astype(np.float64) for i, a in enumerate(store.arms)},
        width={a: store.width[e, i, fr].cpu().numpy().astype(np.float64) for i, a in enumerate(store.arms)},
    )


# --------------------------------------------------------------------------------------------
# Rows: what each source predicts for a clip
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def predict_rows(model: Any, clips: Sequence[ClipFrames], *, rows: Sequence[str], steps: int, seed: int,
                 batch_size: int) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """row -> per clip ``(rgb (2, F, H, W, 3) uint8, points (2, F, H, W, 3) in n's frame)``."""
    out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {r: [] for r in rows}
    n_future = clips[0].rgb.shape[1] - 1
    if "generator" in rows:
        for i in range(0, len(clips), batch_size):
            reqs = [dict(rgb=c.rgb[:, 0], pointmap_n=c.points[0, 0], pointmap_m=c.own_points_m,
                         valid_n=c.valid[0, 0], valid_m=c.valid[1, 0], task=c.task,
                         seed=(seed * 100_003 + c.episode_seed * 1009 + c.start) % (2**31))
                    for c in clips[i : i + batch_size]]
            for r in model.predict_many(reqs, num_steps=steps):
                out["generator"].append((r["rgb"][:, :n_future], r["pointmaps"][:, :n_future]))
    if "autoencoder" in rows:
        dev = model.device
        norm = model.normalization
        amp = dev.type == "cuda"
        for c in clips:
            rgb = torch.from_numpy(c.rgb[:, 1:]).to(dev).permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
            pm = norm.normalize(torch.from_numpy(c.points[:, 1:]).to(dev)).permute(0, 1, 4, 2, 3)
            valid = torch.from_numpy(c.valid[:, 1:]).to(dev)
            pm = torch.where(valid[:, :, None], pm, torch.zeros((), device=dev))
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
                z = model.encode_frames(rgb, pm, valid)
                out_rgb, out_pm = model.decode_latents(z.float())
            rgb_u8 = ((out_rgb.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
            pts = norm.denormalize(out_pm.float()).permute(0, 1, 3, 4, 2)
            out["autoencoder"].append((rgb_u8.permute(0, 1, 3, 4, 2).cpu().numpy(), pts.cpu().numpy()))
    if "repeat_current" in rows:
        for c in clips:
            rgb = np.repeat(c.rgb[:, :1], n_future, axis=1)
            pts = np.repeat(np.where(c.valid[:, :1, ..., None], c.points[:, :1], np.nan), n_future, axis=1)
            out["repeat_current"].append((rgb, pts.astype(np.float32)))
    return out


# --------------------------------------------------------------------------------------------
# Per-frame image metrics
# --------------------------------------------------------------------------------------------


def frame_metrics(clip: ClipFrames, rgb: np.ndarray, points: np.ndarray) -> dict[str, np.ndarray]:
    """(2, F) AbsRel, delta1, gripper-pixel median error (mm) and PSNR of one row's clip."""
    from geo4d_policy.data.geometry import transform_points
    from geo4d_policy.eval.video_metrics import depth_metrics, psnr

    n_future = rgb.shape[1]
    out = {k: np.full((2, n_future), np.nan) for k in ("abs_rel", "delta1", "gripper_px_mm", "psnr")}
    X_CmCn = np.linalg.inv(clip.X_TC[1]) @ clip.X_TC[0]
    for v in range(2):
        for k in range(n_future):
            gt, pr, ok = clip.points[v, k + 1], points[v, k], clip.valid[v, k + 1]
            grip = ok & ((clip.masks[v, k + 1] & part_bits()) != 0) & np.isfinite(pr).all(-1)
            if grip.any():
                out["gripper_px_mm"][v, k] = float(np.median(np.linalg.norm(pr[grip] - gt[grip], axis=-1)) * 1e3)
            if v == 1:
                gt, pr = transform_points(X_CmCn, gt), transform_points(X_CmCn, pr)
            d = depth_metrics(np.nan_to_num(pr[..., 2], nan=0.0), gt[..., 2], ok)
            out["abs_rel"][v, k], out["delta1"][v, k] = d["abs_rel"], d["delta1"]
            out["psnr"][v, k] = psnr(rgb[v, k : k + 1], clip.rgb[v, k + 1 : k + 2])
    return out


# --------------------------------------------------------------------------------------------
# Tracking (worker processes)
# --------------------------------------------------------------------------------------------

_MODEL = None
MIN_SHARE_PIXELS = 20  # gripper pixels a frame needs for its centroid to count in motion_share


def motion_share(clip: ClipFrames, points: np.ndarray, labels: np.ndarray | None, arm: str) -> np.ndarray:
    """(F,) share of one arm's true displacement that its predicted gripper covers, per future frame.

    In view n: the centroid of the gripper's points now (recorded masks), in the prediction
    (``labels``: the row's part codes of view n, (F, H, W)) and in the recorded future;
    ``(pred - now) . (true - now) / |true - now|^2``: 1 where the prediction moves the gripper as
    recorded, 0 where it keeps it still (repeating the current frame scores 0), NaN where the gripper
    shows fewer than :data:`MIN_SHARE_PIXELS` pixels in either, or has not moved.
    """
    bits = part_bits(arms=(arm,))
    n_future = points.shape[1]
    out = np.full(n_future, np.nan)
    now = ((clip.masks[0, 0] & bits) != 0) & clip.valid[0, 0]
    if labels is None or now.sum() < MIN_SHARE_PIXELS:
        return out
    c_now = clip.points[0, 0][now].mean(0)
    for k in range(n_future):
        true = ((clip.masks[0, k + 1] & bits) != 0) & clip.valid[0, k + 1]
        pred = (labels[k] >= 0) & np.isfinite(points[0, k]).all(-1)
        if true.sum() < MIN_SHARE_PIXELS or pred.sum() < MIN_SHARE_PIXELS:
            continue
        d = clip.points[0, k + 1][true].mean(0) - c_now
        if float(d @ d) < 1e-6:  # under 1 mm: nothing to cover
            continue
        out[k] = float((points[0, k][pred].mean(0) - c_now) @ d / (d @ d))
    return out


def _track_job(job: dict[str, Any]) -> dict[str, Any]:
    """The policy's tracking of every visible arm through one row of one clip (see module docstring)."""
    global _MODEL
    from geo4d_policy.data.geometry import relative_camera_transform
    from geo4d_policy.eval.tracking_eval import decision_width
    from geo4d_policy.perception.gripper_model import GripperModel
    from geo4d_policy.perception.gripper_state import GripperStateEstimator
    from geo4d_policy.perception.metrics import pose_errors
    from geo4d_policy.perception.pose_tracker import part_label_image
    from geo4d_policy.perception.video_tracking import CurrentView, PredictedVideo, track_video
    from geo4d_policy.task_settings import task_settings

    if _MODEL is None:
        _MODEL = GripperModel.load()
    model = _MODEL
    clip: ClipFrames = job["clip"]
    points = job["points"]
    valid = np.isfinite(points).all(-1) & (np.nan_to_num(points[..., 2], nan=0.0) > MIN_DEPTH)
    video = PredictedVideo(pointmaps=np.nan_to_num(points).astype(np.float32), valid=valid, rgb=job["rgb"],
                           part_labels=job["labels"])
    arms = job["arms"]
    current = CurrentView(clip.points[0, 0], clip.valid[0, 0],
                          {a: part_label_image(clip.masks[0, 0], a) for a in arms})
    held = task_settings(clip.task).held_object_width
    X_CnCm = relative_camera_transform(clip.X_TC[0], clip.X_TC[1])
    tracks = track_video(video, current, X_TCn=clip.X_TC[0], X_TG_now={a: clip.X_TG[a][0] for a in arms},
                         width_now={a: float(clip.width[a][0]) for a in arms}, model=model,
                         candidate_widths=(held, model.stroke) if held is not None else None,
                         view_cameras=[(clip.K[0], None), (clip.K[1], X_CnCm)],
                         single_view=bool(job.get("single_view", False)))
    res = {}
    for a in arms:
        tr = tracks[a]
        trans, rot = pose_errors(tr.X_TG, clip.X_TG[a][1:])
        est = (GripperStateEstimator.for_object_width(held, model=model) if held is not None
               else GripperStateEstimator(model))
        cut = decision_width(est)
        est.reset(initial_state="closed" if clip.width[a][0] < cut else "open")
        states = [est.update(d if np.isfinite(d) else None).closed for d in tr.finger_distance]
        gt_closed = np.asarray(clip.width[a][1:]) < cut
        res[a] = {"trans_mm": trans, "rot_deg": rot, "state_correct": np.array(states) == gt_closed,
                  "lost": np.array([f.status == "lost" for f in tr.fused]),
                  "moved_m": np.linalg.norm(clip.X_TG[a][1:, :3, 3] - clip.X_TG[a][0, :3, 3], axis=-1),
                  "motion_share": motion_share(clip, points, None if job["labels"] is None else job["labels"][a][0],
                                               a)}
    return {"key": job["key"], "arms": res}


def _arms_visible(clip: ClipFrames, arms: Sequence[str], min_pixels: int) -> list[str]:
    return [a for a in arms
            if max(int((((clip.masks[v, 0] & part_bits(arms=(a,))) != 0) & clip.valid[v, 0]).sum())
                   for v in range(2)) >= min_pixels]


# --------------------------------------------------------------------------------------------
# The evaluation
# --------------------------------------------------------------------------------------------


def _summaries(per_task: dict[str, Any], rows: Sequence[str]) -> dict[str, Any]:
    out = {}
    for row in rows:
        tasks = [per_task[t][row]["summary"] for t in per_task]
        out[row] = {k: float(np.nanmean([s[k] for s in tasks])) for k in SUMMARY_KEYS}
        for k in MOVING_KEYS:  # a task without a moving arm has none of these
            vals = [s[k] for s in tasks if np.isfinite(s.get(k, np.nan))]
            out[row][k] = float(np.mean(vals)) if vals else float("nan")
        out[row]["per_task"] = {t: per_task[t][row] for t in per_task}
    return out


def _summarize_row(frame_vals: dict[str, list[np.ndarray]], tracks: list[dict[str, Any]],
                   window: tuple[int, int], min_motion_m: float = 0.02) -> dict[str, Any]:
    """One task's row: per-view and per-frame tables and the summary over ``window`` (1-based frames),
    with the tracking figures of the moving arms alone (:data:`MOVING_KEYS`)."""
    lo, hi = window[0] - 1, window[1]
    arr = {k: np.stack(v) for k, v in frame_vals.items()}  # (clips, 2, F)
    n_future = arr["abs_rel"].shape[2]
    arm_clips = [a for t in tracks for a in t.values()]

    def per_arm_clip(key: str) -> np.ndarray:  # (arm-clips, F)
        return np.stack([a[key] for a in arm_clips]) if arm_clips else np.zeros((0, n_future))

    trans, rot, state, lost = (per_arm_clip(k) for k in ("trans_mm", "rot_deg", "state_correct", "lost"))

    def stats(sl: slice, views: Sequence[int] = (0, 1)) -> dict[str, float]:
        v = list(views)
        d = {
            "abs_rel": float(np.nanmean(arr["abs_rel"][:, v, sl])),
            "delta1": float(np.nanmean(arr["delta1"][:, v, sl])),
            "gripper_px_mm_median": float(np.nanmedian(arr["gripper_px_mm"][:, v, sl])),
            "psnr": float(np.nanmean(arr["psnr"][:, v, sl])),
        }
        if trans.size:
            d.update(gripper_track_mm_median=float(np.median(trans[:, sl])),
                     gripper_track_mm_p90=float(np.percentile(trans[:, sl], 90)),
                     gripper_track_deg_median=float(np.median(rot[:, sl])),
                     open_close_acc=float(state[:, sl].mean()), lost_rate=float(lost[:, sl].mean()))
        else:
            d.update({k: float("nan") for k in ("gripper_track_mm_median", "gripper_track_mm_p90",
                                                 "gripper_track_deg_median", "open_close_acc", "lost_rate")})
        return d

    window_sl = slice(lo, hi)
    moving = (per_arm_clip("moved_m")[:, window_sl] >= min_motion_m).any(axis=1)
    summary = stats(window_sl)
    if moving.any():
        summary.update(moving_arm_track_mm_median=float(np.median(trans[moving, window_sl])),
                       moving_arm_track_mm_p90=float(np.percentile(trans[moving, window_sl], 90)),
                       moving_arm_lost_rate=float(lost[moving, window_sl].mean()))
        shares = per_arm_clip("motion_share")[moving, window_sl]
        shares = shares[np.isfinite(shares)]
        summary["moving_arm_motion_share_median"] = float(np.median(shares)) if shares.size else float("nan")
    else:
        summary.update({k: float("nan") for k in MOVING_KEYS})
    per_frame = [{"frame": k + 1, **stats(slice(k, k + 1))} for k in range(n_future)]
    per_view = {name: stats(window_sl, (v,)) for v, name in ((0, "n"), (1, "m"))}
    per_view_frame = {name: [{"frame": k + 1, **{kk: vv for kk, vv in stats(slice(k, k + 1), (v,)).items()
                                                 if not kk.startswith(("gripper_track", "open_close", "lost"))}}
                             for k in range(n_future)] for v, name in ((0, "n"), (1, "m"))}
    return {"summary": summary, "per_view": per_view, "per_frame": per_frame,
            "per_view_frame": per_view_frame, "n_clips": int(arr["abs_rel"].shape[0]),
            "n_arm_clips": int(trans.shape[0]), "n_moving_arm_clips": int(moving.sum())}


def evaluate_generator(
    checkpoint: str,
    data_dirs: Sequence[str],
    config: GeneratorEvalConfig,
    *,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The three-row evaluation of a generator checkpoint on validation datasets (module docstring).

    Returns:
        ``{"rows": {row: {summary keys..., "per_task": {...}}}, "config": ..., "clips": [...]}``.

    Raises:
        DatasetError: a dataset holds training episodes of the checkpoint, lacks the policy's
            cameras, or has no clip where a gripper moves.
        CheckpointError: the checkpoint cannot be loaded (e.g. autoencoders that do not match).
    """
    from geo4d_policy.data.format import load_meta
    from geo4d_policy.models.checkpoint import read_config_json
    from geo4d_policy.models.pipeline import Generator4D
    from geo4d_policy.policies.video_policy import load_segmenter

    model = Generator4D.from_pretrained(checkpoint, device=device)
    train_seeds = training_seeds_of(read_config_json(checkpoint))
    recorded_labels = config.segmenter == RECORDED_LABELS
    segmenter = None if recorded_labels else load_segmenter(config.segmenter, device=device)
    n_future = model.config.num_frames
    per_task: dict[str, Any] = {}
    clip_records: list[dict[str, Any]] = []
    for d in data_dirs:
        meta = load_meta(d)
        if not config.training_episodes:
            check_not_training_data(train_seeds, meta.task, [e.seed for e in meta.episodes], str(d))
        if meta.task not in model.trained_tasks:
            raise DatasetError(f"{d}: task {meta.task} is not one the checkpoint was trained on "
                               f"({list(model.trained_tasks)})")
        if len(meta.heldout_indices) < 2:
            raise DatasetError(f"{d}: fewer than two held-out cameras (the policy's views)")
        store = FrameStore.load([d], device=device, cameras="all")
        cams = tuple(store.heldout_cameras[:2])
        picks = select_clips(store, n_clips=config.clips, n_future=n_future, cams=cams, seed=config.seed,
                             min_motion_m=config.min_motion_m, min_part_pixels=config.min_part_pixels,
                             motion_frames=config.summary_frames[1])
        clips = [clip_frames(store, e, t, n_future=n_future, cams=cams) for e, t in picks]
        del store
        preds = predict_rows(model, clips, rows=config.rows, steps=config.steps, seed=config.seed,
                             batch_size=config.batch_size)
        jobs = []
        frame_vals: dict[str, dict[str, list[np.ndarray]]] = {r: {} for r in config.rows}
        for row in config.rows:
            for ci, (c, (rgb, pts)) in enumerate(zip(clips, preds[row])):
                for k, v in frame_metrics(c, rgb, pts).items():
                    frame_vals[row].setdefault(k, []).append(v)
                arms = _arms_visible(c, list(c.X_TG), config.min_part_pixels)
                if not arms:
                    continue
                labels = None
                if recorded_labels:
                    from geo4d_policy.perception.pose_tracker import part_label_image

                    labels = {a: part_label_image(c.masks[:, 1:], a) for a in arms}
                elif segmenter is not None:
                    from geo4d_policy.perception.segmenter import part_labels_for_arm

                    classes = segmenter.predict(rgb.reshape(-1, *rgb.shape[2:])).reshape(rgb.shape[:4])
                    labels = {a: part_labels_for_arm(classes, a) for a in arms}
                jobs.append({"key": (row, ci), "clip": c, "points": pts, "rgb": rgb, "labels": labels,
                             "arms": arms, "single_view": config.single_view})
        tracks: dict[tuple[str, int], dict[str, Any]] = {}
        workers = config.workers or min(16, len(os.sched_getaffinity(0)))
        if workers > 1 and len(jobs) > 1:
            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
                for r in pool.map(_track_job, jobs, chunksize=1):
                    tracks[r["key"]] = r["arms"]
        else:
            for j in jobs:
                r = _track_job(j)
                tracks[r["key"]] = r["arms"]
        per_task[meta.task] = {}
        for row in config.rows:
            row_tracks = [tracks[(row, ci)] for ci in range(len(clips)) if (row, ci) in tracks]
            per_task[meta.task][row] = _summarize_row(frame_vals[row], row_tracks, config.summary_frames,
                                                      config.min_motion_m)
        for ci, c in enumerate(clips):
            clip_records.append({"task": c.task, "episode_seed": c.episode_seed, "start": c.start,
                                 "arms": sorted(tracks.get((config.rows[0], ci), {}))})
        if progress is not None:
            progress(f"{meta.task}: {len(clips)} clips, {len(jobs)} tracked row-clips")
    return {"checkpoint": str(checkpoint), "config": dataclasses.asdict(config), "device": device,
            "training_episodes_allowed": config.training_episodes,
            "training_seeds_recorded": train_seeds is not None,
            "rows": _summaries(per_task, config.rows), "clips": clip_records}


def plot_error_by_frame(results: Mapping[str, Any], path: str) -> None:
    """PNG of tracked-gripper error, gripper-pixel error and AbsRel against the future frame, per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (("gripper_track_mm_median", "tracked gripper error (mm, median)"),
            ("gripper_px_mm_median", "gripper-pixel 3D error (mm, median)"), ("abs_rel", "depth AbsRel"))
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6))
    for ax, (key, title) in zip(axes, keys):
        for row, r in results["rows"].items():
            frames = None
            vals = []
            for t, tr in r["per_task"].items():
                frames = [f["frame"] for f in tr["per_frame"]]
                vals.append([f[key] for f in tr["per_frame"]])
            if frames:
                ax.plot(frames, np.nanmean(np.array(vals, dtype=float), axis=0), marker="o", label=row)
        ax.set_title(title)
        ax.set_xlabel("future frame (2 Hz)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""Analytic synthetic episodes (no simulator) for tests, benchmarks and smoke runs.

The scene is exactly ray-cast, so its geometry is known in closed form: a finite table plane at
z = 0 (|x| <= 0.6, |y| <= 0.8; rays that miss it see nothing, which exercises invalid depth),
one static box, and per arm a gripper made of three axis-aligned boxes (hand and two fingers)
that moves and opens/closes along a smooth path. Cameras are sampled like the simulator's
(paper A.2: half-sphere shell, looking at the origin). The robot trajectory at 10 Hz follows
the grippers; the 2 Hz video frames are every fifth robot step.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from geo4d_policy.data.format import (
    DEFAULT_N_TRAIN,
    CameraRecording,
    DatasetMeta,
    EpisodeData,
    RobotTrajectory,
    append_episode,
    create_dataset,
    episode_filename,
    write_episode,
)
from geo4d_policy.data.masks import MASK_BITS
from geo4d_policy.interface import ARM_NAMES, CameraIntrinsics, CameraSpec, look_at

TABLE_HALF_EXTENT = (0.6, 0.8)


@dataclasses.dataclass(frozen=True)
class Box:
    """Axis-aligned box in the task frame; ``part`` is a ``MASK_BITS`` key or None."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]
    color: tuple[int, int, int]
    part: str | None = None


def sample_cameras(
    rng: np.random.Generator, *, n: int = 16, resolution: tuple[int, int] = (32, 40)
) -> list[CameraSpec]:
    """``n`` cameras on the paper's half-sphere shell (A.2), named ``cam00``..."""
    h, w = resolution
    f = 381.0 * w / 640.0
    intr = CameraIntrinsics(w, h, f, f, 0.5 * (w - 1), 0.5 * (h - 1))
    specs: list[CameraSpec] = []
    while len(specs) < n:
        p = rng.uniform([0.2, -0.5, 0.7], [0.6, 0.5, 1.2])
        if 0.7 <= np.linalg.norm(p) <= 1.2:
            specs.append(CameraSpec(f"cam{len(specs):02d}", intr, look_at(p, np.zeros(3))))
    return specs


def render(spec: CameraSpec, boxes: list[Box]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray-cast the table and ``boxes`` from camera ``spec``.

    Returns:
        rgb (H, W, 3) uint8, depth (H, W) float32 metres (0 where nothing is hit), packed part
        masks (H, W) uint8.
    """
    intr = spec.intrinsics
    h, w = intr.height, intr.width
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    # Ray directions with unit camera-z component: the ray parameter equals the depth.
    d_C = np.stack([(u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy, np.ones_like(u)], axis=-1)
    R, o = spec.X_TC[:3, :3], spec.X_TC[:3, 3]
    d = d_C @ R.T
    depth = np.full((h, w), np.inf)
    rgb = np.zeros((h, w, 3), np.uint8)
    masks = np.zeros((h, w), np.uint8)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = -o[2] / d[..., 2]
        hit = d[..., 2] < 0
        px, py = o[0] + s * d[..., 0], o[1] + s * d[..., 1]
        hit &= (np.abs(px) <= TABLE_HALF_EXTENT[0]) & (np.abs(py) <= TABLE_HALF_EXTENT[1])
        depth = np.where(hit, s, depth)
        checker = ((np.floor(px / 0.1) + np.floor(py / 0.1)) % 2 == 0)[..., None]
        table = np.where(checker, [200, 180, 150], [150, 130, 100])
        rgb = np.where(hit[..., None], table, rgb).astype(np.uint8)
        for box in boxes:
            lo, hi = np.asarray(box.lo), np.asarray(box.hi)
            t1 = (lo - o) / d
            t2 = (hi - o) / d
            t_near = np.nanmax(np.minimum(t1, t2), axis=-1)
            t_far = np.nanmin(np.maximum(t1, t2), axis=-1)
            hit = (t_near <= t_far) & (t_near > 0) & (t_near < depth)
            depth = np.where(hit, t_near, depth)
            shade = 0.6 + 0.4 * np.clip(1.5 - t_near, 0, 1)
            col = np.clip(np.asarray(box.color)[None, None] * shade[..., None], 0, 255)
            rgb = np.where(hit[..., None], col, rgb).astype(np.uint8)
            bit = 0 if box.part is None else 1 << MASK_BITS[box.part]
            masks = np.where(hit, bit, masks).astype(np.uint8)
    depth = np.where(np.isfinite(depth), depth, 0.0).astype(np.float32)
    return rgb, depth, masks


def gripper_boxes(arm: str, p: np.ndarray, width: float) -> list[Box]:
    """Hand and finger boxes of a downward-pointing gripper whose flange is at ``p``."""
    boxes = [Box(tuple(p + [-0.02, -0.08, -0.02]), tuple(p + [0.02, 0.08, 0.02]), (60, 60, 70),
                 f"{arm}_hand")]
    for sign, part in ((1.0, "left_finger"), (-1.0, "right_finger")):
        c = p + [0.0, sign * (0.5 * width + 0.01), -0.06]
        boxes.append(Box(tuple(c - [0.01, 0.01, 0.04]), tuple(c + [0.01, 0.01, 0.04]), (230, 230, 240),
                         f"{arm}_{part}"))
    return boxes


def make_episode(
    *,
    seed: int,
    task: str = "PlaceAppleFromBowlIntoBin",
    n_frames: int = 6,
    resolution: tuple[int, int] = (32, 40),
    n_cameras: int = 16,
    success: bool | None = None,
    idle_arms: tuple[str, ...] = (),
) -> EpisodeData:
    """A synthetic episode of ``n_frames`` 2 Hz frames (``5 * (n_frames - 1) + 1`` robot steps).

    Arms in ``idle_arms`` stay at one fixed pose and width in every episode (the idle arm of
    the spatula and cereal tasks), so their action and state dimensions have zero range.
    """
    rng = np.random.default_rng([seed, 7])
    specs = sample_cameras(rng, n=n_cameras, resolution=resolution)
    n_steps = 5 * (n_frames - 1) + 1
    time = np.arange(n_steps) * 0.1
    X_down = np.diag([1.0, -1.0, -1.0])  # gripper z axis points down
    phase = rng.uniform(0, 2 * np.pi, size=2)
    X_TG, width, q = {}, {}, {}
    for a, arm in enumerate(ARM_NAMES):
        sign = 1.0 if arm == "left" else -1.0
        p = np.stack([
            -0.15 + 0.1 * np.sin(0.5 * time + phase[a]),
            sign * (0.25 - 0.05 * np.cos(0.7 * time + phase[a])),
            0.2 + 0.05 * np.sin(0.9 * time),
        ], axis=-1)
        X = np.tile(np.eye(4), (n_steps, 1, 1))
        X[:, :3, :3] = X_down
        X[:, :3, 3] = p
        width[arm] = 0.05 + 0.03 * np.sin(1.3 * time + phase[a])
        if arm in idle_arms:
            X[:, :3, 3] = [-0.15, sign * 0.25, 0.2]
            width[arm] = np.full(n_steps, 0.08)
        X_TG[arm] = X
        q[arm] = 0.3 * np.sin(time[:, None] * (0.2 + 0.1 * np.arange(7)) + phase[a])
    # Commands lead the measured state by one step (the last command repeats).
    nxt = np.minimum(np.arange(n_steps) + 1, n_steps - 1)
    robot = RobotTrajectory(
        time=time,
        action_X_TG={a: X_TG[a][nxt] for a in ARM_NAMES},
        action_width={a: width[a][nxt] for a in ARM_NAMES},
        X_TG=X_TG, width=width, q=q,
    )
    box_xy = rng.uniform([0.0, -0.2], [0.2, 0.2])
    recordings = []
    video_steps = np.arange(0, n_steps, 5)
    frames = {s.name: ([], [], []) for s in specs}
    for k in video_steps:
        boxes = [Box((box_xy[0] - 0.05, box_xy[1] - 0.05, 0.0), (box_xy[0] + 0.05, box_xy[1] + 0.05, 0.1),
                     (200, 40, 40))]
        for arm in ARM_NAMES:
            boxes += gripper_boxes(arm, X_TG[arm][k, :3, 3], float(width[arm][k]))
        for s in specs:
            for lst, img in zip(frames[s.name], render(s, boxes)):
                lst.append(img)
    for s in specs:
        rgb, depth, masks = (np.stack(x) for x in frames[s.name])
        recordings.append(CameraRecording(s, rgb, depth, masks))
    return EpisodeData(
        task=task,
        seed=seed,
        success=bool(seed % 3 != 2) if success is None else success,
        video_time=time[video_steps],
        cameras=tuple(recordings),
        robot=robot,
        info={"synthetic": True},
    )


def make_dataset(
    root: str | os.PathLike[str],
    *,
    seeds: list[int] | range = range(3),
    task: str = "PlaceAppleFromBowlIntoBin",
    n_frames: int = 6,
    resolution: tuple[int, int] = (32, 40),
    idle_arms: tuple[str, ...] = (),
) -> DatasetMeta:
    """Create (or extend) a synthetic dataset at ``root`` with one episode per seed (``idle_arms``:
    see :func:`make_episode`)."""
    root = Path(root)
    meta = create_dataset(root, task=task, resolution=resolution, n_train=DEFAULT_N_TRAIN,
                          command=f"geo4d_policy.data.synthetic.make_dataset(seeds={list(seeds)})")
    for seed in seeds:
        ep = make_episode(seed=seed, task=task, n_frames=n_frames, resolution=resolution, idle_arms=tuple(idle_arms))
        write_episode(root / episode_filename(seed), ep)
        meta = append_episode(root, seed)
    return meta

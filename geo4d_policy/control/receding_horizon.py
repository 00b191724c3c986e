"""Receding-horizon execution: 2 Hz gripper keyframes from a predicted video -> a 10 Hz action chunk.

This module owns the last step of every video policy (geo4d, oracle, dreamitate): the tracked
gripper poses of the first few predicted frames become waypoints at the control rate that
respect the controller's speed limits, with a gripper-width schedule, and the chunk is
executed open loop before the next prediction (the receding horizon).

Timing: keyframe ``k`` is predicted ``k * frame_dt`` seconds ahead (keyframe 0 is where the
arm is commanded now). Each segment takes at least ``frame_dt`` (the video's own pace) and
longer when the video asks for more than the speed limits allow, so a fast (or wrong)
prediction is slowed down rather than clipped by the controller.

Paths between keyframes keep the shape of pick-and-place motions sampled at 2 Hz. A segment
that both moves horizontally and descends, entered while moving horizontally (a slide or carry,
then a set-down), moves horizontally first and then descends; one that rises and moves, entered
while rising (a lift, then a carry), rises first. A straight line would cut those corners: the
2 Hz frames rarely sample the instant the motion turns, and the cut corner lowers an object
before it arrives (or drags a lifted one). Other segments are straight.

Gripper changes follow pick-and-place practice rather than the frames' nominal times, because
the executed arm lags the video (speed limits, the controller's tracking) and a gripper that
changes state early misses its object:
- closing (open in frame k, closed in k+1): the arm reaches frame k+1's pose open, closes
  there and waits ``grasp_settle_steps`` before moving on (grasp on arrival);
- opening after a descent of more than ``release_descent``: the arm lowers the object to frame
  k+1's pose, then opens there and waits (place, then release);
- any other opening: the arm opens where it is, waits ``release_wait_steps`` for the fingers to
  leave the object, then moves on. The hand never moves while its fingers open: fingers still
  closing on an object drag it along (a hand that opened while lifting carried a loosely held
  apple back up; one that opened while shifting sideways dragged a placed box).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from geo4d_policy.control.trajectory import (
    DEFAULT_ANGULAR_SPEED,
    DEFAULT_LINEAR_SPEED,
    interpolate_poses,
    resample_poses,
    segment_steps,
)
from geo4d_policy.interface import CONTROL_HZ, GRIPPER_OPEN_WIDTH, ActionChunk


@dataclasses.dataclass(frozen=True)
class RecedingHorizonConfig:
    """How predicted frames become executed actions.

    Attributes:
        frame_dt: seconds between predicted frames (the generator's 2 Hz).
        execute_frames: predicted frames executed before replanning (the paper's open-loop
            horizon); ``execute_frames * frame_dt * 10`` is the chunk's nominal length.
        linear_speed: peak commanded speed (m/s), below the controller's 0.4 m/s.
        angular_speed: peak commanded angular speed (rad/s), below its 90 deg/s.
        open_width: commanded width of an open gripper (m).
        closed_width: commanded width of a closed gripper (m); the fingers are force-limited,
            so 0 squeezes a held object with the hand's maximum force.
        min_confidence: tracked frames below this confidence are not trusted: a run of at most
            ``max_gap_frames`` of them between trusted frames is bridged by interpolation, a
            longer one (or one at the end) ends the arm's keyframes at its last trusted pose.
        max_gap_frames: see ``min_confidence``. Off (0) by default (docs/decisions.md).
        hold_steps: length (10 Hz steps) of the hold chunk returned when nothing can be
            executed (e.g. the track is lost in the first predicted frame).
        idle_translation: an arm whose keyframes all stay within this distance (m) ...
        idle_rotation: ... and this angle (rad) of its start, with an unchanged gripper state,
            holds its last command instead of chasing tracking noise.
        grasp_settle_steps: 10 Hz steps the arm waits at a pose where its gripper closes (or
            opens after lowering) before the next segment.
        release_descent: an opening whose segment lowers the gripper by more than this (m)
            happens on arrival; any other opening happens before leaving.
        release_wait_steps: 10 Hz steps an arm waits after opening before it moves on.
        keep_corners: keep pick-and-place corners between keyframes (module docstring);
            False: straight segments (the ablation).
        corner_leg: a segment keeps a corner only when both its
            horizontal and its vertical part are longer than this (m) ...
        corner_dominance: ... and the motion entering it is at least this many times more
            horizontal than vertical (descending segments) or more vertical than horizontal
            (rising ones).
    """

    frame_dt: float = 0.5
    execute_frames: int = 4
    linear_speed: float = DEFAULT_LINEAR_SPEED
    angular_speed: float = DEFAULT_ANGULAR_SPEED
    open_width: float = GRIPPER_OPEN_WIDTH
    closed_width: float = 0.0
    min_confidence: float = 0.5
    hold_steps: int = 5
    idle_translation: float = 0.012
    idle_rotation: float = float(np.deg2rad(4.0))
    max_gap_frames: int = 0
    grasp_settle_steps: int = 0
    release_descent: float = 0.01
    release_wait_steps: int = 3
    keep_corners: bool = True
    corner_leg: float = 0.005
    corner_dominance: float = 2.0

    def __post_init__(self) -> None:
        if self.frame_dt <= 0 or self.execute_frames < 1 or self.hold_steps < 1:
            raise ValueError("frame_dt must be > 0, execute_frames and hold_steps >= 1")
        if min(self.grasp_settle_steps, self.release_wait_steps, self.max_gap_frames) < 0 or self.release_descent < 0:
            raise ValueError("grasp_settle_steps, release_wait_steps, release_descent and max_gap_frames must be >= 0")
        if self.corner_leg <= 0 or self.corner_dominance < 1:
            raise ValueError(f"need corner_leg > 0 and corner_dominance >= 1, got {self.corner_leg}, "
                             f"{self.corner_dominance}")
        if self.linear_speed <= 0 or self.angular_speed <= 0:
            raise ValueError("speed limits must be positive")
        if not 0.0 <= self.closed_width <= self.open_width:
            raise ValueError(f"need 0 <= closed_width <= open_width, got {self.closed_width}, {self.open_width}")

    @property
    def steps_per_frame(self) -> int:
        return max(1, int(round(self.frame_dt * CONTROL_HZ)))

    def command_width(self, closed: bool) -> float:
        """The width commanded for a gripper in this state."""
        return self.closed_width if closed else self.open_width


@dataclasses.dataclass(frozen=True)
class ArmKeyframes:
    """One arm's plan for the executed part of a prediction.

    Attributes:
        X_TG: (K, 4, 4) gripper poses in T of predicted frames 1..K (K may be 0: hold).
        closed: (K,) gripper state of those frames (True = closed).
    """

    X_TG: np.ndarray
    closed: np.ndarray

    def __post_init__(self) -> None:
        X = np.asarray(self.X_TG, dtype=np.float64).reshape(-1, 4, 4)
        closed = np.asarray(self.closed, dtype=bool).reshape(-1)
        if len(X) != len(closed):
            raise ValueError(f"{len(X)} keyframe poses but {len(closed)} gripper states")
        if not np.isfinite(X).all():
            raise ValueError("keyframe poses must be finite")
        object.__setattr__(self, "X_TG", X)
        object.__setattr__(self, "closed", closed)


def is_idle(X_start: np.ndarray, keyframes: ArmKeyframes, *, start_closed: bool,
            config: RecedingHorizonConfig) -> bool:
    """Whether an arm's keyframes stay within the idle tolerances of ``X_start`` (state unchanged)."""
    if len(keyframes.X_TG) == 0:
        return True
    if np.any(keyframes.closed != start_closed):
        return False
    dp = np.linalg.norm(keyframes.X_TG[:, :3, 3] - X_start[:3, 3], axis=1)
    R_rel = np.einsum("ij,kjl->kil", X_start[:3, :3].T, keyframes.X_TG[:, :3, :3])
    cos = np.clip((np.trace(R_rel, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
    return bool(dp.max() <= config.idle_translation and np.arccos(cos).max() <= config.idle_rotation)


def keyframes_to_chunk(
    start: Mapping[str, tuple[np.ndarray, bool]],
    keyframes: Mapping[str, ArmKeyframes],
    *,
    config: RecedingHorizonConfig,
    incoming: Mapping[str, np.ndarray] | None = None,
) -> ActionChunk:
    """Interpolate every arm's keyframes to 10 Hz within the speed limits; one chunk for all arms.

    Args:
        start: arm -> (4x4 pose commanded now, gripper closed now); every arm of the chunk.
        keyframes: arm -> its keyframes (missing arms and arms with no keyframes hold).
        config: timing, limits and widths.
        incoming: arm -> (3,) the last displacement commanded before ``start`` (the direction
            the arm enters the first segment with; see :func:`corner_path`); none: unknown.

    Returns:
        An :class:`ActionChunk` whose arms all have the same length (arms that finish early
        hold their last pose); at least ``config.hold_steps`` long.

    Raises:
        ValueError: a keyframe arm has no start, or a start pose is not a finite 4x4.
    """
    unknown = set(keyframes) - set(start)
    if unknown:
        raise ValueError(f"keyframes for arm(s) {sorted(unknown)} without a start pose")
    per_frame = config.steps_per_frame

    plans: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for arm, (X0, closed0) in start.items():
        X0 = np.asarray(X0, dtype=np.float64)
        if X0.shape != (4, 4) or not np.isfinite(X0).all():
            raise ValueError(f"start pose of arm {arm!r} must be a finite 4x4")
        kf = keyframes.get(arm)
        poses, widths = [], []
        X_prev, closed_prev = X0, bool(closed0)
        entering = None if incoming is None or arm not in incoming else np.asarray(incoming[arm], dtype=np.float64)
        if kf is not None:
            for X_next, closed_next in zip(kf.X_TG, kf.closed):
                corner = corner_path(X_prev, X_next, entering, config=config)
                length = sum(float(np.linalg.norm(b[:3, 3] - a[:3, 3])) for a, b in zip(corner[:-1], corner[1:]))
                n = max(per_frame, segment_steps(X_prev, X_next, linear_speed=config.linear_speed,
                                                 angular_speed=config.angular_speed),
                        int(np.ceil(length / config.linear_speed * CONTROL_HZ - 1e-9)))
                seg_poses, seg_widths = _segment(corner, n, closed_prev, bool(closed_next), config)
                poses.append(seg_poses)
                widths.append(seg_widths)
                if np.linalg.norm(X_next[:3, 3] - X_prev[:3, 3]) > 1e-9:
                    entering = corner[-1][:3, 3] - corner[-2][:3, 3]
                X_prev, closed_prev = X_next, bool(closed_next)
        if poses:
            plans[arm] = (np.concatenate(poses), np.concatenate(widths))
        else:
            plans[arm] = (X0[None].copy(), np.array([config.command_width(bool(closed0))]))
    n = max(config.hold_steps, max(len(p) for p, _ in plans.values()))
    X_TG, widths = {}, {}
    for arm, (poses, w) in plans.items():
        pad = n - len(poses)
        X_TG[arm] = np.concatenate([poses, np.repeat(poses[-1:], pad, axis=0)])
        widths[arm] = np.concatenate([w, np.repeat(w[-1:], pad)])
    return ActionChunk(X_TG, widths)


def corner_path(X_a: np.ndarray, X_b: np.ndarray, entering: np.ndarray | None, *,
                config: RecedingHorizonConfig) -> list[np.ndarray]:
    """The waypoints of one segment: ``[X_a, X_b]``, or ``[X_a, X_corner, X_b]`` when the segment
    keeps a pick-and-place corner (module docstring): horizontal first for a descent entered
    horizontally, vertical first for a rise entered vertically. The corner pose takes the
    rotation at its share of the path length.

    Args:
        X_a, X_b: the segment's end poses.
        entering: (3,) displacement of the motion before ``X_a`` (None: unknown, straight).
        config: ``corner_leg`` and ``corner_dominance``.
    """
    d = X_b[:3, 3] - X_a[:3, 3]
    h, v = float(np.linalg.norm(d[:2])), float(d[2])
    if not config.keep_corners or entering is None or h <= config.corner_leg or abs(v) <= config.corner_leg:
        return [X_a, X_b]
    e = np.asarray(entering, dtype=np.float64)
    e_h, e_v = float(np.linalg.norm(e[:2])), float(e[2])
    if v < 0 and e_h >= config.corner_dominance * abs(e_v) and e_h > 0:
        p = X_a[:3, 3] + [d[0], d[1], 0.0]  # arrive, then descend
        share = h / (h - v)
    elif v > 0 and e_v >= config.corner_dominance * e_h and e_v > 0:
        p = X_a[:3, 3] + [0.0, 0.0, d[2]]  # rise, then move
        share = v / (h + v)
    else:
        return [X_a, X_b]
    X_c = resample_poses(np.array([0.0, 1.0]), np.stack([X_a, X_b]), np.array([share]))[0]
    X_c[:3, 3] = p
    return [X_a, X_c, X_b]


def _along(path: Sequence[np.ndarray], n: int) -> np.ndarray:
    """``n`` poses at constant speed along a polyline of poses, from just after its start to its end."""
    if len(path) == 2:
        return interpolate_poses(path[0], path[1], n, smooth=False)
    p = np.stack([X[:3, 3] for X in path])
    cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])
    return resample_poses(cum, np.stack(path), cum[-1] * np.arange(1, n + 1) / n)


def _segment(path: Sequence[np.ndarray], n: int, closed_a: bool, closed_b: bool,
             config: RecedingHorizonConfig) -> tuple[np.ndarray, np.ndarray]:
    """Poses and widths of one keyframe segment along ``path`` (``n`` moving steps, plus waits)."""
    X_a, X_b = path[0], path[-1]
    poses = _along(path, n)
    w_a, w_b = config.command_width(closed_a), config.command_width(closed_b)
    lowers = X_a[2, 3] - X_b[2, 3] > config.release_descent
    if closed_a == closed_b:
        return poses, np.full(n, w_a)
    if closed_b or lowers:  # grasp on arrival / place, then release: change at X_b and wait
        settle = np.repeat(X_b[None], config.grasp_settle_steps, axis=0)
        return (np.concatenate([poses, settle]),
                np.concatenate([np.full(n - 1, w_a), np.full(1 + config.grasp_settle_steps, w_b)]))
    # release, then leave: open at X_a and wait before moving
    wait = np.repeat(X_a[None], 1 + config.release_wait_steps, axis=0)
    return np.concatenate([wait, poses]), np.full(len(wait) + n, w_b)


def hold_chunk(start: Mapping[str, tuple[np.ndarray, bool]], *, config: RecedingHorizonConfig,
               steps: int | None = None) -> ActionChunk:
    """Every arm holds its commanded pose and gripper state for ``steps`` (default ``hold_steps``)."""
    n = steps or config.hold_steps
    return ActionChunk(
        {arm: np.repeat(np.asarray(X, dtype=np.float64)[None], n, axis=0) for arm, (X, _) in start.items()},
        {arm: np.full(n, config.command_width(closed)) for arm, (_, closed) in start.items()},
    )


def truncate_keyframes(X_TG: Sequence[np.ndarray], closed: Sequence[bool], confidence: Sequence[float], *,
                       config: RecedingHorizonConfig, X_start: np.ndarray | None = None) -> ArmKeyframes:
    """The first ``execute_frames`` keyframes, bridging short runs of unconfident frames.

    A run of at most ``config.max_gap_frames`` frames below ``min_confidence`` between trusted
    poses (``X_start``, the pose commanded now, counts as trusted before frame 1) is bridged:
    those frames take poses interpolated between their trusted neighbours, at the video's pace,
    so that a hand passing behind an obstacle for a frame need not stop the arm there. A longer
    run, or unconfident frames at the end, cut the keyframes before them (with the default 0,
    the first unconfident frame). Gripper states are kept as given (unconfident frames did not
    measure the fingers).
    """
    X_TG = np.asarray(X_TG, dtype=np.float64).reshape(-1, 4, 4)
    limit = min(config.execute_frames, len(X_TG))
    ok = np.asarray(confidence, dtype=float)[:limit] >= config.min_confidence
    poses = X_TG[:limit].copy()
    anchor = -1 if X_start is not None else None  # last trusted frame (-1: X_start, "frame 0")
    k = 0
    while k < limit:
        if ok[k]:
            anchor, k = k, k + 1
            continue
        nxt = k
        while nxt < limit and not ok[nxt]:
            nxt += 1
        if nxt >= limit or nxt - k > config.max_gap_frames:
            break  # nothing trusted to bridge to: stop before this run
        if anchor is None:  # a leading gap without a start pose: wait at the first trusted pose
            poses[k:nxt] = poses[nxt]
        else:
            X_a = X_start if anchor == -1 else poses[anchor]
            t = (np.arange(k, nxt) - anchor) / (nxt - anchor)
            poses[k:nxt] = resample_poses(np.array([0.0, 1.0]), np.stack([X_a, poses[nxt]]), t)
        anchor, k = nxt, nxt + 1
    return ArmKeyframes(poses[:k].reshape(-1, 4, 4), np.asarray(closed[:k], dtype=bool))

"""The receding-horizon loop shared by the video-prediction policies (geo4d, oracle, dreamitate).

A :class:`VideoPolicy` subclass only says where the future comes from
(:meth:`VideoPolicy.predict_video`: the 4D generator, the oracle's privileged look-ahead, ...)
and, if it tracks differently (Dreamitate: RGB only), :meth:`VideoPolicy.track`; this module
owns the rest of every replan:

1. build the current view n (pointmap from the measured depth, gripper part labels from the
   label image: the first-frame masks SAM2 gives the paper);
2. track both grippers through the prediction and keep the more confident view per frame
   (:func:`geo4d_policy.perception.video_tracking.track_video`);
3. open/close per frame from the finger-cluster centroid distance with hysteresis;
4. the first ``execute_frames`` trustworthy frames -> 10 Hz waypoints within the controller's
   limits (:mod:`geo4d_policy.control.receding_horizon`); an arm whose predicted motion is
   within tracking noise holds its last command (an idle arm);
5. when no arm can be tracked into the first predicted frame the policy holds for a moment and
   replans (new noise); after ``max_lost_replans`` such replans in a row it raises
   :class:`TrackingLostError`, which fails the episode with that reason (never the run).

Per-episode diagnostics (replans, mean time per replan of each stage, tracking confidence, lost
frames) go into the rollout records through :meth:`VideoPolicy.diagnostics`;
:meth:`VideoPolicy.replan_seconds` gives every replan's stage times (``scripts/bench_replan.py``).
With ``record_predictions`` the predicted RGB and depth of every replan are kept and written
by :meth:`VideoPolicy.save_predictions` (``geo4d-rollout --video K``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from geo4d_policy.control.receding_horizon import (
    ArmKeyframes,
    RecedingHorizonConfig,
    hold_chunk,
    is_idle,
    keyframes_to_chunk,
    truncate_keyframes,
)
from geo4d_policy.data.geometry import depth_to_pointmap
from geo4d_policy.data.masks import masks_from_frame
from geo4d_policy.interface import ARM_NAMES, ActionChunk, Observation
from geo4d_policy.perception.fusion import FailSafeConfig
from geo4d_policy.perception.gripper_model import GripperModel
from geo4d_policy.perception.gripper_state import GripperStateEstimator
from geo4d_policy.perception.icp_core import ICPTrackerConfig
from geo4d_policy.perception.pose_tracker import part_label_image
from geo4d_policy.perception.view_pose import ViewPoseEstimate, estimate_view_pose
from geo4d_policy.perception.video_tracking import (
    ArmTrack,
    CurrentView,
    PredictedVideo,
    fingers_seen,
    track_video,
)
from geo4d_policy.task_settings import task_settings


DEFAULT_SEGMENTER = Path(__file__).resolve().parents[2] / "assets" / "checkpoints" / "segmenter_medium"
"""The shipped gripper part segmenter (RGB -> palm/finger classes per arm)."""


def check_segmenter_option(option: str | None, *, required: bool = False) -> Path | None:
    """The segmenter checkpoint a ``segmenter`` policy option names, refusing one that is missing
    (a rollout's preflight calls this, so a typo stops the run before any episode instead of
    failing every episode).

    Args:
        option: ``"auto"``/None (the shipped one), ``"none"``/``"off"`` (no segmenter), or a path.
        required: the policy cannot run without a segmenter (RGB-only frames carry no labels):
            ``none`` is refused, and so is ``auto`` without the shipped checkpoint.

    Returns:
        The checkpoint path, or None for no segmenter (``none``, or ``auto`` without the
        shipped one when not ``required``).

    Raises:
        PolicyUnavailableError: the message names the path and the fix.
    """
    from geo4d_policy.policies.registry import PolicyUnavailableError

    choices = "auto|DIR" if required else "auto|none"
    if option in ("none", "off", False):
        if required:
            raise PolicyUnavailableError("this policy needs a gripper segmenter (its predicted frames carry no "
                                         f"labels); pass --policy-option segmenter={choices}")
        return None
    path = DEFAULT_SEGMENTER if option in (None, "auto") else Path(str(option))
    if path.exists():
        return path
    if option in (None, "auto") and not required:
        return None
    raise PolicyUnavailableError(f"no gripper segmenter at {path}; train one with `geo4d-train segmenter ...` "
                                 f"or pass --policy-option segmenter={choices}")


def load_segmenter(option: str | None, *, device: str = "cpu") -> Any:
    """The segmenter a video policy uses on predicted frames.

    Args:
        option: ``"auto"``/None (the shipped one if present, else none), ``"none"``, or a path.
        device: torch device.

    Raises:
        PolicyUnavailableError: an explicit path that holds no segmenter.
    """
    path = check_segmenter_option(option)
    if path is None:
        return None
    from geo4d_policy.perception.segmenter import GripperSegmenter

    return GripperSegmenter.from_pretrained(path, device=device)


def debounce(states: np.ndarray, *, start: bool, frames: int) -> np.ndarray:
    """Gripper states where a change counts only once ``frames`` consecutive frames agree.

    A single frame of a generated video whose finger clusters read the other way (a blurry
    finger, a held object segmented as gripper) must not open a gripper holding an object.
    The last frames of a prediction cannot confirm a change; the next replan can.
    """
    states = np.asarray(states, dtype=bool)
    out = np.empty_like(states)
    cur = bool(start)
    for t in range(len(states)):
        window = states[t:t + frames]
        if states[t] != cur and len(window) == frames and np.all(window == states[t]):
            cur = bool(states[t])
        out[t] = cur
    return out


def backdate_release(closed: np.ndarray, observed: np.ndarray, *, frames: int) -> np.ndarray:
    """Open up to ``frames`` frames earlier than seen when the fingers were out of view there.

    A release confirmed at frame k may have happened in the frames just before it, where the
    fingers could not be seen (a hand opening inside the shelf): those read the fitted opening's
    prior, i.e. "still closed", and keeping the grip while the predicted hand already retreats
    drags the object back out. Closings are not back-dated (closing early misses the grasp).

    Args:
        closed: (F,) debounced states.
        observed: (F,) whether each frame's fingers were seen.
        frames: most frames a release moves earlier.
    """
    out = np.asarray(closed, dtype=bool).copy()
    observed = np.asarray(observed, dtype=bool)
    for k in range(1, len(out)):
        if out[k - 1] and not out[k]:
            for j in range(k - 1, max(-1, k - 1 - frames), -1):
                if observed[j] or not out[j]:
                    break
                out[j] = False
    return out


def close_at_rest(closed: np.ndarray, positions: np.ndarray, *, start: bool, start_position: np.ndarray,
                  still_distance: float) -> np.ndarray:
    """Move each closing to the first frame from it where the predicted hand is at rest.

    A hand closes where it stops over its object. Finger readings of a hand still descending
    onto it can read "closed" a frame early (the fingers hidden by the object, its points taken
    for fingers), and the grasp-on-arrival rule would then close the real hand above the object.
    A frame is at rest when the step into it or out of it is at most ``still_distance``; a
    closed run with no frame at rest stays open (the next replan sees the stop). The traces
    behind this rule are in docs/decisions.md.

    Args:
        closed: (F,) gripper states per predicted frame.
        positions: (F, 3) predicted gripper positions of those frames.
        start: the state commanded now (before frame 0).
        start_position: (3,) the position commanded now.
        still_distance: largest per-frame step (m) of a hand at rest.
    """
    out = np.asarray(closed, dtype=bool).copy()
    p = np.concatenate([np.asarray(start_position, dtype=np.float64).reshape(1, 3),
                        np.asarray(positions, dtype=np.float64).reshape(-1, 3)])
    step = np.linalg.norm(np.diff(p, axis=0), axis=1)  # step[k]: into frame k
    n = len(out)
    k = 0
    while k < n:
        if out[k] and not (out[k - 1] if k else start):
            end = k
            while end < n and out[end]:
                end += 1
            j = k
            while j < end and not (step[j] <= still_distance or (j + 1 < n and step[j + 1] <= still_distance)):
                j += 1
            out[k:j] = False
            k = end
        else:
            k += 1
    return out


def toggle_at_turn(closed: np.ndarray, positions: np.ndarray, trusted: np.ndarray, observed: np.ndarray, *,
                   start: bool, peak_z: float, descent: float, rise: float,
                   start_z: float | None = None) -> np.ndarray:
    """Change the gripper at the bottom of a descend-then-rise whose fingers were out of view.

    Pick-and-place hands change state at the bottom of a descent and then rise: they close on
    an object and lift it, or open on its place and leave. Where the fingers are hidden there
    (a hand closing on a spatula handle seen from above, opening on the table behind the
    object) the finger clusters cannot read the change, and the hand would rise without its
    object or carry it back up. When the readings give no change, the lowest trusted frame
    ``k`` is at least ``descent`` below the highest point since the last change (``peak_z``), a
    later trusted frame is at least ``rise`` above it, and the fingers were not seen at ``k``,
    the state changes at ``k``. For a release, the pose commanded now (``start_z``) is a
    candidate bottom too, with the first frame's fingers standing for it (a hand that waited at
    the bottom while the look-ahead opened there sees only the rise); the controller then opens
    in place before rising. Not for a closing: it would close after the rise, in the air. The
    traces behind this rule are in docs/decisions.md.

    Args:
        closed: (F,) states from the finger readings.
        positions: (F, 3) predicted gripper positions in T (z up).
        trusted: (F,) frames whose pose is trusted.
        observed: (F,) frames whose fingers were seen.
        start: the state commanded now.
        peak_z: highest commanded z since the last change of state.
        descent: least drop (m) from ``peak_z`` to the bottom.
        rise: least rise (m) after the bottom.
        start_z: z of the pose commanded now (None: frames only); used for releases.
    """
    out = np.asarray(closed, dtype=bool).copy()
    if np.any(out != start):
        return out  # the fingers were read changing: trust them
    idx = np.flatnonzero(np.asarray(trusted, dtype=bool))
    if len(idx) == 0:
        return out
    z = np.asarray(positions, dtype=np.float64).reshape(-1, 3)[:, 2]
    k = int(idx[np.argmin(z[idx])])
    if start and start_z is not None and start_z <= z[k]:
        k, z_k, later, seen = 0, float(start_z), idx, bool(observed[0])
    else:
        z_k, later, seen = float(z[k]), idx[idx > k], bool(observed[k])
    if len(later) and not seen and peak_z - z_k >= descent and z[later].max() - z_k >= rise:
        out[k:] = not start
    return out


REPLAN_STAGES = ("generate", "segment", "track", "control", "replan")
"""The timed stages of a replan (:meth:`VideoPolicy.replan_seconds`); ``predict`` in the records
is ``generate + segment``."""


@dataclasses.dataclass(frozen=True)
class GripperStateInputs:
    """What one replan's gripper decision for one arm is made from (see :func:`decide_gripper_states`).

    Attributes:
        raw: (F,) per-frame finger readings (closed?) of the state estimator, with hysteresis.
        observed: (F,) whether each frame's fingers were seen.
        pose_ok: (F,) whether each frame's pose is trusted.
        positions: (F, 3) predicted gripper positions in T.
        start: the state commanded now.
        start_position: (3,) the position commanded now.
        peak_z: highest commanded z since the last change of state.
    """

    raw: np.ndarray
    observed: np.ndarray
    pose_ok: np.ndarray
    positions: np.ndarray
    start: bool
    start_position: np.ndarray
    peak_z: float

    def to_dict(self) -> dict[str, Any]:
        """Compact JSON-able form (millimetres for positions), for episode records."""
        bits = lambda a: "".join("1" if x else "0" for x in np.asarray(a, dtype=bool))  # noqa: E731
        return {"raw": bits(self.raw), "observed": bits(self.observed), "pose_ok": bits(self.pose_ok),
                "positions_mm": np.round(np.asarray(self.positions) * 1e3, 1).tolist(),
                "start": bool(self.start), "start_position_mm": np.round(np.asarray(self.start_position) * 1e3,
                                                                         1).tolist(),
                "peak_z_mm": round(float(self.peak_z) * 1e3, 1)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GripperStateInputs:
        bits = lambda s: np.array([c == "1" for c in s], dtype=bool)  # noqa: E731
        return cls(raw=bits(d["raw"]), observed=bits(d["observed"]), pose_ok=bits(d["pose_ok"]),
                   positions=np.asarray(d["positions_mm"], dtype=np.float64).reshape(-1, 3) / 1e3,
                   start=bool(d["start"]), start_position=np.asarray(d["start_position_mm"], dtype=np.float64) / 1e3,
                   peak_z=float(d["peak_z_mm"]) / 1e3)


def decide_gripper_states(inputs: GripperStateInputs, config: VideoPolicyConfig) -> np.ndarray:
    """Per-frame gripper states of one arm from its readings and the enabled rules, in order:
    :func:`debounce` (``toggle_frames``), :func:`backdate_release` (``release_backdate_frames``),
    :func:`toggle_at_turn` (``turn_descent``, off with None), :func:`close_at_rest`
    (``close_still_distance``, off with None)."""
    p = np.asarray(inputs.positions, dtype=np.float64).reshape(-1, 3)
    start_position = np.asarray(inputs.start_position, dtype=np.float64)
    closed = debounce(inputs.raw, start=inputs.start, frames=config.toggle_frames)
    closed = backdate_release(closed, inputs.observed, frames=config.release_backdate_frames)
    if config.turn_descent is not None:
        closed = toggle_at_turn(closed, p, inputs.pose_ok, inputs.observed, start=inputs.start,
                                peak_z=inputs.peak_z, descent=config.turn_descent, rise=config.turn_rise,
                                start_z=float(start_position[2]))
    if config.close_still_distance is not None:
        closed = close_at_rest(closed, p, start=inputs.start, start_position=start_position,
                               still_distance=config.close_still_distance)
    return closed


class TrackingLostError(RuntimeError):
    """The grippers could not be tracked in the predictions for too many replans in a row."""


@dataclasses.dataclass(frozen=True)
class VideoPolicyConfig:
    """Options shared by the video policies.

    Attributes:
        control: timing, speed limits and widths of the executed chunks.
        tracker: options of the ICP gripper trackers.
        close_fraction: without a held-object width, a gripper reads closed below the centroid
            distance of a width of this fraction of the stroke (see :class:`GripperStateEstimator`) ...
        open_fraction: ... and open again above this fraction (hysteresis).
        measure_confidence: tracked frames below this confidence give no finger measurement.
        object_width: width (m) of the hand closed on the task's object; thresholds sit between
            it and "open" (default: the task's ``held_object_width``, ``configs/tasks.yaml``).
        task_closed_width: command the task's ``closed_command_width`` (if any) to close the hand
            instead of ``control.closed_width`` (a squeeze that keeps a box centred).
        max_lost_replans: consecutive replans without any trackable arm before the episode
            fails with "tracking lost".
        single_view: track only in view n (ablation of the two-view fusion).
        free_space: where the predicted fingers were not seen well, read "holding the object"
            or "open" from the free space around them in both views (tasks with an object width;
            see :func:`~geo4d_policy.perception.video_tracking.free_space_opening`).
        track_frames: predicted frames tracked per replan (default: the executed ones plus
            ``toggle_frames - 1``, so that a gripper change seen in the last executed frame can
            be confirmed; without them a grasp seen there waited for the next replan, by when
            the predicted hand was already lifting).
        toggle_frames: consecutive predicted frames that must agree before the gripper state
            changes (see :func:`debounce`).
        release_backdate_frames: a release may move this many frames earlier over frames whose
            fingers were out of view (see :func:`backdate_release`). Off (0) by default: on
            development seeds it opened the hand one to four frames before the look-ahead did in
            6 of the 7 replans where it acted (docs/decisions.md).
        close_still_distance: a closing waits for the first frame whose step in or out is at
            most this (m; see :func:`close_at_rest`); None closes where the fingers read closed.
        turn_descent: the gripper changes state at the bottom of a descent of at least this
            (m) followed by a rise of ``turn_rise`` when its fingers were out of view there
            (see :func:`toggle_at_turn`; a task prior beyond the paper's finger-distance rule);
            None reads the state from the fingers only.
        turn_rise: see ``turn_descent``.
        segment_parts: use the segmenter's palm/finger classes (finger clusters for the
            gripper state); the default uses only its whole-gripper masks, and the finger
            opening the tracker fits to the masked points (the shipped segmenter separates
            the gripper from the scene far better than the fingers from each other).
        fail_safe: when frames whose tracked pose the views contradict are lost
            (:func:`~geo4d_policy.perception.fusion.fail_safe`); ``enabled: false`` for the
            ablation.
        resync_distance: when an arm's measured gripper stands further than this (m) from
            its last command (held back by a contact, or a command out of reach), its next
            chunk starts from where it stands, not from the stale command; None: never.
    """

    control: RecedingHorizonConfig = dataclasses.field(default_factory=RecedingHorizonConfig)
    tracker: ICPTrackerConfig = dataclasses.field(default_factory=ICPTrackerConfig)
    close_fraction: float = 0.5
    open_fraction: float = 0.6
    max_lost_replans: int = 6
    single_view: bool = False
    track_frames: int | None = None
    segment_parts: bool = False
    toggle_frames: int = 2
    release_backdate_frames: int = 0
    measure_confidence: float = 0.6
    close_still_distance: float | None = 0.015
    turn_descent: float | None = 0.05
    turn_rise: float = 0.03
    object_width: float | None = None
    task_closed_width: bool = True
    free_space: bool = True
    resync_distance: float | None = 0.02
    fail_safe: FailSafeConfig = dataclasses.field(default_factory=FailSafeConfig)

    @property
    def frames_to_track(self) -> int:
        """Predicted frames a replan uses (``track_frames``, or the executed ones plus
        ``toggle_frames - 1``); later frames are never looked at."""
        return self.track_frames or self.control.execute_frames + max(0, self.toggle_frames - 1)


def resolve_video_config(config: VideoPolicyConfig, *, task: str) -> VideoPolicyConfig:
    """``config`` with what depends on the task filled in (``configs/tasks.yaml``): the held
    object's width and the closing command. Idempotent: the configuration a run records is the
    one its policy uses."""
    settings = task_settings(task)
    held = config.object_width if config.object_width is not None else settings.held_object_width
    control = config.control
    if config.task_closed_width and settings.closed_command_width is not None:
        control = dataclasses.replace(control, closed_width=settings.closed_command_width)
    return dataclasses.replace(config, object_width=held, control=control)


OPTION_ALIASES = {"execute_frames": "video.control.execute_frames", "free_space": "video.free_space"}
"""Short policy options of the video policies (kept from before their settings were data)."""


@dataclasses.dataclass(frozen=True)
class GeneratorPolicyConfig:
    """Settings of a policy that generates its video (geo4d, dreamitate).

    Attributes:
        checkpoint: generator checkpoint or run directory (None: the policy's shipped one).
        num_steps: sampler steps per prediction (None: the checkpoint's, 25).
        segmenter: gripper segmenter for the predicted RGB frames: ``auto`` (the shipped one),
            ``none`` (track unsegmented pointmaps; not for dreamitate) or a checkpoint path.
        compile_unet: compile the U-Net with CUDA graphs (CUDA only; the first prediction
            compiles, about a minute; a shared generator server does it before serving).
        decode_frames: decode only the first frames of each prediction (None: all 10). A replan
            tracks :attr:`VideoPolicyConfig.frames_to_track` of them (5 by default), so that many
            loses nothing but decoding time (``--video`` then shows those frames); fewer is
            refused.
        video: the shared receding-horizon pipeline (tracking, gripper state, control).
    """

    checkpoint: str | None = None
    num_steps: int | None = None
    segmenter: str = "auto"
    compile_unet: bool = False
    decode_frames: int | None = None
    video: VideoPolicyConfig = dataclasses.field(default_factory=VideoPolicyConfig)

    def __post_init__(self) -> None:
        if self.decode_frames is not None and self.decode_frames < self.video.frames_to_track:
            raise ValueError(f"decode_frames={self.decode_frames} decodes fewer frames than a replan tracks "
                             f"({self.video.frames_to_track}: video.track_frames, or execute_frames + "
                             "toggle_frames - 1); use at least that many, or null for all")


def for_task(config: Any, *, task: str) -> Any:
    """Policy-module hook (see :mod:`geo4d_policy.policies.policy_config`): a config with a
    ``video`` field gets its task-dependent values."""
    return dataclasses.replace(config, video=resolve_video_config(config.video, task=task))


def estimate_view_m_pose(obs: Observation, video: PredictedVideo) -> ViewPoseEstimate:
    """Camera m's pose in camera n, as a policy recovers it without calibration
    (:func:`~geo4d_policy.perception.view_pose.estimate_view_pose`): view m's observed depth (in
    camera m's frame) against the first predicted ``X^{m->n}``, on the pixels that show no
    gripper in either (the grippers move between the two; other moved pixels are the fit's
    outliers). Untrusted when the prediction's static scene does not agree with the observation."""
    m = obs.cameras[obs.eval_cameras[1]]
    points_m, valid_m = depth_to_pointmap(m.depth, m.spec.intrinsics)
    pm = np.asarray(video.pointmaps[1, 0], dtype=np.float64)
    if pm.shape != points_m.shape:
        return ViewPoseEstimate(None, 0, reason=f"predicted view m is {pm.shape[:2]}, observed {points_m.shape[:2]}")
    static = masks_from_frame(m, arms=tuple(obs.arms)) == 0
    for labels in (video.part_labels or {}).values():
        static &= np.asarray(labels[1, 0]) < 0
    for mask in (video.masks or {}).values():
        static &= ~np.asarray(mask[1, 0], dtype=bool)
    return estimate_view_pose(points_m, valid_m, pm, np.asarray(video.valid[1, 0], dtype=bool), static=static)


def view_cameras(obs: Observation, video: PredictedVideo, X_CnCm: np.ndarray | None = None
                 ) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
    """``(K, X_CnCv)`` of the camera owning each predicted view's pixels (see
    :func:`~geo4d_policy.perception.video_tracking.track_video`).

    ``X_CnCm`` is camera m's pose in camera n when known (calibration); by default it is
    estimated from the prediction (:func:`estimate_view_m_pose`). Without a trusted pose view m
    gets ``(None, None)``: its pixels' projection unknown, as before camera poses were used.
    """
    n, m = (obs.cameras[c] for c in obs.eval_cameras[:2])
    if X_CnCm is None:
        X_CnCm = estimate_view_m_pose(obs, video).X_CnCm
    return [(n.spec.intrinsics.K, None), (None, None) if X_CnCm is None else (m.spec.intrinsics.K, X_CnCm)]


def current_view(obs: Observation, *, arms: tuple[str, ...] = ARM_NAMES) -> CurrentView:
    """View n as observed now: its pointmap (camera n's frame) and each arm's gripper part labels."""
    frame = obs.cameras[obs.eval_cameras[0]]
    points, valid = depth_to_pointmap(frame.depth, frame.spec.intrinsics)
    packed = masks_from_frame(frame, arms=arms)
    return CurrentView(points, valid, {arm: part_label_image(packed, arm) for arm in arms})


class VideoPolicy:
    """Base class: subclasses implement :meth:`predict_video` (and set ``name``)."""

    name = "video"

    def __init__(self, *, task: str, config: VideoPolicyConfig | None = None, segmenter: Any = None,
                 record_predictions: bool = False, device: str | None = None) -> None:
        """``device``: the torch device the policy was asked to run on; the tracker's ``auto``
        device follows it, so a policy put on the CPU keeps its tracker off the GPU too (None:
        the tracker's own setting decides)."""
        self.task = task
        self.config = config or VideoPolicyConfig()
        tracker = self.config.tracker
        if device not in (None, "auto") and tracker.device == "auto":
            tracker = dataclasses.replace(tracker, device=device)
        self.tracker_config = tracker
        """The tracker settings :meth:`track` uses (``config.tracker`` with the device resolved)."""
        self.segmenter = segmenter
        self.record_predictions = record_predictions
        self.model = GripperModel.load()
        self.config = resolve_video_config(self.config, task=task)
        held = self._held_width = self.config.object_width
        if held is not None:
            self._estimator_template = GripperStateEstimator.for_object_width(held, model=self.model)
        else:
            self._estimator_template = GripperStateEstimator(
                self.model, close_fraction=self.config.close_fraction, open_fraction=self.config.open_fraction)
        self.reset(seed=0)

    # ---- to implement ---------------------------------------------------------------------
    def predict_video(self, obs: Observation) -> PredictedVideo:
        """The next ``F`` frames of both evaluation views (pointmaps in camera n's frame)."""
        raise NotImplementedError

    def segment(self, video: PredictedVideo) -> PredictedVideo:
        """Gripper masks of the predicted frames from their RGB, when a segmenter is set and the
        video carries no segmentation: unsegmented frames make the tracker fit the gripper
        model to whatever is near its predicted pose, which drifts onto the scene when the
        gripper moves fast or touches an object."""
        if self.segmenter is None or video.rgb is None or video.part_labels is not None or video.masks is not None:
            return video
        from geo4d_policy.perception.segmenter import gripper_mask_for_arm, part_labels_for_arm

        rgb = np.asarray(video.rgb)[:, :self.frames_to_track]
        classes = self.segmenter.predict(rgb.reshape(-1, *rgb.shape[2:])).reshape(rgb.shape[:4])
        arms = tuple(self._cmd or ARM_NAMES)
        pad = video.num_frames - rgb.shape[1]

        def full(x: np.ndarray, fill: Any) -> np.ndarray:  # untracked frames: nothing segmented
            return np.concatenate([x, np.full((2, pad, *x.shape[2:]), fill, dtype=x.dtype)], axis=1) if pad else x

        if self.config.segment_parts:
            return dataclasses.replace(video, part_labels={a: full(part_labels_for_arm(classes, a), -1) for a in arms})
        return dataclasses.replace(video, masks={a: full(gripper_mask_for_arm(classes, a), False) for a in arms})

    def track(self, obs: Observation, video: PredictedVideo) -> dict[str, ArmTrack]:
        """Both grippers through the prediction (default: ICP on the two views' pointmaps).

        An override may leave out arms it found static in the prediction: they hold their command.
        """
        cfg = self.config
        X_TCn = np.asarray(obs.camera_specs[obs.eval_cameras[0]].X_TC, dtype=np.float64)
        arms = tuple(self._cmd or obs.arms)
        free_space = cfg.free_space and self._held_width is not None
        return track_video(video, current_view(obs, arms=arms), X_TCn=X_TCn,
                           X_TG_now={arm: obs.arms[arm].X_TG for arm in arms},
                           width_now={arm: obs.arms[arm].width for arm in arms},
                           max_frames=self.frames_to_track, model=self.model,
                           tracker_config=self.tracker_config, single_view=cfg.single_view,
                           candidate_widths=(self._held_width, self.model.stroke) if free_space else None,
                           view_cameras=self.view_cameras(obs, video),
                           fail_safe_config=cfg.fail_safe)

    def view_cameras(self, obs: Observation, video: PredictedVideo
                     ) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
        """:func:`view_cameras` with camera m's pose estimated from the prediction (the policy is
        not calibrated), counted in the diagnostics (``view_m_pose``: how often it was trusted
        or fell back, the residuals, the last fallback's reason). A subclass that knows the
        calibration (the oracle) overrides this."""
        est = estimate_view_m_pose(obs, video)
        summary, rec = est.record(), self._stats["view_m_pose"]
        rec[summary["source"]] += 1
        if summary["residual_mm"] is not None:
            rec["residual_mm"].append(summary["residual_mm"])
        if not est.ok:
            rec["last_fallback_reason"] = est.reason
        return view_cameras(obs, video, est.X_CnCm)

    def _update_peak(self, arm: str, kf: ArmKeyframes, *, closed_now: bool, z_now: float) -> None:
        """The highest commanded z since the arm's last change of state (for :func:`toggle_at_turn`)."""
        peak = self._peak_z.get(arm, z_now)
        if len(kf.closed):
            z = kf.X_TG[:, 2, 3]
            changed = np.flatnonzero(kf.closed != np.concatenate([[closed_now], kf.closed[:-1]]))
            peak = float(z[changed[-1]:].max()) if len(changed) else max(peak, float(z.max()))
        self._peak_z[arm] = peak

    @property
    def frames_to_track(self) -> int:
        return self.config.frames_to_track

    # ---- the loop ---------------------------------------------------------------------------
    def reset(self, *, seed: int) -> None:
        self.seed = int(seed)
        self._cmd: dict[str, tuple[np.ndarray, bool]] | None = None
        self._incoming: dict[str, np.ndarray] = {}
        """arm -> the last displacement commanded (the direction the next chunk starts with)."""
        self.last_replan: dict[str, Any] = {}
        """The last replan's tracks and keyframes per arm (for diagnostics of subclasses)."""
        self._lost_in_a_row = 0
        self._peak_z: dict[str, float] = {}
        self._stats: dict[str, Any] = {
            "replans": 0, "lost_replans": 0, "lost_frames": 0, "tracked_frames": 0, "idle_holds": 0,
            "gripper_toggles": 0, "hand_resyncs": 0,
            "view_m_pose": {"calibrated": 0, "estimated": 0, "fallback": 0, "residual_mm": [],
                            "last_fallback_reason": ""},
        }
        self._times: dict[str, list[float]] = {key: [] for key in REPLAN_STAGES + ("predict",)}
        self._confidences: list[float] = []
        self._predictions: list[dict[str, Any]] = []

    def act(self, obs: Observation) -> ActionChunk:
        cfg = self.config
        if self._cmd is None:
            self._cmd = {arm: (np.asarray(obs.arms[arm].X_TG, dtype=np.float64).copy(), False) for arm in obs.arms}
        self._resync(obs)
        t0 = time.perf_counter()
        video = self.predict_video(obs)
        t_gen = time.perf_counter()
        video = self.segment(video)
        t1 = time.perf_counter()
        tracks = self.track(obs, video)
        t2 = time.perf_counter()
        keyframes: dict[str, ArmKeyframes] = {}
        # An arm a subclass left out of its tracks (found static in the prediction) holds.
        any_tracked = any(arm not in tracks for arm in self._cmd)
        new_closed: dict[str, bool] = {arm: closed for arm, (_, closed) in self._cmd.items()}
        state_inputs: dict[str, GripperStateInputs] = {}
        starts: dict[str, np.ndarray] = {}
        idle_holds: set[str] = set()
        for arm, track in tracks.items():
            X_cmd, closed_now = self._cmd[arm]
            estimator = GripperStateEstimator(self.model, close_below=self._estimator_template.close_below,
                                              open_above=self._estimator_template.open_above,
                                              initial_state="closed" if closed_now else "open")
            conf, X_TG = track.confidence, track.X_TG
            pose_ok = conf >= cfg.control.min_confidence
            # Only frames whose pose is trusted measure the fingers: the finger region of a poorly
            # fitted pose holds other points.
            raw = np.array([estimator.update(float(d) if np.isfinite(d) and ok else None).closed
                            for d, ok in zip(track.finger_distance, conf >= cfg.measure_confidence)])
            observed = np.array([fingers_seen(f) for f in track.fused])
            inputs = GripperStateInputs(raw=raw, observed=observed, pose_ok=pose_ok, positions=X_TG[:, :3, 3],
                                        start=closed_now, start_position=X_cmd[:3, 3],
                                        peak_z=self._peak_z.get(arm, float(X_cmd[2, 3])))
            state_inputs[arm] = inputs
            closed = decide_gripper_states(inputs, cfg)
            self._stats["lost_frames"] += int((~pose_ok).sum())
            self._stats["tracked_frames"] += len(conf)
            self._confidences.extend(conf.tolist())
            kf = truncate_keyframes(X_TG, closed, conf, config=cfg.control, X_start=X_cmd)
            any_tracked |= len(kf.X_TG) > 0
            starts[arm] = X_cmd.copy()
            if is_idle(X_cmd, kf, start_closed=closed_now, config=cfg.control):
                if len(kf.X_TG):
                    self._stats["idle_holds"] += 1
                    idle_holds.add(arm)
                kf = ArmKeyframes(np.zeros((0, 4, 4)), np.zeros(0, dtype=bool))
            keyframes[arm] = kf
            new_closed[arm] = bool(kf.closed[-1]) if len(kf.closed) else closed_now
            self._update_peak(arm, kf, closed_now=closed_now, z_now=X_cmd[2, 3])
            self._stats["gripper_toggles"] += int(new_closed[arm] != closed_now)
        self._stats["replans"] += 1
        if not any_tracked:
            self._stats["lost_replans"] += 1
            self._lost_in_a_row += 1
            if self._lost_in_a_row > cfg.max_lost_replans:
                raise TrackingLostError(
                    f"tracking lost: no gripper could be tracked into the predicted video for "
                    f"{self._lost_in_a_row} replans in a row (t={obs.time:.1f} s)")
            chunk = hold_chunk(self._cmd, config=cfg.control)
        else:
            self._lost_in_a_row = 0
            chunk = keyframes_to_chunk(self._cmd, keyframes, config=cfg.control, incoming=self._incoming)
            self._cmd = {arm: (np.asarray(chunk.X_TG[arm][-1]).copy(), new_closed[arm]) for arm in self._cmd}
            for arm in self._cmd:
                steps = np.diff(np.asarray(chunk.X_TG[arm])[:, :3, 3], axis=0)
                moving = np.flatnonzero(np.linalg.norm(steps, axis=1) > 1e-6)
                if len(moving):
                    self._incoming[arm] = steps[moving[-1]]
                else:  # it stood still: the next chunk starts from rest
                    self._incoming.pop(arm, None)
        self.last_replan = {"tracks": tracks, "keyframes": keyframes, "state_inputs": state_inputs,
                            "starts": starts, "idle_holds": idle_holds}
        t3 = time.perf_counter()
        self._times["predict"].append(t1 - t0)
        self._times["generate"].append(t_gen - t0)
        self._times["segment"].append(t1 - t_gen)
        self._times["track"].append(t2 - t1)
        self._times["control"].append(t3 - t2)
        self._times["replan"].append(t3 - t0)
        if self.record_predictions:
            self._keep_prediction(obs, video, tracks)
        return chunk

    def _resync(self, obs: Observation) -> None:
        """Start from the measured gripper pose of an arm that stands ``resync_distance`` away
        from its last command (see :class:`VideoPolicyConfig`)."""
        limit = self.config.resync_distance
        if limit is None or self._cmd is None:
            return
        for arm, (X_cmd, closed) in list(self._cmd.items()):
            X_now = np.asarray(obs.arms[arm].X_TG, dtype=np.float64)
            if np.linalg.norm(X_now[:3, 3] - X_cmd[:3, 3]) > limit:
                self._cmd[arm] = (X_now.copy(), closed)
                self._incoming.pop(arm, None)
                self._stats["hand_resyncs"] += 1

    # ---- reporting --------------------------------------------------------------------------
    def replan_seconds(self) -> dict[str, list[float]]:
        """Per replan (in order), the seconds of each of :data:`REPLAN_STAGES` (``generate``: the
        video source, e.g. the generator or its server; ``segment``: gripper masks of the
        predicted frames; ``track``: both grippers through both views; ``control``: gripper
        state and waypoints; ``replan``: all of it)."""
        return {key: list(self._times[key]) for key in REPLAN_STAGES}

    def diagnostics(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self._stats)
        out["view_m_pose"] = {k: list(v) if isinstance(v, list) else v for k, v in self._stats["view_m_pose"].items()}
        for key, values in self._times.items():
            if values:
                out[f"{key}_s_mean"] = float(np.mean(values))
        if self._confidences:
            out["tracking_confidence_mean"] = float(np.mean(self._confidences))
        if self._stats["tracked_frames"]:
            out["lost_frame_rate"] = self._stats["lost_frames"] / self._stats["tracked_frames"]
        return out

    def _keep_prediction(self, obs: Observation, video: PredictedVideo, tracks: Mapping[str, Any]) -> None:
        depth = np.asarray(video.pointmaps[..., 2], dtype=np.float32)
        self._predictions.append({
            "time": float(obs.time),
            "rgb": None if video.rgb is None else np.asarray(video.rgb, dtype=np.uint8),
            "depth_n": np.where(video.valid[0], depth[0], 0.0),
            "confidence": {arm: t.confidence.tolist() for arm, t in tracks.items()},
        })

    def save_predictions(self, path: str | Path) -> Path | None:
        """Write the kept predictions as an mp4 (RGB of n | m | view-n depth, one block per replan).

        Returns:
            The path written, or None when nothing was recorded.
        """
        if not self._predictions:
            return None
        import imageio.v2 as imageio

        frames = []
        for p in self._predictions:
            depth = p["depth_n"]
            lo, hi = 0.3, 2.0
            d8 = (255 * np.clip((depth - lo) / (hi - lo), 0, 1)).astype(np.uint8)
            d8 = np.where(depth > 0, 255 - d8, 0)
            for t in range(depth.shape[0]):
                tiles = []
                if p["rgb"] is not None:
                    tiles += [p["rgb"][0, t], p["rgb"][1, t]]
                tiles.append(np.repeat(d8[t][..., None], 3, axis=-1))
                frames.append(np.concatenate(tiles, axis=1))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
        imageio.mimwrite(tmp, frames, fps=2, macro_block_size=1)
        tmp.replace(path)
        return path

"""The ``oracle`` policy: the geo4d tracking/control pipeline fed with ground-truth future RGB-D.

At every replan the oracle copies the episode's simulator state into a private look-ahead
environment (same task and seed, so the same layout and cameras), lets the scripted expert
continue the task there for ``F`` predicted frames and renders the two evaluation views at
2 Hz. Those frames go through exactly the pipeline the ``geo4d`` policy uses
(:class:`~geo4d_policy.policies.video_policy.VideoPolicy`): tracking, gripper state, waypoints,
open-loop execution. Its success rate is the pipeline's upper bound; the gap to ``geo4d`` is
what generation costs.

Look-ahead bookkeeping: the expert is a generator script, which cannot be copied. The oracle
therefore runs a *shadow* expert beside the real episode: it watches every executed 10 Hz
observation (:meth:`OraclePolicy.observe`, called by the episode loop) and consumes one exactly
when the expert would (its action queue ran empty), so every measurement the script takes
(e.g. the object's pose in the hand) comes from the real episode, not from an earlier
look-ahead. A look-ahead replays the consumed observations into a fresh script (the expert is
deterministic given its observations), takes over the unexecuted rest of the shadow's queue
and continues in the private environment restored to the current state.

Only the oracle and the expert may read ``Observation.privileged``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np

from geo4d_policy.data.geometry import depth_to_pointmap, invert_transform, pointmap_to_view
from geo4d_policy.data.masks import masks_from_frame
from geo4d_policy.interface import ARM_NAMES, Action, CameraFrame, Observation, canonical_task_name
from geo4d_policy.perception.metrics import pose_errors
from geo4d_policy.perception.pose_tracker import part_label_image
from geo4d_policy.perception.video_tracking import PredictedVideo
from geo4d_policy.policies.video_policy import OPTION_ALIASES, for_task  # noqa: F401 - policy-config hooks
from geo4d_policy.policies.video_policy import (
    VideoPolicy,
    VideoPolicyConfig,
    check_segmenter_option,
    load_segmenter,
    view_cameras,
)


class ExpertLookahead:
    """The scripted expert continued from the current state in a private copy of the episode.

    Args:
        task: canonical task name.
        num_frames: frames per look-ahead.
        frame_steps: control steps between frames (5 at 10 Hz for the 2 Hz video).
        env_factory: ``f(task) -> Env`` (default: ``sim.env.make_env``).
    """

    def __init__(self, task: str, *, num_frames: int = 10, frame_steps: int = 5, env_factory: Any = None) -> None:
        self.task = task
        self.num_frames = num_frames
        self.frame_steps = frame_steps
        self._env_factory = env_factory
        self._env = None
        self._seed: int | None = None
        self.reset(seed=0)

    def reset(self, *, seed: int) -> None:
        if self._seed != seed:
            self._env = None
        self._seed = seed
        self._shadow = self._make_expert()
        self._history: list[Observation] = []
        """Observations of the real episode the shadow expert consumed, in order."""
        self._pending: list[Action] = []
        """The shadow's actions not yet executed."""
        self.frame_poses: dict[str, np.ndarray] = {}
        """arm -> (F, 4, 4) true gripper poses at the last look-ahead's frames."""
        self.frame_widths: dict[str, np.ndarray] = {}
        """arm -> (F,) true finger openings (m) at those frames."""

    def _make_expert(self):
        from sim.experts import make_expert_policy

        expert = make_expert_policy(task=self.task)
        expert.reset(seed=self._seed)
        return expert

    def observe(self, obs: Observation) -> None:
        """The real episode is about to execute one control step from ``obs``."""
        if not self._pending:
            self._history.append(obs)
            self._pending = list(self._shadow.act(obs))
        self._pending.pop(0)

    def rollout(self, obs: Observation) -> list[tuple[CameraFrame, CameraFrame]]:
        """Continue the expert from ``obs``'s state; views n and m rendered at each future frame."""
        if obs.privileged is None or obs.privileged.snapshot is None:
            raise RuntimeError("the oracle needs the simulator's state (Observation.privileged.snapshot)")
        if self._env is None:
            if self._env_factory is None:
                from sim.env import make_env

                self._env_factory = make_env
            self._env = self._env_factory(self.task)
            self._env.reset(self._seed)
        o = self._env.restore(obs.privileged.snapshot())
        expert = self._make_expert()
        for h in self._history:  # replay: brings a fresh script to the shadow's state
            expert.act(h)
        queue = list(self._pending)
        frames: list[tuple[CameraFrame, CameraFrame]] = []
        poses: list[dict[str, tuple[np.ndarray, float]]] = []
        done = rendered_done = False
        n_name, m_name = obs.eval_cameras[:2]
        for k in range(self.num_frames * self.frame_steps):
            if not done:
                if not queue:
                    queue = list(expert.act(o))
                o, done, _ = self._env.step(queue.pop(0))
            if (k + 1) % self.frame_steps == 0:
                # Rendered now: a lazy camera goes stale at the next step. After the episode
                # ends in the look-ahead (success or t_max) the last frame repeats.
                if not (done and rendered_done):
                    frames.append((o.cameras[n_name], o.cameras[m_name]))
                    poses.append({arm: (s.X_TG.copy(), s.width) for arm, s in o.arms.items()})
                    rendered_done = done
                else:
                    frames.append(frames[-1])
                    poses.append(poses[-1])
        self.frame_poses = {arm: np.stack([p[arm][0] for p in poses]) for arm in poses[0]}
        self.frame_widths = {arm: np.array([p[arm][1] for p in poses]) for arm in poses[0]}
        return frames


def video_from_frames(frames: list[tuple[CameraFrame, CameraFrame]], *, future_labels: bool) -> PredictedVideo:
    """A :class:`PredictedVideo` from rendered observations of both evaluation views.

    View m's pointmaps go to camera n's frame with both cameras' true poses (privileged).
    """
    pms, valids, rgbs, labels = [], [], [], {arm: [] for arm in ARM_NAMES}
    for fn, fm in frames:
        pn, vn = depth_to_pointmap(fn.depth, fn.spec.intrinsics)
        pm, vm = depth_to_pointmap(fm.depth, fm.spec.intrinsics)
        pm = pointmap_to_view(pm, vm, X_TCm=fm.spec.X_TC, X_TCn=fn.spec.X_TC)
        pms.append(np.stack([pn, pm]))
        valids.append(np.stack([vn, vm]))
        rgbs.append(np.stack([fn.rgb, fm.rgb]))
        if future_labels:
            packed = [masks_from_frame(f) for f in (fn, fm)]
            for arm in ARM_NAMES:
                labels[arm].append(np.stack([part_label_image(p, arm) for p in packed]))
    # (F, 2, ...) -> (2, F, ...)
    return PredictedVideo(
        pointmaps=np.stack(pms, axis=1), valid=np.stack(valids, axis=1), rgb=np.stack(rgbs, axis=1),
        part_labels={arm: np.stack(v, axis=1) for arm, v in labels.items()} if future_labels else None,
    )


class OraclePolicy(VideoPolicy):
    """Ground-truth future frames through the geo4d pipeline (see the module docstring)."""

    name = "oracle"

    def __init__(self, *, task: str, config: VideoPolicyConfig | None = None, num_frames: int = 10,
                 future_labels: bool = False, segmenter: Any = None, record_predictions: bool = False,
                 env_factory: Any = None, device: str | None = None) -> None:
        self.lookahead = ExpertLookahead(task, num_frames=num_frames, env_factory=env_factory)
        self.future_labels = future_labels
        super().__init__(task=task, config=config, segmenter=segmenter, record_predictions=record_predictions,
                         device=device)

    def reset(self, *, seed: int) -> None:
        super().reset(seed=seed)
        self.lookahead.reset(seed=seed)
        self._replans: list[dict[str, Any]] = []
        self._aim: dict[str, np.ndarray] = {}

    def predict_video(self, obs: Observation) -> PredictedVideo:
        return video_from_frames(self.lookahead.rollout(obs), future_labels=self.future_labels)

    def view_cameras(self, obs: Observation, video: PredictedVideo
                     ) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
        """The oracle knows the calibration: camera m's true pose in camera n (the look-ahead
        renders the same cameras)."""
        n, m = (obs.camera_specs[c] for c in obs.eval_cameras[:2])
        self._stats["view_m_pose"]["calibrated"] += 1
        return view_cameras(obs, video, invert_transform(np.asarray(n.X_TC, dtype=np.float64))
                            @ np.asarray(m.X_TC, dtype=np.float64))

    def act(self, obs: Observation):
        self._close_replan(obs)
        chunk = super().act(obs)
        self._open_replan(obs)
        return chunk

    def observe(self, obs: Observation) -> None:
        """Every executed 10 Hz observation (the episode loop calls this): the shadow expert."""
        self.lookahead.observe(obs)

    # ---- per-replan diagnostics -------------------------------------------------------------
    def _open_replan(self, obs: Observation) -> None:
        """Record how well this replan's tracks match the look-ahead's true gripper poses, and
        remember where the executed chunk aims (the look-ahead pose of its last keyframe)."""
        entry: dict[str, Any] = {"t": round(float(obs.time), 2)}
        tracks, keyframes = self.last_replan.get("tracks", {}), self.last_replan.get("keyframes", {})
        self._aim = {}
        for arm, track in tracks.items():
            true = self.lookahead.frame_poses.get(arm)
            if true is None:
                continue
            n = min(len(track.X_TG), len(true))
            ok = np.asarray(track.confidence[:n]) >= self.config.control.min_confidence
            arm_entry: dict[str, Any] = {"frames": int(n), "lost": int((~ok).sum())}
            if ok.any():
                trans, rot = pose_errors(np.asarray(track.X_TG[:n])[ok], true[:n][ok])
                arm_entry.update(tracked_vs_true_mm=round(float(np.max(trans)), 1),
                                 tracked_vs_true_deg=round(float(np.max(rot)), 2))
            inputs = self.last_replan.get("state_inputs", {}).get(arm)
            if inputs is not None:  # what the gripper decision was made from, and the truth
                widths = self.lookahead.frame_widths.get(arm, np.zeros(0))[:n]
                arm_entry["state"] = {**inputs.to_dict(),
                                      "true_closed": "".join("1" if w < self._estimator_template.decision_width
                                                             else "0" for w in widths)}
            X_start = self.last_replan.get("starts", {}).get(arm)
            if X_start is not None:  # an arm held as idle although the look-ahead moved it?
                m = min(n, self.config.control.execute_frames)
                arm_entry["true_motion_mm"] = round(float(np.linalg.norm(true[:m, :3, 3] - X_start[:3, 3],
                                                                         axis=1).max()) * 1e3, 1)
                arm_entry["idle_hold"] = arm in self.last_replan.get("idle_holds", set())
            k = len(keyframes[arm].X_TG) if arm in keyframes else 0
            if 0 < k <= len(true):
                self._aim[arm] = true[k - 1].copy()
                arm_entry["executed_frames"] = k
            entry[arm] = arm_entry
        self._replans.append(entry)

    def _close_replan(self, obs: Observation) -> None:
        """Record how far each arm ended its last chunk from the look-ahead pose it aimed at."""
        if not self._replans or not self._aim:
            return
        for arm, X_aim in self._aim.items():
            trans, rot = pose_errors(np.asarray(obs.arms[arm].X_TG), X_aim)
            self._replans[-1][arm].update(lookahead_vs_executed_mm=round(float(trans[0]), 1),
                                          lookahead_vs_executed_deg=round(float(rot[0]), 2))
        self._aim = {}

    def diagnostics(self) -> dict[str, Any]:
        """The video policy's diagnostics plus, per replan (``oracle_replans``), each arm's largest
        tracked-vs-true gripper pose error over its trusted tracked frames and the error of the
        pose it reached against the look-ahead pose its chunk aimed at (not for the last chunk,
        which the episode's end cuts short); their medians and 90th percentiles over the
        episode (the record adds the placement error at the end)."""
        out = super().diagnostics()
        out["oracle_replans"] = self._replans
        for key in ("tracked_vs_true_mm", "lookahead_vs_executed_mm"):
            values = [a[key] for r in self._replans for a in r.values() if isinstance(a, dict) and key in a]
            if values:
                out[f"{key}_median"] = float(np.median(values))
                out[f"{key}_p90"] = float(np.percentile(values, 90))
        return out


LABELS = ("segmenter", "ground_truth", "none")
"""How the look-ahead frames are segmented (see :class:`OraclePolicyConfig`)."""


@dataclasses.dataclass(frozen=True)
class OraclePolicyConfig:
    """Every inference setting of the oracle (``configs/policy/oracle.yaml``).

    Attributes:
        num_frames: look-ahead frames per replan (the pipeline executes the first 4; the
            generator predicts 10, but frames past the tracked ones change nothing).
        labels: segmentation of the look-ahead frames: ``segmenter`` (the segmenter geo4d runs
            on its predicted frames, so only generation differs), ``ground_truth`` (the
            simulator's label images: the pipeline with perfect segmentation) or ``none``
            (unsegmented pointmaps).
        segmenter: the segmenter for ``labels=segmenter``: ``auto`` (the shipped one), ``none``
            or a checkpoint path.
        video: the shared receding-horizon pipeline (tracking, gripper state, control).
    """

    num_frames: int = 6
    labels: Literal["segmenter", "ground_truth", "none"] = "segmenter"
    segmenter: str = "auto"
    video: VideoPolicyConfig = dataclasses.field(default_factory=VideoPolicyConfig)


CONFIG = OraclePolicyConfig


def preflight(*, task: str, config: OraclePolicyConfig, runtime: dict[str, Any] | None = None) -> None:
    """Rollout-runner hook: refuse an explicit segmenter path that does not exist before any episode.

    Raises:
        PolicyUnavailableError: the message names the path and the choices.
    """
    if config.labels == "segmenter":
        check_segmenter_option(config.segmenter)


def checkpoints(config: OraclePolicyConfig, *, task: str) -> dict[str, Any]:
    """Provenance hook: the checkpoints ``config`` loads, by setting (digested into every run's record)."""
    return {"segmenter": check_segmenter_option(config.segmenter) if config.labels == "segmenter" else None}


def make_policy(*, task: str, config: OraclePolicyConfig | None = None, record_predictions: bool = False,
                device: str | None = None, **options: Any) -> OraclePolicy:
    """The ``oracle`` policy for ``task``.

    Args:
        task: task name (CamelCase or snake_case).
        config: every setting (default: :data:`CONFIG`'s defaults); see :class:`OraclePolicyConfig`.
        record_predictions: keep each replan's frames for :meth:`save_predictions`.
        device: torch device of the segmenter and the tracker (None: the segmenter on the CPU,
            the tracker as ``video.tracker.device`` says).
        **options: settings overriding ``config``, as ``--policy-option`` takes them
            (``labels=``, ``num_frames=``, ``execute_frames=``, ``video.release_backdate_frames=`` ...).

    Raises:
        PolicyOptionError: an unknown option or a value of the wrong type.
        PolicyUnavailableError: an explicit segmenter path that does not exist.
    """
    from geo4d_policy.policies.policy_config import configure

    task = canonical_task_name(task)
    config = configure(__name__, config, options, task=task)
    preflight(task=task, config=config)
    seg = load_segmenter(config.segmenter if config.labels == "segmenter" else "none", device=device or "cpu")
    return OraclePolicy(task=task, config=config.video, num_frames=config.num_frames,
                        future_labels=config.labels == "ground_truth", segmenter=seg,
                        record_predictions=record_predictions, device=device)

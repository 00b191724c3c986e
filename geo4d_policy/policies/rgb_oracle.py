"""The ``rgb_oracle`` control: Dreamitate's perception on ground-truth future RGB.

At every replan the oracle's privileged look-ahead (:class:`~geo4d_policy.policies.oracle.ExpertLookahead`:
the scripted expert continued from the episode's current state in a private copy) renders the
two evaluation views' future frames; they go through exactly Dreamitate's segmentation, per-view
RGB-only pose estimation and two-view ray fusion (:class:`~geo4d_policy.policies.dreamitate.DreamitatePolicy`)
and the shared control pipeline. Its success rate is the ceiling of Dreamitate's perception; the
gap to ``dreamitate`` is what RGB-only generation costs, the gap to ``oracle`` (the geo4d pipeline
on the same look-ahead) is what RGB-only perception costs.

Only the oracles and the expert may read ``Observation.privileged``.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal

from geo4d_policy.devices import resolve_device
from geo4d_policy.interface import Observation, canonical_task_name
from geo4d_policy.perception.video_tracking import PredictedVideo
from geo4d_policy.policies.dreamitate import DreamitatePolicy, RGBPerceptionConfig, perception_options
from geo4d_policy.policies.oracle import ExpertLookahead, video_from_frames
from geo4d_policy.policies.video_policy import OPTION_ALIASES, for_task  # noqa: F401 - policy-config hooks
from geo4d_policy.policies.video_policy import VideoPolicyConfig, check_segmenter_option, load_segmenter

Labels = Literal["segmenter", "ground_truth"]
LABELS: tuple[str, ...] = typing.get_args(Labels)
"""How the look-ahead frames are segmented: Dreamitate's segmenter, or the simulator's labels."""


@dataclasses.dataclass(frozen=True)
class RGBOracleConfig(RGBPerceptionConfig):
    """Every inference setting of the ``rgb_oracle`` control (``configs/policy/rgb_oracle.yaml``):
    Dreamitate's perception settings (:class:`~geo4d_policy.policies.dreamitate.RGBPerceptionConfig`)
    and those of the look-ahead.

    Attributes:
        num_frames: look-ahead frames per replan.
        labels: ``segmenter`` (Dreamitate's segmenter on the look-ahead frames) or
            ``ground_truth`` (the simulator's label images: perfect segmentation).
        segmenter: the segmenter for ``labels=segmenter`` (``auto``: the shipped one, or a path).
        video: the shared receding-horizon pipeline (tracking, gripper state, control).
    """

    num_frames: int = 6
    labels: Labels = "segmenter"
    segmenter: str = "auto"
    video: VideoPolicyConfig = dataclasses.field(default_factory=VideoPolicyConfig)


CONFIG = RGBOracleConfig


class RGBOraclePolicy(DreamitatePolicy):
    """Dreamitate's perception on the oracle's ground-truth future RGB (see the module docstring).

    Args:
        labels: ``segmenter`` (Dreamitate's, on the rendered frames) or ``ground_truth``.
        num_frames: look-ahead frames per replan.
        env_factory: the look-ahead's environment factory (default ``sim.env.make_env``).
        Other arguments: as :class:`DreamitatePolicy`.
    """

    name = "rgb_oracle"

    def __init__(self, *, task: str, segmenter: Any, labels: str = "segmenter", num_frames: int = 6,
                 env_factory: Any = None, **kwargs: Any) -> None:
        if labels not in LABELS:
            raise ValueError(f"labels must be one of {', '.join(LABELS)}, got {labels!r}")
        self.lookahead = ExpertLookahead(task, num_frames=num_frames, env_factory=env_factory)
        self.labels = labels
        super().__init__(task=task, predictor=None, segmenter=segmenter, **kwargs)

    def reset(self, *, seed: int) -> None:
        super().reset(seed=seed)
        self.lookahead.reset(seed=seed)

    def observe(self, obs: Observation) -> None:
        """Every executed 10 Hz observation (the episode loop calls this): the shadow expert."""
        self.lookahead.observe(obs)

    def predict_video(self, obs: Observation) -> PredictedVideo:
        import numpy as np

        frames = self.lookahead.rollout(obs)
        if self.labels == "ground_truth":
            self._labels_now = None  # the current frame's labels: the simulator's too
            video = video_from_frames(frames[:self.frames_to_track], future_labels=True)
            # RGB only: Dreamitate's perception never reads depth.
            return PredictedVideo(pointmaps=None, valid=None, rgb=video.rgb, part_labels=video.part_labels)
        rgb = np.stack([np.stack([fn.rgb, fm.rgb]) for fn, fm in frames], axis=1)  # (2, F, H, W, 3)
        rgb_now = np.stack([obs.cameras[name].rgb for name in obs.eval_cameras[:2]])
        return self.segmented_video(rgb_now, rgb, obs.arms)


def preflight(*, task: str, config: RGBOracleConfig, runtime: dict[str, Any] | None = None) -> None:
    """Rollout-runner hook: refuse a missing segmenter where one is needed, before any episode.

    Raises:
        PolicyUnavailableError: the message names the path and the choices.
    """
    if config.labels == "segmenter":
        check_segmenter_option(config.segmenter, required=True)


def checkpoints(config: RGBOracleConfig, *, task: str) -> dict[str, Path | None]:
    """Provenance hook: the checkpoints ``config`` loads (digested into every run's record)."""
    return {"segmenter": check_segmenter_option(config.segmenter, required=True)
            if config.labels == "segmenter" else None}


def make_policy(*, task: str, config: RGBOracleConfig | None = None, device: str | None = "auto",
                record_predictions: bool = False, perception_device: str | None = "auto",
                perception_threads: int | None = None, **options: Any) -> RGBOraclePolicy:
    """The ``rgb_oracle`` policy for ``task``.

    Args:
        task: task name (CamelCase or snake_case).
        config: every setting (default: :data:`CONFIG`'s defaults); see :class:`RGBOracleConfig`.
        device: torch device of the segmenter (``auto``: CUDA when available).
        record_predictions: keep each replan's frames for ``--video``.
        perception_device, perception_threads: runtime options, as for ``dreamitate``
            (:func:`~geo4d_policy.policies.dreamitate.perception_options`).
        **options: settings overriding ``config``, as ``--policy-option`` takes them.

    Raises:
        PolicyUnavailableError: a missing segmenter where one is needed.
        PolicyOptionError: an unknown option or a value of the wrong type.
    """
    from geo4d_policy.policies.policy_config import configure

    task = canonical_task_name(task)
    config = configure(__name__, config, options, task=task)
    preflight(task=task, config=config)
    device = resolve_device(device)
    seg = load_segmenter(config.segmenter, device=device) if config.labels == "segmenter" else None
    return RGBOraclePolicy(task=task, segmenter=seg, labels=config.labels, num_frames=config.num_frames,
                           config=config.video, perception=config, record_predictions=record_predictions,
                           **perception_options(device, perception_device=perception_device,
                                                perception_threads=perception_threads))

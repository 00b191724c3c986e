"""The ``dreamitate`` baseline: RGB-only two-view video generation + RGB-only gripper pose estimation.

Dreamitate (Liang et al. 2024) fine-tunes a video model to generate a stereo pair of videos and
recovers the tool's pose in each generated view with MegaPose, then triangulates. Ours, on the
same data and views as ``geo4d``:

* generation: the RGB-only variant of our generator (``use_pointmaps: false``, config
  ``small_rgb``: no pointmap VAE, no ``X^{m->n}``; the two views still attend to each other as
  Dreamitate's jointly generated stereo pair does);
* segmentation of the predicted frames: our gripper part segmenter (RGB -> palm/finger classes
  per arm); the current frame's labels come from the simulator's label images, as for geo4d;
* pose per view: :class:`~geo4d_policy.perception.rgb_pose.RGBPoseEstimator` (render-and-compare
  of the gripper model against the segmentation; the model's known size fixes the depth);
* fusion: ray-midpoint of the two per-view estimates and the mean rotation
  (:func:`~geo4d_policy.perception.fusion.fuse_rgb_views`). Dreamitate assumes a calibrated
  stereo rig, so for fairness this baseline is given ``X_TC`` of both views (geo4d gets only
  view n's);
* everything after that (gripper state, waypoints, open-loop execution, replanning) is the
  shared :class:`~geo4d_policy.policies.video_policy.VideoPolicy` pipeline.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from geo4d_policy.data.geometry import invert_transform
from geo4d_policy.data.masks import masks_from_frame
from geo4d_policy.interface import Observation, canonical_task_name
from geo4d_policy.perception.rgb_pose import RGBPoseConfig
from geo4d_policy.perception.tracker import TrackingFrame, part_label_image
from geo4d_policy.perception.video_tracking import ArmTrack, PredictedVideo
from geo4d_policy.policies.generator_server import make_shared_resources
from geo4d_policy.devices import resolve_device
from geo4d_policy.policies.geo4d import REPO_ROOT, check_generator_checkpoint, local_predictor
from geo4d_policy.policies.video_policy import OPTION_ALIASES, for_task  # noqa: F401 - policy-config hooks
from geo4d_policy.policies.video_policy import (
    GeneratorPolicyConfig,
    VideoPolicy,
    VideoPolicyConfig,
    check_segmenter_option,
)

DEFAULT_CHECKPOINT = REPO_ROOT / "assets" / "checkpoints" / "dreamitate_small"
shared_resources = make_shared_resources(DEFAULT_CHECKPOINT)
"""Rollout-runner hook: parallel GPU workers share one generator server."""
TRAIN_HINT = ("train one with `geo4d-train generator --config small_rgb --task all --image-vae RUN ...` "
              "(README: 'Training') and pass --policy-option checkpoint=DIR")


@dataclasses.dataclass(frozen=True)
class DreamitatePolicyConfig(GeneratorPolicyConfig):
    """Every inference setting of the Dreamitate baseline (``configs/policy/dreamitate.yaml``):
    those of :class:`GeneratorPolicyConfig` (``checkpoint`` None: the shipped
    ``dreamitate_small``; ``segmenter`` is required, ``none`` is refused) and ``rgb_pose``, the
    RGB-only pose estimator's. Its registration starts from the robot's measured pose seen
    through a calibrated camera, so by default it adds no tilted starts when registering
    (``widen_register``): they only pay for a doubtful prior, and the estimator still adds them
    when the prior's fit looks wrong."""

    rgb_pose: RGBPoseConfig = dataclasses.field(default_factory=lambda: RGBPoseConfig(widen_register=False))


CONFIG = DreamitatePolicyConfig


class DreamitatePolicy(VideoPolicy):
    """RGB-only generation, segmentation and render-and-compare poses (see the module docstring)."""

    name = "dreamitate"

    def __init__(self, *, task: str, predictor: Any, segmenter: Any, num_steps: int | None = None,
                 config: VideoPolicyConfig | None = None, rgb_pose: RGBPoseConfig | None = None,
                 record_predictions: bool = False) -> None:
        self.predictor = predictor
        self.num_steps = num_steps
        self.rgb_pose = rgb_pose or DreamitatePolicyConfig().rgb_pose
        super().__init__(task=task, config=config, segmenter=segmenter, record_predictions=record_predictions)

    def predict_video(self, obs: Observation) -> PredictedVideo:
        from geo4d_policy.perception.segmenter import part_labels_for_arm

        rgb_now = np.stack([obs.cameras[name].rgb for name in obs.eval_cameras[:2]])
        seed = (self.seed * 1009 + self._stats["replans"]) % (2**31)
        out = self.predictor({"rgb": rgb_now}, task=self.task, seed=seed, num_steps=self.num_steps)
        rgb = np.asarray(out["rgb"])  # (2, F, H, W, 3)
        F = min(self.frames_to_track, rgb.shape[1])  # only the frames the pipeline tracks
        classes = self.segmenter.predict(rgb[:, :F].reshape(-1, *rgb.shape[2:])).reshape(2, F, *rgb.shape[2:4])
        return PredictedVideo(pointmaps=None, valid=None, rgb=rgb[:, :F],
                              part_labels={arm: part_labels_for_arm(classes, arm) for arm in obs.arms})

    def track(self, obs: Observation, video: PredictedVideo) -> dict[str, ArmTrack]:
        from geo4d_policy.perception.fusion import fuse_rgb_views
        from geo4d_policy.perception.rgb_pose import RGBPoseEstimator

        names = obs.eval_cameras[:2]
        specs = [obs.camera_specs[n] for n in names]
        packed_now = [masks_from_frame(obs.cameras[n]) for n in names]
        out: dict[str, ArmTrack] = {}
        for arm in (self._cmd or obs.arms):
            X_TG = np.asarray(obs.arms[arm].X_TG, dtype=np.float64)
            per_view, regs = [], []
            for v, spec in enumerate(specs):
                K = spec.intrinsics.K
                est = RGBPoseEstimator(self.model, K=K, config=self.rgb_pose)
                labels_now = part_label_image(packed_now[v], arm)
                reg = est.register(labels_now, init_pose=invert_transform(spec.X_TC) @ X_TG,
                                   init_width=obs.arms[arm].width)
                regs.append(reg)
                frames = video.part_labels[arm][v]
                per_view.append([est.track(TrackingFrame(np.zeros((*f.shape, 3), np.float32), f >= 0, None, f, None, K))
                                 for f in frames])
            fused = fuse_rgb_views(per_view[0], per_view[1], X_TC1=specs[0].X_TC, X_TC2=specs[1].X_TC)
            dist = np.array([self.model.finger_centroid_distance(float(np.clip(f.width, 0.0, self.model.stroke)))
                             if f.status == "ok" and f.width is not None and np.isfinite(f.width) else np.nan
                             for f in fused])
            out[arm] = ArmTrack(fused, regs[0], dist, (per_view[0], per_view[1]))
        return out


def preflight(*, task: str, config: DreamitatePolicyConfig, runtime: dict[str, Any] | None = None) -> None:
    """Rollout-runner hook: refuse missing or mismatched checkpoints before any episode starts."""
    check_segmenter_option(config.segmenter, required=True)
    if not (runtime or {}).get("server"):
        check_generator_checkpoint(Path(config.checkpoint or DEFAULT_CHECKPOINT), task=task,
                                   pointmaps=False, hint=TRAIN_HINT)


def checkpoints(config: DreamitatePolicyConfig, *, task: str) -> dict[str, Path | None]:
    """Provenance hook: the checkpoints ``config`` loads, by setting (digested into every run's record)."""
    return {"checkpoint": Path(config.checkpoint or DEFAULT_CHECKPOINT),
            "segmenter": check_segmenter_option(config.segmenter, required=True)}


def make_policy(*, task: str, config: DreamitatePolicyConfig | None = None, device: str | None = "auto",
                server: str | None = None, record_predictions: bool = False, **options: Any) -> DreamitatePolicy:
    """The ``dreamitate`` policy for ``task``.

    Args:
        task: task name (CamelCase or snake_case).
        config: every setting (default: :data:`CONFIG`'s defaults); see :class:`DreamitatePolicyConfig`.
        device: ``auto``, ``cpu``, ``cuda`` ...
        server: address of a generator server (parallel GPU workers share one model).
        record_predictions: keep each replan's predicted frames for ``--video``.
        **options: settings overriding ``config``, as ``--policy-option`` takes them.

    Raises:
        PolicyUnavailableError: a checkpoint is missing or does not fit (message names the fix).
        PolicyOptionError: an unknown option or a value of the wrong type.
    """
    from geo4d_policy.perception.segmenter import GripperSegmenter
    from geo4d_policy.policies.geo4d import load_generator
    from geo4d_policy.policies.policy_config import configure

    task = canonical_task_name(task)
    config = configure(__name__, config, options, task=task)
    preflight(task=task, config=config, runtime={"server": server})
    device = resolve_device(device)
    if server is not None:
        from geo4d_policy.policies.generator_server import GeneratorClient

        predictor = GeneratorClient(server)
    else:
        model = load_generator(config.checkpoint or DEFAULT_CHECKPOINT, task=task, device=device,
                               compile_unet=config.compile_unet)
        predictor = local_predictor(model)
    seg = GripperSegmenter.from_pretrained(check_segmenter_option(config.segmenter, required=True), device=device)
    return DreamitatePolicy(task=task, predictor=predictor, segmenter=seg, num_steps=config.num_steps,
                            config=config.video, rgb_pose=config.rgb_pose, record_predictions=record_predictions)

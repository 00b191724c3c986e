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

Cost: the render-and-compare search is the expensive step (about 14 s per arm and view per
replan on one CPU core), so only arms that move are tracked: never an arm the task's
demonstrations never move (:data:`TASK_IDLE_ARMS`, the same fact the Diffusion Policy reads from
its zero-range normalisation), nor an arm static in the prediction
(:func:`arm_static_in_prediction`: its segmented silhouette stays where it is now in every
tracked frame of both views); such an arm holds its command, as the pipeline's idle rule would
have it after tracking (settings ``idle_arms``, ``idle_min_iou``). Hypotheses are rendered and
scored with torch on the GPU when the policy runs on one (``perception_device``), and the (arm,
view) searches run in ``perception_threads`` threads; both are runtime options of the factory
(how, not what, it computes: the torch costs equal numpy's to float rounding), not settings. (The shipped RGB-only generator does not keep an idle arm still: its silhouette's IoU
with the current one was 0.13-0.52 over the predicted frames, traced on spatula data seed 50, so
the prediction test alone skips nothing there.)

``rgb_oracle`` (:class:`RGBOraclePolicy`) is the control: the same segmentation, pose estimation
and fusion on ground-truth future RGB from the oracle's privileged look-ahead
(:class:`~geo4d_policy.policies.oracle.ExpertLookahead`), the ceiling of this perception.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal

import numpy as np

from geo4d_policy.data.geometry import invert_transform
from geo4d_policy.data.masks import masks_from_frame
from geo4d_policy.interface import Observation, canonical_task_name
from geo4d_policy.perception.rgb_pose import RGBPoseConfig
from geo4d_policy.perception.pose_tracker import TrackingFrame, part_label_image
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


TASK_IDLE_ARMS: dict[str, tuple[str, ...]] = {
    "PutSpatulaOnTable": ("left",),
    "StoreCerealBoxUnderShelf": ("left",),
}
"""Arms the task's demonstrations never move: their commands have zero range over all collected
demonstrations (the shipped Diffusion Policy's normalisation statistics; a test checks the table
against them). The scripted experts of these tasks work with the right arm alone."""

IdleArms = Literal["demonstrations", "prediction", "none"]
IDLE_ARMS: tuple[str, ...] = typing.get_args(IdleArms)
"""Which arms a Dreamitate policy leaves untracked: ``demonstrations`` (those of
:data:`TASK_IDLE_ARMS` and those static in the prediction), ``prediction`` (only those static in
the prediction) or ``none`` (track every arm)."""

def check_idle_arms(option: str) -> str:
    """``option`` if it is one of :data:`IDLE_ARMS` (ValueError naming them otherwise)."""
    if option not in IDLE_ARMS:
        raise ValueError(f"idle_arms must be one of {', '.join(IDLE_ARMS)}, got {option!r}")
    return option


IDLE_MIN_IOU = 0.8
"""An arm is static in a prediction when its silhouette overlaps its current one by at least this
IoU in every tracked frame of both views: at the policy's 128x160 views and about 0.8 m, a 12 mm
shift (the pipeline's ``idle_translation``) moves a gripper's ~200-pixel silhouette by about
1.4 pixels, an IoU of about 0.8."""


def arm_static_in_prediction(now: np.ndarray, future: np.ndarray, *, min_iou: float = IDLE_MIN_IOU) -> bool:
    """Whether an arm stays put in a prediction, from its masks alone (no pose search).

    Args:
        now: (V, H, W) bool, the arm's gripper mask in each view now.
        future: (V, F, H, W) bool, its masks in the predicted frames.
        min_iou: least IoU of every future mask with the view's current one.

    Returns:
        True when every future mask overlaps the current one by ``min_iou`` in every view (a
        view where the arm is not seen now nor later counts as static too: there is nothing to
        track); False as soon as one frame differs more.
    """
    now = np.asarray(now, dtype=bool)
    future = np.asarray(future, dtype=bool)
    if future.shape[0] != now.shape[0] or future.shape[2:] != now.shape[1:]:
        raise ValueError(f"masks of {now.shape[0]} views {now.shape[1:]} now and {future.shape} predicted differ")
    inter = (future & now[:, None]).sum(axis=(2, 3))
    union = (future | now[:, None]).sum(axis=(2, 3))
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return bool((iou >= min_iou).all())


@dataclasses.dataclass(frozen=True)
class RGBPerceptionConfig:
    """Settings of Dreamitate's perception, shared by ``dreamitate`` and ``rgb_oracle``.

    Attributes:
        rgb_pose: the RGB-only pose estimator's. Its registration starts from the robot's
            measured pose seen through a calibrated camera, so by default it adds no tilted
            starts when registering (``widen_register``): they only pay for a doubtful prior,
            and the estimator still adds them when the prior's fit looks wrong.
        idle_arms: arms left untracked, one of :data:`IDLE_ARMS` (``none``: every arm tracked,
            the original cost).
        idle_min_iou: see :func:`arm_static_in_prediction`.
    """

    rgb_pose: RGBPoseConfig = dataclasses.field(default_factory=lambda: RGBPoseConfig(widen_register=False))
    idle_arms: IdleArms = "demonstrations"
    idle_min_iou: float = IDLE_MIN_IOU


@dataclasses.dataclass(frozen=True)
class DreamitatePolicyConfig(RGBPerceptionConfig, GeneratorPolicyConfig):
    """Every inference setting of the Dreamitate baseline (``configs/policy/dreamitate.yaml``):
    those of :class:`GeneratorPolicyConfig` (``checkpoint`` None: the shipped
    ``dreamitate_small``; ``segmenter`` is required, ``none`` is refused) and of
    :class:`RGBPerceptionConfig` (``rgb_pose``, ``idle_arms``, ``idle_min_iou``)."""


CONFIG = DreamitatePolicyConfig


class DreamitatePolicy(VideoPolicy):
    """RGB-only generation, segmentation and render-and-compare poses (see the module docstring).

    Args:
        perception: the perception settings (default: :class:`RGBPerceptionConfig`'s).
        perception_device: torch device on which pose hypotheses are rendered and scored
            (None: numpy on the CPU).
        perception_threads: (arm, view) pose searches run at once.
    """

    name = "dreamitate"

    def __init__(self, *, task: str, predictor: Any, segmenter: Any, num_steps: int | None = None,
                 config: VideoPolicyConfig | None = None, perception: RGBPerceptionConfig | None = None,
                 record_predictions: bool = False, perception_device: str | None = None,
                 perception_threads: int = 1) -> None:
        perception = perception or RGBPerceptionConfig()
        self.rgb_pose = perception.rgb_pose
        self.idle_arms = check_idle_arms(perception.idle_arms)
        self.idle_min_iou = float(perception.idle_min_iou)
        self.predictor = predictor
        self.num_steps = num_steps
        self.perception_device = perception_device
        self.perception_threads = max(1, int(perception_threads))
        super().__init__(task=task, config=config, segmenter=segmenter, record_predictions=record_predictions)
        self._torch_renderer = None
        if perception_device is not None:
            from geo4d_policy.perception.silhouette import TorchSilhouetteRenderer

            self._torch_renderer = TorchSilhouetteRenderer(self.model, device=perception_device)

    def reset(self, *, seed: int) -> None:
        super().reset(seed=seed)
        self._stats.update({"arms_tracked": 0, "arms_static": 0})
        self._labels_now: dict[str, np.ndarray] | None = None

    def segment_rgb(self, rgb: np.ndarray, arms: Any) -> dict[str, np.ndarray]:
        """Per-arm part labels (2, F, H, W) of RGB frames (2, F, H, W, 3), by the segmenter."""
        from geo4d_policy.perception.segmenter import part_labels_for_arm

        classes = self.segmenter.predict(rgb.reshape(-1, *rgb.shape[2:])).reshape(rgb.shape[:4])
        return {arm: part_labels_for_arm(classes, arm) for arm in arms}

    def predict_video(self, obs: Observation) -> PredictedVideo:
        rgb_now = np.stack([obs.cameras[name].rgb for name in obs.eval_cameras[:2]])
        seed = (self.seed * 1009 + self._stats["replans"]) % (2**31)
        out = self.predictor({"rgb": rgb_now}, task=self.task, seed=seed, num_steps=self.num_steps)
        return self.segmented_video(rgb_now, np.asarray(out["rgb"]), obs.arms)

    def segmented_video(self, rgb_now: np.ndarray, rgb: np.ndarray, arms: Any) -> PredictedVideo:
        """The frames the pipeline tracks of ``rgb`` (2, F, H, W, 3), segmented; the current frames
        (2, H, W, 3) are segmented with them, so that :meth:`moving_arms` compares masks of one
        segmenter (its errors on a static arm then cancel)."""
        F = min(self.frames_to_track, rgb.shape[1])
        labels = self.segment_rgb(np.concatenate([rgb_now[:, None], rgb[:, :F]], axis=1), arms)
        self._labels_now = {arm: lab[:, 0] for arm, lab in labels.items()}
        return PredictedVideo(pointmaps=None, valid=None, rgb=rgb[:, :F],
                              part_labels={arm: lab[:, 1:] for arm, lab in labels.items()})

    def labels_now(self, obs: Observation, arm: str) -> np.ndarray:
        """(2, H, W) part labels of ``arm`` in the current frames: the segmenter's when it
        segmented this replan's frames (:meth:`segmented_video`), else the simulator's."""
        if self._labels_now is not None:
            return self._labels_now[arm]
        return np.stack([part_label_image(masks_from_frame(obs.cameras[n]), arm) for n in obs.eval_cameras[:2]])

    def moving_arms(self, obs: Observation, video: PredictedVideo) -> list[str]:
        """The arms to track (see ``idle_arms``)."""
        arms = list(self._cmd or obs.arms)
        if self.idle_arms == "none":
            return arms
        if self.idle_arms == "demonstrations":
            arms = [arm for arm in arms if arm not in TASK_IDLE_ARMS.get(self.task, ())]
        return [arm for arm in arms if not arm_static_in_prediction(
            self.labels_now(obs, arm) >= 0, np.asarray(video.part_labels[arm])[:, :self.frames_to_track] >= 0,
            min_iou=self.idle_min_iou)]

    def _estimator(self, K: np.ndarray) -> Any:
        from geo4d_policy.perception.rgb_pose import RGBPoseEstimator

        return RGBPoseEstimator(self.model, K=K, config=self.rgb_pose, renderer=self._torch_renderer)

    def _track_view(self, obs: Observation, video: PredictedVideo, arm: str, v: int) -> tuple[Any, list[Any]]:
        name = obs.eval_cameras[v]
        spec = obs.camera_specs[name]
        K = spec.intrinsics.K
        est = self._estimator(K)
        labels_now = part_label_image(masks_from_frame(obs.cameras[name]), arm)
        X_TG = np.asarray(obs.arms[arm].X_TG, dtype=np.float64)
        reg = est.register(labels_now, init_pose=invert_transform(spec.X_TC) @ X_TG, init_width=obs.arms[arm].width)
        frames = video.part_labels[arm][v][:self.frames_to_track]
        return reg, [est.track(TrackingFrame(np.zeros((*f.shape, 3), np.float32), f >= 0, None, f, None, K))
                     for f in frames]

    def track(self, obs: Observation, video: PredictedVideo) -> dict[str, ArmTrack]:
        """Tracks of the arms that move in the prediction; the static ones are left out (they hold)."""
        from geo4d_policy.perception.fusion import fuse_rgb_views

        arms = self.moving_arms(obs, video)
        self._stats["arms_tracked"] += len(arms)
        self._stats["arms_static"] += len(list(self._cmd or obs.arms)) - len(arms)
        jobs = [(arm, v) for arm in arms for v in range(2)]
        # Cameras are read here: a lazily rendered observation goes stale once the env steps.
        for name in obs.eval_cameras[:2]:
            obs.cameras[name]
        if self.perception_threads > 1 and len(jobs) > 1:
            with cf.ThreadPoolExecutor(max_workers=min(self.perception_threads, len(jobs))) as pool:
                results = dict(zip(jobs, pool.map(lambda job: self._track_view(obs, video, *job), jobs)))
        else:
            results = {job: self._track_view(obs, video, *job) for job in jobs}
        specs = [obs.camera_specs[n] for n in obs.eval_cameras[:2]]
        out: dict[str, ArmTrack] = {}
        for arm in arms:
            (reg, view_n), (_, view_m) = results[(arm, 0)], results[(arm, 1)]
            fused = fuse_rgb_views(view_n, view_m, X_TC1=specs[0].X_TC, X_TC2=specs[1].X_TC)
            dist = np.array([self.model.finger_centroid_distance(float(np.clip(f.width, 0.0, self.model.stroke)))
                             if f.status == "ok" and f.width is not None and np.isfinite(f.width) else np.nan
                             for f in fused])
            out[arm] = ArmTrack(fused, reg, dist, (view_n, view_m))
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


def perception_options(device: str, *, perception_device: str | None = "auto",
                       perception_threads: int | None = None) -> dict[str, Any]:
    """``perception_device``/``perception_threads`` of a Dreamitate-style policy on ``device``:
    ``auto`` renders hypotheses with torch on a CUDA ``device`` (numpy otherwise; ``cpu`` forces
    torch on the CPU, ``none`` numpy), with 4 threads of (arm, view) searches there, 1 on the CPU."""
    if perception_device == "auto":
        perception_device = device if str(device).startswith("cuda") else None
    elif perception_device in ("none", None):
        perception_device = None
    if perception_threads is None:
        perception_threads = 4 if perception_device is not None else 1
    return {"perception_device": perception_device, "perception_threads": int(perception_threads)}


def make_policy(*, task: str, config: DreamitatePolicyConfig | None = None, device: str | None = "auto",
                server: str | None = None, record_predictions: bool = False, perception_device: str | None = "auto",
                perception_threads: int | None = None, **options: Any) -> DreamitatePolicy:
    """The ``dreamitate`` policy for ``task``.

    Args:
        task: task name (CamelCase or snake_case).
        config: every setting (default: :data:`CONFIG`'s defaults); see :class:`DreamitatePolicyConfig`.
        device: ``auto``, ``cpu``, ``cuda`` ...
        server: address of a generator server (parallel GPU workers share one model).
        record_predictions: keep each replan's predicted frames for ``--video``.
        perception_device, perception_threads: runtime options, see :func:`perception_options`.
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

        predictor = GeneratorClient(server, frames=config.decode_frames)
    else:
        model = load_generator(config.checkpoint or DEFAULT_CHECKPOINT, task=task, device=device,
                               compile_unet=config.compile_unet)
        predictor = local_predictor(model, frames=config.decode_frames)
    seg = GripperSegmenter.from_pretrained(check_segmenter_option(config.segmenter, required=True), device=device)
    return DreamitatePolicy(task=task, predictor=predictor, segmenter=seg, num_steps=config.num_steps,
                            config=config.video, perception=config, record_predictions=record_predictions,
                            **perception_options(device, perception_device=perception_device,
                                                 perception_threads=perception_threads))

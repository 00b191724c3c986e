"""The ``geo4d`` policy: the paper's receding-horizon 4D-generation policy (the default of ``geo4d-rollout``).

Every replan: the two evaluation views' current RGB-D (view n = ``eval_cameras[0]``, view m
uncalibrated: only its intrinsics are used, to turn its depth into a pointmap in its own
frame) -> :class:`~geo4d_policy.models.pipeline.Generator4D` predicts 10 frames of RGB and the
pointmaps ``X^n`` and ``X^{m->n}`` -> the shared video pipeline
(:class:`~geo4d_policy.policies.video_policy.VideoPolicy`) tracks both grippers, reads the
gripper state, maps the poses to T with ``X_TCn`` and executes the first frames at 10 Hz.

Generation can run in this process (``device``) or in a shared model server
(``server=ADDRESS``, see :mod:`geo4d_policy.policies.generator_server`), which is how parallel
rollout workers share one copy of the model on a GPU.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from geo4d_policy.data.geometry import depth_to_pointmap
from geo4d_policy.devices import resolve_device
from geo4d_policy.interface import Observation, canonical_task_name
from geo4d_policy.policies.generator_server import make_shared_resources
from geo4d_policy.perception.video_tracking import PredictedVideo
from geo4d_policy.policies.registry import PolicyUnavailableError
from geo4d_policy.policies.video_policy import OPTION_ALIASES, for_task  # noqa: F401 - policy-config hooks
from geo4d_policy.policies.video_policy import (
    GeneratorPolicyConfig,
    VideoPolicy,
    VideoPolicyConfig,
    check_segmenter_option,
    load_segmenter,
)


@dataclasses.dataclass(frozen=True)
class Geo4DPolicyConfig(GeneratorPolicyConfig):
    """geo4d's settings: those of :class:`GeneratorPolicyConfig`, with 10 sampler steps per
    prediction by default (``num_steps``; None: the checkpoint's, 25). Ten steps lose nothing
    against 25 on validation clips rendered on the CPU and on the GPU machine, at about half the
    generation time (results/generator/README.md)."""

    num_steps: int | None = 10


CONFIG = Geo4DPolicyConfig
"""Every inference setting of geo4d (``configs/policy/geo4d.yaml``; see
:mod:`geo4d_policy.policies.policy_config`)."""

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CHECKPOINT = REPO_ROOT / "assets" / "checkpoints" / "geo4d_small"
"""The shipped generator (all three tasks, task-conditioned)."""

shared_resources = make_shared_resources(DEFAULT_CHECKPOINT)
"""Rollout-runner hook: parallel GPU workers share one generator server."""

TRAIN_HINT = ("train one with `geo4d-collect` + `geo4d-train vae ...` + `geo4d-train generator --task all ...` "
              "(README: 'Training') and pass --checkpoint RUN_OR_CHECKPOINT_DIR")

MIN_DEPTH = 0.05
"""Predicted points closer to camera n than this (m) are treated as invalid."""


def load_generator(checkpoint: str | Path | None, *, task: str, device: str = "cpu", compile_unet: bool = False):
    """Load the generator for ``task``, with errors that name the expected path and the fix.

    Raises:
        PolicyUnavailableError: the checkpoint is missing, unreadable, or not trained on ``task``.
    """
    import torch

    from geo4d_policy.models.checkpoint import CheckpointError
    from geo4d_policy.models.pipeline import Generator4D

    path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    if not path.exists():
        raise PolicyUnavailableError(f"no generator checkpoint at {path}; {TRAIN_HINT}")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        model = Generator4D.from_pretrained(path, device=device, task=task, dtype=dtype)
    except CheckpointError as e:
        raise PolicyUnavailableError(f"{e}; {TRAIN_HINT}") from e
    if compile_unet and device.startswith("cuda"):
        model.compile_unet()
    return model


def check_generator_checkpoint(path: Path, *, task: str, pointmaps: bool, hint: str) -> None:
    """Refuse a generator checkpoint that is missing, unreadable, of the other kind or another task.

    Args:
        path: checkpoint or run directory.
        task: the task it must have been trained on.
        pointmaps: True for geo4d (RGB + pointmaps), False for the RGB-only dreamitate generator.
        hint: how to train or select one, appended to every message.

    Raises:
        PolicyUnavailableError: the message names the path and ``hint``.
    """
    from geo4d_policy.models.checkpoint import CheckpointError, read_config_json

    if not path.exists():
        raise PolicyUnavailableError(f"no {'' if pointmaps else 'RGB-only '}generator checkpoint at {path}; {hint}")
    try:
        data = read_config_json(path, expect_format="geo4d-generator")
        tasks = data["tasks"]
    except (CheckpointError, KeyError) as e:
        raise PolicyUnavailableError(f"{path} is not a usable generator checkpoint ({e}); {hint}") from e
    has_pointmaps = data.get("model", {}).get("use_pointmaps", True)
    if pointmaps and not has_pointmaps:
        raise PolicyUnavailableError(f"{path} is an RGB-only generator (the dreamitate baseline's); geo4d needs "
                                     f"one that predicts pointmaps; {hint}")
    if not pointmaps and has_pointmaps:
        raise PolicyUnavailableError(f"{path} is a geo4d (RGB + pointmap) generator; dreamitate needs an RGB-only "
                                     f"one; {hint}")
    if canonical_task_name(task) not in tasks:
        raise PolicyUnavailableError(f"{path} is a generator for {', '.join(tasks)}; it was not trained on "
                                     f"{canonical_task_name(task)!r}; {hint}")


def preflight(*, task: str, config: Geo4DPolicyConfig, runtime: dict[str, Any] | None = None) -> None:
    """Rollout-runner hook: refuse a missing or mismatched checkpoint before any episode starts
    (``runtime["server"]``: the generator runs in a server, nothing is loaded here).

    Raises:
        PolicyUnavailableError: the message names the path and how to train or select one.
    """
    check_segmenter_option(config.segmenter)
    if not (runtime or {}).get("server"):
        check_generator_checkpoint(Path(config.checkpoint or DEFAULT_CHECKPOINT), task=task,
                                   pointmaps=True, hint=TRAIN_HINT)


def checkpoints(config: Geo4DPolicyConfig, *, task: str) -> dict[str, Path | None]:
    """Provenance hook: the checkpoints ``config`` loads, by setting (digested into every run's record)."""
    return {"checkpoint": Path(config.checkpoint or DEFAULT_CHECKPOINT),
            "segmenter": check_segmenter_option(config.segmenter)}


def generator_inputs(obs: Observation) -> dict[str, np.ndarray]:
    """The generator's inputs from an observation: RGB of n and m, each pointmap in its own frame."""
    frames = [obs.cameras[name] for name in obs.eval_cameras[:2]]
    pms = [depth_to_pointmap(f.depth, f.spec.intrinsics) for f in frames]
    return {
        "rgb": np.stack([f.rgb for f in frames]),
        "pointmap_n": pms[0][0], "pointmap_m": pms[1][0], "valid_n": pms[0][1], "valid_m": pms[1][1],
    }


def video_from_prediction(out: dict[str, Any]) -> PredictedVideo:
    """Wrap :meth:`Generator4D.predict`'s output (pointmaps in camera n's frame) for tracking."""
    points = np.asarray(out["pointmaps"], dtype=np.float32)
    valid = np.isfinite(points).all(axis=-1) & (points[..., 2] > MIN_DEPTH)
    return PredictedVideo(pointmaps=points, valid=valid, rgb=out.get("rgb"))


class Geo4DPolicy(VideoPolicy):
    """Generator + tracking + receding-horizon control (see the module docstring).

    Args:
        task: canonical task name.
        predictor: callable ``(inputs dict, *, task, seed, num_steps) -> predict() output``; a
            local model's :meth:`Generator4D.predict` or a server client.
        num_steps: sampler steps per prediction (None: the checkpoint's, 25; the policy config sets 10).
        config: the shared video-policy options.
        record_predictions: keep predictions for :meth:`save_predictions`.
    """

    name = "geo4d"

    def __init__(self, *, task: str, predictor: Any, num_steps: int | None = None,
                 config: VideoPolicyConfig | None = None, segmenter: Any = None,
                 record_predictions: bool = False, device: str | None = None) -> None:
        self.predictor = predictor
        self.num_steps = num_steps
        super().__init__(task=task, config=config, segmenter=segmenter, record_predictions=record_predictions,
                         device=device)

    def predict_video(self, obs: Observation) -> PredictedVideo:
        seed = (self.seed * 1009 + self._stats["replans"]) % (2**31)  # new noise per replan, reproducible
        out = self.predictor(generator_inputs(obs), task=self.task, seed=seed, num_steps=self.num_steps)
        if out.get("pointmaps") is None:
            raise RuntimeError("the generator returned no pointmaps: geo4d needs a model with use_pointmaps=True")
        timings = out.get("timings") or {}
        for key in ("encode", "sample", "decode", "total"):
            if key in timings:
                self._times.setdefault(f"generator_{key}", []).append(float(timings[key]))
        return video_from_prediction(out)


def local_predictor(model: Any, *, frames: int | None = None):
    """A predictor running ``model.predict`` in this process, decoding the first ``frames``
    predicted frames (None: all)."""

    def predict(inputs: dict[str, np.ndarray], *, task: str, seed: int, num_steps: int | None) -> dict[str, Any]:
        return model.predict(inputs["rgb"], inputs.get("pointmap_n"), inputs.get("pointmap_m"),
                             valid_n=inputs.get("valid_n"), valid_m=inputs.get("valid_m"), task=task, seed=seed,
                             num_steps=num_steps, frames=frames)

    return predict


def make_policy(*, task: str, config: Geo4DPolicyConfig | None = None, device: str | None = "auto",
                server: str | None = None, record_predictions: bool = False, **options: Any) -> Geo4DPolicy:
    """The ``geo4d`` policy for ``task``.

    Args:
        task: task name (CamelCase or snake_case).
        config: every setting (default: :data:`CONFIG`'s defaults); see :class:`Geo4DPolicyConfig`.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1`` ...: the generator's,
            the segmenter's and the tracker's (unless ``video.tracker.device`` names one).
        server: address of a running generator server (``unix:PATH#KEY``, started by the
            rollout runner for parallel GPU workers); then no model is loaded in this process.
        record_predictions: keep each replan's predicted frames for ``--video``.
        **options: settings overriding ``config``, as ``--policy-option`` takes them
            (``checkpoint=``, ``num_steps=``, ``execute_frames=``, ``decode_frames=``,
            ``video.tracker.engine=`` ...).

    Raises:
        PolicyUnavailableError: missing checkpoint, or one not trained on ``task``; the
            message names the path and how to train or select one.
        PolicyOptionError: an unknown option or a value of the wrong type.
    """
    from geo4d_policy.policies.policy_config import configure

    task = canonical_task_name(task)
    config = configure(__name__, config, options, task=task)
    preflight(task=task, config=config, runtime={"server": server})
    device = resolve_device(device)
    if server is not None:
        from geo4d_policy.policies.generator_server import GeneratorClient

        predictor = GeneratorClient(server, frames=config.decode_frames)
    else:
        predictor = local_predictor(load_generator(config.checkpoint, task=task, device=device,
                                                   compile_unet=config.compile_unet), frames=config.decode_frames)
    return Geo4DPolicy(task=task, predictor=predictor, num_steps=config.num_steps, config=config.video,
                       segmenter=load_segmenter(config.segmenter, device=device),
                       record_predictions=record_predictions, device=device)

"""The ``diffusion_policy`` baseline (Chi et al. 2023) behind the :class:`Policy` protocol.

Owns the rollout side of the baseline: finding and loading the checkpoint for a task, the
observation history, one inference per ``act`` and the conversion of the predicted 20-dim
action vectors into an :class:`~geo4d_policy.interface.ActionChunk` of absolute ``panda_link8``
poses and gripper widths for both arms. The network lives in
:mod:`geo4d_policy.models.diffusion_policy`, its training in
:mod:`geo4d_policy.train.diffusion_policy`.

Observations are what the policy is allowed to see: the RGB images of the two evaluation views
(``obs.eval_cameras``: reference view n, then m), resized exactly as the training loader resizes
them, and the arms' measured gripper poses and widths (``obs.arms``). No camera pose is used.

History: the model was trained with observation steps spaced ``obs_stride`` control steps
apart, each image taken at the same time as the state it is paired with. The episode loop shows
the policy every executed observation (:meth:`DiffusionPolicy.observe`); the policy keeps (and
renders) only those its next calls will need, so at a call at step ``s`` the history is exactly
steps ``s - obs_stride, ...`` with fresh images, as in training (before the episode start: its
first observation, as the loader repeats step 0). Called without ``observe`` (a bare loop), it
falls back to the newest stored observation at or before each observation time and counts the
misses (``dp_history_misses``).

Checkpoints: ``checkpoint=`` a checkpoint directory or a training run directory (its ``last``
step); by default the shipped :data:`DEFAULT_CHECKPOINT_DIR` (one multi-task model), or a per-task
``<that directory>/<TaskName>/``. A version-1 checkpoint (the 2026-12-04 ``diffusion_policy_small``)
loads with its sub-floor normalisation dimensions repaired and a warning naming them
(``--policy-option legacy=refuse`` refuses it instead, before any episode).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geo4d_policy.config import REPO_ROOT
from geo4d_policy.data.actions import poses_to_vectors, vectors_to_poses
from geo4d_policy.data.datasets import rgb_to_tensor
from geo4d_policy.interface import (
    ARM_NAMES,
    CONTROL_HZ,
    GRIPPER_OPEN_WIDTH,
    ActionChunk,
    Observation,
    canonical_task_name,
)
from geo4d_policy.models.checkpoint import CheckpointError, read_config_json, resolve_checkpoint_dir
from geo4d_policy.models.diffusion_policy import DP_FORMAT, DiffusionPolicyModel, InferenceScheduler
from geo4d_policy.models.pretrained import LegacyRule
from geo4d_policy.policies.registry import PolicyUnavailableError

_SHIPPED = [REPO_ROOT / "assets" / "checkpoints" / f"diffusion_policy_{size}" for size in ("medium", "small")]
DEFAULT_CHECKPOINT_DIR = next((p for p in _SHIPPED if (p / "config.json").is_file()), _SHIPPED[-1])
"""The shipped checkpoint: ``diffusion_policy_medium`` once it ships, else ``diffusion_policy_small``;
one model for all tasks (or one sub-directory per task)."""

_TIME_TOLERANCE_S = 1e-3


@dataclasses.dataclass(frozen=True)
class DiffusionPolicyInferenceConfig:
    """Every inference setting of the Diffusion Policy baseline (``configs/policy/diffusion_policy.yaml``;
    the model sizes and training recipes are ``configs/policy/diffusion_policy_<size>.yaml``).

    Attributes:
        checkpoint: checkpoint or run directory (None: the shipped one, see :func:`find_checkpoint`).
        num_inference_steps: sampler steps (None: the checkpoint config's, 10 for ``small``).
        n_action_steps: actions executed per inference (None: the checkpoint config's, 8).
        scheduler: sampler (None: the checkpoint config's, ``ddim``).
        legacy: a version-1 checkpoint whose normalisation has dimensions below the floor is
            ``repair``-ed (with a warning naming them) or refused (``refuse``); see
            :class:`~geo4d_policy.models.diffusion_policy.DiffusionPolicyModel`.
    """

    checkpoint: str | None = None
    num_inference_steps: int | None = None
    n_action_steps: int | None = None
    scheduler: InferenceScheduler | None = None
    legacy: LegacyRule = "repair"


CONFIG = DiffusionPolicyInferenceConfig


def train_command(task: str, *, out: str | os.PathLike[str] | None = None) -> str:
    """The command that creates a checkpoint for ``task`` at ``out`` (default: the shipped location)."""
    out = DEFAULT_CHECKPOINT_DIR if out is None else out
    return (f"geo4d-train diffusion_policy --config small --data data/<{task} dataset> [other tasks' datasets] "
            f"--out runs/diffusion_policy --export {out}")


def _checkpoint_tasks(path: Path) -> tuple[Path, tuple[str, ...]] | None:
    """(checkpoint dir, trained tasks) when ``path`` holds a Diffusion Policy checkpoint."""
    try:
        data = read_config_json(path)
    except (CheckpointError, OSError, ValueError):
        return None
    if data.get("format") != DP_FORMAT:
        return None
    return resolve_checkpoint_dir(path), tuple(data.get("tasks", ()))


def find_checkpoint(task: str, checkpoint: str | os.PathLike[str] | None = None) -> Path:
    """The checkpoint directory serving ``task``.

    Args:
        task: canonical task name.
        checkpoint: a checkpoint or run directory; None looks in :data:`DEFAULT_CHECKPOINT_DIR`
            (a multi-task checkpoint there, else its ``<task>/`` sub-directory).

    Raises:
        FileNotFoundError: ``checkpoint`` was given and does not exist.
        PolicyUnavailableError: no checkpoint for ``task`` (missing, not a Diffusion Policy
            checkpoint, or trained on other tasks); the message names the expected path and the
            ``geo4d-train diffusion_policy`` command that creates it.
    """
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.exists():
            raise FileNotFoundError(f"Diffusion Policy checkpoint {path} does not exist; create it with: "
                                    f"{train_command(task, out=path)}")
        found = _checkpoint_tasks(path)
        if found is None:
            raise PolicyUnavailableError(f"{path} is not a Diffusion Policy checkpoint (no config.json of format "
                                         f"{DP_FORMAT!r}, nor a run directory with 'last'); create one with: "
                                         f"{train_command(task, out=path)}")
        if task not in found[1]:
            raise PolicyUnavailableError(f"the Diffusion Policy checkpoint {found[0]} was trained on "
                                         f"{list(found[1])}, not on {task}; train one with: "
                                         f"{train_command(task, out=path)}")
        return found[0]
    candidates = (DEFAULT_CHECKPOINT_DIR, DEFAULT_CHECKPOINT_DIR / task)
    seen = []
    for path in candidates:
        found = _checkpoint_tasks(path)
        if found is None:
            continue
        if task in found[1]:
            return found[0]
        seen.append(f"{found[0]} (trained on {list(found[1])})")
    why = f"; found only {', '.join(seen)}" if seen else ""
    raise PolicyUnavailableError(
        f"no Diffusion Policy checkpoint for {task}: expected {candidates[0]} (multi-task) or {candidates[1]}{why}. "
        f"Create it with: {train_command(task)} (or pass --policy-option checkpoint=PATH)"
    )


class DiffusionPolicy:
    """A trained :class:`DiffusionPolicyModel` acting on two-view observations.

    Args:
        model: the loaded model (eval mode).
        task: canonical task name (must be one of the model's trained tasks).
        checkpoint: where the model came from (reported in diagnostics).
        num_inference_steps: sampler steps (default: the model config's).
        n_action_steps: actions returned per call (default: the model config's, 8).
        scheduler: sampler kind (``ddim``, ``ddpm``, ``dpmsolver++``; default: the config's).
    """

    name = "diffusion_policy"
    uses_cameras = True

    def __init__(self, model: DiffusionPolicyModel, *, task: str, checkpoint: str | os.PathLike[str] | None = None,
                 num_inference_steps: int | None = None, n_action_steps: int | None = None,
                 scheduler: str | None = None) -> None:
        cfg = model.config
        self.model = model
        self.task = model.resolve_task(task)
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.num_inference_steps = int(num_inference_steps or cfg.noise.num_inference_steps)
        self.n_action_steps = int(n_action_steps or cfg.n_action_steps)
        if not 1 <= self.n_action_steps <= cfg.horizon:
            raise ValueError(f"n_action_steps must be in [1, {cfg.horizon}], got {self.n_action_steps}")
        if not 1 <= self.num_inference_steps <= cfg.noise.num_train_timesteps:
            raise ValueError(f"num_inference_steps must be in [1, {cfg.noise.num_train_timesteps}], "
                             f"got {self.num_inference_steps}")
        self.scheduler = scheduler or cfg.noise.inference
        self._task_id = model.task_ids([self.task])
        self._history: list[tuple[float, torch.Tensor, torch.Tensor]] = []
        self._generator = torch.Generator().manual_seed(0)
        self._times: list[float] = []
        self._last_act_step: int | None = None
        self._misses = 0

    def reset(self, *, seed: int) -> None:
        """Forget the episode's observations; seed the sampling noise with ``seed``."""
        self._history = []
        self._times = []
        self._last_act_step = None
        self._misses = 0
        self._generator = torch.Generator().manual_seed(int(seed))

    def _needed_later(self, step: int) -> bool:
        """Whether a later call (every ``n_action_steps`` after the last one) looks back at ``step``."""
        cfg = self.model.config
        if self._last_act_step is None or step <= self._last_act_step:
            return False
        return any((step + k * cfg.obs_stride - self._last_act_step) % self.n_action_steps == 0
                   for k in range(1, cfg.n_obs_steps))

    def observe(self, obs: Observation) -> None:
        """An executed observation (the episode loop shows every one): kept if a later call needs it."""
        step = int(round(float(obs.time) * CONTROL_HZ))
        if self._needed_later(step) and not (self._history and abs(self._history[-1][0] - obs.time) < _TIME_TOLERANCE_S):
            images, state = self._observation_tensors(obs)
            self._history.append((float(obs.time), images, state))

    def _observation_tensors(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.model.config
        views = tuple(obs.eval_cameras[: cfg.num_views])
        if len(views) < cfg.num_views:
            raise ValueError(f"the policy needs {cfg.num_views} evaluation views, the observation has {list(views)}")
        rgb = np.stack([np.asarray(obs.cameras[v].rgb) for v in views])  # (V, H, W, 3) uint8
        # The training loader's own resize (bilinear, antialiased), so pixels match training.
        images = rgb_to_tensor(rgb, tuple(cfg.resolution))
        missing = [a for a in ARM_NAMES if a not in obs.arms]
        if missing:
            raise ValueError(f"the observation lacks arm(s) {missing}")
        vec = poses_to_vectors({a: np.asarray(obs.arms[a].X_TG)[None] for a in ARM_NAMES},
                               {a: np.array([obs.arms[a].width]) for a in ARM_NAMES}, arms=ARM_NAMES)[0]
        state = torch.from_numpy(np.asarray(self.model.normalize("state", vec, task=self.task), dtype=np.float32))
        return images, state

    def _stacked_history(self, now: float) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.model.config
        dt = cfg.obs_stride / CONTROL_HZ
        picked = []
        start = self._history[0][0]
        for k in range(cfg.n_obs_steps - 1, -1, -1):
            target = max(now - k * dt, start)
            older = [i for i, (t, _, _) in enumerate(self._history) if t <= target + _TIME_TOLERANCE_S]
            i = older[-1] if older else 0
            self._misses += int(abs(self._history[i][0] - target) > _TIME_TOLERANCE_S)
            picked.append(i)
        # Keep only what later calls can still pick (the oldest picked entry and newer ones).
        self._history = self._history[picked[0]:]
        picked = [i - picked[0] for i in picked]
        rgb = torch.stack([self._history[i][1] for i in picked], dim=1)  # (V, T, 3, H, W)
        state = torch.stack([self._history[i][2] for i in picked])  # (T, S)
        return rgb, state

    @torch.no_grad()
    def act(self, obs: Observation) -> ActionChunk:
        """Predict ``horizon`` actions from the recent observations; return the first ``n_action_steps``."""
        t0 = time.perf_counter()
        if obs.task and canonical_task_name(obs.task) != self.task:
            raise ValueError(f"this policy was made for {self.task}, the observation is of {obs.task}")
        images, state = self._observation_tensors(obs)
        if self._history and obs.time < self._history[-1][0] - _TIME_TOLERANCE_S:
            raise ValueError(f"observation time went back from {self._history[-1][0]} to {obs.time}: call reset()")
        if not (self._history and abs(self._history[-1][0] - obs.time) < _TIME_TOLERANCE_S):
            self._history.append((float(obs.time), images, state))
        self._last_act_step = int(round(float(obs.time) * CONTROL_HZ))
        rgb, st = self._stacked_history(float(obs.time))
        model = self.model
        dev = model.device
        dtype = next(model.parameters()).dtype
        cond = model.encode_observations(rgb[None].to(dev, dtype), st[None].to(dev, dtype), self._task_id.to(dev))
        sample = model.sample(cond, num_inference_steps=self.num_inference_steps, scheduler=self.scheduler,
                              generator=self._generator)
        actions = model.denormalize("action", sample[0].float().cpu().numpy(), task=self.task)
        X_TG, width = vectors_to_poses(actions[: self.n_action_steps], arms=ARM_NAMES)
        width = {a: np.clip(w, 0.0, GRIPPER_OPEN_WIDTH) for a, w in width.items()}
        self._times.append(time.perf_counter() - t0)
        return ActionChunk(X_TG, width)

    def diagnostics(self) -> Mapping[str, Any]:
        """Inference timing of the episode (seconds per ``act``) and the sampler settings."""
        times = np.asarray(self._times) if self._times else np.zeros(1)
        return {
            "dp_calls": len(self._times),
            "dp_history_misses": self._misses,
            "dp_inference_mean_s": float(times.mean()),
            "dp_inference_max_s": float(times.max()),
            "dp_num_inference_steps": self.num_inference_steps,
            "dp_scheduler": self.scheduler,
            "dp_checkpoint": self.checkpoint,
        }


def preflight(*, task: str, config: DiffusionPolicyInferenceConfig, runtime: dict[str, Any] | None = None) -> None:
    """Rollout-runner hook: refuse a missing checkpoint, one of other tasks, or (``legacy=refuse``)
    a version-1 checkpoint that would need repairing, before any episode.

    Raises:
        PolicyUnavailableError: the message names the expected path and how to make one.
        CheckpointError: ``legacy=refuse`` and a version-1 checkpoint with sub-floor dimensions.
    """
    try:
        path = find_checkpoint(canonical_task_name(task), config.checkpoint)
    except FileNotFoundError as e:
        raise PolicyUnavailableError(str(e)) from e
    if config.legacy == "refuse":
        DiffusionPolicyModel.read_checkpoint_config(path, legacy="refuse")


def checkpoints(config: DiffusionPolicyInferenceConfig, *, task: str) -> dict[str, Path | None]:
    """Provenance hook: the checkpoint ``config`` loads (digested into every run's record)."""
    return {"checkpoint": find_checkpoint(canonical_task_name(task), config.checkpoint)}


def make_policy(*, task: str, config: DiffusionPolicyInferenceConfig | None = None, device: str = "cpu",
                **options: Any) -> DiffusionPolicy:
    """Build the ``diffusion_policy`` policy for ``task`` (the registry's factory).

    Args:
        task: canonical task name.
        config: every setting (default: :data:`CONFIG`'s defaults).
        device: torch device of the model.
        **options: settings overriding ``config`` (``checkpoint=``, ``num_inference_steps=``,
            ``n_action_steps=``, ``scheduler=``, ``legacy=``), as ``--policy-option`` takes them.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        PolicyUnavailableError: no checkpoint for ``task`` (the message says how to make one).
        PolicyOptionError: an unknown option or a value of the wrong type.
    """
    from geo4d_policy.policies.policy_config import configure

    task = canonical_task_name(task)
    config = configure(__name__, config, options, task=task)
    path = find_checkpoint(task, config.checkpoint)
    model = DiffusionPolicyModel.from_pretrained(path, device=device, task=task, legacy=config.legacy)
    return DiffusionPolicy(model, task=task, checkpoint=path, num_inference_steps=config.num_inference_steps,
                           n_action_steps=config.n_action_steps, scheduler=config.scheduler)

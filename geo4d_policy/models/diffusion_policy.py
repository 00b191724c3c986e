"""Diffusion Policy (Chi et al., RSS 2023) for the two-view, two-arm action space: model and checkpoints.

Owns the ``diffusion_policy`` baseline's network and its maths, nothing about data loading or
rollouts:

* :class:`DiffusionPolicyConfig` (typed; the ``model:`` section of
  ``configs/policy/diffusion_policy_<size>.yaml``).
* :class:`ImageEncoder`: a ResNet-style CNN with GroupNorm (batch statistics are unreliable with
  the small, highly correlated batches of imitation learning, as the DP paper found) ending in a
  spatial-softmax keypoint layer (expected image coordinates of learned feature maps). One
  encoder is shared by both views and all observation steps.
* :class:`ConditionalUnet1D`: a 1D temporal U-Net over the action sequence (horizon x 20) whose
  residual blocks are FiLM-modulated by the diffusion-step embedding and the observation
  embedding (both views' features and the low-dimensional state of the ``n_obs_steps`` last
  observation steps, plus a learned task embedding: one checkpoint serves several tasks).
* DDPM training (epsilon prediction, ``squaredcos_cap_v2`` betas, 100 steps) and few-step
  inference (DDIM by default) through diffusers' schedulers, chosen by config.
* :class:`DiffusionPolicyModel`: encoder + U-Net + per-task min/max normalisation statistics,
  ``save_pretrained`` / ``from_pretrained`` checkpoint directories (``config.json`` +
  ``model.safetensors``, :mod:`geo4d_policy.models.checkpoint`).

Action and state vectors follow :mod:`geo4d_policy.data.actions` (per arm: position, 6D rotation,
width; left then right), min/max-scaled to [-1, 1] per task, which is also the range the
schedulers clip predicted samples to; dimensions with (almost) no range are held at their
constant (:data:`~geo4d_policy.data.actions.MIN_RANGE`, :data:`DP_FORMAT_VERSION`).

Pretrained image encoders: nothing is ever downloaded. The encoder's module names mirror
torchvision's ResNet (``conv1``, ``layer1.0.conv1``, ``layer2.0.downsample.0`` ...), with
``norm*`` in place of ``bn*``, so with ResNet-18's widths (``stem_channels: 64, stem_kernel: 7,
stem_pool: true, channels: [64, 128, 256, 512], blocks: [2, 2, 2, 2], imagenet_norm: true``) a
user's local torchvision ResNet-18 file (``.pth`` state dict or ``.safetensors``) initialises it
through :meth:`ImageEncoder.load_pretrained` (``init_image_encoder:`` in the training config,
``--init-image-encoder`` on the command line). BatchNorm affine parameters become the GroupNorm
affine parameters and running statistics are dropped (GroupNorm has none), the approximation the
DP paper made when it swapped the norms of an ImageNet ResNet.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geo4d_policy.config import ConfigError, from_dict, to_dict
from geo4d_policy.data.actions import (
    ACTION_DIM,
    MIN_RANGE,
    action_layout,
    denormalize_minmax,
    held_dims,
    normalize_minmax,
)
from geo4d_policy.interface import ARM_NAMES, TASK_NAMES, canonical_task_name
from geo4d_policy.models.checkpoint import CheckpointError
from geo4d_policy.models.pretrained import LegacyRule, PretrainedModel, checked_trained_tasks
from geo4d_policy.models.shard import Randomness, draw

DP_FORMAT = "geo4d-diffusion-policy"
DP_FORMAT_VERSION = 2
"""2: normalisation holds dimensions whose range is below
:data:`~geo4d_policy.data.actions.MIN_RANGE` at their constant (``config.json`` records the floor
as ``normalization_min_range``). Version-1 checkpoints scaled a 1e-6..1e-3 range by ``2 / range``
and a smaller one by 1; loading one repairs it to the version-2 rule with a
:class:`NormalizationRepairWarning` naming the dimensions (or refuses it: ``legacy="refuse"``)."""

InferenceScheduler = Literal["ddim", "ddpm", "dpmsolver++"]


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ImageEncoderConfig:
    """The ResNet-style image encoder.

    Attributes:
        stem_channels, stem_kernel, stem_stride: the first convolution.
        stem_pool: a 3x3 stride-2 max-pool after the stem (ResNet-18 has one).
        channels: output channels of each stage; every stage but the first halves the resolution.
        blocks: basic residual blocks per stage.
        norm_groups: GroupNorm groups (every channel count must be divisible by it).
        num_keypoints: spatial-softmax keypoints (each gives an expected (x, y)).
        feature_dim: output features per image (a linear map of the 2 * K coordinates).
        imagenet_norm: standardise inputs with ImageNet's mean/std (for ImageNet weights).
    """

    stem_channels: int = 32
    stem_kernel: int = 5
    stem_stride: int = 2
    stem_pool: bool = False
    channels: tuple[int, ...] = (32, 64, 128)
    blocks: tuple[int, ...] = (1, 1, 1)
    norm_groups: int = 8
    num_keypoints: int = 32
    feature_dim: int = 64
    imagenet_norm: bool = False

    def __post_init__(self) -> None:
        if not self.channels or len(self.channels) != len(self.blocks) or min(self.blocks) < 1:
            raise ConfigError(f"ImageEncoderConfig: channels {self.channels} and blocks {self.blocks} must be "
                              "non-empty, of equal length, with >= 1 block per stage")
        bad = [c for c in (self.stem_channels, *self.channels) if c % self.norm_groups]
        if bad:
            raise ConfigError(f"ImageEncoderConfig: channels {bad} are not divisible by "
                              f"norm_groups={self.norm_groups}")


@dataclasses.dataclass
class NoiseSchedulerConfig:
    """Diffusion schedule (diffusers scheduler arguments) and the inference sampler.

    Attributes:
        num_train_timesteps: DDPM training steps (100, as Diffusion Policy).
        beta_schedule: diffusers ``beta_schedule``.
        prediction_type: what the U-Net predicts: ``epsilon`` (noise), ``sample`` or ``v_prediction``.
        clip_sample: clip predicted clean samples to [-1, 1] (the normalised action range).
        inference: the sampler at inference: ``ddim`` (deterministic, few steps), ``ddpm``
            (ancestral, all training steps are typical) or ``dpmsolver++``.
        num_inference_steps: sampler steps (policies may override it).
    """

    num_train_timesteps: int = 100
    beta_schedule: Literal["squaredcos_cap_v2", "linear", "scaled_linear"] = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon"
    clip_sample: bool = True
    inference: InferenceScheduler = "ddim"
    num_inference_steps: int = 10

    def __post_init__(self) -> None:
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ConfigError("NoiseSchedulerConfig: num_inference_steps must be in "
                              f"[1, {self.num_train_timesteps}], "
                              f"got {self.num_inference_steps}")


@dataclasses.dataclass
class DiffusionPolicyConfig:
    """The Diffusion Policy network and its observation/action layout.

    Attributes:
        name: size name (``tiny``, ``small``, ...), informative.
        tasks: task table of the task embedding (the checkpoint records which were trained).
        resolution: (H, W) the RGB observations are resized to before cropping.
        crop_ratio: random crops of this fraction of H and W in training, the centre crop at
            inference (DP's main image augmentation); 1.0 disables cropping.
        color_jitter: training-time colour jitter of each view (the same for all its observation
            steps): ``(brightness, contrast, saturation, hue)``; factors are drawn uniformly from
            ``[1 - x, 1 + x]`` and the hue shift from ``[-x, x]`` turns (fractions of a full
            turn, as torchvision). All zeros (the default) disables it.
        horizon: predicted actions (16).
        n_obs_steps: observation steps the policy conditions on (2).
        n_action_steps: actions executed before replanning (8).
        obs_stride: 10 Hz steps between observation steps. A policy only sees observations when
            it replans, so the default equals ``n_action_steps``: the history the policy gets at
            rollout time is then the history it was trained with.
        action_dim, state_dim: vector sizes (20: :mod:`geo4d_policy.data.actions`).
        num_views: camera views per observation step (reference view n first, then m).
        task_embed_dim: size of the learned task embedding.
        step_embed_dim: size of the diffusion-step embedding.
        cond_dim: the step embedding and observation features are mapped to this size once,
            and each residual block's FiLM layer reads that (keeps FiLM layers small).
        down_dims: U-Net channels per level (the horizon halves between levels).
        kernel_size: temporal convolution kernel.
        norm_groups: GroupNorm groups of the U-Net.
        encoder: the image encoder.
        noise: the diffusion schedule and sampler.
    """

    name: str = "small"
    tasks: tuple[str, ...] = TASK_NAMES
    resolution: tuple[int, int] = (96, 120)
    crop_ratio: float = 0.9
    color_jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8
    obs_stride: int = 8
    action_dim: int = ACTION_DIM
    state_dim: int = ACTION_DIM
    num_views: int = 2
    task_embed_dim: int = 16
    step_embed_dim: int = 64
    cond_dim: int = 128
    down_dims: tuple[int, ...] = (64, 128)
    kernel_size: int = 5
    norm_groups: int = 8
    encoder: ImageEncoderConfig = dataclasses.field(default_factory=ImageEncoderConfig)
    noise: NoiseSchedulerConfig = dataclasses.field(default_factory=NoiseSchedulerConfig)

    def __post_init__(self) -> None:
        self.tasks = tuple(canonical_task_name(t) for t in self.tasks)
        levels = len(self.down_dims)
        if levels < 1 or self.horizon % (2 ** (levels - 1)):
            raise ConfigError(f"DiffusionPolicyConfig: horizon {self.horizon} must be divisible by "
                              f"2^(levels - 1) = {2 ** (levels - 1)} for down_dims {self.down_dims}")
        if not 1 <= self.n_action_steps <= self.horizon:
            raise ConfigError("DiffusionPolicyConfig: n_action_steps must be in [1, horizon], "
                              f"got {self.n_action_steps}")
        if self.n_obs_steps < 1 or self.obs_stride < 1 or self.num_views < 1:
            raise ConfigError("DiffusionPolicyConfig: n_obs_steps, obs_stride and num_views must be >= 1")
        if not 0.0 < self.crop_ratio <= 1.0:
            raise ConfigError(f"DiffusionPolicyConfig.crop_ratio must be in (0, 1], got {self.crop_ratio}")
        jitter = tuple(self.color_jitter)
        if len(jitter) != 4 or min(jitter) < 0 or max(jitter[:3]) > 1 or jitter[3] > 0.5:
            raise ConfigError("DiffusionPolicyConfig.color_jitter must be (brightness, contrast, saturation, hue) "
                              f"with the first three in [0, 1] and hue in [0, 0.5], got {self.color_jitter}")
        bad = [c for c in self.down_dims if c % self.norm_groups]
        if bad:
            raise ConfigError(f"DiffusionPolicyConfig: down_dims {bad} are not divisible by "
                              f"norm_groups={self.norm_groups}")

    @property
    def crop_size(self) -> tuple[int, int]:
        """(h, w) of the crops the encoder sees."""
        return tuple(max(8, round(s * self.crop_ratio)) for s in self.resolution)  # type: ignore[return-value]

    @property
    def obs_feature_dim(self) -> int:
        """Size of the observation embedding (before the task embedding)."""
        return self.n_obs_steps * (self.num_views * self.encoder.feature_dim + self.state_dim)


def dp_config_from_dict(data: Mapping[str, Any]) -> DiffusionPolicyConfig:
    """A :class:`DiffusionPolicyConfig` from its plain form (checks keys and types)."""
    return from_dict(DiffusionPolicyConfig, dict(data))


# --------------------------------------------------------------------------------------------
# Image encoder
# --------------------------------------------------------------------------------------------


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions) with GroupNorm; torchvision's module names."""

    def __init__(self, cin: int, cout: int, *, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _group_norm(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = _group_norm(cout, groups)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                            _group_norm(cout, groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.relu(h + (x if self.downsample is None else self.downsample(x)))


class SpatialSoftmax(nn.Module):
    """Keypoints: a 1x1 conv to K maps, softmax over pixels, expected (x, y) in [-1, 1] per map.

    The temperature is learned (log-parametrised). Output: (N, 2 * K), x and y interleaved.
    """

    def __init__(self, in_channels: int, num_keypoints: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, num_keypoints, 1)
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        logits = self.proj(x).flatten(2).float() / self.log_temperature.float().exp()  # (N, K, HW)
        attn = logits.softmax(-1)
        ys = torch.linspace(-1.0, 1.0, h, device=x.device)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(h * w, 2)  # (HW, (x, y))
        return (attn @ grid).reshape(n, -1)


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageEncoder(nn.Module):
    """RGB in [-1, 1] (N, 3, H, W) -> features (N, feature_dim); any H, W (>= 8 after the stem).

    Args:
        config: the encoder's config.
    """

    def __init__(self, config: ImageEncoderConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.conv1 = nn.Conv2d(3, c.stem_channels, c.stem_kernel, stride=c.stem_stride,
                               padding=c.stem_kernel // 2, bias=False)
        self.norm1 = _group_norm(c.stem_channels, c.norm_groups)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1) if c.stem_pool else nn.Identity()
        cin = c.stem_channels
        for i, (cout, n_blocks) in enumerate(zip(c.channels, c.blocks)):
            blocks = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(cin, cout, stride=stride, groups=c.norm_groups))
                cin = cout
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.keypoints = SpatialSoftmax(cin, c.num_keypoints)
        self.out = nn.Linear(2 * c.num_keypoints, c.feature_dim)
        self.register_buffer("_mean", torch.tensor(_IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(_IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.imagenet_norm:
            x = ((x + 1.0) * 0.5 - self._mean) / self._std
        h = self.pool(F.relu(self.norm1(self.conv1(x))))
        for i in range(len(self.config.channels)):
            h = getattr(self, f"layer{i + 1}")(h)
        return self.out(self.keypoints(h))

    def load_pretrained(self, path: str | os.PathLike[str]) -> dict[str, list[str]]:
        """Initialise from a local weights file: this encoder's own keys or torchvision ResNet keys.

        ``bn*`` keys are renamed to ``norm*`` (BatchNorm affine -> GroupNorm affine); running
        statistics, ``num_batches_tracked`` and the classifier ``fc.*`` are skipped, as are this
        encoder's own head (keypoints, output layer) when absent from the file.

        Args:
            path: ``.safetensors`` or a ``torch.save``'d state dict (``.pth``/``.pt``; a dict
                holding it under ``state_dict`` or ``model`` is accepted). Never downloaded.

        Returns:
            ``{"loaded": [...], "skipped": [...]}`` key lists (file keys, after renaming).

        Raises:
            FileNotFoundError: ``path`` does not exist.
            CheckpointError: a tensor's shape differs from the encoder's, or no key matched.
        """
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"pretrained image-encoder weights not found: {p} (they are never downloaded)")
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Mapping[str, Any] = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
            for key in ("state_dict", "model"):
                if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
                    state = state[key]
        own = self.state_dict()
        loaded, skipped, wrong = [], [], []
        new_state = dict(own)
        for key, value in state.items():
            name = re.sub(r"(^|\.)bn(\d)", r"\1norm\2", key)
            if name not in own or not isinstance(value, torch.Tensor):
                skipped.append(name)
                continue
            if tuple(value.shape) != tuple(own[name].shape):
                wrong.append(f"{name}: file {tuple(value.shape)} vs encoder {tuple(own[name].shape)}")
                continue
            new_state[name] = value.to(own[name].dtype)
            loaded.append(name)
        if wrong:
            raise CheckpointError(f"{p}: tensor shapes do not match the image encoder config:\n  "
                                  + "\n  ".join(wrong[:10]))
        if not loaded:
            raise CheckpointError(f"{p}: no tensor matches the image encoder (keys like {list(own)[:3]})")
        self.load_state_dict(new_state)
        return {"loaded": loaded, "skipped": skipped}


# --------------------------------------------------------------------------------------------
# Conditional 1D U-Net
# --------------------------------------------------------------------------------------------


class SinusoidalEmbedding(nn.Module):
    """Diffusion step (N,) -> (N, dim) sin/cos features at geometric frequencies."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"the step embedding size must be even, got {dim}")
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
        arg = t.float()[:, None] * freqs[None]
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish."""

    def __init__(self, cin: int, cout: int, *, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel_size, padding=kernel_size // 2)
        self.norm = nn.GroupNorm(groups, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.mish(self.norm(self.conv(x)))


class FiLMResBlock1d(nn.Module):
    """Two conv blocks; the first's output is scaled and shifted by a function of the condition."""

    def __init__(self, cin: int, cout: int, *, cond_dim: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.block1 = Conv1dBlock(cin, cout, kernel_size=kernel_size, groups=groups)
        self.block2 = Conv1dBlock(cout, cout, kernel_size=kernel_size, groups=groups)
        self.film = nn.Linear(cond_dim, 2 * cout)
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(F.mish(cond)).unsqueeze(-1).chunk(2, dim=1)
        # (1 + scale): a zero FiLM output is the identity, so the block starts unmodulated.
        h = self.block1(x) * (1.0 + scale) + shift
        return self.block2(h) + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """Noisy action sequences (B, T, A) + step (B,) + condition (B, C) -> (B, T, A).

    Levels of two FiLM residual blocks each, a strided conv between levels, one middle block;
    on the way up each level upsamples (transposed conv) and concatenates the skip of the same
    length.

    Args:
        action_dim: A.
        cond_dim: C, the observation (+ task) embedding size.
        down_dims: channels per level.
        kernel_size, groups: temporal convolutions.
        step_embed_dim: diffusion-step embedding size.
        film_dim: the step embedding and C are mapped to this size once (shared by all blocks).
    """

    def __init__(self, *, action_dim: int, cond_dim: int, down_dims: Sequence[int], kernel_size: int,
                 groups: int, step_embed_dim: int, film_dim: int) -> None:
        super().__init__()
        d = step_embed_dim
        self.step_embed = nn.Sequential(SinusoidalEmbedding(d), nn.Linear(d, 4 * d), nn.Mish(), nn.Linear(4 * d, d))
        self.cond_proj = nn.Linear(d + cond_dim, film_dim)
        kw = {"cond_dim": film_dim, "kernel_size": kernel_size, "groups": groups}
        dims = [action_dim, *down_dims]
        self.down = nn.ModuleList()
        for i in range(len(down_dims)):
            self.down.append(nn.ModuleList([
                FiLMResBlock1d(dims[i], dims[i + 1], **kw),
                FiLMResBlock1d(dims[i + 1], dims[i + 1], **kw),
            ]))
        self.downsample = nn.ModuleList(
            nn.Conv1d(c, c, 3, stride=2, padding=1) for c in down_dims[:-1]
        )
        self.mid = FiLMResBlock1d(down_dims[-1], down_dims[-1], **kw)
        self.upsample = nn.ModuleList()
        self.up = nn.ModuleList()
        for i in reversed(range(len(down_dims) - 1)):
            self.upsample.append(nn.ConvTranspose1d(down_dims[i + 1], down_dims[i + 1], 4, stride=2, padding=1))
            self.up.append(nn.ModuleList([
                FiLMResBlock1d(down_dims[i + 1] + down_dims[i], down_dims[i], **kw),
                FiLMResBlock1d(down_dims[i], down_dims[i], **kw),
            ]))
        self.final = nn.Sequential(Conv1dBlock(down_dims[0], down_dims[0], kernel_size=kernel_size, groups=groups),
                                   nn.Conv1d(down_dims[0], action_dim, 1))

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        t = torch.as_tensor(timestep, device=x.device).reshape(-1).expand(b)
        c = self.cond_proj(torch.cat([self.step_embed(t).to(cond.dtype), cond], dim=-1))
        h = x.transpose(1, 2)
        skips = []
        for i, (r1, r2) in enumerate(self.down):
            h = r2(r1(h, c), c)
            if i < len(self.downsample):
                skips.append(h)
                h = self.downsample[i](h)
        h = self.mid(h, c)
        for up, (r1, r2) in zip(self.upsample, self.up):
            h = torch.cat([up(h), skips.pop()], dim=1)
            h = r2(r1(h, c), c)
        return self.final(h).transpose(1, 2)


# --------------------------------------------------------------------------------------------
# Schedulers
# --------------------------------------------------------------------------------------------


def make_scheduler(config: NoiseSchedulerConfig, *, kind: Literal["ddpm", "ddim", "dpmsolver++"]) -> Any:
    """A fresh diffusers scheduler of ``kind`` with the config's training schedule.

    Training always uses DDPM's forward process (``add_noise``); every kind shares its betas,
    so any of them samples a model trained with it.
    """
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    common = {"num_train_timesteps": config.num_train_timesteps, "beta_schedule": config.beta_schedule,
              "prediction_type": config.prediction_type}
    if kind == "ddpm":
        return DDPMScheduler(**common, clip_sample=config.clip_sample, variance_type="fixed_small")
    if kind == "ddim":
        return DDIMScheduler(**common, clip_sample=config.clip_sample, set_alpha_to_one=True)
    if kind == "dpmsolver++":
        # No clip_sample option; thresholding at 1.0 keeps predicted samples in the action range.
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++",
                                           thresholding=config.clip_sample, sample_max_value=1.0)
    raise ValueError(f"unknown scheduler {kind!r}; valid: ddpm, ddim, dpmsolver++")


# --------------------------------------------------------------------------------------------
# The policy network
# --------------------------------------------------------------------------------------------


def _crop(x: torch.Tensor, size: tuple[int, int], *, generator: Randomness) -> torch.Tensor:
    """Crop (N, C, H, W) to ``size``: random per image with a generator (images as rows of the
    batch, see :mod:`geo4d_policy.models.shard`), else centred."""
    n, _, h, w = x.shape
    ch, cw = size
    if (ch, cw) == (h, w):
        return x
    if generator is None:
        top, left = (h - ch) // 2, (w - cw) // 2
        return x[:, :, top:top + ch, left:left + cw]
    top = draw(functools.partial(torch.randint, 0, h - ch + 1), (n,), generator, device="cpu").to(x.device)
    left = draw(functools.partial(torch.randint, 0, w - cw + 1), (n,), generator, device="cpu").to(x.device)
    rows = (top[:, None] + torch.arange(ch, device=x.device))[:, :, None]  # (N, ch, 1)
    cols = (left[:, None] + torch.arange(cw, device=x.device))[:, None, :]  # (N, 1, cw)
    idx = torch.arange(n, device=x.device)[:, None, None]
    # One gather for all images: (N, ch, cw, C) -> (N, C, ch, cw).
    return x.permute(0, 2, 3, 1)[idx, rows, cols].permute(0, 3, 1, 2)


_LUMA = (0.299, 0.587, 0.114)


def color_jitter(x: torch.Tensor, strength: Sequence[float], *, generator: Randomness, group: int = 1
                 ) -> torch.Tensor:
    """Random brightness, contrast, saturation and hue of RGB images (N, 3, H, W) in [-1, 1].

    Args:
        strength: ``(brightness, contrast, saturation, hue)`` as
            :attr:`DiffusionPolicyConfig.color_jitter`.
        generator: CPU RNG of the factors, or a :class:`~geo4d_policy.models.shard.BatchShard`
            of one (groups as rows of the global batch: the same factors whatever the number of
            processes).
        group: consecutive images sharing one draw (a view's observation steps).
    """
    n = x.shape[0]
    if n % group:
        raise ValueError(f"{n} images do not split into groups of {group}")

    def factor(mag: float) -> torch.Tensor:
        u = draw(torch.rand, (n // group,), generator, device="cpu").to(x.device, torch.float32) * 2.0 - 1.0
        return (u * mag).repeat_interleave(group).reshape(n, 1, 1, 1)

    bright, contrast, sat, hue = (float(v) for v in strength)
    img = (x.float() + 1.0) * 0.5
    luma = img.new_tensor(_LUMA).reshape(1, 3, 1, 1)
    if bright > 0:
        img = (img * (1.0 + factor(bright))).clamp(0.0, 1.0)
    if contrast > 0:
        mean = (img * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        img = ((img - mean) * (1.0 + factor(contrast)) + mean).clamp(0.0, 1.0)
    if sat > 0:
        gray = (img * luma).sum(1, keepdim=True)
        img = ((img - gray) * (1.0 + factor(sat)) + gray).clamp(0.0, 1.0)
    if hue > 0:
        # A rotation of the chroma plane of YIQ by the hue shift (in turns).
        to_yiq = img.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
        yiq = torch.einsum("ij,njhw->nihw", to_yiq, img)
        angle = factor(hue)[:, 0, 0, 0] * 2.0 * math.pi
        cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
        i, q = yiq[:, 1], yiq[:, 2]
        yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
        img = torch.einsum("ij,njhw->nihw", torch.linalg.inv(to_yiq), yiq).clamp(0.0, 1.0)
    return (img * 2.0 - 1.0).to(x.dtype)


class NormalizationRepairWarning(UserWarning):
    """A checkpoint's normalisation had dimensions below the floor that it did not hold."""


class DiffusionPolicyModel(PretrainedModel):
    """Image encoder + conditional U-Net + per-task normalisation statistics.

    Args:
        config: the network config.
        trained_tasks: tasks this model is trained on (default: all of ``config.tasks``).
        normalization: task -> ``{"action": {"min", "max"}, "state": {"min", "max"}}`` (lists
            of ``action_dim`` / ``state_dim`` floats); identity scaling for tasks without it.
            Dimensions whose range is below :data:`~geo4d_policy.data.actions.MIN_RANGE` are
            held: they normalise to 0 and denormalise to their constant whatever the network
            outputs (an idle arm stays exactly where the demonstrations kept it). The network
            is still trained to predict their noise (a target of 0), so that at sampling time
            those input channels evolve as in training and do not disturb the others.
    """

    def __init__(self, config: DiffusionPolicyConfig, *, trained_tasks: Sequence[str] | None = None,
                 normalization: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        super().__init__()
        self.config = dp_config_from_dict(to_dict(config))
        cfg = self.config
        self.trained_tasks = checked_trained_tasks(trained_tasks or cfg.tasks, cfg.tasks)
        self.normalization: dict[str, dict[str, Any]] = {
            canonical_task_name(t): {k: {"min": list(map(float, v["min"])), "max": list(map(float, v["max"]))}
                                     for k, v in s.items() if k in ("action", "state")}
            for t, s in (normalization or {}).items()
        }
        self.encoder = ImageEncoder(cfg.encoder)
        self.task_embed = nn.Embedding(len(cfg.tasks), cfg.task_embed_dim)
        self.unet = ConditionalUnet1D(
            action_dim=cfg.action_dim, cond_dim=cfg.obs_feature_dim + cfg.task_embed_dim, down_dims=cfg.down_dims,
            kernel_size=cfg.kernel_size, groups=cfg.norm_groups, step_embed_dim=cfg.step_embed_dim,
            film_dim=cfg.cond_dim,
        )
        self.train_scheduler = make_scheduler(cfg.noise, kind="ddpm")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---------------------------------------------------------------------------------------
    # Normalisation and tasks
    # ---------------------------------------------------------------------------------------

    def task_ids(self, tasks: Sequence[str], *, device: torch.device | str | None = None) -> torch.Tensor:
        """Indices in the task table of ``tasks`` (canonical names)."""
        return torch.tensor([self.config.tasks.index(canonical_task_name(t)) for t in tasks], dtype=torch.long,
                            device=device if device is not None else self.device)

    def held_dims(self, kind: Literal["action", "state"], *, task: str) -> list[str]:
        """Names of ``task``'s ``kind`` dimensions held at their constant (see the class docstring)."""
        stats = self.normalization.get(canonical_task_name(task))
        if stats is None:
            return []
        layout = action_layout(ARM_NAMES)
        return [layout[i] for i in np.flatnonzero(held_dims(stats[kind]))]

    def normalize(self, kind: Literal["action", "state"], x: Any, *, task: str) -> Any:
        """Scale ``x`` to [-1, 1] with ``task``'s ``kind`` statistics (identity without them)."""
        stats = self.normalization.get(canonical_task_name(task))
        return x if stats is None else normalize_minmax(x, stats[kind])

    def denormalize(self, kind: Literal["action", "state"], y: Any, *, task: str) -> Any:
        """Inverse of :meth:`normalize`."""
        stats = self.normalization.get(canonical_task_name(task))
        return y if stats is None else denormalize_minmax(y, stats[kind])

    # ---------------------------------------------------------------------------------------
    # Conditioning, loss, sampling
    # ---------------------------------------------------------------------------------------

    def encode_observations(self, rgb: torch.Tensor, state: torch.Tensor, task_ids: torch.Tensor, *,
                            generator: Randomness = None) -> torch.Tensor:
        """The U-Net's condition (B, obs_feature_dim + task_embed_dim).

        Args:
            rgb: (B, V, T, 3, H, W) in [-1, 1] at ``config.resolution``; V views (n first), T
                observation steps (oldest first).
            state: (B, T, state_dim) normalised.
            task_ids: (B,) task-table indices.
            generator: random crops and colour jitter when given (training); otherwise the centre
                crop, unjittered.
        """
        cfg = self.config
        b, v, t = rgb.shape[:3]
        if (v, t) != (cfg.num_views, cfg.n_obs_steps) or state.shape[1:] != (cfg.n_obs_steps, cfg.state_dim):
            raise ValueError(f"expected rgb (B, {cfg.num_views}, {cfg.n_obs_steps}, 3, H, W) and state "
                             f"(B, {cfg.n_obs_steps}, {cfg.state_dim}), got {tuple(rgb.shape)}, {tuple(state.shape)}")
        images = _crop(rgb.reshape(b * v * t, *rgb.shape[3:]), cfg.crop_size, generator=generator)
        if generator is not None and any(cfg.color_jitter):
            images = color_jitter(images, cfg.color_jitter, generator=generator, group=t)
        feats = self.encoder(images).reshape(b, v, t, -1).permute(0, 2, 1, 3).reshape(b, t, -1)  # (B, T, V*F)
        obs = torch.cat([feats, state.to(feats.dtype)], dim=-1).reshape(b, -1)
        return torch.cat([obs, self.task_embed(task_ids).to(obs.dtype)], dim=-1)

    def batch_task_ids(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """``task_id`` of a batch, or its ``task`` names, or the single trained task."""
        b = batch["action"].shape[0]
        if "task_id" in batch:
            return torch.as_tensor(batch["task_id"], device=self.device).long().reshape(b)
        if "task" in batch:
            return self.task_ids(list(batch["task"]))
        return self.task_ids([self.resolve_task(None)] * b)

    def training_loss(self, batch: Mapping[str, Any], *, generator: Randomness = None
                      ) -> tuple[torch.Tensor, dict[str, float]]:
        """DDPM loss of a :class:`~geo4d_policy.data.datasets.PolicyDataset` batch (normalised).

        Batch keys: ``rgb`` (B, V, T, 3, H, W), ``state`` (B, T, S), ``action`` (B, horizon, A),
        and ``task_id`` (B,) or ``task`` names (else the single trained task). Padded actions
        past an episode's end (repeats of its last command) are trained on: holding still at
        the end is the demonstrated behaviour.

        Args:
            generator: CPU RNG for crops, timesteps and noise, or a
                :class:`~geo4d_policy.models.shard.BatchShard` of one (several processes).
        """
        action = batch["action"]
        b = action.shape[0]
        cond = self.encode_observations(batch["rgb"], batch["state"], self.batch_task_ids(batch), generator=generator)
        sched = self.train_scheduler
        t = draw(functools.partial(torch.randint, 0, sched.config.num_train_timesteps), (b,), generator,
                 device="cpu").to(action.device)
        noise = draw(torch.randn, action.shape, generator, device="cpu").to(action.device, action.dtype)
        noisy = sched.add_noise(action, noise, t)
        pred = self.unet(noisy, t, cond).float()
        kind = self.config.noise.prediction_type
        target = noise if kind == "epsilon" else action if kind == "sample" else sched.get_velocity(action, noise, t)
        loss = F.mse_loss(pred, target.float())
        return loss, {"loss": float(loss.detach())}

    def forward(self, batch: Mapping[str, Any], *, generator: Randomness = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
        """Same as :meth:`training_loss` (the interface the training loop calls)."""
        return self.training_loss(batch, generator=generator)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, *, num_inference_steps: int | None = None,
               scheduler: InferenceScheduler | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Denoise action sequences (B, horizon, action_dim), normalised, for condition ``cond``.

        Args:
            cond: output of :meth:`encode_observations`.
            num_inference_steps: sampler steps (default: the config's).
            scheduler: sampler kind (default: the config's ``noise.inference``).
            generator: CPU RNG of the initial noise and of stochastic samplers (seeded sampling).
        """
        cfg = self.config
        steps = num_inference_steps or cfg.noise.num_inference_steps
        sched = make_scheduler(cfg.noise, kind=scheduler or cfg.noise.inference)
        sched.set_timesteps(steps)
        b = cond.shape[0]
        x = torch.randn((b, cfg.horizon, cfg.action_dim), generator=generator).to(cond.device, cond.dtype)
        x = x * sched.init_noise_sigma
        for t in sched.timesteps:
            out = self.unet(sched.scale_model_input(x, t), t.to(cond.device), cond)
            # Stochastic samplers (DDPM) draw from the CPU generator; diffusers moves the noise.
            x = sched.step(out.to(x.dtype), t, x, generator=generator).prev_sample
        return x

    # ---------------------------------------------------------------------------------------
    # Save / load
    # ---------------------------------------------------------------------------------------

    checkpoint_format = DP_FORMAT
    format_version = DP_FORMAT_VERSION
    legacy_versions = (1,)
    family = "Diffusion Policy"
    config_type = DiffusionPolicyConfig
    task_conditioned = True

    def checkpoint_fields(self) -> dict[str, Any]:
        return {"normalization": self.normalization, "normalization_min_range": MIN_RANGE}

    @classmethod
    def init_kwargs(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        return {**super().init_kwargs(data), "normalization": data.get("normalization")}

    @classmethod
    def check_checkpoint_config(cls, data: dict[str, Any], *, where: Path, legacy: LegacyRule) -> dict[str, Any]:
        """Version 2 must record this code's floor; a version-1 checkpoint whose normalisation has
        dimensions below the floor (zero-range ones included) is repaired to the held rule with a
        :class:`NormalizationRepairWarning` naming its task, kind and dimensions, or refused
        (``legacy="refuse"``). A version-1 checkpoint without such dimensions loads unchanged."""
        if data.get("version") == DP_FORMAT_VERSION:
            if data.get("normalization_min_range") != MIN_RANGE:
                raise CheckpointError(f"{where}: normalisation floor {data.get('normalization_min_range')}, this "
                                      f"code holds dimensions below {MIN_RANGE}; retrain or convert the checkpoint")
            return data
        below = _below_floor(data.get("normalization") or {})
        if below:
            what = "; ".join(f"{t} {kind}: {', '.join(names)}" for (t, kind), names in below.items())
            if legacy == "refuse":
                raise CheckpointError(f"{where}: a version-1 checkpoint whose normalisation scales dimensions "
                                      f"with a range below {MIN_RANGE} (float noise or zero): {what}")
            warnings.warn(f"{where}: version-1 normalisation repaired: these dimensions had a range below "
                          f"{MIN_RANGE} and are now held at their constant (the network's outputs for them "
                          f"are ignored, their state inputs are 0): {what}", NormalizationRepairWarning,
                          stacklevel=4)
        return {**data, "version": DP_FORMAT_VERSION, "normalization_min_range": MIN_RANGE}


def _below_floor(normalization: Mapping[str, Mapping[str, Any]]) -> dict[tuple[str, str], list[str]]:
    """(task, kind) -> names of the dimensions whose range is below the floor."""
    layout = action_layout(ARM_NAMES)
    out = {}
    for task, stats in normalization.items():
        for kind in ("action", "state"):
            if kind in stats:
                held = np.flatnonzero(held_dims(stats[kind]))
                if len(held):
                    out[(task, kind)] = [layout[i] if i < len(layout) else str(i) for i in held]
    return out


def parameter_counts(model: DiffusionPolicyModel) -> dict[str, int]:
    """Parameters of the image encoder, the U-Net, the task embedding and in total."""
    parts = {"encoder": model.encoder, "unet": model.unet, "task_embed": model.task_embed, "total": model}
    return {name: sum(p.numel() for p in m.parameters()) for name, m in parts.items()}

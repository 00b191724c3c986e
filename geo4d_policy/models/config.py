"""Typed model configs of the 4D generator: VAEs, spatio-temporal U-Net, EDM, the whole model.

``configs/model/{tiny,small,paper}.yaml`` load into :class:`GeneratorConfig` through
:func:`load_model_config`; the resolved config is saved inside every checkpoint's
``config.json`` (:mod:`geo4d_policy.models.checkpoint`). Plain dataclasses only (no torch), so
the CLI can read and validate configs without importing diffusers.

Sizes (parameter counts measured by ``scripts/bench_generator.py``):

* ``tiny``: tests and CI. Fast to build, not meant to generate anything useful.
* ``small``: the model trained on the GPU machine and shipped for CPU inference.
* ``paper``: SVD-sized U-Net and SD-sized VAEs at 256x320 (32x40 latents); for users with
  local SVD weights (:func:`geo4d_policy.models.generator.load_svd_unet_weights`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from geo4d_policy.config import CONFIG_DIR, ConfigError, from_dict, load_config, to_dict
from geo4d_policy.interface import TASK_NAMES

MODEL_CONFIG_DIR = CONFIG_DIR / "model"

NUM_ADDED_TIME_IDS = 3
"""``added_time_ids`` per clip: (fps, motion bucket, conditioning noise-augmentation strength)."""


VAE_CODECS = ("kl", "patch")


@dataclasses.dataclass
class VAEConfig:
    """A diffusers ``AutoencoderKL`` with 8x spatial downsampling plus its latent normalisation.

    ``shift_factor``/``scaling_factor`` map raw posterior means to zero-mean latents whose
    standard deviation is the EDM ``sigma_data`` (0.5), as the preconditioning assumes:
    ``z = (mean - shift_factor) * scaling_factor``. They are measured on data when a VAE
    checkpoint is written (:meth:`geo4d_policy.models.vae.VAE.calibrate`) and stored in it.

    ``gripper_loss_weight`` / ``edge_loss_weight`` weigh the reconstruction loss of pixels on
    or next to a gripper (dilated by 2 px) and, for pointmaps, pixels at depth discontinuities:
    the tracker registers the gripper model on exactly those points, and an autoencoder that
    blurs them caps every generator built on it (training-only; inference ignores them).

    ``codec``: ``"kl"`` (the learned autoencoder) or ``"patch"``: no network, each 8x8 patch's
    values stacked as channels (pixel unshuffle; ``latent_channels = in_channels * 64``), exact
    up to the latents' storage precision. A patch codec has nothing to train; only its latent
    normalisation is measured on data. The architecture fields are then unused (the four levels
    still fix the 8x grid).
    """

    block_out_channels: tuple[int, ...] = (32, 64, 128, 128)
    layers_per_block: int = 1
    norm_num_groups: int = 32
    latent_channels: int = 4
    in_channels: int = 3
    mid_block_add_attention: bool = True
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    kl_weight: float = 1e-6
    gripper_loss_weight: float = 1.0
    edge_loss_weight: float = 1.0
    codec: str = "kl"

    def __post_init__(self) -> None:
        if self.codec not in VAE_CODECS:
            raise ConfigError(f"VAEConfig.codec must be one of {list(VAE_CODECS)}, got {self.codec!r}")
        if self.gripper_loss_weight < 1.0 or self.edge_loss_weight < 1.0:
            raise ConfigError("VAEConfig: gripper_loss_weight and edge_loss_weight must be >= 1")
        if len(self.block_out_channels) != 4:
            raise ConfigError(
                "VAEConfig.block_out_channels needs 4 levels (8x downsampling), "
                f"got {self.block_out_channels}"
            )
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ConfigError(
                f"VAEConfig: channels {bad} are not divisible by norm_num_groups={self.norm_num_groups}"
            )
        if not self.scaling_factor > 0:
            raise ConfigError(f"VAEConfig.scaling_factor must be > 0, got {self.scaling_factor}")
        patch = self.in_channels * self.downsample_factor**2
        if self.codec == "patch" and self.latent_channels != patch:
            raise ConfigError(f"VAEConfig: a patch codec of {self.in_channels}-channel frames at "
                              f"{self.downsample_factor}x has latent_channels={patch}, got {self.latent_channels}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclasses.dataclass
class UNetConfig:
    """The diffusers ``UNetSpatioTemporalConditionModel`` building blocks of :class:`Geo4DUNet`.

    The last level uses plain spatio-temporal ResNet blocks, every other level cross-attention
    blocks (the SVD layout). Channels must be multiples of 32 (diffusers hard-wires 32 groups).
    ``xattn_head_dim`` sets the heads of the cross-view attention layers (channels / head dim).
    ``fine_pointmap_channels`` > 0 adds the full-resolution pointmap path
    (:mod:`geo4d_policy.models.fine_pointmap`; patch codec only) with that many channels.
    """

    block_out_channels: tuple[int, ...] = (64, 128, 256)
    layers_per_block: int = 1
    num_attention_heads: tuple[int, ...] = (2, 4, 8)
    cross_attention_dim: int = 256
    transformer_layers_per_block: int = 1
    addition_time_embed_dim: int = 32
    xattn_head_dim: int = 32
    fine_pointmap_channels: int = 0

    def __post_init__(self) -> None:
        n = len(self.block_out_channels)
        if self.fine_pointmap_channels < 0 or self.fine_pointmap_channels % 32:
            raise ConfigError("UNetConfig.fine_pointmap_channels must be 0 (off) or a positive multiple of 32, "
                              f"got {self.fine_pointmap_channels}")
        if n < 2:
            raise ConfigError("UNetConfig.block_out_channels needs at least 2 levels")
        if len(self.num_attention_heads) != n:
            raise ConfigError(
                f"UNetConfig.num_attention_heads has {len(self.num_attention_heads)} entries, "
                f"block_out_channels {n}"
            )
        bad = [c for c in self.block_out_channels if c % 32 or c % self.xattn_head_dim]
        if bad:
            raise ConfigError(
                f"UNetConfig: channels {bad} must be multiples of 32 and of "
                f"xattn_head_dim={self.xattn_head_dim}"
            )


@dataclasses.dataclass
class EDMConfig:
    """EDM (Karras et al. 2022) training and sampling settings.

    Training draws one ``ln sigma ~ N(p_mean, p_std)`` per clip (the official release's
    ``p_mean=1.0, p_std=1.6``, SVD-like, noisier than EDM's image default). The loss is the
    EDM-weighted x0 error, RGB (both views) plus ``pointmap_loss_weight`` times the pointmap
    error (view n and view m->n), multiplied by ``gripper_loss_weight`` on latent cells that
    touch the gripper. Pointmap latent cells are weighted by the valid fraction of their 8x8
    pixel block, floored at ``invalid_latent_weight`` (see :func:`geo4d_policy.models.edm.latent_weights`).

    ``cond_drop_prob`` > 0 trains the unconditional model used by classifier-free guidance;
    ``guidance_scale`` 1.0 (the default) switches guidance off at sampling.

    ``residual`` diffuses the change from the conditioning frame (``x0 - cond``, every view and
    channel) instead of the frames themselves: a network that outputs nothing then predicts
    "the scene stays as it is", and its capacity goes to what moves. The change has a smaller
    spread than the frames (latent std 0.06-0.24 against 0.5 on our data), so ``sigma_data``,
    ``p_mean`` and ``sigma_max`` should shrink with it. It needs the conditioning, so it
    excludes classifier-free guidance training (``cond_drop_prob`` > 0).

    ``change_scale`` multiplies the change of each group (RGB n, RGB m, pointmap n, pointmap m)
    before it is diffused, so that a group with a small spread is not drowned by noise levels
    that suit the others (EDM assumes one ``sigma_data`` for every element): a group scaled by k
    keeps its structure up to k times the noise level and weighs k^2 times as much in the loss.
    """

    sigma_data: float = 0.5
    p_mean: float = 1.0
    p_std: float = 1.6
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    num_steps: int = 25
    pointmap_loss_weight: float = 1.0
    gripper_loss_weight: float = 2.0
    invalid_latent_weight: float = 0.1
    cond_drop_prob: float = 0.0
    guidance_scale: float = 1.0
    cond_noise_aug: float = 0.0
    residual: bool = False
    change_scale: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        self.change_scale = tuple(float(x) for x in self.change_scale)
        if len(self.change_scale) != 4 or not all(math.isfinite(x) and x > 0 for x in self.change_scale):
            raise ConfigError(
                "EDMConfig.change_scale needs four positive numbers (RGB n, RGB m, pointmap n, pointmap m), "
                f"got {self.change_scale}"
            )
        if self.change_scale != (1.0, 1.0, 1.0, 1.0) and not self.residual:
            raise ConfigError("EDMConfig.change_scale scales residual targets; set residual: true or drop it")
        if self.residual and self.cond_drop_prob > 0:
            raise ConfigError(
                "EDMConfig.residual diffuses the change from the conditioning frame; it cannot be "
                "trained with cond_drop_prob > 0 (an unconditional clip has no frame to change from)"
            )
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError(
                f"EDMConfig needs 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}"
            )
        if self.num_steps < 1:
            raise ConfigError("EDMConfig.num_steps must be >= 1")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ConfigError("EDMConfig.cond_drop_prob must be in [0, 1)")


@dataclasses.dataclass
class GeneratorConfig:
    """The geometry-aware 4D generator: what ``configs/model/<name>.yaml`` holds.

    Attributes:
        name: size name (tiny/small/paper), informative only.
        height, width: pixel resolution of the model (multiples of 8); other inputs are resized.
        num_frames: predicted frames per clip (at ``fps``).
        fps: frame rate of the predicted video; one of the ``added_time_ids``.
        use_pointmaps: False gives the RGB-only variant (U-Net in 8 / out 4 channels), which is
            also the Dreamitate baseline generator.
        cross_view_attention: the cross-attention from branch m's decoder to branch n's
            (off = the paper's "w/o MV attn" ablation).
        separate_decoders: branch m has its own decoder weights (the paper); False shares the
            reference decoder between views (the plain "SVD" stereo baseline).
        tasks: the task vocabulary of the task-embedding table (multi-task ready). Which
            tasks a checkpoint was trained on is recorded in the checkpoint, not here.
        pointmap_range: metric range ``[lo, hi]`` (every axis, metres) mapped affinely to [-1, 1]
            before the pointmap VAE (the official release uses [-1, 2]).
    """

    name: str = "small"
    height: int = 128
    width: int = 160
    num_frames: int = 10
    fps: float = 2.0
    use_pointmaps: bool = True
    cross_view_attention: bool = True
    separate_decoders: bool = True
    tasks: tuple[str, ...] = TASK_NAMES
    pointmap_range: tuple[float, float] = (-1.0, 2.0)
    image_vae: VAEConfig = dataclasses.field(default_factory=VAEConfig)
    pointmap_vae: VAEConfig = dataclasses.field(default_factory=VAEConfig)
    unet: UNetConfig = dataclasses.field(default_factory=UNetConfig)
    edm: EDMConfig = dataclasses.field(default_factory=EDMConfig)

    def __post_init__(self) -> None:
        f = self.image_vae.downsample_factor
        if self.height % f or self.width % f:
            raise ConfigError(
                f"GeneratorConfig: height/width must be multiples of {f}, got {self.height}x{self.width}"
            )
        if self.pointmap_vae.downsample_factor != f:
            raise ConfigError("GeneratorConfig: image and pointmap VAEs must share their downsampling")
        if not self.tasks:
            raise ConfigError("GeneratorConfig.tasks must name at least one task")
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"GeneratorConfig.tasks has duplicates: {self.tasks}")
        lo, hi = self.pointmap_range
        if not hi > lo:
            raise ConfigError(f"GeneratorConfig.pointmap_range needs lo < hi, got {self.pointmap_range}")
        if self.unet.fine_pointmap_channels and not (self.use_pointmaps and self.pointmap_vae.codec == "patch"):
            raise ConfigError("GeneratorConfig: unet.fine_pointmap_channels needs pointmaps through the patch codec "
                              "(use_pointmaps: true, pointmap_vae.codec: patch)")

    @property
    def latent_channels(self) -> int:
        """Channels of the RGB latent (the first channels of a view's latent)."""
        return self.image_vae.latent_channels

    @property
    def pointmap_latent_channels(self) -> int:
        """Channels of the pointmap latent (0 for RGB-only models)."""
        return self.pointmap_vae.latent_channels if self.use_pointmaps else 0

    @property
    def target_channels(self) -> int:
        """Channels of one view's clean latent: RGB (+ pointmap)."""
        return self.latent_channels + self.pointmap_latent_channels

    @property
    def latent_size(self) -> tuple[int, int]:
        f = self.image_vae.downsample_factor
        return self.height // f, self.width // f


# Fields measured from data (or only used during training): ignored when a checkpoint's config is
# compared with the one a caller expects.
DATA_DERIVED_KEYS: frozenset[str] = frozenset(
    {
        "image_vae.scaling_factor",
        "image_vae.shift_factor",
        "pointmap_vae.scaling_factor",
        "pointmap_vae.shift_factor",
        "image_vae.kl_weight",
        "pointmap_vae.kl_weight",
        "image_vae.gripper_loss_weight",
        "pointmap_vae.gripper_loss_weight",
        "image_vae.edge_loss_weight",
        "pointmap_vae.edge_loss_weight",
    }
)


def load_model_config(
    name_or_path: str | os.PathLike[str], *, overrides: dict[str, Any] | None = None
) -> GeneratorConfig:
    """Load a :class:`GeneratorConfig` from ``configs/model/<name>.yaml`` or a YAML path.

    Args:
        name_or_path: ``tiny``/``small``/``paper`` or a path to a YAML file.
        overrides: shallow top-level overrides (e.g. ``{"num_frames": 4}``).

    Raises:
        ConfigError: unknown name (the message lists the shipped ones) or invalid content.
    """
    p = Path(name_or_path)
    if not p.suffix:
        p = MODEL_CONFIG_DIR / f"{name_or_path}.yaml"
        if not p.is_file():
            names = sorted(q.stem for q in MODEL_CONFIG_DIR.glob("*.yaml"))
            raise ConfigError(f"unknown model config {str(name_or_path)!r}; shipped: {names}")
    return load_config(GeneratorConfig, p, overrides=overrides)


def model_config_from_dict(data: dict[str, Any]) -> GeneratorConfig:
    """Typed :class:`GeneratorConfig` from its plain form (as stored in ``config.json``)."""
    return from_dict(GeneratorConfig, data)


def flat_config(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``{"unet.block_out_channels": [...], ...}``: the config flattened to dotted keys."""
    out: dict[str, Any] = {}
    d = to_dict(cfg) if not isinstance(cfg, dict) else cfg
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, prefix=f"{key}."))
        else:
            out[key] = v
    return out


def config_differences(
    expected: GeneratorConfig, actual: GeneratorConfig, *, ignore: frozenset[str] = DATA_DERIVED_KEYS
) -> list[str]:
    """Human-readable ``key: expected X, checkpoint has Y`` lines where two configs differ."""
    a, b = flat_config(expected), flat_config(actual)
    lines = []
    for k in sorted(set(a) | set(b)):
        if k in ignore:
            continue
        if a.get(k) != b.get(k):
            lines.append(f"{k}: expected {a.get(k)!r}, checkpoint has {b.get(k)!r}")
    return lines

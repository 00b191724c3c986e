"""Image and pointmap VAEs: diffusers ``AutoencoderKL`` plus latent normalisation and I/O.

Owns the frame <-> latent maps of the 4D generator. Both VAEs are the same architecture
(8x downsampling); or, with ``VAEConfig.codec = "patch"``, no network at all: each 8x8 patch's
values become channels (exact, nothing to train), which removes the autoencoder's ceiling on
the geometry and leaves all of it to the diffusion model. The pointmap VAE encodes normalised XYZ (the fixed affine
map of ``GeneratorConfig.pointmap_range`` onto [-1, 1]) as a 3-channel image and may be
initialised from the image VAE's weights (:meth:`VAE.init_from`), as the paper does with SVD's.

Latents handed to the diffusion model are ``(posterior_mean - shift) * scale``; both numbers are
measured on data (:meth:`VAE.calibrate`) and stored in :class:`~geo4d_policy.models.config.VAEConfig`.
The posterior *mean* is used everywhere outside VAE training, which makes encoding
deterministic (the KL term keeps the posterior variance small anyway).

Training objective (:meth:`VAE.loss`): L1 reconstruction, averaged over valid pixels for
pointmaps (invalid pixels are filled before encoding and ignored in the loss) and weighted up on
gripper pixels and depth edges (:meth:`VAE.pixel_weights`), plus ``kl_weight`` times the KL
divergence averaged per latent element.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import nn

from geo4d_policy.config import to_dict
from geo4d_policy.models.config import VAEConfig
from geo4d_policy.models.inputs import fill_invalid_points
from geo4d_policy.models.pretrained import PretrainedModel
from geo4d_policy.models.shard import Randomness, draw, global_ratio

VAE_FORMAT = "geo4d-vae"
VAEKind = Literal["image", "pointmap"]


def _flatten_frames(x: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
    lead = x.shape[:-3]
    return x.reshape(-1, *x.shape[-3:]), lead


class VAE(PretrainedModel):
    """An 8x-downsampling KL autoencoder for RGB frames or normalised pointmaps.

    Args:
        config: architecture and latent normalisation.
        kind: ``"image"`` (inputs in [-1, 1]) or ``"pointmap"`` (normalised XYZ, invalid
            pixels filled before encoding).
    """

    def __init__(self, config: VAEConfig, *, kind: VAEKind = "image") -> None:
        super().__init__()
        self.config = config
        self.kind: VAEKind = kind
        if config.codec == "patch":
            self.model = _PatchCodec(config.downsample_factor)
            return
        n = len(config.block_out_channels)
        self.model = AutoencoderKL(
            in_channels=config.in_channels,
            out_channels=config.in_channels,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=tuple(config.block_out_channels),
            layers_per_block=config.layers_per_block,
            latent_channels=config.latent_channels,
            norm_num_groups=config.norm_num_groups,
            mid_block_add_attention=config.mid_block_add_attention,
        )

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    @property
    def trainable(self) -> bool:
        """False for a patch codec (no weights; only its latent normalisation is measured)."""
        return self.config.codec != "patch"

    # ---------------------------------------------------------------------------------------
    # Encode / decode
    # ---------------------------------------------------------------------------------------

    def _posterior(self, x: torch.Tensor) -> Any:
        return self.model.encode(x).latent_dist

    def encode(
        self,
        x: torch.Tensor,
        *,
        valid: torch.Tensor | None = None,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Frames -> normalised latents.

        Args:
            x: (..., C, H, W) frames; H, W multiples of 8.
            valid: (..., H, W) validity of pointmap pixels (pointmap VAE only). Invalid and
                non-finite pixels are filled before encoding either way.
            sample: draw from the posterior instead of taking its mean.
            generator: RNG for ``sample``.

        Returns:
            (..., latent_channels, H/8, W/8) latents, ``(mean - shift) * scale``.
        """
        if self.kind == "pointmap":
            x, _ = fill_invalid_points(x, valid)
        flat, lead = _flatten_frames(x)
        post = self._posterior(flat.to(self.model.dtype))
        z = post.sample(generator=generator) if sample else post.mean
        z = (z.float() - self.config.shift_factor) * self.config.scaling_factor
        return z.reshape(*lead, *z.shape[1:])

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents (..., c, h, w) -> frames (..., C, 8h, 8w) (unclamped)."""
        flat, lead = _flatten_frames(z)
        flat = flat.float() / self.config.scaling_factor + self.config.shift_factor
        x = self.model.decode(flat.to(self.model.dtype)).sample
        return x.reshape(*lead, *x.shape[1:])

    # ---------------------------------------------------------------------------------------
    # Training
    # ---------------------------------------------------------------------------------------

    def pixel_weights(self, x: torch.Tensor, gripper: torch.Tensor | None) -> torch.Tensor | None:
        """(N, H, W) reconstruction weights of frames ``x`` (N, C, H, W), or None when uniform.

        ``gripper_loss_weight`` on gripper pixels dilated by 2 px (their silhouette's edge is
        where a blurred decoder puts points between the hand and the background);
        ``edge_loss_weight`` (pointmaps) where a 3x3 neighbourhood spans more than 2 cm.
        """
        cfg = self.config
        w = None
        if gripper is not None and cfg.gripper_loss_weight > 1.0:
            g = F.max_pool2d(gripper.reshape(-1, 1, *gripper.shape[-2:]).float(), 5, stride=1, padding=2)[:, 0]
            w = 1.0 + (cfg.gripper_loss_weight - 1.0) * g
        if self.kind == "pointmap" and cfg.edge_loss_weight > 1.0:
            # 2 cm in normalised units; the range of the normalised coordinates is 2 per (hi - lo) m.
            jump = 0.02 * 2.0 / 3.0
            hi = F.max_pool2d(x.float(), 3, stride=1, padding=1)
            lo = -F.max_pool2d(-x.float(), 3, stride=1, padding=1)
            edge = ((hi - lo).amax(dim=1) > jump).float()
            e = 1.0 + (cfg.edge_loss_weight - 1.0) * edge
            w = e if w is None else torch.maximum(w, e)
        return w

    def loss(
        self,
        x: torch.Tensor,
        *,
        valid: torch.Tensor | None = None,
        gripper: torch.Tensor | None = None,
        generator: Randomness = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted L1 reconstruction (masked by ``valid``) + ``kl_weight`` * mean KL of frames.

        Args:
            x: (..., C, H, W) frames (RGB in [-1, 1] or normalised pointmaps).
            valid: (..., H, W) pixel validity; the reconstruction loss ignores invalid pixels.
            gripper: (..., H, W) gripper pixels, weighted by :meth:`pixel_weights`.
            generator: RNG of the posterior sample (on ``x``'s device), or a
                :class:`~geo4d_policy.models.shard.BatchShard` when ``x`` is this process's rows
                of a global batch (frames as rows): the sample noise is then the global batch's,
                and the weighted means are over the global batch's pixels.

        Returns:
            ``(loss, metrics)`` with the scalar loss and detached scalar tensors (``l1``, ``kl``;
            no host synchronisation: the training loop reads them when it logs).
        """
        if not self.trainable:
            raise ValueError("a patch codec has nothing to train: its checkpoint only needs its latent "
                             "normalisation measured (geo4d-train vae does that for codec=patch)")
        if self.kind == "pointmap":
            x, valid = fill_invalid_points(x, valid)
        flat, _ = _flatten_frames(x)
        post = self._posterior(flat)
        eps = draw(functools.partial(torch.randn, dtype=post.mean.dtype), post.mean.shape, generator,
                   device=post.mean.device)
        z = post.mean + post.std * eps.to(post.mean.device)
        rec = self.model.decode(z).sample
        err = (rec.float() - flat.float()).abs().mean(dim=1)  # (N, H, W)
        w = self.pixel_weights(flat, None if gripper is None else gripper.reshape(-1, *gripper.shape[-2:]))
        m = torch.ones_like(err) if valid is None else valid.reshape(-1, *valid.shape[-2:]).to(err.dtype)
        wm = m if w is None else m * w
        l1 = global_ratio((err * wm).sum(), wm.sum(), generator)
        kl = 0.5 * (post.mean.float() ** 2 + post.var.float() - 1.0 - post.logvar.float()).mean()
        loss = l1 + self.config.kl_weight * kl
        l1_plain = global_ratio((err * m).sum(), m.sum(), generator)
        return loss, {"loss": loss.detach(), "l1": l1_plain.detach(), "l1_weighted": l1.detach(),
                      "kl": kl.detach()}

    # The training loss is the module's forward, so that DDP wrappers see a forward call.
    forward = loss

    @torch.no_grad()
    def calibrate(
        self, frames: Iterable[torch.Tensor | tuple[torch.Tensor, torch.Tensor]], *, target_std: float = 1.0
    ) -> tuple[float, float]:
        """Measure and store the latent shift (mean) and scale (``target_std`` / std) on data.

        Args:
            frames: iterable of (N, C, H, W) frame batches, or ``(frames, valid)`` pairs for the
                pointmap VAE.
            target_std: standard deviation of the normalised latents. The trainer passes the
                EDM ``sigma_data`` (0.5), so that the preconditioning's assumption about the
                data's scale holds.

        Returns:
            ``(shift_factor, scaling_factor)``, also written into ``self.config``.
        """
        total, s1, s2 = 0, 0.0, 0.0
        param = next(self.parameters(), None)  # a patch codec has none: it works where the data is
        for item in frames:
            x, valid = item if isinstance(item, tuple) else (item, None)
            device = x.device if param is None else param.device
            x = x.to(device)
            if self.kind == "pointmap":
                x, _ = fill_invalid_points(x, None if valid is None else valid.to(device))
            z = self._posterior(x.reshape(-1, *x.shape[-3:])).mean.double()
            total += z.numel()
            s1 += float(z.sum())
            s2 += float((z * z).sum())
        if total == 0:
            raise ValueError("VAE.calibrate: no data")
        mean = s1 / total
        std = max((s2 / total - mean * mean), 1e-12) ** 0.5
        self.config.shift_factor = float(mean)
        self.config.scaling_factor = float(target_std / std)
        return self.config.shift_factor, self.config.scaling_factor

    def init_from(self, other: VAE) -> None:
        """Copy another VAE's weights (e.g. pointmap VAE from the image VAE; same architecture)."""
        def arch(c: VAEConfig) -> VAEConfig:
            return dataclasses.replace(c, scaling_factor=1.0, shift_factor=0.0, kl_weight=0.0,
                                       gripper_loss_weight=1.0, edge_loss_weight=1.0)

        if not (self.trainable and other.trainable):
            raise ValueError("VAE.init_from: a patch codec has no weights to copy or receive")
        a, b = arch(self.config), arch(other.config)
        if a != b:
            raise ValueError(f"VAE.init_from: architectures differ: {to_dict(a)} vs {to_dict(b)}")
        self.model.load_state_dict(other.model.state_dict())

    # ---------------------------------------------------------------------------------------
    # Save / load
    # ---------------------------------------------------------------------------------------

    checkpoint_format = VAE_FORMAT
    family = "VAE"
    config_type = VAEConfig
    config_field = "vae"

    def checkpoint_fields(self) -> dict[str, Any]:
        return {"kind": self.kind}

    @classmethod
    def init_kwargs(cls, data: dict[str, Any]) -> dict[str, Any]:
        return {"kind": data["kind"]}

    def weights_module(self) -> nn.Module:
        """``model.safetensors`` holds the inner ``AutoencoderKL``'s weights."""
        return self.model

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str], *, device: str | torch.device = "cpu", kind: VAEKind | None = None,
        **kwargs: Any,
    ) -> VAE:
        """Load a VAE saved by ``save_pretrained`` (a step directory or a run directory).

        ``kind`` refuses a VAE of the other kind; other arguments and refusals as
        :meth:`PretrainedModel.from_pretrained`.
        """
        return super().from_pretrained(path, device=device, expect={"kind": kind} if kind else None, **kwargs)


class _PointPosterior:
    """A posterior with all its mass at ``mean`` (the patch codec's encoding)."""

    def __init__(self, mean: torch.Tensor) -> None:
        self.mean = mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean


class _PatchOutput:
    def __init__(self, sample: torch.Tensor) -> None:
        self.sample = sample


class _Encoded:
    def __init__(self, mean: torch.Tensor) -> None:
        self.latent_dist = _PointPosterior(mean)


class _PatchCodec(nn.Module):
    """Pixel (un)shuffle with ``AutoencoderKL``'s encode/decode interface; no weights."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def encode(self, x: torch.Tensor) -> _Encoded:
        return _Encoded(F.pixel_unshuffle(x.float(), self.factor))

    def decode(self, z: torch.Tensor) -> _PatchOutput:
        return _PatchOutput(F.pixel_shuffle(z.float(), self.factor))

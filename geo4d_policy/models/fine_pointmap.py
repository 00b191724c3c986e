"""The full-resolution pointmap path of :class:`~geo4d_policy.models.generator.Geo4DUNet`.

Why it exists: with the patch codec a view's pointmap latent has 192 channels per 8x8 patch (every
pixel's XYZ), while the U-Net's first level has a few dozen. A denoiser must output, per channel,
the noise it removes; 192 independent noise values per position cannot pass through 32 feature
channels, so the U-Net alone cannot denoise the pointmap at low noise levels and its samples keep
prior-sized noise on every pixel (measured: docs/decisions.md, "the pointmap bottleneck").

This path works on the pointmap image itself, at half resolution (2x2 pixel blocks: 12 values per
position against ``fine_pointmap_channels`` features):

* ``stem`` (shared by both views, like the U-Net's encoder): the noisy and conditioning pointmaps
  (the patch latents shuffled back to images) -> a 2x2 patchify convolution -> a time-conditioned
  pixel block, kept as the skip; then stride-2 convolutions down to the latent grid, added to
  ``conv_in``'s output.
* ``heads`` (one per view when the decoders are separate): a branch's final U-Net features ->
  a 3x3 convolution on the latent grid, upsampled to the skip's resolution and concatenated with
  it -> two pixel blocks -> a 2x2 transposed convolution to XYZ per pixel, re-packed into the 192
  patch channels and added to the U-Net's pointmap output.

The pixel blocks (norm, 1x1, a scale and shift from the noise level's embedding, 1x1, residual)
keep the work per position small: this path sees 16x the U-Net's first-level positions, and the
generator also runs on the CPU. Spatial context comes from the U-Net's features and the 2x2 blocks.

Both the stem's last convolution and the heads' output convolution start at zero, so adding the
path to a trained U-Net leaves its function unchanged (``geo4d-train generator --init`` grows a
checkpoint this way) and training starts from the U-Net's predictions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PATCH = 2
"""Pixels per side of one position of the path's feature maps."""


class _PixelBlock(nn.Module):
    """Norm, 1x1 to ``cout``, FiLM from the time embedding, 1x1; residual (per pixel: spatial context
    comes from the U-Net's features)."""

    def __init__(self, cin: int, cout: int, temb: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(32, cin, eps=1e-6)
        self.pw1 = nn.Conv2d(cin, cout, 1)
        self.norm2 = nn.GroupNorm(32, cout, eps=1e-6)
        self.film = nn.Linear(temb, 2 * cout)
        self.pw2 = nn.Conv2d(cout, cout, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.pw1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(temb))[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        return self.shortcut(x) + self.pw2(h)


def _zero(conv: nn.Module) -> nn.Module:
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class _Head(nn.Module):
    def __init__(self, unet_channels: int, channels: int, temb: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.lift = nn.Conv2d(unet_channels, channels, 3, padding=1)
        self.block1 = _PixelBlock(2 * channels, channels, temb)
        self.block2 = _PixelBlock(channels, channels, temb)
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.out = _zero(nn.ConvTranspose2d(channels, 3, PATCH, stride=PATCH))

    def forward(self, h: torch.Tensor, skip: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.lift(h), scale_factor=self.factor // PATCH, mode="nearest")
        x = self.block2(self.block1(torch.cat([up, skip], dim=1), temb), temb)
        return self.out(F.silu(self.norm(x)))


class FinePointmapPath(nn.Module):
    """Stem and per-view heads on the pointmap image (see the module docstring).

    Args:
        channels: feature channels at half resolution (a multiple of 32).
        unet_channels: the U-Net's first-level channels (``conv_in``'s output).
        temb_channels: the U-Net's time-embedding width.
        factor: the patch codec's downsampling (8): latent cell side in pixels.
        heads: 2 for separate view decoders, 1 when both views share one.
    """

    def __init__(self, channels: int, *, unet_channels: int, temb_channels: int, factor: int, heads: int) -> None:
        super().__init__()
        steps = (factor // PATCH).bit_length() - 1  # stride-2 steps from 2x2 blocks to the latent grid
        if factor < 2 * PATCH or PATCH << steps != factor:
            raise ValueError(f"the fine pointmap path needs a codec factor of {PATCH} times a power of 2 "
                             f"(>= {2 * PATCH}), got {factor}")
        self.factor = factor
        self.patchify = nn.Conv2d(6, channels, PATCH, stride=PATCH)
        self.stem_block = _PixelBlock(channels, channels, temb_channels)
        down = []
        for _ in range(steps):
            down += [nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.SiLU()]
        self.down = nn.Sequential(*down)
        self.to_unet = _zero(nn.Conv2d(channels, unet_channels, 3, padding=1))
        self.heads = nn.ModuleList(
            _Head(unet_channels, channels, temb_channels, factor) for _ in range(heads)
        )

    def images(self, z: torch.Tensor) -> torch.Tensor:
        """Patch latents (N, 3*f*f, h, w) -> pointmap images (N, 3, f*h, f*w)."""
        return F.pixel_shuffle(z, self.factor)

    def encode(self, x_pm: torch.Tensor, cond_pm: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Noisy and conditioning patch latents (N, 3*f*f, h, w) -> (skip at 2x2 blocks, (N, U, h, w) to add to
        ``conv_in``'s output)."""
        img = torch.cat([self.images(x_pm), self.images(cond_pm)], dim=1)
        skip = self.stem_block(self.patchify(img), temb)
        return skip, self.to_unet(self.down(skip))

    def decode(self, view: int, h: torch.Tensor, skip: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """A branch's normalised, activated final features (N, U, h, w) -> patch-latent correction
        (N, 3*f*f, h, w) for view ``view`` (0 = n, 1 = m)."""
        head = self.heads[min(view, len(self.heads) - 1)]
        return F.pixel_unshuffle(head(h, skip, temb), self.factor)

"""Photometric augmentation of segmenter training frames and the generated-frame degradation.

Augmentation is photometric only: a horizontal flip would mirror the scene and swap which side
of the image each arm (and finger) is on, teaching the model impossible layouts. Besides the
colour jitter (:class:`ColorJitter`, :func:`jitter_image`), :class:`Degradation` mimics frames
predicted by a video generator (blurrier and noisier than renders, ~18-19 dB PSNR): random
down-then-up resampling, Gaussian blur and additive noise (:func:`degrade_image`).
:data:`EVAL_DEGRADATION` is the fixed degradation (blur sigma 1 px + noise) of the "degraded"
held-out evaluation. Images are (3, H, W) float tensors in [-1, 1]; every draw comes from the
``numpy`` generator passed in, so augmentations are functions of the caller's seeds.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from geo4d_policy.config import ConfigError


@dataclasses.dataclass
class ColorJitter:
    """Photometric augmentation, drawn per sample (all factors uniform in ``1 +- x``).

    Attributes:
        brightness, contrast, saturation: multiplicative ranges.
        channel_gain: independent per-channel gain range (white balance).
        noise_std: std of additive Gaussian pixel noise, in [-1, 1] image units.
        prob: probability that a sample is augmented at all.
    """

    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.3
    channel_gain: float = 0.08
    noise_std: float = 0.02
    prob: float = 0.9


@dataclasses.dataclass
class Degradation:
    """Degradation mimicking generated video frames, drawn per sample (ranges are uniform).

    Applied in this order: down-then-up resampling (bilinear, antialiased down by ``factor``,
    then back to the original size), separable Gaussian blur, additive Gaussian noise.

    Attributes:
        blur_sigma: (min, max) Gaussian blur sigma in pixels (0 = no blur).
        resample_factor: (min, max) downsampling factor (1 = none).
        noise_std: (min, max) std of additive Gaussian noise, in [-1, 1] image units.
        prob: probability that a sample is degraded at all (0 = off).
    """

    blur_sigma: tuple[float, float] = (0.0, 1.5)
    resample_factor: tuple[float, float] = (1.0, 2.0)
    noise_std: tuple[float, float] = (0.0, 0.04)
    prob: float = 0.0

    def __post_init__(self) -> None:
        self.blur_sigma = tuple(float(v) for v in self.blur_sigma)  # type: ignore[assignment]
        self.resample_factor = tuple(float(v) for v in self.resample_factor)  # type: ignore[assignment]
        self.noise_std = tuple(float(v) for v in self.noise_std)  # type: ignore[assignment]
        for name, (lo, hi), floor in (("blur_sigma", self.blur_sigma, 0.0),
                                      ("resample_factor", self.resample_factor, 1.0),
                                      ("noise_std", self.noise_std, 0.0)):
            if not floor <= lo <= hi:
                raise ConfigError(f"Degradation.{name} must be (min, max) with {floor} <= min <= max, "
                                  f"got {(lo, hi)}")
        if not 0.0 <= self.prob <= 1.0:
            raise ConfigError(f"Degradation.prob must be in [0, 1], got {self.prob}")

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.blur_sigma[1] > 0 or self.resample_factor[1] > 1
                                  or self.noise_std[1] > 0)


#: The fixed degradation of the "degraded" held-out evaluation: Gaussian blur sigma 1 px plus
#: noise of std 0.04 ([-1, 1] units, ~5/255), always applied.
EVAL_DEGRADATION = Degradation(blur_sigma=(1.0, 1.0), resample_factor=(1.0, 1.0), noise_std=(0.04, 0.04),
                               prob=1.0)



def jitter_image(x: torch.Tensor, jitter: ColorJitter, rng: np.random.Generator) -> torch.Tensor:
    """Colour-jitter one (3, H, W) image in [-1, 1] with ``rng``'s draws (returns a new tensor)."""
    if rng.random() >= jitter.prob:
        return x
    u = rng.uniform(-1.0, 1.0, size=6)
    y = (x + 1.0) * 0.5  # [0, 1] so that the factors act on intensities
    y = y * (1.0 + jitter.brightness * u[0])
    mean = y.mean()
    y = (y - mean) * (1.0 + jitter.contrast * u[1]) + mean
    gray = (0.299 * y[0] + 0.587 * y[1] + 0.114 * y[2])[None]
    y = (y - gray) * (1.0 + jitter.saturation * u[2]) + gray
    y = y * torch.as_tensor(1.0 + jitter.channel_gain * u[3:6], dtype=y.dtype)[:, None, None]
    y = y * 2.0 - 1.0
    if jitter.noise_std > 0:
        noise = rng.standard_normal(size=tuple(y.shape), dtype=np.float32)
        y = y + jitter.noise_std * torch.from_numpy(noise)
    return y.clamp_(-1.0, 1.0)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    r = max(1, int(np.ceil(3.0 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (C, H, W) or (B, C, H, W) images (reflect padding)."""
    if sigma <= 0:
        return x
    squeeze = x.dim() == 3
    y = x[None] if squeeze else x
    c = y.shape[1]
    k = _gaussian_kernel(sigma).to(y)
    r = k.numel() // 2
    # Reflect padding needs r < size: clamp with replicate padding for tiny images.
    mode = "reflect" if r < min(y.shape[-2:]) else "replicate"
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y[0] if squeeze else y


def degrade_image(x: torch.Tensor, degrade: Degradation, rng: np.random.Generator) -> torch.Tensor:
    """Degrade one (3, H, W) image in [-1, 1] like a generated frame, with ``rng``'s draws.

    Returns ``x`` itself when the sample is not degraded (``rng.random() >= prob``); otherwise a
    new tensor, clamped to [-1, 1]. The number of draws does not depend on their values.
    """
    if not degrade.enabled or rng.random() >= degrade.prob:
        return x
    u = rng.uniform(0.0, 1.0, size=3)
    factor = degrade.resample_factor[0] + (degrade.resample_factor[1] - degrade.resample_factor[0]) * u[0]
    sigma = degrade.blur_sigma[0] + (degrade.blur_sigma[1] - degrade.blur_sigma[0]) * u[1]
    std = degrade.noise_std[0] + (degrade.noise_std[1] - degrade.noise_std[0]) * u[2]
    noise = rng.standard_normal(size=tuple(x.shape), dtype=np.float32)
    y = x
    h, w = x.shape[-2:]
    if factor > 1.0 + 1e-3:
        small = (max(1, int(round(h / factor))), max(1, int(round(w / factor))))
        y = F.interpolate(y[None], size=small, mode="bilinear", align_corners=False, antialias=True)
        y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)[0]
    if sigma > 1e-3:
        y = gaussian_blur(y, sigma)
    if std > 0:
        y = y + std * torch.from_numpy(noise)
    return y.clamp(-1.0, 1.0)


"""Helpers of the model tests: the tiny config at a small resolution and synthetic batches.

Sizes: 32x40 pixels -> 4x5 latents (odd width exercises the U-Net's upsample-size path),
4 frames, batch 2. Everything is seeded; the tests run in one process on the CPU.
"""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from geo4d_policy.models.config import GeneratorConfig, load_model_config  # noqa: E402

H, W, F = 32, 40, 4
TASK = "PlaceAppleFromBowlIntoBin"


def tiny_config(**overrides) -> GeneratorConfig:
    """The tiny model config at the test resolution (fresh object each call)."""
    cfg = load_model_config("tiny", overrides={"height": H, "width": W, "num_frames": F})
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def synthetic_batch(seed: int, *, b: int = 2, f: int = F, h: int = H, w: int = W) -> dict[str, torch.Tensor]:
    """A dataset-shaped batch: smooth moving patterns, some invalid pixels, a gripper blob."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    phase = torch.rand(b, 2, 1, 1, 1, generator=g) * 6.28
    t = torch.arange(f + 1, dtype=torch.float32).reshape(1, 1, -1, 1, 1) * 0.3
    chans = [torch.sin(3 * xx + phase + t), torch.cos(2 * yy - phase + t), torch.sin(xx * yy * 4 + t + phase)]
    rgb = torch.stack(chans, dim=3) * 0.8  # (b, 2, f+1, 3, h, w)
    pm = torch.stack(
        [xx.expand_as(chans[0]) * 0.5, yy.expand_as(chans[0]) * 0.4, 0.3 + 0.1 * chans[0]], dim=3
    )
    valid = torch.ones(b, 2, f + 1, h, w, dtype=torch.bool)
    valid[..., :4, :6] = False
    # Invalid pixels carry the loaders' placeholder: metric 0, i.e. -1/3 after the [-1, 2] m map.
    pm = torch.where(valid[:, :, :, None], pm, torch.full((), -1.0 / 3.0))
    cx = (torch.arange(f + 1) * 4 + 8).reshape(1, 1, -1, 1, 1)
    cols = torch.arange(w).reshape(1, 1, 1, 1, -1)
    rows = torch.arange(h).reshape(1, 1, 1, -1, 1)
    gripper = ((cols - cx).abs() < 4) & (rows > 20)
    gripper = gripper.expand(b, 2, f + 1, h, w)
    return {
        "rgb_cond": rgb[:, :, 0].contiguous(),
        "rgb": rgb[:, :, 1:].contiguous(),
        "pm_cond": pm[:, :, 0].contiguous(),
        "pm": pm[:, :, 1:].contiguous(),
        "valid_cond": valid[:, :, 0].contiguous(),
        "valid": valid[:, :, 1:].contiguous(),
        "gripper": gripper[:, :, 1:].contiguous(),
    }


def batch_factory(n_batches: int = 3, *, b: int = 2):
    """``data_iter_factory`` for ``train``: deterministic per epoch."""

    def factory(*, epoch: int, rank: int, world_size: int):
        return [synthetic_batch(1000 * epoch + i + 7919 * rank, b=b) for i in range(n_batches)]

    return factory

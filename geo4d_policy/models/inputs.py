"""Model-side input preparation: invalid-point filling, resizing, masks on the latent grid.

Owns how pixels become VAE inputs and how pixel masks become latent-space loss weights:

* Invalid pointmap pixels (no depth, NaN/inf) are replaced before encoding by a smooth
  push-pull fill from the valid neighbours (a coarse-to-fine pyramid of masked averages), so
  that no NaN reaches a network and the VAE sees no artificial step edges. A frame without any
  valid pixel is filled with ``0`` (the centre of the normalised range).
* Resizing is explicit: RGB bilinear (antialiased), pointmaps and masks nearest (bilinear
  would blend foreground and background points into "flying" points at depth edges).
* Pixel masks map to the latent grid over the VAE's ``f x f`` blocks: "any" (max-pool) for the
  gripper weighting, the valid fraction (average pool) for the pointmap loss weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _flat(x: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Size]:
    lead = x.shape[: x.dim() - keep]
    return x.reshape(-1, *x.shape[x.dim() - keep :]), lead


def _push_pull(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Fill pixels of ``x`` (N,C,H,W) where ``w`` (N,1,H,W) is 0 from coarser masked averages."""
    h, wd = x.shape[-2:]
    if bool((w > 0).all()) or (h == 1 and wd == 1):
        return x
    xs = F.avg_pool2d(x * w, 2, ceil_mode=True)
    ws = F.avg_pool2d(w, 2, ceil_mode=True)
    coarse = torch.where(ws > 0, xs / ws.clamp_min(1e-12), torch.zeros_like(xs))
    coarse = _push_pull(coarse, (ws > 0).to(x.dtype))
    up = F.interpolate(coarse, size=(h, wd), mode="bilinear", align_corners=False)
    return torch.where(w > 0, x, up)


def fill_invalid_points(
    points: torch.Tensor, valid: torch.Tensor | None = None, *, empty_value: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace invalid and non-finite points by a smooth fill from valid neighbours.

    Args:
        points: (..., 3, H, W) pointmaps (any units; normalised ones in practice).
        valid: (..., H, W) bool validity; ``None`` means "every finite point is valid".
        empty_value: value of frames that have no valid pixel at all.

    Returns:
        ``(filled, valid)``: finite points of the same shape, and the validity actually used
        (the given mask AND finiteness of all three coordinates).
    """
    finite = torch.isfinite(points).all(dim=-3)
    valid = finite if valid is None else (valid.to(torch.bool) & finite)
    x, lead = _flat(points, 3)
    m, _ = _flat(valid, 2)
    x = torch.where(m[:, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
    w = m[:, None].to(x.dtype)
    filled = _push_pull(x, w)
    empty = ~m.flatten(1).any(dim=1)
    if bool(empty.any()):
        filled = torch.where(empty[:, None, None, None], torch.full_like(filled, empty_value), filled)
    return filled.reshape(*lead, *filled.shape[1:]), valid


def resize_images(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of (..., C, H, W) float images to ``size`` = (H', W')."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    y, lead = _flat(x, 3)
    y = F.interpolate(y.float(), size=size, mode="bilinear", align_corners=False, antialias=True).to(x.dtype)
    return y.reshape(*lead, *y.shape[1:])


def resize_nearest(x: torch.Tensor, size: tuple[int, int], *, channels: bool = True) -> torch.Tensor:
    """Nearest-neighbour resize of (..., C, H, W) (``channels``) or (..., H, W) maps/masks."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    keep = 3 if channels else 2
    y, lead = _flat(x, keep)
    if not channels:
        y = y[:, None]
    dtype = y.dtype
    y = F.interpolate(y.float(), size=size, mode="nearest-exact").to(dtype)
    if not channels:
        y = y[:, 0]
    return y.reshape(*lead, *y.shape[1:])


def mask_any_on_latent_grid(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """(..., H, W) bool -> (..., H/f, W/f) bool: True where any pixel of the f x f block is."""
    m, lead = _flat(mask, 2)
    out = F.max_pool2d(m[:, None].float(), factor)[:, 0] > 0
    return out.reshape(*lead, *out.shape[-2:])


def mask_fraction_on_latent_grid(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """(..., H, W) bool -> (..., H/f, W/f) float: fraction of True pixels in each f x f block."""
    m, lead = _flat(mask, 2)
    out = F.avg_pool2d(m[:, None].float(), factor)[:, 0]
    return out.reshape(*lead, *out.shape[-2:])

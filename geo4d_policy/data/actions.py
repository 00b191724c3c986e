"""Flat action/state vectors for action-space policies (Diffusion Policy) and their min/max scaling.

Layout of one 10 Hz step (``ACTION_DIM`` = 20), arms in :data:`ARM_NAMES` order (left, right)::

    [ p_TG (3) | R_TG 6D (6) = [R[:, 0], R[:, 1]] | width (1) ]  per arm

The 6D rotation (Zhou et al. 2019) is continuous, unlike quaternions or Euler angles; decoding
re-orthonormalises by Gram-Schmidt. The same layout serves commanded actions and the measured
proprioceptive state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from geo4d_policy.data.geometry import rotation_from_6d, rotation_to_6d
from geo4d_policy.interface import ARM_NAMES

PER_ARM_DIM = 10
ACTION_DIM = PER_ARM_DIM * len(ARM_NAMES)


def action_layout(arms: Sequence[str] = ARM_NAMES) -> list[str]:
    """Names of the vector's entries, e.g. ``left/p_x`` ... ``right/width``."""
    names = ["p_x", "p_y", "p_z", "r0_x", "r0_y", "r0_z", "r1_x", "r1_y", "r1_z", "width"]
    return [f"{arm}/{n}" for arm in arms for n in names]


def poses_to_vectors(
    X_TG: Mapping[str, np.ndarray], width: Mapping[str, np.ndarray], *, arms: Sequence[str] = ARM_NAMES
) -> np.ndarray:
    """Per-arm poses (N, 4, 4) and widths (N,) -> (N, 10 * len(arms)) float32 vectors."""
    parts = []
    for arm in arms:
        X = np.asarray(X_TG[arm], dtype=np.float64)
        w = np.asarray(width[arm], dtype=np.float64)
        parts += [X[..., :3, 3], rotation_to_6d(X[..., :3, :3]), w[..., None]]
    return np.concatenate(parts, axis=-1).astype(np.float32)


def vectors_to_poses(
    vectors: np.ndarray, *, arms: Sequence[str] = ARM_NAMES
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Inverse of :func:`poses_to_vectors`: (N, 10 * len(arms)) -> (X_TG, width) dicts."""
    v = np.asarray(vectors, dtype=np.float64)
    if v.shape[-1] != PER_ARM_DIM * len(arms):
        raise ValueError(f"expected vectors of size {PER_ARM_DIM * len(arms)}, got {v.shape}")
    X_TG, width = {}, {}
    for a, arm in enumerate(arms):
        chunk = v[..., a * PER_ARM_DIM : (a + 1) * PER_ARM_DIM]
        X = np.zeros((*v.shape[:-1], 4, 4))
        X[..., :3, :3] = rotation_from_6d(chunk[..., 3:9])
        X[..., :3, 3] = chunk[..., :3]
        X[..., 3, 3] = 1.0
        X_TG[arm] = X
        width[arm] = chunk[..., 9]
    return X_TG, width


_MIN_RANGE = 1e-6


def normalize_minmax(x: Any, stats: Mapping[str, Any]) -> Any:
    """Scale ``x`` from ``[stats['min'], stats['max']]`` to ``[-1, 1]`` (numpy or torch).

    Dimensions whose range is (almost) zero map to 0 instead of dividing by zero.
    """
    lo, hi = np.asarray(stats["min"], np.float32), np.asarray(stats["max"], np.float32)
    rng = hi - lo
    scale = np.where(rng > _MIN_RANGE, 2.0 / np.maximum(rng, _MIN_RANGE), 1.0).astype(np.float32)
    mid = (0.5 * (lo + hi)).astype(np.float32)
    if not isinstance(x, np.ndarray) and hasattr(x, "new_tensor"):
        return (x - x.new_tensor(mid)) * x.new_tensor(scale)
    return (np.asarray(x, np.float32) - mid) * scale


def denormalize_minmax(y: Any, stats: Mapping[str, Any]) -> Any:
    """Inverse of :func:`normalize_minmax`."""
    lo, hi = np.asarray(stats["min"], np.float32), np.asarray(stats["max"], np.float32)
    rng = hi - lo
    scale = np.where(rng > _MIN_RANGE, 2.0 / np.maximum(rng, _MIN_RANGE), 1.0).astype(np.float32)
    mid = (0.5 * (lo + hi)).astype(np.float32)
    if not isinstance(y, np.ndarray) and hasattr(y, "new_tensor"):
        return y / y.new_tensor(scale) + y.new_tensor(mid)
    return np.asarray(y, np.float32) / scale + mid

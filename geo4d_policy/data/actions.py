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


MIN_RANGE = 1e-3
"""Normalisation floor: a dimension whose min/max range over the data is below this, in its own
unit (metres for positions and widths; the unitless 6D-rotation components, where 1e-3 is about
0.06 deg), is *held*: it normalises to 0 and denormalises to its constant (the midpoint of its
range), whatever the network predicts. Such a dimension carries no signal to learn (an idle arm,
a rotation component the demonstrations never change), and scaling it by ``2 / range`` made float
noise a training target (ranges of 1e-6 gave scales of 1e6) while a zero range left one metre of
arm motion per unit of sampling error."""


def held_dims(stats: Mapping[str, Any], *, min_range: float = MIN_RANGE) -> np.ndarray:
    """(D,) bool: the dimensions of ``stats`` (``{"min", "max"}``) held at their constant."""
    lo, hi = np.asarray(stats["min"], np.float32), np.asarray(stats["max"], np.float32)
    return (hi - lo) < np.float32(min_range)


def _affine(stats: Mapping[str, Any], min_range: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mid, scale, half_range): x -> (x - mid) * scale, y -> y * half_range + mid (float32)."""
    lo, hi = np.asarray(stats["min"], np.float32), np.asarray(stats["max"], np.float32)
    held = (hi - lo) < np.float32(min_range)
    rng = np.where(held, np.float32(1.0), hi - lo)
    mid = (np.float32(0.5) * (lo + hi)).astype(np.float32)
    scale = np.where(held, 0.0, 2.0 / rng).astype(np.float32)
    half = np.where(held, 0.0, 0.5 * rng).astype(np.float32)
    return mid, scale, half


def normalize_minmax(x: Any, stats: Mapping[str, Any], *, min_range: float = MIN_RANGE) -> Any:
    """Scale ``x`` from ``[stats['min'], stats['max']]`` to ``[-1, 1]`` (numpy or torch).

    Held dimensions (range below ``min_range``, see :data:`MIN_RANGE`) map to exactly 0.
    """
    mid, scale, _ = _affine(stats, min_range)
    if not isinstance(x, np.ndarray) and hasattr(x, "new_tensor"):
        return (x - x.new_tensor(mid)) * x.new_tensor(scale)
    return (np.asarray(x, np.float32) - mid) * scale


def denormalize_minmax(y: Any, stats: Mapping[str, Any], *, min_range: float = MIN_RANGE) -> Any:
    """Inverse of :func:`normalize_minmax`; held dimensions come back as their constant exactly."""
    mid, _, half = _affine(stats, min_range)
    if not isinstance(y, np.ndarray) and hasattr(y, "new_tensor"):
        return y * y.new_tensor(half) + y.new_tensor(mid)
    return np.asarray(y, np.float32) * half + mid


def action_errors(pred: np.ndarray, true: np.ndarray, *, arms: Sequence[str] = ARM_NAMES) -> dict[str, float]:
    """Mean per-arm errors of action vectors ``pred`` against ``true`` (both (..., 10 * arms)).

    Returns:
        ``{"<arm>/pos_mm", "<arm>/rot_deg", "<arm>/width_mm"}``: mean gripper-position distance
        (mm), mean geodesic angle between the decoded rotations (degrees) and mean absolute
        width difference (mm), over every leading index.
    """
    p = np.asarray(pred, dtype=np.float64)
    q = np.asarray(true, dtype=np.float64)
    if p.shape != q.shape or p.shape[-1] != PER_ARM_DIM * len(arms):
        raise ValueError(f"expected two arrays of the same shape (..., {PER_ARM_DIM * len(arms)}), "
                         f"got {p.shape} and {q.shape}")
    out: dict[str, float] = {}
    for a, arm in enumerate(arms):
        pa, qa = p[..., a * PER_ARM_DIM:(a + 1) * PER_ARM_DIM], q[..., a * PER_ARM_DIM:(a + 1) * PER_ARM_DIM]
        Rp, Rq = rotation_from_6d(pa[..., 3:9]), rotation_from_6d(qa[..., 3:9])
        # ||Rp - Rq||_F = 2 sqrt(2) sin(angle / 2): exact 0 for equal rotations (arccos of the
        # trace is not, and is ill-conditioned near 0).
        chord = np.linalg.norm(Rp - Rq, axis=(-2, -1)) / (2.0 * np.sqrt(2.0))
        out[f"{arm}/pos_mm"] = float(1e3 * np.linalg.norm(pa[..., :3] - qa[..., :3], axis=-1).mean())
        out[f"{arm}/rot_deg"] = float(np.degrees(2.0 * np.arcsin(np.clip(chord, 0.0, 1.0))).mean())
        out[f"{arm}/width_mm"] = float(1e3 * np.abs(pa[..., 9] - qa[..., 9]).mean())
    return out

"""Pointmap geometry: depth <-> pointmaps, frame changes, projection, normalisation, depth codec.

This module owns the per-pixel geometry every other part of the learning side builds on
(DESIGN.md, Conventions):

* Pixel ``(u, v)`` is column ``u``, row ``v``; its centre sits at ``(u, v)`` in the image
  coordinates of ``K`` (OpenCV/Drake convention, ``cx = (W - 1) / 2`` for a centred camera).
* Camera frames are +z forward, +x right, +y down; depth is the z coordinate (metres along the
  optical axis, not the ray length), ``0.0`` where the camera saw nothing.
* A pointmap ``X^v`` is (H, W, 3) float32: the 3D point of each pixel of view ``v``. Invalid
  pixels carry the placeholder ``0`` (never NaN, so that tensors stay finite) and are flagged
  ``False`` in a separate validity mask: consumers must use the mask, never test for zeros.
* ``X^{m->n} = X_CnT @ X_TCm`` applied to ``X^m``: view m's pixels expressed in camera n's frame.

numpy functions accept and return arrays; the ``*_torch`` twins do the same on tensors (any
device, batched leading dimensions) for code that already holds tensors (models, perception).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
import torch

from geo4d_policy.interface import CameraIntrinsics

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

DEPTH_MM_MAX = 65535
"""Largest depth the uint16 millimetre codec represents (65.535 m); larger depths are clipped."""


def _as_K(intrinsics: CameraIntrinsics | np.ndarray) -> np.ndarray:
    if isinstance(intrinsics, CameraIntrinsics):
        return intrinsics.K
    K = np.asarray(intrinsics, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"intrinsics must be CameraIntrinsics or a 3x3 K, got shape {K.shape}")
    return K


# --------------------------------------------------------------------------------------------
# Depth <-> pointmap
# --------------------------------------------------------------------------------------------


def depth_to_pointmap(
    depth: np.ndarray, intrinsics: CameraIntrinsics | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Back-project a depth image into a pointmap in the camera frame.

    Args:
        depth: (..., H, W) depth in metres along the optical axis; ``0``, negative or
            non-finite values are invalid.
        intrinsics: the camera's intrinsics, or its 3x3 ``K``.

    Returns:
        ``(points, valid)``: (..., H, W, 3) float32 points in the camera frame (``0`` at invalid
        pixels) and the (..., H, W) bool validity mask.
    """
    depth = np.asarray(depth)
    K = _as_K(intrinsics)
    h, w = depth.shape[-2:]
    valid = np.isfinite(depth) & (depth > 0)
    z = np.where(valid, depth, 0.0).astype(np.float32)
    u = np.arange(w, dtype=np.float32)
    v = np.arange(h, dtype=np.float32)
    # Rays through pixel centres at z = 1; broadcasting keeps this allocation-light.
    rx = ((u - K[0, 2]) / K[0, 0]).astype(np.float32)[None, :]
    ry = ((v - K[1, 2]) / K[1, 1]).astype(np.float32)[:, None]
    points = np.stack([z * rx, z * ry, z], axis=-1)
    return points, valid


def depth_from_pointmap(points: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Depth (z) of a pointmap in its own camera frame, ``0`` where ``valid`` is False.

    Args:
        points: (..., H, W, 3) pointmap in the camera frame.
        valid: optional (..., H, W) validity mask; points with z <= 0 are invalid anyway.

    Returns:
        (..., H, W) float32 depth in metres.
    """
    z = np.asarray(points)[..., 2].astype(np.float32)
    ok = np.isfinite(z) & (z > 0)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    return np.where(ok, z, 0.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------


def invert_transform(X_AB: np.ndarray) -> np.ndarray:
    """``X_BA`` from a rigid ``X_AB`` (4x4 or (..., 4, 4)), exact for rigid transforms."""
    X_AB = np.asarray(X_AB, dtype=np.float64)
    R = X_AB[..., :3, :3]
    p = X_AB[..., :3, 3]
    out = np.zeros_like(X_AB)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, p)
    out[..., 3, 3] = 1.0
    return out


def transform_points(X_AB: np.ndarray, p_BQ: np.ndarray) -> np.ndarray:
    """Express points given in frame B in frame A: ``p_AQ = X_AB @ p_BQ``.

    Args:
        X_AB: 4x4 pose of B in A.
        p_BQ: (..., 3) points in B.

    Returns:
        (..., 3) points in A, float32 when ``p_BQ`` is float32, else float64.
    """
    X_AB = np.asarray(X_AB, dtype=np.float64)
    p = np.asarray(p_BQ)
    out_dtype = np.float32 if p.dtype == np.float32 else np.float64
    R = X_AB[:3, :3].astype(out_dtype)
    t = X_AB[:3, 3].astype(out_dtype)
    return (p.astype(out_dtype) @ R.T + t).astype(out_dtype)


def relative_camera_transform(X_TCn: np.ndarray, X_TCm: np.ndarray) -> np.ndarray:
    """``X_CnCm = X_CnT @ X_TCm``: pose of camera m in camera n."""
    return invert_transform(X_TCn) @ np.asarray(X_TCm, dtype=np.float64)


def pointmap_to_view(
    points_m: np.ndarray, valid_m: np.ndarray, *, X_TCm: np.ndarray, X_TCn: np.ndarray
) -> np.ndarray:
    """``X^{m->n}``: view m's pointmap (in m's frame) expressed in camera n's frame.

    Invalid pixels keep the ``0`` placeholder (they are flagged by ``valid_m``, which is
    unchanged by the change of frame).

    Args:
        points_m: (..., H, W, 3) pointmap of view m in m's frame.
        valid_m: (..., H, W) its validity mask.
        X_TCm: pose of camera m in the task frame.
        X_TCn: pose of camera n in the task frame.

    Returns:
        (..., H, W, 3) float32 pointmap of m's pixels in n's frame.
    """
    out = transform_points(relative_camera_transform(X_TCn, X_TCm), np.asarray(points_m, dtype=np.float32))
    return np.where(np.asarray(valid_m, dtype=bool)[..., None], out, 0.0).astype(np.float32)


def project_points(
    p_CQ: np.ndarray,
    intrinsics: CameraIntrinsics | np.ndarray,
    *,
    height: int | None = None,
    width: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Project camera-frame points to pixels.

    Args:
        p_CQ: (..., 3) points in the camera frame.
        intrinsics: the camera's intrinsics, or its 3x3 ``K`` (then ``height``/``width`` are
            needed for the in-image test).
        height, width: image size; default to the intrinsics' size.

    Returns:
        ``(uvz, visible)``: (..., 3) float64 ``(u, v, z)`` (pixel column, row, depth; ``u, v`` are
        0 for points with z <= 0) and (...,) bool, True for points in front of the camera
        (z > 0) whose pixel centre rounds into the image.
    """
    K = _as_K(intrinsics)
    if isinstance(intrinsics, CameraIntrinsics):
        height = intrinsics.height if height is None else height
        width = intrinsics.width if width is None else width
    if height is None or width is None:
        raise ValueError("project_points needs height and width when given a bare K")
    p = np.asarray(p_CQ, dtype=np.float64)
    z = p[..., 2]
    front = np.isfinite(z) & (z > 0)
    safe_z = np.where(front, z, 1.0)
    u = np.where(front, K[0, 0] * p[..., 0] / safe_z + K[0, 1] * p[..., 1] / safe_z + K[0, 2], 0.0)
    v = np.where(front, K[1, 1] * p[..., 1] / safe_z + K[1, 2], 0.0)
    # A pixel covers [u - 0.5, u + 0.5) around its centre.
    inside = (u >= -0.5) & (u < width - 0.5) & (v >= -0.5) & (v < height - 0.5)
    return np.stack([u, v, z], axis=-1), front & inside


# --------------------------------------------------------------------------------------------
# Rotations (6D representation, Zhou et al. 2019)
# --------------------------------------------------------------------------------------------


def nearest_rotation(M: np.ndarray) -> np.ndarray:
    """The rotation closest to ``M`` (3x3) in Frobenius norm (SVD projection onto SO(3))."""
    U, _, Vt = np.linalg.svd(M)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt)) or 1.0])
    return U @ D @ Vt


def checked_transform(X: np.ndarray, name: str, *, rigid_tol: float | None = None) -> np.ndarray:
    """``X`` as a float64 rigid transform: its rotation block projected onto SO(3).

    With ``rigid_tol``, ``X`` must already be rigid to that tolerance (rotation block
    orthonormal with determinant +1, last row ``[0, 0, 0, 1]``), not merely close to one after
    the projection: a scaled, sheared or mirrored matrix is refused rather than silently fixed.

    Raises:
        ValueError: ``X`` is not a finite 4x4, or (with ``rigid_tol``) not rigid (the message
            names it ``name``).
    """
    X = np.asarray(X, dtype=np.float64)
    if X.shape != (4, 4) or not np.isfinite(X).all():
        raise ValueError(f"{name} must be a finite 4x4 transform, got shape {X.shape}")
    if rigid_tol is not None:
        R = X[:3, :3]
        err = max(float(np.abs(R.T @ R - np.eye(3)).max()), float(np.abs(X[3] - [0, 0, 0, 1]).max()))
        if err > rigid_tol or np.linalg.det(R) <= 0:
            raise ValueError(f"{name} must be a rigid transform (orthonormal rotation with det +1, last row "
                             f"0 0 0 1); off by {err:.3g}, det {np.linalg.det(R):.3g}")
    out = np.eye(4)
    out[:3, :3] = nearest_rotation(X[:3, :3])
    out[:3, 3] = X[:3, 3]
    return out


def rotation_to_6d(R: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations -> (..., 6): the first two columns, ``[R[:, 0], R[:, 1]]``."""
    R = np.asarray(R)
    return np.concatenate([R[..., :, 0], R[..., :, 1]], axis=-1)


def rotation_from_6d(r6: np.ndarray) -> np.ndarray:
    """(..., 6) -> (..., 3, 3) rotation by Gram-Schmidt (inverse of :func:`rotation_to_6d`)."""
    r6 = np.asarray(r6, dtype=np.float64)
    a, b = r6[..., :3], r6[..., 3:6]
    x = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b - np.sum(x * b, axis=-1, keepdims=True) * x
    y = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    z = np.cross(x, y)
    return np.stack([x, y, z], axis=-1)


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PointmapNormalization:
    """The fixed affine map of metric coordinates ``[lo, hi]`` (every axis) onto ``[-1, 1]``.

    The official release maps [-1, 2] m; points outside the range map outside [-1, 1] and are
    not clipped (clipping would silently move geometry). Stored in model configs through
    :meth:`to_dict` / :meth:`from_dict`. Works on numpy arrays and torch tensors alike.
    """

    lo: float = -1.0
    hi: float = 2.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.lo) and np.isfinite(self.hi) and self.hi > self.lo):
            raise ValueError(f"PointmapNormalization needs finite lo < hi, got lo={self.lo} hi={self.hi}")

    @property
    def scale(self) -> float:
        """Normalised units per metre."""
        return 2.0 / (self.hi - self.lo)

    def normalize(self, points: ArrayT) -> ArrayT:
        """Metric points -> normalised coordinates."""
        return (points - self.lo) * self.scale - 1.0

    def denormalize(self, values: ArrayT) -> ArrayT:
        """Normalised coordinates -> metric points."""
        return (values + 1.0) / self.scale + self.lo

    def to_dict(self) -> dict[str, float]:
        return {"lo": float(self.lo), "hi": float(self.hi)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PointmapNormalization:
        unknown = set(d) - {"lo", "hi"}
        if unknown:
            raise ValueError(f"PointmapNormalization: unknown key(s) {sorted(unknown)}")
        return cls(**{k: float(v) for k, v in d.items()})


def pointmap_chw(
    depth: np.ndarray,
    intrinsics: CameraIntrinsics | np.ndarray,
    *,
    X_AC: np.ndarray | None = None,
    normalization: PointmapNormalization | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Channel-first pointmap of a depth image, optionally in another frame and normalised.

    The fast path for model inputs (loaders, the policy's conditioning): equivalent to
    :func:`depth_to_pointmap`, then :func:`transform_points` by ``X_AC``, then
    ``normalization.normalize``, with invalid pixels set to 0 *after* normalisation, but done
    as one multiply-add per channel (a point is ``depth * ray + origin`` for a ray fixed per pixel).

    Args:
        depth: (..., H, W) metres, 0 = invalid.
        intrinsics: intrinsics or 3x3 ``K`` of the camera C that took ``depth``.
        X_AC: pose of C in the output frame A (None: stay in C).
        normalization: map to normalised coordinates (None: metres).

    Returns:
        ``(points (..., 3, H, W) float32, valid (..., H, W) bool)``.
    """
    depth = np.asarray(depth)
    K = _as_K(intrinsics)
    h, w = depth.shape[-2:]
    valid = np.isfinite(depth) & (depth > 0)
    z = np.where(valid, depth, 0.0).astype(np.float32, copy=False)
    rays = np.empty((3, h, w), np.float64)
    rays[0] = ((np.arange(w) - K[0, 2]) / K[0, 0])[None, :]
    rays[1] = ((np.arange(h) - K[1, 2]) / K[1, 1])[:, None]
    rays[2] = 1.0
    origin = np.zeros(3)
    if X_AC is not None:
        X_AC = np.asarray(X_AC, dtype=np.float64)
        rays = np.einsum("ij,jhw->ihw", X_AC[:3, :3], rays)
        origin = X_AC[:3, 3].copy()
    if normalization is not None:
        rays = rays * normalization.scale
        origin = normalization.normalize(origin)
    rays = rays.astype(np.float32)
    out = np.empty((*depth.shape[:-2], 3, h, w), np.float32)
    validf = valid.astype(np.float32)
    for c in range(3):
        # depth is 0 at invalid pixels, so the ray term vanishes there; the origin is masked.
        np.multiply(z, rays[c], out=out[..., c, :, :])
        if origin[c] != 0.0:
            out[..., c, :, :] += np.float32(origin[c]) * validf
    return out, valid


# --------------------------------------------------------------------------------------------
# Depth codec
# --------------------------------------------------------------------------------------------


def encode_depth_mm(depth: np.ndarray) -> np.ndarray:
    """Float metres -> uint16 millimetres (the on-disk depth).

    Invalid depth (``<= 0`` or non-finite) -> ``0``. Valid depth rounds to the nearest
    millimetre, at least 1 mm (so a valid pixel never turns invalid) and at most 65.535 m.
    """
    depth = np.asarray(depth)
    valid = np.isfinite(depth) & (depth > 0)
    mm = np.rint(np.where(valid, depth, 0.0) * 1000.0)
    mm = np.clip(mm, 1, DEPTH_MM_MAX)
    return np.where(valid, mm, 0).astype(np.uint16)


def decode_depth_mm(depth_mm: np.ndarray) -> np.ndarray:
    """uint16 millimetres -> float32 metres (``0`` stays ``0`` = invalid)."""
    return np.asarray(depth_mm).astype(np.float32) * np.float32(1e-3)


# --------------------------------------------------------------------------------------------
# torch twins
# --------------------------------------------------------------------------------------------


def depth_to_pointmap_torch(depth: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor twin of :func:`depth_to_pointmap`.

    Args:
        depth: (..., H, W) metres.
        K: (3, 3) or (..., 3, 3) intrinsics broadcastable against the leading dims of ``depth``.

    Returns:
        ``(points (..., H, W, 3), valid (..., H, W) bool)`` on ``depth``'s device and dtype.
    """
    h, w = depth.shape[-2:]
    K = K.to(depth)
    valid = torch.isfinite(depth) & (depth > 0)
    z = torch.where(valid, depth, torch.zeros_like(depth))
    u = torch.arange(w, device=depth.device, dtype=depth.dtype)
    v = torch.arange(h, device=depth.device, dtype=depth.dtype)
    fx, fy = K[..., 0, 0, None, None], K[..., 1, 1, None, None]
    cx, cy = K[..., 0, 2, None, None], K[..., 1, 2, None, None]
    x = z * (u[None, :] - cx) / fx
    y = z * (v[:, None] - cy) / fy
    return torch.stack([x, y, z], dim=-1), valid


def transform_points_torch(X_AB: torch.Tensor, p_BQ: torch.Tensor) -> torch.Tensor:
    """Tensor twin of :func:`transform_points`; ``X_AB`` may be batched (..., 4, 4) against
    points (..., N, 3) or (..., H, W, 3) with matching leading dims (use ``X_AB[:, None]``...)."""
    X_AB = X_AB.to(p_BQ)
    R = X_AB[..., :3, :3]
    t = X_AB[..., :3, 3]
    shape = p_BQ.shape
    lead = X_AB.shape[:-2]
    pts = p_BQ.reshape(*lead, -1, 3) if lead else p_BQ.reshape(-1, 3)
    out = pts @ R.transpose(-1, -2) + t.unsqueeze(-2)
    return out.reshape(shape)


def project_points_torch(
    p_CQ: torch.Tensor, K: torch.Tensor, *, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor twin of :func:`project_points` (``K`` (3, 3) shared by all points)."""
    K = K.to(p_CQ)
    z = p_CQ[..., 2]
    front = torch.isfinite(z) & (z > 0)
    safe_z = torch.where(front, z, torch.ones_like(z))
    u = K[0, 0] * p_CQ[..., 0] / safe_z + K[0, 1] * p_CQ[..., 1] / safe_z + K[0, 2]
    v = K[1, 1] * p_CQ[..., 1] / safe_z + K[1, 2]
    u = torch.where(front, u, torch.zeros_like(u))
    v = torch.where(front, v, torch.zeros_like(v))
    inside = (u >= -0.5) & (u < width - 0.5) & (v >= -0.5) & (v < height - 0.5)
    return torch.stack([u, v, z], dim=-1), front & inside

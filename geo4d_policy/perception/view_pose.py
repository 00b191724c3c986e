"""Camera m's pose in camera n, recovered from pixel-aligned pointmaps (the policy is uncalibrated).

The ICP tracker judges view m's points ``X^{m->n}`` (in camera n's frame) from camera m: what
lies inside its image, what it hides, which model surface faces it (``TrackingFrame.X_CnCv``).
Evaluation and the oracle know ``X_CnCm`` from calibration; the learned policy knows only
``X_TCn``, so it recovers ``X_CnCm`` from its own data: view m's observed pointmap of the
current frame in camera m's own frame, against the generator's first predicted ``X^{m->n}``
of the same view. Pixel for pixel these are the same scene in two frames wherever it did not
move, so a rigid fit between them is ``X_CnCm``; pixels of the grippers (moving) are left out,
and other moved or mispredicted pixels are rejected as outliers by the fit.

This module owns:
  * :func:`fit_relative_pose` / :func:`estimate_relative_pose`, the robust rigid fit
    (Kabsch without scale; trimmed re-solves, then re-solves on the points within a residual
    threshold that adapts to the inliers' spread).
  * :class:`ViewPoseEstimate` and :func:`estimate_view_pose`, the policy's use: the fit, its
    residual and support, and whether it is trusted. An untrusted estimate has ``X_CnCm``
    None and a ``reason``; the caller then tracks view m as before (its pixels taken as
    camera n's), and :meth:`ViewPoseEstimate.record` says so in the diagnostics.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

MIN_POINTS = 500
"""Fewest static pixels valid in both pointmaps for a trusted estimate."""

MAX_RESIDUAL_M = 0.02
"""Largest median residual (m) of the fit's inliers for a trusted estimate: a prediction unrelated to
the scene leaves residuals of decimetres; 2 cm of depth noise leaves about 14 mm and still gives the
pose within 5 mm (docs/decisions.md)."""

MIN_INLIER_FRACTION = 0.5
"""Smallest share of the static pixels the fit must explain for a trusted estimate."""


def fit_relative_pose(
    points_src: np.ndarray,
    points_dst: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    trim_fraction: float = 0.2,
    iterations: int = 3,
    inlier_scale: float = 3.0,
    min_inlier_m: float = 0.002,
    refits: int = 5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rigid ``X_dst_src`` with ``dst ~ X @ src`` on corresponding points, robust to outliers.

    Kabsch without scale, re-solved ``iterations`` times on the ``1 - trim_fraction`` best
    residuals (a start that a minority of gross outliers cannot drag far), then up to
    ``refits`` times on the points within ``max(min_inlier_m, inlier_scale * median)`` of the
    current fit's inlier residuals: trimming alone keeps a fixed share, so it keeps outliers
    when there are more than ``trim_fraction`` of them and drops good points when there are
    fewer.

    Args:
        points_src: (..., 3) points in the source frame (e.g. ``X^m`` in camera m's frame).
        points_dst: (..., 3) the same pixels in the destination frame (e.g. ``X^{m->n}``).
        valid: optional (...) mask of usable correspondences.

    Returns:
        ``X`` (4x4), the inlier mask and the residuals (m) of the usable correspondences, in
        the order of ``points_src[valid & finite]``.

    Raises:
        ValueError: mismatched shapes, or fewer than 3 usable correspondences.
    """
    src = np.asarray(points_src, dtype=np.float64)
    dst = np.asarray(points_dst, dtype=np.float64)
    if src.shape != dst.shape or src.shape[-1:] != (3,):
        raise ValueError(f"points_src and points_dst must both be (..., 3) of one shape, got {src.shape} and "
                         f"{dst.shape}")
    src, dst = src.reshape(-1, 3), dst.reshape(-1, 3)
    ok = np.isfinite(src).all(axis=1) & np.isfinite(dst).all(axis=1)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.size != len(ok):
            raise ValueError(f"valid has {valid.size} entries for {len(ok)} points")
        ok &= valid.reshape(-1)
    src, dst = src[ok], dst[ok]
    if len(src) < 3:
        raise ValueError("a relative pose needs at least 3 valid correspondences")

    def solve(use: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b = src[use], dst[use]
        ca, cb = a.mean(axis=0), b.mean(axis=0)
        U, _, Vt = np.linalg.svd((a - ca).T @ (b - cb))
        D = np.diag([1.0, 1.0, np.sign(np.linalg.det(Vt.T @ U.T)) or 1.0])
        X = np.eye(4)
        X[:3, :3] = Vt.T @ D @ U.T
        X[:3, 3] = cb - X[:3, :3] @ ca
        return X, np.linalg.norm(src @ X[:3, :3].T + X[:3, 3] - dst, axis=1)

    use = np.ones(len(src), dtype=bool)
    keep = max(3, int(np.ceil((1.0 - trim_fraction) * len(src))))
    for _ in range(iterations + 1):
        X, res = solve(use)
        use = np.zeros(len(src), dtype=bool)
        use[np.argsort(res)[:keep]] = True
    for _ in range(refits):
        inl = res <= max(min_inlier_m, inlier_scale * float(np.median(res[use])))
        if inl.sum() < 3 or np.array_equal(inl, use):
            break
        use = inl
        X, res = solve(use)
    use = res <= max(min_inlier_m, inlier_scale * float(np.median(res[use])))
    return X, use, res


def estimate_relative_pose(points_src: np.ndarray, points_dst: np.ndarray, *, valid: np.ndarray | None = None,
                           **options: Any) -> np.ndarray:
    """``X_dst_src`` of :func:`fit_relative_pose` alone (same arguments and errors)."""
    return fit_relative_pose(points_src, points_dst, valid=valid, **options)[0]


@dataclasses.dataclass(frozen=True)
class ViewPoseEstimate:
    """Camera m's pose in camera n as recovered (or not) by :func:`estimate_view_pose`.

    Attributes:
        X_CnCm: 4x4 pose when the estimate is trusted, else None.
        n_points: static pixels valid in both pointmaps.
        n_inliers: those the fit explains.
        residual_m: median residual (m) of the inliers (inf without a fit).
        reason: why it is not trusted (empty when it is).
    """

    X_CnCm: np.ndarray | None
    n_points: int
    n_inliers: int = 0
    residual_m: float = float("inf")
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.X_CnCm is not None

    def record(self) -> dict[str, Any]:
        """A JSON-ready summary for diagnostics (``source``: ``estimated`` or ``fallback``)."""
        return {"source": "estimated" if self.ok else "fallback", "n_points": self.n_points,
                "n_inliers": self.n_inliers,
                "residual_mm": round(1e3 * self.residual_m, 3) if np.isfinite(self.residual_m) else None,
                "reason": self.reason}


def estimate_view_pose(
    points_m: np.ndarray,
    valid_m: np.ndarray,
    points_mn: np.ndarray,
    valid_mn: np.ndarray,
    *,
    static: np.ndarray | None = None,
    min_points: int = MIN_POINTS,
    max_residual_m: float = MAX_RESIDUAL_M,
    min_inlier_fraction: float = MIN_INLIER_FRACTION,
) -> ViewPoseEstimate:
    """``X_CnCm`` from view m's pointmap in its own frame and the same view's ``X^{m->n}``.

    Args:
        points_m: (H, W, 3) view m's observed points in camera m's frame (the current frame).
        valid_m: (H, W) their validity.
        points_mn: (H, W, 3) a predicted (or recorded) frame of view m in camera n's frame,
            ``X^{m->n}``, as close in time to the observed one as the pipeline has.
        valid_mn: (H, W) its validity.
        static: optional (H, W) mask of pixels expected not to move between the two (e.g. not
            the grippers in either); moved pixels outside it are rejected by the fit.
        min_points, max_residual_m, min_inlier_fraction: when the estimate is trusted.

    Returns:
        The estimate; untrusted (``X_CnCm`` None, ``reason`` set) when too few pixels, the fit
        explains too few of them or leaves a large residual. Never raises on such data.

    Raises:
        ValueError: arrays of the wrong shape.
    """
    pm = np.asarray(points_m, dtype=np.float64)
    pmn = np.asarray(points_mn, dtype=np.float64)
    if pm.ndim != 3 or pm.shape[-1] != 3 or pmn.shape != pm.shape:
        raise ValueError(f"points_m and points_mn must both be (H, W, 3) of one shape, got {pm.shape} and "
                         f"{pmn.shape}")
    masks = {"valid_m": valid_m, "valid_mn": valid_mn, **({} if static is None else {"static": static})}
    for name, mask in masks.items():
        if np.shape(mask) != pm.shape[:2]:
            raise ValueError(f"{name} must be (H, W) = {pm.shape[:2]}, got {np.shape(mask)}")
    use = np.asarray(valid_m, dtype=bool) & np.asarray(valid_mn, dtype=bool)
    use &= np.isfinite(pm).all(axis=-1) & np.isfinite(pmn).all(axis=-1)
    if static is not None:
        use &= np.asarray(static, dtype=bool)
    n = int(use.sum())
    if n < max(min_points, 3):
        return ViewPoseEstimate(None, n, reason=f"too few static pixels valid in both pointmaps ({n} < {min_points})")
    X, inl, res = fit_relative_pose(pm, pmn, valid=use)
    n_in = int(inl.sum())
    residual = float(np.median(res[inl])) if n_in else float("inf")
    if n_in < min_inlier_fraction * n:
        return ViewPoseEstimate(None, n, n_in, residual,
                                f"the fit explains {n_in} of {n} pixels (< {min_inlier_fraction:.0%})")
    if not residual <= max_residual_m:
        return ViewPoseEstimate(None, n, n_in, residual,
                                f"median residual {1e3 * residual:.1f} mm > {1e3 * max_residual_m:.1f} mm")
    return ViewPoseEstimate(X, n, n_in, residual)

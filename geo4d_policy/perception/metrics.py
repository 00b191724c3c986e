"""Perception metrics: the paper's cross-view consistency mIoU and gripper pose errors.

This module owns:
  * :func:`cross_view_iou` / :func:`cross_view_miou`, Table 1's "mIoU" (section 4.2): view n's
    gripper mask is lifted to 3D with view n's pointmap, re-projected into view m with m's
    intrinsics and the relative pose ``X_CmCn`` (known for evaluation only), and the IoU of
    the bounding box of the projected pixels against the bounding box of view m's gripper mask
    is averaged over time.
  * :func:`pose_errors` / :func:`pose_error_summary`: translation (mm) and rotation (deg) errors.

Conventions fixed here (the paper leaves them open):
  * Projected points are rounded to the nearest pixel; points behind camera m or outside its
    image are dropped (they are not pixels of view m), so the projected box lies in the image.
  * Boxes are inclusive pixel ranges: a box from column 3 to 5 is 3 pixels wide.
  * A frame where either box is empty (no gripper pixel in view n's mask with a valid point,
    no projected pixel inside view m, or an empty mask in view m) scores IoU 0 by default
    (``empty="zero"``): a generator that loses the gripper is penalised, not skipped. With
    ``empty="skip"`` such frames are left out of the mean (NaN in the per-frame array).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from geo4d_policy.data.geometry import project_points, transform_points

Box = tuple[int, int, int, int]
"""Inclusive pixel box ``(u_min, v_min, u_max, v_max)``."""


def mask_bbox(mask: np.ndarray) -> Box | None:
    """Inclusive bounding box of a boolean mask, or None when it is empty."""
    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def bbox_iou(a: Box | None, b: Box | None) -> float:
    """IoU of two inclusive pixel boxes (0 when either is None)."""
    if a is None or b is None:
        return 0.0
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(0, iw) * max(0, ih)
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return float(inter / (area_a + area_b - inter))


def projected_bbox(
    points_n: np.ndarray, *, K_m: np.ndarray, X_CmCn: np.ndarray, height: int, width: int
) -> Box | None:
    """Bounding box, in view m, of points given in camera n's frame (None if none lands inside)."""
    pts = np.asarray(points_n, dtype=np.float64).reshape(-1, 3)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) == 0:
        return None
    uvz, inside = project_points(transform_points(X_CmCn, pts), np.asarray(K_m), height=height, width=width)
    if not inside.any():
        return None
    u = np.rint(uvz[inside, 0]).astype(np.int64)
    v = np.rint(uvz[inside, 1]).astype(np.int64)
    return int(u.min()), int(v.min()), int(u.max()), int(v.max())


def cross_view_iou(
    mask_n: np.ndarray,
    pointmap_n: np.ndarray,
    mask_m: np.ndarray,
    *,
    K_m: np.ndarray,
    X_CmCn: np.ndarray,
    valid_n: np.ndarray | None = None,
) -> float:
    """One frame's box IoU between view n's re-projected gripper mask and view m's gripper mask.

    Args:
        mask_n: (H, W) gripper mask in view n.
        pointmap_n: (H, W, 3) view n's pointmap in camera n's frame.
        mask_m: (H', W') gripper mask in view m (its shape is view m's image size).
        K_m: 3x3 intrinsics of view m.
        X_CmCn: pose of camera n in camera m (``X_CmT @ X_TCn``).
        valid_n: optional (H, W) validity of ``pointmap_n``.

    Returns:
        IoU in [0, 1]; 0 when either box is empty.
    """
    sel = np.asarray(mask_n, dtype=bool)
    if valid_n is not None:
        sel = sel & np.asarray(valid_n, dtype=bool)
    h, w = np.shape(mask_m)
    box_p = projected_bbox(np.asarray(pointmap_n)[sel], K_m=K_m, X_CmCn=X_CmCn, height=h, width=w)
    return bbox_iou(box_p, mask_bbox(mask_m))


def cross_view_miou(
    masks_n: np.ndarray,
    pointmaps_n: np.ndarray,
    masks_m: np.ndarray,
    *,
    K_m: np.ndarray,
    X_CmCn: np.ndarray,
    valid_n: np.ndarray | None = None,
    empty: Literal["zero", "skip"] = "zero",
) -> tuple[float, np.ndarray]:
    """Table 1's cross-view mIoU over a clip.

    Args:
        masks_n: (T, H, W) gripper masks in view n (e.g. from SAM2 on the generated RGB).
        pointmaps_n: (T, H, W, 3) view n's (generated) pointmaps in camera n's frame.
        masks_m: (T, H', W') gripper masks in view m.
        K_m: 3x3 intrinsics of view m.
        X_CmCn: pose of camera n in camera m (fixed over the clip).
        valid_n: optional (T, H, W) validity of the pointmaps.
        empty: ``"zero"`` (default) scores frames with an empty box as 0; ``"skip"`` leaves
            them out of the mean (NaN per frame).

    Returns:
        ``(miou, per_frame)``; ``miou`` is NaN only if ``empty="skip"`` left no frame.
    """
    masks_n = np.asarray(masks_n, dtype=bool)
    masks_m = np.asarray(masks_m, dtype=bool)
    T = len(masks_n)
    if len(pointmaps_n) != T or len(masks_m) != T or (valid_n is not None and len(valid_n) != T):
        raise ValueError("masks_n, pointmaps_n, masks_m (and valid_n) must have the same number of frames")
    per = np.zeros(T)
    for t in range(T):
        sel = masks_n[t] if valid_n is None else masks_n[t] & np.asarray(valid_n[t], dtype=bool)
        h, w = masks_m[t].shape
        box_p = projected_bbox(np.asarray(pointmaps_n[t])[sel], K_m=K_m, X_CmCn=X_CmCn, height=h, width=w)
        box_m = mask_bbox(masks_m[t])
        if (box_p is None or box_m is None) and empty == "skip":
            per[t] = np.nan
        else:
            per[t] = bbox_iou(box_p, box_m)
    valid = per[np.isfinite(per)]
    return (float(valid.mean()) if valid.size else float("nan")), per


def pose_errors(X_est: np.ndarray, X_gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Translation (mm) and rotation (deg) errors of (T, 4, 4) (or 4x4) estimated poses."""
    X_est = np.asarray(X_est, dtype=np.float64).reshape(-1, 4, 4)
    X_gt = np.asarray(X_gt, dtype=np.float64).reshape(-1, 4, 4)
    if X_est.shape != X_gt.shape:
        raise ValueError(f"shape mismatch {X_est.shape} vs {X_gt.shape}")
    trans = np.linalg.norm(X_est[:, :3, 3] - X_gt[:, :3, 3], axis=1) * 1e3
    R = np.einsum("tji,tjk->tik", X_est[:, :3, :3], X_gt[:, :3, :3])
    cos = np.clip((np.trace(R, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
    return trans, np.degrees(np.arccos(cos))


def pose_error_summary(X_est: np.ndarray, X_gt: np.ndarray) -> dict[str, float]:
    """Median/mean/90th percentile of :func:`pose_errors` (keys ``trans_mm_*``, ``rot_deg_*``)."""
    t, r = pose_errors(X_est, X_gt)
    return {
        "trans_mm_median": float(np.median(t)), "trans_mm_mean": float(np.mean(t)),
        "trans_mm_p90": float(np.percentile(t, 90)),
        "rot_deg_median": float(np.median(r)), "rot_deg_mean": float(np.mean(r)),
        "rot_deg_p90": float(np.percentile(r, 90)),
    }

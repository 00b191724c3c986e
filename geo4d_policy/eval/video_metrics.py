"""Video-generation metrics of the paper's Table 1 (no pretrained networks needed).

* Depth: AbsRel ``mean(|z_pred - z_gt| / z_gt)`` and delta1 ``mean(max(z_pred/z_gt, z_gt/z_pred) < 1.25)``
  over pixels valid in the ground truth. For view n, z is the third coordinate of ``X^n``;
  for view m, the predicted ``X^{m->n}`` is expressed back in camera m's frame with the
  ground-truth relative pose (known at evaluation only) and compared with m's own depth, so
  both views are scored on their own depth images as in the paper.
* RGB: PSNR and SSIM (11x11 Gaussian window, sigma 1.5, on [0, 1] per channel).
* Cross-view consistency: mIoU of gripper boxes (``geo4d_policy.perception.metrics``).
FVD needs I3D weights that cannot be downloaded here; users with local weights can add it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from geo4d_policy.data.geometry import transform_points


def depth_metrics(z_pred: np.ndarray, z_gt: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    """AbsRel and delta1 over ``valid`` pixels (ground truth > 0; predictions clamped at 1 mm)."""
    valid = np.asarray(valid, bool) & (np.asarray(z_gt) > 0) & np.isfinite(z_pred)
    if not valid.any():
        return {"abs_rel": float("nan"), "delta1": float("nan"), "n_pixels": 0}
    p = np.maximum(np.asarray(z_pred, np.float64)[valid], 1e-3)
    g = np.asarray(z_gt, np.float64)[valid]
    ratio = np.maximum(p / g, g / p)
    return {"abs_rel": float(np.mean(np.abs(p - g) / g)), "delta1": float(np.mean(ratio < 1.25)),
            "n_pixels": int(valid.sum())}


def psnr(pred: np.ndarray, gt: np.ndarray) -> float:
    """PSNR (dB) of uint8 images (any matching shapes), averaged over the leading frame axis."""
    p = np.asarray(pred, np.float64) / 255.0
    g = np.asarray(gt, np.float64) / 255.0
    mse = ((p - g) ** 2).reshape(len(p), -1).mean(axis=1)
    return float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-10))))


def ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean SSIM of uint8 frames (T, H, W, 3)."""
    x = torch.from_numpy(np.asarray(pred, np.float32) / 255.0).permute(0, 3, 1, 2)
    y = torch.from_numpy(np.asarray(gt, np.float32) / 255.0).permute(0, 3, 1, 2)
    coords = torch.arange(11, dtype=torch.float32) - 5
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    g = (g / g.sum())[:, None] @ (g / g.sum())[None, :]
    w = g.expand(3, 1, 11, 11)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=3)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return float(s.mean())


def clip_metrics(*, pred_rgb: np.ndarray, pred_pm: np.ndarray | None, gt_rgb: np.ndarray, gt_pm: np.ndarray,
                 gt_valid: np.ndarray, X_TC: np.ndarray, K: np.ndarray, gripper: np.ndarray) -> dict[str, float]:
    """Metrics of one two-view clip.

    Args:
        pred_rgb, gt_rgb: (2, F, H, W, 3) uint8, view n first.
        pred_pm, gt_pm: (2, F, H, W, 3) metric pointmaps, both views in camera n's frame.
        gt_valid: (2, F, H, W) validity of the ground truth.
        X_TC: (2, 4, 4) camera poses; K: (2, 3, 3) intrinsics.
        gripper: (2, F, H, W) ground-truth gripper masks.
    """
    from geo4d_policy.perception.metrics import cross_view_miou

    out: dict[str, float] = {}
    for v, name in ((0, "n"), (1, "m")):
        out[f"psnr_{name}"] = psnr(pred_rgb[v], gt_rgb[v])
        out[f"ssim_{name}"] = ssim(pred_rgb[v], gt_rgb[v])
    if pred_pm is None:
        return out
    X_CmCn = np.linalg.inv(X_TC[1]) @ X_TC[0]
    for v, name in ((0, "n"), (1, "m")):
        pp, gp = pred_pm[v], gt_pm[v]
        if v == 1:  # back into camera m's own frame: z is then m's depth
            pp, gp = transform_points(X_CmCn, pp), transform_points(X_CmCn, gp)
        d = depth_metrics(pp[..., 2], gp[..., 2], gt_valid[v])
        out[f"abs_rel_{name}"], out[f"delta1_{name}"] = d["abs_rel"], d["delta1"]
    # Consistency: view n's gripper lifted with the *predicted* X^n, projected into m.
    out["miou"], _ = cross_view_miou(gripper[0], pred_pm[0], gripper[1], K_m=K[1], X_CmCn=X_CmCn)
    out["miou_gt"], _ = cross_view_miou(gripper[0], gt_pm[0], gripper[1], K_m=K[1], X_CmCn=X_CmCn,
                                        valid_n=gt_valid[0])
    return out

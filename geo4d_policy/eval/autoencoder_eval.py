"""Round trip of ground-truth frames through the autoencoders: the ceiling of any generator on them.

A generator predicts latents; the autoencoders' decoders turn them into RGB and pointmaps. Even a
perfect prediction (the encoding of the true future) comes back only as well as the
autoencoders reconstruct, so their round trip of recorded frames bounds every figure the
generator can reach. Measured where the policy looks: the policy's two evaluation cameras
(camera n = first held-out view, m = second; m's points expressed in n's frame, as the
generator predicts them), on episodes the autoencoders were not trained on.

Per frame and view: depth AbsRel and delta1 over valid pixels (view m's round-trip points are
taken back to m's frame with the recorded calibration, as :mod:`~geo4d_policy.eval.video_metrics`
does), the median 3D error over gripper pixels (mm), and RGB PSNR (dB).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from geo4d_policy.data.frame_store import FrameStore
from geo4d_policy.data.geometry import PointmapNormalization


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR (dB) of images in [-1, 1] quantised like uint8 frames."""
    qa = ((a.clamp(-1, 1) + 1) * 127.5).round() / 255.0
    qb = ((b.clamp(-1, 1) + 1) * 127.5).round() / 255.0
    mse = ((qa - qb) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


@torch.no_grad()
def round_trip_metrics(
    store: FrameStore,
    *,
    image_vae: Any | None,
    pointmap_vae: Any | None,
    normalization: PointmapNormalization,
    cameras: Sequence[int] | None = None,
    frames_per_episode: int | None = None,
    batch_size: int = 256,
    autocast: bool | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Autoencoder round-trip metrics on ``store`` (see the module docstring).

    Args:
        store: validation frames (all 16 cameras, or at least ``cameras``).
        image_vae, pointmap_vae: :class:`~geo4d_policy.models.vae.VAE` (either may be None).
        normalization: the generator's pointmap normalisation.
        cameras: store positions of (n, m); default the first two held-out views.
        frames_per_episode: evaluate a seeded subset of frames per episode (None = all).
        autocast: bf16 autocast (default on CUDA, as inference runs).

    Returns:
        ``{"views": {"n": {...}, "m": {...}}, "mean": {...}}`` with ``abs_rel``, ``delta1``,
        ``gripper_px_mm_median``, ``gripper_px_mm_p90``, ``psnr`` and counts.
    """
    dev = store.device
    amp = dev.type == "cuda" if autocast is None else autocast
    n_cam, m_cam = cameras if cameras is not None else store.heldout_cameras[:2]
    rng = np.random.default_rng(seed)
    idx_e, idx_t = [], []
    for e in range(store.num_episodes):
        nf = int(store.n_frames[e])
        ts = np.arange(nf)
        if frames_per_episode is not None and frames_per_episode < nf:
            ts = np.sort(rng.choice(nf, frames_per_episode, replace=False))
        idx_e += [e] * len(ts)
        idx_t += ts.tolist()
    e_all = torch.tensor(idx_e, device=dev)
    t_all = torch.tensor(idx_t, device=dev)
    acc: dict[str, dict[str, list[torch.Tensor]]] = {"n": {}, "m": {}}
    for i in range(0, len(e_all), batch_size):
        e, t = e_all[i : i + batch_size], t_all[i : i + batch_size]
        for view, src, dst in (("n", n_cam, None), ("m", m_cam, n_cam)):
            srcs = torch.full_like(e, src)
            a = acc[view]
            if image_vae is not None:
                x = store.rgb_float(e, srcs, t)
                with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
                    y = image_vae.decode(image_vae.encode(x)).float()
                a.setdefault("psnr", []).append(_psnr(y, x))
            if pointmap_vae is None:
                continue
            dsts = None if dst is None else torch.full_like(e, dst)
            pts, valid = store.pointmaps(e, srcs, t, dsts, normalization=normalization)
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
                rec = pointmap_vae.decode(pointmap_vae.encode(pts, valid=valid)).float()
            p_gt = normalization.denormalize(pts)
            p_rt = normalization.denormalize(rec)
            err = (p_rt - p_gt).norm(dim=1)  # (B, H, W) metres
            if dsts is not None:
                # Back to m's own frame: depth is m's z.
                X = store.X_CdstCsrc(e, dsts, srcs)  # pose of n in m
                p_gt = torch.einsum("bij,bjhw->bihw", X[:, :3, :3], p_gt) + X[:, :3, 3, None, None]
                p_rt = torch.einsum("bij,bjhw->bihw", X[:, :3, :3], p_rt) + X[:, :3, 3, None, None]
            z_gt, z_rt = p_gt[:, 2], p_rt[:, 2].clamp_min(1e-3)
            ok = valid & (z_gt > 0)
            rel = ((z_rt - z_gt).abs() / z_gt.clamp_min(1e-6))[ok]
            ratio = torch.maximum(z_rt / z_gt.clamp_min(1e-6), z_gt / z_rt)[ok]
            a.setdefault("abs_rel_sum", []).append(rel.sum()[None])
            a.setdefault("delta1_sum", []).append((ratio < 1.25).float().sum()[None])
            a.setdefault("n_valid", []).append(torch.tensor([rel.numel()], device=dev, dtype=torch.float32))
            grip = store.gripper(e, srcs, t) & valid
            a.setdefault("gripper_err", []).append(err[grip])
    out: dict[str, Any] = {"views": {}, "n_frames": len(idx_e), "cameras": [store.camera_names[n_cam],
                                                                             store.camera_names[m_cam]]}
    for view, a in acc.items():
        r: dict[str, float] = {}
        if "psnr" in a:
            r["psnr"] = float(torch.cat(a["psnr"]).mean())
        if "n_valid" in a:
            nv = float(torch.cat(a["n_valid"]).sum())
            r["abs_rel"] = float(torch.cat(a["abs_rel_sum"]).sum()) / max(nv, 1.0)
            r["delta1"] = float(torch.cat(a["delta1_sum"]).sum()) / max(nv, 1.0)
            g = torch.cat(a["gripper_err"]).float() * 1e3
            r["gripper_pixels"] = int(g.numel())
            if g.numel():
                r["gripper_px_mm_median"] = float(g.median())
                r["gripper_px_mm_p90"] = float(torch.quantile(g[:1_000_000], 0.9))
        out["views"][view] = r
    keys = set(out["views"]["n"]) & set(out["views"]["m"])
    out["mean"] = {k: 0.5 * (out["views"]["n"][k] + out["views"]["m"][k]) for k in sorted(keys)}
    return out

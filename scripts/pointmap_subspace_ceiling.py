"""Ceiling of low-dimensional pointmap latents: the best linear K-dimensional code of 8x8 patches.

A diffusion model can only denoise what its first layers can carry; a smaller pointmap latent
than the patch codec's 192 channels would fit, at the price of geometry. This measures that
price before anything is trained: principal components of the patches (fitted on training
episodes' cameras of the train split) reconstruct validation clips (held-out cameras, future
frames 1-F), either the absolute patches or their change from the clip's conditioning frame
(exact where nothing moves). Printed and written per view (n; m = view m's points in n's frame),
K and code: median 3D error on gripper pixels and on all valid pixels (mm), its p90 on gripper
pixels, and the depth AbsRel of the reconstruction.

    python scripts/pointmap_subspace_ceiling.py --train TRAIN_DIR [...] --val VAL_DIR [...] \\
        --out ceiling.json [--clips 60 40] [--ks 8 16 32 64 96]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F

PATCH = 8


def _clips(roots: list[str], split: str, n: int, seed: int, n_future: int) -> list[dict]:
    from geo4d_policy.data.datasets import GeneratorClipDataset

    out = []
    for root in roots:
        ds = GeneratorClipDataset(root, split=split, n_future=n_future, seed=seed)
        idx = np.random.default_rng(seed).choice(len(ds), size=min(n, len(ds)), replace=False)
        out += [ds[int(i)] for i in idx]
    if not out:
        raise SystemExit(f"no clips in {roots}")
    return out


def _patches(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) -> (N * h * w, 3 * 64) patch rows."""
    h, w = x.shape[-2:]
    p = F.pixel_unshuffle(x.reshape(-1, 3, h, w), PATCH)
    return p.permute(0, 2, 3, 1).reshape(-1, p.shape[1])


def _images(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    h, w = like.shape[-2] // PATCH, like.shape[-1] // PATCH
    n = rows.shape[0] // (h * w)
    return F.pixel_shuffle(rows.reshape(n, h, w, -1).permute(0, 3, 1, 2), PATCH).reshape(like.shape)


def _view(clips: list[dict], v: int) -> tuple[torch.Tensor, torch.Tensor]:
    x0 = torch.stack([c["pm"][v] for c in clips])  # (B, F, 3, H, W)
    cond = torch.stack([c["pm_cond"][v] for c in clips])[:, None].expand_as(x0)
    return x0, cond


def ceiling(train: list[str], val: list[str], *, ks: tuple[int, ...], clips: tuple[int, int] = (60, 40),
            n_future: int = 5) -> dict:
    from geo4d_policy.data.geometry import PointmapNormalization

    norm = PointmapNormalization()  # the datasets' default, as the generator's configs use
    torch.manual_seed(0)
    tr = _clips(train, "train", clips[0], 1, n_future)
    va = _clips(val, "heldout", clips[1], 2, n_future)
    result: dict = {}
    for v, name in ((0, "n"), (1, "m")):
        x0, cond = _view(tr, v)
        a = _patches(x0)
        mean = a.mean(0)
        basis_abs = torch.linalg.svd(a - mean, full_matrices=False)[2]
        basis_chg = torch.linalg.svd(_patches(x0 - cond), full_matrices=False)[2]
        vx0, vcond = _view(va, v)
        valid = torch.stack([c["valid"][v] for c in va])
        grip = torch.stack([c["gripper"][v] for c in va])

        def score(rec: torch.Tensor) -> dict:
            err = (rec - vx0).norm(dim=2) / norm.scale * 1000.0
            z, zr = norm.denormalize(vx0[:, :, 2]), norm.denormalize(rec[:, :, 2])
            ok = valid & (z.abs() > 0.05)
            g = ok & grip
            return {"gripper_mm_median": float(err[g].median()) if g.any() else None,
                    "gripper_mm_p90": float(err[g].quantile(0.9)) if g.any() else None,
                    "all_mm_median": float(err[ok].median()),
                    "abs_rel": float(((zr - z).abs() / z.abs())[ok].mean())}

        rows = {"repeat_current": score(vcond)}
        va_abs, va_chg = _patches(vx0), _patches(vx0 - vcond)
        for k in ks:
            p = basis_abs[:k].T
            rows[f"absolute_{k}"] = score(_images((va_abs - mean) @ p @ p.T + mean, vx0))
            p = basis_chg[:k].T
            rows[f"change_{k}"] = score(vcond + _images(va_chg @ p @ p.T, vx0))
        result[name] = rows
    return {"train": train, "val": val, "clips": list(clips), "frames": [1, n_future], "views": result}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", nargs="+", required=True, help="training dataset directories")
    ap.add_argument("--val", nargs="+", required=True, help="validation dataset directories")
    ap.add_argument("--out", required=True)
    ap.add_argument("--clips", nargs=2, type=int, default=(60, 40), help="clips per training / validation dataset")
    ap.add_argument("--ks", nargs="+", type=int, default=(8, 16, 32, 64, 96))
    args = ap.parse_args(argv)
    if any(not 0 < k <= 3 * PATCH * PATCH for k in args.ks):
        ap.error(f"--ks must lie in 1..{3 * PATCH * PATCH}")
    res = ceiling(args.train, args.val, ks=tuple(args.ks), clips=tuple(args.clips))
    for view, rows in res["views"].items():
        for name, r in rows.items():
            print(view, f"{name:16s}", "  ".join(f"{k} {v:.4g}" if v is not None else f"{k} -" for k, v in r.items()))
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

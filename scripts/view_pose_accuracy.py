#!/usr/bin/env python
"""How well the policy's estimate of camera m's pose (perception/view_pose.py) recovers the truth.

On recorded data (``geo4d-collect`` datasets), with the clips and held-out camera pairs of
``geo4d-eval-tracking``: view m's depth of the clip's first frame in camera m's own frame (what
the policy observes) against the recorded next frame of view m mapped to camera n with the true
``X_CnCm`` (what a perfect generator would predict as its first ``X^{m->n}``), on the pixels that
show no gripper in either, as :func:`video_policy.estimate_view_m_pose` does. ``--noise`` adds
Gaussian depth noise (m) to the predicted frame, as a stand-in for a generator's error. Prints
per-dataset median / max translation (mm) and rotation (deg) errors and the share trusted;
writes them to ``--out`` as JSON.

    PYTHONPATH=$PWD python scripts/view_pose_accuracy.py --data DIR [DIR ...] [--clips 10]
        [--noise 0.005] [--max-residual M] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from geo4d_policy.data.geometry import depth_to_pointmap, relative_camera_transform, transform_points
from geo4d_policy.eval.tracking_eval import load_clip, sample_clips
from geo4d_policy.perception.pose_tracker import pose_delta
from geo4d_policy.perception.view_pose import MAX_RESIDUAL_M, estimate_view_pose


def measure(root: str, *, clips: int, noise: float, seed: int, max_residual: float = MAX_RESIDUAL_M) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for clip in sample_clips(root, n_clips=clips, n_future=1, seed=seed):
        data = load_clip(clip)
        truth = relative_camera_transform(data.X_TC[0], data.X_TC[1])
        points_m, valid_m = depth_to_pointmap(data.depth[1, 0], data.K[1])
        depth_next = data.depth[1, 1].copy()
        ok = depth_next > 0
        if noise > 0:
            depth_next[ok] = np.maximum(depth_next[ok] + rng.normal(scale=noise, size=int(ok.sum())), 1e-3)
        pm_next, valid_next = depth_to_pointmap(depth_next.astype(np.float32), data.K[1])
        pmn = transform_points(truth, pm_next)
        static = (data.masks[1, 0] == 0) & (data.masks[1, 1] == 0)
        est = estimate_view_pose(points_m, valid_m, pmn, valid_next, static=static, max_residual_m=max_residual)
        row = {"clip": f"{clip.path.name}:{clip.frames[0]}", "cams": list(clip.cams), **est.record()}
        if est.ok:
            dt, dr = pose_delta(truth, est.X_CnCm)
            row.update(trans_mm=round(1e3 * dt, 3), rot_deg=round(float(np.degrees(dr)), 4))
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--clips", type=int, default=10)
    p.add_argument("--noise", type=float, default=0.0, help="depth noise (m) on the predicted frame")
    p.add_argument("--max-residual", type=float, default=MAX_RESIDUAL_M,
                   help=f"trust threshold on the median inlier residual (m; default {MAX_RESIDUAL_M})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON file for the per-clip rows")
    args = p.parse_args(argv)
    report = {}
    for root in args.data:
        rows = measure(root, clips=args.clips, noise=args.noise, seed=args.seed, max_residual=args.max_residual)
        good = [r for r in rows if r["source"] == "estimated"]
        t = np.array([r["trans_mm"] for r in good]) if good else np.array([np.nan])
        a = np.array([r["rot_deg"] for r in good]) if good else np.array([np.nan])
        summary = {"clips": len(rows), "trusted": len(good), "trans_mm_median": float(np.median(t)),
                   "trans_mm_max": float(np.max(t)), "rot_deg_median": float(np.median(a)),
                   "rot_deg_max": float(np.max(a)),
                   "residual_mm_median": float(np.median([r["residual_mm"] for r in good])) if good else None,
                   "fallback_reasons": sorted({r["reason"] for r in rows if r["reason"]})}
        report[str(root)] = {"summary": summary, "rows": rows}
        print(f"{Path(root).name}: {json.dumps(summary)}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Autoencoder round-trip ceilings on validation episodes (the policy's two evaluation cameras).

    python scripts/eval_autoencoders.py --data VAL_DIR [VAL_DIR ...] --out FILE.json \
        --candidate NAME IMAGE_VAE_CKPT POINTMAP_VAE_CKPT [--candidate ...] [--generator NAME CKPT ...]

Each candidate is a pair of VAE checkpoints (``-`` for none); ``--generator`` takes both
autoencoders of a generator checkpoint (e.g. the shipped one, for the before/after figure).
Writes per-task and pooled metrics (:func:`geo4d_policy.eval.autoencoder_eval.round_trip_metrics`)
and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> int:
    import torch

    from geo4d_policy.data.format import load_meta
    from geo4d_policy.data.frame_store import FrameStore
    from geo4d_policy.data.geometry import PointmapNormalization
    from geo4d_policy.eval.autoencoder_eval import round_trip_metrics
    from geo4d_policy.models.pipeline import Generator4D
    from geo4d_policy.models.vae import VAE

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--candidate", nargs=3, action="append", default=[], metavar=("NAME", "IMAGE", "POINTMAP"))
    p.add_argument("--generator", nargs=2, action="append", default=[], metavar=("NAME", "CKPT"))
    p.add_argument("--frames-per-episode", type=int, default=None)
    p.add_argument("--range", nargs=2, type=float, default=(-1.0, 2.0))
    args = p.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    norm = PointmapNormalization(*args.range)
    models = {}
    for name, img, pm in args.candidate:
        models[name] = (None if img == "-" else VAE.from_pretrained(img, device=dev, kind="image"),
                        None if pm == "-" else VAE.from_pretrained(pm, device=dev, kind="pointmap"))
    for name, ckpt in args.generator:
        g = Generator4D.from_pretrained(ckpt, device=dev)
        models[name] = (g.image_vae, g.pointmap_vae)
    results = {"data": args.data, "device": dev, "tasks": {}}
    for d in args.data:
        task = load_meta(d).task
        t0 = time.perf_counter()
        store = FrameStore.load([d], device=dev, cameras="all")
        res = {}
        for name, (img, pm) in models.items():
            res[name] = round_trip_metrics(store, image_vae=img, pointmap_vae=pm, normalization=norm,
                                           frames_per_episode=args.frames_per_episode)
        results["tasks"][task] = {"episodes": store.seeds.tolist(), "candidates": res,
                                  "seconds": time.perf_counter() - t0}
        del store
    keys = ("gripper_px_mm_median", "gripper_px_mm_p90", "abs_rel", "delta1", "psnr")
    print(f"{'candidate':24s} {'task':28s} " + " ".join(f"{k:>20s}" for k in keys))
    for task, r in results["tasks"].items():
        for name, m in r["candidates"].items():
            print(f"{name:24s} {task:28s} " + " ".join(f"{m['mean'].get(k, float('nan')):20.4f}" for k in keys))
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

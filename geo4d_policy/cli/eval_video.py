"""``geo4d-eval-video``: 4D-generation quality on held-out views (the paper's Table 1 metrics).

    geo4d-eval-video --checkpoint CKPT --data DIR [DIR ...] --out OUT [--clips N] [--steps 25]
                     [--device cpu|cuda] [--seed S]

For each dataset, ``N`` clips are drawn from the held-out cameras (two distinct held-out views
per clip, view n first); the generator predicts 10 frames from the conditioning frame and is
scored against the ground truth (``geo4d_policy.eval.video_metrics``). Writes
``OUT/metrics.json`` (per task, per clip and the mean, plus the resolved options) and
``OUT/provenance.json`` (code version, checkpoint and dataset hashes, seed, device, packages) and
prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # CPU timings swing 20x without it (notes/mlstack.md)

METRIC_KEYS = ("abs_rel_n", "abs_rel_m", "delta1_n", "delta1_m", "psnr_n", "psnr_m", "ssim_n", "ssim_m", "miou",
               "miou_gt")


def _to_uint8(x) -> "np.ndarray":
    import numpy as np

    return ((x.numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)


def evaluate(checkpoint: str, data_dirs: Sequence[str], *, clips: int, steps: int, device: str, seed: int
             ) -> dict:
    import numpy as np

    from geo4d_policy.data.datasets import GeneratorClipDataset
    from geo4d_policy.data.format import load_meta
    from geo4d_policy.eval.video_metrics import clip_metrics
    from geo4d_policy.models.pipeline import Generator4D

    model = Generator4D.from_pretrained(checkpoint, device=device)
    norm = model.normalization
    results: dict = {"checkpoint": checkpoint, "steps": steps, "clips_per_task": clips, "seed": seed, "tasks": {}}
    for d in data_dirs:
        task = load_meta(d).task
        ds = GeneratorClipDataset(d, split="heldout", seed=seed)
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(ds), size=min(clips, len(ds)), replace=False)
        per_clip, latencies = [], []
        for i in idx:
            s = ds[int(i)]
            rgb_cond = _to_uint8(s["rgb_cond"].permute(0, 2, 3, 1))
            pm_cond = norm.denormalize(s["pm_cond"]).permute(0, 2, 3, 1).numpy()
            vc = s["valid_cond"].numpy()
            t0 = time.perf_counter()
            pred = model.predict(rgb_cond, pm_cond[0], pm_cond[1], valid_n=vc[0], valid_m=vc[1], task=task,
                                 num_steps=steps, seed=int(i))
            latencies.append(time.perf_counter() - t0)
            gt_rgb = _to_uint8(s["rgb"].permute(0, 1, 3, 4, 2))
            gt_pm = norm.denormalize(s["pm"]).permute(0, 1, 3, 4, 2).numpy()
            m = clip_metrics(pred_rgb=pred["rgb"], pred_pm=pred["pointmaps"], gt_rgb=gt_rgb, gt_pm=gt_pm,
                             gt_valid=s["valid"].numpy(), X_TC=s["X_TC"].numpy().astype(np.float64),
                             K=s["K"].numpy().astype(np.float64), gripper=s["gripper"].numpy())
            m.update(clip_index=int(i), cams=[int(c) for c in s["cams"]], latency_s=latencies[-1])
            per_clip.append(m)
        mean = {k: float(np.nanmean([c[k] for c in per_clip if k in c])) for k in METRIC_KEYS
                if any(k in c for c in per_clip)}
        mean["latency_s"] = float(np.median(latencies)) if latencies else float("nan")
        results["tasks"][task] = {"data": str(d), "mean": mean, "clips": per_clip}
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="geo4d-eval-video", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--clips", type=int, default=20)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.clips <= 0 or args.steps <= 0:
        print("geo4d-eval-video: --clips and --steps must be positive", file=sys.stderr)
        return 2
    from rich.console import Console
    from rich.table import Table

    from geo4d_policy import provenance
    from geo4d_policy.config import atomic_write_text
    from geo4d_policy.data.format import DatasetError
    from geo4d_policy.models.checkpoint import CheckpointError

    try:
        record = provenance.new_provenance(
            command="geo4d-eval-video", device=args.device,
            config={"checkpoint": provenance.path_digest(args.checkpoint), "data": provenance.data_identity(args.data),
                    "clips": args.clips, "steps": args.steps},
            seeds={"seed": args.seed, "seed_stream": "data (held-out cameras)"},
            session_info={"checkpoint_path": args.checkpoint, "data_dirs": list(args.data)})
        results = evaluate(args.checkpoint, args.data, clips=args.clips, steps=args.steps, device=args.device,
                           seed=args.seed)
    except (DatasetError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"geo4d-eval-video: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    atomic_write_text(os.path.join(args.out, "metrics.json"), json.dumps(results, indent=1) + "\n")
    provenance.write_provenance(args.out, record)
    table = Table(title=f"geo4d-eval-video ({args.steps} steps, held-out views)")
    table.add_column("metric")
    for task in results["tasks"]:
        table.add_column(task, justify="right")
    for k in (*METRIC_KEYS, "latency_s"):
        table.add_row(k, *(f"{r['mean'].get(k, float('nan')):.3f}" for r in results["tasks"].values()))
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

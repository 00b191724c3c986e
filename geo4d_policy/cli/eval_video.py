"""``geo4d-eval-video``: what the policy needs from the 4D generator, with its ceiling and floor.

    geo4d-eval-video --checkpoint CKPT --data VAL_DIR [VAL_DIR ...] --out OUT [--clips 30] [--steps 25]
                     [--device cpu|cuda] [--seed S] [--segmenter auto|none|PATH] [--workers N]
                     [--rows generator autoencoder repeat_current]

On validation episodes (never the checkpoint's training episodes: refused), on the policy's two
evaluation cameras, ``--clips`` clips per task where a gripper moves: the generator's
prediction, the autoencoders' round trip of the recorded future (the ceiling) and "repeat the
current frame" (the floor) are scored per view and future frame (depth AbsRel/delta1,
gripper-pixel 3D error, PSNR) and through the policy's own tracking (tracked gripper pose
against the logged robot pose, open/close). See :mod:`geo4d_policy.eval.generator_eval`.

Writes ``OUT/metrics.json`` (``rows.<row>`` with ``gripper_track_mm_median``,
``gripper_track_mm_p90``, ``gripper_track_deg_median``, ``open_close_acc``, ``abs_rel``,
``delta1``, ``gripper_px_mm_median``, ``psnr``: means over tasks and views of the executed
frames 1-5, plus per-task, per-view and per-frame tables), ``OUT/error_by_frame.png``, ``OUT/provenance.json`` (code version, checkpoint and dataset
hashes, the resolved options, device, packages), and
prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # CPU timings swing 20x without it (notes/mlstack.md)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="geo4d-eval-video", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", nargs="+", required=True, help="validation datasets (geo4d-collect, one task each)")
    p.add_argument("--out", required=True)
    p.add_argument("--clips", type=int, default=30, help="clips per task")
    p.add_argument("--steps", type=int, default=25, help="sampler steps")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--segmenter", default="auto", help="segmenter of the rows' RGB: auto (shipped), none, a path, or recorded (diagnostic: "
                        "the recorded future masks label every row, separating geometry from segmentation)")
    p.add_argument("--workers", type=int, default=0, help="tracking processes (0: one per CPU, at most 16)")
    p.add_argument("--rows", nargs="+", default=None, help="subset of generator autoencoder repeat_current")
    p.add_argument("--min-motion", type=float, default=0.02,
                   help="a clip counts when a gripper moves this far (m) over the executed frames")
    p.add_argument("--min-part-pixels", type=int, default=20,
                   help="... and shows this many gripper pixels in one of the two views")
    p.add_argument("--single-view", action="store_true",
                   help="track in view n only (the policy's single_view ablation: what view m adds)")
    p.add_argument("--training-episodes", action="store_true",
                   help="diagnostic: accept episodes the checkpoint trained on (its fit, not generalisation; "
                        "never a reported figure; recorded in metrics.json)")
    args = p.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from geo4d_policy import provenance
    from geo4d_policy.config import atomic_write_text
    from geo4d_policy.data.format import DatasetError
    from geo4d_policy.eval.generator_eval import (
        MOVING_KEYS,
        ROWS,
        SUMMARY_KEYS,
        GeneratorEvalConfig,
        evaluate_generator,
        plot_error_by_frame,
    )
    from geo4d_policy.models.checkpoint import CheckpointError

    try:
        config = GeneratorEvalConfig(clips=args.clips, steps=args.steps, seed=args.seed, segmenter=args.segmenter,
                                     workers=args.workers, rows=tuple(args.rows or ROWS),
                                     min_motion_m=args.min_motion, min_part_pixels=args.min_part_pixels,
                                     single_view=args.single_view, training_episodes=args.training_episodes)
        record = provenance.new_provenance(
            command="geo4d-eval-video", device=args.device,
            config={"checkpoint": provenance.path_digest(args.checkpoint), "data": provenance.data_identity(args.data),
                    "eval": dataclasses.asdict(config)},
            seeds={"seed": args.seed, "seed_stream": "data (validation episodes)"},
            session_info={"checkpoint_path": args.checkpoint, "data_dirs": list(args.data)})
        t0 = time.perf_counter()
        results = evaluate_generator(args.checkpoint, args.data, config, device=args.device,
                                     progress=lambda s: print(f"geo4d-eval-video: {s}", file=sys.stderr))
        results["seconds"] = time.perf_counter() - t0
    except (DatasetError, CheckpointError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"geo4d-eval-video: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    atomic_write_text(os.path.join(args.out, "metrics.json"), json.dumps(results, indent=1) + "\n")
    provenance.write_provenance(args.out, record)
    plot_error_by_frame(results, os.path.join(args.out, "error_by_frame.png"))
    lo, hi = config.summary_frames
    episodes = "TRAINING episodes (diagnostic)" if args.training_episodes else "validation episodes"
    table = Table(title=f"geo4d-eval-video: frames {lo}-{hi}, {args.steps} steps, policy cameras, {episodes}")
    table.add_column("metric")
    for row in results["rows"]:
        table.add_column(row, justify="right")
    for k in (*SUMMARY_KEYS, *MOVING_KEYS):
        table.add_row(k, *(f"{r[k]:.4g}" for r in results["rows"].values()))
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``geo4d-collect``: record expert demonstrations as a multi-view RGB-D dataset.

    geo4d-collect --task T --episodes N --out DIR [--workers W] [--resolution HxW] [--seed S]
                  [--seed-stream {data,dev}] [--resume]

``DIR/provenance.json`` records the code version, the task, resolution, base seed and seed
stream, the device and package versions (``geo4d_policy.provenance``); ``--resume`` refuses a
dataset collected with other code or settings unless ``--resume-anyway``, and one of another
seed stream always.

Exit status 0 when the dataset holds N episodes, 1 when attempts ran out first, 2 on bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from geo4d_policy.cli import interruptible

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # CPU timings swing 20x without it (notes/mlstack.md)


def _resolution(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must look like 128x160 (HxW), got {text!r}") from None
    if h <= 0 or w <= 0 or h % 8 or w % 8:
        raise argparse.ArgumentTypeError(f"resolution must be positive multiples of 8 (the VAE downsamples 8x), "
                                         f"got {text!r}")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="geo4d-collect", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, help="task name (CamelCase or snake_case)")
    p.add_argument("--episodes", type=int, required=True, help="successful episodes wanted")
    p.add_argument("--out", required=True, help="dataset directory")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    p.add_argument("--resolution", type=_resolution, default=(128, 160), help="camera images HxW (default 128x160)")
    p.add_argument("--seed", type=int, default=0, help="base of the data-seed stream (disjoint from eval seeds)")
    p.add_argument("--seed-stream", default="data", metavar="{data,dev}",
                   help="seed stream: data (training, default) or dev (development checks, e.g. "
                        "geo4d-eval-tracking)")
    p.add_argument("--max-attempts", type=int, default=None, help="give up after this many attempts (default 2N+10)")
    p.add_argument("--resume", action="store_true", help="add to an existing dataset of the same task")
    p.add_argument("--resume-anyway", action="store_true",
                   help="with --resume: add to a dataset collected with other code (recorded in its provenance)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    interruptible()
    args = build_parser().parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from pathlib import Path

    from geo4d_policy import provenance
    from geo4d_policy.data.collect import CollectConfig, check_dataset_seed_stream, collect
    from geo4d_policy.data.format import DatasetError
    from geo4d_policy.interface import UnknownNameError, canonical_task_name

    try:
        task = canonical_task_name(args.task)
        config = CollectConfig(task=task, episodes=args.episodes, out_dir=args.out, seed=args.seed,
                               seed_stream=args.seed_stream,
                               workers=args.workers, resolution=args.resolution, max_attempts=args.max_attempts,
                               resume=args.resume)
        if args.resume and (Path(args.out) / "meta.json").exists():
            check_dataset_seed_stream(args.out, args.seed_stream)  # before its provenance gains a session
        # What the episodes are (how many and how fast they are collected is this session's business).
        provenance.start_provenance(
            args.out, command="geo4d-collect", config={"task": task, "resolution": list(args.resolution)},
            seeds={"base_seed": args.seed, "seed_stream": args.seed_stream},
            has_run=(Path(args.out) / "meta.json").exists(),
            resume=args.resume, anyway=args.resume_anyway, what="dataset",
            session_info={"episodes": args.episodes, "workers": args.workers, "max_attempts": args.max_attempts})
        summary = collect(config)
    except (UnknownNameError, ValueError, DatasetError, FileExistsError) as e:
        print(f"geo4d-collect: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ngeo4d-collect: interrupted; finished episodes are kept, continue with --resume", file=sys.stderr)
        return 130
    table = Table(title=f"geo4d-collect {summary['task']}")
    for col in ("episodes", "wanted", "attempts (this run)", "failed (this run)", "episodes/min", "MB/episode", "wall"):
        table.add_column(col, justify="right")
    bpe = summary["bytes_per_episode"]
    table.add_row(str(summary["episodes"]), str(summary["wanted"]), str(summary["attempts_this_run"]),
                  str(sum(summary["failures_this_run"].values())), f"{summary['episodes_per_min']:.2f}",
                  f"{bpe / 1e6:.1f}" if bpe else "-", f"{summary['wall_s']:.0f} s")
    console = Console()
    console.print(table)
    for reason, n in summary["failures_this_run"].items():
        console.print(f"  failed x{n}: {reason}")
    console.print(f"dataset: {summary['dataset']}  (geo4d-dataset info {summary['dataset']})")
    return 0 if summary["episodes"] >= summary["wanted"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

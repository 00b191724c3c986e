"""``geo4d-eval-tracking``: gripper tracking accuracy on ground-truth video of held-out views.

    geo4d-eval-tracking --data DIR [DIR ...] --out OUT [--clips N] [--degrade none,noise,dropout,misreg]
                        [--segmenter auto|none|CKPT] [--labels masks,masks_all,segmenter,segmenter_all]
                        [--n-future 10] [--no-hint] [--seed S]
                        [--tracker-engine auto|numpy|torch] [--tracker-device auto|cpu|cuda]

For each dataset (task) and arm: the tracker runs on recorded future frames of two held-out
cameras, the two views are fused and compared with the robot's measured gripper poses
(``geo4d_policy.eval.tracking_eval`` explains the protocol). Part labels: by default the
policy's setting, the segmenter's labels on every frame (``segmenter_all``, with the shipped
segmenter unless ``--segmenter`` names another, or ``none``), or the recorded masks on every
frame (``masks_all``) when there is no segmenter. ``--labels`` picks any of ``masks`` /
``segmenter`` (labels on the first frame only, then unsegmented frames), ``masks_all``,
``segmenter_all``. Writes ``OUT/metrics.json``, ``OUT/config.yaml`` (every setting, the
tracker's included) and ``OUT/provenance.json`` (code version, settings, segmenter and dataset
hashes, the datasets' seed streams, device, packages) and prints a table, including how often a
frame more than 3 cm off was still trusted (``conf. wrong``).

Exit status 0 on success, 2 on bad input (missing directory, a dataset without two held-out
cameras, an unknown degradation, an unreadable segmenter checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.table import Table

    from geo4d_policy.eval.tracking_eval import TrackingEvalConfig

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # CPU timings swing 20x without it (notes/mlstack.md)

# The option lists are needed to build the parser (--help shows them).
from geo4d_policy.eval.tracking_eval import DEGRADATIONS, LABEL_SOURCES  # noqa: E402
from geo4d_policy.cli import interruptible  # noqa: E402


def _choices(valid: tuple[str, ...], what: str):
    """argparse type: a comma-separated list of names from ``valid`` (duplicates dropped)."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
        bad = [n for n in names if n not in valid]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"unknown {what} {bad or [text]}; choose from {','.join(valid)}")
        return names

    return parse


def _segmenter_path(option: str) -> str | None:
    """``auto`` -> the shipped segmenter if present (else None), ``none`` -> None, else the path
    (checked when a label source needs it)."""
    if option in ("none", "off"):
        return None
    if option == "auto":
        from geo4d_policy.policies.video_policy import DEFAULT_SEGMENTER

        return str(DEFAULT_SEGMENTER) if DEFAULT_SEGMENTER.exists() else None
    return option


def _seed_streams(data_dirs: Sequence[str]) -> str:
    """The seed streams of the datasets' episodes (``data``, ``dev``; ``+``-joined when mixed)."""
    from geo4d_policy.data.format import completed_seeds
    from geo4d_policy.interface import seed_stream_of

    return "+".join(sorted({seed_stream_of(seed) for d in data_dirs for seed in completed_seeds(d)})) or "none"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="geo4d-eval-tracking", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, help="dataset directories (geo4d-collect)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--clips", type=int, default=10, help="clips per dataset (default 10)")
    p.add_argument("--degrade", type=_choices(DEGRADATIONS, "degradation(s)"), default=("none",),
                   help="comma-separated degradations: none,noise,dropout,misreg (default none)")
    p.add_argument("--segmenter", default="auto",
                   help="segmenter checkpoint for the segmenter label sources: auto (the shipped one, if "
                        "present), none, or a directory (default auto)")
    p.add_argument("--labels", type=_choices(LABEL_SOURCES, "label source(s)"), default=None,
                   help="comma-separated label sources (default: the policy's setting, segmenter_all, or "
                        "masks_all without a segmenter)")
    p.add_argument("--n-future", type=int, default=10, help="future frames per clip (default 10)")
    p.add_argument("--no-hint", action="store_true", help="register without the robot's measured pose")
    p.add_argument("--tracker-engine", choices=("auto", "numpy", "torch"), default="auto",
                   help="ICP numerics: numpy (CPU reference), torch (batched; the GPU path), auto (torch on "
                        "CUDA when available, else numpy; default)")
    p.add_argument("--tracker-device", default="auto",
                   help="device of the torch numerics: auto (default), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0)
    return p


def _table(results: dict, config: TrackingEvalConfig) -> Table:
    """The summary table: one row per task, label source and degradation (arms pooled)."""
    from rich.table import Table

    table = Table(title=f"geo4d-eval-tracking (held-out views, {config.n_future} future frames, "
                        f"{'with' if config.use_hint else 'no'} pose hint; ms per frame and arm, both views)")
    columns = ("task", "labels", "degradation", "arm-clips", "trans mm med", "p90", "rot deg med",
               "open/close acc", "GT closed", "lost", "conf. wrong", "ms/frame")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i < 3 else "right")

    def fmt(v, spec):
        return "-" if v is None or v != v else format(v, spec)

    for task, by_source in results["tasks"].items():
        for source, by_deg in by_source.items():
            for deg, r in by_deg.items():
                a = r["all"]
                table.add_row(task, source, deg, str(a["n_clips"]),
                              *(fmt(a.get(k), spec) for k, spec in (
                                  ("trans_mm_median", ".1f"), ("trans_mm_p90", ".1f"),
                                  ("rot_deg_median", ".2f"), ("open_close_accuracy", ".3f"),
                                  ("gt_closed_fraction", ".2f"),
                                  ("lost_rate", ".3f"), ("confidently_wrong_rate", ".3f"),
                                  ("ms_per_frame", ".0f"))))
    return table


def main(argv: Sequence[str] | None = None) -> int:
    interruptible()
    args = build_parser().parse_args(argv)
    if args.clips < 1 or args.n_future < 1:
        print("geo4d-eval-tracking: --clips and --n-future must be positive", file=sys.stderr)
        return 2
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from geo4d_policy import provenance
    from geo4d_policy.config import atomic_write_text, save_config, to_dict
    from geo4d_policy.data.format import DatasetError
    from geo4d_policy.eval.tracking_eval import TrackingEvalConfig, check_dataset, evaluate_tracking
    from geo4d_policy.models.checkpoint import CheckpointError
    from geo4d_policy.perception.icp_core import ICPTrackerConfig, engine_choice

    console = Console(stderr=True)
    try:
        segmenter = _segmenter_path(args.segmenter)
        config = TrackingEvalConfig(
            clips=args.clips, n_future=args.n_future, degradations=args.degrade,
            labels=args.labels or (("segmenter_all",) if segmenter else ("masks_all",)),
            segmenter=segmenter,
            use_hint=not args.no_hint, seed=args.seed,
            tracker=ICPTrackerConfig(engine=args.tracker_engine, device=args.tracker_device))
        _, tracker_device = engine_choice(config.tracker)  # an unknown name or a missing GPU: exit 2 now
        for d in args.data:
            check_dataset(d)
        record = provenance.new_provenance(
            command="geo4d-eval-tracking", device=tracker_device,
            config={**to_dict(config), "segmenter": provenance.path_digest(segmenter) if segmenter else None,
                    "data": provenance.data_identity(args.data)},
            seeds={"seed": args.seed, "seed_stream": f"{_seed_streams(args.data)} (held-out cameras)"},
            session_info={"segmenter_path": segmenter, "data_dirs": list(args.data)})
        if config.needs_segmenter:
            # Fail before the long run, not after the first clip.
            from geo4d_policy.perception.segmenter import GripperSegmenter

            GripperSegmenter.from_pretrained(config.segmenter)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            job = bar.add_task("tracking", total=args.clips * len(args.data))

            def step(text: str) -> None:
                bar.update(job, advance=1, description=text)

            results = evaluate_tracking(args.data, config, progress=step)
    except (DatasetError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"geo4d-eval-tracking: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ngeo4d-eval-tracking: interrupted", file=sys.stderr)
        return 130
    results = {"config": to_dict(config), "data": [str(d) for d in args.data], **results}
    os.makedirs(args.out, exist_ok=True)
    atomic_write_text(os.path.join(args.out, "metrics.json"), json.dumps(results, indent=1) + "\n")
    save_config(config, os.path.join(args.out, "config.yaml"))
    provenance.write_provenance(args.out, record)
    # Not a terminal (a log file): do not squeeze the table into 80 columns.
    Console(width=None if sys.stdout.isatty() else 150).print(_table(results, config))
    print(f"geo4d-eval-tracking: wrote {os.path.join(args.out, 'metrics.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

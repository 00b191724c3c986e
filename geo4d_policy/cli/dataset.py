"""``geo4d-dataset``: inspect and verify collected datasets.

    geo4d-dataset info DIR [--json] [--episodes]
    geo4d-dataset verify DIR [--json]

Exit status: 0 on success; ``verify`` exits 1 when any file is broken (each is named) or the
dataset's ``meta.json`` is unusable; ``info`` exits 2 when DIR is not a readable dataset.
Errors are reported as one line on stderr, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from geo4d_policy.cli import interruptible

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # CPU timings swing 20x without it (notes/mlstack.md)


def _human(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"  # pragma: no cover


def _info(args: argparse.Namespace) -> int:
    from geo4d_policy.data.format import DatasetError
    from geo4d_policy.data.verify import dataset_info

    try:
        info = dataset_info(args.dir)
    except DatasetError as e:
        print(f"geo4d-dataset: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    n = info["n_episodes"]
    rate = f"{100.0 * info['n_successes'] / n:.0f}%" if n else "-"
    prov = info["provenance"]
    print(f"dataset       {info['root']}  (format v{info['format_version']})")
    print(f"task          {info['task']}")
    print(f"episodes      {n}  (successes {info['n_successes']}, {rate})")
    print(f"video frames  {info['n_frames']} at {info['rates_hz']['video']:g} Hz; "
          f"robot steps {info['n_steps']} at {info['rates_hz']['robot']:g} Hz")
    print(f"resolution    {info['resolution'][0]}x{info['resolution'][1]} (HxW)")
    print(f"cameras       train {len(info['cameras']['train'])}: {', '.join(info['cameras']['train'])}")
    held = info["cameras"]["heldout"]
    print(f"              held out {len(held)}: {', '.join(held)}")
    print(f"size on disk  {_human(info['bytes_total'])} total, "
          f"{_human(info['bytes_per_episode_mean'])} per episode")
    print(f"made by       {prov.get('command', '?')}  "
          f"(commit {prov.get('git_commit') or '?'}, {prov.get('created', '?')})")
    if info["missing_files"]:
        missing = info["missing_files"]
        print(f"MISSING       {len(missing)} listed file(s): {', '.join(missing)}")
    if args.episodes:
        print(f"\n{'seed':>10}  {'frames':>6}  {'steps':>6}  {'success':>7}  {'size':>9}  file")
        for e in info["episodes"]:
            print(f"{e['seed']:>10}  {e['n_frames']:>6}  {e['n_steps']:>6}  {str(e['success']):>7}  "
                  f"{_human(e['bytes']):>9}  {e['file']}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from geo4d_policy.data.verify import verify_dataset

    report = verify_dataset(args.dir)
    if args.json:
        print(json.dumps({"root": str(report.root), "ok": report.ok, "n_checked": report.n_checked,
                          "problems": report.problems, "unlisted": report.unlisted}, indent=1))
    else:
        for path, problems in report.problems.items():
            print(f"BROKEN {path}")
            for p in problems:
                print(f"  - {p}")
        for path in report.unlisted:
            print(f"note: {path} is not listed in meta.json (ignored; removed when collection resumes)")
        status = "OK" if report.ok else f"{len(report.problems)} broken file(s)"
        print(f"verified {report.n_checked} episode file(s) in {report.root}: {status}")
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``geo4d-dataset``; returns the exit status."""
    interruptible()
    parser = argparse.ArgumentParser(prog="geo4d-dataset",
                                     description="Inspect and verify geo4d-policy datasets.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="episodes, successes, frames, sizes, resolution, camera split")
    p.add_argument("dir", help="dataset directory")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--episodes", action="store_true", help="also list every episode")
    p.set_defaults(func=_info)
    p = sub.add_parser("verify", help="read every file completely and check it against meta.json")
    p.add_argument("dir", help="dataset directory")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_verify)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("geo4d-dataset: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a last guard: report, don't dump a traceback on the user
        print(f"geo4d-dataset: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""How fast each scene still moves after ``Env.reset``'s settling, over many seeds of every stream.

For each task and seed, the seed's first layout (attempt 0) is built and settled exactly as
``Env.reset`` does; the record holds the plant's largest generalised velocity then and the
farthest object's distance from the world origin. ``sim.env.SETTLED_SPEED_LIMIT`` must lie well
between the valid scenes' speeds and the diverging ones'; the seeds above it are the ones whose
layout ``Env.reset`` replaces.

    python scripts/scan_settling.py --out results/precision/settling_scan.json --count 60
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from geo4d_policy.interface import TASK_NAMES, stream_seed

# (stream, base seed, how many: None = --count) of the seeds scanned: evaluation and development
# seeds, the generator's training data (base 0) and its validation data (bases 7 and 8).
BLOCKS = (("eval", 0, None), ("dev", 0, None), ("data", 0, 24), ("data", 7, 6), ("data", 8, 10))


def main(argv: list[str] | None = None) -> int:
    from sim.env import SETTLED_SPEED_LIMIT, make_env

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="JSON record to write")
    p.add_argument("--count", type=int, default=60, help="evaluation and development seeds per task (index 0..count-1)")
    p.add_argument("--tasks", nargs="+", default=list(TASK_NAMES), choices=list(TASK_NAMES))
    args = p.parse_args(argv)
    if args.count < 1:
        p.error("--count must be positive")
    seeds = [stream_seed(s, b, i) for s, b, n in BLOCKS for i in range(args.count if n is None else n)]
    record: dict = {"limit": SETTLED_SPEED_LIMIT, "blocks": [list(b) for b in BLOCKS], "count": args.count, "tasks": {}}
    for task in args.tasks:
        env, rows = make_env(task), []
        for seed in seeds:
            env.layout = env.task.layout_for_seed(seed)
            speed = env.build_and_settle()
            far = max(float(np.linalg.norm(X[:3, 3])) for X in env.station.object_poses().values()) \
                if np.isfinite(speed) else float("inf")
            rows.append({"seed": seed, "max_speed": speed, "farthest_object_m": far})
        speeds = sorted((r["max_speed"] for r in rows), reverse=True)
        above = [r["seed"] for r in rows if r["max_speed"] > SETTLED_SPEED_LIMIT]
        record["tasks"][task] = {"above_limit": above, "fastest": speeds[:5], "seeds": rows}
        print(f"{task:28s} {len(rows)} seeds; fastest {', '.join(f'{v:.3g}' for v in speeds[:3])}; "
              f"above {SETTLED_SPEED_LIMIT}: {above or 'none'}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(f".{args.out.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

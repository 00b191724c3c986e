#!/usr/bin/env python
"""Replay the oracle's gripper decisions with each state rule changed, against the truth.

    python scripts/gripper_decisions.py RUN_DIR [RUN_DIR ...] [--frames 4] [--json OUT.json]

Every replan of an oracle run records, per arm, what its open/close decision was made from
(``oracle_replans[*][arm]["state"]``: the finger readings, which frames saw the fingers, the
predicted positions, the state and position commanded before) and the truth (the look-ahead's
finger opening below the estimator's decision width). This script re-decides every replan with
:func:`geo4d_policy.policies.video_policy.decide_gripper_states` under the run's settings and
with one rule changed at a time (switched off; release back-dating, off by default, switched
on), and counts the executed frames (the first ``--frames``) whose decided state disagrees
with the truth: ``closed_early`` (decided closed, truly open: a grasp
that starts above its object, a release that drags) and ``open_early`` (decided open, truly
closed: a grasp that misses, an object dropped in flight). It also counts replans where the
idle-arm rule held an arm whose look-ahead moved more than the idle tolerance.

The runs must be on development seeds (``geo4d-rollout --policy oracle --seed-stream dev``):
these counts decide which rules stay, so records of another seed stream are refused. The
run's settings are its ``policy_config.yaml`` (the oracle's defaults for a run without one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from geo4d_policy.eval.records import read_records
from geo4d_policy.interface import seed_stream_of
from geo4d_policy.policies.video_policy import GripperStateInputs, VideoPolicyConfig, decide_gripper_states

VARIANTS: dict[str, dict] = {
    "default": {},
    "release back-dating 1": {"release_backdate_frames": 1},
    "release back-dating 2": {"release_backdate_frames": 2},
    "no turning-point prior": {"turn_descent": None},
    "no close-at-rest": {"close_still_distance": None},
    "no debounce": {"toggle_frames": 1},
}


def run_video_config(run: Path, task: str) -> VideoPolicyConfig:
    """The video settings an oracle run used (its ``policy_config.yaml``; defaults without one)."""
    from geo4d_policy.policies.policy_config import resolve_policy_config
    from geo4d_policy.policies.registry import resolve_policy_target

    saved = run / "policy_config.yaml"
    if not saved.exists():
        print(f"gripper_decisions: {run} has no policy_config.yaml; replaying with the oracle's defaults",
              file=sys.stderr)
    resolved = resolve_policy_config("oracle", resolve_policy_target("oracle"), task=task,
                                     config_file=saved if saved.exists() else None)
    return resolved.config.video


def replay(records: list[dict], *, frames: int, base: VideoPolicyConfig | None = None) -> dict:
    """Counts per variant (see the module docstring) over the records' replans, each variant
    changing one rule of ``base`` (default: the oracle's video defaults)."""
    base = base or VideoPolicyConfig()
    counts: dict[str, dict[str, int]] = {v: defaultdict(int) for v in VARIANTS}
    idle = {"replans": 0, "idle_holds": 0, "held_while_moving": 0}
    tol_mm = 1e3 * base.control.idle_translation
    for rec in records:
        for entry in rec.get("oracle_replans") or []:
            for arm, a in entry.items():
                if not isinstance(a, dict):
                    continue
                if "idle_hold" in a:
                    idle["replans"] += 1
                    idle["idle_holds"] += int(a["idle_hold"])
                    idle["held_while_moving"] += int(a["idle_hold"] and a["true_motion_mm"] > tol_mm)
                if "state" not in a:
                    continue
                inputs = GripperStateInputs.from_dict(a["state"])
                truth = np.array([c == "1" for c in a["state"]["true_closed"]], dtype=bool)
                n = min(frames, len(truth), len(inputs.raw))
                default = decide_gripper_states(inputs, base)[:n]
                for name, change in VARIANTS.items():
                    decided = decide_gripper_states(inputs, dataclasses.replace(base, **change))[:n]
                    c = counts[name]
                    c["frames"] += n
                    c["closed_early"] += int((decided & ~truth[:n]).sum())
                    c["open_early"] += int((~decided & truth[:n]).sum())
                    c["replans_changed"] += int(np.any(decided != default))
    return {"variants": {k: dict(v) for k, v in counts.items()}, "idle": idle}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="oracle run directories (episodes.jsonl)")
    p.add_argument("--frames", type=int, default=VideoPolicyConfig().control.execute_frames,
                   help="executed frames per replan scored (default: the pipeline's execute_frames)")
    p.add_argument("--json", default=None, help="also write the counts here")
    args = p.parse_args(argv)
    by_task: dict[str, list[dict]] = defaultdict(list)
    bases: dict[str, VideoPolicyConfig] = {}
    for run in args.runs:
        recs = read_records(Path(run) / "episodes.jsonl")
        if not recs:
            print(f"gripper_decisions: no records in {run}", file=sys.stderr)
            return 2
        streams = sorted({seed_stream_of(int(r["seed"])) for r in recs})
        if streams != ["dev"]:
            print(f"gripper_decisions: {run} ran on the {', '.join(streams)} seed stream; rules are judged on "
                  "development seeds only (geo4d-rollout --seed-stream dev)", file=sys.stderr)
            return 2
        task = recs[0]["task"]
        base = run_video_config(Path(run), task)
        if bases.setdefault(task, base) != base:
            print(f"gripper_decisions: the {task} runs were made with different settings; replay them apart",
                  file=sys.stderr)
            return 2
        by_task[task].extend(recs)
    out = {}
    for task, recs in by_task.items():
        res = replay(recs, frames=args.frames, base=bases[task])
        out[task] = {"episodes": len(recs), "seeds": sorted(r["seed"] for r in recs), **res}
        print(f"## {task}: {len(recs)} episodes")
        print("| rules | frames | closed early | open early | replans changed |")
        print("|---|---|---|---|---|")
        for name, c in res["variants"].items():
            print(f"| {name} | {c.get('frames', 0)} | {c.get('closed_early', 0)} | {c.get('open_early', 0)} | "
                  f"{c.get('replans_changed', 0)} |")
        i = res["idle"]
        print(f"idle rule: {i['idle_holds']} holds in {i['replans']} arm-replans, "
              f"{i['held_while_moving']} while the look-ahead moved the arm > idle tolerance\n")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

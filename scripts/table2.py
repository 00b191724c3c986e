#!/usr/bin/env python
"""Reproduce the paper's Table 2 for our stack: success rates of every policy on every task.

    python scripts/table2.py --out runs/table2 [--episodes 30] [--policies expert oracle geo4d ...]
                             [--tasks ...] [--workers 8] [--device cuda] [--policy-option geo4d.num_steps=10]

Each (task, policy) cell is one ``geo4d-rollout`` run in ``OUT/<task>/<policy>/`` on the
evaluation seeds (novel views: the held-out cameras 12/13 of each episode), resumed if it
exists, so the script can be interrupted and re-run. It ends by writing ``OUT/table2.md`` (one
markdown table: success rate, 95% Wilson interval, episodes, the paper's figure where it
reports one) and ``OUT/table2.json``; the table is rewritten after every finished cell.
Policies that cannot be loaded (e.g. no checkpoint) are listed with the reason, not fatal.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from geo4d_policy.cli.rollout import parse_policy_options
from geo4d_policy.config import atomic_write_text
from geo4d_policy.eval.runner import RolloutConfig, run_rollouts
from geo4d_policy.interface import TASK_NAMES
from geo4d_policy.policies import PolicyUnavailableError

POLICIES = ("expert", "oracle", "geo4d", "dreamitate", "diffusion_policy")

PAPER_TABLE2 = {
    # Success rates the paper reports (Table 2); None where it gives none for that row.
    ("StoreCerealBoxUnderShelf", "geo4d"): 0.73,
    ("PutSpatulaOnTable", "geo4d"): 0.67,
    ("PlaceAppleFromBowlIntoBin", "geo4d"): 0.53,
}


def _parse_options(items: list[str]) -> dict[str, dict[str, object]]:
    """``POLICY.KEY=VALUE`` items -> per-policy options, values parsed as geo4d-rollout does."""
    per_policy: dict[str, list[str]] = {}
    for item in items:
        policy, dot, rest = item.partition(".")
        if not dot or "=" not in rest:
            raise SystemExit(f"table2: --policy-option must look like POLICY.KEY=VALUE, got {item!r}")
        per_policy.setdefault(policy, []).append(rest)
    return {policy: parse_policy_options(values) for policy, values in per_policy.items()}


def _cell(result: dict) -> str:
    if "error" in result:
        return f"n/a ({result['error']})"
    lo, hi = result["ci95"]
    return f"{result['success_rate']:.2f} [{lo:.2f}, {hi:.2f}] ({result['successes']}/{result['finished']})"


def write_table(out: Path, results: dict[tuple[str, str], dict], tasks: list[str], policies: list[str],
                episodes: int) -> str:
    """Write ``table2.md`` and ``table2.json``; return the markdown."""
    lines = [
        f"# Success rates ({episodes} episodes per cell, novel views, 95% Wilson interval)",
        "",
        "| task | " + " | ".join(policies) + " | paper (geo4d) |",
        "|---|" + "---|" * (len(policies) + 1),
    ]
    for task in tasks:
        cells = [_cell(results[(task, p)]) if (task, p) in results else "-" for p in policies]
        paper = PAPER_TABLE2.get((task, "geo4d"))
        lines.append(f"| {task} | " + " | ".join(cells) + f" | {'-' if paper is None else f'{paper:.2f}'} |")
    md = "\n".join(lines) + "\n"
    atomic_write_text(out / "table2.md", md)
    atomic_write_text(out / "table2.json", json.dumps(
        [{"task": t, "policy": p, **r} for (t, p), r in sorted(results.items())], indent=2))
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/table2")
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--tasks", nargs="+", default=list(TASK_NAMES))
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episode-timeout", type=float, default=None)
    p.add_argument("--policy-option", action="append", default=[], metavar="POLICY.KEY=VALUE")
    args = p.parse_args(argv)
    options = _parse_options(args.policy_option)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, str], dict] = {}
    for task in args.tasks:
        for policy in args.policies:
            run_dir = out / task / policy
            config = RolloutConfig(task=task, policy=policy, episodes=args.episodes, seed=args.seed,
                                   workers=args.workers, out_dir=str(run_dir), resume=run_dir.exists(),
                                   device=args.device, policy_options=options.get(policy, {}),
                                   episode_timeout_s=args.episode_timeout)
            try:
                s = run_rollouts(config, show=sys.stderr.isatty())
            except PolicyUnavailableError as e:
                results[(task, policy)] = {"error": str(e).split(";")[0]}
            else:
                results[(task, policy)] = {
                    "success_rate": s.success_rate, "ci95": list(s.ci95), "successes": s.successes,
                    "finished": s.finished, "mean_episode_s": s.mean_duration_s, "wall_s": s.wall_s,
                    "failure_reasons": s.failure_reasons,
                }
            print(f"{task} {policy}: {_cell(results[(task, policy)])}", flush=True)
            write_table(out, results, args.tasks, args.policies, args.episodes)
    print(write_table(out, results, args.tasks, args.policies, args.episodes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

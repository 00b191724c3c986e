#!/usr/bin/env python
"""Reproduce the paper's Table 2 for our stack: success rates of every policy on every task.

    python scripts/table2.py --out runs/table2 [--episodes 30] [--policies expert oracle geo4d ...]
                             [--tasks ...] [--workers 8] [--policy-workers oracle=4] [--device cuda]
                             [--policy-option geo4d.num_steps=10] [--policy-config geo4d=FILE]
                             [--parallel] [--max-seconds S] [--resume-anyway] [--seed-stream {eval,dev}]

Each (task, policy) cell is one ``geo4d-rollout`` run in ``OUT/<task>/<policy>/`` on the
evaluation seeds (``--seed-stream dev``: the development seeds, for checks that must not touch
the evaluation stream) (novel views: the held-out cameras 12/13 of each episode), resumed if it
exists, so the script can be interrupted and re-run (a cell made with other code or settings is
refused unless ``--resume-anyway``; see ``geo4d-rollout``). It ends by writing ``OUT/table2.md``
(one markdown table, a row per policy: successes / finished episodes and the 95% Wilson
interval, each cell linking to its records; the paper's figures) and ``OUT/table2.json``; the
table is rewritten after every finished cell. Policy options (``POLICY.KEY=VALUE``, KEY as
``geo4d-rollout --policy-option`` takes it) are checked for every cell before any starts.
Policies that cannot be loaded (e.g. no checkpoint) are listed with the reason, not fatal.

``--parallel`` runs every cell at once, each as its own ``geo4d-rollout`` process with
``--workers`` episodes in parallel (size it so that cells x workers fits the machine's cores);
on a GPU one generator server serves the geo4d cells of all tasks (batched requests);
``--max-seconds`` interrupts the cells still running after that long (as Ctrl-C does: finished
episodes are kept, and a later call resumes), for time-boxed machines. The table then reports
how many episodes each cell finished.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from geo4d_policy.cli import interruptible
from geo4d_policy.cli.rollout import parse_policy_options
from geo4d_policy.config import atomic_write_text
from geo4d_policy.eval.records import read_summary
from geo4d_policy.eval.runner import RolloutConfig, RolloutConfigError, run_rollouts, shared_policy_resources
from geo4d_policy.interface import TASK_NAMES
from geo4d_policy.policies import PolicyUnavailableError, resolve_policy_target
from geo4d_policy.policies.policy_config import PolicyOptionError, resolve_policy_config

POLICIES = ("expert", "oracle", "geo4d", "dreamitate", "diffusion_policy")
CONTROLS = ("rgb_oracle",)
"""Controls a table may also show (not run by default): Dreamitate's perception on true RGB."""

TABLE_SEED_STREAMS = ("eval", "dev")
"""Seed streams a table may run on: ``eval`` (reported figures) and ``dev`` (the same checks
kept off the evaluation stream); the data stream is a rollout's sanity control, never a table."""

GRACE_S = 60.0
"""After ``--max-seconds``, how long the interrupted cells get to save and exit before they are killed."""

PAPER_TABLE2 = {
    # Success rates the paper reports (Table 2: geo4d, Dreamitate, Diffusion Policy).
    ("StoreCerealBoxUnderShelf", "geo4d"): 0.73,
    ("PutSpatulaOnTable", "geo4d"): 0.67,
    ("PlaceAppleFromBowlIntoBin", "geo4d"): 0.53,
    ("StoreCerealBoxUnderShelf", "dreamitate"): 0.00,
    ("PutSpatulaOnTable", "dreamitate"): 0.17,
    ("PlaceAppleFromBowlIntoBin", "dreamitate"): 0.10,
    ("StoreCerealBoxUnderShelf", "diffusion_policy"): 0.00,
    ("PutSpatulaOnTable", "diffusion_policy"): 0.27,
    ("PlaceAppleFromBowlIntoBin", "diffusion_policy"): 0.10,
}


def _split_options(items: list[str]) -> dict[str, list[str]]:
    """``POLICY.KEY=VALUE`` items -> policy -> its ``KEY=VALUE`` items (as geo4d-rollout takes them)."""
    per_policy: dict[str, list[str]] = {}
    for item in items:
        policy, dot, rest = item.partition(".")
        if not dot or "=" not in rest:
            raise SystemExit(f"table2: --policy-option must look like POLICY.KEY=VALUE, got {item!r}")
        per_policy.setdefault(policy, []).append(rest)
    return per_policy


def _cell(result: dict) -> str:
    if "error" in result:
        return f"n/a ({result['error']})"
    lo, hi = result["ci95"]
    return f"{result['successes']}/{result['finished']} [{lo:.2f}, {hi:.2f}]"


def write_table(out: Path, results: dict[tuple[str, str], dict], tasks: list[str], policies: list[str],
                episodes: int) -> str:
    """Write ``table2.md`` and ``table2.json``; return the markdown.

    A row per policy, a column per task: successes / finished episodes [95% Wilson interval],
    each cell linking to its run directory (``<task>/<policy>/``, relative to ``out``).
    """
    streams = sorted({str(r.get("seed_stream") or "eval") for r in results.values() if "error" not in r})
    lines = [
        f"# Success rates (successes / finished episodes of up to {episodes}, {'/'.join(streams) or 'eval'} seeds, "
        "novel views, 95% Wilson interval)",
        "",
        "| policy | " + " | ".join(tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    for policy in policies:
        cells = []
        for task in tasks:
            r = results.get((task, policy))
            cells.append("-" if r is None else _cell(r) if "error" in r else f"[{_cell(r)}]({task}/{policy}/)")
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    for policy in policies:
        paper = [PAPER_TABLE2.get((task, policy)) for task in tasks]
        if any(v is not None for v in paper):
            lines.append(f"| paper: {policy} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in paper) + " |")
    md = "\n".join(lines) + "\n"
    atomic_write_text(out / "table2.md", md)
    atomic_write_text(out / "table2.json", json.dumps(
        [{"task": t, "policy": p, **r} for (t, p), r in sorted(results.items())], indent=2))
    return md


def _result(summary: dict) -> dict:
    keys = ("success_rate", "ci95", "successes", "finished", "mean_duration_s", "wall_s", "failure_reasons",
            "seed_stream", "placement_error_median_m", "placement_error_p90_m")
    return {k: summary.get(k) for k in keys}


def check_options(args: argparse.Namespace, options: dict[str, dict]) -> dict[str, dict]:
    """Every cell's settings resolved before any cell starts; per policy, the first task's as one
    flat mapping (what a policy's shared resources read: ``checkpoint``, ``compile_unet`` ...).

    Raises:
        SystemExit: an unknown option or a value of the wrong type (exit 2, the valid keys named).
    """
    flat = {}
    for policy in args.policies:
        for task in args.tasks:
            try:
                resolved = resolve_policy_config(policy, resolve_policy_target(policy), task=task,
                                                 config_file=args.policy_config.get(policy),
                                                 options=options.get(policy, {}))
            except PolicyOptionError as e:
                print(f"table2: {e}", file=sys.stderr)
                raise SystemExit(2) from None
            except PolicyUnavailableError:  # the cells report it themselves
                break
            flat.setdefault(policy, resolved.as_dict())
    return flat


def run_parallel(args: argparse.Namespace, out: Path, raw_options: dict[str, list[str]],
                 options: dict[str, dict]) -> dict[tuple[str, str], dict]:
    """Every cell as its own ``geo4d-rollout`` process; interrupt the stragglers at the deadline.

    On a GPU, each policy's shared resources (the generator server of geo4d) are started once
    for all its cells, so every task's episodes are batched on one model.
    """
    with contextlib.ExitStack() as stack:
        shared: dict[str, dict] = {}
        for policy in args.policies:
            try:
                shared[policy] = stack.enter_context(shared_policy_resources(
                    policy, options=options.get(policy, {}), device=args.device,
                    workers=_workers(args, policy) * len(args.tasks)))
            except (PolicyUnavailableError, RuntimeError) as e:  # the cells report it themselves
                print(f"table2: {policy}: nothing shared ({e})", file=sys.stderr)
                shared[policy] = {}
        return _run_cells(args, out, raw_options, {p: [f"{k}={v}" for k, v in shared[p].items()]
                                                    for p in args.policies})


def _workers(args: argparse.Namespace, policy: str) -> int:
    """Parallel episodes of ``policy``'s cells: ``--policy-workers POLICY=N`` or ``--workers``."""
    return args.policy_workers.get(policy, args.workers)


def _policy_workers(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        policy, sep, n = item.partition("=")
        if not sep or policy not in POLICIES + CONTROLS or not n.isdigit() or int(n) < 1:
            raise SystemExit(f"table2: --policy-workers must look like POLICY=N (N >= 1, POLICY one of "
                             f"{', '.join(POLICIES + CONTROLS)}), got {item!r}")
        out[policy] = int(n)
    return out


def _policy_configs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        policy, sep, path = item.partition("=")
        if not sep or policy not in POLICIES + CONTROLS or not path:
            raise SystemExit(f"table2: --policy-config must look like POLICY=FILE (POLICY one of "
                             f"{', '.join(POLICIES + CONTROLS)}), got {item!r}")
        out[policy] = path
    return out


def _run_cells(args: argparse.Namespace, out: Path, raw_options: dict[str, list[str]],
               runtime_options: dict[str, list[str]]) -> dict[tuple[str, str], dict]:
    procs: dict[tuple[str, str], subprocess.Popen] = {}
    for task in args.tasks:
        for policy in args.policies:
            run_dir = out / task / policy
            cmd = [sys.executable, "-m", "geo4d_policy.cli.rollout", "--task", task, "--policy", policy,
                   "--episodes", str(args.episodes), "--workers", str(_workers(args, policy)), "--seed", str(args.seed),
                   "--seed-stream", args.seed_stream, "--out", str(run_dir), "--device", args.device]
            if run_dir.exists():
                cmd += ["--resume", "--resume-anyway"] if args.resume_anyway else ["--resume"]
            if policy in args.policy_config:
                cmd += ["--policy-config", args.policy_config[policy]]
            if args.episode_timeout:
                cmd += ["--episode-timeout", str(args.episode_timeout)]
            for item in raw_options.get(policy, []):
                cmd += ["--policy-option", item]
            for item in runtime_options.get(policy, []):  # e.g. this session's server address
                cmd += ["--runtime-option", item]
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            log = open(out / task / f"{policy}.log", "a")  # noqa: SIM115 - closed with the process
            procs[(task, policy)] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + args.max_seconds if args.max_seconds else None
    while any(p.poll() is None for p in procs.values()):
        if deadline is not None and time.monotonic() > deadline:
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)  # the rollout runner saves finished episodes and exits
            # One grace period for all cells (not one per cell: 15 cells that ignored the signal
            # once held the machine for 15 x 90 s).
            grace = time.monotonic() + GRACE_S
            while any(p.poll() is None for p in procs.values()) and time.monotonic() < grace:
                time.sleep(1)
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait()
            break
        time.sleep(2)
    results = collect_results(out, args.tasks, args.policies)
    for (task, policy), p in procs.items():
        if (task, policy) not in results:
            log_tail = (out / task / f"{policy}.log").read_text(errors="replace").strip().splitlines()[-1:]
            results[(task, policy)] = {"error": f"no finished episode (exit {p.returncode}): "
                                                f"{log_tail[0] if log_tail else ''}"[:200]}
    return results


def collect_results(out: Path, tasks: list[str], policies: list[str]) -> dict[tuple[str, str], dict]:
    """The finished cells' results under ``out`` (cells without a summary are left out)."""
    results = {}
    for task in tasks:
        for policy in policies:
            summary = read_summary(out / task / policy / "summary.json")
            if summary is not None and summary.get("finished"):
                results[(task, policy)] = _result(summary)
    return results


def main(argv: list[str] | None = None) -> int:
    interruptible()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/table2")
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--tasks", nargs="+", default=list(TASK_NAMES))
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES + CONTROLS)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--policy-workers", action="append", default=[], metavar="POLICY=N",
                   help="parallel episodes for one policy's cells (default --workers)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seed-stream", default="eval", metavar="{eval,dev}",
                   help="seed stream of every cell: eval (reported figures) or dev (tracing, tuning)")
    p.add_argument("--episode-timeout", type=float, default=None)
    p.add_argument("--policy-option", action="append", default=[], metavar="POLICY.KEY=VALUE")
    p.add_argument("--policy-config", action="append", default=[], metavar="POLICY=FILE",
                   help="a policy's settings file (default configs/policy/<policy>.yaml)")
    p.add_argument("--resume-anyway", action="store_true",
                   help="resume cells made with other code or settings (recorded in their provenance)")
    p.add_argument("--parallel", action="store_true", help="run all cells at once (each with --workers)")
    p.add_argument("--max-seconds", type=float, default=None, help="with --parallel: interrupt cells after this")
    p.add_argument("--report", action="store_true",
                   help="run nothing: rewrite table2.md/json from the cells already under --out")
    args = p.parse_args(argv)
    if args.seed_stream not in TABLE_SEED_STREAMS:
        raise SystemExit(f"table2: unknown seed stream {args.seed_stream!r}; valid seed streams: "
                         + ", ".join(TABLE_SEED_STREAMS))
    args.policy_workers = _policy_workers(args.policy_workers)
    args.policy_config = _policy_configs(args.policy_config)
    raw = _split_options(args.policy_option)
    # Parsed as geo4d-rollout parses them.
    options = {policy: parse_policy_options(items) for policy, items in raw.items()}
    out = Path(args.out)
    if args.report:
        if not out.is_dir():
            raise SystemExit(f"table2: no results under {out}")
        print(write_table(out, collect_results(out, args.tasks, args.policies), args.tasks, args.policies,
                          args.episodes))
        return 0
    resolved = check_options(args, options)
    out.mkdir(parents=True, exist_ok=True)
    if args.parallel:
        results = run_parallel(args, out, raw, resolved)
        for (task, policy), r in results.items():
            print(f"{task} {policy}: {_cell(r)}")
        print(write_table(out, results, args.tasks, args.policies, args.episodes))
        return 0
    results: dict[tuple[str, str], dict] = {}
    for task in args.tasks:
        for policy in args.policies:
            run_dir = out / task / policy
            config = RolloutConfig(task=task, policy=policy, episodes=args.episodes, seed=args.seed,
                                   seed_stream=args.seed_stream,
                                   workers=_workers(args, policy), out_dir=str(run_dir), resume=run_dir.exists(),
                                   device=args.device, policy_options=options.get(policy, {}),
                                   policy_config=args.policy_config.get(policy),
                                   resume_anyway=args.resume_anyway and run_dir.exists(),
                                   episode_timeout_s=args.episode_timeout)
            try:
                s = run_rollouts(config, show=sys.stderr.isatty())
            except PolicyUnavailableError as e:
                results[(task, policy)] = {"error": str(e).split(";")[0]}
            except RolloutConfigError as e:  # e.g. an existing cell made with other code or settings
                results[(task, policy)] = {"error": str(e)}
            else:
                results[(task, policy)] = _result(s.to_dict())
            print(f"{task} {policy}: {_cell(results[(task, policy)])}", flush=True)
            write_table(out, results, args.tasks, args.policies, args.episodes)
    print(write_table(out, results, args.tasks, args.policies, args.episodes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

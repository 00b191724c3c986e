"""``results.json`` in the format of lbm_eval's ``evaluate`` (beside our ``episodes.jsonl``).

Tools made for lbm_eval results read a run of ours through this file. Top-level fields, in
lbm_eval's order: ``num_processes`` (episodes run in parallel), ``elapsed_time`` (wall-clock
seconds so far), ``num_requested_evaluations``, ``num_evaluated``, ``num_success``,
``success_rate`` (successes / evaluated, 0.0 when none), then ``evaluations``: one entry per
requested episode, finished or not, with

    skill_type        the task's CamelCase name (lbm_eval's skill names are the same)
    scenario_index    the episode index (lbm_eval's "demonstration index")
    is_pending        True until the episode has a record
    total_time        simulated seconds at the end of the episode (None while pending)
    is_success        None while pending
    failure_message   our failure reason (None on success or while pending)

The file is rewritten atomically with ``episodes.jsonl`` after every episode.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from geo4d_policy.config import atomic_write_text
from geo4d_policy.eval.records import jsonable

RESULTS_FILE = "results.json"
RESULT_FIELDS: tuple[str, ...] = ("num_processes", "elapsed_time", "num_requested_evaluations", "num_evaluated",
                                  "num_success", "success_rate", "evaluations")
EVALUATION_FIELDS: tuple[str, ...] = ("skill_type", "scenario_index", "is_pending", "total_time", "is_success",
                                      "failure_message")


def lbm_results(records: Sequence[Mapping[str, Any]], *, task: str, episodes: int, num_processes: int,
                elapsed_time: float) -> dict[str, Any]:
    """The lbm_eval results document of a run with ``episodes`` requested episodes.

    Args:
        records: the finished episodes' records (``episodes.jsonl``).
        task: the run's task (canonical name).
        episodes: episodes requested; indices without a record are pending.
        num_processes: episodes run in parallel.
        elapsed_time: wall-clock seconds of the run so far.
    """
    by_index = {int(r["episode_index"]): r for r in records}
    evaluations = []
    for index in range(max([episodes, *(i + 1 for i in by_index)])):
        r = by_index.get(index)
        evaluations.append({
            "skill_type": task if r is None else r["task"],
            "scenario_index": index,
            "is_pending": r is None,
            "total_time": None if r is None else r.get("sim_time_s"),
            "is_success": None if r is None else bool(r["success"]),
            "failure_message": None if r is None or r["success"] else r.get("failure_reason"),
        })
    evaluated = [e for e in evaluations if not e["is_pending"]]
    successes = sum(1 for e in evaluated if e["is_success"])
    return jsonable({
        "num_processes": int(num_processes),
        "elapsed_time": float(elapsed_time),
        "num_requested_evaluations": len(evaluations),
        "num_evaluated": len(evaluated),
        "num_success": successes,
        "success_rate": successes / len(evaluated) if evaluated else 0.0,
        "evaluations": evaluations,
    })


def write_lbm_results(path: str | os.PathLike[str], records: Sequence[Mapping[str, Any]], **kwargs: Any) -> None:
    """Atomically write :func:`lbm_results` (same arguments) to ``path``."""
    atomic_write_text(Path(path), json.dumps(lbm_results(records, **kwargs), indent=2) + "\n")


def validate_lbm_results(data: Mapping[str, Any]) -> list[str]:
    """What keeps ``data`` from being an lbm_eval results document (empty when nothing does)."""
    problems = [f"missing field {k!r}" for k in RESULT_FIELDS if k not in data]
    if problems:
        return problems
    for i, e in enumerate(data["evaluations"]):
        problems += [f"evaluations[{i}] lacks {k!r}" for k in EVALUATION_FIELDS if k not in e]
        if e.get("is_pending") is False and not isinstance(e.get("is_success"), bool):
            problems.append(f"evaluations[{i}] is finished but is_success is {e.get('is_success')!r}")
    evaluated = [e for e in data["evaluations"] if not e.get("is_pending")]
    successes = sum(1 for e in evaluated if e.get("is_success"))
    expected = {"num_requested_evaluations": len(data["evaluations"]), "num_evaluated": len(evaluated),
                "num_success": successes, "success_rate": successes / len(evaluated) if evaluated else 0.0}
    problems += [f"{k} is {data[k]!r}, the evaluations give {v!r}" for k, v in expected.items() if data[k] != v]
    return problems


def write_run_results(run_dir: str | os.PathLike[str]) -> Path:
    """(Re)write ``results.json`` of a finished or interrupted rollout run from its records,
    ``summary.json`` (task, episodes, wall time) and ``config.yaml`` (workers); e.g. for runs
    recorded before the runner wrote it."""
    import yaml

    from geo4d_policy.eval.records import read_records, read_summary

    run_dir = Path(run_dir)
    summary = read_summary(run_dir / "summary.json") or {}
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").exists() else {}
    records = read_records(run_dir / "episodes.jsonl")
    task = summary.get("task") or (records[0]["task"] if records else config.get("task"))
    write_lbm_results(run_dir / RESULTS_FILE, records, task=task,
                      episodes=int(summary.get("episodes") or config.get("episodes") or len(records)),
                      num_processes=int(config.get("workers") or 1), elapsed_time=float(summary.get("wall_s") or 0.0))
    return run_dir / RESULTS_FILE


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m geo4d_policy.eval.lbm_results RUN_DIR ...``: write each run's ``results.json``."""
    import sys

    dirs = list(sys.argv[1:] if argv is None else argv)
    if not dirs:
        print("usage: python -m geo4d_policy.eval.lbm_results RUN_DIR [RUN_DIR ...]", file=sys.stderr)
        return 2
    for d in dirs:
        print(write_run_results(d))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

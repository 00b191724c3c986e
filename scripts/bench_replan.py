#!/usr/bin/env python
"""Seconds per replan of the video policies (geo4d, oracle): old and new paths, CPU and GPU, 1 and N
concurrent episodes, in one run.

    python scripts/bench_replan.py --devices cpu --replans 2 --json bench.json         # here
    python scripts/bench_replan.py --devices cuda --concurrency 1 8 --json bench.json  # GPU machine

Every cell (path x policy x device x concurrency) starts ``concurrency`` episode processes at once
(tasks round-robin), each running real episodes (``sim.env``, the rollout's episode loop
:func:`geo4d_policy.eval.episode.run_episode`) until it has timed ``--replans`` replans after a
first, untimed one (CUDA initialisation, compilation); an episode that ends early (success,
tracking lost) is followed by the next seed. Seeds: the data stream (``interface.data_seed``;
stream i of a cell uses base ``--seed + 1000 * i``), as the interface has no development stream
yet (the rollout runner's ``SEED_STREAMS`` are ``eval`` and ``data``); a timing, never an
evaluation, so no evaluation seed is spent. geo4d episodes of a GPU cell with several episodes
share one generator server (the rollout runner's ``shared_resources`` hook), as in
``geo4d-rollout --workers N``; one server per path serves its cells of 1 and N episodes
(compiled once). Stage times come from :meth:`VideoPolicy.replan_seconds`: ``generate`` (the
generator or the server, queueing included; the oracle's look-ahead), ``segment``, ``track``,
``control``.

Paths (policy options on top of ``configs/policy/<policy>.yaml``, as ``--policy-option`` takes
them; resolved with the task's values and checked, every cell, before any episode):
  * ``old``: ``video.tracker.engine=numpy``, geo4d with ``compile_unet=false`` and
    ``decode_frames=null`` (the tracking numerics, U-Net and decoding of before the fast-replan
    work; the numpy path's exact rewrites are in both);
  * ``new``: on CUDA ``video.tracker.engine=torch`` on the cell's device (numpy on the CPU),
    geo4d with ``decode_frames`` = the frames a replan tracks (``video.frames_to_track``, 5 with
    the shipped settings) and on CUDA ``compile_unet=true`` (CUDA graphs; the shared server
    pads every batch to its size).
Both use bf16 weights on CUDA and the policy config's sampler steps (geo4d: 10) unless ``--num-steps``.

``--json FILE`` writes ``{"new"|"old": {policy: {device: {"replan_s_median", "replan_s_p90",
"generate_s_median", "segment_s_median", "track_s_median", "control_s_median", "concurrency",
"replans", "episodes", "seeds", "seed_stream", "lost_frame_rate", "warmup_s", "options",
"config_digest", ...}}}}``
(``replan_cpu_s_median``: the episode process's CPU seconds per replan, what a replan costs
without the machine's other load; threads per process: cores / concurrency); ``device`` is
``cpu``, ``cuda`` (the largest concurrency) and ``cuda_x1`` etc. for the others; every timed
replan's stage times go to ``FILE.raw.json`` and the provenance (code version, every cell's
resolved settings per task, seeds and stream, device, packages; one session per call, with what
differs when ``--resume`` keeps cells measured by an earlier one) to ``FILE.provenance.json``
(FILE with its suffix replaced; each cell's ``provenance`` names its session). The results are
rewritten after every cell. Exit status 2 for bad input (a device this machine lacks, an unknown
task, a setting the policy refuses, a missing checkpoint)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PATHS = ("old", "new")
POLICIES = ("geo4d", "oracle")
STAGES = ("generate", "segment", "track", "control", "replan")
SEED_STREAM = "data"
"""The bench's episodes come from the data stream (``interface.data_seed``): a timing, not an
evaluation, and the interface has no development stream yet."""
MAX_EPISODES_PER_STREAM = 20
"""An episode stream gives up after this many episodes (each ended before enough replans)."""


class BenchError(ValueError):
    """A bench request that cannot run (unknown device, task or policy option)."""


def path_options(path: str, policy: str, device: str, *, frames_to_track: int) -> dict[str, Any]:
    """The policy options (``--policy-option`` keys, on top of ``configs/policy/<policy>.yaml``)
    of a path on ``device``; ``frames_to_track``: the frames a replan tracks with that file's
    settings, which the new path decodes."""
    cuda = device.startswith("cuda")
    options: dict[str, Any] = {}
    if policy == "geo4d":
        options["compile_unet"] = path == "new" and cuda
        options["decode_frames"] = frames_to_track if path == "new" else None
    torch_tracking = path == "new" and cuda
    options["video.tracker.engine"] = "torch" if torch_tracking else "numpy"
    options["video.tracker.device"] = device if torch_tracking else "cpu"
    return options


def resolve_cell(path: str, policy: str, device: str, tasks: list[str], *,
                 num_steps: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The options of a (path, policy, device) cell and its resolved configuration per task
    (``policy_config.resolve_policy_config``: the YAML, the options, the task's values), checked
    before any episode as ``geo4d-rollout`` checks them.

    Raises:
        BenchError: an option the policy refuses, or a missing checkpoint (the message says which).
    """
    from geo4d_policy.policies.policy_config import PolicyOptionError, resolve_policy_config
    from geo4d_policy.policies.registry import PolicyUnavailableError, resolve_policy_target

    target = resolve_policy_target(policy)
    module = importlib.import_module(target.partition(":")[0])
    try:
        base = resolve_policy_config(policy, target, task=tasks[0])
        options = path_options(path, policy, device, frames_to_track=base.config.video.frames_to_track)
        if num_steps and policy == "geo4d":
            options["num_steps"] = num_steps
        resolved = {task: resolve_policy_config(policy, target, task=task, options=options) for task in tasks}
        for task, r in resolved.items():
            getattr(module, "preflight", lambda **_: None)(task=task, config=r.config, runtime={})
    except (PolicyOptionError, PolicyUnavailableError) as e:
        raise BenchError(f"{path} {policy} on {device}: {e}") from None
    return options, resolved


class _Enough(Exception):
    """An episode stream has timed the replans it was asked for."""


class _TimedPolicy:
    """The policy, stopping its episode once ``limit`` replans were made and keeping the process's
    CPU seconds of every replan (``act``); everything else is the policy's own."""

    def __init__(self, policy: Any) -> None:
        self.policy, self.limit, self.cpu = policy, 0, []

    def __getattr__(self, name: str) -> Any:  # observe(), replan_seconds(), ...
        return getattr(self.policy, name)

    def reset(self, *, seed: int) -> None:
        self.policy.reset(seed=seed)

    def act(self, obs: Any) -> Any:
        if len(self.policy.replan_seconds()["replan"]) >= self.limit:
            raise _Enough
        c0 = time.process_time()
        chunk = self.policy.act(obs)
        self.cpu.append(time.process_time() - c0)
        return chunk


def _episode_worker(spec: dict[str, Any], conn: Any) -> None:
    """One concurrent episode stream: real episodes (``sim.env``, the rollout's episode loop) on
    consecutive data seeds until ``spec['replans'] + 1`` replans are timed."""
    threads = spec["threads"]
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    out: dict[str, Any] = {"replans": {k: [] for k in STAGES}, "cpu": [], "seeds": [], "ends": [], "error": None,
                           "lost_frames": 0, "tracked_frames": 0}
    try:
        import torch

        torch.set_num_threads(threads)
        from geo4d_policy.eval.episode import run_episode
        from geo4d_policy.interface import data_seed
        from geo4d_policy.policies.registry import make_policy_from_target
        from geo4d_policy.policies.video_policy import TrackingLostError
        from sim.env import make_env

        policy = _TimedPolicy(make_policy_from_target(spec["target"], name=spec["policy"], task=spec["task"],
                                                      **spec["factory_options"]))
        env = make_env(spec["task"])
        wanted = spec["replans"] + 1
        for k in range(MAX_EPISODES_PER_STREAM):
            if len(out["replans"]["replan"]) >= wanted:
                break
            seed = data_seed(spec["seed_base"], k)
            policy.limit = wanted - len(out["replans"]["replan"])
            out["seeds"].append(seed)
            try:
                info = run_episode(env, policy, seed=seed).info
                end = "success" if info.success else (info.failure_reason or "t_max")
            except _Enough:
                end = "replans done"
            except TrackingLostError:
                end = "tracking lost"
            for key, values in policy.replan_seconds().items():
                out["replans"][key].extend(values)
            stats = policy.diagnostics()
            out["lost_frames"] += stats["lost_frames"]
            out["tracked_frames"] += stats["tracked_frames"]
            out["ends"].append(end)
        out["cpu"] = policy.cpu
    except Exception:  # noqa: BLE001 - reported in the cell's results
        out["error"] = traceback.format_exc()[-2000:]
    conn.send(out)
    conn.close()


def run_cell(policy: str, device: str, concurrency: int, args: argparse.Namespace, *,
             resolved: dict[str, Any], runtime: dict[str, Any]) -> dict[str, Any]:
    """Run one cell; returns its summary (and raw per-replan times under ``raw``). ``resolved``:
    the cell's configuration per task (:func:`resolve_cell`); ``runtime``: runtime options of
    resources the cells of a path share (the generator server's address)."""
    from geo4d_policy.policies.registry import resolve_policy_target

    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // concurrency)
    ctx = mp.get_context("spawn")
    t0 = time.perf_counter()
    procs = []
    for i in range(concurrency):
        task = args.tasks[i % len(args.tasks)]
        spec = {"policy": policy, "target": resolve_policy_target(policy), "task": task,
                "factory_options": {**resolved[task].factory_options(), "device": device, **runtime},
                "replans": args.replans, "threads": threads, "seed_base": args.seed + 1000 * i}
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_episode_worker, args=(spec, child))
        proc.start()
        child.close()
        procs.append((proc, parent))
    results = []
    for proc, conn in procs:
        try:
            results.append(conn.recv())
        except EOFError:
            results.append({"replans": {k: [] for k in STAGES}, "cpu": [], "seeds": [], "ends": [],
                            "lost_frames": 0, "tracked_frames": 0, "error": f"worker died (exit {proc.exitcode})"})
        proc.join()
    # The first replan of every stream is warm-up (CUDA initialisation, compilation): untimed.
    timed = {k: [v for r in results for v in r["replans"][k][1:]] for k in STAGES}
    timed["replan_cpu"] = [v for r in results for v in r["cpu"][1:]]
    warm = [r["replans"]["replan"][0] for r in results if r["replans"]["replan"]]
    summary: dict[str, Any] = {"concurrency": concurrency, "replans": len(timed["replan"]),
                               "episodes": sum(len(r["seeds"]) for r in results),
                               "seeds": [s for r in results for s in r["seeds"]], "seed_stream": SEED_STREAM,
                               "episode_ends": [e for r in results for e in r["ends"]],
                               # Lost frames run the tracker's full search: tracking time depends on them.
                               "lost_frame_rate": (sum(r["lost_frames"] for r in results)
                                                   / max(1, sum(r["tracked_frames"] for r in results))),
                               "warmup_s": float(np.median(warm)) if warm else None,
                               "wall_s": time.perf_counter() - t0, "threads": threads,
                               "tasks": sorted({args.tasks[i % len(args.tasks)] for i in range(concurrency)})}
    for key in STAGES + ("replan_cpu",):
        values = timed[key]
        summary[f"{key}_s_median"] = float(np.median(values)) if values else None
        summary[f"{key}_s_p90"] = float(np.percentile(values, 90)) if values else None
    errors = [r["error"] for r in results if r["error"]]
    if errors:
        summary["errors"] = errors
    summary["raw"] = timed
    return summary


def _line(summary: dict[str, Any]) -> str:
    """One cell's figures on one line."""

    def fmt(key: str) -> str:
        v = summary.get(key)
        return "-" if v is None else f"{v:.2f}"

    text = (f"replan median {fmt('replan_s_median')} s p90 {fmt('replan_s_p90')} | generate "
            f"{fmt('generate_s_median')} segment {fmt('segment_s_median')} track {fmt('track_s_median')} "
            f"control {fmt('control_s_median')} | process CPU {fmt('replan_cpu_s_median')} s | lost frames "
            f"{summary['lost_frame_rate']:.0%} | "
            f"{summary['replans']} replans, warm-up {fmt('warmup_s')} s, wall {summary['wall_s']:.0f} s")
    if summary.get("errors"):
        text += f" | ERRORS: {summary['errors'][0].strip().splitlines()[-1]}"
    return text


def _device_key(device: str, concurrency: int, largest: int) -> str:
    if not device.startswith("cuda") or concurrency == largest:
        return device
    return f"{device}_x{concurrency}"


def _provenance(json_path: Path | None, current: dict[str, Any], *, resume: bool) -> dict[str, Any]:
    """This session's provenance; resuming, the file's record with this session appended (and
    what differs from the first session: the cells kept were measured with that code)."""
    from geo4d_policy import provenance as prov

    saved_path = None if json_path is None else json_path.with_suffix(".provenance.json")
    if not (resume and saved_path is not None and saved_path.exists()):
        return current
    saved = json.loads(saved_path.read_text())
    diffs = prov.code_differences(saved["code"], current["code"])
    diffs += [f"config.{d}" for d in prov.differences(saved["config"], current["config"])]
    session = dict(current["sessions"][-1], resumed_anyway=diffs or None)
    return {**saved, "configs": {**saved.get("configs", {}), current["config_digest"]: current["config"]},
            "sessions": [*saved.get("sessions", []), session]}


def _write(json_path: Path, results: dict[str, Any], raws: dict[str, Any]) -> None:
    """The results and every timed replan (``FILE.raw.json``), each replaced atomically."""
    from geo4d_policy.config import atomic_write_text

    atomic_write_text(json_path, json.dumps(results, indent=1) + "\n")
    atomic_write_text(json_path.with_suffix(".raw.json"), json.dumps(raws) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    p.add_argument("--devices", nargs="+", default=["cpu"], help="cpu and/or cuda (cuda:N)")
    p.add_argument("--concurrency", nargs="+", type=int, default=[1],
                   help="concurrent episodes per GPU cell (CPU cells run one)")
    p.add_argument("--replans", type=int, default=4, help="timed replans per episode stream (after one warm-up)")
    p.add_argument("--tasks", nargs="+", default=["PlaceAppleFromBowlIntoBin", "PutSpatulaOnTable",
                                                   "StoreCerealBoxUnderShelf"])
    p.add_argument("--num-steps", type=int, default=None, help="geo4d sampler steps (default: the policy config's, 10)")
    p.add_argument("--seed", type=int, default=0, help="base of the data-stream seeds")
    p.add_argument("--json", default=None, help="write the results here (after every cell)")
    p.add_argument("--resume", action="store_true", help="keep the cells already in --json and run the others")
    args = p.parse_args(argv)
    from geo4d_policy.cli import interruptible

    interruptible()  # a time box's SIGINT/SIGTERM stops it like Ctrl-C, also in a script's background
    from geo4d_policy import provenance as prov
    from geo4d_policy.config import atomic_write_text
    from geo4d_policy.devices import check_device
    from geo4d_policy.eval.runner import shared_policy_resources
    from geo4d_policy.interface import canonical_task_name

    # Everything is checked before any episode: devices, tasks, every cell's settings.
    try:
        if args.replans < 1 or min(args.concurrency) < 1:
            raise BenchError(f"--replans and --concurrency must be >= 1, got {args.replans} and {args.concurrency}")
        devices = [check_device(d) for d in args.devices]
        args.tasks = [canonical_task_name(t) for t in args.tasks]
        cells = {(path, policy, device): resolve_cell(path, policy, device, args.tasks, num_steps=args.num_steps)
                 for path in args.paths for policy in args.policies for device in devices}
    except ValueError as e:  # BenchError, an unknown task, a device this machine cannot serve
        print(f"bench_replan: {e}", file=sys.stderr)
        return 2
    json_path = Path(args.json) if args.json else None
    config = {"bench": {k: getattr(args, k) for k in ("policies", "paths", "concurrency", "replans", "tasks",
                                                      "num_steps")},
              "cells": {f"{path}/{policy}/{device}": {"options": options,
                                                      "policy_config": {t: r.as_dict() for t, r in resolved.items()}}
                        for (path, policy, device), (options, resolved) in cells.items()}}
    provenance = _provenance(json_path, prov.new_provenance(
        command="scripts/bench_replan.py", config=config,
        device=next((d for d in devices if d.startswith("cuda")), devices[0]),
        seeds={"base_seed": args.seed, "seed_stream": SEED_STREAM,
               "streams": "episode stream i of a cell: data_seed(base_seed + 1000 * i, k), k = 0, 1, ..."},
        session_info={"devices": devices}), resume=args.resume)
    results: dict[str, Any] = {}
    raws: dict[str, Any] = {}  # every timed replan, next to --json as FILE.raw.json
    if args.resume and json_path is not None and json_path.exists():
        results = json.loads(json_path.read_text())
        raw_path = json_path.with_suffix(".raw.json")
        raws = json.loads(raw_path.read_text()) if raw_path.exists() else {}
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json_path.with_suffix(".provenance.json"), json.dumps(provenance, indent=1, default=str) + "\n")
    reference = prov.record_reference(provenance)
    largest = max(args.concurrency)
    for (path, policy, device), (options, resolved) in cells.items():
        conc_list = [c for c in (sorted(args.concurrency) if device.startswith("cuda") else [1])
                     if _device_key(device, c, largest) not in results.get(path, {}).get(policy, {})]
        if not conc_list:
            continue
        # One generator server per path serves all its GPU cells (as a rollout with that many
        # workers starts it): compiled once, then cells of 1 and N episodes use it alike.
        t_server = time.perf_counter()
        with contextlib.ExitStack() as stack:
            runtime = stack.enter_context(shared_policy_resources(
                policy, options=resolved[args.tasks[0]].as_dict(), device=device, workers=max(conc_list)))
            server_s = time.perf_counter() - t_server
            for conc in conc_list:
                summary = run_cell(policy, device, conc, args, resolved=resolved, runtime=runtime)
                summary["server_start_s"] = server_s if runtime else None
                summary["options"] = options
                summary["config_digest"] = {t: prov.config_digest(resolved[t].as_dict()) for t in summary["tasks"]}
                summary["provenance"] = reference
                key = _device_key(device, conc, largest)
                raws.setdefault(path, {}).setdefault(policy, {})[key] = summary.pop("raw")
                results.setdefault(path, {}).setdefault(policy, {})[key] = summary
                print(f"{path:3s} {policy:6s} {device:6s} x{conc}: {_line(summary)}", flush=True)
                if json_path is not None:
                    _write(json_path, results, raws)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

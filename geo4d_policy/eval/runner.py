"""The rollout runner: evaluate one policy on one task over many seeded episodes.

Each episode runs in its own freshly spawned process (``multiprocessing`` "spawn" context, one
process per episode even with ``workers=1``), so a simulator segfault or a leaking policy can
only take its own episode down: a dead worker is recorded as a failed episode with reason
``"worker crashed (exit code N)"`` and the run goes on. Processes are scheduled by hand rather
than with ``ProcessPoolExecutor`` because a dead worker breaks a whole executor, losing the
other running episodes and the exit code.

Run directory layout (``RolloutConfig.out_dir``)::

    config.yaml        the RolloutConfig asked for (the run's identity: task, policy, seeds)
    policy_config.yaml every setting of the policy as resolved for the task (--policy-config
                       takes it back: the run can be reproduced from its record)
    provenance.json    code version, resolved configuration, seeds, device and packages of every
                       session (geo4d_policy.provenance); each record names its session
    episodes.jsonl     one record per finished episode (see geo4d_policy.eval.records)
    summary.json       success rate, Wilson 95% CI, failure reasons, timings
    results.json       the same results in lbm_eval's format (geo4d_policy.eval.lbm_results)
    errors/<seed>.txt  traceback of each episode that raised
    videos/episode_<idx>_seed_<seed>.mp4    the first ``video`` episodes
    meshcat/episode_<idx>.html              with ``meshcat`` (single worker)

``episodes.jsonl``, ``summary.json`` and ``results.json`` are rewritten atomically after every
finished episode, so a run killed at any moment resumes (``resume=True``) with exactly the
unfinished episodes. Episode ``i`` always has seed ``interface.stream_seed(seed_stream, seed,
i)`` (the evaluation stream unless asked otherwise): results are reproducible and independent of
the number of workers and of interruptions. A run directory keeps the seed stream it was started
with. A resume is refused when the code version or the resolved configuration differs from the
run's (the message names what differs) unless ``resume_anyway``, which the new session's
provenance then records.

Development runs (``seed_stream="dev"``, never reported as Table-2 cells) draw their episodes
from the development stream, the one for tracing, tuning and bisecting.

Sanity controls (never reported as Table-2 cells): ``seed_stream="data"`` runs the episodes on
the data-collection seeds ``interface.data_seed(seed, i)`` (the layouts and cameras of the
demonstrations; ``--data-seeds``), and ``views`` shows the policy training-distribution cameras
instead of novel ones (:data:`~geo4d_policy.interface.EVAL_VIEWS`). Both are part of the run's
identity (saved, compared on resume, in its provenance, and named in the default run directory).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Mapping
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from geo4d_policy import provenance as prov
from geo4d_policy.config import ConfigError, load_config, save_config
from geo4d_policy.devices import check_device
from geo4d_policy.eval.records import (
    CONFIG_FILE,
    EPISODES_FILE,
    SUMMARY_FILE,
    RecordError,
    Summary,
    read_records,
    read_summary,
    summarize,
    write_records,
    write_summary,
)
from geo4d_policy.eval.lbm_results import RESULTS_FILE, write_lbm_results
from geo4d_policy.eval.worker import EpisodeSpec, episode_process_main
from geo4d_policy.interface import (
    EVAL_VIEWS,
    UnknownNameError,
    canonical_task_name,
    check_seed_stream,
    seed_stream_of,
    stream_seed,
)
from geo4d_policy.policies.policy_config import (
    PolicyOptionError,
    ResolvedPolicyConfig,
    check_runtime_options,
    resolve_policy_config,
)
from geo4d_policy.policies.registry import check_policy_available, resolve_policy_target

DEFAULT_ENV_FACTORY = "sim.env:make_env"
MAX_EPISODES = 100_000
"""``stream_seed`` gives each base seed 100 000 indices; more would overlap the next base seed.

A rollout may draw its episodes from any of :data:`~geo4d_policy.interface.SEED_STREAMS`
(``RolloutConfig.seed_stream``): ``eval`` (reported figures), ``dev`` (tracing, tuning) and
``data`` (a sanity control on the demonstrations' own seeds)."""
POLICY_CONFIG_FILE = "policy_config.yaml"
IDENTITY_KEYS = ("task", "policy", "seed", "seed_stream", "views")
"""What makes two runs the same run: records of another identity never mix, even with resume_anyway."""


class RolloutConfigError(ValueError):
    """A rollout request that cannot run as given (bad values, or a clash with an existing run dir)."""


@dataclasses.dataclass
class RolloutConfig:
    """One evaluation run: ``episodes`` episodes of ``policy`` on ``task``.

    Attributes:
        task: task name (CamelCase or snake_case; stored CamelCase once resolved).
        policy: registered policy name.
        episodes: number of episodes (indices ``0..episodes-1``).
        seed: base seed; episode ``i`` uses ``interface.stream_seed(seed_stream, seed, i)``.
        workers: episodes run in parallel (each in its own process).
        out_dir: run directory; ``None`` means ``runs/rollout/<task>/<policy>/seed<seed>``.
        resume: continue the run in ``out_dir``, running only unfinished episodes.
        video: record an mp4 of the first ``video`` episode indices.
        meshcat: Meshcat replay (HTML) of every episode; needs ``workers == 1``.
        policy_options: settings of the policy, ``key -> value`` with dotted keys (see
            :mod:`geo4d_policy.policies.policy_config`), applied on top of ``policy_config``.
        policy_config: YAML of the policy's settings (default ``configs/policy/<policy>.yaml``).
        runtime_options: factory keyword arguments for this session only, not settings and not
            part of the run's identity (not saved, not compared on resume): e.g.
            ``server=ADDRESS`` of a generator server that several runs share, whose address
            changes every session.
        seed_stream: the seed stream of the episodes (``eval``: reported figures; ``dev``:
            tracing, tuning, bisecting; ``data``: a control on the demonstrations' own layouts and
            cameras); part of the run's identity.
        resume_anyway: with ``resume``, continue a run whose code version or resolved
            configuration differs from this session's (recorded in its provenance).
        device: torch device of learned policies (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        episode_timeout_s: wall-clock limit of one episode (its process is killed and the
            episode failed); ``None`` for no limit.
        ray_address: run the episodes as tasks on a Ray cluster (``"auto"``, ``"host:port"``,
            ``"ray://host:port"``, or ``"local"`` for a private one-machine cluster) instead of
            local processes; ``workers`` then caps the episodes in flight cluster-wide (see
            :mod:`geo4d_policy.eval.ray_backend`). ``None``: local processes.
        ray_gpus_per_episode: GPU share each Ray episode reserves when ``device`` is CUDA.
        views: the policy's evaluation views, one of :data:`~geo4d_policy.interface.EVAL_VIEWS`
            (``heldout``: novel views, the reported setting; ``train``/``fixed-train``: controls);
            part of the run's identity.
    """

    task: str
    policy: str = "geo4d"
    episodes: int = 30
    seed: int = 0
    workers: int = 1
    out_dir: str | None = None
    resume: bool = False
    video: int = 0
    meshcat: bool = False
    policy_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    policy_config: str | None = None
    runtime_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed_stream: str = "eval"
    resume_anyway: bool = False
    device: str = "cpu"
    episode_timeout_s: float | None = None
    ray_address: str | None = None
    ray_gpus_per_episode: float = 0.25
    views: str = "heldout"


def default_out_dir(task: str, policy: str, seed: int, *, views: str = "heldout", seed_stream: str = "eval") -> Path:
    """``runs/rollout/<task>/<policy>/seed<seed>`` (relative to the working directory); other
    streams append ``_<stream>-seeds`` (``_dev-seeds``, ``_data-seeds``), the view controls
    ``_views-<views>``."""
    stream = "" if seed_stream == "eval" else f"_{seed_stream}-seeds"
    name = f"seed{seed}" + stream + ("" if views == "heldout" else f"_views-{views}")
    return Path("runs") / "rollout" / task / policy / name


def episode_seed(config: RolloutConfig, index: int) -> int:
    """The seed of episode ``index`` in the run's seed stream."""
    return stream_seed(config.seed_stream, config.seed, index)


def resolve_config(config: RolloutConfig) -> RolloutConfig:
    """Validate ``config`` and fill in defaults (canonical task name, ``out_dir``).

    Raises:
        UnknownNameError: unknown task or policy (the message lists the valid ones).
        RolloutConfigError: an out-of-range value or an invalid combination.
    """
    task = canonical_task_name(config.task)
    resolve_policy_target(config.policy)
    if config.views not in EVAL_VIEWS:
        raise UnknownNameError(f"unknown evaluation views {config.views!r}; valid: {', '.join(EVAL_VIEWS)}")
    check_seed_stream(config.seed_stream)
    problems = []
    if not 0 < config.episodes <= MAX_EPISODES:
        problems.append(f"episodes must be in 1..{MAX_EPISODES}, got {config.episodes}")
    if config.seed < 0:
        problems.append(f"seed must be non-negative, got {config.seed}")
    if config.resume_anyway and not config.resume:
        problems.append("resume_anyway needs resume")
    if config.workers <= 0:
        problems.append(f"workers must be positive, got {config.workers}")
    if config.video < 0:
        problems.append(f"video must be >= 0 (number of episodes to record), got {config.video}")
    if config.meshcat and config.workers != 1:
        problems.append(f"meshcat needs workers=1 (one Meshcat server at a time), got workers={config.workers}")
    if not (config.device == "cpu" or config.device == "cuda" or config.device.startswith("cuda:")):
        problems.append(f"device must be 'cpu', 'cuda' or 'cuda:<index>', got {config.device!r}")
    elif config.device != "cpu" and config.ray_address is None:
        # Before any episode: a missing GPU would otherwise fail every episode one by one. (On
        # Ray the episodes run on the cluster's machines, not this one.)
        try:
            check_device(config.device)
        except ValueError as e:
            problems.append(str(e))
    if config.episode_timeout_s is not None and config.episode_timeout_s <= 0:
        problems.append(f"episode_timeout_s must be positive, got {config.episode_timeout_s}")
    if config.ray_address is not None and config.meshcat:
        problems.append("meshcat needs local workers (the replay is served by this machine), not ray_address")
    if config.ray_address is not None and not 0 < config.ray_gpus_per_episode <= 1:
        problems.append(f"ray_gpus_per_episode must be in (0, 1], got {config.ray_gpus_per_episode}")
    if problems:
        raise RolloutConfigError("; ".join(problems))
    out_dir = config.out_dir or str(default_out_dir(task, config.policy, config.seed, views=config.views,
                                                    seed_stream=config.seed_stream))
    return dataclasses.replace(config, task=task, out_dir=str(out_dir), policy_options=dict(config.policy_options),
                               runtime_options=dict(config.runtime_options))


def _comparable(config: RolloutConfig, key: str) -> Any:
    value = getattr(config, key)
    return canonical_task_name(value) if key == "task" else value


def _load_previous(config: RolloutConfig, out: Path) -> dict[int, dict[str, Any]]:
    """Finished records of the run in ``out``, after checking that ``config`` is the same run
    (task, policy, seeds; code and settings are checked by :func:`_run_provenance`)."""
    has_run = (out / CONFIG_FILE).exists() or (out / EPISODES_FILE).exists()
    if not config.resume:
        if has_run:
            raise RolloutConfigError(
                f"{out} already holds a rollout run; pass --resume to continue it, "
                "or choose another --out directory"
            )
        return {}
    if not has_run:
        return {}
    if (out / CONFIG_FILE).exists():
        try:
            saved = load_config(RolloutConfig, out / CONFIG_FILE)
        except ConfigError as e:
            raise RolloutConfigError(f"cannot resume: {out / CONFIG_FILE} is unreadable ({e})") from None
        clashes = [
            f"{key}: saved {getattr(saved, key)!r}, requested {getattr(config, key)!r}"
            for key in IDENTITY_KEYS
            if _comparable(saved, key) != _comparable(config, key)
        ]
        if clashes:
            raise RolloutConfigError(
                f"cannot resume the run in {out}: it was started with a different configuration "
                f"({'; '.join(clashes)}); resume with the same task, policy, seed, seed stream and views, "
                "or choose another --out directory"
            )
    try:
        records = read_records(out / EPISODES_FILE)
    except RecordError as e:
        raise RolloutConfigError(f"cannot resume: {e}") from None
    done: dict[int, dict[str, Any]] = {}
    for rec in records:
        idx = rec["episode_index"]
        if rec["seed"] != episode_seed(config, idx) or rec["task"] != config.task or rec["policy"] != config.policy:
            stream = _stream_of(rec["seed"])
            if stream != config.seed_stream:
                raise RolloutConfigError(
                    f"cannot resume the run in {out}: its episodes ran on the {stream} seed stream, not on "
                    f"the requested {config.seed_stream} stream; choose another --out directory")
            raise RolloutConfigError(f"cannot resume: record {idx} in {out / EPISODES_FILE} belongs to another run")
        done[idx] = rec
    beyond = sorted(i for i in done if i >= config.episodes)
    if beyond:
        raise RolloutConfigError(
            f"cannot resume with episodes={config.episodes}: {out} already has episode indices up to "
            f"{beyond[-1]}; ask for at least {beyond[-1] + 1} episodes"
        )
    return done


def _stream_of(seed: Any) -> str:
    try:
        return seed_stream_of(int(seed))
    except (TypeError, ValueError):
        return "unknown"


def _checkpoint_digests(module: Any, resolved: ResolvedPolicyConfig, task: str) -> dict[str, Path]:
    """The checkpoints a policy's settings name (its module's ``checkpoints`` hook), by setting."""
    hook = getattr(module, "checkpoints", None)
    if hook is None or not resolved.typed:
        return {}
    return {k: Path(v) for k, v in hook(resolved.config, task=task).items() if v is not None}


def _run_provenance(config: RolloutConfig, resolved: ResolvedPolicyConfig, module: Any, env_factory: str,
                    out: Path) -> dict[str, Any]:
    """This session's provenance (the run's, with this session appended, when resuming).

    Raises:
        RolloutConfigError: resuming a run whose code or resolved configuration differs (the
            message names what differs), unless ``resume_anyway``.
    """
    checkpoints = _checkpoint_digests(module, resolved, config.task)
    identity = {
        "task": config.task, "policy": config.policy, "env_factory": env_factory,
        "policy_config": resolved.as_dict(),
        "checkpoints": {k: prov.path_digest(p) for k, p in checkpoints.items()},
        # A sanity-control view setting (absent for the novel views, as in runs made before it existed).
        **({} if config.views == "heldout" else {"views": config.views}),
    }
    current = prov.new_provenance(
        command="geo4d-rollout", config=identity, device=config.device,
        seeds={"base_seed": config.seed, "seed_stream": config.seed_stream},
        session_info={"policy_config_file": resolved.source, "policy_options": dict(config.policy_options),
                      "checkpoint_paths": {k: str(p) for k, p in checkpoints.items()}})
    if not (config.resume and ((out / CONFIG_FILE).exists() or (out / EPISODES_FILE).exists())):
        return current
    try:
        merged = prov.check_resume(out, current, anyway=config.resume_anyway, what="rollout run")
    except (prov.ProvenanceMismatch, ValueError) as e:
        raise RolloutConfigError(str(e)) from e
    accepted = merged["sessions"][-1]["resumed_anyway"]
    if accepted:
        print(f"geo4d-rollout: warning: resuming {out} anyway although it differs in: {'; '.join(accepted)}",
              file=sys.stderr)
    return merged


@dataclasses.dataclass
class _Job:
    index: int
    seed: int
    process: Any
    conn: Any
    started: float
    result: dict[str, Any] | None = None
    conn_open: bool = True


def _crash_record(config: RolloutConfig, job: _Job, reason: str) -> dict[str, Any]:
    return _failed_record(config, index=job.index, seed=job.seed, reason=reason, started=job.started)


def _failed_record(config: RolloutConfig, *, index: int, seed: int, reason: str, started: float) -> dict[str, Any]:
    """The record of an episode whose worker died or timed out (it could not write its own)."""
    return {
        "task": config.task,
        "policy": config.policy,
        "seed": seed,
        "episode_index": index,
        "success": False,
        "duration_s": time.perf_counter() - started,
        "sim_time_s": None,
        "failure_reason": reason,
    }


def run_rollouts(
    config: RolloutConfig,
    *,
    env_factory: str = DEFAULT_ENV_FACTORY,
    show: bool = True,
    console: Any = None,
    on_episode: Callable[[dict[str, Any]], None] | None = None,
) -> Summary:
    """Run (or resume) the evaluation described by ``config``.

    Args:
        config: what to run; validated and completed with :func:`resolve_config`.
        env_factory: ``"module:attribute"`` of ``make_env(task, *, record_video, meshcat)``,
            imported only inside the worker processes.
        show: draw the progress bar and print the final tables.
        console: a ``rich.console.Console`` for the tables (default: stdout).
        on_episode: called in this process with each finished record, after the run files
            were rewritten (e.g. for logging); an exception from it stops the run like Ctrl-C.

    Returns:
        The summary of all finished episodes of the run (earlier sessions included).

    Raises:
        UnknownNameError: unknown task or policy.
        PolicyUnavailableError: the policy's module does not exist yet.
        RolloutConfigError: invalid values, or ``out_dir`` clashes with an existing run.
        KeyboardInterrupt: after stopping the running episodes; finished ones are saved.
    """
    from tqdm.auto import tqdm

    config = resolve_config(config)
    check_policy_available(config.policy)
    policy_target = resolve_policy_target(config.policy)
    try:
        resolved = resolve_policy_config(config.policy, policy_target, task=config.task,
                                         config_file=config.policy_config, options=config.policy_options)
        check_runtime_options(config.policy, policy_target, config.runtime_options)
    except PolicyOptionError as e:
        raise RolloutConfigError(str(e)) from e
    module = importlib.import_module(policy_target.partition(":")[0])
    # A policy module may check its settings (e.g. that a checkpoint exists) before any episode runs.
    preflight = getattr(module, "preflight", None)
    if preflight is not None and resolved.typed:
        try:
            preflight(task=config.task, config=resolved.config, runtime=dict(config.runtime_options))
        except ValueError as e:  # a malformed setting: the run's configuration is wrong
            raise RolloutConfigError(f"{config.policy}: {e}") from e
    out = Path(config.out_dir)
    done = _load_previous(config, out)
    provenance = _run_provenance(config, resolved, module, env_factory, out)
    reference = prov.record_reference(provenance)
    previous_wall = 0.0
    if config.resume:
        prev = read_summary(out / SUMMARY_FILE)
        previous_wall = float(prev.get("wall_s") or 0.0) if prev else 0.0
    out.mkdir(parents=True, exist_ok=True)
    prov.write_provenance(out, provenance)
    save_config(dataclasses.replace(config, out_dir=None, resume=False, resume_anyway=False, runtime_options={}),
                out / CONFIG_FILE)
    save_config(resolved.as_dict(), out / POLICY_CONFIG_FILE)

    t0 = time.perf_counter()

    def current_summary() -> Summary:
        return summarize(list(done.values()), task=config.task, policy=config.policy,
                         episodes=config.episodes, wall_s=previous_wall + time.perf_counter() - t0,
                         out_dir=out, seed_stream=config.seed_stream)

    def save() -> Summary:
        write_records(out / EPISODES_FILE, done.values())
        summary = current_summary()
        write_summary(out / SUMMARY_FILE, summary)
        write_lbm_results(out / RESULTS_FILE, list(done.values()), task=config.task, episodes=config.episodes,
                          num_processes=config.workers, elapsed_time=summary.wall_s)
        return summary

    save()
    pending = [i for i in range(config.episodes) if i not in done]
    # Split the CPU between concurrent episodes so parallel torch/BLAS pools do not oversubscribe.
    threads = max(1, (os.cpu_count() or 1) // min(config.workers, max(1, len(pending))))
    ctx = multiprocessing.get_context("spawn")
    running: dict[int, _Job] = {}
    shared: dict[str, Any] = {}
    bar = tqdm(total=config.episodes, initial=len(done), desc=f"{config.task} / {config.policy}", unit="ep",
               disable=not show, dynamic_ncols=True)

    def postfix() -> None:
        n = len(done)
        k = sum(1 for r in done.values() if r["success"])
        bar.set_postfix_str(f"success {k}/{n} ({100 * k / n:.0f}%)" if n else "success -")

    def make_spec(index: int, episode_threads: int | None) -> EpisodeSpec:
        return EpisodeSpec(
            task=config.task, policy=config.policy, policy_target=policy_target,
            policy_options={**resolved.factory_options(), **config.runtime_options, **shared},
            seed=episode_seed(config, index),
            episode_index=index, env_factory=env_factory, out_dir=str(out), record_video=index < config.video,
            meshcat=config.meshcat, device=config.device, threads=episode_threads, views=config.views,
        )

    def start(index: int) -> None:
        spec = make_spec(index, threads)
        seed = spec.seed
        reader, writer = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=episode_process_main, args=(spec, writer), name=f"episode-{index}")
        proc.start()
        writer.close()  # so the reader sees EOF if the child dies
        running[index] = _Job(index, seed, proc, reader, time.perf_counter())

    def finish(job: _Job, record: dict[str, Any]) -> None:
        del running[job.index]
        job.conn.close()
        record_done(job.index, record)

    def record_done(index: int, record: dict[str, Any]) -> None:
        record.setdefault("provenance", reference)
        done[index] = record
        save()
        bar.update(1)
        postfix()
        if on_episode is not None:
            on_episode(record)

    def receive(job: _Job) -> None:
        try:
            job.result = job.conn.recv()
        except (EOFError, OSError):
            pass
        job.conn_open = False

    def conclude() -> Summary:
        bar.close()
        summary = save()
        if show:
            from geo4d_policy.eval.report import print_report

            print_report([summary], console=console)
            print_where(summary, console)
        return summary

    def report_interrupted() -> None:
        bar.close()
        try:
            summary = save()
        except Exception:  # noqa: BLE001,S110 - re-raise the original error, not a follow-up one
            return
        if show:
            _print_interrupted(summary, console)

    postfix()
    if config.ray_address is not None:
        try:
            _run_rollouts_on_ray(config, pending, make_spec, record_done)
        except BaseException:
            report_interrupted()
            raise
        return conclude()
    # Resources the policy's episodes share (e.g. one generator server on the GPU), set up once.
    resources = contextlib.ExitStack()
    try:
        shared = resources.enter_context(shared_policy_resources(
            policy_target, options={**resolved.as_dict(), **config.runtime_options}, device=config.device,
            workers=min(config.workers, len(pending))))
        while pending or running:
            while pending and len(running) < config.workers:
                start(pending.pop(0))
            waitables: dict[Any, tuple[str, _Job]] = {}
            for job in running.values():
                waitables[job.process.sentinel] = ("exit", job)
                if job.conn_open:
                    waitables[job.conn] = ("data", job)
            timeout = 1.0 if config.episode_timeout_s else None
            for obj in wait(list(waitables), timeout=timeout):
                kind, job = waitables[obj]
                if kind == "data" and job.conn_open:
                    receive(job)
            for job in list(running.values()):
                if job.process.exitcode is not None:
                    job.process.join()
                    if job.conn_open and job.conn.poll():
                        receive(job)
                    record = job.result or _crash_record(
                        config, job, f"worker crashed (exit code {job.process.exitcode})")
                    finish(job, record)
                elif config.episode_timeout_s and time.perf_counter() - job.started > config.episode_timeout_s:
                    if job.conn_open and job.conn.poll():
                        receive(job)
                    if job.result is not None:
                        continue  # finished in time; its process is exiting
                    job.process.kill()
                    job.process.join()
                    finish(job, _crash_record(config, job, f"timeout after {config.episode_timeout_s:g} s"))
    except BaseException:
        for job in running.values():
            if job.process.is_alive():
                job.process.terminate()
        for job in running.values():
            job.process.join(timeout=10)
            if job.process.is_alive():
                job.process.kill()
                job.process.join()
            job.conn.close()
        resources.close()
        report_interrupted()
        raise
    resources.close()
    return conclude()


def _run_rollouts_on_ray(config: RolloutConfig, pending: list[int], make_spec: Callable[..., Any],
                         record_done: Callable[[int, dict[str, Any]], None]) -> None:
    """The episode loop of :func:`run_rollouts` on a Ray cluster (each episode: one Ray task)."""
    from geo4d_policy.eval.ray_backend import run_on_ray

    def crash(spec: EpisodeSpec, reason: str, started: float) -> dict[str, Any]:
        return _failed_record(config, index=spec.episode_index, seed=spec.seed, reason=reason, started=started)

    run_on_ray((make_spec(i, 1) for i in pending), address=config.ray_address, workers=config.workers,
               gpus_per_episode=config.ray_gpus_per_episode if config.device.startswith("cuda") else 0.0,
               episode_timeout_s=config.episode_timeout_s,
               on_record=lambda spec, record: record_done(spec.episode_index, record), crash_record=crash)


def shared_policy_resources(policy: str, *, options: Mapping[str, Any], device: str, workers: int):
    """What ``workers`` parallel episodes of ``policy`` on ``device`` share (e.g. one generator
    server): the policy module's ``shared_resources`` hook, a context manager yielding extra
    policy options (``{}`` on a CPU, for one worker, or for a policy without the hook).

    Args:
        policy: a registered policy name or a ``"module:factory"`` target.
        options: the run's resolved settings (top level: ``checkpoint``, ``compile_unet``, ...)
            and runtime options, as one flat mapping.
        device: torch device of the run.
        workers: episodes that will run at once (across runs sharing the resources).
    """
    if workers <= 1 or not str(device).startswith("cuda"):
        return contextlib.nullcontext({})
    target = policy if ":" in policy else resolve_policy_target(policy)
    hook = getattr(importlib.import_module(target.partition(":")[0]), "shared_resources", None)
    if hook is None:
        return contextlib.nullcontext({})
    return hook(options, device=device, workers=workers)


def print_where(summary: Summary, console: Any = None) -> None:
    """Tell the user where the run's files are."""
    from rich.console import Console

    console = console or Console()
    console.print(f"records: {Path(summary.out_dir) / EPISODES_FILE}   summary: {Path(summary.out_dir) / SUMMARY_FILE}")


def _print_interrupted(summary: Summary, console: Any) -> None:
    from rich.console import Console

    console = console or Console(stderr=True)
    console.print(
        f"[yellow]stopped after {summary.finished}/{summary.episodes} episodes; finished ones are saved in "
        f"{summary.out_dir}; continue with --resume[/yellow]"
    )

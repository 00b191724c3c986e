"""One evaluation episode, run inside its own worker process.

:func:`run_episode` builds the environment (from a ``"module:attr"`` factory, imported here so
the runner process never loads the simulator) and the policy, runs the episode and returns its
record. Anything the policy or the environment raises becomes a failed record whose reason is
``"error: <Type>: <message>"``, with the traceback saved to ``<out_dir>/errors/<seed>.txt``;
only a dead process (segfault, ``os._exit``) is left for the runner to detect.

This module is imported by every spawned worker, so it imports nothing heavy at module level.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

MAX_REASON_CHARS = 300
"""Failure reasons are histogram keys: keep them one short line (the full text is in errors/)."""


@dataclasses.dataclass(frozen=True)
class EpisodeSpec:
    """Everything a worker process needs to run one episode (picklable, no live objects).

    Attributes:
        task: canonical task name.
        policy: the policy's registry name (written into the record).
        policy_target: its factory, ``"module:attribute"`` (resolved by the parent process).
        policy_options: keyword options for the factory.
        seed: the episode's evaluation seed.
        episode_index: index of the episode in the run.
        env_factory: ``"module:attribute"`` of ``make_env(task, *, record_video, meshcat)``.
        out_dir: the run directory (errors/, videos/, meshcat/ go below it).
        record_video: write ``videos/episode_<idx>_seed_<seed>.mp4``.
        meshcat: open Meshcat and write ``meshcat/episode_<idx>.html``.
        device: torch device for learned policies; passed as ``device=`` to factories that
            declare a ``device`` parameter (the expert does not).
        threads: CPU threads per worker (``OMP_NUM_THREADS`` etc. unless already set).
        views: the policy's evaluation views (:data:`~geo4d_policy.interface.EVAL_VIEWS`);
            passed to the env factory as ``views=`` unless ``heldout`` (its default).
    """

    task: str
    policy: str
    policy_target: str
    policy_options: dict[str, Any]
    seed: int
    episode_index: int
    env_factory: str
    out_dir: str
    record_video: bool = False
    meshcat: bool = False
    device: str = "cpu"
    threads: int | None = None
    views: str = "heldout"


def load_target(target: str) -> Callable[..., Any]:
    """Import ``"package.module:attribute"`` and return the attribute.

    Raises:
        ValueError: ``target`` is malformed.
        ImportError / AttributeError: the module or attribute does not exist.
    """
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"expected 'package.module:attribute', got {target!r}")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def error_reason(exc: BaseException) -> str:
    """``"error: <Type>: <first line of the message>"``, bounded in length."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    reason = f"error: {type(exc).__name__}: {msg}" if msg else f"error: {type(exc).__name__}"
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 3] + "..."


def video_path(out_dir: str | Path, episode_index: int, seed: int) -> Path:
    return Path(out_dir) / "videos" / f"episode_{episode_index}_seed_{seed}.mp4"


def prediction_video_path(out_dir: str | Path, episode_index: int, seed: int) -> Path:
    """Where ``--video`` puts the policy's predicted frames (next to the executed video)."""
    return video_path(out_dir, episode_index, seed).with_name(
        video_path(out_dir, episode_index, seed).stem + "_predicted.mp4")


def meshcat_path(out_dir: str | Path, episode_index: int) -> Path:
    return Path(out_dir) / "meshcat" / f"episode_{episode_index}.html"


def error_path(out_dir: str | Path, seed: int) -> Path:
    return Path(out_dir) / "errors" / f"{seed}.txt"


def _factory_params(spec: EpisodeSpec) -> set[str]:
    from geo4d_policy.policies.registry import load_policy_factory

    factory = load_policy_factory(spec.policy_target, name=spec.policy)
    try:
        return set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return set()


def _policy_options(spec: EpisodeSpec) -> dict[str, Any]:
    options = dict(spec.policy_options)
    wanted = {"device": spec.device}
    if spec.record_video:
        wanted["record_predictions"] = True  # predicted frames next to the executed video
    missing = [k for k in wanted if k not in options]
    if missing:
        params = _factory_params(spec)
        options.update({k: wanted[k] for k in missing if k in params})
    return options


def run_episode(spec: EpisodeSpec) -> dict[str, Any]:
    """Run one episode in this process and return its record (see :mod:`geo4d_policy.eval.records`).

    Never raises for errors of the policy or environment: they make a failed record.
    """
    from geo4d_policy.eval.episode import EpisodeProgress
    from geo4d_policy.eval.episode import run_episode as run_episode_loop
    from geo4d_policy.eval.records import merge_extras
    from geo4d_policy.policies.base import policy_diagnostics
    from geo4d_policy.policies.registry import make_policy_from_target

    t_setup = time.perf_counter()
    record: dict[str, Any] = {
        "task": spec.task,
        "policy": spec.policy,
        "seed": spec.seed,
        **({} if spec.views == "heldout" else {"views": spec.views}),
        "episode_index": spec.episode_index,
        "success": False,
        "duration_s": None,
        "sim_time_s": None,
        "failure_reason": None,
    }
    env = policy = None
    progress = EpisodeProgress()
    t_start = None
    extras: dict[str, Any] = {}
    try:
        make_env = load_target(spec.env_factory)
        env = make_env(spec.task, record_video=spec.record_video, meshcat=spec.meshcat,
                       **({} if spec.views == "heldout" else {"views": spec.views}))
        policy = make_policy_from_target(spec.policy_target, name=spec.policy, task=spec.task,
                                         **_policy_options(spec))
        record["setup_s"] = time.perf_counter() - t_setup
        t_start = time.perf_counter()
        run_episode_loop(env, policy, seed=spec.seed, progress=progress)
        info = progress.info
        record["success"] = bool(info.success)
        if not info.success:
            record["failure_reason"] = info.failure_reason or "episode ended without success"
        extras.update(info.extras or {})
    except Exception as exc:  # noqa: BLE001 - any policy/env error is this episode's failure, not the run's
        record["success"] = False
        record["failure_reason"] = error_reason(exc)
        path = error_path(spec.out_dir, spec.seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"task={spec.task} policy={spec.policy} seed={spec.seed} episode_index={spec.episode_index}\n\n"
            + traceback.format_exc()
        )
        if progress.info is not None:
            extras.update(progress.info.extras or {})
    finally:
        if t_start is not None:
            record["duration_s"] = time.perf_counter() - t_start
        if progress.info is not None:
            record["sim_time_s"] = float(progress.info.time)
        elif progress.obs is not None:
            record["sim_time_s"] = float(progress.obs.time)
        record["steps"] = progress.steps
        record["policy_calls"] = progress.policy_calls
        if policy is not None:
            try:
                extras.update(policy_diagnostics(policy))
            except Exception as exc:  # noqa: BLE001 - diagnostics must not turn a result into an error
                record["diagnostics_error"] = error_reason(exc)
        merge_extras(record, extras)
        if env is not None:
            _save_artifacts(env, spec, record, started=t_start is not None)
        if spec.record_video and policy is not None and hasattr(policy, "save_predictions"):
            try:
                path = policy.save_predictions(prediction_video_path(spec.out_dir, spec.episode_index, spec.seed))
                if path is not None:
                    record["prediction_video"] = str(Path(path).relative_to(spec.out_dir))
            except Exception as exc:  # noqa: BLE001 - a failed export is noted, never fails the episode
                record["prediction_video_error"] = error_reason(exc)
            try:
                env.close()
            except Exception:  # noqa: BLE001,S110 - the record is already complete
                pass
    return record


def _save_artifacts(env: Any, spec: EpisodeSpec, record: dict[str, Any], *, started: bool) -> None:
    """Best-effort video / Meshcat export: a failed export is noted, never fails the episode."""
    if not started:
        return
    if spec.record_video:
        path = video_path(spec.out_dir, spec.episode_index, spec.seed)
        try:
            env.save_video(path)
            record["video"] = str(path.relative_to(spec.out_dir))
        except Exception as exc:  # noqa: BLE001
            record["video_error"] = error_reason(exc)
    if spec.meshcat:
        path = meshcat_path(spec.out_dir, spec.episode_index)
        try:
            env.save_meshcat_html(path)
            record["meshcat"] = str(path.relative_to(spec.out_dir))
        except Exception as exc:  # noqa: BLE001
            record["meshcat_error"] = error_reason(exc)


def episode_process_main(spec: EpisodeSpec, conn: Any) -> None:
    """Entry point of a spawned worker process: run ``spec`` and send the record through ``conn``."""
    # Ctrl-C goes to the whole process group; the parent decides what to stop and terminates us,
    # so an interrupted episode is never mistaken for a crash or a failure.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if spec.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(var, str(spec.threads))
    record = run_episode(spec)
    conn.send(record)
    conn.close()

"""Episodes of a rollout run spread over a Ray cluster (many machines).

The local runner (:mod:`geo4d_policy.eval.runner`) starts one process per episode on this
machine. With ``RolloutConfig.ray_address`` set, :func:`run_on_ray` submits each episode as a Ray
task instead; everything else stays with the runner: which episodes are pending, the atomic
rewrite of ``episodes.jsonl``/``summary.json`` after every finished episode, resume, the
summary. The contract of one episode is the same as locally:

* a fresh worker process per episode (``max_calls=1``), so a crash or a leaking simulator only
  takes its own episode down; a dead worker becomes a failed record
  ``"worker crashed (...)"`` and the run goes on;
* at most ``workers`` episodes in flight (the cluster schedules them on its nodes, one CPU
  each, plus ``gpus_per_episode`` of a GPU when the run's device is CUDA);
* ``episode_timeout_s`` cancels an episode's task (force-kills its worker) and fails it.

Every node must have this project installed at the same version (``bash scripts/install.sh``)
and, for videos and error tracebacks, see the run directory at the same path (a shared file
system); records always come back to the driver. Ray is an optional dependency
(``pip install -e '.[ray]'``); asking for it without it installed raises a clear error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from geo4d_policy.eval.worker import EpisodeSpec, run_episode

RAY_MISSING = ("distributed rollouts need Ray: pip install -e '.[ray]' (or pip install ray) on every node, "
               "start the cluster with `ray start --head` / `ray start --address HEAD:6379`, then pass "
               "--ray auto (or --ray local for a one-machine cluster started by the run)")


class RayUnavailableError(RuntimeError):
    """Ray is not installed (the message says how to install it and start a cluster)."""


def import_ray() -> Any:
    """The ``ray`` module, or :class:`RayUnavailableError` with how to install it."""
    try:
        import ray
    except ImportError as e:
        raise RayUnavailableError(RAY_MISSING) from e
    return ray


def _episode_task(spec: EpisodeSpec) -> dict[str, Any]:
    """Body of one Ray task: the same call a local worker process makes."""
    import os

    if spec.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(var, str(spec.threads))
    return run_episode(spec)


def connect(address: str, *, num_cpus: int | None = None) -> Any:
    """Connect to (``"auto"``, ``"ray://host:port"``, ``"host:port"``) or start (``"local"``) a cluster.

    Args:
        address: where the cluster is; ``"local"`` starts a private one on this machine.
        num_cpus: CPUs of a ``"local"`` cluster (default: all).

    Returns:
        The ``ray`` module, initialised.
    """
    ray = import_ray()
    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    return ray


def run_on_ray(
    specs: Iterator[EpisodeSpec],
    *,
    address: str,
    workers: int,
    gpus_per_episode: float = 0.0,
    episode_timeout_s: float | None = None,
    on_record: Callable[[EpisodeSpec, dict[str, Any]], None],
    crash_record: Callable[[EpisodeSpec, str, float], dict[str, Any]],
) -> None:
    """Run every episode of ``specs`` as a Ray task, at most ``workers`` at once.

    Args:
        specs: the pending episodes, in submission order.
        address: the cluster (see :func:`connect`).
        workers: most episodes in flight.
        gpus_per_episode: GPU share each episode reserves (0 on CPU runs).
        episode_timeout_s: wall-clock limit per episode (None: none).
        on_record: called in this process with each finished episode's record.
        crash_record: ``(spec, reason, started) -> record`` for an episode whose task died.

    Raises:
        RayUnavailableError: Ray is not installed.
        ConnectionError: no cluster at ``address`` (Ray's own error).
        KeyboardInterrupt: after cancelling the episodes in flight.
    """
    ray = connect(address, num_cpus=workers if address == "local" else None)
    remote = ray.remote(num_cpus=1, num_gpus=gpus_per_episode, max_calls=1, max_retries=0)(_episode_task)
    in_flight: dict[Any, tuple[EpisodeSpec, float]] = {}
    pending = iter(specs)
    exhausted = False
    try:
        while True:
            while not exhausted and len(in_flight) < workers:
                spec = next(pending, None)
                if spec is None:
                    exhausted = True
                    break
                in_flight[remote.remote(spec)] = (spec, time.perf_counter())
            if not in_flight:
                return
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            for ref in ready:
                spec, started = in_flight.pop(ref)
                try:
                    record = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a dead worker is this episode's failure
                    record = crash_record(spec, f"worker crashed ({type(exc).__name__})", started)
                on_record(spec, record)
            if episode_timeout_s:
                now = time.perf_counter()
                for ref, (spec, started) in list(in_flight.items()):
                    if now - started > episode_timeout_s:
                        ray.cancel(ref, force=True)
                        del in_flight[ref]
                        on_record(spec, crash_record(spec, f"timeout after {episode_timeout_s:g} s", started))
    except BaseException:
        for ref in in_flight:
            ray.cancel(ref, force=True)
        raise

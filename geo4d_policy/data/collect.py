"""Demonstration collection: run the scripted expert and record multi-view RGB-D datasets.

Every attempt runs the task's expert on one data seed (``interface.data_seed``, disjoint from
evaluation seeds; ``seed_stream="dev"``: a development seed) in a worker process, streams the
robot at 10 Hz and all 16 cameras at 2 Hz (RGB, depth, gripper part masks by body name) into an
episode file, and keeps it only if the episode succeeded; failed attempts are discarded, logged
with their reason in ``DIR/collect_log.jsonl`` and reported. Collection stops when ``episodes``
successes are in the dataset (or after ``max_attempts``), and resumes where it stopped: listed
episodes and logged failures are never re-run, half-written files of a crash are pruned first.

The simulator is imported only inside the worker processes.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import multiprocessing as mp
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from geo4d_policy.config import atomic_write_text
from geo4d_policy.data.format import (
    ROBOT_HZ,
    VIDEO_HZ,
    EpisodeWriter,
    append_episode,
    completed_seeds,
    create_dataset,
    episode_filename,
    load_meta,
    prune_unlisted,
)
from geo4d_policy.interface import canonical_task_name, seed_stream_of, stream_seed

LOG_FILE = "collect_log.jsonl"


COLLECT_SEED_STREAMS: tuple[str, ...] = ("data", "dev")
"""Seed streams a dataset may be collected on: ``data`` (training) or ``dev`` (checks such as
``geo4d-eval-tracking`` on layouts no model was trained on); never the evaluation stream."""


@dataclasses.dataclass(frozen=True)
class CollectConfig:
    """What to collect and where (the CLI's options)."""

    task: str
    episodes: int
    out_dir: str
    seed: int = 0
    seed_stream: str = "data"
    workers: int = 1
    resolution: tuple[int, int] = (128, 160)
    max_attempts: int | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        if self.episodes <= 0:
            raise ValueError(f"--episodes must be positive, got {self.episodes}")
        if self.workers <= 0:
            raise ValueError(f"--workers must be positive, got {self.workers}")
        if min(self.resolution) <= 0:
            raise ValueError(f"bad resolution {self.resolution}")
        if self.seed_stream not in COLLECT_SEED_STREAMS:
            raise ValueError(f"unknown seed stream {self.seed_stream!r} for collection; valid seed streams: "
                             + ", ".join(COLLECT_SEED_STREAMS))


@dataclasses.dataclass(frozen=True)
class AttemptResult:
    """One collection attempt, as logged."""

    seed: int
    success: bool
    failure_reason: str | None
    duration_s: float
    sim_time_s: float
    n_frames: int
    bytes: int


def _env_config(resolution: tuple[int, int]):
    from sim.env import load_env_config

    cfg = load_env_config()
    cameras = dataclasses.replace(cfg.cameras, height=int(resolution[0]), width=int(resolution[1]))
    return dataclasses.replace(cfg, cameras=cameras)


def collect_one(task: str, seed: int, root: str, resolution: tuple[int, int]) -> AttemptResult:
    """Run the expert on ``seed`` and write its episode file if it succeeds (in this process)."""
    from geo4d_policy.eval.episode import EpisodeProgress, run_episode
    from sim.env import make_env
    from sim.experts import make_expert_policy

    t0 = time.perf_counter()
    env = make_env(task, config=_env_config(resolution))
    policy = make_expert_policy(task=task)
    stride = int(round(ROBOT_HZ / VIDEO_HZ))
    path = Path(root) / episode_filename(seed)
    writer: EpisodeWriter | None = None
    progress = EpisodeProgress()

    def observer(step: int, obs, action) -> None:
        nonlocal writer
        if writer is None:
            specs = [obs.camera_specs[name] for name in sorted(obs.camera_specs)]
            writer = EpisodeWriter(path, task=task, seed=seed, cameras=specs)
        if action is not None:
            writer.add_robot_step(obs.time, action=action, arms=obs.arms)
        if step % stride == 0:
            writer.add_camera_frames(obs.time, {name: obs.cameras[name] for name in obs.camera_specs})

    try:
        run_episode(env, policy, seed=seed, observer=observer, progress=progress)
        info = progress.info
        if info.success:
            writer.finish(success=True, info={"duration_s": time.perf_counter() - t0, "sim_time_s": info.time,
                                              "layout": env.layout.to_dict()})
            size = path.stat().st_size
            n_frames = writer.n_frames
        else:
            writer.abort()
            size, n_frames = 0, 0
        return AttemptResult(seed, bool(info.success), info.failure_reason, time.perf_counter() - t0,
                             float(info.time), n_frames, size)
    except Exception as exc:
        if writer is not None:
            writer.abort()
        return AttemptResult(seed, False, f"error: {type(exc).__name__}: {exc}", time.perf_counter() - t0,
                             float(progress.obs.time) if progress.obs is not None else 0.0, 0, 0)


def _read_log(root: Path) -> list[dict[str, Any]]:
    path = root / LOG_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_log(root: Path, entries: list[dict[str, Any]]) -> None:
    atomic_write_text(root / LOG_FILE, "".join(json.dumps(e) + "\n" for e in entries))


def check_dataset_seed_stream(root: str | Path, seed_stream: str) -> None:
    """Refuse to add ``seed_stream`` episodes to a dataset holding another stream's (a dataset
    is one stream's: training data never mixes with development layouts).

    Raises:
        ValueError: the message names the dataset's stream.
    """
    other = sorted({seed_stream_of(s) for s in completed_seeds(Path(root))} - {seed_stream})
    if other:
        raise ValueError(f"{root} holds episodes of the {other[0]} seed stream; resume it with --seed-stream "
                         f"{other[0]}, or choose another --out")


def collect(config: CollectConfig, *, show: bool = True) -> dict[str, Any]:
    """Collect ``config.episodes`` successful demonstrations into ``config.out_dir``.

    Returns:
        A summary dict (successes, failures by reason, attempts, timings, bytes per episode).

    Raises:
        geo4d_policy.data.format.DatasetMismatchError: the directory holds another task's (or
            another resolution's) dataset, or is a non-empty non-dataset directory.
        FileExistsError: the directory already holds a dataset and ``resume`` is not set.
        ValueError: the dataset holds episodes of another seed stream.
    """
    from tqdm import tqdm

    task = canonical_task_name(config.task)
    root = Path(config.out_dir)
    existed = (root / "meta.json").exists()
    # Refuses a directory of another task or resolution before anything is written.
    create_dataset(root, task=task, resolution=config.resolution)
    if existed and not config.resume:
        raise FileExistsError(f"{root} already holds a dataset; pass --resume to add to it, "
                              "or choose another --out")
    prune_unlisted(root)
    log = _read_log(root)
    done = completed_seeds(root)
    tried = {e["seed"] for e in log} | done
    have = len(done)
    max_attempts = config.max_attempts or 2 * config.episodes + 10
    check_dataset_seed_stream(root, config.seed_stream)
    candidates = [stream_seed(config.seed_stream, config.seed, i) for i in range(max_attempts)]
    todo = [s for s in candidates if s not in tried]
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    results: list[AttemptResult] = []
    bar = tqdm(total=config.episodes, initial=min(have, config.episodes), desc=f"collect {task}",
               unit="ep", disable=not show)
    with cf.ProcessPoolExecutor(max_workers=config.workers, mp_context=ctx) as pool:
        pending: dict[cf.Future, int] = {}
        it = iter(todo)

        def submit_next() -> bool:
            if have + len(pending) >= config.episodes:
                return False
            seed = next(it, None)
            if seed is None:
                return False
            pending[pool.submit(collect_one, task, seed, str(root), config.resolution)] = seed
            return True

        for _ in range(config.workers):
            submit_next()
        while pending:
            finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                pending.pop(fut)
                result = fut.result()
                results.append(result)
                if result.success:
                    append_episode(root, result.seed)
                    have += 1
                    bar.update(1)
                log.append(dataclasses.asdict(result))
                _write_log(root, log)
                fails = sum(not r["success"] for r in log)
                bar.set_postfix(failed=fails)
                submit_next()
    bar.close()
    wall = time.perf_counter() - t0
    meta = load_meta(root)
    ok = [r for r in results if r.success]
    summary = {
        "task": task,
        "dataset": str(root),
        "episodes": len(meta.episodes),
        "wanted": config.episodes,
        "attempts_this_run": len(results),
        "failures_this_run": Counter(r.failure_reason for r in results if not r.success),
        "failures_total": sum(not e["success"] for e in log),
        "wall_s": wall,
        "episodes_per_min": 60.0 * len(ok) / wall if wall > 0 else 0.0,
        "mean_episode_s": sum(r.duration_s for r in ok) / len(ok) if ok else None,
        "bytes_per_episode": sum(r.bytes for r in ok) / len(ok) if ok else None,
        "workers": config.workers,
        "cpu_count": os.cpu_count(),
    }
    return summary

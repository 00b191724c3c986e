"""TEST DOUBLES for the rollout runner's own mechanics (processes, records, resume, errors).

Not a simulator: a deterministic 1-D reaching "task" that stands in for ``sim.env`` so the runner
tests need no Drake, plus a scripted policy with switches to raise, crash its process, or log
which seeds it ran. The real environment and experts are tested in ``tests/sim``.

* :class:`FakeReachEnv`: the left gripper's x moves toward its commanded x at <= 0.05 m per
  step; success when within 1 cm of a seed-dependent target. Seeds with ``seed % 3 == 2`` put
  the target outside the workspace, so those episodes fail at ``t_max``.
* :class:`FakeReachPolicy` (registered by the tests as ``"fake_reach"``): commands the target.
  Its settings are data as a real policy's are (:data:`CONFIG`, a nested dataclass reached by
  dotted ``--policy-option`` keys); ``counter_file`` is a runtime option (not a setting).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np

from geo4d_policy.interface import (
    ActionChunk,
    ArmState,
    Observation,
    PrivilegedState,
    StepInfo,
    eval_seed,
)

WORKSPACE = 0.5
STEP = 0.05
TOL = 0.01
POLICY_TARGET = "fake_rollout_env:make_fake_reach_policy"
ENV_FACTORY = "fake_rollout_env:make_env"
RAISING_ENV_FACTORY = "fake_rollout_env:make_env_raising_on_second_episode"


def target_of(seed: int) -> float:
    """Target x of ``seed``; unreachable when ``seed % 3 == 2``."""
    if seed % 3 == 2:
        return 0.9
    return float(np.random.default_rng(seed).uniform(-0.3, 0.3))


def expected_success(seed: int) -> bool:
    return seed % 3 != 2


def _pose(x: float) -> np.ndarray:
    X = np.eye(4)
    X[0, 3] = x
    return X


class FakeReachEnv:
    """Test double of ``sim.env.Env`` (same methods, trivial dynamics)."""

    t_max = 2.0

    def __init__(self, task: str, *, record_video: bool = False, meshcat: bool = False,
                 raise_on_seed: int | None = None) -> None:
        self.task = task
        self.record_video = record_video
        self.meshcat = meshcat
        self.raise_on_seed = raise_on_seed
        self.x = 0.0
        self.time = 0.0
        self.target = 0.0
        self.frames = 0

    def _obs(self) -> Observation:
        arm = ArmState(q=np.zeros(7), v=np.zeros(7), X_TG=_pose(self.x), width=0.08)
        return Observation(
            task=self.task, time=self.time, arms={"left": arm}, camera_specs={}, cameras={},
            eval_cameras=(), train_cameras=(),
            privileged=PrivilegedState(object_poses={"target": _pose(self.target)}, layout={"target": self.target}),
        )

    def reset(self, seed: int) -> Observation:
        if seed == self.raise_on_seed:
            raise RuntimeError(f"fake env refuses seed {seed}")
        self.x, self.time, self.target, self.frames = 0.0, 0.0, target_of(seed), 1
        return self._obs()

    def step(self, action):
        goal = float(np.clip(action.arms["left"].X_TG[0, 3], -WORKSPACE, WORKSPACE))
        self.x += float(np.clip(goal - self.x, -STEP, STEP))
        self.time = round(self.time + 0.1, 10)
        self.frames += 1
        dist = abs(self.x - self.target)
        success = dist < TOL
        done = success or self.time >= self.t_max - 1e-9
        reason = None if success or not done else "target not reached at t_max"
        info = StepInfo(time=self.time, success=success, done=done, failure_reason=reason,
                        extras={"distance_m": np.float64(dist), "success": "shadowed"})
        return self._obs(), done, info

    def save_video(self, path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"fake mp4: %d frames" % self.frames)

    def save_meshcat_html(self, path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("<html>fake replay</html>")

    def close(self) -> None:
        pass


def make_env(task: str, *, record_video: bool = False, meshcat: bool = False, views: str = "heldout") -> FakeReachEnv:
    env = FakeReachEnv(task, record_video=record_video, meshcat=meshcat)
    env.views = views  # the sanity-control views reach the factory (checked through the records)
    return env


def make_env_raising_on_second_episode(task: str, *, record_video: bool = False,
                                       meshcat: bool = False) -> FakeReachEnv:
    """Env double whose ``reset`` raises for episode 1 of base seed 0."""
    return FakeReachEnv(task, record_video=record_video, meshcat=meshcat, raise_on_seed=eval_seed(0, 1))


@dataclasses.dataclass(frozen=True)
class FakeMotion:
    """How the double moves: ``steps_per_chunk`` actions per chunk, each commanding ``approach``
    of the way from the gripper to the target (1: the target itself)."""

    steps_per_chunk: int = 3
    approach: float = 1.0


@dataclasses.dataclass(frozen=True)
class FakeReachConfig:
    """Settings of the policy double (switches to fail on chosen seeds, and its motion)."""

    motion: FakeMotion = dataclasses.field(default_factory=FakeMotion)
    raise_on_seeds: tuple[int, ...] = ()
    crash_on_seeds: tuple[int, ...] = ()
    sleep_on_seeds: tuple[int, ...] = ()


CONFIG = FakeReachConfig


class FakeReachPolicy:
    """Policy double: drives the left gripper to the (privileged) target."""

    uses_cameras = False

    def __init__(self, config: FakeReachConfig, *, counter_file: str | None = None) -> None:
        self.name = "fake_reach"
        self.config = config
        self.raise_on_seeds = set(config.raise_on_seeds)
        self.crash_on_seeds = set(config.crash_on_seeds)
        self.sleep_on_seeds = set(config.sleep_on_seeds)
        self.counter_file = counter_file
        self.seed = None
        self.calls = 0

    def reset(self, *, seed: int) -> None:
        self.seed, self.calls = seed, 0
        if self.counter_file:
            with open(self.counter_file, "a") as f:
                f.write(f"{seed}\n")

    def act(self, obs: Observation) -> ActionChunk:
        self.calls += 1
        if self.seed in self.raise_on_seeds:
            raise ValueError(f"policy double asked to fail on seed {self.seed}")
        if self.seed in self.crash_on_seeds:
            os._exit(3)  # simulates a segfault: no exception, no cleanup
        if self.seed in self.sleep_on_seeds:
            time.sleep(60)  # a hung policy, for the runner's episode timeout
        x = float(obs.arms["left"].X_TG[0, 3])
        goal = x + self.config.motion.approach * (obs.privileged.layout["target"] - x)
        n = self.config.motion.steps_per_chunk
        return ActionChunk({"left": np.stack([_pose(goal)] * n)}, {"left": np.full(n, 0.08)})

    def diagnostics(self) -> dict:
        return {"replans": self.calls}


def make_fake_reach_policy(*, task: str, config: FakeReachConfig | None = None, counter_file: str | None = None,
                           **options) -> FakeReachPolicy:
    from geo4d_policy.policies.policy_config import configure

    return FakeReachPolicy(configure(__name__, config, options, task=task), counter_file=counter_file)

"""The episode loop shared by the rollout runner and the data collector.

``run_episode`` resets an environment and a policy for one seed and executes the policy's
action chunks open loop until the environment reports the episode done (success or t_max).
An optional observer sees every observation with the action that follows it, which is how the
dataset recorder logs robot state at 10 Hz and renders cameras at 2 Hz. numpy-level code: the
environment is any object with the ``sim.env.Env`` interface, so this module imports no simulator.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, Protocol

from geo4d_policy.interface import Action, Observation, StepInfo


class EnvLike(Protocol):
    t_max: float

    def reset(self, seed: int) -> Observation: ...

    def step(self, action: Action) -> tuple[Observation, bool, StepInfo]: ...


class PolicyLike(Protocol):
    def reset(self, *, seed: int) -> None: ...

    def act(self, obs: Observation): ...


Observer = Callable[[int, Observation, Action | None, StepInfo | None], None]
"""Called as ``observer(step, obs, next_action, info_that_led_to_obs)``; ``next_action`` is None
for the final observation and ``info`` is None for the first one."""


@dataclasses.dataclass(frozen=True)
class EpisodeOutcome:
    """How one episode ended."""

    seed: int
    success: bool
    failure_reason: str | None
    sim_time_s: float
    duration_s: float
    steps: int
    chunks: int
    extras: dict[str, Any]


def run_episode(env: EnvLike, policy: PolicyLike, *, seed: int, observer: Observer | None = None) -> EpisodeOutcome:
    """Run one episode of ``policy`` in ``env`` from ``seed`` (see module docstring).

    Exceptions from the policy or the environment propagate: the caller decides whether an
    error fails the episode (the runner does) or the whole job.
    """
    t0 = time.perf_counter()
    obs = env.reset(seed)
    policy.reset(seed=seed)
    info: StepInfo | None = None
    steps = chunks = 0
    done = False
    while not done:
        chunk = policy.act(obs)
        if len(chunk) == 0:
            raise RuntimeError("the policy returned an empty action chunk")
        chunks += 1
        for action in chunk:
            if observer is not None:
                observer(steps, obs, action, info)
            obs, done, info = env.step(action)
            steps += 1
            if done:
                break
    if observer is not None:
        observer(steps, obs, None, info)
    extras = dict(info.extras) if info is not None else {}
    policy_stats = getattr(policy, "episode_stats", None)
    if callable(policy_stats):
        extras.update(policy_stats())
    return EpisodeOutcome(
        seed=seed,
        success=bool(info.success),
        failure_reason=None if info.success else (info.failure_reason or "episode ended without success"),
        sim_time_s=float(info.time),
        duration_s=time.perf_counter() - t0,
        steps=steps,
        chunks=chunks,
        extras=extras,
    )

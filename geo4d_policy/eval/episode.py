"""The episode loop shared by the rollout worker and the data collector.

:func:`run_episode` resets an environment and a policy for one seed and executes the policy's
action chunks open loop until the environment reports the episode done (success or t_max).
An optional observer sees every observation with the action that follows it (the dataset
recorder logs robot state at 10 Hz and renders cameras at 2 Hz through it). Progress is kept
in an :class:`EpisodeProgress` the caller may pass in, so that after an exception it still
knows how far the episode got. A policy with an ``observe(obs)`` method (the privileged oracle,
whose shadow expert must see the real episode) is shown every observation a step starts from. The environment is anything with the ``sim.env.Env``
interface: this module imports no simulator.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Protocol

from geo4d_policy.interface import CONTROL_HZ, Action, ActionChunk, Observation, StepInfo


class EnvLike(Protocol):
    t_max: float

    def reset(self, seed: int) -> Observation: ...

    def step(self, action: Action) -> tuple[Observation, bool, StepInfo]: ...


class PolicyLike(Protocol):
    def reset(self, *, seed: int) -> None: ...

    def act(self, obs: Observation) -> ActionChunk: ...

    # Optional: ``observe(obs)``, called with the observation of every executed step.


Observer = Callable[[int, Observation, Action | None], None]
"""Called as ``observer(step, obs, next_action)`` before every step and once after the last
(with ``next_action=None``)."""


@dataclasses.dataclass
class EpisodeProgress:
    """How far an episode got (updated in place while it runs)."""

    steps: int = 0
    policy_calls: int = 0
    obs: Observation | None = None
    info: StepInfo | None = None

    @property
    def done(self) -> bool:
        return self.info is not None and self.info.done


def run_episode(env: EnvLike, policy: PolicyLike, *, seed: int, observer: Observer | None = None,
                progress: EpisodeProgress | None = None) -> EpisodeProgress:
    """Run one episode of ``policy`` in ``env`` from ``seed``; return its final progress.

    Exceptions from the policy or the environment propagate: the caller decides whether an
    error fails the episode (the rollout worker) or the job (the collector).

    Raises:
        ValueError: the policy returned an empty action chunk.
        RuntimeError: the environment did not end the episode within twice its ``t_max``.
    """
    progress = progress if progress is not None else EpisodeProgress()
    progress.obs = env.reset(seed)
    policy.reset(seed=seed)
    # A correct env ends every episode at t_max; this bound only stops a broken one looping forever.
    t_max = getattr(env, "t_max", None)
    max_steps = math.ceil(2 * t_max * CONTROL_HZ) + 100 if t_max else None
    watch = getattr(policy, "observe", None)
    while not progress.done:
        chunk = policy.act(progress.obs)
        progress.policy_calls += 1
        if len(chunk) == 0:
            raise ValueError("the policy returned an empty action chunk")
        for action in chunk:
            if observer is not None:
                observer(progress.steps, progress.obs, action)
            if watch is not None:
                watch(progress.obs)
            progress.obs, _, progress.info = env.step(action)
            progress.steps += 1
            if progress.done:
                break
        if max_steps is not None and progress.steps > max_steps and not progress.done:
            raise RuntimeError(f"the environment did not end the episode after {progress.steps} steps "
                               f"(t_max={t_max} s)")
    if observer is not None:
        observer(progress.steps, progress.obs, None)
    return progress

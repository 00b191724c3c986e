"""Scripted experts: privileged task scripts turned into 10 Hz action chunks.

A task's expert is a generator function ``script(obs) -> Generator[Motion, Observation, None]``.
It yields motions (move a gripper to a pose, open/close a gripper, hold); the
:class:`ScriptedExpert` policy expands each motion into 10 Hz actions within the controller's
speed limits (idle arms hold their last command), returns them as one action chunk, and sends
the observation reached at its end back into the generator, so every phase is planned from the
current (privileged) object poses. When the script ends the expert holds still.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator

import numpy as np

from geo4d_policy.control.trajectory import DEFAULT_ANGULAR_SPEED, DEFAULT_LINEAR_SPEED, plan_segment
from geo4d_policy.interface import ARM_NAMES, CONTROL_HZ, ActionChunk, Observation


@dataclasses.dataclass(frozen=True)
class Move:
    """Move ``arm``'s gripper frame to ``X_TG`` (optionally changing the width on the way)."""

    arm: str
    X_TG: np.ndarray
    width: float | None = None
    linear_speed: float = DEFAULT_LINEAR_SPEED
    angular_speed: float = DEFAULT_ANGULAR_SPEED


@dataclasses.dataclass(frozen=True)
class Grip:
    """Drive ``arm``'s fingers to ``width`` and wait ``duration`` seconds for them to settle."""

    arm: str
    width: float
    duration: float = 0.8


@dataclasses.dataclass(frozen=True)
class Hold:
    """Keep every command for ``duration`` seconds (e.g. let an object settle)."""

    duration: float


@dataclasses.dataclass(frozen=True)
class Together:
    """Several moves executed simultaneously (the shorter ones wait at their goal)."""

    moves: tuple[Move, ...]


Motion = Move | Grip | Hold | Together
Script = Callable[[Observation], Generator[Motion, Observation, None]]


class ScriptedExpert:
    """A :class:`~geo4d_policy.policies.base.Policy` running a task script with privileged state."""

    uses_cameras = False

    def __init__(self, script: Script, *, name: str = "expert") -> None:
        self.name = name
        self._script_fn = script
        self._gen: Generator[Motion, Observation, None] | None = None
        self._cmd: dict[str, tuple[np.ndarray, float]] = {}
        self._finished = False

    def reset(self, *, seed: int) -> None:
        self._gen = None
        self._cmd = {}
        self._finished = False

    def act(self, obs: Observation) -> ActionChunk:
        if obs.privileged is None:
            raise RuntimeError("the scripted expert needs privileged state (object poses)")
        if not self._cmd:
            self._cmd = {arm: (obs.arms[arm].X_TG.copy(), obs.arms[arm].width) for arm in ARM_NAMES}
        if self._gen is None:
            self._gen = self._script_fn(obs)
            motion = self._next(None)
        else:
            motion = self._next(obs)
        if motion is None:
            return self._expand(Hold(1.0))
        return self._expand(motion)

    def _next(self, obs: Observation | None) -> Motion | None:
        if self._finished:
            return None
        try:
            return next(self._gen) if obs is None else self._gen.send(obs)
        except StopIteration:
            self._finished = True
            return None

    def _expand(self, motion: Motion) -> ActionChunk:
        per_arm: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if isinstance(motion, Hold):
            n = max(1, int(round(motion.duration * CONTROL_HZ)))
        elif isinstance(motion, Grip):
            n = max(1, int(round(motion.duration * CONTROL_HZ)))
            X, _ = self._cmd[motion.arm]
            per_arm[motion.arm] = (np.repeat(X[None], n, axis=0), np.full(n, motion.width))
        else:
            moves = motion.moves if isinstance(motion, Together) else (motion,)
            plans = {}
            for mv in moves:
                X0, w0 = self._cmd[mv.arm]
                poses = plan_segment(X0, np.asarray(mv.X_TG, dtype=float), linear_speed=mv.linear_speed,
                                     angular_speed=mv.angular_speed)
                widths = np.full(len(poses), w0 if mv.width is None else mv.width)
                plans[mv.arm] = (poses, widths)
            n = max(len(p) for p, _ in plans.values())
            for arm, (poses, widths) in plans.items():
                pad = n - len(poses)
                per_arm[arm] = (np.concatenate([poses, np.repeat(poses[-1:], pad, axis=0)]),
                                np.concatenate([widths, np.repeat(widths[-1:], pad)]))
        X_TG, width = {}, {}
        for arm in ARM_NAMES:
            if arm in per_arm:
                X_TG[arm], width[arm] = per_arm[arm]
                self._cmd[arm] = (X_TG[arm][-1].copy(), float(width[arm][-1]))
            else:
                X, w = self._cmd[arm]
                X_TG[arm], width[arm] = np.repeat(X[None], n, axis=0), np.full(n, w)
        return ActionChunk(X_TG, width)

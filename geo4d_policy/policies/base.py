"""The :class:`Policy` protocol every policy implements, and helpers for its optional parts.

A policy is stateful over one episode: the runner calls ``reset(seed=...)`` once after the
environment's ``reset`` and then ``act(obs)`` whenever the previous action chunk has been
executed (a receding-horizon policy replans at every call; a closed-loop one returns chunks of
length 1).

Optional members (not part of the structural protocol, so plain classes need not declare them):

* ``uses_cameras: bool`` -- ``False`` when the policy never reads ``obs.cameras`` (the scripted
  expert), so nothing needs to be rendered for it. Defaults to ``True``.
* ``diagnostics() -> Mapping[str, Any]`` -- per-episode numbers (e.g. ``replans``,
  ``tracking_error_m``) called once when the episode ends; they are merged into the episode's
  record by the rollout runner. Values must be JSON-serialisable (numpy scalars are fine).
  ``episode_stats()`` is accepted as an alias (the name ``geo4d_policy.eval.episode`` reads).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from geo4d_policy.interface import ActionChunk, Observation


@runtime_checkable
class Policy(Protocol):
    """A closed-loop controller producing 10 Hz action chunks from observations."""

    name: str
    """Registry name of the policy (``"expert"``, ``"geo4d"``, ...), written into records."""

    def reset(self, *, seed: int) -> None:
        """Forget the previous episode; ``seed`` seeds any sampling (e.g. diffusion noise)."""
        ...

    def act(self, obs: Observation) -> ActionChunk:
        """The next chunk of per-arm gripper targets, executed open loop before the next call."""
        ...


def policy_uses_cameras(policy: Any) -> bool:
    """Whether ``policy`` reads camera images (``True`` unless it says otherwise)."""
    return bool(getattr(policy, "uses_cameras", True))


def policy_diagnostics(policy: Any) -> dict[str, Any]:
    """The policy's end-of-episode diagnostics (empty when it has no ``diagnostics`` method).

    Raises:
        TypeError: ``diagnostics()`` returned something that is not a mapping.
    """
    fn = getattr(policy, "diagnostics", None) or getattr(policy, "episode_stats", None)
    if fn is None:
        return {}
    values = fn()
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise TypeError(f"{type(policy).__name__}.diagnostics() must return a mapping, got {type(values).__name__}")
    return dict(values)

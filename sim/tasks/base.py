"""What a task is: layout randomisation from a seed, success predicates, time limit.

A task never touches the controller or cameras; the environment (``sim/env.py``) builds the
station from the task's :class:`Layout`, steps it, and asks :meth:`Task.evaluate` after every
control step. Layout parameters that experts and recorders need (container frames, targets)
travel in ``Layout.params`` as plain JSON-able values.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import numpy as np

from sim.station import ObjectPlacement, Station


LAYOUT_STREAM, CAMERA_STREAM = 0, 1
"""Sub-streams of an episode seed: ``default_rng([seed, stream])``."""


def random_rotation(rng: np.random.Generator) -> tuple[float, float, float]:
    """Roll-pitch-yaw of a uniformly random orientation."""
    from scipy.spatial.transform import Rotation

    return tuple(Rotation.random(random_state=rng.integers(2**31)).as_euler("xyz"))


@dataclasses.dataclass(frozen=True)
class Layout:
    """Objects of one episode and task-specific parameters (JSON-able values)."""

    objects: tuple[ObjectPlacement, ...]
    params: dict[str, Any]

    def placement(self, name: str) -> ObjectPlacement:
        for o in self.objects:
            if o.name == name:
                return o
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "objects": [{"name": o.name, "model": o.model, "X_TO": np.asarray(o.X_TO).tolist(), "fixed": o.fixed}
                        for o in self.objects],
            "params": self.params,
        }


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Result of the success predicates at one instant; ``reason`` says what is not yet true."""

    success: bool
    reason: str = ""


class Task(abc.ABC):
    """A benchmark task: subclasses set ``name``, ``t_max`` and implement the two methods."""

    name: ClassVar[str]
    t_max: ClassVar[float]
    arms: ClassVar[tuple[str, ...]]
    """Arms the scripted expert moves (the others hold their home pose)."""

    @abc.abstractmethod
    def sample_layout(self, rng: np.random.Generator) -> Layout:
        """Draw the episode's object layout (deterministic given ``rng``)."""

    def layout_for_seed(self, seed: int, attempt: int = 0) -> Layout:
        """The layout of episode ``seed`` (its own random stream, independent of the cameras').

        ``attempt`` k > 0 draws the k-th replacement layout, from a stream of its own, for a
        seed whose first layout cannot be simulated (``Env.reset`` decides); attempt 0 is the
        seed's layout as it always was.
        """
        if attempt < 0:
            raise ValueError(f"attempt must be non-negative, got {attempt}")
        key = [seed, LAYOUT_STREAM] if attempt == 0 else [seed, LAYOUT_STREAM, attempt]
        return self.sample_layout(np.random.default_rng(key))

    @abc.abstractmethod
    def evaluate(self, station: Station, layout: Layout) -> Evaluation:
        """Check every success predicate on the station's current state."""

    @abc.abstractmethod
    def placement_error(self, station: Station, layout: Layout) -> float:
        """Distance (m) of the placed object to its target now, as the task defines its target
        (reported as ``placement_error_m`` at the end of every episode: the margin a policy
        leaves to the success tolerance)."""

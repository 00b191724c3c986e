"""The three LBM-style tasks, by name (CamelCase as the paper writes them; snake_case accepted)."""

from __future__ import annotations

import importlib

from geo4d_policy.interface import TASK_NAMES, canonical_task_name
from sim.tasks.base import Evaluation, Layout, Task

_MODULES = {
    "PlaceAppleFromBowlIntoBin": "sim.tasks.place_apple_from_bowl_into_bin",
    "PutSpatulaOnTable": "sim.tasks.put_spatula_on_table",
    "StoreCerealBoxUnderShelf": "sim.tasks.store_cereal_box_under_shelf",
}
assert set(_MODULES) == set(TASK_NAMES)


def make_task(name: str) -> Task:
    """Instantiate the task called ``name`` (raises UnknownNameError listing the valid names)."""
    canonical = canonical_task_name(name)
    module = importlib.import_module(_MODULES[canonical])
    return module.TASK_CLASS()


__all__ = ["Evaluation", "Layout", "Task", "make_task"]

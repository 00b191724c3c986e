"""Scripted experts (privileged) for every task, behind one factory the policy registry names.

``make_expert_policy(task=...)`` returns a :class:`~sim.experts.base.ScriptedExpert` running the
task's script; scripts live in one module per task (``sim/experts/<snake_task>.py``, function
``script``).
"""

from __future__ import annotations

import importlib

from geo4d_policy.interface import canonical_task_name
from sim.experts.base import ScriptedExpert

_SCRIPTS = {
    "PlaceAppleFromBowlIntoBin": "sim.experts.place_apple_from_bowl_into_bin",
    "PutSpatulaOnTable": "sim.experts.put_spatula_on_table",
    "StoreCerealBoxUnderShelf": "sim.experts.store_cereal_box_under_shelf",
}


def make_expert_policy(*, task: str) -> ScriptedExpert:
    """The scripted expert of ``task`` (CamelCase or snake_case name); it takes no options."""
    module = importlib.import_module(_SCRIPTS[canonical_task_name(task)])
    return ScriptedExpert(module.script, name="expert")

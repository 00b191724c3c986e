"""Per-task settings of the learning side (``configs/tasks.yaml``), as typed dataclasses.

Owns what the policies and evaluations need to know about a task's object that is not in the
observations: the width of the hand closed on it (gripper-state thresholds) and the width to
command when closing on it. The simulator's own task definitions live in ``sim/tasks``; these
are the learning side's priors about them, kept as data so that a change is a config change
recorded in every run's resolved configuration.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import yaml

from geo4d_policy.config import CONFIG_DIR, ConfigError, from_dict
from geo4d_policy.interface import TASK_NAMES, canonical_task_name

TASK_SETTINGS_FILE = CONFIG_DIR / "tasks.yaml"


@dataclasses.dataclass(frozen=True)
class TaskSettings:
    """One task's settings (metres).

    Attributes:
        held_object_width: width of the hand closed on the task's object; None: the gripper
            state reads fractions of the stroke instead.
        closed_command_width: width commanded to close on the object; None: the controller's
            ``closed_width`` (a full close).
    """

    held_object_width: float | None = None
    closed_command_width: float | None = None


@functools.lru_cache(maxsize=4)
def load_task_settings(path: str | os.PathLike[str] = TASK_SETTINGS_FILE) -> dict[str, TaskSettings]:
    """Every task's settings from ``path`` (tasks absent from the file get the defaults).

    Raises:
        ConfigError: the file is missing or malformed, names an unknown task or an unknown key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"task settings not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must map task names to settings")
    unknown = sorted(set(data) - set(TASK_NAMES))
    if unknown:
        raise ConfigError(f"{path}: unknown task(s) {unknown}; valid tasks: {', '.join(TASK_NAMES)}")
    return {task: from_dict(TaskSettings, data.get(task) or {}, where=f"{path}:{task}") for task in TASK_NAMES}


def task_settings(task: str) -> TaskSettings:
    """The settings of ``task`` (CamelCase or snake_case)."""
    return load_task_settings()[canonical_task_name(task)]


def held_object_widths() -> dict[str, float]:
    """Task -> held-object width, for the tasks that have one."""
    return {t: s.held_object_width for t, s in load_task_settings().items() if s.held_object_width is not None}

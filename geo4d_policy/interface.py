"""Plain data types shared by ``sim/`` and ``geo4d_policy/``.

This is the only module both sides import. It depends on numpy alone: the simulator never
sees torch, and the learning side never sees pydrake. Everything that crosses the boundary
(observations, actions, camera data, task names, seed streams) is defined here once.

Conventions (see DESIGN.md):
  * Units are metres, radians, seconds. Transforms are 4x4 homogeneous float64 arrays named
    ``X_AB`` (pose of frame B in frame A), as Drake names them.
  * ``T`` is the task frame: table-top centre, z up, arms on the -x side facing +x.
  * Camera frames follow Drake/OpenCV: +z forward, +x right, +y down.
  * Depth is float32 metres in memory, ``0.0`` where the camera saw nothing (the same
    convention as uint16 millimetres on disk): a depth value is valid when finite and > 0.
  * The gripper frame ``G`` of each arm is Franka's ``panda_link8`` (the flange), as in
    lbm_eval's action space.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

ARM_NAMES: tuple[str, ...] = ("left", "right")
"""The two arms. ``left`` is at +y (the robot's left, looking along +x), ``right`` at -y."""

TASK_NAMES: tuple[str, ...] = (
    "PlaceAppleFromBowlIntoBin",
    "PutSpatulaOnTable",
    "StoreCerealBoxUnderShelf",
)

GRIPPER_OPEN_WIDTH = 0.08
"""Franka Hand stroke: the fingers open to 80 mm between them."""

CONTROL_HZ = 10.0
"""Policy/control rate (as lbm_eval)."""

SEED_STREAMS: tuple[str, ...] = ("data", "dev", "eval")
"""The three pairwise-disjoint seed streams: ``data`` (collection and training), ``dev``
(tracing, tuning, bisecting, ablations) and ``eval`` (reported figures only)."""

SEED_STREAM_SIZE = 1_000_000_000
"""Each stream owns one block of this many consecutive seeds: data ``[0, 1e9)``,
eval ``[1e9, 2e9)`` (its historical place), dev ``[2e9, 3e9)``."""

SEEDS_PER_BASE = 100_000
"""A base seed ``b`` owns indices ``0..99 999`` of its stream (seed = start + b * 100 000 + index)."""

_STREAM_START = {"data": 0, "eval": SEED_STREAM_SIZE, "dev": 2 * SEED_STREAM_SIZE}

EVAL_SEED_OFFSET = _STREAM_START["eval"]
"""Evaluation seeds start here; data-collection seeds stay below it (disjoint streams)."""

DEV_SEED_OFFSET = _STREAM_START["dev"]
"""Development seeds start here, above the evaluation block."""

class UnknownNameError(ValueError):
    """A task/policy/config name that is not registered; the message lists the valid ones."""


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def canonical_task_name(name: str) -> str:
    """Return the CamelCase task name for ``name`` (CamelCase or snake_case accepted).

    Raises:
        UnknownNameError: ``name`` is not one of :data:`TASK_NAMES`; the message lists them.
    """
    for task in TASK_NAMES:
        if name in (task, _snake(task)):
            return task
    raise UnknownNameError(
        f"unknown task {name!r}; valid tasks: "
        + ", ".join(f"{t} ({_snake(t)})" for t in TASK_NAMES)
    )


def check_seed_stream(name: str) -> str:
    """Return ``name`` if it is a seed stream.

    Raises:
        UnknownNameError: ``name`` is not one of :data:`SEED_STREAMS`; the message lists them.
    """
    if name not in SEED_STREAMS:
        raise UnknownNameError(f"unknown seed stream {name!r}; valid seed streams: {', '.join(SEED_STREAMS)}")
    return name


def stream_seed(stream: str, base_seed: int, index: int) -> int:
    """Seed of episode ``index`` of a run started with ``base_seed`` on seed stream ``stream``.

    The seed is ``start(stream) + base_seed * SEEDS_PER_BASE + index`` and must stay inside the
    stream's block of :data:`SEED_STREAM_SIZE` seeds, so the streams never share a seed.

    Raises:
        UnknownNameError: unknown stream.
        ValueError: a negative base or index, or a seed outside the stream's block.
    """
    start = _STREAM_START[check_seed_stream(stream)]
    if base_seed < 0 or index < 0:
        raise ValueError(f"seeds must be non-negative, got base={base_seed} index={index}")
    offset = base_seed * SEEDS_PER_BASE + index
    if offset >= SEED_STREAM_SIZE:
        raise ValueError(f"{stream} seed out of range: base={base_seed} index={index} leaves the stream's "
                         f"block of {SEED_STREAM_SIZE} seeds")
    return start + offset


def seed_stream_of(seed: int) -> str:
    """The stream a seed belongs to (``"data"``, ``"dev"`` or ``"eval"``).

    Raises:
        ValueError: ``seed`` is in no stream (negative or beyond the last block).
    """
    for stream, start in _STREAM_START.items():
        if start <= seed < start + SEED_STREAM_SIZE:
            return stream
    raise ValueError(f"seed {seed} belongs to no seed stream")


def eval_seed(base_seed: int, index: int) -> int:
    """Seed of evaluation episode ``index`` of a run started with ``base_seed``: reported figures only."""
    return stream_seed("eval", base_seed, index)


def dev_seed(base_seed: int, index: int) -> int:
    """Seed of development episode ``index``: tracing, tuning, bisecting and ablations."""
    return stream_seed("dev", base_seed, index)


def data_seed(base_seed: int, index: int) -> int:
    """Seed of data-collection episode ``index`` (always below :data:`EVAL_SEED_OFFSET`)."""
    return stream_seed("data", base_seed, index)


# --------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of an undistorted camera (pixels)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    @property
    def K(self) -> np.ndarray:  # noqa: N802 - the standard symbol
        """The 3x3 intrinsic matrix."""
        return np.array(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=np.float64
        )

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class CameraSpec:
    """A camera: a name, its intrinsics and its pose ``X_TC`` in the task frame."""

    name: str
    intrinsics: CameraIntrinsics
    X_TC: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "intrinsics": self.intrinsics.to_dict(), "X_TC": self.X_TC.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CameraSpec:
        return cls(d["name"], CameraIntrinsics(**d["intrinsics"]), np.asarray(d["X_TC"], dtype=np.float64))


@dataclasses.dataclass(frozen=True)
class CameraFrame:
    """One rendered image set of one camera.

    Attributes:
        spec: the camera.
        rgb: (H, W, 3) uint8.
        depth: (H, W) float32 metres along the optical axis, 0.0 where nothing was hit.
        label: (H, W) int32 label image; values map to bodies through ``label_map``.
        label_map: body name (``"<model instance>/<body>"``, e.g. ``"left/panda_leftfinger"``,
            ``"apple/apple"``) -> label value. Masks are always taken by name, never by a
            hard-coded id.
    """

    spec: CameraSpec
    rgb: np.ndarray
    depth: np.ndarray
    label: np.ndarray
    label_map: Mapping[str, int]

    def mask(self, *body_names: str) -> np.ndarray:
        """Boolean mask of the pixels showing any of ``body_names`` (unknown names raise)."""
        missing = [n for n in body_names if n not in self.label_map]
        if missing:
            raise KeyError(f"no body named {missing} in this frame's label map")
        return np.isin(self.label, [self.label_map[n] for n in body_names])


def look_at(position: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """``X_TC`` of a camera at ``position`` looking at ``target`` (+z forward, +x right, +y down,
    the image's up as close to ``up`` as possible)."""
    z = np.asarray(target, float) - np.asarray(position, float)
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9:
        raise ValueError("camera looks straight along the up vector")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    X = np.eye(4)
    X[:3, :3] = np.stack([x, y, z], axis=1)
    X[:3, 3] = position
    return X


# --------------------------------------------------------------------------------------------
# Robot state, observations, actions
# --------------------------------------------------------------------------------------------


def gripper_link_names(arm: str) -> dict[str, str]:
    """Label-map names of one arm's gripper parts: ``hand`` (palm), ``left_finger``, ``right_finger``."""
    return {
        "hand": f"{arm}/panda_hand",
        "left_finger": f"{arm}/panda_leftfinger",
        "right_finger": f"{arm}/panda_rightfinger",
    }


@dataclasses.dataclass(frozen=True)
class ArmState:
    """Measured state of one arm: joint positions/velocities, gripper pose ``X_TG`` and width."""

    q: np.ndarray
    v: np.ndarray
    X_TG: np.ndarray
    width: float


@dataclasses.dataclass(frozen=True)
class PrivilegedState:
    """Simulator ground truth, for the scripted expert and the oracle only.

    Learned policies must not read it; the evaluation runner gives it to every policy because
    policies run in the simulator's process, but only ``expert``/``oracle`` are allowed to use it.
    """

    object_poses: Mapping[str, np.ndarray]
    layout: Mapping[str, Any]
    snapshot: Callable[[], Any] | None = None
    """Returns the simulator's full state at this observation (for the oracle's look-ahead copy
    of the episode); only valid in the environment's process and before the next step."""


@dataclasses.dataclass(frozen=True)
class Observation:
    """What a policy sees at one control step.

    ``cameras`` is a mapping that renders on first access (rendering dominates the cost of a
    step, and most steps of a receding-horizon policy need no image). ``eval_cameras`` are
    the policy's views, reference view ``n`` first; ``train_cameras`` are the views data is
    collected from. A policy may use only ``X_TC`` of ``eval_cameras[0]``.
    """

    task: str
    time: float
    arms: Mapping[str, ArmState]
    camera_specs: Mapping[str, CameraSpec]
    cameras: Mapping[str, CameraFrame]
    eval_cameras: tuple[str, ...]
    train_cameras: tuple[str, ...]
    privileged: PrivilegedState | None = None


@dataclasses.dataclass(frozen=True)
class ArmCommand:
    """Target of one arm for one control step: pose of ``panda_link8`` in T, gripper width (m)."""

    X_TG: np.ndarray
    width: float


@dataclasses.dataclass(frozen=True)
class Action:
    """One 10 Hz command for both arms (an idle arm is commanded to hold its pose)."""

    arms: Mapping[str, ArmCommand]


@dataclasses.dataclass(frozen=True)
class ActionChunk:
    """A sequence of 10 Hz actions a policy commits to (executed open loop, then replan).

    Attributes:
        X_TG: arm -> (N, 4, 4) target poses of ``panda_link8`` in T.
        width: arm -> (N,) gripper widths in metres.
    """

    X_TG: Mapping[str, np.ndarray]
    width: Mapping[str, np.ndarray]

    def __post_init__(self) -> None:
        lengths = {arm: len(p) for arm, p in self.X_TG.items()}
        if set(self.X_TG) != set(self.width):
            raise ValueError(f"poses for {sorted(self.X_TG)} but widths for {sorted(self.width)}")
        for arm, poses in self.X_TG.items():
            poses = np.asarray(poses)
            widths = np.asarray(self.width[arm])
            if poses.ndim != 3 or poses.shape[1:] != (4, 4):
                raise ValueError(f"X_TG[{arm!r}] must be (N, 4, 4), got {poses.shape}")
            if widths.shape != (len(poses),):
                raise ValueError(f"width[{arm!r}] must be ({len(poses)},), got {widths.shape}")
            if not (np.isfinite(poses).all() and np.isfinite(widths).all()):
                raise ValueError(f"non-finite target for arm {arm!r}")
        if len(set(lengths.values())) > 1:
            raise ValueError(f"arms have chunks of different lengths: {lengths}")

    def __len__(self) -> int:
        return len(next(iter(self.X_TG.values()))) if self.X_TG else 0

    def __getitem__(self, i: int) -> Action:
        return Action({arm: ArmCommand(np.asarray(self.X_TG[arm][i]), float(self.width[arm][i])) for arm in self.X_TG})

    def __iter__(self) -> Iterator[Action]:
        return (self[i] for i in range(len(self)))

@dataclasses.dataclass(frozen=True)
class StepInfo:
    """What the environment reports after a step."""

    time: float
    success: bool
    done: bool
    failure_reason: str | None = None
    extras: Mapping[str, Any] = dataclasses.field(default_factory=dict)


EVAL_VIEWS: tuple[str, ...] = ("heldout", "train", "fixed-train")
"""Which cameras a rollout shows the policy as its two evaluation views (``Observation.eval_cameras``):

* ``heldout``: the episode's first two held-out cameras, novel views (the reported figures);
* ``train``: the episode's first two training cameras (on data seeds, exactly the views of a
  demonstration);
* ``fixed-train``: the same pair in every episode, the first two training cameras sampled for
  data seed :data:`FIXED_VIEWS_DATA_SEED` (a pair the demonstrations contain).

The last two are sanity controls: they separate a policy's failure on novel views from a
failure of its implementation."""

FIXED_VIEWS_DATA_SEED = 0
"""The data seed whose sampled cameras ``fixed-train`` uses in every episode (the first
demonstration's)."""


def check_eval_views(name: str) -> str:
    """Return ``name`` if it is one of :data:`EVAL_VIEWS`.

    Raises:
        UnknownNameError: another name; the message lists the valid ones.
    """
    if name not in EVAL_VIEWS:
        raise UnknownNameError(f"unknown evaluation views {name!r}; valid: {', '.join(EVAL_VIEWS)}")
    return name

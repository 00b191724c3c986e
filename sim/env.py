"""The gym-like environment: ``reset(seed) -> Observation``, ``step(Action) -> (obs, done, info)``.

One episode = one station built from the task's layout for that seed, with 16 cameras sampled
from the same seed (a separate random stream, so layouts and views vary independently). The
policy's two evaluation views are two held-out cameras, unless ``views`` picks a sanity control
(:data:`~geo4d_policy.interface.EVAL_VIEWS`). The
policy acts at 10 Hz; each ``step`` holds the commanded gripper poses/widths for 0.1 s of
simulation. Camera images in observations are rendered lazily (see :class:`LazyCameras`).
The episode succeeds the first step all task predicates hold and fails at ``t_max``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from geo4d_policy.config import CONFIG_DIR, load_config
from geo4d_policy.interface import (
    ARM_NAMES,
    CONTROL_HZ,
    FIXED_VIEWS_DATA_SEED,
    Action,
    CameraFrame,
    CameraSpec,
    Observation,
    PrivilegedState,
    StepInfo,
    canonical_task_name,
    check_eval_views,
    data_seed,
)
from sim.cameras import CameraConfig, sample_cameras, split_names
from sim.station import Station, StationConfig, StationSnapshot, build_station
from sim.tasks import make_task
from sim.tasks.base import CAMERA_STREAM, Layout


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """Everything that defines an episode besides the task and seed (``configs/env.yaml``)."""

    station: StationConfig = StationConfig()
    cameras: CameraConfig = CameraConfig()
    video_fps: float = CONTROL_HZ


def load_env_config(path: str | Path | None = None) -> EnvConfig:
    """Load ``configs/env.yaml`` (or ``path``)."""
    return load_config(EnvConfig, path or CONFIG_DIR / "env.yaml")


@dataclasses.dataclass(frozen=True)
class EnvSnapshot:
    """An episode's state: see :meth:`Env.snapshot` and :meth:`Env.restore`."""

    task: str
    seed: int | None
    station: StationSnapshot
    commands: Mapping[str, tuple[np.ndarray, float]]
    episode_time: float


class StaleObservationError(RuntimeError):
    """Camera images of an observation were requested after the environment moved on."""


class LazyCameras(Mapping[str, CameraFrame]):
    """Camera frames rendered on first access and cached, valid until the next ``step``."""

    def __init__(self, env: Env, specs: Mapping[str, CameraSpec], stamp: int) -> None:
        self._env, self._specs, self._stamp = env, specs, stamp
        self._cache: dict[str, CameraFrame] = {}

    def __getitem__(self, name: str) -> CameraFrame:
        if name not in self._cache:
            if name not in self._specs:
                raise KeyError(f"no camera {name!r}; cameras: {sorted(self._specs)}")
            if self._env._stamp != self._stamp:
                raise StaleObservationError(f"camera {name!r} requested after the environment stepped")
            self._cache[name] = self._env.station.render(self._specs[name])
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)


MAX_LAYOUT_ATTEMPTS = 8
"""Layouts tried per seed before ``Env.reset`` gives up (one in hundreds needs a second)."""
SETTLED_SPEED_LIMIT = 50.0
"""Largest generalised velocity (m/s or rad/s) a settled scene may keep: valid scenes stay below
10 (an apple may still roll in its bowl), a diverging one reaches hundreds."""


class Env:
    """A task in the station. See the module docstring."""

    def __init__(self, task: str, *, config: EnvConfig | None = None, record_video: bool = False,
                 meshcat: bool = False, views: str = "heldout") -> None:
        self.task = make_task(canonical_task_name(task))
        self.config = config or load_env_config()
        self.record_video = record_video
        self._meshcat = None
        if meshcat:
            from pydrake.geometry import Meshcat

            self._meshcat = Meshcat()
        self.station: Station | None = None
        self.layout: Layout | None = None
        self.layout_attempt = 0
        self.cameras: dict[str, CameraSpec] = {}
        self.train_cameras, self.heldout_cameras, self.eval_cameras = split_names(self.config.cameras)
        self.views = check_eval_views(views)
        if views != "heldout":
            self.eval_cameras = self.train_cameras[:len(self.eval_cameras)]
        self._stamp = 0
        self._t0 = 0.0
        self._commands: dict[str, tuple[np.ndarray, float]] = {}
        self._frames: list[np.ndarray] = []
        self._done = True
        self.seed: int | None = None

    @property
    def t_max(self) -> float:
        return self.task.t_max

    @property
    def time(self) -> float:
        """Episode time (s) since the end of the settling phase."""
        return self.station.time - self._t0 if self.station else 0.0

    def reset(self, seed: int) -> Observation:
        """Start the episode of ``seed``: layout, cameras, settle objects, observe.

        A layout whose objects do not come to rest while settling (interpenetrating meshes can
        make the contact solver diverge) cannot be simulated by any policy; it is replaced by
        the seed's next layout attempt (``Task.layout_for_seed``), deterministically, so every
        env of a seed (the oracle's look-ahead copy too) gets the same scene. ``layout_attempt``
        says which one was used (0 for nearly every seed).

        Raises:
            ValueError: negative seed.
            RuntimeError: none of ``MAX_LAYOUT_ATTEMPTS`` layouts settled.
        """
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.seed = seed
        camera_seed = data_seed(FIXED_VIEWS_DATA_SEED, 0) if self.views == "fixed-train" else seed
        specs = sample_cameras(np.random.default_rng([camera_seed, CAMERA_STREAM]), self.config.cameras)
        self.cameras = {s.name: s for s in specs}
        rejected = []
        for attempt in range(MAX_LAYOUT_ATTEMPTS):
            self.layout = self.task.layout_for_seed(seed, attempt)
            self.layout_attempt = attempt
            speed = self.build_and_settle()
            if speed <= SETTLED_SPEED_LIMIT:
                break
            rejected.append(f"attempt {attempt}: largest generalised velocity {speed:.3g} after settling")
        else:
            raise RuntimeError(f"{self.task.name} seed {seed}: no layout settled ({'; '.join(rejected)}; "
                               f"limit {SETTLED_SPEED_LIMIT})")
        self._t0 = self.station.time
        self._stamp += 1
        self._frames = []
        self._done = False
        if self.record_video:
            self._record_frame()
        return self._observe()

    def build_and_settle(self) -> float:
        """Build the station for ``self.layout``, let its objects settle (e.g. the apple onto the
        fruit in the bowl) before time zero, and return the largest generalised velocity then
        (inf when the simulation diverged). ``reset`` judges layouts by it;
        ``scripts/scan_settling.py`` measures it over many seeds."""
        if self._meshcat is not None:
            self._meshcat.Delete()
        self.station = build_station(config=self.config.station, objects=self.layout.objects, meshcat=self._meshcat)
        self.station.reset()
        self._commands = {}
        for arm in ARM_NAMES:
            state = self.station.arm_state(arm)
            self._commands[arm] = (state.X_TG, state.width)
        if self._meshcat is not None and self.station.meshcat_visualizer is not None:
            self.station.meshcat_visualizer.StartRecording()
        try:
            self.station.advance(self.config.station.settle_time)
        except RuntimeError as exc:
            if "non-finite" not in str(exc):
                raise
            return float("inf")
        return self.station.max_speed()

    def step(self, action: Action) -> tuple[Observation, bool, StepInfo]:
        """Apply ``action`` for one control period (0.1 s)."""
        if self.station is None or self._done:
            raise RuntimeError("call reset() before step(), and again after an episode ends")
        unknown = set(action.arms) - set(ARM_NAMES)
        if unknown:
            raise ValueError(f"unknown arm(s) {sorted(unknown)}; arms: {ARM_NAMES}")
        for arm, cmd in action.arms.items():
            X = np.asarray(cmd.X_TG, dtype=float)
            if X.shape != (4, 4) or not np.all(np.isfinite(X)) or not np.isfinite(cmd.width):
                raise ValueError(f"invalid command for arm {arm!r}: X_TG must be a finite 4x4, width finite")
            self._commands[arm] = (X, float(cmd.width))
        for arm, (X, width) in self._commands.items():
            self.station.set_command(arm, X, width)
        self.station.advance(1.0 / CONTROL_HZ)
        self._stamp += 1
        if self.record_video:
            self._record_frame()
        evaluation = self.task.evaluate(self.station, self.layout)
        timeout = self.time >= self.t_max - 1e-9
        self._done = evaluation.success or timeout
        reason = None
        if self._done and not evaluation.success:
            reason = f"{evaluation.reason} at t_max ({self.t_max:.0f} s)"
        extras = {f"ik_error_{arm}": self.station.controller_status(arm)[1] for arm in ARM_NAMES}
        if self._done:  # the episode's record keeps the last step's extras
            extras["placement_error_m"] = self.task.placement_error(self.station, self.layout)
            extras["layout_attempt"] = self.layout_attempt
        info = StepInfo(time=self.time, success=evaluation.success, done=self._done, failure_reason=reason,
                        extras=extras)
        return self._observe(), self._done, info

    def evaluate(self):
        """The task predicates on the current state (for tests and diagnostics)."""
        return self.task.evaluate(self.station, self.layout)

    def _observe(self) -> Observation:
        st = self.station
        return Observation(
            task=self.task.name,
            time=self.time,
            arms={arm: st.arm_state(arm) for arm in ARM_NAMES},
            camera_specs=dict(self.cameras),
            cameras=LazyCameras(self, self.cameras, self._stamp),
            eval_cameras=self.eval_cameras,
            train_cameras=self.train_cameras,
            privileged=PrivilegedState(object_poses=st.object_poses(), layout=self.layout.params,
                                       snapshot=functools.partial(self._snapshot_at, self._stamp)),
        )

    # ---- state copies (the oracle's look-ahead) ------------------------------------------------
    def _snapshot_at(self, stamp: int) -> EnvSnapshot:
        if stamp != self._stamp:
            raise StaleObservationError("this observation's simulator state is gone: the env has stepped since")
        return self.snapshot()

    def snapshot(self) -> EnvSnapshot:
        """The episode's full state now (simulator, commands, episode clock)."""
        if self.station is None:
            raise RuntimeError("call reset() first")
        return EnvSnapshot(
            task=self.task.name, seed=self.seed, station=self.station.snapshot(),
            commands={arm: (X.copy(), w) for arm, (X, w) in self._commands.items()}, episode_time=self.time,
        )

    def restore(self, snapshot: EnvSnapshot) -> Observation:
        """Continue from ``snapshot`` (taken from this env or another env of the same task and seed).

        Raises:
            ValueError: the snapshot belongs to another task or seed.
        """
        if (snapshot.task, snapshot.seed) != (self.task.name, self.seed):
            raise ValueError(f"snapshot of {snapshot.task} seed {snapshot.seed} cannot be restored into "
                             f"{self.task.name} seed {self.seed}: reset(seed) this env first")
        self.station.restore(snapshot.station)
        self._commands = {arm: (X.copy(), w) for arm, (X, w) in snapshot.commands.items()}
        for arm, (X, width) in self._commands.items():
            self.station.set_command(arm, X, width)
        self._t0 = self.station.time - snapshot.episode_time
        self._stamp += 1
        self._done = False
        return self._observe()

    # ---- recording -----------------------------------------------------------------------------
    def _record_frame(self) -> None:
        frames = [self.station.render(self.cameras[name]).rgb for name in self.eval_cameras]
        self._frames.append(np.concatenate(frames, axis=1))

    def save_video(self, path: str | Path) -> None:
        """Write the evaluation cameras' video (side by side, 10 fps) recorded since ``reset``."""
        if not self._frames:
            raise RuntimeError("no frames recorded: create the env with record_video=True")
        import imageio.v2 as imageio

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
        imageio.mimwrite(tmp, self._frames, fps=self.config.video_fps, macro_block_size=1)
        tmp.replace(path)

    def save_meshcat_html(self, path: str | Path) -> None:
        """Write a self-contained Meshcat replay of the episode (needs ``meshcat=True``)."""
        if self._meshcat is None or self.station is None or self.station.meshcat_visualizer is None:
            raise RuntimeError("create the env with meshcat=True")
        vis = self.station.meshcat_visualizer
        vis.StopRecording()
        vis.PublishRecording()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self._meshcat.StaticHtml())

    def close(self) -> None:
        self.station = None
        self._frames = []


def make_env(task: str, *, record_video: bool = False, meshcat: bool = False,
             config: EnvConfig | None = None, views: str = "heldout") -> Env:
    """Factory used by the rollout runner (one env per worker process)."""
    return Env(task, config=config, record_video=record_video, meshcat=meshcat, views=views)

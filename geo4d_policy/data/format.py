"""On-disk dataset format: one HDF5 file per episode plus an atomically updated ``meta.json``.

A dataset is a directory::

    DIR/meta.json                    DatasetMeta (format version, task, resolution, camera split,
                                     rates, provenance, the list of finished episodes)
    DIR/episodes/episode_<seed>.h5   one file per episode (layout below)
    DIR/normalization.json           action statistics (written by ``datasets.compute_normalization``)

Only episodes listed in ``meta.json`` belong to the dataset. A collector writes an episode file
(temp file + rename, :class:`EpisodeWriter`), then lists it with :func:`append_episode`, which
rewrites ``meta.json`` atomically under a file lock, so parallel collectors may append to one
dataset and a crash leaves either the old or the new ``meta.json``. Files a crash left unlisted
are removed by :func:`prune_unlisted` when a collection resumes.

Episode file layout (``FORMAT_VERSION`` 1); T video frames at 2 Hz, N robot steps at 10 Hz::

    attrs: task, seed, format_version, success, info (JSON string), created
    video_time                      (T,) float64 seconds of the video frames
    cameras/                        attrs: camera_names (index order)
      <name>/rgb                    (T, H, W, 3) uint8
      <name>/depth_mm               (T, H, W) uint16 millimetres, 0 = invalid
      <name>/masks                  (T, H, W) uint8 gripper part bits (``masks.MASK_BITS``)
      <name> attrs: name, index, K (3x3 float64), X_TC (4x4 float64)
    robot/                          attrs: arms (names, in ARM_NAMES order)
      time                          (N,) float64 seconds
      action_X_TG/<arm>             (N, 4, 4) commanded pose of panda_link8 in T
      action_width/<arm>            (N,) commanded gripper width (m)
      X_TG/<arm>                    (N, 4, 4) measured pose of panda_link8 in T
      width/<arm>                   (N,) measured gripper width (m)
      q/<arm>                       (N, 7) joint positions (rad)

The measured state at step i is the one the command at step i was chosen from.

Image datasets are chunked one frame per chunk (random frame access reads one chunk), gzip
level 1 with byte shuffle and a Fletcher-32 checksum (a flipped byte is reported as corruption
instead of read as wrong pixels). Measured on 160 real 128x160 renders of the apple task
(rgb + depth + masks, per-frame random reads with the chunk cache off):

    codec         size      read / frame-dataset
    none          19.7 MB   13 us
    lzf+shuffle    3.1 MB  116 us
    gzip1+shuffle  2.5 MB   86 us   <- chosen: smallest read cost of the compressed codecs
    gzip4+shuffle  2.4 MB  101 us      (h5py's lzf is slower than zlib inflate on these images)
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from geo4d_policy.config import atomic_write_text
from geo4d_policy.data.geometry import decode_depth_mm, encode_depth_mm
from geo4d_policy.data.masks import masks_from_frame
from geo4d_policy.interface import (
    ARM_NAMES,
    Action,
    ArmState,
    CameraFrame,
    CameraIntrinsics,
    CameraSpec,
    canonical_task_name,
)
from geo4d_policy.provenance import PROVENANCE_FILE, code_version

FORMAT_VERSION = 1
"""Version of the on-disk layout; bump on any incompatible change."""

META_FILE = "meta.json"
EPISODES_DIR = "episodes"
NORMALIZATION_FILE = "normalization.json"
ROBOT_HZ = 10.0
VIDEO_HZ = 2.0
N_JOINTS = 7
DEFAULT_CAMERA_NAMES: tuple[str, ...] = tuple(f"cam{i:02d}" for i in range(16))
"""Camera names of the simulator (``sim.cameras.camera_name``): 0..11 train, 12..15 held out."""
DEFAULT_N_TRAIN = 12

_IMAGE_FILTERS: dict[str, Any] = {
    "compression": "gzip", "compression_opts": 1, "shuffle": True, "fletcher32": True,
}


class DatasetError(Exception):
    """A dataset directory or file cannot be used; the message names the path."""


class DatasetFormatError(DatasetError):
    """A dataset or episode written in another format version."""


class DatasetMismatchError(DatasetError):
    """An episode or a ``create_dataset`` call does not match an existing dataset."""


class CorruptEpisodeError(DatasetError):
    """An episode file is unreadable, truncated or inconsistent; ``path`` names it."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"corrupt episode file {self.path}: {reason}")

    def __reduce__(self):  # picklable across processes (collector pools, loader workers)
        return (type(self), (self.path, self.reason))


def _version_error(where: str | os.PathLike[str], found: Any) -> DatasetFormatError:
    return DatasetFormatError(
        f"{where} has dataset format version {found}, but this code reads format version {FORMAT_VERSION}; "
        "re-collect the data or use a matching geo4d-policy version"
    )


# --------------------------------------------------------------------------------------------
# In-memory episode
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CameraRecording:
    """One camera's video of an episode.

    Attributes:
        spec: name, intrinsics, ``X_TC`` (fixed for the episode).
        rgb: (T, H, W, 3) uint8.
        depth: (T, H, W) float32 metres, 0 = invalid.
        masks: (T, H, W) uint8 gripper part bits (:mod:`geo4d_policy.data.masks`).
    """

    spec: CameraSpec
    rgb: np.ndarray
    depth: np.ndarray
    masks: np.ndarray


@dataclasses.dataclass
class RobotTrajectory:
    """Robot commands and measured state at 10 Hz; per-arm dicts keyed by arm name.

    Attributes:
        time: (N,) seconds.
        action_X_TG: arm -> (N, 4, 4) commanded pose of panda_link8 in T.
        action_width: arm -> (N,) commanded width (m).
        X_TG: arm -> (N, 4, 4) measured pose.
        width: arm -> (N,) measured width (m).
        q: arm -> (N, 7) joint positions.
    """

    time: np.ndarray
    action_X_TG: dict[str, np.ndarray]
    action_width: dict[str, np.ndarray]
    X_TG: dict[str, np.ndarray]
    width: dict[str, np.ndarray]
    q: dict[str, np.ndarray]

    @property
    def arms(self) -> tuple[str, ...]:
        return tuple(self.action_X_TG)

    def __len__(self) -> int:
        return len(self.time)


@dataclasses.dataclass
class EpisodeData:
    """A whole episode in memory (what :func:`write_episode` writes and ``read`` returns).

    Attributes:
        task: CamelCase task name.
        seed: the episode's seed (reproduces layout and cameras).
        success: whether the episode ended successfully.
        video_time: (T,) seconds of the video frames.
        cameras: the cameras in index order (train views first).
        robot: 10 Hz commands and state.
        info: free-form JSON-serialisable extras (duration, failure reason, ...).
    """

    task: str
    seed: int
    success: bool
    video_time: np.ndarray
    cameras: tuple[CameraRecording, ...]
    robot: RobotTrajectory
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


class EpisodeWriter:
    """Stream one episode into ``path`` (temp file, atomically renamed by :meth:`finish`).

    Frames go to disk as they arrive, so memory stays flat however long the episode. Leaving the
    ``with`` block without :meth:`finish` (an exception, a failed rollout) removes the temp file
    and leaves ``path`` untouched. Example::

        with EpisodeWriter(path, task=task, seed=seed, cameras=specs) as w:
            for each 10 Hz step:       w.add_robot_step(obs.time, action=a, arms=obs.arms)
            for each 2 Hz video frame: w.add_camera_frames(obs.time, {n: obs.cameras[n] for n in names})
            w.finish(success=info.success, info={"failure_reason": info.failure_reason})
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        task: str,
        seed: int,
        cameras: Sequence[CameraSpec],
        arms: Sequence[str] = ARM_NAMES,
    ) -> None:
        self.path = Path(path)
        self.task = canonical_task_name(task)
        self.seed = int(seed)
        self.cameras = tuple(cameras)
        self.arms = tuple(arms)
        names = [c.name for c in self.cameras]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"cameras must be non-empty with unique names, got {names}")
        sizes = {(c.intrinsics.height, c.intrinsics.width) for c in self.cameras}
        if len(sizes) != 1:
            raise ValueError(f"all cameras must share one resolution, got {sorted(sizes)}")
        self.resolution: tuple[int, int] = sizes.pop()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._file: h5py.File | None = h5py.File(self._tmp, "w")
        self._n_frames = 0
        self._video_time: list[float] = []
        self._robot: dict[str, list[Any]] = {"time": []}
        for key in ("action_X_TG", "action_width", "X_TG", "width", "q"):
            for arm in self.arms:
                self._robot[f"{key}/{arm}"] = []
        try:
            self._init_file()
        except BaseException:
            self.abort()
            raise

    def _init_file(self) -> None:
        f = self._file
        assert f is not None
        h, w = self.resolution
        cams = f.create_group("cameras")
        cams.attrs["camera_names"] = [c.name for c in self.cameras]
        for i, spec in enumerate(self.cameras):
            X_TC = np.asarray(spec.X_TC, dtype=np.float64)
            if X_TC.shape != (4, 4) or not np.isfinite(X_TC).all():
                raise ValueError(f"camera {spec.name!r}: X_TC must be a finite 4x4")
            g = cams.create_group(spec.name)
            g.attrs["name"] = spec.name
            g.attrs["index"] = i
            g.attrs["K"] = spec.intrinsics.K
            g.attrs["X_TC"] = X_TC
            for key, shape, dtype in (("rgb", (h, w, 3), np.uint8), ("depth_mm", (h, w), np.uint16),
                                      ("masks", (h, w), np.uint8)):
                g.create_dataset(key, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                 chunks=(1, *shape), **_IMAGE_FILTERS)

    @property
    def n_frames(self) -> int:
        return self._n_frames

    def add_frame(
        self,
        time: float,
        *,
        rgb: Mapping[str, np.ndarray],
        depth: Mapping[str, np.ndarray],
        masks: Mapping[str, np.ndarray],
    ) -> None:
        """Append one video frame of every camera.

        Args:
            time: episode time of the frame (s), increasing.
            rgb: camera name -> (H, W, 3) uint8.
            depth: camera name -> (H, W) float depth in metres (0 = invalid).
            masks: camera name -> (H, W) uint8 packed part bits (:func:`masks.pack_masks`).
        """
        f = self._require_open()
        if self._video_time and not time > self._video_time[-1]:
            raise ValueError(f"video frame times must increase: {time} after {self._video_time[-1]}")
        h, w = self.resolution
        names = [c.name for c in self.cameras]
        for what, data in (("rgb", rgb), ("depth", depth), ("masks", masks)):
            missing = set(names) - set(data)
            if missing:
                raise ValueError(f"add_frame: {what} missing for camera(s) {sorted(missing)}")
        for name in names:
            r, d, m = np.asarray(rgb[name]), np.asarray(depth[name]), np.asarray(masks[name])
            if r.shape != (h, w, 3) or r.dtype != np.uint8:
                raise ValueError(f"camera {name!r}: rgb must be ({h}, {w}, 3) uint8, got {r.shape} {r.dtype}")
            if d.shape != (h, w) or not np.issubdtype(d.dtype, np.floating):
                raise ValueError(f"camera {name!r}: depth must be ({h}, {w}) float metres, "
                                 f"got {d.shape} {d.dtype}")
            if m.shape != (h, w) or m.dtype != np.uint8:
                raise ValueError(f"camera {name!r}: masks must be ({h}, {w}) uint8 bits, "
                                 f"got {m.shape} {m.dtype}")
            g = f["cameras"][name]
            for key, value in (("rgb", r), ("depth_mm", encode_depth_mm(d)), ("masks", m)):
                ds = g[key]
                ds.resize(self._n_frames + 1, axis=0)
                ds[self._n_frames] = value
        self._video_time.append(float(time))
        self._n_frames += 1

    def add_camera_frames(self, time: float, frames: Mapping[str, CameraFrame]) -> None:
        """Append one video frame from rendered :class:`CameraFrame` s (masks by body name)."""
        self.add_frame(
            time,
            rgb={n: fr.rgb for n, fr in frames.items()},
            depth={n: fr.depth for n, fr in frames.items()},
            masks={n: masks_from_frame(fr, arms=self.arms) for n, fr in frames.items()},
        )

    def add_robot_step(self, time: float, *, action: Action, arms: Mapping[str, ArmState]) -> None:
        """Append one 10 Hz step: the command issued at ``time`` and the state it was chosen from."""
        self._require_open()
        if self._robot["time"] and not time > self._robot["time"][-1]:
            raise ValueError(f"robot step times must increase: {time} after {self._robot['time'][-1]}")
        for arm in self.arms:
            if arm not in action.arms or arm not in arms:
                raise ValueError(f"add_robot_step: arm {arm!r} missing from the action or the state")
            cmd, st = action.arms[arm], arms[arm]
            q = np.asarray(st.q, dtype=np.float64)
            if q.shape != (N_JOINTS,):
                raise ValueError(f"arm {arm!r}: q must have {N_JOINTS} entries, got {q.shape}")
            self._robot[f"action_X_TG/{arm}"].append(np.asarray(cmd.X_TG, dtype=np.float64))
            self._robot[f"action_width/{arm}"].append(float(cmd.width))
            self._robot[f"X_TG/{arm}"].append(np.asarray(st.X_TG, dtype=np.float64))
            self._robot[f"width/{arm}"].append(float(st.width))
            self._robot[f"q/{arm}"].append(q)
        self._robot["time"].append(float(time))

    def set_robot_trajectory(self, robot: RobotTrajectory) -> None:
        """Set the whole 10 Hz trajectory at once (instead of :meth:`add_robot_step`)."""
        self._require_open()
        if self._robot["time"]:
            raise RuntimeError("robot steps were already added")
        if set(robot.arms) != set(self.arms):
            raise ValueError(f"trajectory has arms {robot.arms}, writer expects {self.arms}")
        self._robot["time"] = list(np.asarray(robot.time, dtype=np.float64))
        for key in ("action_X_TG", "action_width", "X_TG", "width", "q"):
            for arm in self.arms:
                self._robot[f"{key}/{arm}"] = list(np.asarray(getattr(robot, key)[arm], dtype=np.float64))

    def finish(self, *, success: bool, info: Mapping[str, Any] | None = None) -> Path:
        """Write the robot data and attributes, close, and rename onto ``path``.

        Returns:
            The final path.
        """
        f = self._require_open()
        if self._n_frames == 0:
            raise ValueError("an episode needs at least one video frame")
        n = len(self._robot["time"])
        if n == 0:
            raise ValueError("an episode needs at least one robot step")
        expected = {"action_X_TG": (4, 4), "action_width": (), "X_TG": (4, 4), "width": (), "q": (N_JOINTS,)}
        robot = f.create_group("robot")
        robot.attrs["arms"] = list(self.arms)
        robot.create_dataset("time", data=np.asarray(self._robot["time"], dtype=np.float64))
        for key, shape in expected.items():
            grp = robot.create_group(key)
            for arm in self.arms:
                arr = np.asarray(self._robot[f"{key}/{arm}"], dtype=np.float64).reshape(-1, *shape)
                if len(arr) != n:
                    raise ValueError(f"robot/{key}/{arm} has {len(arr)} steps, time has {n}")
                if not np.isfinite(arr).all():
                    raise ValueError(f"robot/{key}/{arm} has non-finite values")
                grp.create_dataset(arm, data=arr)
        f.create_dataset("video_time", data=np.asarray(self._video_time, dtype=np.float64))
        f.attrs["task"] = self.task
        f.attrs["seed"] = self.seed
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["success"] = bool(success)
        f.attrs["info"] = json.dumps(dict(info or {}), default=str)
        f.attrs["created"] = _now()
        f.close()
        self._file = None
        with open(self._tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Discard the episode (close and delete the temp file)."""
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()

    def _require_open(self) -> h5py.File:
        if self._file is None:
            raise RuntimeError(f"episode writer for {self.path} is already finished or aborted")
        return self._file

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self.abort()


def write_episode(path: str | os.PathLike[str], episode: EpisodeData) -> Path:
    """Write a whole in-memory episode to ``path`` atomically.

    Returns:
        The final path.
    """
    T = len(episode.video_time)
    for cam in episode.cameras:
        for what in ("rgb", "depth", "masks"):
            if len(getattr(cam, what)) != T:
                raise ValueError(f"camera {cam.spec.name!r}: {what} has {len(getattr(cam, what))} frames, "
                                 f"video_time has {T}")
    with EpisodeWriter(path, task=episode.task, seed=episode.seed, cameras=[c.spec for c in episode.cameras],
                       arms=episode.robot.arms) as w:
        for t in range(T):
            w.add_frame(
                float(episode.video_time[t]),
                rgb={c.spec.name: c.rgb[t] for c in episode.cameras},
                depth={c.spec.name: c.depth[t] for c in episode.cameras},
                masks={c.spec.name: c.masks[t] for c in episode.cameras},
            )
        w.set_robot_trajectory(episode.robot)
        return w.finish(success=episode.success, info=episode.info)


# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------

FrameIndex = int | slice | Sequence[int] | np.ndarray


class EpisodeReader:
    """Lazy random access to one episode file; only the frames asked for are read.

    Attribute access (task, cameras, ...) reads small metadata; :meth:`rgb`, :meth:`depth` and
    :meth:`masks` read single frames, slices or arbitrary index lists (repeats allowed, any
    order). Any HDF5 failure is raised as :class:`CorruptEpisodeError` naming the file.
    Not fork-safe: open readers inside the process (DataLoader worker) that uses them.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CorruptEpisodeError(self.path, "file not found")
        try:
            self._file: h5py.File | None = h5py.File(self.path, "r")
        except Exception as e:  # h5py raises OSError subclasses with unhelpful texts
            raise CorruptEpisodeError(self.path, f"cannot open as HDF5 ({e})") from None
        try:
            attrs = self._file.attrs
            version = attrs.get("format_version")
            if version is None:
                raise CorruptEpisodeError(self.path, "no format_version attribute")
            if int(version) != FORMAT_VERSION:
                raise _version_error(self.path, int(version))
            self.format_version = int(version)
            self.task = str(attrs["task"])
            self.seed = int(attrs["seed"])
            self.success = bool(attrs["success"])
            self.info: dict[str, Any] = json.loads(attrs.get("info", "{}"))
            names = self._file["cameras"].attrs["camera_names"]
            self.camera_names: tuple[str, ...] = tuple(str(n) for n in names)
            self.n_frames = int(self._file["video_time"].shape[0])
            first = self._file["cameras"][self.camera_names[0]]["rgb"]
            self.resolution: tuple[int, int] = (int(first.shape[1]), int(first.shape[2]))
            self.arms: tuple[str, ...] = tuple(str(a) for a in self._file["robot"].attrs["arms"])
            self.n_steps = int(self._file["robot/time"].shape[0])
        except DatasetError:
            self.close()
            raise
        except Exception as e:
            self.close()
            raise CorruptEpisodeError(
                self.path, f"missing or unreadable metadata ({type(e).__name__}: {e})"
            ) from None
        self._robot: RobotTrajectory | None = None
        self._attr_cache: dict[tuple[str, str], np.ndarray] = {}

    # ---- metadata ------------------------------------------------------------------------------
    @property
    def file(self) -> h5py.File:
        if self._file is None:
            raise RuntimeError(f"{self.path} is closed")
        return self._file

    @property
    def video_time(self) -> np.ndarray:
        return self._read("video_time", slice(None))

    def camera_spec(self, name: str) -> CameraSpec:
        """Name, intrinsics (from the stored K and the image size) and ``X_TC`` of a camera."""
        K = self.K(name)
        h, w = self.resolution
        intr = CameraIntrinsics(w, h, float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
        return CameraSpec(name, intr, self.X_TC(name))

    def K(self, name: str) -> np.ndarray:  # noqa: N802 - the standard symbol
        """3x3 intrinsics of camera ``name`` (a copy; cached)."""
        return self._camera_attr(name, "K").copy()

    def X_TC(self, name: str) -> np.ndarray:  # noqa: N802 - Drake-style name
        """Pose of camera ``name`` in the task frame (a copy; cached)."""
        return self._camera_attr(name, "X_TC").copy()

    def _camera_attr(self, name: str, key: str) -> np.ndarray:
        # Attribute reads cost ~0.1 ms each through h5py; loaders ask for them every sample.
        value = self._attr_cache.get((name, key))
        if value is None:
            try:
                value = np.asarray(self._group(name).attrs[key], dtype=np.float64)
            except KeyError:
                raise CorruptEpisodeError(self.path, f"camera {name!r} has no {key} attribute") from None
            self._attr_cache[(name, key)] = value
        return value

    # ---- frames --------------------------------------------------------------------------------
    def rgb(self, name: str, index: FrameIndex) -> np.ndarray:
        """(…, H, W, 3) uint8 frames of camera ``name``."""
        return self._read(f"cameras/{name}/rgb", index)

    def depth_mm(self, name: str, index: FrameIndex) -> np.ndarray:
        """(…, H, W) uint16 millimetres as stored."""
        return self._read(f"cameras/{name}/depth_mm", index)

    def depth(self, name: str, index: FrameIndex) -> np.ndarray:
        """(…, H, W) float32 metres (0 = invalid)."""
        return decode_depth_mm(self.depth_mm(name, index))

    def masks(self, name: str, index: FrameIndex) -> np.ndarray:
        """(…, H, W) uint8 packed gripper part bits."""
        return self._read(f"cameras/{name}/masks", index)

    def robot(self) -> RobotTrajectory:
        """The whole 10 Hz trajectory (small; cached)."""
        if self._robot is None:
            def per_arm(key: str) -> dict[str, np.ndarray]:
                return {arm: self._read(f"robot/{key}/{arm}", slice(None)) for arm in self.arms}

            self._robot = RobotTrajectory(
                time=self._read("robot/time", slice(None)),
                action_X_TG=per_arm("action_X_TG"),
                action_width=per_arm("action_width"),
                X_TG=per_arm("X_TG"),
                width=per_arm("width"),
                q=per_arm("q"),
            )
        return self._robot

    def read(self) -> EpisodeData:
        """Load the whole episode into memory."""
        every = slice(None)
        cams = tuple(
            CameraRecording(self.camera_spec(n), self.rgb(n, every), self.depth(n, every),
                            self.masks(n, every))
            for n in self.camera_names
        )
        return EpisodeData(self.task, self.seed, self.success, self.video_time, cams, self.robot(),
                           dict(self.info))

    def _group(self, name: str) -> h5py.Group:
        if name not in self.camera_names:
            raise KeyError(f"{self.path}: no camera {name!r}; cameras: {list(self.camera_names)}")
        try:
            return self.file["cameras"][name]
        except Exception as e:
            raise CorruptEpisodeError(self.path, f"camera group {name!r} unreadable ({e})") from None

    def _read(self, key: str, index: FrameIndex) -> np.ndarray:
        try:
            ds = self.file[key]
            if isinstance(index, (int, np.integer, slice)):
                return ds[index]
            idx = np.asarray(index, dtype=np.int64)
            n = ds.shape[0]
            if idx.size and (idx.min() < -n or idx.max() >= n):
                raise IndexError(f"frame index out of range 0..{n - 1}: {idx.tolist()}")
            idx = np.where(idx < 0, idx + n, idx)
            # Read each needed frame once, then gather. Not through an h5py index list: its
            # point selection took ~25 ms for 2 frames against ~0.2 ms for two integer reads
            # (128x160 RGB, one chunk per frame), the Diffusion Policy loader's main cost.
            uniq, inverse = np.unique(idx, return_inverse=True)
            if len(uniq) and uniq[-1] - uniq[0] + 1 == len(uniq):
                block = ds[int(uniq[0]) : int(uniq[-1]) + 1]
            elif len(uniq):
                block = np.stack([ds[int(i)] for i in uniq])
            else:
                block = ds[0:0]
            return block[inverse.reshape(idx.shape)]
        except (IndexError, KeyError):
            raise
        except Exception as e:
            raise CorruptEpisodeError(self.path, f"cannot read {key} ({type(e).__name__}: {e})") from None

    def close(self) -> None:
        if getattr(self, "_file", None) is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None

    def __enter__(self) -> EpisodeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def read_episode(path: str | os.PathLike[str]) -> EpisodeData:
    """Load a whole episode file into memory."""
    with EpisodeReader(path) as r:
        return r.read()


# --------------------------------------------------------------------------------------------
# Dataset metadata
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EpisodeEntry:
    """One finished episode as listed in ``meta.json``."""

    seed: int
    file: str
    n_frames: int
    n_steps: int
    success: bool


@dataclasses.dataclass
class DatasetMeta:
    """Contents of ``meta.json``.

    Attributes:
        task: CamelCase task name (one task per dataset).
        resolution: (H, W) of every image.
        camera_names: the cameras of every episode, in index order.
        train_indices: indices of the training views (0..11 for the simulator).
        heldout_indices: indices of the held-out views (12..15), never used for training.
        robot_hz: rate of the robot data (10 Hz).
        video_hz: rate of the video frames (2 Hz).
        provenance: how the dataset was made: ``command``, ``git_commit`` (or None), ``created``.
        episodes: finished episodes, sorted by seed.
        format_version: on-disk layout version.
    """

    task: str
    resolution: tuple[int, int]
    camera_names: tuple[str, ...] = DEFAULT_CAMERA_NAMES
    train_indices: tuple[int, ...] = tuple(range(DEFAULT_N_TRAIN))
    heldout_indices: tuple[int, ...] = tuple(range(DEFAULT_N_TRAIN, len(DEFAULT_CAMERA_NAMES)))
    robot_hz: float = ROBOT_HZ
    video_hz: float = VIDEO_HZ
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)
    episodes: list[EpisodeEntry] = dataclasses.field(default_factory=list)
    format_version: int = FORMAT_VERSION

    @property
    def train_cameras(self) -> tuple[str, ...]:
        return tuple(self.camera_names[i] for i in self.train_indices)

    @property
    def heldout_cameras(self) -> tuple[str, ...]:
        return tuple(self.camera_names[i] for i in self.heldout_indices)

    @property
    def n_successes(self) -> int:
        return sum(e.success for e in self.episodes)

    @property
    def n_frames(self) -> int:
        return sum(e.n_frames for e in self.episodes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "task": self.task,
            "resolution": list(self.resolution),
            "cameras": {
                "names": list(self.camera_names),
                "train": list(self.train_indices),
                "heldout": list(self.heldout_indices),
            },
            "rates_hz": {"robot": self.robot_hz, "video": self.video_hz},
            "provenance": dict(self.provenance),
            "episodes": [dataclasses.asdict(e) for e in self.episodes],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "meta.json") -> DatasetMeta:
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise _version_error(where, version)
        try:
            cams = d["cameras"]
            return cls(
                task=str(d["task"]),
                resolution=(int(d["resolution"][0]), int(d["resolution"][1])),
                camera_names=tuple(str(n) for n in cams["names"]),
                train_indices=tuple(int(i) for i in cams["train"]),
                heldout_indices=tuple(int(i) for i in cams["heldout"]),
                robot_hz=float(d["rates_hz"]["robot"]),
                video_hz=float(d["rates_hz"]["video"]),
                provenance=dict(d.get("provenance", {})),
                episodes=[EpisodeEntry(int(e["seed"]), str(e["file"]), int(e["n_frames"]), int(e["n_steps"]),
                                       bool(e["success"])) for e in d["episodes"]],
                format_version=int(version),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise DatasetError(f"{where}: malformed dataset metadata ({type(e).__name__}: {e})") from None


def episode_filename(seed: int) -> str:
    """Relative path of the episode file of ``seed`` inside a dataset."""
    return f"{EPISODES_DIR}/episode_{int(seed)}.h5"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def load_meta(root: str | os.PathLike[str]) -> DatasetMeta:
    """Read and validate ``root/meta.json``.

    Raises:
        DatasetError: no dataset there, or malformed metadata.
        DatasetFormatError: written in another format version (the message names both).
    """
    path = Path(root) / META_FILE
    if not path.is_file():
        raise DatasetError(f"no dataset at {Path(root)} ({META_FILE} not found)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: unreadable ({e})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: top level must be an object")
    return DatasetMeta.from_dict(data, where=str(path))


def save_meta(root: str | os.PathLike[str], meta: DatasetMeta) -> None:
    """Write ``meta.json`` atomically (temp file + rename)."""
    atomic_write_text(Path(root) / META_FILE, json.dumps(meta.to_dict(), indent=1) + "\n")


@contextlib.contextmanager
def _meta_lock(root: Path) -> Iterator[None]:
    # Serialises read-modify-write of meta.json between parallel collector processes.
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: single-writer only
        yield
        return
    with open(root / ".meta.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def create_dataset(
    root: str | os.PathLike[str],
    *,
    task: str,
    resolution: tuple[int, int],
    camera_names: Sequence[str] = DEFAULT_CAMERA_NAMES,
    n_train: int = DEFAULT_N_TRAIN,
    robot_hz: float = ROBOT_HZ,
    video_hz: float = VIDEO_HZ,
    command: str | None = None,
) -> DatasetMeta:
    """Create a dataset directory, or open it to resume if it holds the same kind of dataset.

    Args:
        root: the dataset directory (created if missing; must be empty if it has no meta.json).
        task: task name (CamelCase or snake_case).
        resolution: (H, W) of the images.
        camera_names: cameras of every episode in index order; the first ``n_train`` are
            training views, the rest held out.
        n_train: number of training views.
        robot_hz, video_hz: data rates.
        command: the command line that makes the dataset (default: this process's argv).

    Returns:
        The dataset's metadata (the existing one when resuming).

    Raises:
        DatasetMismatchError: ``root`` holds a dataset of another task, resolution, camera
            split or rate, or a non-empty directory that is not a dataset.
        DatasetFormatError: ``root`` holds a dataset of another format version.
    """
    root = Path(root)
    task = canonical_task_name(task)
    resolution = (int(resolution[0]), int(resolution[1]))
    camera_names = tuple(camera_names)
    if not 0 < n_train < len(camera_names):
        raise ValueError(f"need 0 < n_train < {len(camera_names)} cameras, got {n_train}")
    wanted = DatasetMeta(
        task=task,
        resolution=resolution,
        camera_names=camera_names,
        train_indices=tuple(range(n_train)),
        heldout_indices=tuple(range(n_train, len(camera_names))),
        robot_hz=float(robot_hz),
        video_hz=float(video_hz),
        provenance={"command": command if command is not None else " ".join(sys.argv),
                    "git_commit": code_version()["commit"], "created": _now()},
    )
    if not (root / META_FILE).exists() and root.exists():
        # Only what an interrupted create_dataset leaves behind may already be there.
        allowed = (EPISODES_DIR, ".meta.lock", PROVENANCE_FILE)  # geo4d-collect writes its provenance first
        leftovers = [p.name for p in root.iterdir()
                     if p.name not in allowed and not p.name.startswith(f".{META_FILE}.")] \
            if root.is_dir() else [root.name]
        if leftovers:
            raise DatasetMismatchError(f"{root} exists and is not an empty directory or a dataset "
                                       f"(no {META_FILE}); refusing to write into it")
    (root / EPISODES_DIR).mkdir(parents=True, exist_ok=True)
    with _meta_lock(root):  # parallel collectors may create the same dataset at once
        if not (root / META_FILE).exists():
            save_meta(root, wanted)
            return wanted
        meta = load_meta(root)
    diffs = [
        f"{name}: existing {a!r}, requested {b!r}"
        for name, a, b in (
            ("task", meta.task, wanted.task),
            ("resolution", meta.resolution, wanted.resolution),
            ("cameras", meta.camera_names, wanted.camera_names),
            ("train split", meta.train_indices, wanted.train_indices),
            ("rates", (meta.robot_hz, meta.video_hz), (wanted.robot_hz, wanted.video_hz)),
        )
        if a != b
    ]
    if diffs:
        raise DatasetMismatchError(f"{root} already holds another dataset ({'; '.join(diffs)}); "
                                   "choose another directory")
    return meta


def append_episode(root: str | os.PathLike[str], seed: int) -> DatasetMeta:
    """List the finished episode file of ``seed`` in ``meta.json`` (atomically, under a lock).

    The file ``root/episodes/episode_<seed>.h5`` must exist and match the dataset's task,
    resolution and cameras. An entry for the same seed is replaced (re-collection).

    Returns:
        The updated metadata.

    Raises:
        CorruptEpisodeError: the episode file is unreadable.
        DatasetMismatchError: it belongs to another task, resolution or camera set.
    """
    root = Path(root)
    rel = episode_filename(seed)
    with EpisodeReader(root / rel) as r:
        meta = load_meta(root)
        problems = []
        if r.task != meta.task:
            problems.append(f"task {r.task!r} != {meta.task!r}")
        if r.seed != int(seed):
            problems.append(f"seed attribute {r.seed} != {seed}")
        if r.resolution != meta.resolution:
            problems.append(f"resolution {r.resolution} != {meta.resolution}")
        if r.camera_names != meta.camera_names:
            problems.append(f"cameras {list(r.camera_names)} != {list(meta.camera_names)}")
        if problems:
            raise DatasetMismatchError(f"{root / rel} does not match the dataset at {root}: "
                                       + "; ".join(problems))
        entry = EpisodeEntry(int(seed), rel, r.n_frames, r.n_steps, r.success)
    with _meta_lock(root):
        meta = load_meta(root)  # re-read under the lock: another process may have appended
        others = [e for e in meta.episodes if e.seed != entry.seed]
        meta.episodes = sorted([*others, entry], key=lambda e: e.seed)
        save_meta(root, meta)
    return meta


def completed_seeds(root: str | os.PathLike[str]) -> set[int]:
    """Seeds of the episodes listed in ``meta.json`` (what a resumed collection skips)."""
    return {e.seed for e in load_meta(root).episodes}


def prune_unlisted(root: str | os.PathLike[str]) -> list[Path]:
    """Delete episode files and temp files not listed in ``meta.json`` (left by a crash).

    Call it only when no writer is running on this dataset (at the start of a resumed
    collection), since an in-flight episode is unlisted until :func:`append_episode`.

    Returns:
        The removed paths.
    """
    root = Path(root)
    listed = {root / e.file for e in load_meta(root).episodes}
    removed = []
    ep_dir = root / EPISODES_DIR
    if ep_dir.is_dir():
        for p in sorted(ep_dir.iterdir()):
            if p.is_file() and p not in listed and (p.suffix == ".h5" or p.name.endswith(".tmp")):
                p.unlink()
                removed.append(p)
    return removed

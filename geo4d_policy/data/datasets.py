"""torch datasets over the on-disk format: 4D-generator clips and Diffusion Policy samples.

* :class:`GeneratorClipDataset`: two views (n, m) of one episode, the conditioning frame t and
  ``n_future`` future 2 Hz frames, RGB and pointmaps (``X^n``, ``X^m`` for conditioning,
  ``X^n``, ``X^{m->n}`` as targets), normalised with :class:`PointmapNormalization`.
* :class:`PolicyDataset`: two training views and the measured state at ``n_obs_steps``
  observation steps whose frames were taken at those steps' own times, and the next
  ``horizon`` actions as 20-dim vectors (:mod:`geo4d_policy.data.actions`).
* :func:`compute_normalization`: min/max action and state statistics, cached in
  ``root/normalization.json``.

Randomness: the camera pair of sample ``i`` is drawn from ``default_rng([seed, epoch, i])``, so
a sample is reproducible and differs between epochs once the trainer calls
:meth:`set_epoch` before building each epoch's iterator (with ``persistent_workers=True`` the
workers keep the epoch they were created with).

Files are opened lazily inside the process that reads them (DataLoader workers each hold their
own small LRU of open files): h5py handles must not cross ``fork``.

Corrupt episode files: with ``on_error="skip"`` a file that fails to open (checked at
construction) or to read (at access) is dropped with a :class:`CorruptEpisodeWarning` naming it,
and the sample is replaced by one from another episode; with ``on_error="raise"`` a
:class:`~geo4d_policy.data.format.CorruptEpisodeError` naming the file is raised.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from geo4d_policy.config import atomic_write_text
from geo4d_policy.data.actions import action_layout, held_dims, normalize_minmax, poses_to_vectors
from geo4d_policy.data.format import (
    NORMALIZATION_FILE,
    CorruptEpisodeError,
    DatasetError,
    DatasetMeta,
    EpisodeEntry,
    EpisodeReader,
    load_meta,
)
from geo4d_policy.data.geometry import PointmapNormalization, pointmap_chw, relative_camera_transform
from geo4d_policy.data.masks import ALL_PARTS_MASK
from geo4d_policy.interface import ARM_NAMES

OnError = Literal["skip", "raise"]
Split = Literal["train", "heldout"]


class CorruptEpisodeWarning(UserWarning):
    """An episode file was skipped because it is unreadable."""


class _Episodes:
    """Per-process access to a dataset's episodes: header checks, an LRU of open readers,
    and the skip/raise policy for corrupt files."""

    def __init__(self, root: Path, meta: DatasetMeta, *, on_error: OnError, max_open: int) -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.root = root
        self.meta = meta
        self.on_error = on_error
        self.max_open = max(1, max_open)
        self.bad: set[int] = set()
        self._open: collections.OrderedDict[int, EpisodeReader] = collections.OrderedDict()
        self._pid = os.getpid()
        self.entries: list[EpisodeEntry] = []
        for entry in meta.episodes:
            try:
                with EpisodeReader(root / entry.file) as r:
                    problems = []
                    if r.n_frames != entry.n_frames or r.n_steps != entry.n_steps:
                        problems.append(f"{r.n_frames} frames / {r.n_steps} steps, meta.json lists "
                                        f"{entry.n_frames} / {entry.n_steps}")
                    if r.resolution != meta.resolution:
                        problems.append(f"resolution {r.resolution} != {meta.resolution}")
                    if r.camera_names != meta.camera_names:
                        problems.append("camera names differ from meta.json")
                    if problems:
                        raise CorruptEpisodeError(root / entry.file, "; ".join(problems))
            except CorruptEpisodeError as e:
                self.report(e)
                continue
            self.entries.append(entry)
        if not self.entries:
            raise DatasetError(f"{root}: no readable episodes ({len(meta.episodes)} listed)")

    def report(self, error: CorruptEpisodeError) -> None:
        if self.on_error == "raise":
            raise error
        warnings.warn(f"skipping {error}", CorruptEpisodeWarning, stacklevel=3)

    def reader(self, k: int) -> EpisodeReader:
        if os.getpid() != self._pid:
            # Forked into a worker: never use the parent's HDF5 handles, and never close them
            # here either (keep them referenced, untouched, until the worker exits).
            self._inherited = list(self._open.values())
            self._open = collections.OrderedDict()
            self._pid = os.getpid()
        r = self._open.get(k)
        if r is None:
            r = EpisodeReader(self.root / self.entries[k].file)
            self._open[k] = r
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)[1].close()
        else:
            self._open.move_to_end(k)
        return r

    def drop(self, k: int, error: CorruptEpisodeError) -> None:
        self.report(error)
        self.bad.add(k)
        r = self._open.pop(k, None)
        if r is not None:
            r.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = collections.OrderedDict()  # spawn-pickling: handles stay behind
        state.pop("_inherited", None)
        return state


def _split_cameras(meta: DatasetMeta, split: str) -> tuple[int, ...]:
    if split == "train":
        cams = meta.train_indices
    elif split == "heldout":
        cams = meta.heldout_indices
    else:
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if len(cams) < 2:
        raise DatasetError(f"the {split} split has {len(cams)} camera(s); two distinct views are needed")
    return tuple(cams)


def _nearest_index(n_out: int, n_in: int) -> np.ndarray:
    # Source pixel whose centre is nearest to each target pixel centre (pixel-centre convention).
    return np.minimum(np.floor((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def _scale_K(K: np.ndarray, src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    sy, sx = dst[0] / src[0], dst[1] / src[1]
    K = K.copy()
    K[0, 0] *= sx
    K[1, 1] *= sy
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return K


def rgb_to_tensor(rgb: np.ndarray, resolution: tuple[int, int] | None) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H', W') float32 in [-1, 1]."""
    # Transpose while still uint8 (4x less memory traffic than after the float conversion).
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(rgb, -1, -3))).float().div_(127.5).sub_(1.0)
    if resolution is not None and tuple(x.shape[-2:]) != tuple(resolution):
        lead = x.shape[:-3]
        x = F.interpolate(x.reshape(-1, *x.shape[-3:]), size=tuple(resolution), mode="bilinear",
                          align_corners=False, antialias=True).clamp_(-1.0, 1.0)
        x = x.reshape(*lead, *x.shape[-3:])
    return x


class _BaseDataset(Dataset):
    def __init__(self, root: str | os.PathLike[str], *, on_error: OnError, seed: int,
                 resolution: tuple[int, int] | None, max_open_files: int) -> None:
        self.root = Path(root)
        self.meta = load_meta(self.root)
        self.on_error = on_error
        self.seed = int(seed)
        self.epoch = 0
        self.src_resolution = self.meta.resolution
        self.resolution: tuple[int, int] = (
            tuple(resolution) if resolution is not None else self.meta.resolution
        )
        self._episodes = _Episodes(self.root, self.meta, on_error=on_error, max_open=max_open_files)
        self._index: list[tuple[int, int]] = []

    def set_epoch(self, epoch: int) -> None:
        """Change the per-sample camera draws (call before creating each epoch's iterator)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        i %= len(self)
        # On a corrupt file, walk to samples of other episodes (deterministically) until one reads.
        for attempt in range(len(self)):
            j = (i + attempt * 7919) % len(self) if attempt else i
            k, t = self._index[j]
            if k in self._episodes.bad:
                continue
            try:
                return self._load(j, k, t)
            except CorruptEpisodeError as e:
                self._episodes.drop(k, e)
        raise DatasetError(f"{self.root}: every episode failed to read")

    def _load(self, i: int, k: int, t: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, i])

    def _resize_nearest(self, x: np.ndarray) -> np.ndarray:
        """Nearest-neighbour resize of the trailing (H, W) axes (channel-first layouts)."""
        if self.resolution == self.src_resolution:
            return x
        rows = _nearest_index(self.resolution[0], self.src_resolution[0])
        cols = _nearest_index(self.resolution[1], self.src_resolution[1])
        return x[..., rows[:, None], cols[None, :]]


class GeneratorClipDataset(_BaseDataset):
    """Two-view RGB + pointmap clips for the 4D generator.

    Sample ``i`` is a start frame ``t`` of one episode (every frame with at least one real
    future frame, i.e. ``t <= T - 1 - video_stride``) and a pair of distinct cameras ``(n, m)``
    drawn from the split; view n is always first. Future frames are ``t + s, ..., t + F s``
    (``s = video_stride``, in stored 2 Hz frames); those beyond the episode's last frame repeat
    the last frame (the scene is at rest once an episode has ended), so every clip has F frames.

    Returned dict (float32 unless noted; H, W = ``resolution``):
        rgb_cond (2, 3, H, W) in [-1, 1]; rgb (2, F, 3, H, W) future frames.
        pm_cond (2, 3, H, W): ``X^n_t`` in n's frame, ``X^m_t`` in m's own frame.
        pm (2, F, 3, H, W): targets ``X^n`` (n's frame) and ``X^{m->n}`` (m's pixels, n's frame).
            Pointmaps are normalised by ``normalization``; invalid pixels hold 0.
        valid_cond (2, H, W), valid (2, F, H, W): bool depth validity.
        gripper_cond (2, H, W), gripper (2, F, H, W): bool, any gripper part of either arm.
        K (2, 3, 3) intrinsics at ``resolution``; X_TC (2, 4, 4) camera poses in T.
        cams (2,) int64 camera indices; frames (F + 1,) int64 frame indices used (t first);
        seed, t: int64 scalars (episode seed, start frame).

    Args:
        root: dataset directory.
        split: ``"train"`` (the 12 training views) or ``"heldout"`` (the 4 held-out views).
        n_future: F, future frames per clip (10 in the paper).
        video_stride: step between clip frames in stored frames (files are already 2 Hz).
        resolution: (H, W) to resample to (RGB bilinear/antialiased; pointmaps, validity and
            masks nearest-neighbour so no point is interpolated across depth edges); None keeps
            the stored resolution.
        on_error: ``"skip"`` corrupt files with a warning, or ``"raise"``.
        seed: seed of the camera-pair draws.
        normalization: the pointmap normalisation (store it in the model config).
        max_open_files: open files kept per process.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        split: Split = "train",
        n_future: int = 10,
        video_stride: int = 1,
        resolution: tuple[int, int] | None = None,
        on_error: OnError = "skip",
        seed: int = 0,
        normalization: PointmapNormalization = PointmapNormalization(),
        max_open_files: int = 32,
    ) -> None:
        if n_future < 1 or video_stride < 1:
            raise ValueError(f"n_future and video_stride must be >= 1, got {n_future}, {video_stride}")
        super().__init__(root, on_error=on_error, seed=seed, resolution=resolution,
                         max_open_files=max_open_files)
        self.split = split
        self.cams = _split_cameras(self.meta, split)
        self.n_future = int(n_future)
        self.video_stride = int(video_stride)
        self.normalization = normalization
        for k, e in enumerate(self._episodes.entries):
            self._index += [(k, t) for t in range(max(e.n_frames - self.video_stride, 1))]

    def _load(self, i: int, k: int, t: int) -> dict[str, torch.Tensor]:
        entry = self._episodes.entries[k]
        r = self._episodes.reader(k)
        n_idx, m_idx = (int(c) for c in self._rng(i).choice(self.cams, size=2, replace=False))
        names = (self.meta.camera_names[n_idx], self.meta.camera_names[m_idx])
        frames = np.minimum(t + self.video_stride * np.arange(self.n_future + 1), entry.n_frames - 1)
        X_TC = [r.X_TC(nm) for nm in names]
        K_src = [r.K(nm) for nm in names]
        X_CnCm = relative_camera_transform(X_TC[0], X_TC[1])
        norm = self.normalization
        H, W = self.resolution
        pm = np.empty((2, len(frames), 3, H, W), np.float32)
        valid = np.empty((2, len(frames), H, W), bool)
        grip = np.empty((2, len(frames), H, W), bool)
        rgb = []
        for v, name in enumerate(names):
            depth, K = r.depth(name, frames), K_src[v]
            # Pointmaps are computed at the stored resolution, then subsampled (nearest), so every
            # point stays an exact surface point of its source pixel.
            if v == 0:
                p, ok = pointmap_chw(depth, K, normalization=norm)
                pm[0], valid[0] = self._resize_nearest(p), self._resize_nearest(ok)
            else:
                # Conditioning frame stays in m's own frame; the targets go to n's frame.
                p, ok = pointmap_chw(depth[:1], K, normalization=norm)
                pm[1, :1], valid[1, :1] = self._resize_nearest(p), self._resize_nearest(ok)
                p, ok = pointmap_chw(depth[1:], K, X_AC=X_CnCm, normalization=norm)
                pm[1, 1:], valid[1, 1:] = self._resize_nearest(p), self._resize_nearest(ok)
            grip[v] = self._resize_nearest((r.masks(name, frames) & ALL_PARTS_MASK) != 0)
            rgb.append(r.rgb(name, frames))
        rgb_t = rgb_to_tensor(np.stack(rgb), self.resolution)  # (2, F+1, 3, H, W)
        pm_t, valid_t, grip_t = torch.from_numpy(pm), torch.from_numpy(valid), torch.from_numpy(grip)
        K = np.stack([_scale_K(Kv, self.src_resolution, self.resolution) for Kv in K_src])
        # Views into one buffer per field (default_collate stacks them into fresh batches).
        return {
            "rgb_cond": rgb_t[:, 0],
            "rgb": rgb_t[:, 1:],
            "pm_cond": pm_t[:, 0],
            "pm": pm_t[:, 1:],
            "valid_cond": valid_t[:, 0],
            "valid": valid_t[:, 1:],
            "gripper_cond": grip_t[:, 0],
            "gripper": grip_t[:, 1:],
            "K": torch.from_numpy(K.astype(np.float32)),
            "X_TC": torch.from_numpy(np.stack(X_TC).astype(np.float32)),
            "cams": torch.tensor([n_idx, m_idx], dtype=torch.int64),
            "frames": torch.from_numpy(frames.astype(np.int64)),
            "seed": torch.tensor(entry.seed, dtype=torch.int64),
            "t": torch.tensor(t, dtype=torch.int64),
        }


FRAME_TIME_TOLERANCE_S = 1e-3
"""A robot step and a video frame whose times differ by at most this are simultaneous (the
recorder stamps both with the same observation time; this absorbs float round-off)."""


def frame_of_step(video_time: np.ndarray, step_time: np.ndarray) -> np.ndarray:
    """Index of the video frame recorded at each robot step's time, or -1 where none was.

    The recorder renders the cameras at 2 Hz from the same observations it logs the 10 Hz robot
    state from, so every fifth step has a frame taken at exactly its time.
    """
    vt, st = np.asarray(video_time, dtype=np.float64), np.asarray(step_time, dtype=np.float64)
    idx = np.clip(np.searchsorted(vt, st), 0, max(len(vt) - 1, 0))
    if len(vt) == 0:
        return np.full(len(st), -1, dtype=np.int64)
    best = np.where((idx > 0) & (np.abs(vt[idx - 1] - st) < np.abs(vt[idx] - st)), idx - 1, idx)
    return np.where(np.abs(vt[best] - st) <= FRAME_TIME_TOLERANCE_S, best, -1).astype(np.int64)


def _episode_vectors(r: EpisodeReader) -> tuple[np.ndarray, np.ndarray]:
    robot = r.robot()
    actions = poses_to_vectors(robot.action_X_TG, robot.action_width, arms=ARM_NAMES)
    state = poses_to_vectors(robot.X_TG, robot.width, arms=ARM_NAMES)
    return actions, state


def _fingerprint(meta: DatasetMeta) -> str:
    key = json.dumps([[e.seed, e.n_steps] for e in meta.episodes])
    return hashlib.sha1(key.encode()).hexdigest()


def compute_normalization(root: str | os.PathLike[str], *, recompute: bool = False) -> dict[str, Any]:
    """Min/max statistics of the 20-dim actions and proprioceptive states over all episodes.

    Stored in ``root/normalization.json`` and reused while the dataset's episode list is the
    one the statistics were computed on (a fingerprint of seeds and lengths); appending
    episodes, or ``recompute=True``, recomputes them. Unreadable episodes are skipped with a
    :class:`CorruptEpisodeWarning`.

    Returns:
        ``{"action": {"min", "max"}, "state": {"min", "max"}, "layout": [names], "n_episodes",
        "fingerprint", "held": {"action": [names], "state": [names]}}`` (lists of floats;
        ``held`` names the dimensions below the normalisation floor, which
        :func:`~geo4d_policy.data.actions.normalize_minmax` holds at their constant).
    """
    root = Path(root)
    meta = load_meta(root)
    path = root / NORMALIZATION_FILE
    fp = _fingerprint(meta)
    if path.is_file() and not recompute:
        try:
            stats = json.loads(path.read_text())
            if stats.get("fingerprint") == fp:
                return _with_held(stats)
        except (OSError, ValueError):
            pass  # unreadable cache: recompute below
    acts, states = [], []
    for entry in meta.episodes:
        try:
            with EpisodeReader(root / entry.file) as r:
                a, s = _episode_vectors(r)
        except CorruptEpisodeError as e:
            warnings.warn(f"skipping {e}", CorruptEpisodeWarning, stacklevel=2)
            continue
        acts.append(a)
        states.append(s)
    if not acts:
        raise DatasetError(f"{root}: no readable episodes to compute normalisation statistics from")
    A, S = np.concatenate(acts), np.concatenate(states)
    stats = {
        "action": {"min": A.min(0).tolist(), "max": A.max(0).tolist()},
        "state": {"min": S.min(0).tolist(), "max": S.max(0).tolist()},
        "layout": action_layout(ARM_NAMES),
        "n_episodes": len(acts),
        "fingerprint": fp,
    }
    atomic_write_text(path, json.dumps(stats, indent=1) + "\n")
    return _with_held(stats)


def _with_held(stats: dict[str, Any]) -> dict[str, Any]:
    layout = action_layout(ARM_NAMES)
    stats["held"] = {kind: [layout[i] for i in np.flatnonzero(held_dims(stats[kind]))] for kind in ("action", "state")}
    return stats


def policy_sample_steps(step: Any, n_steps: Any, *, horizon: int, n_obs_steps: int, obs_stride: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The robot steps one Diffusion Policy sample reads (vectorised over samples).

    Args:
        step: the current step ``s`` of each sample, (B,) or a scalar.
        n_steps: the length of each sample's episode, broadcastable to ``step``.

    Returns:
        ``obs_steps`` (..., n_obs_steps): ``s - (n_obs_steps - 1) * obs_stride, ..., s``, oldest
        first, clipped to step 0 (steps before the start repeat it); ``act_steps`` (..., horizon):
        ``s .. s + horizon - 1`` clipped to the last step; ``pad`` (..., horizon): which action
        steps lie past the episode's end (they repeat its last command).
    """
    s = np.asarray(step, dtype=np.int64)[..., None]
    n = np.asarray(n_steps, dtype=np.int64)[..., None]
    obs = np.maximum(s - obs_stride * np.arange(n_obs_steps - 1, -1, -1), 0)
    act = s + np.arange(horizon)
    return obs, np.minimum(act, n - 1), act >= n


class PolicyDataset(_BaseDataset):
    """Observation/action-chunk samples for Diffusion Policy (Chi et al. 2023) at 10 Hz.

    Sample ``i`` is a robot step ``s`` of one episode and a pair of distinct views of the split
    (n first; random per sample, or fixed with ``views``). Observations are the images and the
    measured gripper state at steps ``s - (n_obs_steps - 1) * obs_stride, ..., s`` (steps before
    the episode start repeat step 0); actions are the commands of steps ``s .. s + horizon - 1``
    (``action[0]`` is the command issued at the current step); steps past the end repeat the
    last command and are flagged in ``action_pad``.

    Images and state are simultaneous: ``s`` ranges over the steps at which every observation
    step has a frame recorded at its own time (:func:`frame_of_step`; the recorder renders at
    2 Hz, so ``obs_stride`` must be a multiple of the 5 steps between frames). The rollout
    policy renders fresh images at its observation steps, so its images and state are
    simultaneous too. (Pairing each step with the latest 2 Hz frame instead showed the network
    images up to 0.4 s older than the state, a lag it never meets at rollout time.)

    Returned dict:
        rgb (2, n_obs, 3, H, W) float32 in [-1, 1]; state (n_obs, 20) measured gripper poses and
        widths; action (horizon, 20); action_pad (horizon,) bool; cams (2,) int64;
        seed, step int64 scalars. With ``normalize=True`` action and state are min/max scaled to
        [-1, 1] by :func:`compute_normalization` (available as ``.stats``).

    Args:
        root: dataset directory.
        horizon: actions per sample (16).
        n_obs_steps: observation steps (2).
        obs_stride: 10 Hz steps between consecutive observation steps (a multiple of the
            frame spacing, 5).
        views: fixed pair of camera names (n, m) of the split; None draws a random pair per sample.
        split: ``"train"`` (the training views) or ``"heldout"`` (novel views, for probes).
        seeds: only the episodes of these seeds (a train/validation split); None: all.
        resolution: (H, W) to resample RGB to; None keeps the stored resolution.
        normalize: scale action/state with the dataset's min/max statistics.
        on_error, seed, max_open_files: as :class:`GeneratorClipDataset`.

    Raises:
        ValueError: bad sizes, an ``obs_stride`` that is not a multiple of the frame spacing,
            views outside the split, or seeds the dataset does not hold.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        horizon: int = 16,
        n_obs_steps: int = 2,
        obs_stride: int = 5,
        views: Sequence[str] | None = None,
        split: Split = "train",
        seeds: Sequence[int] | None = None,
        resolution: tuple[int, int] | None = None,
        normalize: bool = True,
        on_error: OnError = "skip",
        seed: int = 0,
        max_open_files: int = 32,
    ) -> None:
        if horizon < 1 or n_obs_steps < 1 or obs_stride < 1:
            raise ValueError(f"horizon, n_obs_steps and obs_stride must be >= 1, got {horizon}, "
                             f"{n_obs_steps}, {obs_stride}")
        super().__init__(root, on_error=on_error, seed=seed, resolution=resolution,
                         max_open_files=max_open_files)
        self.frame_steps = max(1, int(round(self.meta.robot_hz / self.meta.video_hz)))
        if n_obs_steps > 1 and obs_stride % self.frame_steps:
            raise ValueError(f"obs_stride must be a multiple of {self.frame_steps} (the robot steps between the "
                             f"dataset's {self.meta.video_hz:g} Hz frames), so that every observation step has "
                             f"a frame taken at its own time; got {obs_stride}")
        self.horizon = int(horizon)
        self.n_obs_steps = int(n_obs_steps)
        self.obs_stride = int(obs_stride)
        self.split = split
        self.cams = _split_cameras(self.meta, split)
        if views is not None:
            views = tuple(views)
            names = [self.meta.camera_names[c] for c in self.cams]
            if len(views) != 2 or views[0] == views[1] or not set(views) <= set(names):
                raise ValueError(f"views must be two distinct {'training' if split == 'train' else 'held-out'} "
                                 f"cameras of {names}, got {list(views)}")
            self.views: tuple[int, int] | None = (self.meta.camera_names.index(views[0]),
                                                  self.meta.camera_names.index(views[1]))
        else:
            self.views = None
        self.stats: dict[str, Any] | None = compute_normalization(self.root) if normalize else None
        if seeds is not None:
            wanted = {int(x) for x in seeds}
            missing = sorted(wanted - {e.seed for e in self.meta.episodes})
            if missing:
                raise ValueError(f"{self.root} holds no episode of seed(s) {missing}")
        self._vectors: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for k, e in enumerate(self._episodes.entries):
            if seeds is not None and e.seed not in wanted:
                continue
            _, _, frames = self.episode_arrays(k)
            obs, _, _ = policy_sample_steps(np.arange(e.n_steps), e.n_steps, horizon=1,
                                            n_obs_steps=self.n_obs_steps, obs_stride=self.obs_stride)
            ok = (frames[obs] >= 0).all(axis=1)
            self._index += [(k, int(s)) for s in np.flatnonzero(ok)]

    @property
    def episode_entries(self) -> list[EpisodeEntry]:
        """The readable episodes (index ``k`` of :meth:`episode_arrays` and :attr:`samples`)."""
        return self._episodes.entries

    @property
    def samples(self) -> list[tuple[int, int]]:
        """(episode index, step) of every sample, in sample order."""
        return list(self._index)

    def episode_arrays(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Episode ``k``'s actions (N, 20), measured states (N, 20) and frame of each step (N,)
        (-1 where none was recorded at that step's time); cached."""
        if k not in self._vectors:
            r = self._episodes.reader(k)
            actions, state = _episode_vectors(r)
            self._vectors[k] = (actions, state, frame_of_step(r.video_time, r.robot().time))
        return self._vectors[k]

    def rgb_frames(self, k: int, camera: int, frames: Any) -> np.ndarray:
        """(F, H, W, 3) uint8 stored frames ``frames`` of episode ``k``'s camera index ``camera``."""
        return self._episodes.reader(k).rgb(self.meta.camera_names[camera], frames)

    def _load(self, i: int, k: int, s: int) -> dict[str, torch.Tensor]:
        entry = self._episodes.entries[k]
        actions, state, frames_of = self.episode_arrays(k)
        obs_steps, act_steps, pad = policy_sample_steps(s, len(actions), horizon=self.horizon,
                                                        n_obs_steps=self.n_obs_steps, obs_stride=self.obs_stride)
        if self.views is not None:
            cams = self.views
        else:
            c = self._rng(i).choice(self.cams, size=2, replace=False)
            cams = (int(c[0]), int(c[1]))
        frames = frames_of[obs_steps]
        rgb = np.stack([self.rgb_frames(k, c, frames) for c in cams])
        a, st = actions[act_steps], state[obs_steps]
        if self.stats is not None:
            a = normalize_minmax(a, self.stats["action"])
            st = normalize_minmax(st, self.stats["state"])
        return {
            "rgb": rgb_to_tensor(rgb, self.resolution),
            "state": torch.from_numpy(np.ascontiguousarray(st, dtype=np.float32)),
            "action": torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)),
            "action_pad": torch.from_numpy(np.ascontiguousarray(pad)),
            "cams": torch.tensor(cams, dtype=torch.int64),
            "seed": torch.tensor(entry.seed, dtype=torch.int64),
            "step": torch.tensor(s, dtype=torch.int64),
        }

"""``FrameStore``: whole datasets held as tensors on one device (the GPU training path).

Training the autoencoders and the 4D generator from HDF5 through a CPU data loader kept an
H100 waiting (decompression, pointmap maths and resizing per sample on the host). A
``FrameStore`` reads the episodes of one or more datasets once (in parallel processes) and
keeps every camera's frames on the device in compact form:

* ``rgb`` (E, V, T, H, W, 3) uint8, ``depth_mm`` (E, V, T, H, W) int16 millimetres (0 invalid;
  depths beyond 32.767 m count as invalid), ``masks`` (E, V, T, H, W) uint8 part bits;
* ``K`` (E, V, 3, 3), ``X_TC`` (E, V, 4, 4) per episode and camera (cameras are sampled per
  episode);
* ``X_TG`` (E, A, T, 4, 4), ``width`` (E, A, T): the measured gripper poses and openings at the
  frame times (arm order ``arms``); ``n_frames`` (E,), ``task_ids`` (E,), ``seeds`` (E,).

Episodes shorter than the longest one are padded by repeating their last frame (the scene is at
rest once an episode has ended), exactly as :class:`~geo4d_policy.data.datasets.GeneratorClipDataset`
extends clips past the end; ``n_frames`` keeps the real length.

Everything derived (float RGB, pointmaps in any camera's frame, gripper masks) is computed on
the device in batches: :meth:`rgb_float`, :meth:`pointmaps`, :meth:`gripper`. A pointmap of
camera ``src`` expressed in camera ``dst``'s frame (``X^{m->n}`` with src = m, dst = n) uses the
recorded calibration, as the dataset loader does.

An RGB-only store (``rgb_only=True``: ``depth_mm`` and ``masks`` are None, e.g. the Diffusion
Policy's training frames, :mod:`geo4d_policy.train.dp_frames`) may hold its frames resampled to
a model's resolution: resized in the readers exactly as the dataset loader resizes them
(:func:`~geo4d_policy.data.datasets.rgb_to_tensor`), then rounded back to uint8.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import multiprocessing as mp
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from geo4d_policy.data.format import DatasetError, EpisodeReader, load_meta
from geo4d_policy.data.geometry import PointmapNormalization
from geo4d_policy.data.masks import ALL_PARTS_MASK

INT16_MAX = 32767


def _resized_rgb(rgb: np.ndarray, resolution: tuple[int, int] | None) -> np.ndarray:
    """(..., H, W, 3) uint8 resampled as the dataset loader does, back in uint8."""
    if resolution is None or tuple(rgb.shape[-3:-1]) == tuple(resolution):
        return rgb
    from geo4d_policy.data.datasets import rgb_to_tensor

    x = rgb_to_tensor(rgb, tuple(resolution))  # (..., 3, H', W') in [-1, 1]
    x = ((x + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    return np.ascontiguousarray(np.moveaxis(x.numpy(), -3, -1))


def _read_episode(path: str, cameras: tuple[str, ...], rgb_only: bool = False,
                  resolution: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """One episode's frames of ``cameras`` and its robot state at the frame times (worker)."""
    with EpisodeReader(path) as r:
        every = slice(None)
        out: dict[str, np.ndarray] = {}
        if not rgb_only:
            depth = np.stack([r.depth_mm(c, every) for c in cameras]).astype(np.int32)
            depth[depth > INT16_MAX] = 0
            out["depth_mm"] = depth.astype(np.int16)
            out["masks"] = np.stack([r.masks(c, every) for c in cameras])
        robot = r.robot()
        t_video = r.video_time
        steps = np.clip(np.searchsorted(robot.time, t_video - 1e-3), 0, len(robot.time) - 1)
        return {
            **out,
            "rgb": np.stack([_resized_rgb(r.rgb(c, every), resolution) for c in cameras]),
            "K": np.stack([r.K(c) for c in cameras]).astype(np.float32),
            "X_TC": np.stack([r.X_TC(c) for c in cameras]).astype(np.float32),
            "X_TG": np.stack([robot.X_TG[a][steps] for a in r.arms]).astype(np.float32),
            "width": np.stack([robot.width[a][steps] for a in r.arms]).astype(np.float32),
            "seed": np.int64(r.seed),
            "arms": tuple(r.arms),
        }


def _pad_time(x: np.ndarray, axis: int, length: int) -> np.ndarray:
    n = x.shape[axis]
    if n == length:
        return x
    idx = np.minimum(np.arange(length), n - 1)
    return np.take(x, idx, axis=axis)


@dataclasses.dataclass
class FrameStore:
    """Frames of whole datasets on one device (see the module docstring for the fields)."""

    rgb: torch.Tensor
    depth_mm: torch.Tensor | None
    masks: torch.Tensor | None
    K: torch.Tensor
    X_TC: torch.Tensor
    X_TG: torch.Tensor
    width: torch.Tensor
    n_frames: torch.Tensor
    task_ids: torch.Tensor
    seeds: torch.Tensor
    tasks: tuple[str, ...]
    camera_names: tuple[str, ...]
    train_cameras: tuple[int, ...]
    heldout_cameras: tuple[int, ...]
    sources: tuple[str, ...] = ()
    arms: tuple[str, ...] = ("left", "right")

    # ---------------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        data_dirs: Sequence[str | os.PathLike[str]],
        *,
        device: str | torch.device = "cpu",
        cameras: str = "all",
        max_episodes: int | None = None,
        workers: int | None = None,
        tasks: Sequence[str] | None = None,
        seeds: Sequence[Sequence[int] | None] | None = None,
        rgb_only: bool = False,
        resolution: tuple[int, int] | None = None,
    ) -> FrameStore:
        """Read every listed episode of ``data_dirs`` onto ``device``.

        Args:
            data_dirs: geo4d-collect datasets (any tasks; all must share resolution and cameras).
            device: where the tensors live.
            cameras: ``"all"`` (16 views), ``"train"`` or ``"heldout"``: which views to keep. Camera
                indices in the methods are positions in the kept list (see ``train_cameras``).
            max_episodes: keep at most this many episodes per dataset (the lowest seeds).
            workers: reader processes (default: the CPUs available, at most 16).
            tasks: the task vocabulary for ``task_ids`` (default: the datasets' tasks in order).
            seeds: per dataset (aligned with ``data_dirs``), the seeds of the episodes to keep
                (None: all); applied before ``max_episodes``.
            rgb_only: keep RGB only (``depth_mm`` and ``masks`` None).
            resolution: (H, W) to resample RGB to (RGB-only stores; default: as stored).

        Raises:
            DatasetError: no episodes, datasets that disagree on resolution or cameras, or seeds
                a dataset does not hold.
            ValueError: a bad ``cameras`` choice, ``seeds`` not aligned with ``data_dirs``, or a
                ``resolution`` without ``rgb_only`` (depth and masks keep the stored resolution).
        """
        if resolution is not None and not rgb_only:
            raise ValueError("FrameStore.load: resolution= resamples RGB only; pass rgb_only=True")
        if seeds is not None and len(seeds) != len(data_dirs):
            raise ValueError(f"FrameStore.load: {len(seeds)} seed lists for {len(data_dirs)} datasets")
        metas = [load_meta(d) for d in data_dirs]
        if not metas:
            raise DatasetError("FrameStore.load: no dataset given")
        first = metas[0]
        for d, m in zip(data_dirs, metas):
            if m.resolution != first.resolution or m.camera_names != first.camera_names:
                raise DatasetError(f"{d}: resolution/cameras differ from {data_dirs[0]}")
        if cameras == "all":
            keep = tuple(range(len(first.camera_names)))
        elif cameras == "train":
            keep = tuple(first.train_indices)
        elif cameras == "heldout":
            keep = tuple(first.heldout_indices)
        else:
            raise ValueError(f"cameras must be 'all', 'train' or 'heldout', got {cameras!r}")
        names = tuple(first.camera_names[i] for i in keep)
        vocab = tuple(tasks) if tasks is not None else tuple(dict.fromkeys(m.task for m in metas))
        jobs: list[tuple[str, int]] = []
        for i, (d, m) in enumerate(zip(data_dirs, metas)):
            if m.task not in vocab:
                raise DatasetError(f"{d}: task {m.task} is not in the task list {list(vocab)}")
            eps = sorted(m.episodes, key=lambda e: e.seed)
            if seeds is not None and seeds[i] is not None:
                wanted = {int(x) for x in seeds[i]}
                missing = sorted(wanted - {e.seed for e in eps})
                if missing:
                    raise DatasetError(f"{d} holds no episode of seed(s) {missing}")
                eps = [e for e in eps if e.seed in wanted]
            eps = eps[: max_episodes or None]
            jobs += [(str(Path(d) / e.file), vocab.index(m.task)) for e in eps]
        if not jobs:
            raise DatasetError(f"no episodes in {[str(d) for d in data_dirs]}")
        n_workers = workers or min(16, len(os.sched_getaffinity(0)))
        size = tuple(resolution) if resolution is not None else None
        if n_workers > 1 and len(jobs) > 1:
            ctx = mp.get_context("spawn")
            with cf.ProcessPoolExecutor(max_workers=min(n_workers, len(jobs)), mp_context=ctx) as pool:
                parts = list(pool.map(_read_episode, [p for p, _ in jobs], [names] * len(jobs),
                                      [rgb_only] * len(jobs), [size] * len(jobs)))
        else:
            parts = [_read_episode(p, names, rgb_only, size) for p, _ in jobs]
        t_max = max(p["rgb"].shape[1] for p in parts)
        n_frames = [p["rgb"].shape[1] for p in parts]
        dev = torch.device(device)

        def stack(key: str, time_axis: int | None) -> torch.Tensor:
            arrs = [p[key] if time_axis is None else _pad_time(p[key], time_axis, t_max) for p in parts]
            return torch.from_numpy(np.stack(arrs)).to(dev)

        def kept_index(idx: Sequence[int]) -> tuple[int, ...]:
            return tuple(keep.index(i) for i in idx if i in keep)

        return cls(
            rgb=stack("rgb", 1),
            depth_mm=None if rgb_only else stack("depth_mm", 1),
            masks=None if rgb_only else stack("masks", 1),
            K=stack("K", None),
            X_TC=stack("X_TC", None),
            X_TG=stack("X_TG", 1),
            width=stack("width", 1),
            n_frames=torch.tensor(n_frames, dtype=torch.int64, device=dev),
            task_ids=torch.tensor([t for _, t in jobs], dtype=torch.int64, device=dev),
            seeds=torch.tensor([int(p["seed"]) for p in parts], dtype=torch.int64, device=dev),
            tasks=vocab,
            camera_names=names,
            train_cameras=kept_index(first.train_indices),
            heldout_cameras=kept_index(first.heldout_indices),
            sources=tuple(str(d) for d in data_dirs),
            arms=parts[0]["arms"],
        )

    # ---------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.rgb.device

    @property
    def num_episodes(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def resolution(self) -> tuple[int, int]:
        return int(self.rgb.shape[3]), int(self.rgb.shape[4])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.rgb, self.depth_mm, self.masks) if t is not None)

    # ---------------------------------------------------------------------------------------
    def rgb_float(self, e: torch.Tensor, cam: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float32 RGB in [-1, 1] of episode ``e``, camera ``cam``, frame ``t`` (B,) each."""
        x = self.rgb[e, cam, t]  # (B, H, W, 3) uint8
        return x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)

    def depth(self, e: torch.Tensor, cam: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B, H, W) float32 metres (0 = invalid)."""
        return self.depth_mm[e, cam, t].float().mul_(1e-3)

    def gripper(self, e: torch.Tensor, cam: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B, H, W) bool: any gripper part of either arm."""
        return (self.masks[e, cam, t] & ALL_PARTS_MASK) != 0

    def X_CdstCsrc(self, e: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """(B, 4, 4) pose of camera ``src`` in camera ``dst``'s frame (recorded calibration)."""
        X_Tdst = self.X_TC[e, dst].double()
        X_Tsrc = self.X_TC[e, src].double()
        R, p = X_Tdst[:, :3, :3], X_Tdst[:, :3, 3:]
        inv = torch.eye(4, dtype=torch.float64, device=X_Tdst.device).repeat(len(e), 1, 1)
        inv[:, :3, :3] = R.transpose(1, 2)
        inv[:, :3, 3:] = -R.transpose(1, 2) @ p
        return (inv @ X_Tsrc).float()

    def pointmaps(
        self,
        e: torch.Tensor,
        src: torch.Tensor,
        t: torch.Tensor,
        dst: torch.Tensor | None = None,
        *,
        normalization: PointmapNormalization | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pointmaps (B, 3, H, W) of camera ``src`` in camera ``dst``'s frame (default: its own).

        Invalid pixels hold 0 (after normalisation when ``normalization`` is given), like the
        dataset loader's; the (B, H, W) validity mask says which.
        """
        z = self.depth(e, src, t)
        valid = z > 0
        h, w = z.shape[-2:]
        K = self.K[e, src]
        u = torch.arange(w, device=z.device, dtype=torch.float32)
        v = torch.arange(h, device=z.device, dtype=torch.float32)
        rx = (u[None, None, :] - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None]
        ry = (v[None, :, None] - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None]
        pts = torch.stack([z * rx, z * ry.expand_as(z), z], dim=1)  # (B, 3, H, W)
        if dst is not None:
            X = self.X_CdstCsrc(e, src, dst)
            pts = torch.einsum("bij,bjhw->bihw", X[:, :3, :3], pts) + X[:, :3, 3, None, None]
        if normalization is not None:
            pts = normalization.normalize(pts)
        pts = torch.where(valid[:, None], pts, torch.zeros((), device=pts.device))
        return pts, valid

    def select(self, episodes: torch.Tensor | Sequence[int]) -> FrameStore:
        """A store of a subset of episodes (tensors indexed, not copied where possible)."""
        idx = torch.as_tensor(episodes, dtype=torch.int64, device=self.device)
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for k, v in fields.items():
            if isinstance(v, torch.Tensor):
                fields[k] = v[idx]
        return FrameStore(**fields)

    def sample_frames(
        self, n: int, *, cameras: Sequence[int], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` uniform (episode, camera, frame) draws over real frames of ``cameras`` (device tensors)."""
        dev = self.device
        e = torch.randint(0, self.num_episodes, (n,), generator=generator, device=dev)
        cams = torch.as_tensor(list(cameras), dtype=torch.int64, device=dev)
        c = cams[torch.randint(0, len(cams), (n,), generator=generator, device=dev)]
        r = torch.rand(n, generator=generator, device=dev)
        t = (r * self.n_frames[e]).long().clamp_max(self.n_frames[e] - 1)
        return e, c, t

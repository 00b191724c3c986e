"""Diffusion Policy training samples on the device: a :class:`FrameStore` of the training views plus
the 10 Hz action/state vectors, each batch gathered there.

A Diffusion Policy step on a GPU takes milliseconds; decoding a sample's HDF5 images takes tens
of milliseconds per sample and worker, so a loader-fed GPU waits on its loaders. The frames
live in an RGB-only :class:`~geo4d_policy.data.frame_store.FrameStore` (the one device-resident
frame container; its readers resize them to the model's resolution as the loader does, then
round back to uint8); this module adds what a policy sample needs beside them: the normalised
action and state vectors of every robot step, the video frame taken at each step's time, and
the samples of the :class:`~geo4d_policy.data.datasets.PolicyDataset` s it was built from (the
same steps, the same observation/action steps from
:func:`~geo4d_policy.data.datasets.policy_sample_steps`).

Batches follow the multi-process rule of :mod:`geo4d_policy.train.distributed`: batch ``k`` of
a run is a global batch of ``batch_size x world`` samples (drawn uniformly with replacement,
each with a uniformly drawn ordered pair of distinct training views) that is a function of
``(seed, k)`` only, never of the rank; process ``rank`` keeps rows ``[rank b, (rank + 1) b)``.
So a resumed run draws the batches an uninterrupted one would, on any number of processes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from geo4d_policy.data.actions import normalize_minmax
from geo4d_policy.data.datasets import PolicyDataset, policy_sample_steps
from geo4d_policy.data.frame_store import FrameStore


class PolicyFrameStore:
    """Every sample of ``parts`` ready on ``device``; :meth:`batch` gathers one batch there.

    Args:
        parts: ``(dataset, task_id, stats)`` per dataset: its samples, the task-table index of
            its task and the task's ``{"action", "state"}`` statistics.
        resolution: (H, W) of the model's input images.
        device: where frames and vectors live.
        workers: reader processes of the frame store (1: in this process).

    Raises:
        ValueError: no datasets, or datasets of different sample layouts.
    """

    def __init__(self, parts: Sequence[tuple[PolicyDataset, int, Mapping[str, Any]]], *,
                 resolution: tuple[int, int], device: torch.device | str, workers: int = 1) -> None:
        if not parts:
            raise ValueError("no datasets")
        first = parts[0][0]
        self.horizon, self.n_obs_steps, self.obs_stride = first.horizon, first.n_obs_steps, first.obs_stride
        for ds, _, _ in parts:
            if (ds.horizon, ds.n_obs_steps, ds.obs_stride, ds.split) != \
                    (self.horizon, self.n_obs_steps, self.obs_stride, "train"):
                raise ValueError(f"{ds.root}: sample layout or split differs from {first.root}'s training samples")
        used = [sorted({k for k, _ in ds.samples}, key=lambda k: ds.episode_entries[k].seed) for ds, _, _ in parts]
        self.frames = FrameStore.load([ds.root for ds, _, _ in parts], device=device, cameras="train", rgb_only=True,
                                      resolution=tuple(resolution), workers=max(1, int(workers)),
                                      seeds=[[ds.episode_entries[k].seed for k in ks] for (ds, _, _), ks in
                                             zip(parts, used)])
        self.n_cams = len(self.frames.train_cameras)
        store_seeds = self.frames.seeds.tolist()
        samples, actions, states, episode_of, frame_of, task_of = [], [], [], [], [], []
        e = offset = 0
        for (ds, task_id, stats), ks in zip(parts, used):
            local = {}
            for k in ks:
                if store_seeds[e] != ds.episode_entries[k].seed:  # the store reads episodes in seed order
                    raise RuntimeError(f"{ds.root}: frame store episode {e} is seed {store_seeds[e]}, "
                                       f"expected {ds.episode_entries[k].seed}")
                act, st, frames = ds.episode_arrays(k)
                local[k] = (offset, len(act))
                actions.append(normalize_minmax(act, stats["action"]))
                states.append(normalize_minmax(st, stats["state"]))
                episode_of.append(np.full(len(act), e))
                frame_of.append(frames)
                task_of.append(np.full(len(act), task_id))
                offset += len(act)
                e += 1
            samples += [(*local[k], s) for k, s in ds.samples]
        dev = self.frames.device
        self.actions = torch.from_numpy(np.concatenate(actions).astype(np.float32)).to(dev)
        self.states = torch.from_numpy(np.concatenate(states).astype(np.float32)).to(dev)
        self.episode_of_step = torch.from_numpy(np.concatenate(episode_of).astype(np.int64)).to(dev)
        self.frame_of_step = torch.from_numpy(np.concatenate(frame_of).astype(np.int64)).to(dev)
        self.task_of_step = torch.from_numpy(np.concatenate(task_of).astype(np.int64)).to(dev)
        # Per sample: (first step of its episode in the flat arrays, episode length, current step).
        self.samples = np.asarray(samples, dtype=np.int64).reshape(-1, 3)

    @property
    def device(self) -> torch.device:
        return self.frames.device

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def nbytes(self) -> int:
        """Device memory held (frames and vectors)."""
        vectors = (self.actions, self.states, self.episode_of_step, self.frame_of_step, self.task_of_step)
        return self.frames.nbytes() + sum(t.numel() * t.element_size() for t in vectors)

    def batch_indices(self, batch_size: int, *, seed: int, step: int, rank: int = 0, world: int = 1
                      ) -> tuple[np.ndarray, np.ndarray]:
        """(samples (B,), view pairs (B, 2)) of this process's rows of global batch ``step``.

        The global batch (``batch_size x world`` samples) is a function of ``(seed, step)``;
        process ``rank`` keeps rows ``[rank * batch_size, (rank + 1) * batch_size)``.
        """
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside 0..{world - 1}")
        n = batch_size * world
        g = np.random.default_rng([seed, step, 104729])
        idx = g.integers(0, len(self.samples), size=n)
        c1 = g.integers(0, self.n_cams, size=n)
        c2 = (c1 + 1 + g.integers(0, self.n_cams - 1, size=n)) % self.n_cams
        rows = slice(rank * batch_size, (rank + 1) * batch_size)
        return idx[rows], np.stack([c1, c2], axis=1)[rows]

    def gather(self, idx: np.ndarray, cams: np.ndarray) -> dict[str, torch.Tensor]:
        """The batch of samples ``idx`` seen through training-view pairs ``cams`` (positions among
        the training views): ``rgb`` (B, 2, T, 3, H, W) float in [-1, 1], ``state``, ``action``,
        ``action_pad`` and ``task_id``, all on the device."""
        base, n, s = self.samples[idx].T
        obs, act, pad = policy_sample_steps(s, n, horizon=self.horizon, n_obs_steps=self.n_obs_steps,
                                            obs_stride=self.obs_stride)
        dev = self.device
        obs_t = torch.from_numpy(base[:, None] + obs).to(dev)
        act_t = torch.from_numpy(base[:, None] + act).to(dev)
        e = self.episode_of_step[obs_t[:, -1]]  # (B,)
        t = self.frame_of_step[obs_t]  # (B, T): every observation step has a frame (PolicyDataset)
        cam_t = torch.from_numpy(np.asarray(cams, dtype=np.int64)).to(dev)
        rgb = self.frames.rgb[e[:, None, None], cam_t[:, :, None], t[:, None, :]]  # (B, 2, T, H, W, 3) uint8
        return {
            "rgb": rgb.permute(0, 1, 2, 5, 3, 4).float().div_(127.5).sub_(1.0),
            "state": self.states[obs_t],
            "action": self.actions[act_t],
            "action_pad": torch.from_numpy(pad).to(dev),
            "task_id": self.task_of_step[obs_t[:, -1]],
        }

    def batch(self, batch_size: int, *, seed: int, step: int, rank: int = 0, world: int = 1
              ) -> dict[str, torch.Tensor]:
        """This process's rows of batch ``step`` of a run seeded ``seed`` (see :meth:`batch_indices`)."""
        return self.gather(*self.batch_indices(batch_size, seed=seed, step=step, rank=rank, world=world))

    def describe(self) -> str:
        """One line: samples, episodes, frames and device memory."""
        f = self.frames
        return (f"{len(self)} samples of {f.num_episodes} episodes, {int(f.n_frames.sum())} frames x {self.n_cams} "
                f"views ({f.rgb.shape[2]} per episode held) on {self.device} ({self.nbytes / 2**30:.2f} GiB)")

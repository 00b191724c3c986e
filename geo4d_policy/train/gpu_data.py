"""Training batches drawn on the device: frames for the autoencoders, latent clips for the generator.

Both sources read a :class:`~geo4d_policy.data.frame_store.FrameStore` (whole datasets on the
GPU) and hand :func:`geo4d_policy.train.trainer.train` a ``data_iter_factory``: an "epoch" is
``batches_per_epoch`` batches whose draws come from a device RNG seeded by (seed, epoch), so a
resumed run that skips the batches already consumed sees the same batches. With several
processes every one draws the whole global batch (``batch_size`` x processes) and keeps its rows
(:mod:`geo4d_policy.train.distributed`): the batches do not depend on the number of processes.

* :func:`frame_batch_factory`: single frames for an autoencoder (``images``, ``valid``,
  ``gripper``). Pointmap frames are expressed in their own camera's frame or, with probability
  ``cross_view_prob``, in another training camera's frame of the same episode (the
  ``X^{m->n}`` targets the generator asks the pointmap decoder for).
* :class:`LatentCache`: the generator's training set encoded once per lease with the frozen
  autoencoders, kept on the device in fp16, and :meth:`LatentCache.batch_factory` drawing clips
  of it (the batch keys of :meth:`geo4d_policy.models.pipeline.Generator4D.training_loss`'s
  cached path). The clip layout is :class:`~geo4d_policy.data.datasets.GeneratorClipDataset`'s:
  a start frame ``t`` with a later frame, the next ``F`` frames clamped at the episode's last
  one, two distinct training cameras (n, m), view m's targets in n's frame. Targets
  ``X^{m->n}`` depend on the camera pair, so they are cached for ``pairs_per_episode`` random
  ordered pairs per episode (cameras are sampled anew for every episode, so the set of
  viewpoints stays large); everything else is cached per camera. With several processes each
  encodes a contiguous share of the episodes and the shares are gathered, so every process
  holds the whole cache (any clip may fall to any process's rows).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

from geo4d_policy.data.frame_store import FrameStore
from geo4d_policy.data.geometry import PointmapNormalization
from geo4d_policy.models.inputs import mask_any_on_latent_grid, mask_fraction_on_latent_grid
from geo4d_policy.train.distributed import gather_rows, split_range


def _device_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


def _epoch_generator(device: torch.device, seed: int, epoch: int) -> torch.Generator:
    """The draws of an epoch's global batches: the same on every process."""
    return _device_generator(device, seed * 1_000_003 + epoch * 1009)


def frame_batch_factory(
    store: FrameStore,
    *,
    kind: str,
    batch_size: int,
    batches_per_epoch: int = 1000,
    normalization: PointmapNormalization | None = None,
    cross_view_prob: float = 0.5,
    seed: int = 0,
):
    """``factory(epoch=, rank=, world_size=)`` of autoencoder batches drawn on the store's device.

    Args:
        store: the frames (training cameras are used).
        kind: ``"image_vae"`` or ``"pointmap_vae"``.
        batch_size: frames per batch and process.
        batches_per_epoch: batches per "epoch" (the resume granularity).
        normalization: pointmap normalisation (pointmap VAE).
        cross_view_prob: share of pointmap frames expressed in another camera's frame.
        seed: seeds the draws (with the epoch).
    """
    if kind not in ("image_vae", "pointmap_vae"):
        raise ValueError(f"kind must be image_vae or pointmap_vae, got {kind!r}")
    if kind == "pointmap_vae" and normalization is None:
        raise ValueError("the pointmap VAE needs the pointmap normalization")
    cams = store.train_cameras

    def factory(*, epoch: int, rank: int, world_size: int) -> Iterator[dict[str, Any]]:
        gen = _epoch_generator(store.device, seed, epoch)
        dev = store.device
        cam_t = torch.as_tensor(cams, device=dev)
        n, rows = batch_size * world_size, slice(rank * batch_size, (rank + 1) * batch_size)
        for _ in range(batches_per_epoch):
            e, c, t = (x[rows] for x in store.sample_frames(n, cameras=cams, generator=gen))
            grip = store.gripper(e, c, t)
            if kind == "image_vae":
                yield {"images": store.rgb_float(e, c, t), "gripper": grip}
                continue
            other = cam_t[torch.randint(0, len(cams), (n,), generator=gen, device=dev)][rows]
            cross = torch.rand(n, generator=gen, device=dev)[rows] < cross_view_prob
            dst = torch.where(cross, other, c)
            pts, valid = store.pointmaps(e, c, t, dst, normalization=normalization)
            yield {"images": pts, "valid": valid, "gripper": grip}

    return factory


@dataclasses.dataclass
class LatentCache:
    """A frame store encoded by a generator's autoencoders (see the module docstring).

    Shapes: E episodes, V training cameras (positions in ``cameras``), T frames, P pairs.
    """

    rgb: torch.Tensor  # (E, V, T, c_rgb, h, w) fp16
    pm_own: torch.Tensor | None  # (E, V, T, c_pm, h, w) fp16: each camera's points in its own frame
    pm_pair: torch.Tensor | None  # (E, P, T, c_pm, h, w) fp16: m's points in n's frame
    pairs: torch.Tensor  # (E, P, 2) view positions (n, m)
    gripper_cells: torch.Tensor  # (E, V, T, h, w) bool
    valid_fraction: torch.Tensor  # (E, V, T, h, w) fp16
    n_frames: torch.Tensor  # (E,)
    task_ids: torch.Tensor  # (E,) rows of the generator's task table
    cameras: tuple[int, ...]  # store camera index of each view position

    @property
    def device(self) -> torch.device:
        return self.rgb.device

    def nbytes(self) -> int:
        ts = [self.rgb, self.pm_own, self.pm_pair, self.gripper_cells, self.valid_fraction]
        return sum(t.numel() * t.element_size() for t in ts if t is not None)

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        model: Any,
        store: FrameStore,
        *,
        pairs_per_episode: int = 16,
        batch_size: int = 512,
        seed: int = 0,
        autocast: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> LatentCache:
        """Encode ``store``'s training cameras with ``model``'s (frozen) autoencoders.

        With ``world_size`` > 1 (every process calls it: a collective) this process encodes its
        contiguous share of the episodes and every process returns the whole cache.

        Args:
            model: a :class:`~geo4d_policy.models.pipeline.Generator4D` on the store's device.
            store: the frames.
            pairs_per_episode: ordered camera pairs per episode whose ``X^{m->n}`` is cached.
            batch_size: frames per encoder call.
            seed: seeds the pair choice.
            autocast: encode under bf16 autocast (default: on CUDA, as training and inference do).
            rank, world_size: this process and the number of processes.

        Raises:
            ValueError: other resolution than the model's, fewer than two training cameras, or
                fewer episodes than processes.
        """
        cfg = model.config
        if store.resolution != (cfg.height, cfg.width):
            raise ValueError(f"the frames are {store.resolution[0]}x{store.resolution[1]}, the model's resolution "
                             f"is {cfg.height}x{cfg.width}")
        dev = store.device
        amp = dev.type == "cuda" if autocast is None else autocast
        f = model.image_vae.downsample_factor
        cams = tuple(store.train_cameras)
        if len(cams) < 2:
            raise ValueError("the latent cache needs at least two training cameras")
        n_e, t_max = store.num_episodes, store.rgb.shape[2]
        if n_e < world_size:
            raise ValueError(f"{n_e} episodes cannot be shared by {world_size} processes: use more episodes "
                             "or fewer processes")
        mine = split_range(n_e, rank, world_size)
        norm = model.normalization
        task_rows = model.unet.task_ids([store.tasks[int(i)] for i in store.task_ids.tolist()], device=dev)

        def batched(fn, *idx: torch.Tensor) -> torch.Tensor:
            out = []
            for i in range(0, len(idx[0]), batch_size):
                with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
                    out.append(fn(*(x[i : i + batch_size] for x in idx)))
            return torch.cat(out)

        def enc_rgb(e, c, t):
            return model.image_vae.encode(store.rgb_float(e, c, t)).to(torch.float16)

        def enc_pm(e, c, t, dst):
            pts, valid = store.pointmaps(e, c, t, dst, normalization=norm)
            return model.pointmap_vae.encode(pts, valid=valid).to(torch.float16)

        def enc_own(e, c, t):
            return enc_pm(e, c, t, None)

        def cells(e, c, t):
            return mask_any_on_latent_grid(store.gripper(e, c, t), f)

        def fraction(e, c, t):
            return mask_fraction_on_latent_grid(store.depth_mm[e, c, t] > 0, f).to(torch.float16)

        # Every (episode, view, frame) of the training cameras, of this process's episodes.
        cam_t = torch.as_tensor(cams, device=dev)
        episodes = torch.arange(mine.start, mine.stop, device=dev)
        ee, vv, tt = torch.meshgrid(episodes, torch.arange(len(cams), device=dev),
                                    torch.arange(t_max, device=dev), indexing="ij")
        e, t = ee.reshape(-1), tt.reshape(-1)
        c = cam_t[vv.reshape(-1)]
        h, w = cfg.height // f, cfg.width // f
        per_view = (len(mine), len(cams), t_max)
        rgb = gather_rows(batched(enc_rgb, e, c, t).reshape(*per_view, -1, h, w))
        grip = gather_rows(batched(cells, e, c, t).reshape(*per_view, h, w))
        frac = gather_rows(batched(fraction, e, c, t).reshape(*per_view, h, w))
        # Pairs of every episode are drawn by every process (the same draws as one process).
        gen = torch.Generator().manual_seed(int(seed))
        n_pairs = min(pairs_per_episode, len(cams) * (len(cams) - 1))
        pairs = torch.stack([_draw_pairs(len(cams), n_pairs, gen) for _ in range(n_e)]).to(dev)  # (E, P, 2)
        pm_own = pm_pair = None
        if cfg.use_pointmaps:
            pm_own = gather_rows(batched(enc_own, e, c, t).reshape(*per_view, -1, h, w))
            pe, pp, pt = torch.meshgrid(episodes, torch.arange(n_pairs, device=dev),
                                        torch.arange(t_max, device=dev), indexing="ij")
            pe, pp, pt = pe.reshape(-1), pp.reshape(-1), pt.reshape(-1)
            src, dst = cam_t[pairs[pe, pp, 1]], cam_t[pairs[pe, pp, 0]]
            pm_pair = gather_rows(batched(enc_pm, pe, src, pt, dst).reshape(len(mine), n_pairs, t_max, -1, h, w))
        return cls(rgb=rgb, pm_own=pm_own, pm_pair=pm_pair, pairs=pairs, gripper_cells=grip, valid_fraction=frac,
                   n_frames=store.n_frames.clone(), task_ids=task_rows, cameras=cams)

    # ---------------------------------------------------------------------------------------
    def clips(self, e: torch.Tensor, t: torch.Tensor, p: torch.Tensor, num_frames: int) -> dict[str, torch.Tensor]:
        """The cached-path batch of clips (episode ``e``, start ``t``, pair ``p``), all (B,)."""
        n, m = self.pairs[e, p, 0], self.pairs[e, p, 1]
        steps = torch.arange(1, num_frames + 1, device=t.device)[None]
        fr = torch.minimum(t[:, None] + steps, (self.n_frames[e] - 1)[:, None])  # (B, F)
        eb, nb, mb, pb = e[:, None], n[:, None], m[:, None], p[:, None]
        if self.pm_own is not None:
            cond_n = torch.cat([self.rgb[e, n, t], self.pm_own[e, n, t]], dim=1)
            cond_m = torch.cat([self.rgb[e, m, t], self.pm_own[e, m, t]], dim=1)
            tgt_n = torch.cat([self.rgb[eb, nb, fr], self.pm_own[eb, nb, fr]], dim=2)
            tgt_m = torch.cat([self.rgb[eb, mb, fr], self.pm_pair[eb, pb, fr]], dim=2)
        else:
            cond_n, cond_m = self.rgb[e, n, t], self.rgb[e, m, t]
            tgt_n, tgt_m = self.rgb[eb, nb, fr], self.rgb[eb, mb, fr]
        return {
            "latents": torch.stack([tgt_n, tgt_m], dim=1).float(),
            "cond_latents": torch.stack([cond_n, cond_m], dim=1).float(),
            "gripper_cells": torch.stack([self.gripper_cells[eb, nb, fr], self.gripper_cells[eb, mb, fr]], dim=1),
            "valid_fraction": torch.stack([self.valid_fraction[eb, nb, fr], self.valid_fraction[eb, mb, fr]],
                                          dim=1).float(),
            "task_id": self.task_ids[e],
        }

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """(e, t, p) of ``batch_size`` clips: start frames uniform over every episode's starts."""
        dev = self.device
        starts = (self.n_frames - 1).clamp_min(1).float()
        e = torch.multinomial(starts, batch_size, replacement=True, generator=generator)
        t = (torch.rand(batch_size, generator=generator, device=dev) * starts[e]).long()
        p = torch.randint(0, self.pairs.shape[1], (batch_size,), generator=generator, device=dev)
        return e, t, p

    def batch_factory(self, *, batch_size: int, num_frames: int, batches_per_epoch: int = 1000, seed: int = 0):
        """``factory(epoch=, rank=, world_size=)`` of cached clip batches of ``batch_size`` clips
        per process (see :func:`frame_batch_factory`)."""

        def factory(*, epoch: int, rank: int, world_size: int) -> Iterator[dict[str, torch.Tensor]]:
            gen = _epoch_generator(self.device, seed, epoch)
            rows = slice(rank * batch_size, (rank + 1) * batch_size)
            for _ in range(batches_per_epoch):
                e, t, p = (x[rows] for x in self.sample(batch_size * world_size, gen))
                yield self.clips(e, t, p, num_frames)

        return factory


def _draw_pairs(n_views: int, n_pairs: int, gen: torch.Generator) -> torch.Tensor:
    """(n_pairs, 2) distinct ordered pairs (n, m), n != m, of ``n_views`` views, seeded."""
    every = torch.tensor([(a, b) for a in range(n_views) for b in range(n_views) if a != b])
    return every[torch.randperm(len(every), generator=gen)[:n_pairs]]

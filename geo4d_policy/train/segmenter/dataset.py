"""Segmenter training data: single camera frames of geo4d-collect datasets with class targets.

:class:`SegmentationFrameDataset` reads the training or held-out cameras (as a dataset's
``meta.json`` defines them) of one dataset, with seeded augmentation (:mod:`.augment`);
:func:`frame_datasets` concatenates several; :func:`class_frequencies` and
:func:`class_weights` give the class-balancing weights of the loss.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch.utils.data import ConcatDataset

from geo4d_policy.data.datasets import OnError, _BaseDataset, _split_cameras
from geo4d_policy.perception.segmenter import NUM_CLASSES, GripperSegmenter, classes_from_packed_masks
from geo4d_policy.train.segmenter.augment import ColorJitter, Degradation, degrade_image, jitter_image


class SegmentationFrameDataset(_BaseDataset):
    """Single camera frames of one dataset: RGB and per-pixel class targets.

    Sample ``i`` is (episode, camera of the split, video frame); every frame of every camera
    of the split is one sample. Returned dict: ``image`` (3, H, W) float32 in [-1, 1]
    (degraded when ``degrade`` is given, then colour-jittered when ``jitter`` is given, both
    seeded by (seed, epoch, i)), ``target`` (H, W)
    int64 class ids (:data:`~geo4d_policy.perception.segmenter.CLASS_NAMES`), ``cam``, ``seed``,
    ``t`` int64 scalars.

    Args:
        root: dataset directory (geo4d-collect).
        split: ``"train"`` or ``"heldout"`` cameras, as the dataset's ``meta.json`` defines them.
        jitter: colour augmentation, or None.
        degrade: generated-frame degradation, or None.
        on_error: ``"skip"`` corrupt episode files with a warning, or ``"raise"``.
        seed: augmentation seed.
        max_open_files: open files kept per process.
    """

    def __init__(self, root: str | os.PathLike[str], *, split: Literal["train", "heldout"] = "train",
                 jitter: ColorJitter | None = None, degrade: Degradation | None = None,
                 on_error: OnError = "skip", seed: int = 0, max_open_files: int = 16) -> None:
        super().__init__(root, on_error=on_error, seed=seed, resolution=None, max_open_files=max_open_files)
        self.split = split
        self.cams = _split_cameras(self.meta, split)
        self.jitter = jitter
        self.degrade = degrade if degrade is not None and degrade.enabled else None
        for k, e in enumerate(self._episodes.entries):
            # t encodes (camera position in the split, frame) as one integer.
            self._index += [(k, t) for t in range(len(self.cams) * e.n_frames)]

    def locate(self, i: int) -> tuple[int, str, int]:
        """(episode seed, camera name, frame) of sample ``i``."""
        k, t = self._index[i]
        n = self._episodes.entries[k].n_frames
        return self._episodes.entries[k].seed, self.meta.camera_names[self.cams[t // n]], t % n

    def _load(self, i: int, k: int, t: int) -> dict[str, torch.Tensor]:
        entry = self._episodes.entries[k]
        cam = self.cams[t // entry.n_frames]
        f = t % entry.n_frames
        r = self._episodes.reader(k)
        name = self.meta.camera_names[cam]
        image = GripperSegmenter.images_to_tensor(r.rgb(name, f)[None])[0]
        if self.jitter is not None or self.degrade is not None:
            rng = self._rng(i)
            # Separate streams: enabling one augmentation does not change the other's draws.
            if self.degrade is not None:
                image = degrade_image(image, self.degrade, np.random.default_rng([self.seed, self.epoch, i, 1]))
            if self.jitter is not None:
                image = jitter_image(image, self.jitter, rng)
        target = torch.from_numpy(classes_from_packed_masks(r.masks(name, f)))
        return {"image": image, "target": target, "cam": torch.tensor(cam), "seed": torch.tensor(entry.seed),
                "t": torch.tensor(f)}


def frame_datasets(data_dirs: Sequence[str | os.PathLike[str]], *, split: Literal["train", "heldout"],
                   jitter: ColorJitter | None = None, degrade: Degradation | None = None,
                   seed: int = 0) -> ConcatDataset:
    """One :class:`SegmentationFrameDataset` per directory, concatenated."""
    if not data_dirs:
        raise ValueError("no dataset directories given")
    return ConcatDataset([SegmentationFrameDataset(d, split=split, jitter=jitter, degrade=degrade, seed=seed)
                          for d in data_dirs])


def class_frequencies(dataset: torch.utils.data.Dataset, *, n_frames: int, seed: int) -> np.ndarray:
    """Pixel frequency of each class over ``n_frames`` random frames (all if fewer)."""
    rng = np.random.default_rng([seed, 99])
    idx = rng.choice(len(dataset), size=min(n_frames, len(dataset)), replace=False)
    counts = np.zeros(NUM_CLASSES, dtype=np.float64)
    for i in idx:
        counts += np.bincount(dataset[int(i)]["target"].numpy().ravel(), minlength=NUM_CLASSES)
    return counts / max(counts.sum(), 1.0)


def class_weights(freq: np.ndarray, *, power: float, max_weight: float) -> np.ndarray:
    """``freq ** -power`` capped at ``max_weight`` x background, with pixel-weighted mean 1.

    Classes never seen get the cap (they may appear in other frames).
    """
    freq = np.asarray(freq, dtype=np.float64)
    w = np.where(freq > 0, np.maximum(freq, 1e-12) ** -power, np.inf)
    w = np.minimum(w, max_weight * w[0])
    # Normalising keeps the loss scale (and so the learning rate) independent of the weights.
    return w / max(float((w * freq).sum()), 1e-12)


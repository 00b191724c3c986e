"""Segmenter evaluation: per-class IoU on held-out cameras, clean and degraded."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from geo4d_policy.devices import resolve_device
from geo4d_policy.perception.segmenter import (
    CLASS_NAMES,
    NUM_CLASSES,
    GripperSegmenter,
    confusion_matrix,
    iou_from_confusion,
)
from geo4d_policy.train.segmenter.augment import EVAL_DEGRADATION
from geo4d_policy.train.segmenter.dataset import frame_datasets


@torch.no_grad()
def evaluate_segmenter(model: GripperSegmenter, dataset: torch.utils.data.Dataset, *,
                       max_frames: int = 0, seed: int = 0, batch_size: int = 16) -> dict[str, Any]:
    """Per-class IoU (and pixel accuracy) of ``model`` on ``dataset``'s frames.

    Args:
        model: the segmenter.
        dataset: frames (e.g. ``frame_datasets(dirs, split="heldout")``), no augmentation.
        max_frames: evaluate a seeded random subset of this many frames (0 = all).
        seed: seed of that subset.
        batch_size: frames per forward pass.

    Returns:
        ``{"iou": {class: IoU}, "miou_gripper": mean IoU of the six gripper classes present,
        "pixel_accuracy", "gripper_recall": share of gripper pixels predicted as some gripper
        class of the right arm, "arm_iou": {arm: IoU of the whole gripper (palm + fingers merged)},
        "n_frames", "confusion": (C, C) list}``. Pass a dataset built with
        ``degrade=EVAL_DEGRADATION`` to measure IoU on generated-like frames.
    """
    n = len(dataset)
    if max_frames and max_frames < n:
        idx = np.sort(np.random.default_rng([seed, 5]).choice(n, size=max_frames, replace=False))
    else:
        idx = np.arange(n)
    was_training = model.training
    model.eval()
    conf = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    try:
        for s in range(0, len(idx), batch_size):
            items = [dataset[int(i)] for i in idx[s:s + batch_size]]
            x = torch.stack([it["image"] for it in items]).to(model.device)
            pred = model(x).argmax(1).cpu().numpy()
            conf += confusion_matrix(pred, torch.stack([it["target"] for it in items]).numpy())
    finally:
        model.train(was_training)
    iou = iou_from_confusion(conf)
    grip = iou[1:][np.isfinite(iou[1:])]
    # Arm-level recall: palm/finger confusions within one arm do not matter for masking.
    arm_hits = conf[1:4, 1:4].sum() + conf[4:7, 4:7].sum()
    n_grip = conf[1:].sum()
    arm_iou = {}
    for arm, sl in (("left", slice(1, 4)), ("right", slice(4, 7))):
        tp = conf[sl, sl].sum()
        union = conf[sl, :].sum() + conf[:, sl].sum() - tp
        arm_iou[arm] = float(tp / union) if union else None
    return {
        "iou": {name: (None if not np.isfinite(v) else float(v)) for name, v in zip(CLASS_NAMES, iou)},
        "miou_gripper": float(grip.mean()) if grip.size else float("nan"),
        "pixel_accuracy": float(np.trace(conf) / max(conf.sum(), 1)),
        "gripper_recall": float(arm_hits / n_grip) if n_grip else float("nan"),
        "arm_iou": arm_iou,
        "n_frames": int(len(idx)),
        "confusion": conf.tolist(),
    }


def evaluate_checkpoint(checkpoint: str | os.PathLike[str], data_dirs: Sequence[str | os.PathLike[str]], *,
                        max_frames: int = 0, seed: int = 0, degraded: bool = True,
                        num_threads: int = 0, device: str = "cpu") -> dict[str, Any]:
    """Held-out evaluation of a segmenter checkpoint (run, step or exported directory), on clean
    frames and, with ``degraded``, on the same frames under :data:`EVAL_DEGRADATION`.

    Returns :func:`evaluate_segmenter`'s dict (clean) with the degraded one under ``degraded``.
    """
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    model = GripperSegmenter.from_pretrained(checkpoint, device=resolve_device(device)).float()
    ev = evaluate_segmenter(model, frame_datasets(data_dirs, split="heldout", seed=seed),
                            max_frames=max_frames, seed=seed)
    if degraded:
        ev["degraded"] = evaluate_segmenter(
            model, frame_datasets(data_dirs, split="heldout", degrade=EVAL_DEGRADATION, seed=seed),
            max_frames=max_frames, seed=seed)
    ev["checkpoint"] = str(checkpoint)
    return ev


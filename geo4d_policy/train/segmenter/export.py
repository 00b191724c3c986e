"""Segmenter export: a run's last checkpoint as a shippable (fp16) directory with its evaluation."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from geo4d_policy.perception.segmenter import GripperSegmenter


def export_segmenter(run_or_checkpoint: str | os.PathLike[str], dest: str | os.PathLike[str], *,
                     dtype: torch.dtype = torch.float16) -> Path:
    """Write a run's last checkpoint (or a checkpoint directory) to ``dest`` in ``dtype``, without
    training state; the run's ``eval_heldout.json`` (if any) is recorded in ``config.json``."""
    src = Path(run_or_checkpoint)
    extra: dict[str, Any] = {}
    ev = src / "eval_heldout.json"
    if ev.is_file():
        heldout = json.loads(ev.read_text())
        keys = ("iou", "miou_gripper", "pixel_accuracy", "gripper_recall", "arm_iou", "n_frames")
        extra["heldout_eval"] = {k: heldout[k] for k in keys if k in heldout}
        if isinstance(heldout.get("degraded"), dict):
            extra["heldout_eval_degraded"] = {k: heldout["degraded"][k] for k in keys if k in heldout["degraded"]}
    return GripperSegmenter.export_pretrained(src, dest, dtype=dtype, extra=extra)

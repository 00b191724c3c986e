"""Optional adapter: SAM2 video segmentation of the grippers in (generated) RGB videos.

In simulation the gripper masks come from label images; on real (or generated) images the
paper uses SAM2. This adapter wraps the PyPI package ``sam2`` with a checkpoint the user
supplies (nothing is downloaded), through its documented video-predictor API:
``build_sam2_video_predictor(config, ckpt_path, device=)``, ``init_state(video_path=)`` on a
directory of JPEG frames, ``add_new_points_or_box(inference_state=, frame_idx=, obj_id=,
points=, labels=, box=)`` and ``propagate_in_video(inference_state)`` yielding
``(frame_idx, obj_ids, mask_logits)``.

Objects are prompted on one frame (by default the first, where a policy has label masks or a
user has clicks), e.g. one object per gripper part of each arm; :func:`prompt_from_mask`
turns a first-frame mask into a box plus a positive click.
"""

from __future__ import annotations

import dataclasses
import importlib
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


class SAM2Unavailable(ImportError):
    """The ``sam2`` package is not installed."""


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A SAM2 prompt for one object on one frame.

    Attributes:
        box: optional ``(x0, y0, x1, y1)`` pixel box.
        points: optional (K, 2) ``(x, y)`` clicks.
        labels: (K,) 1 for positive, 0 for negative clicks (defaults to all positive).
    """

    box: tuple[float, float, float, float] | None = None
    points: np.ndarray | None = None
    labels: np.ndarray | None = None


def prompt_from_mask(mask: np.ndarray) -> Prompt | None:
    """Box of ``mask`` plus one positive click on its pixel nearest the centroid (None if empty)."""
    mask = np.asarray(mask, dtype=bool)
    v, u = np.nonzero(mask)
    if u.size == 0:
        return None
    i = int(np.argmin((u - u.mean()) ** 2 + (v - v.mean()) ** 2))
    return Prompt(box=(float(u.min()), float(v.min()), float(u.max()), float(v.max())),
                  points=np.array([[float(u[i]), float(v[i])]], dtype=np.float32),
                  labels=np.array([1], dtype=np.int32))


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach()
    if hasattr(x, "cpu"):
        x = x.cpu()
    if hasattr(x, "numpy"):
        x = x.numpy()
    return np.asarray(x)


class SAM2Segmenter:
    """SAM2 video segmentation with a user-supplied checkpoint.

    Args:
        config: SAM2 model config name (e.g. ``"configs/sam2.1/sam2.1_hiera_s.yaml"``).
        checkpoint: path to the matching checkpoint file (never downloaded).
        device: torch device string.

    Raises:
        SAM2Unavailable: ``sam2`` is not installed.
        FileNotFoundError: the checkpoint does not exist.
    """

    def __init__(self, *, config: str, checkpoint: str | Path, device: str = "cuda") -> None:
        try:
            build_sam = importlib.import_module("sam2.build_sam")
        except ImportError as exc:
            raise SAM2Unavailable(
                "SAM2 is not installed: `pip install sam2` and pass config= and checkpoint= (a local "
                "checkpoint file; nothing is downloaded). Simulation runs take gripper masks from "
                f"label images and do not need it. (import error: {exc})"
            ) from exc
        ckpt = Path(checkpoint)
        if not ckpt.is_file():
            raise FileNotFoundError(f"SAM2 checkpoint {ckpt} not found (download it yourself; none is fetched)")
        self.predictor = build_sam.build_sam2_video_predictor(config, str(ckpt), device=device)

    def segment_video(
        self, frames: np.ndarray, prompts: Mapping[int, Prompt], *, prompt_frame: int = 0
    ) -> dict[int, np.ndarray]:
        """Segment objects through a video.

        Args:
            frames: (T, H, W, 3) uint8 RGB frames.
            prompts: object id -> prompt on ``prompt_frame``.
            prompt_frame: the frame the prompts refer to.

        Returns:
            object id -> (T, H, W) bool masks (all False on frames SAM2 did not report).
        """
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape}")
        T, H, W = frames.shape[:3]
        out = {obj: np.zeros((T, H, W), dtype=bool) for obj in prompts}
        if not prompts:
            return out
        import imageio.v3 as iio

        with tempfile.TemporaryDirectory(prefix="sam2_frames_") as tmp:
            # SAM2 reads a directory of JPEGs named by integer frame index.
            for t in range(T):
                iio.imwrite(Path(tmp) / f"{t:05d}.jpg", frames[t].astype(np.uint8), quality=95)
            state = self.predictor.init_state(video_path=tmp)
            for obj, prompt in prompts.items():
                kwargs: dict[str, Any] = {}
                if prompt.points is not None:
                    pts = np.asarray(prompt.points, dtype=np.float32).reshape(-1, 2)
                    kwargs["points"] = pts
                    kwargs["labels"] = (np.ones(len(pts), dtype=np.int32) if prompt.labels is None
                                        else np.asarray(prompt.labels, dtype=np.int32))
                if prompt.box is not None:
                    kwargs["box"] = np.asarray(prompt.box, dtype=np.float32)
                if not kwargs:
                    raise ValueError(f"prompt for object {obj} has neither points nor a box")
                self.predictor.add_new_points_or_box(inference_state=state, frame_idx=prompt_frame, obj_id=obj,
                                                     **kwargs)
            for frame_idx, obj_ids, mask_logits in self.predictor.propagate_in_video(state):
                logits = _to_numpy(mask_logits)
                for i, obj in enumerate(obj_ids):
                    if obj in out:
                        out[obj][int(frame_idx)] = logits[i].reshape(H, W) > 0.0
        return out

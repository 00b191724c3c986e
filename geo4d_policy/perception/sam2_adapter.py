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

Install: ``pip install -e .[sam2]`` (or ``bash scripts/install.sh --sam2`` on a CPU-only
machine: PyPI's torchvision wheel is a CUDA build that does not import beside the CPU torch,
and SAM2's video predictor does not need it). Weights: SAM2's released checkpoints (e.g.
``sam2.1_hiera_tiny.pt`` with ``configs/sam2.1/sam2.1_hiera_t.yaml``), downloaded by the user;
``python -m geo4d_policy.perception.sam2_adapter`` checks a checkpoint on a clip of a collected
dataset against its label masks. The adapter is tested against the real package with random
weights (``tests/perception/test_sam2_real.py``).
"""

from __future__ import annotations

import dataclasses
import importlib
import tempfile
from collections.abc import Mapping, Sequence
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
        checkpoint: path to the matching checkpoint file (never downloaded): a ``torch.save``
            of ``{"model": state_dict}``, as SAM2 releases them.
        device: torch device string.
        hydra_overrides: extra Hydra overrides of the model config, e.g.
            ``["++model.image_size=512"]`` (SAM2 runs at 1024 px; a smaller size is faster and
            coarser).

    Raises:
        SAM2Unavailable: ``sam2`` is not installed.
        FileNotFoundError: the checkpoint does not exist.
    """

    def __init__(self, *, config: str, checkpoint: str | Path, device: str = "cuda",
                 hydra_overrides: Sequence[str] = ()) -> None:
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
        self.predictor = build_sam.build_sam2_video_predictor(config, str(ckpt), device=device,
                                                              hydra_overrides_extra=list(hydra_overrides))

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


# --------------------------------------------------------------------------------------------
# Gripper prompts and a check of user weights on recorded data
# --------------------------------------------------------------------------------------------


def gripper_part_prompts(packed: np.ndarray) -> dict[int, tuple[str, Prompt]]:
    """One prompt per gripper part visible in a packed part-mask image (:mod:`geo4d_policy.data.masks`).

    Returns:
        object id (the part's bit + 1) -> (part name, prompt).
    """
    from geo4d_policy.data.masks import MASK_BITS

    out = {}
    for name, bit in sorted(MASK_BITS.items(), key=lambda kv: kv[1]):
        prompt = prompt_from_mask((np.asarray(packed) >> bit) & 1)
        if prompt is not None:
            out[bit + 1] = (name, prompt)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Segment a recorded clip with user-supplied SAM2 weights; print per-part IoU against its masks."""
    import argparse

    from geo4d_policy.data.format import EpisodeReader, load_meta

    p = argparse.ArgumentParser(prog="python -m geo4d_policy.perception.sam2_adapter",
                                description="Prompt SAM2 with the first frame's gripper part masks of a "
                                            "recorded episode, propagate through the clip and report each "
                                            "part's IoU against the recorded masks.")
    p.add_argument("--config", required=True, help="SAM2 config name, e.g. configs/sam2.1/sam2.1_hiera_t.yaml")
    p.add_argument("--checkpoint", required=True, help="the matching SAM2 checkpoint file")
    p.add_argument("--data", required=True, help="a dataset directory (geo4d-collect)")
    p.add_argument("--seed", type=int, default=None, help="episode seed (default: the dataset's first)")
    p.add_argument("--camera", default=None, help="camera name (default: the first held-out camera)")
    p.add_argument("--frames", type=int, default=10, help="frames of the clip, from the first (default 10)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--image-size", type=int, default=None, help="SAM2's input size (default: the config's)")
    args = p.parse_args(argv)
    meta = load_meta(args.data)
    entries = {e.seed: e for e in meta.episodes}
    if not entries or (args.seed is not None and args.seed not in entries):
        p.error(f"no episode with seed {args.seed} in {args.data}; seeds: {sorted(entries)}")
    entry = entries[meta.episodes[0].seed if args.seed is None else args.seed]
    camera = args.camera or (meta.heldout_cameras or meta.camera_names)[0]
    if camera not in meta.camera_names:
        p.error(f"unknown camera {camera!r}; cameras: {list(meta.camera_names)}")
    n = min(args.frames, entry.n_frames)
    with EpisodeReader(Path(args.data) / entry.file) as reader:
        frames, packed = reader.rgb(camera, slice(0, n)), reader.masks(camera, slice(0, n))
    parts = gripper_part_prompts(packed[0])
    if not parts:
        p.error(f"no gripper part is visible on the first frame of camera {camera}")
    overrides = [f"++model.image_size={args.image_size}"] if args.image_size else []
    seg = SAM2Segmenter(config=args.config, checkpoint=args.checkpoint, device=args.device,
                        hydra_overrides=overrides)
    masks = seg.segment_video(frames, {obj: prompt for obj, (_, prompt) in parts.items()})
    print(f"episode seed {entry.seed}, camera {camera}, {n} frames: IoU with the recorded masks")
    for obj, (name, _) in parts.items():
        truth = ((packed >> (obj - 1)) & 1).astype(bool)
        inter = (masks[obj] & truth).sum(axis=(1, 2))
        union = (masks[obj] | truth).sum(axis=(1, 2))
        iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        print(f"  {name:20s} first frame {iou[0]:.3f}  later frames mean {iou[1:].mean() if n > 1 else float('nan'):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

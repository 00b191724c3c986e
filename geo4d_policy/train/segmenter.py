"""Training and evaluation of the gripper part segmenter (:mod:`geo4d_policy.perception.segmenter`).

This module owns:
  * :class:`SegmenterTrainConfig`, the typed recipe (``configs/segmenter/{tiny,small}.yaml``);
  * :class:`SegmentationFrameDataset`, single camera frames (RGB + per-pixel class targets from
    the packed part masks) of a geo4d-collect dataset, from its training or held-out cameras as
    ``meta.json`` defines them, with seeded colour-jitter augmentation;
  * :func:`train_segmenter`, the loop (AdamW, warm-up, class-weighted cross-entropy, EMA,
    periodic held-out IoU), with the trainer's checkpoint conventions;
  * :func:`evaluate_segmenter`, per-class IoU on a split (held-out cameras by default);
  * :func:`export_segmenter`, a run's last checkpoint as a shippable (fp16) directory.

Run directory (as :mod:`geo4d_policy.train.trainer`)::

    out_dir/
      train_config.yaml        the resolved SegmenterTrainConfig
      metrics.jsonl            loss / lr / s_per_step every ``log_every`` steps, held-out IoU
                               every ``eval_every`` steps
      last                     name of the newest step directory
      step_<N>/                config.json + model.safetensors (EMA weights, loadable by
                               GripperSegmenter.from_pretrained) + training_state/
      eval_heldout.json        the final held-out evaluation

``resume=True`` restores weights, EMA, optimizer, schedule, RNG and the position in the epoch
(the sample order and augmentations are functions of (seed, epoch, index)), so a resumed run
reproduces an uninterrupted one.

Augmentation is photometric only: a horizontal flip would mirror the scene and swap which
side of the image each arm (and finger) is on, teaching the model impossible layouts. Besides the
colour jitter, :class:`Degradation` mimics frames predicted by a video generator (blurrier and
noisier than renders, ~18-19 dB PSNR): random down-then-up resampling, Gaussian blur and
additive noise, applied before the jitter and seeded by (seed, epoch, index) on a stream of its
own (turning it on does not change the jitter draws). :data:`EVAL_DEGRADATION` is the
fixed degradation (blur sigma 1 px + noise) of the "degraded" held-out evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import ConcatDataset, DataLoader, Subset

from geo4d_policy.config import CONFIG_DIR, ConfigError, atomic_write_text, load_config, save_config, to_dict
from geo4d_policy.data.datasets import OnError, _BaseDataset, _split_cameras
from geo4d_policy.devices import resolve_device
from geo4d_policy.models.checkpoint import LAST_POINTER, CheckpointError, read_config_json
from geo4d_policy.perception.segmenter import (
    CLASS_NAMES,
    NUM_CLASSES,
    GripperSegmenter,
    SegmenterConfig,
    classes_from_packed_masks,
    confusion_matrix,
    iou_from_confusion,
)
from geo4d_policy.train.ema import EMA

# The generator trainer's run-directory helpers: one implementation of the conventions.
from geo4d_policy.train.trainer import (
    STATE_DIR,
    lr_lambda,
    prune,
    rng_state,
    set_rng_state,
    truncate_metrics,
    write_last,
)

log = logging.getLogger(__name__)

SEGMENTER_CONFIG_DIR = CONFIG_DIR / "segmenter"


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ColorJitter:
    """Photometric augmentation, drawn per sample (all factors uniform in ``1 +- x``).

    Attributes:
        brightness, contrast, saturation: multiplicative ranges.
        channel_gain: independent per-channel gain range (white balance).
        noise_std: std of additive Gaussian pixel noise, in [-1, 1] image units.
        prob: probability that a sample is augmented at all.
    """

    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.3
    channel_gain: float = 0.08
    noise_std: float = 0.02
    prob: float = 0.9


@dataclasses.dataclass
class Degradation:
    """Degradation mimicking generated video frames, drawn per sample (ranges are uniform).

    Applied in this order: down-then-up resampling (bilinear, antialiased down by ``factor``,
    then back to the original size), separable Gaussian blur, additive Gaussian noise.

    Attributes:
        blur_sigma: (min, max) Gaussian blur sigma in pixels (0 = no blur).
        resample_factor: (min, max) downsampling factor (1 = none).
        noise_std: (min, max) std of additive Gaussian noise, in [-1, 1] image units.
        prob: probability that a sample is degraded at all (0 = off).
    """

    blur_sigma: tuple[float, float] = (0.0, 1.5)
    resample_factor: tuple[float, float] = (1.0, 2.0)
    noise_std: tuple[float, float] = (0.0, 0.04)
    prob: float = 0.0

    def __post_init__(self) -> None:
        self.blur_sigma = tuple(float(v) for v in self.blur_sigma)  # type: ignore[assignment]
        self.resample_factor = tuple(float(v) for v in self.resample_factor)  # type: ignore[assignment]
        self.noise_std = tuple(float(v) for v in self.noise_std)  # type: ignore[assignment]
        for name, (lo, hi), floor in (("blur_sigma", self.blur_sigma, 0.0),
                                      ("resample_factor", self.resample_factor, 1.0),
                                      ("noise_std", self.noise_std, 0.0)):
            if not floor <= lo <= hi:
                raise ConfigError(f"Degradation.{name} must be (min, max) with {floor} <= min <= max, "
                                  f"got {(lo, hi)}")
        if not 0.0 <= self.prob <= 1.0:
            raise ConfigError(f"Degradation.prob must be in [0, 1], got {self.prob}")

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.blur_sigma[1] > 0 or self.resample_factor[1] > 1
                                  or self.noise_std[1] > 0)


#: The fixed degradation of the "degraded" held-out evaluation: Gaussian blur sigma 1 px plus
#: noise of std 0.04 ([-1, 1] units, ~5/255), always applied.
EVAL_DEGRADATION = Degradation(blur_sigma=(1.0, 1.0), resample_factor=(1.0, 1.0), noise_std=(0.04, 0.04),
                               prob=1.0)


@dataclasses.dataclass
class SegmenterTrainConfig:
    """A segmenter training run.

    Attributes:
        name: recipe name (``tiny``/``small``).
        model: the U-Net size.
        max_steps: optimizer steps (may be raised when resuming).
        batch_size: frames per step.
        lr, warmup_steps, lr_schedule: peak learning rate, linear warm-up, then constant or
            cosine decay to 10% at ``max_steps``.
        weight_decay: AdamW weight decay.
        grad_clip: max global gradient norm (0 = off).
        ema_decay: EMA of the weights (checkpoints hold the EMA weights).
        class_weight_power: class weights ``freq ** -power`` (normalised to a pixel-weighted
            mean of 1), from the training frames' class frequencies: grippers cover ~1% of a
            frame and each finger a few pixels, so unweighted cross-entropy predicts background.
        max_class_weight: cap of a class weight relative to background.
        class_stat_frames: frames sampled to measure the class frequencies.
        jitter: colour augmentation.
        degrade: generated-frame degradation (blur / resampling / noise), before the jitter;
            ``prob: 0`` turns it off.
        eval_degraded: also evaluate the held-out frames under :data:`EVAL_DEGRADATION`
            (``degraded`` in ``eval_heldout.json``, ``heldout_degraded_miou_gripper`` in metrics).
        eval_every: held-out evaluation period in steps (0 = only at the end).
        eval_frames: held-out frames per periodic evaluation (fixed, seeded subset).
        final_eval_frames: held-out frames of the final evaluation (0 = all).
        ckpt_every, log_every, keep_last: checkpoint/metrics periods and step directories kept.
        num_threads: torch CPU threads (0 = leave torch's default).
        device: where the model trains: ``cpu``, ``cuda`` (``cuda:N``) or ``auto`` (CUDA when
            available). The result does not depend on it beyond floating-point rounding.
        num_workers: data-loader worker processes (0 = load in the training process). Loading
            (HDF5 decoding, augmentation) dominates on a GPU; the batches are the same either way.
        max_time_s: stop cleanly (checkpoint + final evaluation) at the first step after this many
            seconds of training; None = run to ``max_steps``. The cosine schedule still spans
            ``max_steps``: size ``max_steps`` from the logged ``s_per_step``.
        seed: model initialisation, sample order and augmentation.
        progress: show a progress bar.
    """

    name: str = "small"
    model: SegmenterConfig = dataclasses.field(default_factory=SegmenterConfig)
    max_steps: int = 900
    batch_size: int = 12
    lr: float = 3e-3
    warmup_steps: int = 50
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    class_weight_power: float = 0.35
    max_class_weight: float = 15.0
    class_stat_frames: int = 300
    jitter: ColorJitter = dataclasses.field(default_factory=ColorJitter)
    degrade: Degradation = dataclasses.field(default_factory=Degradation)
    eval_degraded: bool = False
    eval_every: int = 250
    eval_frames: int = 200
    final_eval_frames: int = 0
    ckpt_every: int = 250
    log_every: int = 25
    keep_last: int = 2
    num_threads: int = 2
    device: str = "cpu"
    num_workers: int = 0
    max_time_s: float | None = None
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if min(self.max_steps, self.batch_size, self.ckpt_every, self.log_every, self.keep_last) < 1:
            raise ConfigError("SegmenterTrainConfig: max_steps, batch_size, ckpt_every, log_every and "
                              "keep_last must be >= 1")
        if self.num_workers < 0:
            raise ConfigError(f"SegmenterTrainConfig.num_workers must be >= 0, got {self.num_workers}")
        if self.max_time_s is not None and not self.max_time_s > 0:
            raise ConfigError(f"SegmenterTrainConfig.max_time_s must be > 0 or null, got {self.max_time_s}")
        if not (self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:")):
            raise ConfigError(f"SegmenterTrainConfig.device must be cpu, cuda, cuda:N or auto, got {self.device!r}")
        if self.model.num_classes != NUM_CLASSES:
            raise ConfigError(f"SegmenterTrainConfig.model.num_classes must be {NUM_CLASSES} "
                              "(the mask layout)")


def load_segmenter_train_config(name_or_path: str | os.PathLike[str], *,
                                overrides: dict[str, Any] | None = None) -> SegmenterTrainConfig:
    """A recipe by name (``configs/segmenter/<name>.yaml``) or YAML path, with shallow overrides."""
    p = Path(name_or_path)
    if not p.suffix and not p.exists():
        p = SEGMENTER_CONFIG_DIR / f"{name_or_path}.yaml"
        if not p.is_file():
            known = sorted(q.stem for q in SEGMENTER_CONFIG_DIR.glob("*.yaml"))
            raise ConfigError(f"unknown segmenter config {str(name_or_path)!r}; "
                              f"known: {known} or a YAML path")
    return load_config(SegmenterTrainConfig, p, overrides=overrides)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def jitter_image(x: torch.Tensor, jitter: ColorJitter, rng: np.random.Generator) -> torch.Tensor:
    """Colour-jitter one (3, H, W) image in [-1, 1] with ``rng``'s draws (returns a new tensor)."""
    if rng.random() >= jitter.prob:
        return x
    u = rng.uniform(-1.0, 1.0, size=6)
    y = (x + 1.0) * 0.5  # [0, 1] so that the factors act on intensities
    y = y * (1.0 + jitter.brightness * u[0])
    mean = y.mean()
    y = (y - mean) * (1.0 + jitter.contrast * u[1]) + mean
    gray = (0.299 * y[0] + 0.587 * y[1] + 0.114 * y[2])[None]
    y = (y - gray) * (1.0 + jitter.saturation * u[2]) + gray
    y = y * torch.as_tensor(1.0 + jitter.channel_gain * u[3:6], dtype=y.dtype)[:, None, None]
    y = y * 2.0 - 1.0
    if jitter.noise_std > 0:
        noise = rng.standard_normal(size=tuple(y.shape), dtype=np.float32)
        y = y + jitter.noise_std * torch.from_numpy(noise)
    return y.clamp_(-1.0, 1.0)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    r = max(1, int(np.ceil(3.0 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (C, H, W) or (B, C, H, W) images (reflect padding)."""
    if sigma <= 0:
        return x
    squeeze = x.dim() == 3
    y = x[None] if squeeze else x
    c = y.shape[1]
    k = _gaussian_kernel(sigma).to(y)
    r = k.numel() // 2
    # Reflect padding needs r < size: clamp with replicate padding for tiny images.
    mode = "reflect" if r < min(y.shape[-2:]) else "replicate"
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y[0] if squeeze else y


def degrade_image(x: torch.Tensor, degrade: Degradation, rng: np.random.Generator) -> torch.Tensor:
    """Degrade one (3, H, W) image in [-1, 1] like a generated frame, with ``rng``'s draws.

    Returns ``x`` itself when the sample is not degraded (``rng.random() >= prob``); otherwise a
    new tensor, clamped to [-1, 1]. The number of draws does not depend on their values.
    """
    if not degrade.enabled or rng.random() >= degrade.prob:
        return x
    u = rng.uniform(0.0, 1.0, size=3)
    factor = degrade.resample_factor[0] + (degrade.resample_factor[1] - degrade.resample_factor[0]) * u[0]
    sigma = degrade.blur_sigma[0] + (degrade.blur_sigma[1] - degrade.blur_sigma[0]) * u[1]
    std = degrade.noise_std[0] + (degrade.noise_std[1] - degrade.noise_std[0]) * u[2]
    noise = rng.standard_normal(size=tuple(x.shape), dtype=np.float32)
    y = x
    h, w = x.shape[-2:]
    if factor > 1.0 + 1e-3:
        small = (max(1, int(round(h / factor))), max(1, int(round(w / factor))))
        y = F.interpolate(y[None], size=small, mode="bilinear", align_corners=False, antialias=True)
        y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)[0]
    if sigma > 1e-3:
        y = gaussian_blur(y, sigma)
    if std > 0:
        y = y + std * torch.from_numpy(noise)
    return y.clamp(-1.0, 1.0)


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


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SegmenterTrainResult:
    """What :func:`train_segmenter` returns."""

    out_dir: Path
    checkpoint: Path
    step: int
    metrics: dict[str, float]
    heldout: dict[str, Any] | None


def _epoch_order(n: int, *, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 7919 + epoch)
    return torch.randperm(n, generator=g).tolist()


def train_segmenter(
    config: SegmenterTrainConfig,
    *,
    data_dirs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    resume: bool = False,
) -> SegmenterTrainResult:
    """Train a :class:`GripperSegmenter` on the training cameras of ``data_dirs``.

    Args:
        config: the recipe.
        data_dirs: geo4d-collect dataset directories (any tasks).
        out_dir: run directory (created).
        resume: continue from ``out_dir/last`` if it exists; without it an existing run is refused.

    Returns:
        :class:`SegmenterTrainResult` with the last checkpoint and the final held-out evaluation
        (None when the datasets have fewer than two held-out cameras).

    Raises:
        FileExistsError: ``out_dir`` holds a run and ``resume`` is False.
        CheckpointError: the run to resume was trained with another model config.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    if (out / LAST_POINTER).exists() and not resume:
        raise FileExistsError(f"{out} already holds a training run: pass resume=True or use another "
                              "directory")
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    train_ds = frame_datasets(data_dirs, split="train", jitter=config.jitter, degrade=config.degrade,
                              seed=config.seed)
    heldout_deg: ConcatDataset | None = None
    try:
        heldout_ds: ConcatDataset | None = frame_datasets(data_dirs, split="heldout", seed=config.seed)
        if config.eval_degraded:
            heldout_deg = frame_datasets(data_dirs, split="heldout", degrade=EVAL_DEGRADATION, seed=config.seed)
    except Exception as e:  # noqa: BLE001 - a dataset without held-out views still trains
        log.warning("no held-out evaluation: %s", e)
        heldout_ds = None

    device = torch.device(resolve_device(config.device))
    torch.manual_seed(config.seed)
    # Initialised on the CPU (same weights for every device), then moved: the EMA's shadow copy
    # and the optimizer state live where the weights do.
    model = GripperSegmenter(config.model).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
    ema = EMA(model, decay=config.ema_decay)
    gen = torch.Generator().manual_seed(config.seed)

    step, epoch, in_epoch = 0, 0, 0
    weights: np.ndarray | None = None
    if resume and (out / LAST_POINTER).exists():
        ckpt = out / (out / LAST_POINTER).read_text().strip()
        sd = ckpt / STATE_DIR
        meta = json.loads((sd / "state.json").read_text())
        if meta.get("kind") != "segmenter":
            raise CheckpointError(f"{out} is a {meta.get('kind')} run, not a segmenter run")
        if meta["model"] != to_dict(config.model):
            raise CheckpointError(f"{out} was trained with model {meta['model']}, "
                                  f"not {to_dict(config.model)}")
        model.load_state_dict(load_file(str(sd / "raw.safetensors")))
        ema.load_state_dict(load_file(str(sd / "ema.safetensors")))
        optimizer.load_state_dict(torch.load(sd / "optimizer.pt", map_location="cpu", weights_only=True))
        scheduler.load_state_dict(torch.load(sd / "scheduler.pt", weights_only=True))
        set_rng_state(torch.load(sd / "rng_0.pt", weights_only=False), gen)
        step, epoch, in_epoch = meta["step"], meta["epoch"], meta["next_batch_in_epoch"]
        weights = np.asarray(meta["class_weights"], dtype=np.float64)
        truncate_metrics(out / "metrics.jsonl", step)
        log.info("resumed %s at step %d (epoch %d, batch %d)", out, step, epoch, in_epoch)
    if weights is None:
        freq = class_frequencies(frame_datasets(data_dirs, split="train", seed=config.seed),
                                 n_frames=config.class_stat_frames, seed=config.seed)
        weights = class_weights(freq, power=config.class_weight_power, max_weight=config.max_class_weight)
    weight_t = torch.as_tensor(weights, dtype=torch.float32, device=device)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "train_config.yaml")

    def evaluate(max_frames: int) -> dict[str, Any] | None:
        if heldout_ds is None:
            return None
        with ema.swapped():
            ev = evaluate_segmenter(model, heldout_ds, max_frames=max_frames, seed=config.seed)
            if heldout_deg is not None:
                ev["degraded"] = evaluate_segmenter(model, heldout_deg, max_frames=max_frames, seed=config.seed)
            return ev

    def save_checkpoint() -> Path:
        path = out / f"step_{step}"
        with ema.swapped():
            model.save_pretrained(path, extra={"training": {"step": step, "recipe": config.name,
                                                            "class_weights": weights.tolist()}})
        sd = path / STATE_DIR
        sd.mkdir(exist_ok=True)
        save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()},
                  str(sd / "raw.safetensors"))
        save_file(ema.state_dict(), str(sd / "ema.safetensors"))
        torch.save(optimizer.state_dict(), sd / "optimizer.pt")
        torch.save(scheduler.state_dict(), sd / "scheduler.pt")
        torch.save(rng_state(gen), sd / "rng_0.pt")
        meta = {"kind": "segmenter", "step": step, "epoch": epoch, "next_batch_in_epoch": in_epoch,
                "model": to_dict(config.model), "class_weights": weights.tolist()}
        (sd / "state.json").write_text(json.dumps(meta, indent=2) + "\n")
        write_last(out, path.name)
        prune(out, config.keep_last, path)
        return path

    def batches():
        nonlocal epoch, in_epoch
        while True:
            for part in train_ds.datasets:
                part.set_epoch(epoch)
            order = _epoch_order(len(train_ds), seed=config.seed, epoch=epoch)
            n_batches = len(order) // config.batch_size
            if n_batches == 0:
                raise ValueError(f"{len(order)} training frames are fewer than one batch of "
                                 f"{config.batch_size}")
            # Whole batches of the epoch's order from in_epoch on (resuming starts there), loaded in
            # this process (num_workers 0) or by worker processes forked after set_epoch, so the
            # batches and their augmentations are the same either way.
            rest = order[in_epoch * config.batch_size:n_batches * config.batch_size]
            loader = DataLoader(Subset(train_ds, rest), batch_size=config.batch_size, shuffle=False,
                                num_workers=config.num_workers, pin_memory=device.type == "cuda")
            for batch in loader:
                in_epoch += 1
                yield batch
            epoch, in_epoch = epoch + 1, 0

    metrics_path = out / "metrics.jsonl"
    last_ckpt = out / (out / LAST_POINTER).read_text().strip() if (out / LAST_POINTER).exists() else None
    acc, n_acc, last_metrics = 0.0, 0, {}
    t_log = time.perf_counter()
    bar = tqdm(total=config.max_steps, initial=step, disable=not config.progress, desc="train segmenter",
               dynamic_ncols=True)
    model.train()
    data = batches()
    t_start = time.perf_counter()
    while step < config.max_steps:
        batch = next(data)
        logits = model(batch["image"].to(device, non_blocking=True))
        loss = F.cross_entropy(logits, batch["target"].to(device, non_blocking=True), weight=weight_t)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step}")
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(step)
        step += 1
        loss_value = loss.item()
        acc += loss_value
        n_acc += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}")
        rec: dict[str, Any] = {}
        if step % config.log_every == 0 or step == config.max_steps:
            now = time.perf_counter()
            last_metrics = {"loss": acc / n_acc}
            rec.update(step=step, epoch=epoch, lr=scheduler.get_last_lr()[0],
                       s_per_step=(now - t_log) / n_acc, **last_metrics)
            acc, n_acc, t_log = 0.0, 0, now
        if config.eval_every and step % config.eval_every == 0 and step < config.max_steps:
            ev = evaluate(config.eval_frames)
            if ev is not None:
                rec.update(step=step, heldout_miou_gripper=ev["miou_gripper"],
                           heldout_iou=ev["iou"], heldout_arm_iou=ev["arm_iou"])
                if "degraded" in ev:
                    rec.update(heldout_degraded_miou_gripper=ev["degraded"]["miou_gripper"],
                               heldout_degraded_iou=ev["degraded"]["iou"],
                               heldout_degraded_arm_iou=ev["degraded"]["arm_iou"])
            # Evaluation time is not training time.
            t_log = time.perf_counter()
        if rec:
            with metrics_path.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
        out_of_time = config.max_time_s is not None and time.perf_counter() - t_start > config.max_time_s
        if step % config.ckpt_every == 0 or step == config.max_steps or out_of_time:
            last_ckpt = save_checkpoint()
        if out_of_time:
            log.info("time budget of %.0f s reached at step %d", config.max_time_s, step)
            break
    bar.close()
    data.close()  # ends the epoch's loader (and its worker processes) before the final evaluation
    if last_ckpt is None:
        last_ckpt = save_checkpoint()
    heldout = evaluate(config.final_eval_frames)
    if heldout is not None:
        heldout["step"] = step
        atomic_write_text(out / "eval_heldout.json", json.dumps(heldout, indent=1) + "\n")
    return SegmenterTrainResult(out, last_ckpt, step, last_metrics, heldout)


def export_segmenter(run_or_checkpoint: str | os.PathLike[str], dest: str | os.PathLike[str], *,
                     dtype: torch.dtype = torch.float16) -> Path:
    """Write a run's last checkpoint (or a checkpoint directory) to ``dest`` in ``dtype``, without
    training state; the run's ``eval_heldout.json`` (if any) is recorded in ``config.json``."""
    src = Path(run_or_checkpoint)
    model = GripperSegmenter.from_pretrained(src)
    extra: dict[str, Any] = {"training": read_config_json(src).get("training", {})}
    ev = src / "eval_heldout.json"
    if ev.is_file():
        heldout = json.loads(ev.read_text())
        keys = ("iou", "miou_gripper", "pixel_accuracy", "gripper_recall", "arm_iou", "n_frames")
        extra["heldout_eval"] = {k: heldout[k] for k in keys if k in heldout}
        if isinstance(heldout.get("degraded"), dict):
            extra["heldout_eval_degraded"] = {k: heldout["degraded"][k] for k in keys if k in heldout["degraded"]}
    return model.save_pretrained(dest, dtype=dtype, extra=extra)

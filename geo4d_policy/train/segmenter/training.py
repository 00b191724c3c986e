"""Segmenter training: the recipe (:class:`SegmenterTrainConfig`) and the loop (:func:`train_segmenter`).

The loop: AdamW, warm-up, class-weighted cross-entropy, EMA, periodic held-out IoU, with the
run directory and resume of :mod:`geo4d_policy.train.state`. ``resume=True`` restores weights,
EMA, optimizer, schedule, RNG and the position in the epoch (the sample order and
augmentations are functions of (seed, epoch, index)), so a resumed run reproduces an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Subset

from geo4d_policy.config import CONFIG_DIR, ConfigError, atomic_write_text, load_config, save_config
from geo4d_policy.devices import resolve_device
from geo4d_policy.perception.segmenter import NUM_CLASSES, GripperSegmenter, SegmenterConfig
from geo4d_policy.train.ema import EMA
from geo4d_policy.train.segmenter.augment import EVAL_DEGRADATION, ColorJitter, Degradation
from geo4d_policy.train.segmenter.dataset import class_frequencies, class_weights, frame_datasets
from geo4d_policy.train.segmenter.evaluation import evaluate_segmenter
from geo4d_policy.train.state import Counters, TrainingState, check_run_dir, last_checkpoint
from geo4d_policy.train.trainer import lr_lambda

log = logging.getLogger(__name__)

SEGMENTER_CONFIG_DIR = CONFIG_DIR / "segmenter"


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
    resuming = check_run_dir(out, resume=resume)
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

    state = TrainingState(kind="segmenter", trainable=model, ema=ema, optimizer=optimizer, scheduler=scheduler,
                          generator=gen, identity={"model": config.model},
                          labels={"model": "with another model config"})
    step, epoch, in_epoch = 0, 0, 0
    weights: np.ndarray | None = None
    if resuming:
        counters, meta = state.restore(out)
        step, epoch, in_epoch = counters.step, counters.epoch, counters.next_batch_in_epoch
        weights = np.asarray(meta["class_weights"], dtype=np.float64)
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

        def write(state_writer: Callable[[Path], None]) -> None:
            with ema.swapped():
                model.save_pretrained(path, extra={"training": {"step": step, "recipe": config.name,
                                                                "class_weights": weights.tolist()}},
                                      extra_writer=state_writer)

        return state.save(path, Counters(step, epoch, in_epoch), write_checkpoint=write, keep_last=config.keep_last,
                          extra={"class_weights": weights.tolist()})

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
    last_ckpt = last_checkpoint(out)
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


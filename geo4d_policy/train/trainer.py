"""The training loop shared by the 4D generator and the two VAEs.

``train(config, data_iter_factory=..., out_dir=..., resume=...)`` runs AdamW with warm-up,
gradient clipping and an EMA of the weights under ``accelerate`` (bf16 autocast on CUDA, fp32
on the CPU). Several GPUs: ``accelerate launch --multi_gpu --num_processes N`` (DDP); each
process trains on its rows of the global batch its factory call returns for its rank, draws
the training noise of those rows from the generator every process shares, and only the main
process writes; the run does not depend on N (:mod:`geo4d_policy.train.distributed`).

Output directory layout::

    out_dir/
      train_config.yaml        the resolved TrainConfig of the latest (re)start
      metrics.jsonl            one JSON line per ``log_every`` steps (averaged metrics, lr, s/step)
      last                     the name of the newest step directory
      step_<N>/
        config.json            loadable by Generator4D / VAE .from_pretrained
        model.safetensors      EMA weights
        training_state/        raw weights, EMA, optimizer, LR schedule, RNG states, counters

Data: ``data_iter_factory(epoch=e, rank=r, world_size=w)`` returns an iterable of batch dicts
(any iterable: a DataLoader, a generator of synthetic tensors); with several processes, batch
``i`` of process ``r`` holds rows ``[r b, (r + 1) b)`` of the epoch's global batch ``i``. When it
is exhausted the next epoch is requested. ``resume=True`` restores everything in ``training_state`` and re-enters
the interrupted epoch by skipping the batches already consumed, so a resumed run reproduces
an uninterrupted one exactly when the factory is deterministic given ``epoch`` (seed the
loader's shuffling with it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file
from torch import nn

from geo4d_policy.config import save_config, to_dict
from geo4d_policy.data.geometry import PointmapNormalization
from geo4d_policy.models.checkpoint import CheckpointError, read_config_json
from geo4d_policy.models.config import (
    DATA_DERIVED_KEYS,
    GeneratorConfig,
    config_differences,
    load_model_config,
    model_config_from_dict,
)
from geo4d_policy.models.generator import load_svd_unet_weights
from geo4d_policy.models.pipeline import GENERATOR_FORMAT, Generator4D, canonical_task
from geo4d_policy.models.shard import BatchShard, Randomness, base_generator
from geo4d_policy.models.vae import VAE
from geo4d_policy.train.config import TrainConfig
from geo4d_policy.train.distributed import gather_rows, launch_record, make_accelerator
from geo4d_policy.train.ema import EMA
from geo4d_policy.train.state import Counters, TrainingState, check_run_dir, last_checkpoint, write_last

log = logging.getLogger(__name__)

Batch = Mapping[str, Any]


class DataIterFactory(Protocol):
    """Returns the batches of one epoch for one process."""

    def __call__(self, *, epoch: int, rank: int, world_size: int) -> Iterable[Batch]: ...


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns."""

    out_dir: Path
    checkpoint: Path
    step: int
    metrics: dict[str, float]


# --------------------------------------------------------------------------------------------
# Recipes: what is trained, its loss on a batch, and how a checkpoint is written
# --------------------------------------------------------------------------------------------


def resolve_model_config(model: str | GeneratorConfig) -> GeneratorConfig:
    """A :class:`GeneratorConfig` from a name, a YAML path or the config itself (copied)."""
    if isinstance(model, GeneratorConfig):
        return model_config_from_dict(to_dict(model))
    return load_model_config(model)


def vae_frames(
    batch: Batch,
    *,
    kind: str,
    max_images: int,
    generator: Randomness,
    pointmap_range: tuple[float, float],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Frames (N, 3, H, W), validity (N, H, W) and gripper pixels (N, H, W) for a VAE step.

    Uses the conditioning and target frames of both views (``rgb_cond``/``rgb`` or
    ``pm_cond``/``pm`` with ``valid_cond``/``valid``; without ``valid_cond``, conditioning
    points count as valid when finite with metric z > 0; gripper masks from
    ``gripper_cond``/``gripper`` when present), then draws at most ``max_images`` of them (the
    same positions on every process); or ``images`` (+ ``valid``, ``gripper``) when the batch
    holds plain frames (the GPU frame sampler's batches), all of them, as rows of the batch.
    Validity and gripper masks are None when the batch has none.
    """
    grip = None
    if "images" in batch:
        x, valid, grip = batch["images"], batch.get("valid"), batch.get("gripper")
        x = x.reshape(-1, *x.shape[-3:])
        valid = None if valid is None else valid.reshape(-1, *valid.shape[-2:])
        grip = None if grip is None else grip.reshape(-1, *grip.shape[-2:])
        return x, valid, grip
    key = "rgb" if kind == "image_vae" else "pm"
    cond, seq = batch[f"{key}_cond"], batch[key]
    x = torch.cat([cond.reshape(-1, *cond.shape[-3:]), seq.reshape(-1, *seq.shape[-3:])])
    valid = None
    if kind == "pointmap_vae":
        v_seq = batch["valid"].reshape(-1, *seq.shape[-2:]).bool()
        v_cond = batch.get("valid_cond")
        if v_cond is None:
            z = PointmapNormalization(*pointmap_range).denormalize(cond[..., 2, :, :])
            v_cond = torch.isfinite(cond).all(-3) & (torch.nan_to_num(z, nan=0.0) > 0)
        v_cond = v_cond.reshape(-1, *seq.shape[-2:]).bool()
        valid = torch.cat([v_cond, v_seq])
    if "gripper" in batch and "gripper_cond" in batch:
        g_seq, g_cond = batch["gripper"], batch["gripper_cond"]
        grip = torch.cat([g_cond.reshape(-1, *seq.shape[-2:]), g_seq.reshape(-1, *seq.shape[-2:])]).bool()
    if x.shape[0] > max_images:
        g = base_generator(generator)
        idx = torch.randperm(x.shape[0], generator=g, device=g.device)[:max_images].to(x.device)
        x = x[idx]
        valid = None if valid is None else valid[idx]
        grip = None if grip is None else grip[idx]
    return x, valid, grip


class _VAEModule(nn.Module):
    """Adapter giving a VAE the ``forward(batch, generator=...)`` interface of the loop."""

    def __init__(self, vae: VAE, kind: str, max_images: int, pointmap_range: tuple[float, float]) -> None:
        super().__init__()
        self.vae = vae
        self.kind = kind
        self.max_images = max_images
        self.pointmap_range = pointmap_range
        self.recent: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def forward(self, batch: Batch, *, generator: Randomness):
        x, valid, grip = vae_frames(
            batch,
            kind=self.kind,
            max_images=self.max_images,
            generator=generator,
            pointmap_range=self.pointmap_range,
        )
        # Frames kept (on the device: a copy to the host would synchronise every step) for
        # measuring the latent scale at checkpoint time.
        kept = (x.detach(), None if valid is None else valid.detach())
        self.recent = (self.recent + [kept])[-4:]
        return self.vae.loss(x, valid=valid, gripper=grip, generator=generator)


def init_vae_source(path: str | os.PathLike[str]) -> VAE:
    """The autoencoder a VAE run's ``init_from`` names: a VAE checkpoint, or a generator checkpoint's
    image autoencoder (a generator ships the frozen autoencoders it was trained with, so the
    repository keeps no second copy of them)."""
    if read_config_json(path).get("format") == GENERATOR_FORMAT:
        return Generator4D.from_pretrained(path).image_vae
    return VAE.from_pretrained(path)


def build_generator(cfg: TrainConfig, mc: GeneratorConfig, tasks: tuple[str, ...]) -> Generator4D:
    """The generator a run trains: VAEs from ``cfg`` (or ``init_from``'s), U-Net initialised as asked."""
    model = Generator4D(mc, trained_tasks=tasks)
    src = None
    if cfg.init_from is not None:
        # Weights carry over between configs of the same network; the diffusion settings (edm.*)
        # are the objective being fine-tuned, free to change (a resume still refuses that), and so
        # is the clip length (num_frames: no weight depends on it, the temporal layers embed frame
        # indices). A network may also grow the fine pointmap path, which starts as the identity.
        src = Generator4D.from_pretrained(cfg.init_from)
        grows_fine = src.config.unet.fine_pointmap_channels == 0 < mc.unet.fine_pointmap_channels
        diff = [d for d in config_differences(mc, src.config) if not d.startswith(("edm.", "num_frames:"))
                and not (grows_fine and d.startswith("unet.fine_pointmap_channels:"))]
        if diff:
            raise CheckpointError(f"{cfg.init_from} was trained with another generator network:\n  "
                                  + "\n  ".join(diff))
    if cfg.image_vae is None and cfg.pointmap_vae is None and src is not None:
        # Continuing a generator: its own (frozen) autoencoders come with it.
        model.set_vaes(src.image_vae, src.pointmap_vae)
    elif cfg.image_vae is not None or cfg.pointmap_vae is not None:
        if cfg.image_vae is None or (mc.use_pointmaps and cfg.pointmap_vae is None):
            raise ValueError(
                "generator training: give both image_vae and pointmap_vae checkpoints (or neither)"
            )
        image = VAE.from_pretrained(cfg.image_vae, kind="image")
        pm = VAE.from_pretrained(cfg.pointmap_vae, kind="pointmap") if mc.use_pointmaps else None
        for name, vae in (("image", image), ("pointmap", pm)):
            if vae is None:
                continue
            probe = dataclasses.replace(mc, **{f"{name}_vae": vae.config})
            diff = [d for d in config_differences(mc, probe) if not d.startswith(f"{name}_vae.kl_weight")]
            if diff:
                raise CheckpointError(
                    f"{name} VAE checkpoint does not match the model config:\n  " + "\n  ".join(diff)
                )
        model.set_vaes(image, pm)
    else:
        log.warning("generator training with random VAEs (no image_vae/pointmap_vae given): tests only")
    model.freeze_vaes()
    if src is not None:
        missing, unexpected = model.unet.load_state_dict(src.unet.state_dict(), strict=False)
        if unexpected or any(not k.startswith("fine.") for k in missing):
            raise CheckpointError(f"{cfg.init_from}: U-Net weights do not fit this network "
                                  f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        if missing:
            log.info("--init %s: the fine pointmap path starts as the identity (%d new tensors)",
                     cfg.init_from, len(missing))
    if cfg.init_svd_unet is not None:
        missing = load_svd_unet_weights(model.unet, load_file(cfg.init_svd_unet))
        if missing:
            log.warning("SVD init left %d U-Net tensors at their initialisation", len(missing))
    return model


def build_generator_for_cache(config: TrainConfig) -> Generator4D:
    """The generator of ``config`` with its frozen autoencoders (what a latent cache encodes with)."""
    mc = resolve_model_config(config.model)
    return build_generator(config, mc, tuple(canonical_task(t) for t in config.tasks)).eval()


class _Recipe:
    """Model construction, trainable module and checkpoint writing for one ``kind``."""

    def __init__(self, cfg: TrainConfig, model_cfg: GeneratorConfig) -> None:
        self.cfg = cfg
        self.model_cfg = model_cfg
        self.tasks = tuple(canonical_task(t) for t in cfg.tasks)
        if cfg.kind == "generator":
            self.module = self._build_generator()
            self.trainable = self.module.unet
        else:
            self.module = self._build_vae()
            self.trainable = self.module

    def _build_generator(self) -> Generator4D:
        return build_generator(self.cfg, self.model_cfg, self.tasks)

    def _build_vae(self) -> _VAEModule:
        cfg, mc = self.cfg, self.model_cfg
        kind = "image" if cfg.kind == "image_vae" else "pointmap"
        vae = VAE(mc.image_vae if kind == "image" else mc.pointmap_vae, kind=kind)
        if cfg.init_from is not None:
            # Either VAE kind: the paper starts the pointmap VAE from the image VAE's weights.
            vae.init_from(init_vae_source(cfg.init_from))
        return _VAEModule(vae, cfg.kind, cfg.vae_max_images, tuple(mc.pointmap_range))

    def loss(self, module: nn.Module, batch: Batch, generator: Randomness):
        return module(batch, generator=generator)

    def calibration_frames(self, module: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """A VAE run's recent frames of every process (a collective: every process calls it)."""
        if self.cfg.kind == "generator":
            return []
        return [(gather_rows(x), None if v is None else gather_rows(v)) for x, v in module.recent]

    def save(self, path: Path, *, module: nn.Module, ema: EMA, extra: dict[str, Any],
             frames: list[tuple[torch.Tensor, torch.Tensor | None]]) -> None:
        """Write a loadable checkpoint directory holding the EMA weights (a VAE's latent scales
        measured on ``frames``, :meth:`calibration_frames`)."""
        with ema.swapped():
            if self.cfg.kind == "generator":
                module.save_pretrained(path, extra={"training": extra})
            else:
                vae = module.vae
                if frames:
                    vae.calibrate(frames, target_std=self.model_cfg.edm.sigma_data)
                vae.save_pretrained(path, extra={"training": extra, "tasks": list(self.tasks)})


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        if cfg.lr_schedule == "cosine":
            t = min(1.0, step / max(1, cfg.max_steps))
            return warm * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t)))
        return warm

    return f


def attention_backends(device: torch.device):
    """Scaled-dot-product attention kernels for training: flash and memory-efficient (math as the
    fallback) on CUDA, leaving out cuDNN attention, which failed at batch 256 on the H100
    (``mha_graph.execute`` assertion; ../shared/notes/mlstack.md); a no-op elsewhere."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def to_device(batch: Batch, device: torch.device) -> dict[str, Any]:
    return {
        k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()
    }


def optimizer_step(accelerator: Any, loss: torch.Tensor, metrics: dict[str, Any], *, params: Any,
                   optimizer: torch.optim.Optimizer, scheduler: Any, ema: Any, step: int,
                   grad_clip: float, check_finite: bool = True) -> dict[str, Any]:
    """One update from ``loss``: backward, optional clipping, optimizer/scheduler/EMA steps.

    Shared by every accelerate-based trainer (generator/VAEs here, Diffusion Policy).
    ``check_finite`` tests the loss before updating, which waits for the GPU every step; the
    generator/VAE loop passes False and tests the accumulated loss when it logs instead.

    Returns:
        ``metrics`` plus ``grad_norm`` (a tensor; NaN without clipping).

    Raises:
        FloatingPointError: ``check_finite`` and the loss is not finite (nothing is updated).
    """
    if check_finite and not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss at step {step}: {metrics}")
    accelerator.backward(loss)
    grad_norm: Any = float("nan")
    if grad_clip > 0:
        grad_norm = accelerator.clip_grad_norm_(params, grad_clip)
        grad_norm = grad_norm.detach() if isinstance(grad_norm, torch.Tensor) else float(grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    ema.update(step)
    return {**metrics, "grad_norm": grad_norm}


def _batches(
    factory: DataIterFactory, *, epoch: int, skip: int, rank: int, world_size: int
) -> Iterator[tuple[int, int, Batch]]:
    """(epoch, index in epoch, batch) forever, re-entering ``epoch`` after ``skip`` batches."""
    while True:
        n = 0
        for i, batch in enumerate(factory(epoch=epoch, rank=rank, world_size=world_size)):
            n += 1
            if i < skip:
                continue
            yield epoch, i, batch
        if n == 0:
            raise RuntimeError(f"data_iter_factory returned no batches for epoch {epoch}")
        epoch, skip = epoch + 1, 0


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def train(
    config: TrainConfig,
    *,
    data_iter_factory: DataIterFactory,
    out_dir: str | os.PathLike[str],
    resume: bool = False,
) -> TrainResult:
    """Train the generator or a VAE (``config.kind``) and write checkpoints to ``out_dir``.

    Args:
        config: the run's recipe.
        data_iter_factory: ``factory(epoch=, rank=, world_size=)`` -> iterable of batch dicts
            (keys: see :mod:`geo4d_policy.models.pipeline`; VAE runs use the same batches).
        out_dir: run directory (created).
        resume: continue from ``out_dir/last`` (model, EMA, optimizer, schedule, RNG, data
            position) when it exists, else start fresh; without it an existing run
            directory is refused.

    Returns:
        :class:`TrainResult` with the last checkpoint directory and the last logged metrics.

    Raises:
        FileExistsError: ``out_dir`` holds a run and ``resume`` is False.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    resuming = check_run_dir(out, resume=resume)
    model_cfg = resolve_model_config(config.model)
    unknown = [t for t in config.tasks if canonical_task(t) not in model_cfg.tasks]
    if unknown:
        raise ValueError(f"tasks {unknown} are not in the model's task table {list(model_cfg.tasks)}")

    accelerator = make_accelerator(config.mixed_precision)
    rank, world = accelerator.process_index, accelerator.num_processes

    torch.manual_seed(config.seed)
    recipe = _Recipe(config, model_cfg)
    module = recipe.module
    if config.kind != "generator" and not module.vae.trainable:
        return _write_codec(config, recipe, data_iter_factory, out, accelerator)
    params = [p for p in recipe.trainable.parameters() if p.requires_grad]
    # The fused CUDA AdamW updates every tensor in a few kernels (per-tensor loops are
    # launch-bound for small models); same maths as the default implementation.
    optimizer = torch.optim.AdamW(
        params, lr=config.lr, betas=tuple(config.betas), eps=config.eps, weight_decay=config.weight_decay,
        fused=accelerator.device.type == "cuda",
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
    module.to(accelerator.device)
    if config.compile_unet and config.kind == "generator":
        # In place (nn.Module.compile): parameter names, EMA, checkpoints are those of eager runs.
        module.unet.compile(dynamic=False)
    ema = EMA(recipe.trainable, decay=config.ema_decay)
    # Training noise is drawn on the training device: CPU draws copied over every step would
    # make the host wait for the GPU. The same seed on every process: each draws the global
    # batch's noise and keeps its rows.
    gen = torch.Generator(device=accelerator.device).manual_seed(config.seed * 1000)
    shard = BatchShard(gen, rank, world)

    state = TrainingState(kind=config.kind, trainable=recipe.trainable, ema=ema, optimizer=optimizer,
                          scheduler=scheduler, generator=gen, identity={"model": model_cfg},
                          labels={"model": "with another model config"},
                          ignore=frozenset(f"model.{k}" for k in DATA_DERIVED_KEYS))
    step, epoch, in_epoch = 0, 0, 0
    if resuming:
        counters, _ = state.restore(out, main=accelerator.is_main_process)
        step, epoch, in_epoch = counters.step, counters.epoch, counters.next_batch_in_epoch
    # The LR scheduler stays outside prepare(): accelerate would step it once per process,
    # making the schedule depend on the number of GPUs; ours is a function of the step.
    module, optimizer = accelerator.prepare(module, optimizer)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(dataclasses.replace(config, model=model_cfg), out / "train_config.yaml")

    def save_checkpoint() -> Path:
        path = out / f"step_{step}"
        # The full model config sits at the top of config.json; keep only its name here.
        model_ref = model_cfg.name if isinstance(config.model, GeneratorConfig) else config.model
        named = dataclasses.replace(config, model=model_ref)
        extra = {"step": step, "kind": config.kind, "tasks": list(recipe.tasks), "train_config": to_dict(named),
                 "launch": launch_record(num_processes=world, batch_size=config.batch_size, lr=config.lr)}
        frames = recipe.calibration_frames(accelerator.unwrap_model(module))

        def write(state_writer: Callable[[Path], None]) -> None:
            recipe.save(path, module=accelerator.unwrap_model(module), ema=ema, extra=extra, frames=frames)
            state_writer(path)

        return state.save(path, Counters(step, epoch, in_epoch), write_checkpoint=write,
                          keep_last=config.keep_last, main=accelerator.is_main_process,
                          barrier=accelerator.wait_for_everyone)

    last_ckpt = last_checkpoint(out)
    metrics_path = out / "metrics.jsonl"
    acc: dict[str, Any] = {}
    n_acc = 0
    last_metrics: dict[str, float] = {}
    bar = tqdm(
        total=config.max_steps,
        initial=step,
        disable=not (config.progress and accelerator.is_main_process),
        desc=f"train {config.kind}",
        dynamic_ncols=True,
    )
    t_start = t_log = time.perf_counter()
    module.train()
    if config.kind == "generator":
        accelerator.unwrap_model(module).freeze_vaes()
    data = _batches(data_iter_factory, epoch=epoch, skip=in_epoch, rank=rank, world_size=world)
    out_of_time = False
    while step < config.max_steps and not out_of_time:
        epoch, idx, batch = next(data)
        in_epoch = idx + 1
        batch = to_device(batch, accelerator.device)
        with accelerator.autocast(), attention_backends(accelerator.device):
            loss, metrics = recipe.loss(module, batch, shard)
        metrics = optimizer_step(accelerator, loss, metrics, params=params, optimizer=optimizer,
                                 scheduler=scheduler, ema=ema, step=step, grad_clip=config.grad_clip,
                                 check_finite=False)
        step += 1
        # Metrics stay on the device until the next log (no host synchronisation per step).
        for k, v in metrics.items():
            acc[k] = acc[k] + v if k in acc else v
        n_acc += 1
        bar.update(1)
        over = config.max_time_s is not None and time.perf_counter() - t_start >= config.max_time_s
        # One process stops as soon as its time is up; several agree at a log step (below).
        if step % config.log_every == 0 or step == config.max_steps or (over and world == 1):
            now = time.perf_counter()
            keys = sorted(acc)
            vals = torch.stack([torch.as_tensor(acc[k], dtype=torch.float64, device=accelerator.device).reshape(())
                                for k in keys] + [torch.tensor(float(over), dtype=torch.float64,
                                                               device=accelerator.device)])
            # Average over processes too (every rank logs at the same steps); the last entry is
            # positive when any process is out of time, and then they all stop at this step.
            vals = accelerator.reduce(vals, "mean").tolist()
            out_of_time = vals[-1] > 0
            last_metrics = dict(zip(keys, (v / n_acc for v in vals[:-1])))
            if not math.isfinite(last_metrics.get("loss", 0.0)):
                raise FloatingPointError(
                    f"non-finite loss in steps {step - n_acc + 1}..{step}: {last_metrics}; the last "
                    f"checkpoint ({last_ckpt}) is from before them")
            rec = {
                "step": step,
                "epoch": epoch,
                "lr": scheduler.get_last_lr()[0],
                "s_per_step": (now - t_log) / n_acc,
            }
            rec.update(last_metrics)
            if accelerator.is_main_process:
                with metrics_path.open("a") as fh:
                    fh.write(json.dumps(rec) + "\n")
            bar.set_postfix(loss=f"{last_metrics.get('loss', float('nan')):.4f}")
            acc, n_acc, t_log = {}, 0, now
        if step % config.ckpt_every == 0 or step == config.max_steps or out_of_time:
            last_ckpt = save_checkpoint()
    bar.close()
    if last_ckpt is None:
        last_ckpt = save_checkpoint()
    return TrainResult(out_dir=out, checkpoint=last_ckpt, step=step, metrics=last_metrics)


CODEC_CALIBRATION_BATCHES = 8
"""Batches whose frames measure a patch codec's latent normalisation."""


def _write_codec(config: TrainConfig, recipe: _Recipe, factory: DataIterFactory, out: Path,
                 accelerator: Any) -> TrainResult:
    """A patch codec's run: its latent normalisation measured on ``CODEC_CALIBRATION_BATCHES``
    batches (every process's frames), written as ``step_0`` (nothing to train)."""
    module, mc = recipe.module, recipe.model_cfg
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    gen = torch.Generator(device=device).manual_seed(config.seed * 1000)
    frames = []
    for _, batch in zip(range(CODEC_CALIBRATION_BATCHES), factory(epoch=0, rank=rank, world_size=world)):
        x, valid, _ = vae_frames(to_device(batch, device), kind=config.kind, max_images=config.vae_max_images,
                                 generator=gen, pointmap_range=tuple(mc.pointmap_range))
        frames.append((gather_rows(x), None if valid is None else gather_rows(valid)))
    shift, scale = module.vae.calibrate(frames, target_std=mc.edm.sigma_data)
    path = out / "step_0"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(dataclasses.replace(config, model=mc), out / "train_config.yaml")
        named = dataclasses.replace(config, model=mc.name if isinstance(config.model, GeneratorConfig) else config.model)
        extra = {"step": 0, "kind": config.kind, "tasks": list(recipe.tasks), "train_config": to_dict(named),
                 "calibration_frames": sum(int(x.shape[0]) for x, _ in frames)}
        module.vae.save_pretrained(path, extra={"training": extra, "tasks": list(recipe.tasks)})
        write_last(out, path.name)
    accelerator.wait_for_everyone()
    return TrainResult(out_dir=out, checkpoint=path, step=0, metrics={"shift_factor": shift, "scaling_factor": scale})


def load_trained(path: str | os.PathLike[str], *, device: str = "cpu") -> Generator4D | VAE:
    """Load whatever a run directory or step directory holds (generator or VAE)."""
    data = read_config_json(path)
    if data.get("format") == GENERATOR_FORMAT:
        return Generator4D.from_pretrained(path, device=device)
    return VAE.from_pretrained(path, device=device)

"""Training the Diffusion Policy baseline: recipe, data over collected datasets, loop, export.

Owns :class:`DiffusionPolicyTrainConfig` (``configs/policy/diffusion_policy_<size>.yaml``: the
network under ``model:``, the optimisation recipe at the top level), the data pipeline over one
:class:`~geo4d_policy.data.datasets.PolicyDataset` per dataset directory (a random pair of
training views per sample, one task per dataset, min/max statistics per task), the training
loop (:func:`train_diffusion_policy`) and the fp16 export of a trained checkpoint. ``geo4d-train
diffusion_policy`` (:func:`run_cli`) is its command line.

One model serves every task of its datasets (a learned task embedding), which keeps the
shipped checkpoint of the three tasks within the repository's size budget.

The loop follows :mod:`geo4d_policy.train.trainer` and reuses its helpers: AdamW, linear
warm-up then cosine decay, gradient clipping, an EMA of the weights (what checkpoints hold),
``accelerate`` (bf16 autocast on CUDA; ``accelerate launch`` for several GPUs), and the same
run-directory layout::

    out_dir/
      train_config.yaml        the resolved DiffusionPolicyTrainConfig of the latest (re)start
      metrics.jsonl            averaged loss/lr/s_per_step every ``log_every`` steps, and a
                               ``probe_*`` record per checkpoint (sampled-action errors in metres)
      last                     the name of the newest step directory
      step_<N>/
        config.json            model config, trained tasks, per-task normalisation statistics
        model.safetensors      EMA weights (DiffusionPolicyModel.from_pretrained loads it)
        training_state/        raw weights, EMA, optimizer, LR schedule, RNG states, counters

``resume=True`` restores all of it and re-enters the interrupted epoch at the next batch (the
loader starts there instead of reading and discarding the consumed batches), so a resumed run
reproduces an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from geo4d_policy.config import CONFIG_DIR, ConfigError, load_config, save_config, to_dict
from geo4d_policy.data.actions import normalize_minmax
from geo4d_policy.data.datasets import PolicyDataset, compute_normalization
from geo4d_policy.data.format import load_meta
from geo4d_policy.interface import canonical_task_name
from geo4d_policy.models.diffusion_policy import DiffusionPolicyConfig, DiffusionPolicyModel, parameter_counts
from geo4d_policy.models.shard import BatchShard
from geo4d_policy.train.config import OptimRecipe
from geo4d_policy.train.distributed import global_batch_rows, launch_record, make_accelerator
from geo4d_policy.train.ema import EMA
from geo4d_policy.train.state import Counters, TrainingState, check_run_dir, last_checkpoint
from geo4d_policy.train.trainer import TrainResult, lr_lambda, optimizer_step, to_device

log = logging.getLogger(__name__)

POLICY_CONFIG_DIR = CONFIG_DIR / "policy"
Batch = Mapping[str, Any]


@dataclasses.dataclass
class DiffusionPolicyTrainConfig(OptimRecipe):
    """A Diffusion Policy training run (the optimisation fields: :class:`OptimRecipe`, with DP's
    AdamW values; ``seed`` also draws the camera pairs, the shuffling, the crops and the noise).

    Attributes:
        model: the network (``model:`` section of the YAML).
        init_image_encoder: local weights file initialising the image encoder (its own keys or
            torchvision ResNet keys; see :mod:`geo4d_policy.models.diffusion_policy`). Never
            downloaded. Used on fresh starts only.
        batch_size: samples per step and process.
        num_workers: data-loader worker processes.
        probe_size: fixed training samples whose sampled actions are scored at each checkpoint.
        max_time_s: stop (with a checkpoint) at the first log step after this many seconds of
            this session; None runs to ``max_steps``.
        progress: show a progress bar.
    """

    max_steps: int = 30000
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    model: DiffusionPolicyConfig = dataclasses.field(default_factory=DiffusionPolicyConfig)
    init_image_encoder: str | None = None
    batch_size: int = 64
    num_workers: int = 4
    probe_size: int = 16
    max_time_s: float | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise ConfigError("DiffusionPolicyTrainConfig.batch_size must be >= 1")
        if self.num_workers < 0 or self.probe_size < 0:
            raise ConfigError("DiffusionPolicyTrainConfig: num_workers and probe_size must be >= 0")


def resolve_config_path(name_or_path: str | os.PathLike[str]) -> Path:
    """``tiny``/``small``/... -> ``configs/policy/diffusion_policy_<name>.yaml``; paths pass through."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        return p
    return POLICY_CONFIG_DIR / f"diffusion_policy_{name_or_path}.yaml"


def load_dp_train_config(name_or_path: str | os.PathLike[str], *, overrides: Mapping[str, Any] | None = None
                         ) -> DiffusionPolicyTrainConfig:
    """Load a recipe by size name or YAML path, with shallow top-level ``overrides``.

    Raises:
        ConfigError: no such file, unknown keys or wrong types (the message names them).
    """
    return load_config(DiffusionPolicyTrainConfig, resolve_config_path(name_or_path), overrides=dict(overrides or {}))


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


class _TaskSamples(torch.utils.data.Dataset):
    """A task's PolicyDataset samples, scaled with the task's statistics and tagged with its id."""

    def __init__(self, dataset: PolicyDataset, task_id: int, stats: Mapping[str, Any]) -> None:
        self.dataset, self.task_id, self.stats = dataset, task_id, stats

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sample = dict(self.dataset[i])
        sample["action"] = normalize_minmax(sample["action"], self.stats["action"])
        sample["state"] = normalize_minmax(sample["state"], self.stats["state"])
        sample["task_id"] = torch.tensor(self.task_id, dtype=torch.int64)
        return sample

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


class PolicyBatches(Protocol):
    """``f(epoch=, start=, rank=, world_size=)``: the batches of one epoch from batch ``start`` on."""

    def __call__(self, *, epoch: int, start: int, rank: int, world_size: int) -> Iterable[Batch]: ...


@dataclasses.dataclass
class PolicyTrainData:
    """What :func:`make_policy_data` builds.

    Attributes:
        batches: the per-epoch batch factory.
        dataset: all samples (tasks concatenated), normalised and tagged.
        tasks: canonical task of each distinct dataset task, in first-seen order.
        normalization: task -> ``{"action": {"min", "max"}, "state": {...}}`` over its datasets.
    """

    batches: PolicyBatches
    dataset: torch.utils.data.Dataset
    tasks: tuple[str, ...]
    normalization: dict[str, dict[str, Any]]


def _merge_stats(stats: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {kind: {"min": np.min([s[kind]["min"] for s in stats], axis=0).tolist(),
                   "max": np.max([s[kind]["max"] for s in stats], axis=0).tolist()}
            for kind in ("action", "state")}


def make_policy_data(data_dirs: Sequence[str | os.PathLike[str]], *, model: DiffusionPolicyConfig, batch_size: int,
                     num_workers: int, seed: int) -> PolicyTrainData:
    """Samples of every dataset in ``data_dirs`` (each one task) for ``model``'s layout.

    Datasets of the same task share min/max statistics (their union); each task keeps its own
    (the task embedding tells the network which scaling a sample uses).

    Raises:
        ValueError: a dataset's task is not in the model's task table.
        DatasetError: a directory is not a readable dataset.
    """
    from torch.utils.data import ConcatDataset, DataLoader, Subset

    metas = [(Path(d), load_meta(d)) for d in data_dirs]
    if not metas:
        raise ValueError("no dataset directories given")
    tasks = tuple(dict.fromkeys(canonical_task_name(m.task) for _, m in metas))
    unknown = [t for t in tasks if t not in model.tasks]
    if unknown:
        raise ValueError(f"dataset task(s) {unknown} are not in the model's task table {list(model.tasks)}")
    normalization = {t: _merge_stats([compute_normalization(d) for d, m in metas if canonical_task_name(m.task) == t])
                     for t in tasks}
    parts = []
    for d, meta in metas:
        task = canonical_task_name(meta.task)
        ds = PolicyDataset(d, horizon=model.horizon, n_obs_steps=model.n_obs_steps, obs_stride=model.obs_stride,
                           resolution=tuple(model.resolution), normalize=False, seed=seed)
        parts.append(_TaskSamples(ds, model.tasks.index(task), normalization[task]))
    dataset = ConcatDataset(parts)

    def batches(*, epoch: int, start: int, rank: int, world_size: int) -> Iterable[Batch]:
        for part in parts:
            part.set_epoch(epoch)
        g = torch.Generator().manual_seed(seed * 7919 + epoch)
        # This process's rows of whole global batches; resuming starts the loader at batch ``start``.
        order = global_batch_rows(torch.randperm(len(dataset), generator=g), batch_size, rank, world_size)
        order = order[start * batch_size:].tolist()
        return DataLoader(Subset(dataset, order), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                          drop_last=True, pin_memory=torch.cuda.is_available())

    return PolicyTrainData(batches, dataset, tasks, normalization)


def _stream(batches: PolicyBatches, *, epoch: int, start: int, rank: int, world_size: int
            ) -> Iterator[tuple[int, int, Batch]]:
    """(epoch, index in epoch, batch) forever, from batch ``start`` of ``epoch``."""
    while True:
        n = 0
        for i, batch in enumerate(batches(epoch=epoch, start=start, rank=rank, world_size=world_size), start=start):
            n += 1
            yield epoch, i, batch
        if n == 0 and start == 0:
            raise RuntimeError(f"no complete batch in epoch {epoch}: fewer samples than the batch size?")
        epoch, start = epoch + 1, 0


# --------------------------------------------------------------------------------------------
# Probe: sampled actions against the demonstrations, in metres
# --------------------------------------------------------------------------------------------


def _probe_batch(dataset: torch.utils.data.Dataset, n: int) -> dict[str, Any] | None:
    if n == 0 or len(dataset) == 0:
        return None
    from torch.utils.data import default_collate

    idx = np.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().astype(int)
    return default_collate([dataset[int(i)] for i in idx])


@torch.no_grad()
def probe_errors(model: DiffusionPolicyModel, batch: Batch, *, seed: int = 0) -> dict[str, float]:
    """Mean errors of sampled (executed) actions against a batch's demonstrated ones.

    Returns:
        ``probe_pos_err_m`` (flange position, metres, both arms), ``probe_width_err_m`` and
        ``probe_action_mse`` (normalised units), over the first ``n_action_steps`` actions.
    """
    cfg = model.config
    was_training = model.training
    model.eval()
    try:
        dev = model.device
        task_ids = batch["task_id"].to(dev)
        cond = model.encode_observations(batch["rgb"].to(dev), batch["state"].to(dev), task_ids)
        pred = model.sample(cond, generator=torch.Generator().manual_seed(seed)).float().cpu()
    finally:
        model.train(was_training)
    k = cfg.n_action_steps
    true = batch["action"][:, :k].float()
    pred = pred[:, :k]
    mse = float(((pred - true) ** 2).mean())
    tasks = [cfg.tasks[int(i)] for i in batch["task_id"]]
    p = np.stack([model.denormalize("action", pred[i].numpy(), task=t) for i, t in enumerate(tasks)])
    q = np.stack([model.denormalize("action", true[i].numpy(), task=t) for i, t in enumerate(tasks)])
    arms = cfg.action_dim // 10
    pos = [np.linalg.norm(p[..., 10 * a:10 * a + 3] - q[..., 10 * a:10 * a + 3], axis=-1).mean() for a in range(arms)]
    width = [np.abs(p[..., 10 * a + 9] - q[..., 10 * a + 9]).mean() for a in range(arms)]
    return {"probe_pos_err_m": float(np.mean(pos)), "probe_width_err_m": float(np.mean(width)),
            "probe_action_mse": mse}


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def train_diffusion_policy(
    config: DiffusionPolicyTrainConfig,
    *,
    data_dirs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    resume: bool = False,
) -> TrainResult:
    """Train a Diffusion Policy on the datasets ``data_dirs`` and write checkpoints to ``out_dir``.

    Args:
        config: the recipe.
        data_dirs: dataset directories (``geo4d-collect``); their tasks become the model's
            trained tasks.
        out_dir: run directory (created).
        resume: continue from ``out_dir/last`` (weights, EMA, optimizer, schedule, RNG, data
            position) when it exists, else start fresh; without it an existing run is refused.

    Returns:
        :class:`~geo4d_policy.train.trainer.TrainResult` (last checkpoint, step, last metrics).

    Raises:
        FileExistsError: ``out_dir`` holds a run and ``resume`` is False.
        CheckpointError: resuming a run of another model config, other tasks or other data.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    resuming = check_run_dir(out, resume=resume)
    accelerator = make_accelerator(config.mixed_precision)
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process

    data = make_policy_data(data_dirs, model=config.model, batch_size=config.batch_size,
                            num_workers=config.num_workers, seed=config.seed)
    torch.manual_seed(config.seed)
    model = DiffusionPolicyModel(config.model, trained_tasks=data.tasks, normalization=data.normalization)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=tuple(config.betas), eps=config.eps,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
    gen = torch.Generator().manual_seed(config.seed * 1000)  # the same on every process (BatchShard)

    if config.init_image_encoder is not None and not resuming:
        report = model.encoder.load_pretrained(config.init_image_encoder)
        log.info("image encoder: %d tensors from %s", len(report["loaded"]), config.init_image_encoder)
    model.to(accelerator.device)
    ema = EMA(model, decay=config.ema_decay)
    data_label = ("on other data (other tasks, or other episodes: the normalisation statistics differ); "
                  "resume with the same datasets")
    state = TrainingState(kind="diffusion_policy", trainable=model, ema=ema, optimizer=optimizer, scheduler=scheduler,
                          generator=gen,
                          identity={"model": model.config, "tasks": list(data.tasks),
                                    "normalization": model.normalization},
                          labels={"model": "with another model config", "tasks": data_label,
                                  "normalization": data_label})
    step, epoch, in_epoch = 0, 0, 0
    if resuming:
        counters, _ = state.restore(out, main=main)
        step, epoch, in_epoch = counters.step, counters.epoch, counters.next_batch_in_epoch
    probe = _probe_batch(data.dataset, config.probe_size) if main else None
    # The LR schedule stays outside prepare() (a function of the step, whatever the GPU count).
    module, optimizer = accelerator.prepare(model, optimizer)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "train_config.yaml")
    n_params = parameter_counts(model)

    def save_checkpoint() -> Path:
        path = out / f"step_{step}"
        raw = accelerator.unwrap_model(module)

        def write(state_writer: Callable[[Path], None]) -> None:
            extra = {"training": {"step": step, "parameters": n_params, "train_config": to_dict(config),
                                  "data": [str(d) for d in data_dirs],
                                  "launch": launch_record(num_processes=world, batch_size=config.batch_size,
                                                          lr=config.lr)}}
            with ema.swapped():
                probe_metrics = probe_errors(raw, probe, seed=config.seed) if probe is not None else {}
                extra["training"]["probe"] = probe_metrics
                raw.save_pretrained(path, extra=extra, extra_writer=state_writer)
            if probe_metrics:
                with (out / "metrics.jsonl").open("a") as fh:
                    fh.write(json.dumps({"step": step, **probe_metrics}) + "\n")

        return state.save(path, Counters(step, epoch, in_epoch), write_checkpoint=write, keep_last=config.keep_last,
                          main=main, barrier=accelerator.wait_for_everyone)

    last_ckpt = last_checkpoint(out)
    acc: dict[str, float] = {}
    n_acc = 0
    last_metrics: dict[str, float] = {}
    bar = tqdm(total=config.max_steps, initial=step, disable=not (config.progress and main),
               desc="train diffusion_policy", dynamic_ncols=True)
    t_start = t_log = time.perf_counter()
    module.train()
    stream = _stream(data.batches, epoch=epoch, start=in_epoch, rank=rank, world_size=world)
    saved_at = step if resuming else -1
    while step < config.max_steps:
        epoch, idx, batch = next(stream)
        in_epoch = idx + 1
        batch = to_device(batch, accelerator.device)
        with accelerator.autocast():
            loss, metrics = module(batch, generator=BatchShard(gen, rank, world))
        metrics = optimizer_step(accelerator, loss, metrics, params=params, optimizer=optimizer,
                                 scheduler=scheduler, ema=ema, step=step, grad_clip=config.grad_clip)
        step += 1
        for k, v in metrics.items():
            acc[k] = acc.get(k, 0.0) + v
        n_acc += 1
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}")
        stop = False
        if step % config.log_every == 0 or step == config.max_steps:
            now = time.perf_counter()
            keys = sorted(acc)
            means = [acc[k] / n_acc for k in keys]
            over = config.max_time_s is not None and now - t_start > config.max_time_s
            # One reduction averages the metrics over processes and agrees on the time stop.
            vals = accelerator.reduce(torch.tensor([*means, float(over)], dtype=torch.float64,
                                                   device=accelerator.device), "mean").tolist()
            last_metrics = dict(zip(keys, vals[:-1]))
            stop = vals[-1] > 0
            rec = {"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0],
                   "s_per_step": (now - t_log) / n_acc, **last_metrics}
            if main:
                with (out / "metrics.jsonl").open("a") as fh:
                    fh.write(json.dumps(rec) + "\n")
            acc, n_acc, t_log = {}, 0, now
        if step % config.ckpt_every == 0 or step == config.max_steps or stop:
            last_ckpt = save_checkpoint()
            saved_at = step
        if stop:
            log.info("time budget of %.0f s reached at step %d", config.max_time_s, step)
            break
    bar.close()
    if last_ckpt is None or saved_at != step:
        last_ckpt = save_checkpoint()
    return TrainResult(out_dir=out, checkpoint=last_ckpt, step=step, metrics=last_metrics)


def export_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                      dtype: torch.dtype = torch.float16) -> Path:
    """Copy a run's (or step's) EMA weights to ``dst`` in ``dtype`` without training state (to ship)."""
    return DiffusionPolicyModel.export_pretrained(src, dst, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Command line (geo4d-train diffusion_policy)
# --------------------------------------------------------------------------------------------


def run_cli(args: Any) -> int:
    """Run ``geo4d-train diffusion_policy`` from parsed arguments; returns the exit status.

    Arguments used: ``data``, ``out``, ``config``, ``steps``, ``batch_size``, ``lr``,
    ``workers``, ``seed``, ``ckpt_every``, ``max_time``, ``init_image_encoder``, ``resume``,
    ``export``. Errors propagate to ``geo4d_policy.cli.train.main``, which maps them to exit codes.
    """
    overrides = {k: v for k, v in (("max_steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                                   ("num_workers", args.workers), ("seed", args.seed),
                                   ("ckpt_every", args.ckpt_every), ("max_time_s", args.max_time),
                                   ("init_image_encoder", args.init_image_encoder)) if v is not None}
    overrides["progress"] = sys.stderr.isatty() or bool(os.environ.get("GEO4D_PROGRESS"))
    config = load_dp_train_config(args.config, overrides=overrides)
    result = train_diffusion_policy(config, data_dirs=args.data, out_dir=args.out, resume=args.resume)
    if args.export:
        export_checkpoint(result.checkpoint, args.export)
        print(f"geo4d-train: exported fp16 weights to {args.export}")
    print(f"geo4d-train: done; last checkpoint {result.checkpoint} (step {result.step})")
    return 0

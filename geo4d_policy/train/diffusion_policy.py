"""Training the Diffusion Policy baseline: recipe, data over collected datasets, loop, export.

Owns :class:`DiffusionPolicyTrainConfig` (``configs/policy/diffusion_policy_<size>.yaml``: the
network under ``model:``, the optimisation recipe at the top level), the data pipeline over one
:class:`~geo4d_policy.data.datasets.PolicyDataset` per dataset directory (a random pair of
training views per sample, one task per dataset, min/max statistics per task, a fixed
``val_fraction`` of each dataset's episodes held out), the validation probe
(:func:`probe_errors`), the training loop (:func:`train_diffusion_policy`) and the export of a
trained checkpoint (fp16 or int8). ``geo4d-train diffusion_policy`` (:func:`run_cli`) is its
command line.

Data come either from DataLoader workers decoding the episode files, or, with
``frames_on_device`` (default on CUDA), from every decoded training frame held in GPU memory
(:class:`~geo4d_policy.train.dp_frames.PolicyFrameStore` over a
:class:`~geo4d_policy.data.frame_store.FrameStore`), so a step is not loader-bound. Either way a
step trains on a global batch drawn without the rank, each process keeping its rows
(:mod:`geo4d_policy.train.distributed`).

Training accumulates across machines that keep nothing: ``init_from`` starts a fresh run (new
optimizer, warm-up) from a shipped checkpoint's weights and normalisation, and the exported
``config.json`` carries the steps trained in total (``training.total_steps``).

One model serves every task of its datasets (a learned task embedding), which keeps the
shipped checkpoint of the three tasks within the repository's size budget.

The loop follows :mod:`geo4d_policy.train.trainer` and reuses its helpers: AdamW, linear
warm-up then cosine decay, gradient clipping, an EMA of the weights (what checkpoints hold),
``accelerate`` (bf16 autocast on CUDA; ``accelerate launch`` for several GPUs), and the same
run-directory layout::

    out_dir/
      train_config.yaml        the resolved DiffusionPolicyTrainConfig of the latest (re)start
      metrics.jsonl            averaged loss/lr/s_per_step every ``log_every`` steps, and a
                               probe record every ``probe_every`` steps: per-arm errors of
                               sampled actions (``val/left/pos_mm`` ..., see probe_errors)
      last                     the name of the newest step directory
      step_<N>/
        config.json            model config, trained tasks, per-task normalisation statistics
        model.safetensors      EMA weights (DiffusionPolicyModel.from_pretrained loads it)
        training_state/        raw weights, EMA, optimizer, LR schedule, RNG states, counters

``resume=True`` restores all of it and re-enters the interrupted epoch at the next batch (the
loader starts there instead of reading and discarding the consumed batches; device-held data
draws batch ``k`` from ``(seed, k)``), so a resumed run reproduces an uninterrupted one.
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
from geo4d_policy.data.actions import action_errors, normalize_minmax
from geo4d_policy.data.datasets import PolicyDataset, compute_normalization
from geo4d_policy.data.format import load_meta
from geo4d_policy.interface import ARM_NAMES, canonical_task_name
from geo4d_policy.models.checkpoint import CheckpointError
from geo4d_policy.models.diffusion_policy import DiffusionPolicyConfig, DiffusionPolicyModel, parameter_counts
from geo4d_policy.models.shard import BatchShard
from geo4d_policy.train.config import OptimRecipe
from geo4d_policy.train.distributed import global_batch_rows, launch_record, make_accelerator
from geo4d_policy.train.ema import EMA
from geo4d_policy.train.state import Counters, TrainingState, check_run_dir, last_checkpoint, stored_state
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
        init_from: a Diffusion Policy checkpoint (e.g. the shipped one) whose weights and
            normalisation a fresh run starts from (same model config and tasks); its
            ``training.total_steps`` is carried on. Used on fresh starts only.
        batch_size: samples per step and process.
        num_workers: data-loader worker processes (frame-store reader processes with
            ``frames_on_device``).
        probe_size: fixed samples per probe set whose sampled actions are scored (0: no probe).
        probe_every: steps between probes (default: ``ckpt_every``); every checkpoint probes.
        val_fraction: fraction of each dataset's episodes held out of training for the
            validation probe (every ``round(1 / val_fraction)``-th data seed; see
            :func:`split_episodes`).
        frames_on_device: hold every decoded training frame on the training device
            (:mod:`geo4d_policy.train.dp_frames`); None: on CUDA only.
        max_time_s: stop (with a checkpoint) at the first log step after this many seconds of
            this session, counted from its start (data loading included, so a time-boxed device
            call fits); None runs to ``max_steps``.
        progress: show a progress bar.
    """

    max_steps: int = 30000
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    model: DiffusionPolicyConfig = dataclasses.field(default_factory=DiffusionPolicyConfig)
    init_image_encoder: str | None = None
    init_from: str | None = None
    batch_size: int = 64
    num_workers: int = 4
    probe_size: int = 16
    probe_every: int | None = None
    val_fraction: float = 0.05
    frames_on_device: bool | None = None
    max_time_s: float | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise ConfigError("DiffusionPolicyTrainConfig.batch_size must be >= 1")
        if self.num_workers < 0 or self.probe_size < 0:
            raise ConfigError("DiffusionPolicyTrainConfig: num_workers and probe_size must be >= 0")
        if self.probe_every is not None and self.probe_every < 1:
            raise ConfigError(f"DiffusionPolicyTrainConfig: probe_every must be >= 1, got {self.probe_every}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"DiffusionPolicyTrainConfig: val_fraction must be in [0, 1), got {self.val_fraction}")


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
    """A task's PolicyDataset samples, scaled with the task's statistics and tagged with its id
    (``keep_raw``: also the unscaled actions as ``action_raw``, what a probe scores against)."""

    def __init__(self, dataset: PolicyDataset, task_id: int, stats: Mapping[str, Any], *,
                 keep_raw: bool = False) -> None:
        self.dataset, self.task_id, self.stats, self.keep_raw = dataset, task_id, stats, keep_raw

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sample = dict(self.dataset[i])
        if self.keep_raw:
            sample["action_raw"] = sample["action"]
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
        batches: the per-epoch batch factory (DataLoader workers).
        dataset: all training samples (tasks concatenated), normalised and tagged.
        parts: per dataset ``(PolicyDataset, task_id, stats)`` of the training episodes.
        tasks: canonical task of each distinct dataset task, in first-seen order.
        normalization: task -> ``{"action": {"min", "max"}, "state": {...}}`` over its datasets.
        probes: probe set name -> fixed normalised samples (``train``: training episodes and
            views; ``val``: held-out episodes, training views; ``val_novel``: held-out
            episodes, held-out views).
        val_seeds: dataset directory -> the seeds of its held-out episodes.
    """

    batches: PolicyBatches
    dataset: torch.utils.data.Dataset
    parts: list[tuple[PolicyDataset, int, dict[str, Any]]]
    tasks: tuple[str, ...]
    normalization: dict[str, dict[str, Any]]
    probes: dict[str, torch.utils.data.Dataset]
    val_seeds: dict[str, list[int]]


def _merge_stats(stats: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {kind: {"min": np.min([s[kind]["min"] for s in stats], axis=0).tolist(),
                   "max": np.max([s[kind]["max"] for s in stats], axis=0).tolist()}
            for kind in ("action", "state")}


def split_episodes(seeds: Sequence[int], fraction: float) -> tuple[list[int], list[int]]:
    """(training seeds, held-out seeds): every ``round(1 / fraction)``-th data seed is held out
    (``seed % k == k - 1``), so an episode stays on its side of the split however many episodes
    a dataset holds (collection may continue between training sessions). A dataset of two or more
    episodes none of which falls on that rule holds out its last one; a single episode is all
    training; ``fraction`` 0 holds out nothing."""
    seeds = list(seeds)
    if fraction <= 0 or len(seeds) < 2:
        return seeds, []
    k = max(2, round(1.0 / fraction))
    val = [s for s in seeds if s % k == k - 1] or seeds[-1:]
    if len(val) == len(seeds):
        val = val[-1:]
    return [s for s in seeds if s not in val], val


def sample_kwargs(model: DiffusionPolicyConfig, *, seed: int) -> dict[str, Any]:
    """The :class:`PolicyDataset` arguments of ``model``'s sample layout (unnormalised samples)."""
    return {"horizon": model.horizon, "n_obs_steps": model.n_obs_steps, "obs_stride": model.obs_stride,
            "resolution": tuple(model.resolution), "normalize": False, "seed": seed}


def heldout_probe_sets(data_dir: str | os.PathLike[str], model: DiffusionPolicyConfig, *, seeds: Sequence[int],
                       task_id: int, stats: Mapping[str, Any], seed: int) -> dict[str, torch.utils.data.Dataset]:
    """The probe sets of held-out episodes ``seeds``: ``val`` (training views) and, when the
    dataset has two held-out cameras, ``val_novel`` (held-out views); empty without seeds."""
    if not seeds:
        return {}
    kw = sample_kwargs(model, seed=seed)
    sets = {"val": _TaskSamples(PolicyDataset(data_dir, seeds=seeds, **kw), task_id, stats, keep_raw=True)}
    if len(load_meta(data_dir).heldout_indices) >= 2:
        sets["val_novel"] = _TaskSamples(PolicyDataset(data_dir, seeds=seeds, split="heldout", **kw), task_id, stats,
                                         keep_raw=True)
    return sets


def make_policy_data(data_dirs: Sequence[str | os.PathLike[str]], *, model: DiffusionPolicyConfig, batch_size: int,
                     num_workers: int, seed: int, val_fraction: float = 0.0,
                     normalization: Mapping[str, Mapping[str, Any]] | None = None) -> PolicyTrainData:
    """Samples of every dataset in ``data_dirs`` (each one task) for ``model``'s layout.

    Datasets of the same task share min/max statistics (their union, over all their episodes);
    each task keeps its own (the task embedding tells the network which scaling a sample uses).
    ``normalization`` (a checkpoint's, when continuing it) replaces the computed statistics of
    the tasks it covers.

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
    given = {canonical_task_name(t): v for t, v in (normalization or {}).items()}
    stats = {t: _merge_stats([given[t]] if t in given else
                             [compute_normalization(d) for d, m in metas if canonical_task_name(m.task) == t])
             for t in tasks}
    parts, probes = [], {"train": [], "val": [], "val_novel": []}
    val_seeds: dict[str, list[int]] = {}
    for d, meta in metas:
        task = canonical_task_name(meta.task)
        train, val = split_episodes([e.seed for e in meta.episodes], val_fraction)
        val_seeds[str(d)] = val
        tid = model.tasks.index(task)
        ds = PolicyDataset(d, seeds=train, **sample_kwargs(model, seed=seed))
        parts.append((ds, tid, stats[task]))
        probes["train"].append(_TaskSamples(ds, tid, stats[task], keep_raw=True))
        for name, probe in heldout_probe_sets(d, model, seeds=val, task_id=tid, stats=stats[task], seed=seed).items():
            probes[name].append(probe)
    dataset = ConcatDataset([_TaskSamples(*part) for part in parts])

    def batches(*, epoch: int, start: int, rank: int, world_size: int) -> Iterable[Batch]:
        for part, _, _ in parts:
            part.set_epoch(epoch)
        g = torch.Generator().manual_seed(seed * 7919 + epoch)
        # This process's rows of whole global batches; resuming starts the loader at batch ``start``.
        order = global_batch_rows(torch.randperm(len(dataset), generator=g), batch_size, rank, world_size)
        order = order[start * batch_size:].tolist()
        return DataLoader(Subset(dataset, order), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                          drop_last=True, pin_memory=torch.cuda.is_available())

    return PolicyTrainData(batches, dataset, parts, tasks, stats,
                           {k: ConcatDataset(v) for k, v in probes.items() if v}, val_seeds)


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
# Probe: sampled actions against the demonstrations, per arm, in mm and degrees
# --------------------------------------------------------------------------------------------


def probe_batch(dataset: torch.utils.data.Dataset, n: int) -> dict[str, Any] | None:
    """``n`` fixed samples of ``dataset`` (evenly spaced through it), collated; None if empty."""
    if n == 0 or len(dataset) == 0:
        return None
    from torch.utils.data import default_collate

    idx = np.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().astype(int)
    return default_collate([dataset[int(i)] for i in idx])


@torch.no_grad()
def probe_errors(model: DiffusionPolicyModel, batch: Batch, *, seed: int = 0,
                 actions: torch.Tensor | None = None) -> dict[str, float]:
    """Errors of sampled (executed) actions against a batch's demonstrated ones.

    Actions are compared in metric units over the first ``n_action_steps`` actions (what a
    rollout executes): the sampled ones denormalised with each sample's task statistics, against
    the recorded ones (``action_raw`` when the batch has it, else its normalised ``action``
    denormalised: then a held dimension's deviation from its constant is not seen).

    Args:
        model: the model (its EMA weights, when probing a training run).
        batch: normalised samples with ``task_id`` (:func:`probe_batch`).
        seed: seed of the sampling noise.
        actions: normalised actions to score instead of sampling them (the ground truth
            scores zero).

    Returns:
        ``<arm>/pos_mm``, ``<arm>/rot_deg``, ``<arm>/width_mm`` per arm
        (:func:`~geo4d_policy.data.actions.action_errors`) and ``action_mse`` (normalised units).
    """
    cfg = model.config
    if actions is None:
        was_training = model.training
        model.eval()
        try:
            dev = model.device
            cond = model.encode_observations(batch["rgb"].to(dev), batch["state"].to(dev), batch["task_id"].to(dev))
            actions = model.sample(cond, generator=torch.Generator().manual_seed(seed))
        finally:
            model.train(was_training)
    k = cfg.n_action_steps
    pred = actions.float().cpu()[:, :k]
    true = batch["action"][:, :k].float()
    tasks = [cfg.tasks[int(i)] for i in batch["task_id"]]
    p = np.stack([model.denormalize("action", pred[i].numpy(), task=t) for i, t in enumerate(tasks)])
    if "action_raw" in batch:
        q = batch["action_raw"][:, :k].double().numpy()
    else:
        q = np.stack([model.denormalize("action", true[i].numpy(), task=t) for i, t in enumerate(tasks)])
    return {**action_errors(p, q, arms=ARM_NAMES), "action_mse": float(((pred - true) ** 2).mean())}


def run_probes(model: DiffusionPolicyModel, batches: Mapping[str, Batch | None], *, seed: int) -> dict[str, float]:
    """:func:`probe_errors` of every probe set, keys prefixed ``<set>/``."""
    out: dict[str, float] = {}
    for name, batch in batches.items():
        if batch is not None:
            out.update({f"{name}/{k}": v for k, v in probe_errors(model, batch, seed=seed).items()})
    return out


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def _load_init(config: DiffusionPolicyTrainConfig) -> DiffusionPolicyModel | None:
    """``init_from``'s model (refused unless its config is the recipe's), or None without one."""
    if config.init_from is None:
        return None
    return DiffusionPolicyModel.from_pretrained(config.init_from, config=config.model)


def _steps_trained(model: DiffusionPolicyModel) -> int:
    """The steps a loaded checkpoint was trained for in total (its own run's and those it continued)."""
    info = model.training_record or {}
    return int(info.get("total_steps", info.get("step", 0)))


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
        CheckpointError: resuming a run of another model config, other tasks or other data;
            ``init_from`` of another config or other tasks.
    """
    from tqdm.auto import tqdm

    t_session = time.perf_counter()  # max_time_s counts data loading too (a device call's budget)
    out = Path(out_dir)
    resuming = check_run_dir(out, resume=resume)
    accelerator = make_accelerator(config.mixed_precision)
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process

    # A run started from a checkpoint keeps that checkpoint's scaling (also when resumed); any
    # other run computes it from the data (and a resumed one compares it with its own: other data
    # is refused).
    stored = stored_state(out) if resuming else {}
    init = None if resuming else _load_init(config)
    init_from = stored.get("init_from") if resuming else config.init_from
    init_total = int(stored.get("init_total_steps") or 0) if resuming else (_steps_trained(init) if init else 0)
    init_norm = (stored.get("normalization") if resuming else init.normalization) if init_from else None
    data = make_policy_data(data_dirs, model=config.model, batch_size=config.batch_size,
                            num_workers=config.num_workers, seed=config.seed, val_fraction=config.val_fraction,
                            normalization=init_norm)
    torch.manual_seed(config.seed)
    model = DiffusionPolicyModel(config.model, trained_tasks=data.tasks, normalization=data.normalization)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=tuple(config.betas), eps=config.eps,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
    gen = torch.Generator().manual_seed(config.seed * 1000)  # the same on every process (BatchShard)

    if init is not None:
        missing = [t for t in model.trained_tasks if t not in init.trained_tasks]
        if missing:
            raise CheckpointError(f"init_from {config.init_from} was trained on {list(init.trained_tasks)}, "
                                  f"not on {missing}")
        model.load_state_dict(init.state_dict())
        log.info("weights of %s (%d steps trained)", config.init_from, init_total)
    elif config.init_image_encoder is not None and not resuming:
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
    on_device = config.frames_on_device if config.frames_on_device is not None else torch.cuda.is_available()
    store = None
    if on_device:
        from geo4d_policy.train.dp_frames import PolicyFrameStore

        t0 = time.perf_counter()
        store = PolicyFrameStore(data.parts, resolution=tuple(config.model.resolution), device=accelerator.device,
                                 workers=config.num_workers)
        log.info("frames on the device: %s in %.0f s", store.describe(), time.perf_counter() - t0)
    probes = {name: probe_batch(ds, config.probe_size) for name, ds in data.probes.items()} if main else {}
    probe_every = config.probe_every or config.ckpt_every
    # The LR schedule stays outside prepare() (a function of the step, whatever the GPU count).
    module, optimizer = accelerator.prepare(model, optimizer)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "train_config.yaml")
    n_params = parameter_counts(model)
    last_probe: tuple[int, dict[str, float]] = (-1, {})

    def probe_now() -> dict[str, float]:
        """The probes of the current step (EMA weights), run once per step and logged; main process only."""
        nonlocal last_probe
        if last_probe[0] != step and main and probes:
            raw = accelerator.unwrap_model(module)
            with ema.swapped():
                metrics = run_probes(raw, probes, seed=config.seed)
            last_probe = (step, metrics)
            with (out / "metrics.jsonl").open("a") as fh:
                fh.write(json.dumps({"step": step, "total_steps": init_total + step, **metrics}) + "\n")
        return last_probe[1] if last_probe[0] == step else {}

    def save_checkpoint() -> Path:
        path = out / f"step_{step}"
        raw = accelerator.unwrap_model(module)

        def write(state_writer: Callable[[Path], None]) -> None:
            probe_metrics = probe_now()
            extra = {"training": {"step": step, "total_steps": init_total + step, "init_from": init_from,
                                  "parameters": n_params, "train_config": to_dict(config),
                                  "data": [str(d) for d in data_dirs], "val_seeds": data.val_seeds,
                                  "launch": launch_record(num_processes=world, batch_size=config.batch_size,
                                                          lr=config.lr),
                                  "probe": probe_metrics}}
            with ema.swapped():
                raw.save_pretrained(path, extra=extra, extra_writer=state_writer)

        return state.save(path, Counters(step, epoch, in_epoch), write_checkpoint=write, keep_last=config.keep_last,
                          main=main, barrier=accelerator.wait_for_everyone,
                          extra={"init_from": init_from, "init_total_steps": init_total})

    last_ckpt = last_checkpoint(out)
    acc: dict[str, float] = {}
    n_acc = 0
    last_metrics: dict[str, float] = {}
    bar = tqdm(total=config.max_steps, initial=step, disable=not (config.progress and main),
               desc="train diffusion_policy", dynamic_ncols=True)
    t_log = time.perf_counter()
    module.train()
    stream = None if store else _stream(data.batches, epoch=epoch, start=in_epoch, rank=rank, world_size=world)
    saved_at = step if resuming else -1
    while step < config.max_steps:
        if store is not None:
            # Global batch ``step`` drawn from (seed, step), never the rank; this process's rows.
            batch = store.batch(config.batch_size, seed=config.seed, step=step, rank=rank, world=world)
            epoch, in_epoch = (step + 1) * config.batch_size * world // len(store), 0
        else:
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
            over = config.max_time_s is not None and now - t_session > config.max_time_s
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
        if step % probe_every == 0 and step % config.ckpt_every and not stop and step != config.max_steps:
            probe_now()
            t_log = time.perf_counter()  # the probe's time is not a training step's
        if step % config.ckpt_every == 0 or step == config.max_steps or stop:
            last_ckpt = save_checkpoint()
            saved_at = step
            t_log = time.perf_counter()
        if stop:
            log.info("time budget of %.0f s reached at step %d", config.max_time_s, step)
            break
    bar.close()
    if last_ckpt is None or saved_at != step:
        last_ckpt = save_checkpoint()
    return TrainResult(out_dir=out, checkpoint=last_ckpt, step=step, metrics=last_metrics)


EXPORT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8, "fp32": torch.float32}
"""Storage dtypes of an exported checkpoint (int8: large matrices per-row quantised, the rest fp16)."""


def export_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                      dtype: torch.dtype = torch.float16) -> Path:
    """Copy a run's (or step's) EMA weights to ``dst`` in ``dtype`` (:data:`EXPORT_DTYPES`)
    without training state (to ship)."""
    return DiffusionPolicyModel.export_pretrained(src, dst, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Command line (geo4d-train diffusion_policy)
# --------------------------------------------------------------------------------------------


def run_cli(args: Any) -> int:
    """Run ``geo4d-train diffusion_policy`` from parsed arguments; returns the exit status.

    Arguments used: ``data``, ``out``, ``config``, ``steps``, ``batch_size``, ``lr``,
    ``workers``, ``seed``, ``ckpt_every``, ``max_time``, ``init_image_encoder``, ``init``,
    ``resume``, ``export``, ``export_dtype``. Errors propagate to
    ``geo4d_policy.cli.train.main``, which maps them to exit codes.
    """
    overrides = {k: v for k, v in (("max_steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                                   ("num_workers", args.workers), ("seed", args.seed),
                                   ("ckpt_every", args.ckpt_every), ("max_time_s", args.max_time),
                                   ("init_image_encoder", args.init_image_encoder),
                                   ("init_from", getattr(args, "init", None))) if v is not None}
    overrides["progress"] = sys.stderr.isatty() or bool(os.environ.get("GEO4D_PROGRESS"))
    config = load_dp_train_config(args.config, overrides=overrides)
    result = train_diffusion_policy(config, data_dirs=args.data, out_dir=args.out, resume=args.resume)
    from geo4d_policy.train.distributed import launch_state

    if args.export and launch_state().is_main_process:  # one writer under several processes
        kind = getattr(args, "export_dtype", None) or "fp16"
        export_checkpoint(result.checkpoint, args.export, dtype=EXPORT_DTYPES[kind])
        print(f"geo4d-train: exported {kind} weights to {args.export}")
    print(f"geo4d-train: done; last checkpoint {result.checkpoint} (step {result.step})")
    return 0

"""Multi-process training: the launch check, the accelerator of every trainer, collectives, the record.

``geo4d-train vae|generator|diffusion_policy`` run unchanged under ``accelerate launch --multi_gpu
--num_processes N -m geo4d_policy.cli.train ...`` (DDP; on a CPU-only host, ``torchrun`` or the
torch.distributed environment variables start gloo processes). The result does not depend on N:

* ``--batch-size`` is per process; every step trains on a global batch of ``batch_size x N``
  samples, drawn identically on every process from generators seeded by (seed, epoch), never by
  rank; process ``r`` keeps rows ``[r b, (r + 1) b)`` (:mod:`geo4d_policy.train.gpu_data`, the
  loaders of :mod:`geo4d_policy.cli.train` and the Diffusion Policy's).
* The training noise is drawn the same way (:class:`~geo4d_policy.models.shard.BatchShard`), and
  DDP's gradient average equals the global batch's gradient (losses are per-row means, or
  normalised over every process's rows: :func:`~geo4d_policy.models.shard.global_ratio`).
  So N processes of batch b reproduce one of batch N b up to floating-point reassociation, and a
  run resumes on another number of processes with the same global batch (one RNG file serves all:
  :mod:`geo4d_policy.train.state`).
* The learning rate is the recipe's whatever the global batch (no automatic scaling); the
  checkpoint's ``training.launch`` (:func:`launch_record`) states processes, batch per process,
  global batch and learning rate, and ``provenance.json`` compares the global batch on resuming.
* Only the main process writes (checkpoints, EMA weights, metrics, configs, provenance); metrics
  are averaged over processes when logged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch


class LaunchError(ValueError):
    """A multi-process launch this machine cannot run (e.g. more processes than GPUs)."""


def check_launch(env: Mapping[str, str] | None = None, *, cuda_devices: int | None = None) -> None:
    """Refuse a launch of more processes on this machine than it has visible GPUs.

    Reads the launcher's ``LOCAL_WORLD_SIZE`` / ``LOCAL_RANK`` (``accelerate launch``, ``torchrun``).
    CPU-only hosts (no CUDA device) may run any number of (gloo) processes.

    Args:
        env: the environment (default ``os.environ``).
        cuda_devices: visible CUDA devices (default ``torch.cuda.device_count()``).

    Raises:
        LaunchError: naming the numbers and the launch that fits.
    """
    env = os.environ if env is None else env
    local_world = int(env.get("LOCAL_WORLD_SIZE") or 0)
    local_rank = int(env.get("LOCAL_RANK") or -1)
    procs = max(local_world, local_rank + 1)
    if procs <= 1:
        return
    n = torch.cuda.device_count() if cuda_devices is None else int(cuda_devices)
    if n == 0 or procs <= n:
        return
    visible = env.get("CUDA_VISIBLE_DEVICES")
    raise LaunchError(
        f"{procs} training processes on this machine but {n} visible GPU{'s' if n != 1 else ''}"
        + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "")
        + f": one process per GPU; launch with --num_processes {n} or fewer "
        f"(accelerate launch --multi_gpu --num_processes {n} -m geo4d_policy.cli.train ...)")


def launch_state() -> Any:
    """accelerate's ``PartialState`` of this process (after :func:`check_launch`): its
    ``process_index``, ``num_processes``, ``device`` and ``is_main_process``; the process group
    is started on first use and shared with the trainers' ``Accelerator``."""
    check_launch()
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def make_accelerator(mixed_precision: str) -> Any:
    """The ``Accelerator`` of a training run: ``mixed_precision`` ``auto`` = bf16 on CUDA and fp32
    on the CPU; ``cpu=True`` on CPU-only hosts, so that launchers start gloo processes there."""
    check_launch()
    from accelerate import Accelerator

    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_available() else "no"
    return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())


def _group_world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every process's ``t`` concatenated along dim 0 in rank order (``t`` in one process).

    Row counts may differ between processes; trailing shapes and dtypes must agree. Every
    process must call it (a collective).
    """
    world = _group_world()
    if world == 1:
        return t
    import torch.distributed as dist

    n = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]
    x = t.contiguous().view(torch.uint8) if t.dtype == torch.bool else t.contiguous()
    padded = x.new_zeros((max(counts), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = torch.cat([p[:c] for p, c in zip(parts, counts)])
    return out.view(torch.bool) if t.dtype == torch.bool else out


def global_batch_rows(order: torch.Tensor, batch_size: int, rank: int, world: int) -> torch.Tensor:
    """This process's samples of an epoch's sample ``order`` cut into global batches of
    ``batch_size x world`` (whole batches only): rows ``[rank b, (rank + 1) b)`` of each, in order."""
    n = len(order) // (batch_size * world)
    return order[: n * batch_size * world].reshape(n, world, batch_size)[:, rank].reshape(-1)


def split_range(n: int, rank: int, world: int) -> range:
    """This process's contiguous share of ``range(n)`` (sizes differ by at most one)."""
    lo = n * rank // world
    return range(lo, n * (rank + 1) // world)


def launch_record(*, num_processes: int, batch_size: int | None, lr: float) -> dict[str, Any]:
    """What a run's checkpoints state about its launch (``training.launch``)."""
    return {"num_processes": int(num_processes), "batch_size_per_process": batch_size,
            "global_batch_size": None if batch_size is None else int(batch_size) * int(num_processes),
            "lr": float(lr), "lr_scaling": "none (the recipe's lr at any global batch)"}

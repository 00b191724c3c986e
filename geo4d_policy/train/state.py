"""Training state: the run directory every trainer writes and resumes from.

Owns the run-directory conventions shared by the generator/VAE trainer
(:mod:`geo4d_policy.train.trainer`), the Diffusion Policy trainer and the segmenter trainer::

    out_dir/
      last                     name of the newest complete step directory (replaced atomically)
      metrics.jsonl            the trainer's metrics; resuming drops lines past the resumed step
      step_<N>/                a loadable checkpoint (config.json + model.safetensors: EMA weights)
        training_state/
          raw.safetensors      the raw (non-EMA) trainable weights
          ema.safetensors      the EMA shadow weights
          optimizer.pt, scheduler.pt
          rng_0.pt             the RNG states (training generator, torch, numpy, python, CUDA)
          state.json           kind, step, epoch, next_batch_in_epoch, and the run's identity

The identity (model config, tasks, normalisation, class weights...) is what a resumed run must
share with the stored one: :meth:`TrainingState.restore` refuses a run of another kind or with
a differing identity entry, naming every differing key. ``last`` is written only after every
file of a step exists, so an interrupted save never becomes the resume point; older step
directories beyond ``keep_last`` are pruned after it.

Several processes (:mod:`geo4d_policy.train.distributed`): the main process writes everything.
Every process draws the same training numbers from the same generator (each keeps its rows of
the global batch), so the main process's RNG file restores every process of a resumed run,
whatever their number.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from geo4d_policy.config import to_dict
from geo4d_policy.models.checkpoint import LAST_POINTER, CheckpointError, state_dict_for_saving
from geo4d_policy.models.config import config_differences
from geo4d_policy.train.ema import EMA

log = logging.getLogger(__name__)

STATE_DIR = "training_state"
STATE_JSON = "state.json"
RNG_FILE = "rng_0.pt"
"""The RNG states (the name rank 0's file had when every process wrote its own: read the same way)."""


# --------------------------------------------------------------------------------------------
# Run directory
# --------------------------------------------------------------------------------------------


def check_run_dir(out_dir: Path, *, resume: bool) -> bool:
    """Whether a run in ``out_dir`` is resumed (``resume`` and a ``last`` pointer exist).

    Raises:
        FileExistsError: ``out_dir`` holds a run and ``resume`` is False.
    """
    exists = (out_dir / LAST_POINTER).exists()
    if exists and not resume:
        raise FileExistsError(f"{out_dir} already holds a training run: pass resume=True (--resume) "
                              "or use another directory")
    return exists and resume


def last_checkpoint(out_dir: Path) -> Path | None:
    """The step directory ``out_dir/last`` names, or None before the first checkpoint."""
    last = out_dir / LAST_POINTER
    return out_dir / last.read_text().strip() if last.exists() else None


def stored_state(out_dir: Path) -> dict[str, Any]:
    """The ``state.json`` of ``out_dir``'s ``last`` step (what a trainer reads before building its
    data, e.g. a run's starting checkpoint; :meth:`TrainingState.restore` checks and loads the rest).

    Raises:
        CheckpointError: ``out_dir`` holds no run.
    """
    step_dir = last_checkpoint(out_dir)
    if step_dir is None:
        raise CheckpointError(f"{out_dir} holds no training run to resume (no {LAST_POINTER} file)")
    return json.loads((step_dir / STATE_DIR / STATE_JSON).read_text())


def write_last(out_dir: Path, name: str) -> None:
    """Point ``out_dir/last`` at step directory ``name`` (atomically)."""
    tmp = out_dir / f".{LAST_POINTER}.tmp"
    tmp.write_text(name + "\n")
    os.replace(tmp, out_dir / LAST_POINTER)


def prune(out_dir: Path, keep: int, protect: Path) -> None:
    """Delete all but the newest ``keep`` step directories (never ``protect``)."""
    steps = sorted(
        (p for p in out_dir.glob("step_*") if p.is_dir() and p.name[5:].isdigit()),
        key=lambda p: int(p.name[5:]),
    )
    for p in steps[:-keep]:
        if p.resolve() != protect.resolve():
            shutil.rmtree(p, ignore_errors=True)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the metrics lines past ``step`` (written after the checkpoint a run resumes from)."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    keep = [ln for ln in lines if json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def rng_state(gen: torch.Generator) -> dict[str, Any]:
    """The training generator's and the global RNGs' states."""
    state = {
        "train_generator": gen.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    """Inverse of :func:`rng_state`."""
    gen.set_state(state["train_generator"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------
# The state of one training process
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Counters:
    """Where a run stands: optimizer steps taken, epoch, next batch of that epoch."""

    step: int = 0
    epoch: int = 0
    next_batch_in_epoch: int = 0


@dataclasses.dataclass
class TrainingState:
    """Everything a trainer saves beside a checkpoint and restores on resuming.

    Attributes:
        kind: the run's kind (``generator``, ``image_vae``, ``diffusion_policy``, ``segmenter``...).
        trainable: the module whose raw weights are saved (the optimizer's parameters).
        ema: the EMA of ``trainable``.
        optimizer, scheduler: the optimizer and its LR schedule.
        generator: the training RNG (the same on every process).
        identity: what a resumed run must share with the stored one (plain JSON values).
        labels: how a refusal phrases a differing identity entry (default ``with another KEY``).
        ignore: dotted identity keys left out of the comparison.
    """

    kind: str
    trainable: nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator
    identity: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    ignore: frozenset[str] = frozenset()

    def writer(self, counters: Counters, *, extra: Mapping[str, Any] | None = None) -> Callable[[Path], None]:
        """``f(step_dir)`` writing ``training_state/`` (for ``extra_writer``).

        The tensors and RNG states are copied now, so the writer may run after the weights move
        on (e.g. with the EMA weights swapped in); ``identity`` (plain values or config
        dataclasses) is read when it writes.
        """
        raw = state_dict_for_saving(self.trainable)
        ema = self.ema.state_dict()
        rng = rng_state(self.generator)

        def write(step_dir: Path) -> None:
            # The identity as it is when written (a VAE run measures its latent scales on saving).
            meta = {"kind": self.kind, **dataclasses.asdict(counters), **to_dict(dict(self.identity)),
                    **(extra or {})}
            d = Path(step_dir) / STATE_DIR
            d.mkdir(exist_ok=True)
            save_file(raw, str(d / "raw.safetensors"))
            save_file(ema, str(d / "ema.safetensors"))
            torch.save(self.optimizer.state_dict(), d / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), d / "scheduler.pt")
            torch.save(rng, d / RNG_FILE)
            (d / STATE_JSON).write_text(json.dumps(meta, indent=1) + "\n")

        return write

    def save(self, path: Path, counters: Counters, *, write_checkpoint: Callable[[Callable[[Path], None]], Any],
             keep_last: int, main: bool = True, barrier: Callable[[], Any] = lambda: None,
             extra: Mapping[str, Any] | None = None) -> Path:
        """Write step directory ``path`` completely, then point ``last`` at it and prune.

        Args:
            path: ``out_dir/step_<N>``.
            counters: where the run stands.
            write_checkpoint: ``f(state_writer)`` writing the loadable checkpoint at ``path``
                and calling ``state_writer(dir)`` on it (as ``save_pretrained``'s
                ``extra_writer``, or on ``path`` afterwards); called on the main process only.
            keep_last: step directories kept.
            main: whether this is the main process (the only one writing).
            barrier: waits for every process (``accelerator.wait_for_everyone``).
            extra: more ``state.json`` entries.
        """
        barrier()
        if main:
            write_checkpoint(self.writer(counters, extra=extra))
            write_last(path.parent, path.name)
            prune(path.parent, keep_last, path)
        barrier()
        return path

    def restore(self, out_dir: Path, *, main: bool = True) -> tuple[Counters, dict[str, Any]]:
        """Load the state of ``out_dir``'s ``last`` step into the trainable, EMA, optimizer,
        schedule and RNG; drop metrics lines past it (main process).

        Returns:
            The counters and the whole ``state.json``.

        Raises:
            CheckpointError: the run is of another kind, or its identity differs (every
                differing key named).
        """
        meta = stored_state(out_dir)
        d = last_checkpoint(out_dir) / STATE_DIR
        if meta.get("kind") != self.kind:
            raise CheckpointError(f"{out_dir} is a {meta.get('kind')} run, not a {self.kind} run")
        for key, value in self.identity.items():
            diff = config_differences(to_dict({key: value}), {key: meta.get(key)}, ignore=self.ignore)
            if diff:
                label = self.labels.get(key, f"with another {key}")
                raise CheckpointError(f"{out_dir} was trained {label}:\n  " + "\n  ".join(diff))
        self.trainable.load_state_dict(load_file(str(d / "raw.safetensors")))
        self.ema.load_state_dict(load_file(str(d / "ema.safetensors")))
        self.optimizer.load_state_dict(torch.load(d / "optimizer.pt", map_location="cpu", weights_only=True))
        self.scheduler.load_state_dict(torch.load(d / "scheduler.pt", weights_only=True))
        set_rng_state(torch.load(d / RNG_FILE, weights_only=False), self.generator)
        counters = Counters(meta["step"], meta["epoch"], meta["next_batch_in_epoch"])
        if main:
            truncate_metrics(out_dir / "metrics.jsonl", counters.step)
        log.info("resumed %s at step %d (epoch %d, batch %d)", out_dir, counters.step, counters.epoch,
                 counters.next_batch_in_epoch)
        return counters, meta

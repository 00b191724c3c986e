"""Checkpoint directories: ``config.json`` + ``model.safetensors``, written atomically.

Every saved model (VAE, generator, training step) is a directory holding

* ``config.json``: ``{"format": ..., "version": ..., ...}`` with the resolved model config, and
  for generators the trained task(s), the pointmap normalisation and the resolution;
* ``model.safetensors``: the weights (fp32 unless saved otherwise).

A training run's output directory additionally holds ``step_<N>/`` directories and a ``last``
file naming the newest one; :func:`resolve_checkpoint_dir` accepts either form.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LAST_POINTER = "last"


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or not the one that was asked for."""


def resolve_checkpoint_dir(path: str | os.PathLike[str]) -> Path:
    """The checkpoint directory for ``path``: itself, or the step named by its ``last`` file.

    Raises:
        CheckpointError: neither a checkpoint directory nor a run directory with ``last``.
    """
    p = Path(path)
    if (p / CONFIG_NAME).is_file():
        return p
    last = p / LAST_POINTER
    if last.is_file():
        q = p / last.read_text().strip()
        if (q / CONFIG_NAME).is_file():
            return q
        raise CheckpointError(f"{last} points to {q}, which is not a checkpoint directory")
    raise CheckpointError(
        f"{p} is not a checkpoint (no {CONFIG_NAME}) nor a run directory (no {LAST_POINTER})"
    )


def read_config_json(path: str | os.PathLike[str], *, expect_format: str | None = None) -> dict[str, Any]:
    """Read ``config.json`` of a checkpoint directory, checking its ``format`` field."""
    d = resolve_checkpoint_dir(path)
    data = json.loads((d / CONFIG_NAME).read_text())
    if expect_format is not None and data.get("format") != expect_format:
        raise CheckpointError(
            f"{d} holds a {data.get('format')!r} checkpoint, not a {expect_format!r} one"
        )
    return data


def load_weights(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors`` in a checkpoint directory."""
    d = resolve_checkpoint_dir(path)
    return load_file(str(d / WEIGHTS_NAME), device=str(device))


def state_dict_for_saving(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A safetensors-ready state dict: detached, contiguous CPU tensors that share no memory."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def write_checkpoint_dir(
    path: str | os.PathLike[str],
    config: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    *,
    extra_writer: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ whatever ``extra_writer`` adds) atomically.

    The directory is assembled next to its destination and renamed into place, so a crash
    never leaves a half-written checkpoint under the final name. An existing directory of the
    same name is replaced.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file(dict(tensors), str(tmp / WEIGHTS_NAME))
        if extra_writer is not None:
            extra_writer(tmp)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest

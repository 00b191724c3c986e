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


INT8_SCALE_SUFFIX = ".__int8_scale"
"""Key suffix of the per-row scales of a weight stored in int8 (see :func:`quantize_int8`)."""


def quantize_int8(tensors: Mapping[str, torch.Tensor], *, min_numel: int = 4096,
                  keep_prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Storage-only int8 quantisation: large float matrices as int8 with a per-output-row scale.

    Symmetric per-row (dim 0) scaling keeps every output channel's own range, which is what
    convolution and linear weights need; small tensors (norms, biases, embeddings under
    ``min_numel``) stay fp16. :func:`load_weights` dequantises transparently, so models run in
    floating point as before: this halves checkpoint size against fp16, it does not speed
    anything up. Tensors whose names start with one of ``keep_prefixes`` stay fp16 (e.g. the
    autoencoders, whose precision bounds every prediction).
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in tensors.items():
        if not v.is_floating_point():
            out[k] = v
        elif v.ndim >= 2 and v.numel() >= min_numel and not k.startswith(keep_prefixes):
            w = v.detach().float()
            scale = w.abs().reshape(len(w), -1).amax(dim=1).clamp_min(1e-12) / 127.0
            scale = scale.reshape(-1, *([1] * (w.ndim - 1)))
            out[k] = (w / scale).round().clamp(-127, 127).to(torch.int8).contiguous()
            out[k + INT8_SCALE_SUFFIX] = scale.to(torch.float32).contiguous()
        else:
            out[k] = v.to(torch.float16).contiguous()
    return out


def dequantize_int8(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`quantize_int8` (float32 for dequantised weights); other tensors pass."""
    out = {k: v for k, v in tensors.items() if not k.endswith(INT8_SCALE_SUFFIX)}
    for k, v in tensors.items():
        if k.endswith(INT8_SCALE_SUFFIX):
            name = k[: -len(INT8_SCALE_SUFFIX)]
            out[name] = tensors[name].float() * v.float()
    return out


def load_weights(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors`` in a checkpoint directory (int8-stored weights dequantised)."""
    d = resolve_checkpoint_dir(path)
    return dequantize_int8(load_file(str(d / WEIGHTS_NAME), device=str(device)))


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

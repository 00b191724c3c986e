"""Torch device names: what ``auto`` means for every CLI and policy of the package, and which names
this machine can serve."""

from __future__ import annotations

import re

DEVICE_CHOICES = "auto, cpu, cuda or cuda:<index>"


def is_device_name(device: str | None) -> bool:
    """Whether ``device`` is one of :data:`DEVICE_CHOICES` (a name, whatever this machine has)."""
    return device is None or device in ("auto", "cpu") or re.fullmatch(r"cuda(:\d+)?", str(device)) is not None


def resolve_device(device: str | None) -> str:
    """``"auto"``/None -> ``"cuda"`` when available, else ``"cpu"``; other names pass through."""
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def check_device(device: str | None) -> str:
    """The resolved device, refusing a name this machine cannot serve.

    Raises:
        ValueError: an unknown name, or a CUDA device torch does not see (the message says what
            torch sees and the choices).
    """
    if not is_device_name(device):
        raise ValueError(f"device must be {DEVICE_CHOICES}, got {device!r}")
    name = resolve_device(device)
    if name == "cpu":
        return name
    import torch

    if not torch.cuda.is_available():
        built = "built without CUDA" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU visible"
        raise ValueError(f"device {name!r} asked for, but this machine has no usable GPU (torch {torch.__version__}, "
                         f"{built}); use cpu")
    index = int(name.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} asked for, but torch sees {torch.cuda.device_count()} GPU(s) "
                         f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return name

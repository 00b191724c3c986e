"""Torch device names: what ``auto`` means for every CLI and policy of the package."""

from __future__ import annotations


def resolve_device(device: str | None) -> str:
    """``"auto"``/None -> ``"cuda"`` when available, else ``"cpu"``; other names pass through."""
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)

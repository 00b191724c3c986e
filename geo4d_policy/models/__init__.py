"""The geometry-aware 4D generator: VAEs, the two-view spatio-temporal U-Net, EDM, the wrapper.

Modules: ``config`` (typed configs, no torch), ``inputs`` (invalid-point filling, resizing,
latent-grid masks), ``vae`` (image/pointmap VAEs), ``generator`` (``Geo4DUNet``), ``edm``
(preconditioning, loss, sampler, CFG), ``pipeline`` (``Generator4D``: predict), ``pretrained``
(``PretrainedModel``: save/load of every model family), ``checkpoint`` (checkpoint directories). Heavy imports (torch, diffusers) happen on first use
of the names below, so ``import geo4d_policy.models`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GeneratorConfig": "config",
    "VAEConfig": "config",
    "UNetConfig": "config",
    "EDMConfig": "config",
    "load_model_config": "config",
    "VAE": "vae",
    "Geo4DUNet": "generator",
    "Generator4D": "pipeline",
    "CheckpointError": "checkpoint",
    "PretrainedModel": "pretrained",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

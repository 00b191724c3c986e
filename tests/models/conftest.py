"""Fixtures of the model tests (helpers live in ``model_fixtures``)."""

from __future__ import annotations

import pytest
import torch

from model_fixtures import synthetic_batch, tiny_config
from geo4d_policy.models.config import GeneratorConfig


@pytest.fixture
def cfg() -> GeneratorConfig:
    return tiny_config()


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    return synthetic_batch(0)

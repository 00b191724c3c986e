"""Shared by the runner tests: the test doubles of ``fake_rollout_env`` on ``sys.path`` (spawned
episode workers inherit it and must import them too) and the ``fake_reach`` policy registered."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


@pytest.fixture
def fake_reach_policy():
    """Registers the policy double as ``fake_reach`` for one test."""
    import fake_rollout_env as fake

    from geo4d_policy.policies.registry import register_policy, unregister_policy

    register_policy("fake_reach", fake.POLICY_TARGET, replace=True)
    yield "fake_reach"
    unregister_policy("fake_reach")

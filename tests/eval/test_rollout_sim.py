"""Smoke test of the runner on the real Drake environment and scripted expert (slow: ~1 min)."""

import json
from pathlib import Path

import pytest

from geo4d_policy.eval.runner import RolloutConfig, run_rollouts


@pytest.mark.slow
def test_expert_episode_on_the_real_env(tmp_path):
    pytest.importorskip("pydrake")
    cfg = RolloutConfig(task="PlaceAppleFromBowlIntoBin", policy="expert", episodes=1, out_dir=str(tmp_path / "run"))
    summary = run_rollouts(cfg, show=False)
    record = json.loads((Path(cfg.out_dir) / "episodes.jsonl").read_text())
    assert summary.finished == 1
    assert record["failure_reason"] is None or not record["failure_reason"].startswith(("error", "worker")), record

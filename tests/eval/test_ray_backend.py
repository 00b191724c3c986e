"""Distributed rollouts on Ray: the same records as local workers, crashes and errors contained.

A private one-machine cluster (``ray_address="local"``) stands in for many machines; the
episodes use the test doubles of ``fake_rollout_env`` (no simulator).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import fake_rollout_env as fake

from geo4d_policy.eval.runner import RolloutConfig, RolloutConfigError, resolve_config, run_rollouts
from geo4d_policy.interface import eval_seed

TASK = "PutSpatulaOnTable"
HERE = Path(fake.__file__).resolve().parent


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="the optional Ray dependency (pip install -e '.[ray]')")
    # Ray's workers must import the test doubles: they inherit the driver's environment.
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), old) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


pytestmark = pytest.mark.usefixtures("fake_reach_policy")


def _records(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "episodes.jsonl").read_text().splitlines()]


def test_ray_run_matches_local_records_and_contains_failures(tmp_path, ray_cluster):
    options = {"raise_on_seeds": [eval_seed(0, 0)], "crash_on_seeds": [eval_seed(0, 2)]}
    cfg = RolloutConfig(task=TASK, policy="fake_reach", episodes=5, workers=2, out_dir=str(tmp_path / "ray"),
                        policy_options=options, ray_address="auto")
    summary = run_rollouts(cfg, env_factory=fake.ENV_FACTORY, show=False)
    recs = _records(cfg.out_dir)
    assert [r["episode_index"] for r in recs] == [0, 1, 2, 3, 4]
    assert recs[0]["failure_reason"] == f"error: ValueError: policy double asked to fail on seed {eval_seed(0, 0)}"
    assert recs[2]["failure_reason"].startswith("worker crashed")  # the process died; the run went on
    for i in (1, 3, 4):
        assert recs[i]["success"] == fake.expected_success(eval_seed(0, i))
    assert summary.finished == 5

    local = RolloutConfig(task=TASK, policy="fake_reach", episodes=5, workers=2, out_dir=str(tmp_path / "local"),
                          policy_options=options)
    run_rollouts(local, env_factory=fake.ENV_FACTORY, show=False)
    for a, b in zip(recs, _records(local.out_dir)):
        if a["episode_index"] != 2:  # crash reasons name the backend's way of noticing
            assert (a["seed"], a["success"], a["failure_reason"]) == (b["seed"], b["success"], b["failure_reason"])

    # Resume on Ray: nothing left to run, same summary.
    again = run_rollouts(RolloutConfig(**{**cfg.__dict__, "resume": True}), env_factory=fake.ENV_FACTORY, show=False)
    assert again.finished == 5 and again.successes == summary.successes


def test_ray_options_are_validated():
    with pytest.raises(RolloutConfigError, match="meshcat"):
        resolve_config(RolloutConfig(task=TASK, policy="fake_reach", meshcat=True, ray_address="auto"))
    with pytest.raises(RolloutConfigError, match="ray_gpus_per_episode"):
        resolve_config(RolloutConfig(task=TASK, policy="fake_reach", ray_address="auto", ray_gpus_per_episode=2))


def test_missing_ray_is_a_clear_error(monkeypatch):
    import builtins

    from geo4d_policy.eval import ray_backend

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ray_backend.RayUnavailableError, match=r"pip install -e '\.\[ray\]'"):
        ray_backend.import_ray()

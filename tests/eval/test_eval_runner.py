"""The rollout runner's mechanics with the test doubles of ``fake_rollout_env`` (no simulator).

Every episode is a spawned process (~0.3-1 s each here), so the runs are kept to a few episodes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import fake_rollout_env as fake

from geo4d_policy.eval.records import CORE_FIELDS
from geo4d_policy.eval.runner import RolloutConfig, RolloutConfigError, resolve_config, run_rollouts
from geo4d_policy.eval.stats import wilson_interval
from geo4d_policy.interface import UnknownNameError, dev_seed, eval_seed
from geo4d_policy.policies.registry import (
    PolicyUnavailableError,
    is_policy_available,
    register_policy,
    unregister_policy,
)

TASK = "PutSpatulaOnTable"


pytestmark = pytest.mark.usefixtures("fake_reach_policy")


def _config(tmp_path, **kw) -> RolloutConfig:
    kw.setdefault("out_dir", str(tmp_path / "run"))
    return RolloutConfig(task=TASK, policy="fake_reach", **kw)


def _records(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "episodes.jsonl").read_text().splitlines()]


def test_records_summary_video_with_parallel_workers(tmp_path):
    cfg = _config(tmp_path, episodes=4, workers=2, video=1)
    summary = run_rollouts(cfg, env_factory=fake.ENV_FACTORY, show=False)
    out = Path(cfg.out_dir)

    recs = _records(out)
    assert [r["episode_index"] for r in recs] == [0, 1, 2, 3]
    for i, r in enumerate(recs):
        assert set(CORE_FIELDS) <= set(r)
        assert (r["task"], r["policy"], r["seed"]) == (TASK, "fake_reach", eval_seed(0, i))
        assert r["success"] == fake.expected_success(r["seed"])
        assert r["duration_s"] > 0 and r["sim_time_s"] > 0
        assert r["failure_reason"] == (None if r["success"] else "target not reached at t_max")
        # diagnostics: env extras (last step), policy diagnostics, a shadowing extra renamed
        assert "distance_m" in r and r["replans"] == r["policy_calls"] >= 1 and r["extra_success"] == "shadowed"
    k = sum(r["success"] for r in recs)
    assert k == 3  # eval seeds 1e9+i: i=1 is the unreachable one (seed % 3 == 2)

    saved = json.loads((out / "summary.json").read_text())
    assert (saved["episodes"], saved["finished"], saved["successes"]) == (4, 4, 3)
    assert saved["success_rate"] == pytest.approx(0.75)
    assert saved["ci95"] == pytest.approx(list(wilson_interval(3, 4)))
    assert saved["failure_reasons"] == {"target not reached at t_max": 1}
    assert saved["wall_s"] > 0 and saved["mean_duration_s"] > 0 and saved["complete"] is True
    assert summary.successes == 3 and summary.ci95 == pytest.approx(wilson_interval(3, 4))

    assert yaml.safe_load((out / "config.yaml").read_text())["task"] == TASK
    assert sorted(p.name for p in (out / "videos").iterdir()) == [f"episode_0_seed_{eval_seed(0, 0)}.mp4"]
    assert recs[0]["video"] == f"videos/episode_0_seed_{eval_seed(0, 0)}.mp4" and "video" not in recs[1]


def test_resume_after_interruption_runs_only_missing_episodes(tmp_path):
    counter = tmp_path / "seeds_run.txt"
    cfg = _config(tmp_path, episodes=5, meshcat=True, runtime_options={"counter_file": str(counter)})
    finished = []

    def interrupt_after_three(record):
        finished.append(record["episode_index"])
        if len(finished) == 3:
            raise KeyboardInterrupt  # as if Ctrl-C arrived right after the third episode was saved

    with pytest.raises(KeyboardInterrupt):
        run_rollouts(cfg, env_factory=fake.ENV_FACTORY, show=False, on_episode=interrupt_after_three)
    assert [r["episode_index"] for r in _records(cfg.out_dir)] == [0, 1, 2]
    partial = json.loads((Path(cfg.out_dir) / "summary.json").read_text())
    assert (partial["finished"], partial["complete"]) == (3, False)

    # Same directory without --resume: refused, nothing touched.
    with pytest.raises(RolloutConfigError, match="--resume"):
        run_rollouts(cfg, env_factory=fake.ENV_FACTORY, show=False)
    # Resuming with another task / policy / seed: refused with the clashing keys named.
    register_policy("fake_reach_other", fake.POLICY_TARGET)
    try:
        for change, key in (({"policy": "fake_reach_other"}, "policy"), ({"seed": 1}, "seed"),
                            ({"task": "store_cereal_box_under_shelf"}, "task")):
            bad = RolloutConfig(**{**cfg.__dict__, "resume": True, **change})
            with pytest.raises(RolloutConfigError, match=f"different configuration.*{key}"):
                run_rollouts(bad, env_factory=fake.ENV_FACTORY, show=False)
    finally:
        unregister_policy("fake_reach_other")

    summary = run_rollouts(RolloutConfig(**{**cfg.__dict__, "resume": True}), env_factory=fake.ENV_FACTORY,
                           show=False)
    recs = _records(cfg.out_dir)
    assert [r["episode_index"] for r in recs] == [0, 1, 2, 3, 4]
    assert [r["seed"] for r in recs] == [eval_seed(0, i) for i in range(5)]
    runs = [int(s) for s in counter.read_text().split()]
    assert sorted(runs) == [eval_seed(0, i) for i in range(5)]  # every episode ran exactly once
    assert runs[3:] == [eval_seed(0, 3), eval_seed(0, 4)]  # the resumed session ran only the 2 missing
    assert summary.finished == 5 and summary.complete
    assert summary.wall_s >= partial["wall_s"]  # wall time accumulates over sessions
    assert sorted(p.name for p in (Path(cfg.out_dir) / "meshcat").iterdir()) == [
        f"episode_{i}.html" for i in range(5)]


def test_errors_and_crashes_fail_their_episode_only(tmp_path):
    policy_raises, worker_crashes = eval_seed(0, 0), eval_seed(0, 2)
    cfg = _config(tmp_path, episodes=4, workers=2,
                  policy_options={"raise_on_seeds": [policy_raises], "crash_on_seeds": [worker_crashes]})
    summary = run_rollouts(cfg, env_factory=fake.RAISING_ENV_FACTORY, show=False)
    recs = _records(cfg.out_dir)
    reasons = [r["failure_reason"] for r in recs]
    assert reasons[0] == f"error: ValueError: policy double asked to fail on seed {policy_raises}"
    assert reasons[1] == f"error: RuntimeError: fake env refuses seed {eval_seed(0, 1)}"
    assert reasons[2] == "worker crashed (exit code 3)"
    assert reasons[3] is None and recs[3]["success"] is True
    assert [r["success"] for r in recs] == [False, False, False, True]
    errors = Path(cfg.out_dir) / "errors"
    tb = (errors / f"{policy_raises}.txt").read_text()
    assert "Traceback" in tb and "policy double asked to fail" in tb
    assert (errors / f"{eval_seed(0, 1)}.txt").exists()
    assert summary.successes == 1 and sum(summary.failure_reasons.values()) == 3


def test_config_validation_refuses_before_running(tmp_path):
    with pytest.raises(UnknownNameError, match="PutSpatulaOnTable"):
        resolve_config(RolloutConfig(task="StackBlocks", policy="fake_reach"))
    with pytest.raises(UnknownNameError, match="expert"):
        resolve_config(RolloutConfig(task=TASK, policy="nope"))
    for kw, msg in (({"episodes": 0}, "episodes"), ({"episodes": -1}, "episodes"), ({"workers": 0}, "workers"),
                    ({"meshcat": True, "workers": 2}, "meshcat"), ({"video": -1}, "video"),
                    ({"device": "tpu"}, "device")):
        with pytest.raises(RolloutConfigError, match=msg):
            resolve_config(_config(tmp_path, **kw))
    resolved = resolve_config(RolloutConfig(task="put_spatula_on_table", policy="fake_reach", seed=3))
    assert resolved.task == TASK and resolved.out_dir == "runs/rollout/PutSpatulaOnTable/fake_reach/seed3"
    if not is_policy_available("geo4d"):
        with pytest.raises(PolicyUnavailableError, match="not available yet"):
            run_rollouts(RolloutConfig(task=TASK, out_dir=str(tmp_path / "g")), show=False)
        assert not (tmp_path / "g").exists()


def test_episode_timeout(tmp_path):
    cfg = _config(tmp_path, episodes=1, episode_timeout_s=1.5,
                  policy_options={"sleep_on_seeds": [eval_seed(0, 0)]})
    summary = run_rollouts(cfg, env_factory=fake.ENV_FACTORY, show=False)
    assert summary.failure_reasons == {"timeout after 1.5 s": 1}


def test_runtime_options_reach_the_policy_but_not_the_run_identity(tmp_path):
    """A shared server's address changes every session: a run must resume under a new one."""
    first = _config(tmp_path, episodes=1, runtime_options={"counter_file": str(tmp_path / "a.txt")})
    run_rollouts(first, env_factory=fake.ENV_FACTORY, show=False)
    assert (tmp_path / "a.txt").read_text().split() == [str(eval_seed(0, 0))]  # it got there
    saved = yaml.safe_load((Path(first.out_dir) / "config.yaml").read_text())
    assert saved["runtime_options"] == {} and saved["policy_options"] == {}
    assert "counter_file" not in json.dumps(_records(first.out_dir)[0]["provenance"])
    again = _config(tmp_path, episodes=2, resume=True, runtime_options={"counter_file": str(tmp_path / "b.txt")})
    summary = run_rollouts(again, env_factory=fake.ENV_FACTORY, show=False)
    assert summary.finished == 2 and (tmp_path / "b.txt").read_text().split() == [str(eval_seed(0, 1))]
    # A runtime option the factory does not take (or a setting given as one) is refused up front.
    for bad in ({"nope": 1}, {"raise_on_seeds": [1]}):
        with pytest.raises(RolloutConfigError, match="runtime option"):
            run_rollouts(_config(tmp_path, episodes=1, out_dir=str(tmp_path / "r2"), runtime_options=bad),
                         env_factory=fake.ENV_FACTORY, show=False)


def test_sanity_controls_run_data_seeds_and_training_views(tmp_path):
    from geo4d_policy.eval.runner import default_out_dir
    from geo4d_policy.interface import data_seed

    cfg = _config(tmp_path, episodes=2, seed_stream="data", views="train")
    run_rollouts(cfg, env_factory=fake.ENV_FACTORY, show=False)
    recs = _records(cfg.out_dir)
    assert [r["seed"] for r in recs] == [data_seed(0, 0), data_seed(0, 1)] and {r["views"] for r in recs} == {"train"}
    saved = yaml.safe_load((Path(cfg.out_dir) / "config.yaml").read_text())
    assert saved["seed_stream"] == "data" and saved["views"] == "train"
    prov = json.loads((Path(cfg.out_dir) / "provenance.json").read_text())
    assert prov["seeds"]["seed_stream"] == "data" and prov["config"]["views"] == "train"
    # A control is part of the run's identity: resuming it as another one is refused.
    with pytest.raises(RolloutConfigError, match="views"):
        run_rollouts(_config(tmp_path, episodes=2, seed_stream="data", resume=True), env_factory=fake.ENV_FACTORY,
                     show=False)
    assert default_out_dir(TASK, "dp", 0, views="fixed-train", seed_stream="data").name == \
        "seed0_data-seeds_views-fixed-train"
    assert default_out_dir(TASK, "dp", 0).name == "seed0"
    with pytest.raises(UnknownNameError, match="heldout, train, fixed-train"):
        resolve_config(_config(tmp_path, views="novel"))


def test_dev_seed_stream_is_recorded_and_never_resumed_into_from_another_stream(tmp_path):
    with pytest.raises(UnknownNameError, match="unknown seed stream 'test'.*data, dev, eval"):
        resolve_config(_config(tmp_path, seed_stream="test"))
    assert resolve_config(RolloutConfig(task=TASK, policy="fake_reach", seed_stream="dev")).out_dir == \
        "runs/rollout/PutSpatulaOnTable/fake_reach/seed0_dev-seeds"

    cfg = _config(tmp_path, episodes=1, seed_stream="dev")
    summary = run_rollouts(cfg, env_factory=fake.ENV_FACTORY, show=False)
    out = Path(cfg.out_dir)
    assert [r["seed"] for r in _records(out)] == [dev_seed(0, 0)]
    assert summary.seed_stream == "dev" and json.loads((out / "summary.json").read_text())["seed_stream"] == "dev"
    assert yaml.safe_load((out / "config.yaml").read_text())["seed_stream"] == "dev"

    as_eval = _config(tmp_path, episodes=2, resume=True)  # default stream: eval
    with pytest.raises(RolloutConfigError, match="different configuration.*seed_stream"):
        run_rollouts(as_eval, env_factory=fake.ENV_FACTORY, show=False)
    (out / "config.yaml").unlink()  # even without the saved config the records tell the stream
    with pytest.raises(RolloutConfigError, match="dev seed stream, not on the requested eval stream"):
        run_rollouts(as_eval, env_factory=fake.ENV_FACTORY, show=False)
    assert [r["seed"] for r in _records(out)] == [dev_seed(0, 0)]  # nothing was touched


def test_placement_error_median_and_p90_in_the_summary():
    from geo4d_policy.eval.records import summarize

    records = [{"success": True, "duration_s": 1.0, "failure_reason": None, "placement_error_m": e}
               for e in (0.001, 0.002, 0.003, 0.004, float("nan"))]
    records.append({"success": False, "duration_s": 1.0, "failure_reason": "x"})  # e.g. a crashed worker
    s = summarize(records, task=TASK, policy="expert", episodes=6, wall_s=1.0)
    assert s.placement_error_median_m == pytest.approx(0.0025) and s.placement_error_p90_m == pytest.approx(0.0037)
    none = summarize(records[-1:], task=TASK, policy="expert", episodes=1, wall_s=1.0)
    assert none.placement_error_median_m is None and none.to_dict()["placement_error_p90_m"] is None

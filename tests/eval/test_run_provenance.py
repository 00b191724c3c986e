"""Provenance of rollout runs, resume refusals, policy options refused up front, lbm_eval's results.json.

The runs use the test doubles of ``fake_rollout_env`` (no simulator); the option checks of the
real policies need no simulator either (they happen before any episode).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import fake_rollout_env as fake

from geo4d_policy import provenance
from geo4d_policy.cli.rollout import main
from geo4d_policy.eval.lbm_results import EVALUATION_FIELDS, RESULT_FIELDS, validate_lbm_results
from geo4d_policy.eval.runner import RolloutConfig, RolloutConfigError, run_rollouts
from geo4d_policy.interface import eval_seed

TASK = "PutSpatulaOnTable"


pytestmark = pytest.mark.usefixtures("fake_reach_policy")


def _run(tmp_path, name, **kw) -> Path:
    cfg = RolloutConfig(task=TASK, policy="fake_reach", out_dir=str(tmp_path / name), **kw)
    run_rollouts(cfg, env_factory=fake.ENV_FACTORY, show=False)
    return Path(cfg.out_dir)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def test_records_of_runs_with_different_policy_options_differ_in_their_resolved_configuration(tmp_path):
    a = _run(tmp_path, "a", episodes=1)
    b = _run(tmp_path, "b", episodes=1, policy_options={"motion.approach": 0.5, "steps_per_chunk": 2})
    pa, pb = provenance.read_provenance(a), provenance.read_provenance(b)
    # Every setting is recorded, not only the options given.
    assert pa["config"]["policy_config"] == {"motion": {"steps_per_chunk": 3, "approach": 1.0},
                                             "raise_on_seeds": [], "crash_on_seeds": [], "sleep_on_seeds": []}
    assert pb["config"]["policy_config"]["motion"] == {"steps_per_chunk": 2, "approach": 0.5}
    assert provenance.differences(pa["config"], pb["config"]) == [
        "policy_config.motion.steps_per_chunk: 3 -> 2", "policy_config.motion.approach: 1.0 -> 0.5"]
    ra, rb = _records(a)[0], _records(b)[0]
    assert ra["provenance"]["config_digest"] == pa["config_digest"] != rb["provenance"]["config_digest"]
    assert pb["configs"][rb["provenance"]["config_digest"]] == pb["config"]  # a record leads to its settings
    # The rest of a record's provenance: code version, seeds and stream, device, packages.
    code = provenance.code_version()
    assert ra["provenance"]["commit"] == code["commit"] and ra["provenance"]["dirty"] == code["dirty"]
    assert pa["code"]["tree_sha256"] == code["tree_sha256"]
    assert pa["seeds"] == {"base_seed": 0, "seed_stream": "eval"} and ra["seed"] == eval_seed(0, 0)
    assert pa["device"]["requested"] == "cpu" and pa["device"]["cpu_count"] >= 1
    assert set(pa["packages"]) >= {"python", "torch", "drake", "numpy", "diffusers"}
    # The resolved settings are also saved as YAML that --policy-config takes back.
    assert yaml.safe_load((b / "policy_config.yaml").read_text()) == pb["config"]["policy_config"]
    saved = yaml.safe_load((a / "config.yaml").read_text())
    assert "out_dir" not in saved or saved["out_dir"] is None


def test_resume_with_other_settings_or_code_is_refused_naming_what_differs(tmp_path):
    cfg = RolloutConfig(task=TASK, policy="fake_reach", episodes=1, out_dir=str(tmp_path / "run"))
    run_rollouts(cfg, env_factory=fake.ENV_FACTORY, show=False)
    out = Path(cfg.out_dir)
    before = (out / "episodes.jsonl").read_text()
    changed = RolloutConfig(**{**cfg.__dict__, "episodes": 2, "resume": True,
                               "policy_options": {"motion.steps_per_chunk": 2}})
    with pytest.raises(RolloutConfigError, match=r"config\.policy_config\.motion\.steps_per_chunk: 3 -> 2") as e:
        run_rollouts(changed, env_factory=fake.ENV_FACTORY, show=False)
    assert "--resume-anyway" in str(e.value)
    assert (out / "episodes.jsonl").read_text() == before

    # Other code: the run's recorded code version differs from this checkout's.
    record = provenance.read_provenance(out)
    record["code"] = {**record["code"], "commit": "0" * 40, "dirty": False, "tree_sha256": "f" * 64}
    provenance.write_provenance(out, record)
    same = RolloutConfig(**{**cfg.__dict__, "episodes": 2, "resume": True})
    with pytest.raises(RolloutConfigError, match=r"code: 000000000000 \(tree ffffffff\) -> "):
        run_rollouts(same, env_factory=fake.ENV_FACTORY, show=False)

    # Told to continue anyway: it runs, and the new session records what it accepted.
    summary = run_rollouts(RolloutConfig(**{**changed.__dict__, "resume_anyway": True}),
                           env_factory=fake.ENV_FACTORY, show=False)
    assert summary.finished == 2
    record = provenance.read_provenance(out)
    accepted = record["sessions"][1]["resumed_anyway"]
    assert any(d.startswith("code: 000000000000") for d in accepted)
    assert "config.policy_config.motion.steps_per_chunk: 3 -> 2" in accepted
    first, second = _records(out)
    assert (first["provenance"]["session"], second["provenance"]["session"]) == (0, 1)
    assert record["configs"][second["provenance"]["config_digest"]]["policy_config"]["motion"]["steps_per_chunk"] == 2


def test_resume_refuses_a_run_of_another_seed_stream_or_without_provenance(tmp_path):
    out = _run(tmp_path, "run", episodes=1)
    config_yaml = out / "config.yaml"
    saved = yaml.safe_load(config_yaml.read_text())
    config_yaml.write_text(yaml.safe_dump({**saved, "seed_stream": "dev"}))
    again = RolloutConfig(task=TASK, policy="fake_reach", episodes=2, out_dir=str(out), resume=True,
                          resume_anyway=True)  # the stream is the run's identity: never resumed anyway
    with pytest.raises(RolloutConfigError, match="seed_stream: saved 'dev', requested 'eval'"):
        run_rollouts(again, env_factory=fake.ENV_FACTORY, show=False)
    config_yaml.write_text(yaml.safe_dump(saved))
    (out / "provenance.json").unlink()  # a run recorded before provenance existed
    with pytest.raises(RolloutConfigError, match="provenance.json is missing"):
        run_rollouts(RolloutConfig(**{**again.__dict__, "resume_anyway": False}), env_factory=fake.ENV_FACTORY,
                     show=False)
    assert run_rollouts(again, env_factory=fake.ENV_FACTORY, show=False).finished == 2


def test_unknown_or_mistyped_policy_options_exit_2_before_any_episode_with_the_valid_keys(tmp_path, capsys):
    base = ["--task", TASK, "--episodes", "1", "--env-factory", fake.ENV_FACTORY]
    code, text = _cli(capsys, *base, "--policy", "fake_reach", "--out", str(tmp_path / "f"),
                      "--policy-option", "foo=bar")
    assert code == 2 and "unknown fake_reach policy option 'foo'" in text
    assert "valid keys: motion.steps_per_chunk, motion.approach, raise_on_seeds" in text
    code, text = _cli(capsys, *base, "--policy", "fake_reach", "--out", str(tmp_path / "f"),
                      "--policy-option", "motion.steps_per_chunk=three")
    assert code == 2 and "motion.steps_per_chunk: expected an integer, got 'three'" in text
    # The real policies: the oracle lists its dotted keys; the expert takes none.
    code, text = _cli(capsys, *base, "--policy", "oracle", "--out", str(tmp_path / "o"), "--policy-option", "foo=bar")
    assert code == 2 and "unknown oracle policy option 'foo'" in text
    assert "video.release_backdate_frames" in text and "video.tracker.iterations" in text and "labels" in text
    code, text = _cli(capsys, *base, "--policy", "expert", "--out", str(tmp_path / "e"), "--policy-option", "foo=bar")
    assert code == 2 and "unknown expert policy option(s) ['foo']" in text and "takes no options" in text
    code, text = _cli(capsys, *base, "--policy", "oracle", "--out", str(tmp_path / "o"),
                      "--policy-option", "video.toggle_frames=two")
    assert code == 2 and "video.toggle_frames: expected an integer" in text
    assert not any((tmp_path / d).exists() for d in ("f", "o", "e"))  # no episode, no run directory


def test_policy_config_file_and_show(tmp_path, capsys):
    (tmp_path / "p.yaml").write_text("motion: {approach: 0.25}\n")
    code, text = _cli(capsys, "--task", TASK, "--episodes", "1", "--policy", "fake_reach", "--show-policy-config",
                      "--policy-config", str(tmp_path / "p.yaml"), "--policy-option", "steps_per_chunk=4")
    assert code == 0
    shown = yaml.safe_load(text)
    assert shown["motion"] == {"steps_per_chunk": 4, "approach": 0.25}
    (tmp_path / "bad.yaml").write_text("motion: {speed: 2}\n")
    code, text = _cli(capsys, "--task", TASK, "--episodes", "1", "--policy", "fake_reach",
                      "--policy-config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "r"))
    assert code == 2 and "unknown key(s) ['speed']" in text and not (tmp_path / "r").exists()


def test_results_json_of_a_finished_run_validates_against_lbm_evals_fields(tmp_path):
    out = _run(tmp_path, "run", episodes=3, workers=2)
    data = json.loads((out / "results.json").read_text())
    assert list(data) == list(RESULT_FIELDS)  # lbm_eval's order: the evaluations last
    assert validate_lbm_results(data) == []
    assert (data["num_processes"], data["num_requested_evaluations"], data["num_evaluated"]) == (2, 3, 3)
    assert data["elapsed_time"] > 0
    records = {r["episode_index"]: r for r in _records(out)}
    for e in data["evaluations"]:
        assert list(e) == list(EVALUATION_FIELDS)
        r = records[e["scenario_index"]]
        assert e["skill_type"] == TASK and e["is_pending"] is False and e["is_success"] == r["success"]
        assert e["total_time"] == pytest.approx(r["sim_time_s"])
        assert e["failure_message"] == r["failure_reason"]
    assert data["num_success"] == sum(r["success"] for r in records.values())
    assert data["success_rate"] == pytest.approx(data["num_success"] / 3)
    # A broken document is caught by the same check.
    assert validate_lbm_results({**data, "num_success": 99}) and validate_lbm_results({"evaluations": []})


def test_results_json_lists_unfinished_episodes_as_pending(tmp_path):
    cfg = RolloutConfig(task=TASK, policy="fake_reach", episodes=3, out_dir=str(tmp_path / "run"))

    def stop(record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_rollouts(cfg, env_factory=fake.ENV_FACTORY, show=False, on_episode=stop)
    data = json.loads((Path(cfg.out_dir) / "results.json").read_text())
    assert validate_lbm_results(data) == []
    assert [e["is_pending"] for e in data["evaluations"]] == [False, True, True]
    assert data["evaluations"][1]["is_success"] is None and data["num_evaluated"] == 1

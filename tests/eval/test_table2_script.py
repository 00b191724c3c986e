"""scripts/table2.py: the report's table (a row per policy, cells linking to their records) and
policy options refused before any cell starts."""

from __future__ import annotations

import json

import fake_rollout_env as fake
import pytest

from geo4d_policy.eval.runner import RolloutConfig, run_rollouts

TASK = "PutSpatulaOnTable"


@pytest.fixture(scope="module")
def table2(load_script):
    return load_script("table2")


@pytest.mark.usefixtures("fake_reach_policy")
def test_report_rows_are_policies_and_cells_link_to_their_records(table2, tmp_path, capsys):
    # A finished cell where table2 puts the expert's (the double stands in for the expert).
    run_rollouts(RolloutConfig(task=TASK, policy="fake_reach", episodes=3, out_dir=str(tmp_path / TASK / "expert")),
                 env_factory=fake.ENV_FACTORY, show=False)
    assert table2.main(["--out", str(tmp_path), "--report", "--tasks", TASK, "--policies", "expert", "geo4d"]) == 0
    md = (tmp_path / "table2.md").read_text()
    assert f"| expert | [2/3 [0.21, 0.94]]({TASK}/expert/) |" in md
    assert "| geo4d | - |" in md and "| paper: geo4d | 0.67 |" in md
    assert json.loads((tmp_path / "table2.json").read_text())[0]["successes"] == 2
    capsys.readouterr()


def test_bad_policy_options_stop_before_any_cell(table2, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        table2.main(["--out", str(tmp_path / "t2"), "--tasks", TASK, "--policies", "expert", "oracle",
                     "--policy-option", "oracle.video.tracker.nope=1"])
    assert e.value.code == 2
    assert "unknown oracle policy option 'video.tracker.nope'" in capsys.readouterr().err
    assert not (tmp_path / "t2").exists()


@pytest.mark.usefixtures("fake_reach_policy")
def test_the_seed_stream_is_checked_and_named_in_the_table(table2, tmp_path, capsys):
    with pytest.raises(SystemExit, match="unknown seed stream 'data'; valid seed streams: eval, dev"):
        table2.main(["--out", str(tmp_path / "t2"), "--tasks", TASK, "--seed-stream", "data"])
    run_rollouts(RolloutConfig(task=TASK, policy="fake_reach", episodes=1, seed_stream="dev",
                               out_dir=str(tmp_path / TASK / "expert")), env_factory=fake.ENV_FACTORY, show=False)
    assert table2.main(["--out", str(tmp_path), "--report", "--tasks", TASK, "--policies", "expert"]) == 0
    assert "dev seeds, novel views" in (tmp_path / "table2.md").read_text()
    assert json.loads((tmp_path / "table2.json").read_text())[0]["seed_stream"] == "dev"
    capsys.readouterr()

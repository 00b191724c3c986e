"""Episode records, summaries and the report table (no processes involved)."""

import json
import math

import numpy as np
import pytest
from rich.console import Console

from geo4d_policy.eval.records import (
    CORE_FIELDS,
    RecordError,
    jsonable,
    merge_extras,
    pool_summaries,
    read_records,
    summarize,
    write_records,
)
from geo4d_policy.eval.report import format_seconds, print_report
from geo4d_policy.eval.stats import wilson_interval


def _rec(i, success, reason=None, duration=1.0):
    return {"task": "PutSpatulaOnTable", "policy": "p", "seed": 100 + i, "episode_index": i, "success": success,
            "duration_s": duration, "sim_time_s": 2.0, "failure_reason": reason}


def test_jsonable_and_extras_never_shadow_core_fields():
    assert jsonable({"a": np.float32(1.5), "b": np.arange(2), "c": math.nan, "d": (1, np.int64(2))}) == {
        "a": 1.5, "b": [0, 1], "c": None, "d": [1, 2]}
    rec = merge_extras(_rec(0, True), {"success": False, "replans": np.int64(4)})
    assert rec["success"] is True and rec["extra_success"] is False and rec["replans"] == 4


def test_records_round_trip_sorted(tmp_path):
    path = tmp_path / "episodes.jsonl"
    write_records(path, [_rec(2, False, "x"), _rec(0, True)])
    lines = path.read_text().splitlines()
    assert [json.loads(line)["episode_index"] for line in lines] == [0, 2]
    assert read_records(path) == [_rec(0, True), _rec(2, False, "x")]
    assert read_records(tmp_path / "missing.jsonl") == []
    path.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(RecordError, match=":2"):
        read_records(path)
    path.write_text(json.dumps({k: 0 for k in CORE_FIELDS if k != "seed"}) + "\n")
    with pytest.raises(RecordError, match="seed"):
        read_records(path)


def test_summary_and_pooling():
    recs = [_rec(0, True, duration=1.0), _rec(1, False, "timeout", 3.0), _rec(2, False, "timeout", 2.0)]
    s = summarize(recs, task="PutSpatulaOnTable", policy="p", episodes=4, wall_s=10.0)
    assert (s.finished, s.successes, s.episodes, s.complete) == (3, 1, 4, False)
    assert s.success_rate == pytest.approx(1 / 3) and s.ci95 == wilson_interval(1, 3)
    assert s.mean_duration_s == pytest.approx(2.0) and s.failure_reasons == {"timeout": 2}
    d = s.to_dict()
    assert d["ci95"] == list(s.ci95) and d["complete"] is False
    empty = summarize([], task="t", policy="p", episodes=2, wall_s=0.0)
    assert empty.success_rate == 0.0 and empty.ci95 == (0.0, 1.0) and empty.mean_duration_s is None
    pooled = pool_summaries([s, summarize([_rec(0, True, duration=4.0)], task="B", policy="p", episodes=1, wall_s=1)])
    assert (pooled.finished, pooled.successes, pooled.task) == (4, 2, "overall")
    assert pooled.mean_duration_s == pytest.approx(2.5) and pooled.ci95 == wilson_interval(2, 4)


def test_report_table_mentions_everything():
    s = summarize([_rec(0, True), _rec(1, False, "apple not in bin at t_max")], task="PutSpatulaOnTable",
                  policy="expert", episodes=2, wall_s=75.0)
    console = Console(record=True, width=200)
    print_report([s], console=console)
    text = console.export_text()
    for needle in ("PutSpatulaOnTable", "expert", "50.0%", "95% CI", "1 min 15 s", "apple not in bin at t_max"):
        assert needle in text
    assert format_seconds(None) == "-" and format_seconds(3725) == "1 h 02 min"
    narrow = Console(record=True, width=60)  # too narrow for the wide table: one column per run
    print_report([s], console=narrow)
    text = narrow.export_text()
    assert "95% CI" in text and "[9.5%, 90.5%]" in text and max(len(line) for line in text.splitlines()) <= 60

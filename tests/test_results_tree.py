"""results/: every Table-2 cell of results/README.md matches the records it links to; only
records, summaries and configs are kept."""

from __future__ import annotations

import json
import re

import pytest

from geo4d_policy.config import REPO_ROOT
from geo4d_policy.eval.lbm_results import validate_lbm_results
from geo4d_policy.eval.records import read_records
from geo4d_policy.eval.stats import wilson_interval

RESULTS = REPO_ROOT / "results"
CELL = re.compile(r"\[(\d+)/(\d+) \[([0-9.]+), ([0-9.]+)\]\]\((table2/[A-Za-z]+/[a-z_0-9]+/)\)")


def test_every_table2_cell_matches_its_records():
    text = (RESULTS / "README.md").read_text()
    cells = CELL.findall(text)
    assert len(cells) == 15  # 5 policies x 3 tasks
    for k, n, lo, hi, link in cells:
        run = RESULTS / link
        records = read_records(run / "episodes.jsonl")
        summary = json.loads((run / "summary.json").read_text())
        assert (summary["successes"], summary["finished"]) == (int(k), int(n)), link
        assert sum(r["success"] for r in records) == int(k) and len(records) == int(n), link
        assert [round(x, 2) for x in wilson_interval(int(k), int(n))] == [float(lo), float(hi)], link
        assert validate_lbm_results(json.loads((run / "results.json").read_text())) == [], link


def test_links_resolve_and_only_records_are_kept():
    text = (RESULTS / "README.md").read_text()
    for link in re.findall(r"\]\(([^)#]+)\)", text):
        assert (RESULTS / link).exists(), link
    kept = {p.name for p in RESULTS.rglob("*") if p.is_file()}
    assert not [n for n in kept if n.endswith((".log", ".txt"))]
    assert not [p for p in RESULTS.rglob("errors") if p.is_dir()]
    if (REPO_ROOT / "assets" / "results").exists():
        pytest.fail("assets/ keeps models and checkpoints only; results go to results/")

"""The provenance helper: code version with and without git, differences, resume checks."""

from __future__ import annotations

import shutil

import pytest

from geo4d_policy import provenance
from geo4d_policy.config import REPO_ROOT


def test_code_version_of_this_checkout_and_of_a_copy_without_git(tmp_path, monkeypatch):
    here = provenance.code_version()
    if here["source"] != "git":
        pytest.skip("not run from a git checkout")
    assert len(here["commit"]) == 40 and isinstance(here["dirty"], bool)
    copy = tmp_path / "copy"
    for part in ("geo4d_policy", "sim", "configs"):
        shutil.copytree(REPO_ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.delenv(provenance.CODE_VERSION_ENV, raising=False)
    plain = provenance.code_version(copy)
    # Outside git: no commit, but the same code is recognised by its tree digest.
    assert plain["source"] == "none" and plain["commit"] is None and plain["dirty"] is None
    assert plain["tree_sha256"] == here["tree_sha256"]
    assert provenance.code_differences(here, plain) == []
    monkeypatch.setenv(provenance.CODE_VERSION_ENV, "abc123")
    assert provenance.code_version(copy)["commit"] == "abc123"
    (copy / "configs" / "tasks.yaml").write_text("{}\n")
    changed = provenance.code_version(copy)
    assert changed["tree_sha256"] != here["tree_sha256"]
    assert provenance.code_differences(here, changed)[0].startswith("code: ")


def test_differences_name_dotted_paths():
    a = {"x": 1, "y": {"z": [1, 2], "w": "a"}, "gone": 0}
    b = {"x": 1, "y": {"z": [1, 3], "w": "a"}, "new": 2}
    assert provenance.differences(a, b) == ["y.z: [1, 2] -> [1, 3]", "gone: 0 -> (absent)", "new: (absent) -> 2"]
    assert provenance.differences(a, a) == []


def test_start_provenance_records_sessions_and_refuses_other_settings(tmp_path):
    first = provenance.start_provenance(tmp_path, command="cmd", config={"a": 1}, seeds={"seed": 0})
    assert provenance.read_provenance(tmp_path) == first
    # An existing result without resume: nothing is written (the command refuses on its own).
    assert provenance.start_provenance(tmp_path, command="cmd", config={"a": 2}, seeds={"seed": 0},
                                       has_run=True) is None
    with pytest.raises(provenance.ProvenanceMismatch, match="config.a: 1 -> 2") as e:
        provenance.start_provenance(tmp_path, command="cmd", config={"a": 2}, seeds={"seed": 0}, has_run=True,
                                    resume=True)
    assert e.value.differences == ["config.a: 1 -> 2"]
    again = provenance.start_provenance(tmp_path, command="cmd", config={"a": 1}, seeds={"seed": 0}, has_run=True,
                                        resume=True)
    assert len(again["sessions"]) == 2 and again["sessions"][1]["resumed_anyway"] is None
    anyway = provenance.start_provenance(tmp_path, command="cmd", config={"a": 2}, seeds={"seed": 1}, has_run=True,
                                         resume=True, anyway=True)
    assert anyway["sessions"][2]["resumed_anyway"] == ["config.a: 1 -> 2", "seeds.seed: 0 -> 1"]
    assert set(anyway["configs"]) == {provenance.config_digest({"a": 1}), provenance.config_digest({"a": 2})}
    assert anyway["config"] == {"a": 1}  # the run's identity stays its first session's

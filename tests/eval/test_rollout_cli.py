"""``geo4d-rollout`` argument handling and exit codes; one small end-to-end run on the test doubles."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import fake_rollout_env as fake

from geo4d_policy.cli.rollout import main, parse_policy_options
from geo4d_policy.interface import data_seed
from geo4d_policy.policies.registry import register_policy, unregister_policy

TASK = "PutSpatulaOnTable"


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err + captured.out


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--task", "StackBlocks", "--episodes", "2", "--policy", "expert"],
         ["unknown task 'StackBlocks'", "PlaceAppleFromBowlIntoBin", "put_spatula_on_table"]),
        (["--task", TASK, "--episodes", "2", "--policy", "nope"],
         ["unknown policy 'nope'", "expert", "geo4d", "diffusion_policy"]),
        (["--task", TASK, "--episodes", "0", "--policy", "expert"], ["--episodes", "positive integer, got 0"]),
        (["--task", TASK, "--episodes", "-1", "--policy", "expert"], ["--episodes", "positive integer, got -1"]),
        (["--task", TASK, "--episodes", "x", "--policy", "expert"], ["--episodes"]),
        (["--task", TASK, "--episodes", "2", "--policy", "expert", "--workers", "0"], ["--workers"]),
        (["--task", TASK, "--episodes", "2", "--policy", "expert", "--workers", "2", "--meshcat"],
         ["--meshcat needs --workers 1"]),
        (["--task", TASK, "--episodes", "2", "--policy", "expert", "--device", "tpu"], ["--device"]),
        (["--task", TASK, "--episodes", "2", "--policy", "expert", "--policy-option", "novalue"], ["key=value"]),
        (["--episodes", "2"], ["--task"]),
        (["--task", TASK, "--episodes", "2", "--policy", "expert", "--views", "novel"],
         ["unknown evaluation views 'novel'", "heldout, train, fixed-train"]),
        (["--task", TASK, "--episodes", "2", "--policy", "expert", "--seed-stream", "test"],
         ["unknown seed stream 'test'", "data, dev, eval"]),
        (["--task", TASK, "--episodes", "2", "--policy", "expert", "--seed-stream", "dev", "--data-seeds"],
         ["--data-seeds is --seed-stream data"]),
    ],
)
def test_bad_input_exits_2_with_a_useful_message(capsys, argv, needles):
    code, text = _run(capsys, *argv)
    assert code == 2
    for needle in needles:
        assert needle in text


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_exits_2_before_any_episode(capsys, tmp_path, device):
    code, text = _run(capsys, "--task", TASK, "--episodes", "1", "--policy", "geo4d", "--device", device,
                      "--out", str(tmp_path / "r"))
    assert code == 2
    assert f"device '{device}' asked for, but this machine has no usable GPU" in text and "use cpu" in text
    assert not (tmp_path / "r").exists()


def test_geo4d_with_a_missing_checkpoint_exits_2_naming_path_and_fix(capsys, tmp_path):
    code, text = _run(capsys, "--task", TASK, "--episodes", "1", "--out", str(tmp_path / "r"),
                      "--policy-option", f"checkpoint={tmp_path / 'missing'}")
    assert code == 2
    assert f"no generator checkpoint at {tmp_path / 'missing'}" in text and "geo4d-train generator" in text
    assert not (tmp_path / "r" / "episodes.jsonl").exists()


@pytest.mark.parametrize(("option", "needles"), [
    ("segmenter={missing}", ["no gripper segmenter at {missing}", "geo4d-train segmenter", "segmenter=auto|none"]),
    ("labels=groundtruth", ["oracle.labels: 'groundtruth' is not one of ('segmenter', 'ground_truth', 'none')"]),
])
def test_oracle_with_bad_options_exits_2_before_any_episode(capsys, tmp_path, option, needles):
    missing = tmp_path / "missing"
    code, text = _run(capsys, "--task", TASK, "--episodes", "1", "--policy", "oracle", "--out", str(tmp_path / "r"),
                      "--policy-option", option.format(missing=missing))
    assert code == 2
    for needle in needles:
        assert needle.format(missing=missing) in text
    assert not (tmp_path / "r" / "episodes.jsonl").exists()


def test_geo4d_with_a_missing_segmenter_exits_2_before_any_episode(capsys, tmp_path):
    code, text = _run(capsys, "--task", TASK, "--episodes", "1", "--out", str(tmp_path / "r"),
                      "--policy-option", f"segmenter={tmp_path / 'missing'}")
    assert code == 2 and f"no gripper segmenter at {tmp_path / 'missing'}" in text
    assert not (tmp_path / "r" / "episodes.jsonl").exists()


def test_help_and_passive_omp(capsys, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    code, text = _run(capsys, "--help")
    assert code == 0 and "--policy-option" in text and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_parse_policy_options():
    assert parse_policy_options(["steps=25", "ckpt=a/b.pt", "guide=true", "scale=0.5", "ids=[1, 2]", "x="]) == {
        "steps": 25, "ckpt": "a/b.pt", "guide": True, "scale": 0.5, "ids": [1, 2], "x": ""}
    with pytest.raises(ValueError, match="twice"):
        parse_policy_options(["a=1", "a=2"])


def test_cli_end_to_end_refuse_resume_and_mismatch(capsys, tmp_path):
    register_policy("fake_reach", fake.POLICY_TARGET, replace=True)
    try:
        out = str(tmp_path / "run")
        base = ["--task", "put_spatula_on_table", "--policy", "fake_reach", "--env-factory", fake.ENV_FACTORY,
                "--out", out, "--runtime-option", f"counter_file={tmp_path / 'seeds.txt'}"]
        code, text = _run(capsys, *base, "--episodes", "2")
        assert code == 0, text
        assert "Rollout results" in text and "PutSpatulaOnTable" in text and "fake_reach" in text
        assert len((Path(out) / "episodes.jsonl").read_text().splitlines()) == 2
        assert json.loads((Path(out) / "summary.json").read_text())["finished"] == 2

        code, text = _run(capsys, *base, "--episodes", "2")
        assert code == 2 and "--resume" in text and "--out" in text

        code, text = _run(capsys, *base, "--episodes", "3", "--resume")  # extend the run by one episode
        assert code == 0, text
        assert len((tmp_path / "seeds.txt").read_text().split()) == 3  # earlier episodes were not re-run

        code, text = _run(capsys, *base, "--episodes", "3", "--resume", "--seed", "1")
        assert code == 2 and "different configuration" in text and "seed" in text

        # The sanity controls: --data-seeds is the data seed stream, --views the cameras shown.
        control = str(tmp_path / "control")
        code, text = _run(capsys, *base[:-4], "--out", control, "--episodes", "1", "--data-seeds", "--views", "train")
        assert code == 0, text
        rec = json.loads((Path(control) / "episodes.jsonl").read_text().splitlines()[0])
        assert rec["seed"] == data_seed(0, 0) and rec["views"] == "train"
    finally:
        unregister_policy("fake_reach")

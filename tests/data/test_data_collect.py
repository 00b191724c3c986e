"""geo4d-collect end to end on the real simulator (tiny images): collect -> verify -> load."""

import json

import pytest

from geo4d_policy.cli.collect import main as collect_main
from geo4d_policy.data.datasets import GeneratorClipDataset
from geo4d_policy.data.format import load_meta
from geo4d_policy.data.verify import verify_dataset
from geo4d_policy.interface import data_seed


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "apple"
    rc = collect_main(["--task", "place_apple_from_bowl_into_bin", "--episodes", "1", "--out", str(root),
                       "--resolution", "32x40", "--workers", "1"])
    assert rc == 0
    return root


def test_collect_verify_load_round_trip(collected):
    meta = load_meta(collected)
    assert meta.task == "PlaceAppleFromBowlIntoBin" and meta.resolution == (32, 40)
    assert [e.seed for e in meta.episodes] == [data_seed(0, 0)] and meta.episodes[0].success
    assert meta.episodes[0].n_frames >= 40  # about 25 s of expert motion at 2 Hz
    assert verify_dataset(collected).ok
    ds = GeneratorClipDataset(collected, split="train", seed=0)
    sample = ds[0]
    assert sample["rgb"].shape == (2, 10, 3, 32, 40)
    assert sample["pm"].shape == (2, 10, 3, 32, 40)
    assert int(sample["cams"][0]) != int(sample["cams"][1]) and max(sample["cams"]) < 12
    # Gripper masks come from the label images: some gripper pixels are visible somewhere.
    assert bool(sample["gripper"].any()) or bool(sample["gripper_cond"].any())
    held = GeneratorClipDataset(collected, split="heldout", seed=0)[0]
    assert min(held["cams"]) >= 12


def test_collect_refuses_other_task_and_existing_without_resume(collected, capsys):
    rc = collect_main(["--task", "PutSpatulaOnTable", "--episodes", "1", "--out", str(collected),
                       "--resolution", "32x40"])
    assert rc == 2 and "another dataset" in capsys.readouterr().err
    rc = collect_main(["--task", "PlaceAppleFromBowlIntoBin", "--episodes", "1", "--out", str(collected),
                       "--resolution", "32x40"])
    assert rc == 2 and "--resume" in capsys.readouterr().err


def test_collect_resume_runs_nothing_when_complete(collected):
    before = (collected / "collect_log.jsonl").read_text()
    rc = collect_main(["--task", "PlaceAppleFromBowlIntoBin", "--episodes", "1", "--out", str(collected),
                       "--resolution", "32x40", "--resume"])
    assert rc == 0 and (collected / "collect_log.jsonl").read_text() == before
    record = json.loads((collected / "provenance.json").read_text())
    assert record["config"] == {"task": "PlaceAppleFromBowlIntoBin", "resolution": [32, 40]}
    assert record["seeds"] == {"base_seed": 0, "seed_stream": "data"} and len(record["sessions"]) == 2


def test_collect_resume_with_other_settings_is_refused(collected, capsys):
    sessions = len(json.loads((collected / "provenance.json").read_text())["sessions"])
    rc = collect_main(["--task", "PlaceAppleFromBowlIntoBin", "--episodes", "2", "--out", str(collected),
                       "--resolution", "32x40", "--seed", "5", "--resume"])
    assert rc == 2 and "seeds.base_seed: 0 -> 5" in capsys.readouterr().err
    rc = collect_main(["--task", "PlaceAppleFromBowlIntoBin", "--episodes", "2", "--out", str(collected),
                       "--resolution", "32x40", "--seed-stream", "dev", "--resume", "--resume-anyway"])
    assert rc == 2 and "holds episodes of the data seed stream" in capsys.readouterr().err
    assert len(json.loads((collected / "provenance.json").read_text())["sessions"]) == sessions  # untouched
    rc = collect_main(["--task", "PlaceAppleFromBowlIntoBin", "--episodes", "1", "--out", str(collected),
                       "--resolution", "32x40", "--seed-stream", "eval", "--resume"])
    assert rc == 2 and "valid seed streams: data, dev" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["--episodes", "0"], ["--episodes", "-2"], ["--resolution", "30x40"]])
def test_collect_bad_input(tmp_path, bad, capsys):
    args = ["--task", "PlaceAppleFromBowlIntoBin", "--episodes", "1", "--out", str(tmp_path / "x"), *bad]
    try:
        rc = collect_main(args)
    except SystemExit as e:  # argparse rejects malformed values itself
        rc = e.code
    assert rc == 2

"""``geo4d-dataset info`` / ``verify``: broken files are named, exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from geo4d_policy.cli.dataset import main


def test_info_and_verify_ok(dataset_dir: Path, capsys):
    assert main(["info", str(dataset_dir), "--episodes"]) == 0
    out = capsys.readouterr().out
    assert "PlaceAppleFromBowlIntoBin" in out and "episodes      3" in out and "32x40" in out
    assert "cam12, cam13, cam14, cam15" in out and "episode_2.h5" in out
    assert main(["info", str(dataset_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_episodes"] == 3 and info["n_frames"] == 18 and info["n_successes"] == 2
    assert info["bytes_total"] >= sum(e["bytes"] for e in info["episodes"]) > 0
    assert main(["verify", str(dataset_dir)]) == 0
    assert "3 episode file(s)" in capsys.readouterr().out


def test_verify_names_truncated_and_corrupted_files(dataset_copy: Path, corrupt, capsys):
    ep = dataset_copy / "episodes"
    truncated = ep / "episode_0.h5"
    with open(truncated, "r+b") as fh:
        fh.truncate(os.path.getsize(truncated) // 2)
    corrupt(ep / "episode_1.h5", "cameras/cam03/depth_mm")
    assert main(["verify", str(dataset_copy)]) == 1
    out = capsys.readouterr().out
    assert f"BROKEN {truncated}" in out
    assert f"BROKEN {ep / 'episode_1.h5'}" in out and "cameras/cam03/depth_mm: unreadable" in out
    assert "episode_2.h5" not in out
    assert "2 broken file(s)" in out


def test_verify_names_inconsistent_datasets(dataset_copy: Path, capsys):
    path = dataset_copy / "episodes" / "episode_2.h5"
    with h5py.File(path, "r+") as f:
        del f["cameras/cam05/masks"]
        f.create_dataset("cameras/cam05/masks", data=np.zeros((6, 32, 41), np.uint8))  # wrong width
        m = f["cameras/cam06/masks"]
        m[0, 0, 0] = 0x80  # a bit no part uses
        f["robot/X_TG/left"][3, 0, 0] = np.nan
    assert main(["verify", str(dataset_copy), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    problems = "\n".join(report["problems"][str(path)])
    assert "cameras/cam05/masks: (6, 32, 41) uint8, expected (6, 32, 40) uint8" in problems
    assert "cameras/cam06/masks: values outside the defined part bits" in problems
    assert "robot/X_TG/left: NaN" in problems


def test_bad_input_is_an_error_message_not_a_traceback(tmp_path: Path, capsys):
    assert main(["info", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "no dataset" in err and "Traceback" not in err
    assert main(["verify", str(tmp_path / "nope")]) == 1
    assert "meta.json" in capsys.readouterr().out
    (tmp_path / "meta.json").write_text("{not json")
    assert main(["info", str(tmp_path)]) == 2
    assert "unreadable" in capsys.readouterr().err

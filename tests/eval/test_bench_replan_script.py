"""scripts/bench_replan.py: its paths are policy options the policies take, bad input exits 2
before any episode, and (slow) a real cell writes the documented JSON with its provenance."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from geo4d_policy.config import REPO_ROOT

TASKS = ["PutSpatulaOnTable", "StoreCerealBoxUnderShelf"]


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench_replan")


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_paths_differ_only_in_the_fast_replan_settings(bench, device):
    """Resolved as geo4d-rollout resolves them (no GPU needed to resolve a CUDA cell)."""
    configs = {}
    for path in bench.PATHS:
        for policy in bench.POLICIES:
            options, resolved = bench.resolve_cell(path, policy, device, TASKS)
            assert set(resolved) == set(TASKS)
            configs[path, policy] = resolved[TASKS[0]].config
    cuda = device == "cuda"
    for policy in bench.POLICIES:
        old, new = configs["old", policy], configs["new", policy]
        assert old.video.tracker.engine == "numpy"
        assert (new.video.tracker.engine, new.video.tracker.device) == (("torch", "cuda") if cuda else ("numpy", "cpu"))
    old, new = configs["old", "geo4d"], configs["new", "geo4d"]
    assert old.decode_frames is None and not old.compile_unet
    assert new.decode_frames == new.video.frames_to_track and new.compile_unet == cuda
    # Everything else is the shipped configs/policy/geo4d.yaml.
    same = dataclasses.replace(new, decode_frames=None, compile_unet=False,
                               video=dataclasses.replace(new.video, tracker=old.video.tracker))
    assert same == old


def test_num_steps_reaches_geo4d_only(bench):
    _, geo4d = bench.resolve_cell("new", "geo4d", "cpu", TASKS[:1], num_steps=7)
    options, _ = bench.resolve_cell("new", "oracle", "cpu", TASKS[:1], num_steps=7)
    assert geo4d[TASKS[0]].config.num_steps == 7 and "num_steps" not in options


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "NoSuchTask"], "unknown task 'NoSuchTask'"),
    (["--replans", "0"], "--replans and --concurrency must be >= 1"),
    (["--devices", "tpu"], "device must be auto, cpu, cuda or cuda:<index>"),
])
def test_bad_input_exits_2_before_any_episode(bench, tmp_path, capsys, argv, message):
    out = tmp_path / "bench.json"
    assert bench.main([*argv, "--json", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".provenance.json").exists()


def test_cuda_without_a_gpu_exits_2(bench, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert bench.main(["--devices", "cuda"]) == 2
    assert "no usable GPU" in capsys.readouterr().err


def _run(argv: list[str]) -> int:
    """The script as a command (its episode processes import it by name, as ``__mp_main__``)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "bench_replan.py"), *argv], env=env,
                          cwd=REPO_ROOT, timeout=600).returncode


@pytest.mark.slow
def test_a_cpu_cell_writes_the_documented_json(tmp_path):
    """One oracle cell on the CPU (real episodes): 1 warm-up + 1 timed replan."""
    out = tmp_path / "bench.json"
    argv = ["--devices", "cpu", "--policies", "oracle", "--paths", "new", "--replans", "1", "--tasks", TASKS[0],
            "--json", str(out)]
    assert _run(argv) == 0
    cell = json.loads(out.read_text())["new"]["oracle"]["cpu"]
    assert cell["replans"] == 1 and cell["concurrency"] == 1 and cell["seed_stream"] == "data"
    assert 0 <= cell["lost_frame_rate"] <= 1
    for key in ("replan", "generate", "segment", "track", "control"):
        assert cell[f"{key}_s_median"] > 0 or key == "control"
    assert cell["options"] == {"video.tracker.engine": "numpy", "video.tracker.device": "cpu"}
    raw = json.loads(out.with_suffix(".raw.json").read_text())["new"]["oracle"]["cpu"]
    assert len(raw["replan"]) == 1
    prov = json.loads(out.with_suffix(".provenance.json").read_text())
    assert prov["seeds"]["seed_stream"] == "data" and "new/oracle/cpu" in prov["config"]["cells"]
    # --resume keeps the measured cell and appends a session.
    assert _run([*argv, "--resume"]) == 0
    assert len(json.loads(out.with_suffix(".provenance.json").read_text())["sessions"]) == 2
    assert json.loads(out.read_text())["new"]["oracle"]["cpu"] == cell

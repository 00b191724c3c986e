"""scripts/gpu_multigpu.sh and scripts/gpu_launch.sh on the CPU: the launch commands, and the
scaling stage end to end at a tiny size (two gloo processes through torchrun; the figures mean
nothing here, the record's form and the launch do)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from geo4d_policy.config import CONFIG_DIR, REPO_ROOT


def _bash(script: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    full = {**os.environ, "PATH": path, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, env=full, capture_output=True, text=True,
                          timeout=timeout)


def test_train_cmd_launches_one_process_or_a_ddp_group():
    out = _bash("source scripts/gpu_launch.sh; train_cmd 1; train_cmd 4 29555; gpu_count")
    assert out.returncode == 0, out.stderr
    one, four, count = out.stdout.strip().splitlines()
    assert one == "python -m geo4d_policy.cli.train"
    if torch.cuda.is_available():
        assert four.startswith("python -m accelerate.commands.launch --multi_gpu --num_machines 1 --num_processes 4 "
                               "--main_process_port 29555")
    else:
        assert four == "python -m torch.distributed.run --standalone --nproc_per_node 4 -m geo4d_policy.cli.train"
        assert count == "0"
    assert four.endswith("-m geo4d_policy.cli.train")


def test_unknown_stage_is_refused(tmp_path):
    out = _bash("bash scripts/gpu_multigpu.sh nope", env={"GEO4D_WORK": str(tmp_path)}, timeout=60)
    assert out.returncode == 2 and "unknown stage nope (scale|ae|gen|eval|dp|export)" in out.stderr


@pytest.mark.slow
def test_scale_stage_records_throughput_and_efficiency(tmp_path):
    from geo4d_policy.data.synthetic import make_dataset
    from geo4d_policy.models.config import load_model_config
    from geo4d_policy.models.vae import VAE

    work = tmp_path / "work"
    make_dataset(work / "data" / "apple", seeds=range(2), n_frames=4, resolution=(32, 40))
    cfg = yaml.safe_load((CONFIG_DIR / "model" / "tiny.yaml").read_text())
    cfg.update(height=32, width=40, num_frames=2)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    mc = load_model_config(tmp_path / "tiny.yaml")
    VAE(mc.image_vae, kind="image").save_pretrained(tmp_path / "iv")
    VAE(mc.pointmap_vae, kind="pointmap").save_pretrained(tmp_path / "pv")
    (tmp_path / "out").mkdir()
    env = {"GEO4D_WORK": str(work), "GEO4D_MODEL": str(tmp_path / "tiny.yaml"), "IMG_AE": str(tmp_path / "iv"),
           "PM_AE": str(tmp_path / "pv"), "GEN_BATCH": "2", "DP_BATCH": "2", "DP_CONFIG": "tiny", "SCALE_DP": "1",
           "SCALE_STEPS": "3", "SCALE_LOG": "1", "GEO4D_GPUS": "2", "OUT": str(tmp_path / "out"),
           "OMP_NUM_THREADS": "1"}
    out = _bash("bash scripts/gpu_multigpu.sh scale", env=env, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = json.loads((tmp_path / "out" / "multigpu_scaling.json").read_text())
    assert [(r["kind"], r["gpus"], r["global_batch"]) for r in rows] == [
        ("generator", 1, 2), ("generator", 2, 4), ("diffusion_policy", 1, 2), ("diffusion_policy", 2, 4)]
    for r in rows:
        assert r["samples_per_s"] > 0 and r["efficiency_per_gpu"] > 0
        assert r["samples_per_s"] == pytest.approx(r["global_batch"] / r["s_per_step"])
    assert rows[0]["efficiency_per_gpu"] == 1.0
    assert "generator x2: global batch    4" in out.stdout
    shutil.rmtree(work)

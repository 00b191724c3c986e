"""Two training processes (DDP over gloo on the CPU) train what one process trains.

The real command line, ``geo4d_policy.cli.train``, runs in two processes started with the
torch.distributed environment a launcher sets (``accelerate launch`` / ``torchrun``): the tiny
generator on the device-data path (latent cache built in two shares), the pointmap autoencoder
on device frame batches and the Diffusion Policy, 3 steps each at batch 2 per process. One
process at batch 4 (in this test's process) must log the same loss curves, and resume the
two-process generator run where it stopped.

Tolerance: rtol 1e-4 (atol 1e-7) on every logged number (the autoencoder's from its third step:
1e-2, below), 1e-3 on the norm of the resumed weights' difference; what separates the runs is only the order of floating-point sums
(convolutions over 2 rows instead of 4, DDP's gradient average). Every process computes on one
thread: sums split over 2 threads instead of 1 move the autoencoder's step-3 gradient norm by
1e-3 relative (Adam's first steps magnify rounding in near-zero gradients), more than the
process count does. Measured on the 2-core CPU machine: losses within 1.4e-6 relative, every
logged number within 2e-6, resumed EMA weights within 2.9e-5 (norm of the difference over the
norm). The autoencoder's KL term (weight 1e-6) leaves the gradients of the parameters it alone
drives near Adam's epsilon, where an update is proportional to the gradient's rounding error, so
from the third logged step on the process count shows through: on the 2-core machine of
2026-12-07 (another CPU, whose convolution kernels sum in another order) step 3 differed by 1e-3
relative in `kl` and 1e-4 in `l1` and `loss`, while steps 1-2 and the generator's and the
Diffusion Policy's curves stayed within 2e-6.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from geo4d_policy.cli.train import main
from geo4d_policy.config import CONFIG_DIR, REPO_ROOT
from geo4d_policy.data.synthetic import make_dataset
from geo4d_policy.models.config import load_model_config
from geo4d_policy.models.vae import VAE
from geo4d_policy.train.distributed import LaunchError, check_launch, global_batch_rows, split_range

RTOL, ATOL = 1e-4, 1e-7
ADAM_RTOL = 1e-2
"""The autoencoder's tolerance from its third step (see the module docstring)."""

_WORKER = r"""
import json, os, signal, sys, traceback
# Imported once; the processes fork from here (the heavy imports happen on first use otherwise).
import accelerate, geo4d_policy.train.diffusion_policy, geo4d_policy.train.gpu_data, geo4d_policy.train.trainer
from geo4d_policy.cli.train import main
argvs, world = json.loads(sys.argv[1]), int(sys.argv[2])
pids = []
for rank in range(world):
    pid = os.fork()
    if pid == 0:
        rc = 1
        try:
            os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank))
            for argv in argvs:
                rc = main(argv)
                if rc:
                    break
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
    pids.append(pid)
worst = 0
while pids:
    pid, status = os.wait()
    pids.remove(pid)
    code = os.waitstatus_to_exitcode(status)
    if code:  # the others would wait for it in a collective forever
        worst = abs(code)
        for p in pids:
            os.kill(p, signal.SIGKILL)
sys.exit(worst)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argvs: list[list[str]], *, world: int = 2, timeout: float = 600) -> None:
    """Run ``main(argv)`` for each argv in ``world`` processes of one process group (gloo), with
    the environment ``torchrun`` / ``accelerate launch`` give them. The processes fork from one
    interpreter that has imported the package (one import instead of ``world``)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(world),
           "LOCAL_WORLD_SIZE": str(world), "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("GEO4D_PROGRESS", None)
    proc = subprocess.Popen([sys.executable, "-c", _WORKER, json.dumps(argvs), str(world)], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out = proc.communicate(timeout=timeout)[0]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the forked processes too
    assert proc.returncode == 0, out[-4000:]


def generator_args(root, out, batch: int, steps: int, *more: str) -> list[str]:
    return ["generator", "--task", "all", "--data", str(root / "apple"), "--config", str(root / "tiny.yaml"),
            "--image-vae", str(root / "iv"), "--pointmap-vae", str(root / "pv"), "--gpu-data", "--workers", "1",
            "--cache-pairs", "2", "--ckpt-every", "3", "--log-every", "1", "--warmup-steps", "1", "--lr", "1e-3",
            "--batch-size", str(batch), "--steps", str(steps), "--out", str(root / out), *more]


def vae_args(root, out, batch: int) -> list[str]:
    return ["vae", "--modality", "pointmap", "--data", str(root / "apple"), "--config", str(root / "tiny.yaml"),
            "--gpu-data", "--workers", "1", "--steps", "3", "--log-every", "1", "--warmup-steps", "1",
            "--lr", "1e-3", "--batch-size", str(batch), "--out", str(root / out)]


def dp_args(root, out, batch: int) -> list[str]:
    return ["diffusion_policy", "--data", str(root / "apple"), "--config", str(root / "dp.yaml"), "--steps", "3",
            "--workers", "0", "--batch-size", str(batch), "--out", str(root / out)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Data, fixed random autoencoders, and the two-process runs (batch 2 per process)."""
    root = tmp_path_factory.mktemp("multiprocess")
    make_dataset(root / "apple", seeds=range(3), n_frames=4, resolution=(32, 40))
    cfg = yaml.safe_load((CONFIG_DIR / "model" / "tiny.yaml").read_text())
    cfg.update(height=32, width=40, num_frames=2)
    (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    mc = load_model_config(root / "tiny.yaml")
    torch.manual_seed(0)
    VAE(mc.image_vae, kind="image").save_pretrained(root / "iv")
    VAE(mc.pointmap_vae, kind="pointmap").save_pretrained(root / "pv")
    dp = yaml.safe_load((CONFIG_DIR / "policy" / "diffusion_policy_tiny.yaml").read_text())
    dp.update(log_every=1, warmup_steps=1, probe_size=2)
    (root / "dp.yaml").write_text(yaml.safe_dump(dp))
    launch([generator_args(root, "g2", 2, 3), vae_args(root, "v2", 2), dp_args(root, "d2", 2)])
    return root


@contextlib.contextmanager
def one_thread():
    """This process computes as the launched ones do (OMP_NUM_THREADS=1)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def one_process(runs):
    """The same runs in one process at batch 4 (the two-process runs' global batch)."""
    with one_thread():
        for argv in (generator_args(runs, "g1", 4, 3), vae_args(runs, "v1", 4), dp_args(runs, "d1", 4)):
            assert main(argv) == 0
    return runs


def metrics(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def assert_same_curves(a: list[dict], b: list[dict], *, loose_from_step: int | None = None) -> None:
    """Every logged number equal within RTOL (ADAM_RTOL from ``loose_from_step`` on)."""
    assert len(a) == len(b) and a
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        loose = loose_from_step is not None and ra.get("step", 0) >= loose_from_step
        for k in ra:
            if k != "s_per_step":
                assert ra[k] == pytest.approx(rb[k], rel=ADAM_RTOL if loose else RTOL, abs=ATOL), (k, ra, rb)


def test_two_processes_log_the_loss_curves_of_one_process_at_the_global_batch(one_process):
    root = one_process
    for two, one in (("g2", "g1"), ("v2", "v1"), ("d2", "d1")):
        m2, m1 = metrics(root / two), metrics(root / one)
        assert [r["step"] for r in m2 if "loss" in r] == [1, 2, 3]
        assert_same_curves(m2, m1, loose_from_step=3 if two == "v2" else None)
    # The generator's curve moves (the updates are real, not a loss at initialisation).
    losses = [r["loss"] for r in metrics(root / "g1")]
    assert losses[2] < 0.8 * losses[0]
    for two, one in (("g2", "g1"), ("v2", "v1"), ("d2", "d1")):
        launch2 = json.loads((root / two / "step_3" / "config.json").read_text())["training"]["launch"]
        launch1 = json.loads((root / one / "step_3" / "config.json").read_text())["training"]["launch"]
        assert (launch2["num_processes"], launch2["batch_size_per_process"], launch2["global_batch_size"]) == (2, 2, 4)
        assert (launch1["num_processes"], launch1["global_batch_size"]) == (1, 4)
        assert launch2["lr"] == launch1["lr"] == 1e-3
    # The autoencoder's latent scales are measured on every process's frames (with weights that
    # differ after three steps as its curve does: 3.5e-4 relative on the machine of 2026-12-07).
    v1, v2 = (VAE.from_pretrained(root / r).config for r in ("v1", "v2"))
    assert v2.scaling_factor == pytest.approx(v1.scaling_factor, rel=2e-3)
    assert v2.shift_factor == pytest.approx(v1.shift_factor, rel=1e-3, abs=1e-5)
    # The main process wrote everything: one RNG file, the session's process count in the provenance.
    assert [p.name for p in (root / "g2" / "step_3" / "training_state").glob("rng_*")] == ["rng_0.pt"]
    prov = json.loads((root / "g2" / "provenance.json").read_text())
    assert prov["sessions"][-1]["num_processes"] == 2 and prov["config"]["batch_size"] == 4


def test_a_two_process_run_resumes_on_one_process(one_process):
    root = one_process
    resumed, straight = root / "g2_resumed", root / "g1_straight"
    shutil.copytree(root / "g2", resumed)
    shutil.copytree(root / "g1", straight)
    with one_thread():
        assert main(generator_args(root, resumed.name, 4, 5, "--resume")) == 0
        assert main(generator_args(root, straight.name, 4, 5, "--resume")) == 0
    assert_same_curves(metrics(resumed), metrics(straight))
    assert [r["step"] for r in metrics(resumed)] == [1, 2, 3, 4, 5]
    a, b = (load_file(str(r / "step_5" / "model.safetensors")) for r in (resumed, straight))
    assert a.keys() == b.keys()
    # Over all weights: elements whose gradient is near zero may take Adam steps of different
    # signs after rounding (up to 5e-4 = lr / 2 on single elements here).
    diff = torch.cat([(a[k] - b[k]).flatten() for k in a]).norm()
    assert diff <= 1e-3 * torch.cat([b[k].flatten() for k in b]).norm()
    prov = json.loads((resumed / "provenance.json").read_text())
    assert [s["num_processes"] for s in prov["sessions"]] == [2, 1]


def test_a_resume_with_another_model_config_stops_before_training(one_process, tmp_path, capsys):
    run = tmp_path / "g"
    shutil.copytree(one_process / "g1", run)
    before = (run / "metrics.jsonl").read_text()
    other = generator_args(one_process, "unused", 4, 5, "--resume", "--override", "edm.p_mean=-1.0")
    other[other.index("--out") + 1] = str(run)
    assert main(other) == 2
    assert "config.model.edm.p_mean: 1.0 -> -1.0" in capsys.readouterr().err
    assert main(other + ["--resume-anyway"]) == 2
    err = capsys.readouterr().err
    assert "was trained with another model config" in err and "edm.p_mean" in err
    assert (run / "metrics.jsonl").read_text() == before and not (run / "step_4").exists()


def test_more_processes_than_gpus_are_refused():
    with pytest.raises(LaunchError, match=r"4 training processes on this machine but 2 visible GPUs.*"
                                          r"--num_processes 2 or fewer"):
        check_launch({"LOCAL_WORLD_SIZE": "4", "LOCAL_RANK": "3"}, cuda_devices=2)
    with pytest.raises(LaunchError, match="CUDA_VISIBLE_DEVICES=0"):
        check_launch({"LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "0"}, cuda_devices=1)
    check_launch({"LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "1"}, cuda_devices=2)
    check_launch({"LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "1"}, cuda_devices=0)  # CPU: gloo processes
    check_launch({}, cuda_devices=0)


def test_global_batches_split_into_contiguous_rows():
    order = torch.arange(11)
    rows = [global_batch_rows(order, 2, r, 2) for r in range(2)]
    assert rows[0].tolist() == [0, 1, 4, 5] and rows[1].tolist() == [2, 3, 6, 7]
    assert global_batch_rows(order, 4, 0, 1).tolist() == list(range(8))
    assert [list(split_range(5, r, 2)) for r in range(2)] == [[0, 1], [2, 3, 4]]

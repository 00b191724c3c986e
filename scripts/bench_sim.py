#!/usr/bin/env python3
"""Simulation speed: real-time factor with and without rendering, and rendering cost per image.

Runs the scripted expert of a task for a fixed simulated duration, (a) without cameras and
(b) rendering two 128x160 cameras (RGB + depth + label) at 2 Hz, as a 4D-generation policy
would; then times single renders. Prints a table; nothing is asserted.

    python scripts/bench_sim.py [--task PlaceAppleFromBowlIntoBin] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from geo4d_policy.interface import eval_seed  # noqa: E402
from sim.env import make_env  # noqa: E402
from sim.experts import make_expert_policy  # noqa: E402


def run(task: str, seconds: float, render_hz: float | None, n_cams: int = 2) -> tuple[float, float, int]:
    env = make_env(task)
    policy = make_expert_policy(task=task)
    obs = env.reset(eval_seed(0, 0))
    policy.reset(seed=0)
    views = env.eval_cameras[:n_cams]
    renders = 0
    t0 = time.perf_counter()
    steps = 0
    done = False
    while not done and env.time < seconds:
        for action in policy.act(obs):
            obs, done, _ = env.step(action)
            steps += 1
            if render_hz and steps % int(round(10 / render_hz)) == 0:
                for v in views:
                    obs.cameras[v]
                    renders += 1
            if done or env.time >= seconds:
                break
    wall = time.perf_counter() - t0
    return env.time / wall, wall, renders


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="PlaceAppleFromBowlIntoBin")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    rtf_plain, wall_plain, _ = run(args.task, args.seconds, None)
    rtf_cam, wall_cam, renders = run(args.task, args.seconds, 2.0)
    env = make_env(args.task)
    obs = env.reset(eval_seed(0, 1))
    station = env.station
    specs = [env.cameras[n] for n in env.eval_cameras]
    station.render(specs[0])  # the first render per process warms the renderer up
    times = []
    for _ in range(20):
        for s in specs:
            t = time.perf_counter()
            station.render(s)
            times.append(time.perf_counter() - t)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; task {args.task}, "
          f"{args.seconds:.0f} s simulated")
    print(f"{'setting':<44}{'RTF':>8}{'wall s':>9}")
    print(f"{'physics + control, no rendering':<44}{rtf_plain:>8.2f}{wall_plain:>9.1f}")
    print(f"{'+ 2 cameras 128x160 RGB-D-label at 2 Hz':<44}{rtf_cam:>8.2f}{wall_cam:>9.1f}")
    print(f"render one camera (RGB + depth + label), 128x160: {1000 * np.median(times):.1f} ms median "
          f"({1000 / 3 * np.median(times):.1f} ms per image); {renders} renders in the RTF run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

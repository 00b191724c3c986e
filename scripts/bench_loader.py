"""Benchmark the dataset loaders on a synthetic dataset this script generates.

    .venv/bin/python scripts/bench_loader.py                      # 128x160, 4 episodes x 21 frames
    .venv/bin/python scripts/bench_loader.py --resolution 256 320 --episodes 2 --keep /tmp/ds

Prints the size on disk per episode and samples/s of ``GeneratorClipDataset`` (two views,
1 + 10 frames, RGB + pointmaps) and ``PolicyDataset`` (the ``--dp-config`` recipe's horizon,
observation steps, observation stride and resolution: 16, 2, 8, 96x120 for ``small``) through a
torch ``DataLoader`` with ``num_workers`` 0 and 2 (``--workers``; batch 4, shuffled). CPU-only; on the 2-core
machine the workers compete with the main process, so expect less than 2x from 2 workers.
Synthetic scenes compress differently from simulator renders; read the sizes as indicative.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from geo4d_policy.data import synthetic  # noqa: E402
from geo4d_policy.data.datasets import GeneratorClipDataset, PolicyDataset  # noqa: E402
from geo4d_policy.data.verify import dataset_info  # noqa: E402
from geo4d_policy.train.diffusion_policy import load_dp_train_config  # noqa: E402


def bench(ds: torch.utils.data.Dataset, *, workers: int, batch: int, n_samples: int) -> float:
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    next(it)  # warm-up: worker start, file opens
    t0 = time.perf_counter()
    n = 0
    while n < n_samples:
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        n += len(b["seed"])
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, nargs=2, default=(128, 160), metavar=("H", "W"))
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--frames", type=int, default=21, help="2 Hz frames per episode (21 = 10 s)")
    p.add_argument("--samples", type=int, default=96, help="samples timed per configuration")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="num_workers values to time")
    p.add_argument("--keep", type=Path, default=None, help="write the dataset here and keep it")
    p.add_argument("--dp-config", default="small", help="Diffusion Policy recipe whose sample layout is timed")
    args = p.parse_args()
    torch.set_num_threads(1)  # per-sample work is numpy/h5py; extra threads only add contention
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_loader_")) / "ds"
    try:
        t0 = time.perf_counter()
        synthetic.make_dataset(root, seeds=range(args.episodes), n_frames=args.frames,
                               resolution=tuple(args.resolution))
        info = dataset_info(root)
        print(f"dataset: {args.episodes} episodes x {args.frames} frames x 16 cameras at "
              f"{args.resolution[0]}x{args.resolution[1]} (made in {time.perf_counter() - t0:.1f} s)")
        print(f"size: {info['bytes_per_episode_mean'] / 1e6:.2f} MB per episode, "
              f"{info['bytes_per_episode_mean'] / (16 * args.frames) / 1e3:.1f} kB per camera frame")
        gen = GeneratorClipDataset(root, n_future=10)
        m = load_dp_train_config(args.dp_config).model
        pol = PolicyDataset(root, horizon=m.horizon, n_obs_steps=m.n_obs_steps, obs_stride=m.obs_stride,
                            resolution=tuple(m.resolution))
        for name, ds in (("GeneratorClipDataset (2 views x 11 frames)", gen),
                         (f"PolicyDataset ({args.dp_config}: stride {m.obs_stride})", pol)):
            for workers in args.workers:
                rate = bench(ds, workers=workers, batch=args.batch, n_samples=args.samples)
                print(f"{name:44s} num_workers={workers}: {rate:7.1f} samples/s")
    finally:
        if args.keep is None:
            shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    main()

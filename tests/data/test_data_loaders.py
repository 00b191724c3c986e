"""torch loaders: shapes, dtypes, ranges, geometry of the targets, corrupt-file handling."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from geo4d_policy.data import geometry as g
from geo4d_policy.data.actions import denormalize_minmax, poses_to_vectors, vectors_to_poses
from geo4d_policy.data.datasets import (
    CorruptEpisodeWarning,
    GeneratorClipDataset,
    PolicyDataset,
    compute_normalization,
    frame_of_step,
)
from geo4d_policy.data.format import CorruptEpisodeError, EpisodeReader

F = 4


def test_clip_shapes_dtypes_ranges(dataset_dir: Path):
    ds = GeneratorClipDataset(dataset_dir, n_future=F, seed=3)
    assert len(ds) == 3 * (6 - 1)  # start frames with at least one real future frame
    s = ds[7]
    H, W = 32, 40
    expect = {
        "rgb_cond": ((2, 3, H, W), torch.float32), "rgb": ((2, F, 3, H, W), torch.float32),
        "pm_cond": ((2, 3, H, W), torch.float32), "pm": ((2, F, 3, H, W), torch.float32),
        "valid_cond": ((2, H, W), torch.bool), "valid": ((2, F, H, W), torch.bool),
        "gripper_cond": ((2, H, W), torch.bool), "gripper": ((2, F, H, W), torch.bool),
        "K": ((2, 3, 3), torch.float32), "X_TC": ((2, 4, 4), torch.float32),
        "cams": ((2,), torch.int64), "frames": ((F + 1,), torch.int64),
        "seed": ((), torch.int64), "t": ((), torch.int64),
    }
    for key, (shape, dtype) in expect.items():
        assert tuple(s[key].shape) == shape and s[key].dtype == dtype, key
    for key in ("rgb_cond", "rgb", "pm_cond", "pm"):
        assert torch.isfinite(s[key]).all()
    assert s["rgb"].min() >= -1 and s["rgb"].max() <= 1
    assert s["pm"][s["valid"].unsqueeze(2).expand_as(s["pm"])].abs().max() <= 1  # scene inside [-1, 2] m
    assert (s["pm"].movedim(2, -1)[~s["valid"]] == 0).all()  # invalid pixels: placeholder 0
    assert s["valid"].any() and (~s["valid"]).any() and s["gripper"].any()
    n, m = s["cams"].tolist()
    assert n != m and {n, m} <= set(range(12))
    assert ds[7]["cams"].tolist() == [n, m]  # reproducible per (seed, epoch, index)
    pairs0 = [tuple(ds[i]["cams"].tolist()) for i in range(len(ds))]
    ds.set_epoch(1)
    pairs1 = [tuple(ds[i]["cams"].tolist()) for i in range(len(ds))]
    assert pairs0 != pairs1 and len(set(pairs0)) > 3  # new draws per epoch, many distinct pairs


def test_clip_geometry_matches_the_episode(dataset_dir: Path):
    ds = GeneratorClipDataset(dataset_dir, n_future=F, seed=0)
    norm = ds.normalization
    s = ds[len(ds) - 1]  # last start frame: the future runs past the end and repeats the last frame
    seed, t = int(s["seed"]), int(s["t"])
    assert s["frames"].tolist() == [t] + [min(t + k, 5) for k in range(1, F + 1)]
    n_name, m_name = (f"cam{c:02d}" for c in s["cams"].tolist())
    with EpisodeReader(dataset_dir / f"episodes/episode_{seed}.h5") as r:
        frames = s["frames"].numpy()
        pm_n, ok_n = g.depth_to_pointmap(r.depth(n_name, frames), r.K(n_name))
        pm_m, ok_m = g.depth_to_pointmap(r.depth(m_name, frames), r.K(m_name))
        pm_mn = g.pointmap_to_view(pm_m, ok_m, X_TCm=r.X_TC(m_name), X_TCn=r.X_TC(n_name))
        rgb_n = r.rgb(n_name, frames)
    got = norm.denormalize(s["pm"].movedim(2, -1).numpy())
    np.testing.assert_allclose(np.where(ok_n[1:, ..., None], got[0], 0), pm_n[1:], atol=1e-5)
    np.testing.assert_allclose(np.where(ok_m[1:, ..., None], got[1], 0), pm_mn[1:], atol=1e-5)
    cond = norm.denormalize(s["pm_cond"].movedim(1, -1).numpy())
    # m conditions in its own frame
    np.testing.assert_allclose(np.where(ok_m[0, ..., None], cond[1], 0), pm_m[0], atol=1e-5)
    assert (s["valid"].numpy() == np.stack([ok_n[1:], ok_m[1:]])).all()
    np.testing.assert_allclose((s["rgb_cond"][0].movedim(0, -1).numpy() + 1) * 127.5, rgb_n[0], atol=1e-3)


def test_heldout_split_and_resolution(dataset_dir: Path):
    ds = GeneratorClipDataset(dataset_dir, split="heldout", n_future=2, resolution=(16, 20))
    cams = {c for i in range(len(ds)) for c in ds[i]["cams"].tolist()}
    assert cams <= {12, 13, 14, 15}
    s = ds[0]
    assert s["pm"].shape == (2, 2, 3, 16, 20) and s["rgb_cond"].shape == (2, 3, 16, 20)
    np.testing.assert_allclose(s["K"][0, 0, 0].item(), 381.0 * 40 / 640 / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="split"):
        GeneratorClipDataset(dataset_dir, split="test")


def test_loader_skips_or_names_a_corrupt_file(dataset_copy: Path, corrupt):
    truncated = dataset_copy / "episodes" / "episode_1.h5"
    with open(truncated, "r+b") as fh:
        fh.truncate(os.path.getsize(truncated) // 3)
    with pytest.warns(CorruptEpisodeWarning, match="episode_1.h5"):
        ds = GeneratorClipDataset(dataset_copy, n_future=2, on_error="skip")
    assert len(ds) == 2 * 5 and {int(ds[i]["seed"]) for i in range(len(ds))} == {0, 2}
    with pytest.raises(CorruptEpisodeError, match="episode_1.h5"):
        GeneratorClipDataset(dataset_copy, n_future=2, on_error="raise")

    # Damage found only when frames are read: skipped at access time, the sample replaced.
    damaged = dataset_copy / "episodes" / "episode_2.h5"
    for c in range(16):
        corrupt(damaged, f"cameras/cam{c:02d}/rgb")
    (truncated).unlink()
    meta = json.loads((dataset_copy / "meta.json").read_text())
    meta["episodes"] = [e for e in meta["episodes"] if e["seed"] != 1]
    (dataset_copy / "meta.json").write_text(json.dumps(meta))
    ds = GeneratorClipDataset(dataset_copy, n_future=2, on_error="skip")
    idx_from_2 = next(i for i, (k, _) in enumerate(ds._index) if ds._episodes.entries[k].seed == 2)
    with pytest.warns(CorruptEpisodeWarning, match="episode_2.h5"):
        s = ds[idx_from_2]
    assert int(s["seed"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the bad file is remembered: no second warning
        assert int(ds[idx_from_2]["seed"]) == 0
    ds = GeneratorClipDataset(dataset_copy, n_future=2, on_error="raise")
    with pytest.raises(CorruptEpisodeError, match="episode_2.h5.*cameras/cam"):
        ds[idx_from_2]


def test_dataloader_with_workers(dataset_dir: Path):
    ds = GeneratorClipDataset(dataset_dir, n_future=2)
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=2, shuffle=True,
                                 generator=torch.Generator().manual_seed(0))))
    assert batch["pm"].shape == (4, 2, 2, 3, 32, 40) and batch["cams"].shape == (4, 2)


def test_policy_dataset(dataset_dir: Path):
    stats = compute_normalization(dataset_dir)
    assert (dataset_dir / "normalization.json").is_file() and len(stats["action"]["min"]) == 20
    mtime = (dataset_dir / "normalization.json").stat().st_mtime_ns
    assert compute_normalization(dataset_dir) == stats
    assert (dataset_dir / "normalization.json").stat().st_mtime_ns == mtime  # reused, not rewritten

    ds = PolicyDataset(dataset_dir, horizon=16, n_obs_steps=2, obs_stride=5, seed=1)
    # Samples are the steps with a frame taken at their own time: every 5th of 26 per episode.
    assert len(ds) == 3 * 6 and ds.samples[:6] == [(0, s) for s in range(0, 26, 5)]
    s = ds[6 + 4]  # episode seed 1, step 20: actions 20..25 real, then 10 repeats of the last
    assert s["rgb"].shape == (2, 2, 3, 32, 40) and s["rgb"].dtype == torch.float32
    assert s["state"].shape == (2, 20) and s["action"].shape == (16, 20)
    assert s["action_pad"].tolist() == [False] * 6 + [True] * 10
    assert s["action"].abs().max() <= 1 + 1e-5 and s["state"].abs().max() <= 1 + 1e-5
    assert int(s["seed"]) == 1 and int(s["step"]) == 20 and set(s["cams"].tolist()) <= set(range(12))
    with EpisodeReader(dataset_dir / "episodes/episode_1.h5") as r:
        robot = r.robot()
        expected = poses_to_vectors(robot.action_X_TG, robot.action_width)[np.minimum(np.arange(20, 36), 25)]
        # Observation steps 15 and 20 (1.5 s, 2.0 s) are frames 3 and 4, taken at those times.
        frames = frame_of_step(r.video_time, robot.time)
        assert frames[[15, 20]].tolist() == [3, 4] and (frames[[14, 16, 19]] == -1).all()
        np.testing.assert_allclose(r.video_time[frames[[15, 20]]], robot.time[[15, 20]])
        c = s["cams"].tolist()
        np.testing.assert_allclose((s["rgb"][1, 0].movedim(0, -1).numpy() + 1) * 127.5,
                                   r.rgb(f"cam{c[1]:02d}", 3), atol=1e-3)
        state = poses_to_vectors(robot.X_TG, robot.width)
    np.testing.assert_allclose(denormalize_minmax(s["state"].numpy(), stats["state"]), state[[15, 20]], atol=1e-5)
    actions = denormalize_minmax(s["action"].numpy(), stats["action"])
    np.testing.assert_allclose(actions, expected, atol=1e-5)
    X, w = vectors_to_poses(actions)
    steps = np.minimum(np.arange(20, 36), 25)
    np.testing.assert_allclose(X["right"], robot.action_X_TG["right"][steps], atol=1e-5)
    first = ds[6]  # step 0: the observation window repeats step 0
    assert torch.equal(first["rgb"][:, 0], first["rgb"][:, 1])
    assert torch.equal(first["state"][0], first["state"][1])
    fixed = PolicyDataset(dataset_dir, views=("cam03", "cam07"), normalize=False)
    assert fixed[5]["cams"].tolist() == [3, 7] and fixed.stats is None
    with pytest.raises(ValueError, match="training cameras"):
        PolicyDataset(dataset_dir, views=("cam03", "cam13"))
    # Held-out views (probes of novel views) and a subset of episodes.
    novel = PolicyDataset(dataset_dir, split="heldout", seeds=[2], normalize=False)
    assert len(novel) == 6 and set(novel[0]["cams"].tolist()) <= {12, 13, 14, 15} and int(novel[0]["seed"]) == 2
    with pytest.raises(ValueError, match="no episode of seed"):
        PolicyDataset(dataset_dir, seeds=[0, 9])
    # An observation step without a frame at its own time is refused, naming the spacing.
    with pytest.raises(ValueError, match="multiple of 5"):
        PolicyDataset(dataset_dir, obs_stride=8)


def test_constant_dimensions_are_held_and_exact(tmp_path: Path):
    from geo4d_policy.data.actions import MIN_RANGE, action_layout, held_dims, normalize_minmax
    from geo4d_policy.data.synthetic import make_dataset

    root = tmp_path / "spatula"
    make_dataset(root, seeds=[0, 1], n_frames=4, task="PutSpatulaOnTable", idle_arms=("left",))
    stats = compute_normalization(root)
    # The idle arm, and the synthetic grippers' never-turning rotations of the other arm.
    held = [n for n in action_layout() if n.startswith("left/") or n.startswith("right/r")]
    assert stats["held"]["action"] == held and stats["held"]["state"] == held
    ds = PolicyDataset(root, obs_stride=5)
    with EpisodeReader(root / "episodes/episode_1.h5") as r:
        raw = poses_to_vectors(r.robot().action_X_TG, r.robot().action_width)
    sample = ds[len(ds) - 1]
    # The idle arm's 10 action and state dimensions normalise to exactly 0 ...
    assert torch.count_nonzero(sample["action"][:, :10]) == 0 and torch.count_nonzero(sample["state"][:, :10]) == 0
    # ... and any network output for them denormalises to the recorded constant, bit for bit.
    noise = np.random.default_rng(0).normal(size=(16, 20)).astype(np.float32) * 3
    back = denormalize_minmax(noise, stats["action"])
    assert np.array_equal(back[:, :10], np.broadcast_to(raw[0, :10], (16, 10)))
    assert np.array_equal(denormalize_minmax(normalize_minmax(raw, stats["action"]), stats["action"])[:, :10],
                          raw[:, :10])
    # Moving dimensions still span [-1, 1] and round-trip to float precision.
    a = normalize_minmax(raw, stats["action"])
    assert np.abs(a[:, 10:]).max() <= 1 + 1e-6
    np.testing.assert_allclose(denormalize_minmax(a, stats["action"]), raw, atol=1e-6)
    # Near-constant (range below the floor) is held at the midpoint; just above it is learned.
    near = {"min": [0.0, 0.0], "max": [0.5 * MIN_RANGE, 2 * MIN_RANGE]}
    assert held_dims(near).tolist() == [True, False]
    assert normalize_minmax(np.array([0.4 * MIN_RANGE, 2 * MIN_RANGE]), near).tolist() == [0.0, 1.0]

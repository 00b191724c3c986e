"""Benchmark the RGB-only gripper pose estimator (the Dreamitate baseline's perception).

    .venv/bin/python scripts/bench_rgb_pose.py                          # synthetic silhouettes
    .venv/bin/python scripts/bench_rgb_pose.py --data /tmp/geo4d/data/apple --clips 6

Each case is what the ``dreamitate`` policy does per view and arm at a replan: register on a
first frame with the robot's measured pose as the prior (``--hint-error`` perturbs it), then
track the following frames. Two sources of frames:

* synthetic (default): smooth seeded trajectories at 0.8 m rendered by the estimator's own
  rasteriser at 128x160 (part labels), finger opening closing from 8 to 3 cm;
* ``--data DIR``: ground-truth part labels of two held-out cameras from the simulator's label
  images of a ``geo4d-collect`` dataset (another renderer than the estimator's: real model
  mismatch at the pixel level), ground truth from the robot's measured gripper poses; clips are
  drawn as ``geo4d-eval-tracking`` draws them.

Prints milliseconds per frame (registration and tracking apart), poses rendered per frame (and in how many batches),
and the errors of the tracked frames (translation median / p90 in mm, rotation median / p90 in
deg, finger opening median in mm). Single-threaded numpy (or ``--device cuda``: torch on the GPU);
run it on an otherwise idle core.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from geo4d_policy.data.geometry import invert_transform  # noqa: E402
from geo4d_policy.eval.tracking_eval import load_clip, random_rigid_error, sample_clips  # noqa: E402
from geo4d_policy.interface import CameraIntrinsics  # noqa: E402
from geo4d_policy.perception.gripper_model import GripperModel  # noqa: E402
from geo4d_policy.perception.metrics import pose_errors  # noqa: E402
from geo4d_policy.perception.rgb_objective import Objective  # noqa: E402
from geo4d_policy.perception.rgb_pose import RGBPoseEstimator  # noqa: E402
from geo4d_policy.perception.silhouette import SilhouetteRenderer  # noqa: E402
from geo4d_policy.perception.synthetic import smooth_trajectory  # noqa: E402
from geo4d_policy.perception.pose_tracker import part_label_image  # noqa: E402


def _perturbed(X: np.ndarray, rng: np.random.Generator, translation: float, angle_deg: float) -> np.ndarray:
    """``X`` turned by ``angle_deg`` about and moved by ``translation`` along random directions."""
    if translation == 0 and angle_deg == 0:
        return X.copy()
    E = random_rigid_error(rng, translation=translation, rotation_deg=angle_deg)
    Y = X.copy()
    Y[:3, :3] = E[:3, :3] @ X[:3, :3]
    Y[:3, 3] += E[:3, 3]
    return Y


def synthetic_cases(n: int, frames: int):
    """(labels (T, H, W), K, X_CG (T, 4, 4), widths (T,)) per seeded case."""
    model = GripperModel.load()
    renderer = SilhouetteRenderer(model)
    f = 381.0 * 160 / 640  # the policy's 128x160 cameras
    K = CameraIntrinsics(160, 128, f, f, 79.5, 63.5).K
    for seed in range(n):
        traj = smooth_trajectory(frames, seed=seed, depth=0.8, travel=0.08, rotation=np.deg2rad(20.0))
        widths = np.linspace(0.08, 0.03, frames)
        labels = np.stack([renderer.render(X, K=K, shape=(128, 160), width=w) for X, w in zip(traj, widths)])
        yield f"synthetic seed {seed}", labels, K, traj, widths


def dataset_cases(root: str, n: int, frames: int, min_pixels: int = 20):
    """Clips of a dataset's held-out cameras, one case per (clip, view, visible arm)."""
    for clip in sample_clips(root, n_clips=n, n_future=frames - 1, seed=0):
        data = load_clip(clip)
        for v, cam in enumerate(clip.cams):
            X_CT = invert_transform(data.X_TC[v])
            for arm in data.X_TG:
                labels = np.stack([part_label_image(data.masks[v, k], arm) for k in range(frames)])
                if int((labels[0] >= 0).sum()) < min_pixels:
                    continue
                X_CG = np.stack([X_CT @ X for X in data.X_TG[arm]])
                yield (f"ep{clip.episode_seed} t{clip.frames[0]} {cam} {arm}", labels, data.K[v], X_CG,
                       np.asarray(data.width[arm]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="a geo4d-collect dataset (default: synthetic silhouettes)")
    ap.add_argument("--cases", type=int, default=6, help="synthetic cases (default 6)")
    ap.add_argument("--clips", type=int, default=6, help="dataset clips (default 6)")
    ap.add_argument("--frames", type=int, default=6, help="frames per case incl. the registered one (default 6)")
    ap.add_argument("--hint-error", type=float, nargs=2, default=(0.0, 0.0), metavar=("M", "DEG"),
                    help="perturb the registration prior by M metres and DEG degrees (default exact)")
    ap.add_argument("--device", default=None,
                    help="render and score hypotheses with torch on this device (cuda, cpu); default numpy")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="RGBPoseConfig override, e.g. widen_register=false (repeatable)")
    args = ap.parse_args()
    overrides = {}
    for item in args.option:
        key, _, value = item.partition("=")
        overrides[key] = {"true": True, "false": False}.get(value.lower(), None)
        if overrides[key] is None:
            overrides[key] = float(value) if "." in value else int(value)
    model = GripperModel.load()
    evals = {"n": 0, "calls": 0}
    scores = Objective.scores

    def counting_scores(self, P, *a, **k):
        evals["n"] += len(P)
        evals["calls"] += 1
        return scores(self, P, *a, **k)

    Objective.scores = counting_scores  # count rendered poses and batches, estimator untouched
    cases = (dataset_cases(args.data, args.clips, args.frames) if args.data
             else synthetic_cases(args.cases, args.frames))
    rng = np.random.default_rng(0)
    t_reg, t_track, n_reg, n_track, e_reg, e_track, c_reg, c_track = 0.0, 0.0, 0, 0, 0, 0, 0, 0
    trans, rot, dwidth, lost = [], [], [], 0
    for name, labels, K, X_CG, widths in cases:
        est = RGBPoseEstimator(model, K=K, device=args.device, **overrides)
        results = []
        for t in range(len(labels)):
            e0, c0, t0 = evals["n"], evals["calls"], time.perf_counter()
            if t == 0:
                r = est.register(labels[0], init_pose=_perturbed(X_CG[0], rng, *args.hint_error),
                                 init_width=float(widths[0]))
                t_reg += time.perf_counter() - t0
                n_reg += 1
                e_reg += evals["n"] - e0
                c_reg += evals["calls"] - c0
            else:
                r = est.track(labels[t])
                t_track += time.perf_counter() - t0
                n_track += 1
                e_track += evals["n"] - e0
                c_track += evals["calls"] - c0
            results.append(r)
        tr, ro = pose_errors(np.stack([r.X_CG for r in results[1:]]), X_CG[1:])
        trans.extend(tr)
        rot.extend(ro)
        dwidth.extend(1e3 * abs(r.width - w) for r, w in zip(results[1:], widths[1:]) if r.width is not None)
        lost += sum(r.status != "ok" for r in results[1:])
        print(f"  {name}: trans median {np.median(tr):.1f} mm, rot median {np.median(ro):.2f} deg")
    trans, rot = np.asarray(trans), np.asarray(rot)
    print(f"\nframes: {n_reg} registered, {n_track} tracked ({lost} lost); options {overrides or 'default'}")
    for phase, t, n, e, c in (("register", t_reg, n_reg, e_reg, c_reg), ("track", t_track, n_track, e_track, c_track)):
        n = max(n, 1)
        print(f"{phase + ':':9} {1e3 * t / n:.0f} ms/frame, {e / n:.0f} poses rendered/frame in {c / n:.0f} batches")
    print(f"per replan-equivalent (1 register + 5 tracks): "
          f"{1e3 * (t_reg / max(n_reg, 1) + 5 * t_track / max(n_track, 1)):.0f} ms")
    print(f"errors of tracked frames: translation median {np.median(trans):.1f} / p90 {np.percentile(trans, 90):.1f} mm, "
          f"rotation median {np.median(rot):.2f} / p90 {np.percentile(rot, 90):.2f} deg, "
          f"opening median {np.median(dwidth):.1f} mm")


if __name__ == "__main__":
    main()

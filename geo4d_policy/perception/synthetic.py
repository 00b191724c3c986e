"""Synthetic gripper observations for tests and tracking benchmarks (no simulator needed).

This module owns the generators that stand in for (predicted) pointmaps when testing
perception: smooth ground-truth gripper trajectories in a camera frame, one-sided noisy point
clouds sampled from the CAD model (noise, holes, outliers, as a generated pointmap has), and a
z-buffered point-splat "render" of the gripper into a pointmap with per-pixel part labels.
Everything is seeded and deterministic.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from geo4d_policy.perception.gripper_model import PARTS, GripperModel


def look_at_pose(position: np.ndarray, *, target: np.ndarray | None = None, roll: float = 0.0) -> np.ndarray:
    """``X_CG`` with G at ``position`` (camera frame) and G's z axis (the fingers) pointing at ``target``.

    ``target`` defaults to a point 0.3 m further along the camera's +x, so the camera sees the
    gripper from the side. ``roll`` turns G about its own z axis.
    """
    p = np.asarray(position, dtype=np.float64)
    tgt = p + np.array([0.3, 0.05, 0.0]) if target is None else np.asarray(target, dtype=np.float64)
    z = tgt - p
    z /= np.linalg.norm(z)
    up = np.array([0.0, -1.0, 0.0]) if abs(z[1]) < 0.9 else np.array([0.0, 0.0, 1.0])
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    X = np.eye(4)
    X[:3, :3] = np.stack([x, y, z], axis=1) @ Rotation.from_euler("z", roll).as_matrix()
    X[:3, 3] = p
    return X


def smooth_trajectory(n_frames: int, *, seed: int = 0, depth: float = 0.8, travel: float = 0.25,
                      rotation: float = np.deg2rad(50.0)) -> np.ndarray:
    """(T, 4, 4) smooth ``X_CG`` poses in front of a camera.

    The gripper starts about ``depth`` metres ahead, translates up to ``travel`` metres and
    turns up to ``rotation`` radians in total, along a smoothstep profile between random
    (seeded) start and end poses.
    """
    rng = np.random.default_rng(seed)
    p0 = np.array([rng.uniform(-0.1, 0.1), rng.uniform(-0.08, 0.08), depth])
    d = rng.normal(size=3)
    p1 = p0 + travel * d / np.linalg.norm(d)
    R0 = Rotation.from_matrix(look_at_pose(p0, roll=rng.uniform(-np.pi, np.pi))[:3, :3])
    axis = rng.normal(size=3)
    R1 = Rotation.from_rotvec(rotation * axis / np.linalg.norm(axis)) * R0
    s = np.linspace(0.0, 1.0, n_frames)
    s = s * s * (3 - 2 * s)
    R = Slerp([0.0, 1.0], Rotation.concatenate([R0, R1]))(s).as_matrix()
    out = np.tile(np.eye(4), (n_frames, 1, 1))
    out[:, :3, :3] = R
    out[:, :3, 3] = p0 + s[:, None] * (p1 - p0)
    return out


@dataclasses.dataclass(frozen=True)
class SyntheticCloud:
    """A synthetic observation: points in the camera frame and their part codes (-1 outlier)."""

    points: np.ndarray
    part_labels: np.ndarray


def gripper_cloud(
    model: GripperModel,
    X_CG: np.ndarray,
    width: float,
    *,
    n_points: int = 3000,
    noise: float = 0.002,
    drop: float = 0.2,
    outliers: float = 0.05,
    one_sided: bool = True,
    seed: int = 0,
) -> SyntheticCloud:
    """A noisy, partial point cloud of the gripper as one camera (at the origin) sees it.

    Args:
        model: the gripper model.
        X_CG: gripper pose in the camera frame.
        width: finger opening (m).
        n_points: surface samples before culling (area-proportional over the parts).
        noise: isotropic Gaussian noise sigma (m).
        drop: fraction of the remaining points removed at random (holes).
        outliers: outliers added, as a fraction of the kept points, uniform in a box 5 cm
            around the gripper; they get a random part label (a segmentation mask would
            include them too).
        one_sided: drop samples whose normal faces away from the camera.
        seed: RNG seed.
    """
    rng = np.random.default_rng(seed)
    areas = np.array([model.meshes[p].area for p in PARTS])
    counts = np.maximum(1, np.round(n_points * areas / areas.sum()).astype(int))
    samples = model.sample_points(width=width, counts=dict(zip(PARTS, counts.tolist())), seed=seed)
    pts, nrm, lab = [], [], []
    for k, part in enumerate(PARTS):
        pts.append(samples[part].points)
        nrm.append(samples[part].normals)
        lab.append(np.full(len(samples[part].points), k))
    pG, nG, labels = np.concatenate(pts), np.concatenate(nrm), np.concatenate(lab)
    pC = pG @ X_CG[:3, :3].T + X_CG[:3, 3]
    nC = nG @ X_CG[:3, :3].T
    keep = np.ones(len(pC), dtype=bool)
    if one_sided:
        keep &= np.einsum("ij,ij->i", nC, pC) < 0
    keep &= rng.random(len(pC)) >= drop
    pC, labels = pC[keep], labels[keep]
    pC = pC + rng.normal(scale=noise, size=pC.shape)
    n_out = int(round(outliers * len(pC)))
    if n_out:
        lo, hi = pC.min(axis=0) - 0.05, pC.max(axis=0) + 0.05
        pC = np.concatenate([pC, rng.uniform(lo, hi, size=(n_out, 3))])
        labels = np.concatenate([labels, rng.integers(0, 3, n_out)])
    perm = rng.permutation(len(pC))
    return SyntheticCloud(pC[perm], labels[perm].astype(np.int64))


@dataclasses.dataclass(frozen=True)
class SyntheticView:
    """A point-splat render: pointmap (H, W, 3) in the camera frame, validity, part labels."""

    pointmap: np.ndarray
    valid: np.ndarray
    part_labels: np.ndarray


def render_gripper(
    model: GripperModel,
    X_CG: np.ndarray,
    width: float,
    K: np.ndarray,
    height: int,
    width_px: int,
    *,
    samples: int = 60000,
    noise: float = 0.0,
    seed: int = 0,
    background: np.ndarray | None = None,
) -> SyntheticView:
    """Z-buffered point-splat render of the gripper (and optional background points).

    Dense surface samples are projected with ``K`` and the nearest one wins each pixel, which
    reproduces self-occlusion and the pixel footprint of a real pointmap.

    Args:
        model: the gripper model.
        X_CG: gripper pose in the camera frame.
        width: finger opening (m).
        K: 3x3 intrinsics.
        height, width_px: image size.
        samples: surface samples splatted (enough to cover every visible pixel).
        noise: Gaussian noise (m) added to the visible points along their viewing ray.
        seed: RNG seed.
        background: optional (M, 3) extra points in the camera frame (label -1), e.g. a table.
    """
    rng = np.random.default_rng(seed)
    areas = np.array([model.meshes[p].area for p in PARTS])
    counts = np.maximum(1, np.round(samples * areas / areas.sum()).astype(int))
    s = model.sample_points(width=width, counts=dict(zip(PARTS, counts.tolist())), seed=seed)
    pts = np.concatenate([s[p].points for p in PARTS]) @ X_CG[:3, :3].T + X_CG[:3, 3]
    lab = np.concatenate([np.full(len(s[p].points), k) for k, p in enumerate(PARTS)])
    if background is not None:
        pts = np.concatenate([pts, np.asarray(background, dtype=np.float64)])
        lab = np.concatenate([lab, np.full(len(background), -1)])
    z = pts[:, 2]
    front = z > 1e-6
    pts, lab, z = pts[front], lab[front], z[front]
    u = np.rint(K[0, 0] * pts[:, 0] / z + K[0, 2]).astype(np.int64)
    v = np.rint(K[1, 1] * pts[:, 1] / z + K[1, 2]).astype(np.int64)
    inside = (u >= 0) & (u < width_px) & (v >= 0) & (v < height)
    pts, lab, z, u, v = pts[inside], lab[inside], z[inside], u[inside], v[inside]
    pix = v * width_px + u
    order = np.lexsort((z, pix))
    first = np.ones(len(order), dtype=bool)
    first[1:] = pix[order][1:] != pix[order][:-1]
    win = order[first]
    pointmap = np.zeros((height * width_px, 3))
    valid = np.zeros(height * width_px, dtype=bool)
    labels = np.full(height * width_px, -1, dtype=np.int64)
    p = pts[win]
    if noise > 0:
        p = p * (1.0 + rng.normal(scale=noise, size=(len(p), 1)) / p[:, 2:3])
    pointmap[pix[win]] = p
    valid[pix[win]] = True
    labels[pix[win]] = lab[win]
    return SyntheticView(pointmap.reshape(height, width_px, 3).astype(np.float32), valid.reshape(height, width_px),
                         labels.reshape(height, width_px))


def gripper_cut_by_border(model: GripperModel, *, shift: float = 0.0, seed: int = 0,
                          noise: float = 0.001) -> tuple[np.ndarray, np.ndarray, SyntheticView]:
    """A gripper whose palm is beyond the top border of a 128x160 image, only its fingertips in
    view (a few dozen pixels), with a wall 15 cm behind it: the geometry of an idle arm's open
    gripper seen by a held-out camera in a recorded cereal episode.

    Args:
        model: the gripper model.
        shift: move the gripper along the camera's y by this much (m; negative: further out).
        seed: render and wall seed (the pose does not depend on it).
        noise: render noise (m), as :func:`render_gripper`.

    Returns:
        ``(X_CG, K, view)``.
    """
    H, W = 128, 160
    K = np.array([[95.25, 0.0, 79.5], [0.0, 95.25, 63.5], [0.0, 0.0, 1.0]])
    X = np.eye(4)
    X[:3, :3] = Rotation.from_matrix([[-0.04, -0.999, 0.0], [0.87, -0.035, 0.492],
                                      [-0.491, 0.02, 0.871]]).as_matrix()
    X[:3, 3] = [0.144, -0.54 + shift, 0.67]
    rng = np.random.default_rng(seed)
    n = 80000
    wall = np.c_[rng.uniform(-0.8, 0.8, n), rng.uniform(-1.0, 0.6, n), np.full(n, X[2, 3] + 0.15)]
    return X, K, render_gripper(model, X, 0.08, K, H, W, seed=seed, noise=noise, background=wall)


def gripper_cut_by_border_in_view_m(model: GripperModel, *, seed: int = 0, angle_deg: float = 120.0
                                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, SyntheticView]:
    """:func:`gripper_cut_by_border` taken by camera m and handed over as view m is: its points
    ``X^{m->n}`` in the frame of a camera n that looks at the gripper from ``angle_deg`` around
    camera m's y axis (from the side camera m does not see), about 0.9 m away.

    Returns:
        ``(X_CnG, X_CnCm, K, view)``; ``view.pointmap`` is in camera n's frame (zeros where
        invalid), its pixels are camera m's (intrinsics ``K``).
    """
    X_CmG, K, view = gripper_cut_by_border(model, seed=seed)
    X_CnCm = np.eye(4)
    X_CnCm[:3, :3] = Rotation.from_euler("y", angle_deg, degrees=True).as_matrix()
    X_CnCm[:3, 3] = np.array([0.05, -0.1, 0.9]) - X_CnCm[:3, :3] @ X_CmG[:3, 3]
    pm = view.pointmap @ X_CnCm[:3, :3].T + X_CnCm[:3, 3]
    pm = np.where(view.valid[..., None], pm, 0.0).astype(view.pointmap.dtype)
    return X_CnCm @ X_CmG, X_CnCm, K, dataclasses.replace(view, pointmap=pm)

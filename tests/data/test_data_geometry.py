"""Pointmaps, frames, projection, normalisation and the depth codec against hand-computed values."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from geo4d_policy.data import geometry as g
from geo4d_policy.data import synthetic
from geo4d_policy.interface import CameraIntrinsics, CameraSpec, look_at


def test_fronto_parallel_plane_pointmap():
    # 3 rows x 4 columns, fx=100, fy=50, principal point at the image centre (1.5, 1.0).
    K = np.array([[100.0, 0, 1.5], [0, 50.0, 1.0], [0, 0, 1]])
    depth = np.full((3, 4), 2.0, np.float32)
    depth[1, 1] = 0.0
    depth[2, 0] = np.nan
    pts, valid = g.depth_to_pointmap(depth, K)
    assert pts.shape == (3, 4, 3) and pts.dtype == np.float32 and valid.dtype == bool
    np.testing.assert_allclose(pts[0, 0], [-0.03, -0.04, 2.0], atol=1e-7)  # u=0, v=0
    np.testing.assert_allclose(pts[2, 3], [0.03, 0.04, 2.0], atol=1e-7)  # u=3, v=2
    np.testing.assert_allclose(pts[1, 2], [0.01, 0.0, 2.0], atol=1e-7)  # u=2, v=1
    assert not valid[1, 1] and not valid[2, 0] and valid.sum() == 10
    assert np.isfinite(pts).all() and (pts[~valid] == 0).all()  # placeholder, flagged by the mask
    np.testing.assert_allclose(g.depth_from_pointmap(pts, valid), np.where(valid, 2.0, 0.0))


def test_known_transform_and_inverse():
    c, s = 0.0, 1.0  # 90 degrees about z
    X_AB = np.array([[c, -s, 0, 1], [s, c, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1.0]])
    np.testing.assert_allclose(g.transform_points(X_AB, np.array([1.0, 0, 0])), [1, 3, 3])
    np.testing.assert_allclose(g.transform_points(X_AB, np.array([[0.0, 0, 1]])), [[1, 2, 4]])
    np.testing.assert_allclose(g.invert_transform(X_AB) @ X_AB, np.eye(4), atol=1e-12)
    p32 = g.transform_points(X_AB, np.zeros((2, 2, 3), np.float32))
    assert p32.dtype == np.float32 and p32.shape == (2, 2, 3)


def _look_at_spec(name: str, position, target, hw=(33, 41)) -> CameraSpec:
    h, w = hw
    intr = CameraIntrinsics(w, h, 30.0, 30.0, 0.5 * (w - 1), 0.5 * (h - 1))
    return CameraSpec(name, intr, look_at(np.asarray(position, float), np.asarray(target, float)))


@pytest.mark.parametrize("target", [(0.0, -0.2, 0.0), (0.1, 0.0, 0.1)])  # table point; box top
def test_cross_view_pointmap_agrees_within_mm_quantisation(target):
    # Both cameras look at the same 3D point, so with odd image sizes their centre pixel rays
    # pass exactly through it: X^n and X^{m->n} at the centre pixel must both be that point.
    P = np.asarray(target)
    box = synthetic.Box((0.05, -0.05, 0.0), (0.15, 0.05, 0.1), (200, 0, 0))
    n = _look_at_spec("n", (0.5, 0.3, 0.9), P)
    m = _look_at_spec("m", (0.4, -0.45, 0.8), P)
    pms = {}
    for spec in (n, m):
        _, depth, _ = synthetic.render(spec, [box])
        depth = g.decode_depth_mm(g.encode_depth_mm(depth))  # through the on-disk codec
        pms[spec.name] = g.depth_to_pointmap(depth, spec.intrinsics)
    X_n, valid_n = pms["n"]
    X_mn = g.pointmap_to_view(*pms["m"], X_TCm=m.X_TC, X_TCn=n.X_TC)
    centre = (16, 20)
    P_n = g.transform_points(g.invert_transform(n.X_TC), P)
    assert valid_n[centre] and pms["m"][1][centre]
    # Centre rays have unit length per metre of depth: each view is off by <= 0.5 mm.
    assert np.abs(X_n[centre] - P_n).max() <= 0.5e-3 + 1e-6
    assert np.abs(X_mn[centre] - P_n).max() <= 0.5e-3 + 1e-6
    assert np.linalg.norm(X_n[centre] - X_mn[centre]) <= 1.0e-3
    # Every valid pixel of m lands where the true geometry is: back in T, table points have z = 0.
    X_mT = g.transform_points(n.X_TC, X_mn[pms["m"][1]])
    assert (X_mT[:, 2] > -1e-3).all()


def test_projection_round_trip(rng):
    intr = CameraIntrinsics(40, 30, 35.0, 33.0, 19.5, 14.5)
    u = rng.uniform(-0.4, 39.4, 200)
    v = rng.uniform(-0.4, 29.4, 200)
    z = rng.uniform(0.3, 3.0, 200)
    p = np.stack([(u - intr.cx) / intr.fx * z, (v - intr.cy) / intr.fy * z, z], axis=-1)
    uvz, vis = g.project_points(p, intr)
    assert vis.all()
    np.testing.assert_allclose(uvz, np.stack([u, v, z], -1), atol=1e-9)
    behind = p * np.array([1, 1, -1])
    outside = p + np.array([10.0, 0, 0])
    assert not g.project_points(behind, intr)[1].any()
    assert not g.project_points(outside, intr)[1].any()
    # Pixel centres back-project to the same points as depth_to_pointmap.
    depth = np.full((30, 40), 1.5, np.float32)
    pts, _ = g.depth_to_pointmap(depth, intr)
    uvz, vis = g.project_points(pts, intr)
    vv, uu = np.mgrid[0:30, 0:40]
    assert vis.all()
    np.testing.assert_allclose(uvz[..., 0], uu, atol=1e-4)
    np.testing.assert_allclose(uvz[..., 1], vv, atol=1e-4)


def test_normalisation_round_trip_and_serialisation(rng):
    norm = g.PointmapNormalization()
    assert (norm.lo, norm.hi) == (-1.0, 2.0)
    np.testing.assert_allclose(norm.normalize(np.array([-1.0, 0.5, 2.0])), [-1.0, 0.0, 1.0])
    x = rng.uniform(-3, 4, (5, 3))
    np.testing.assert_allclose(norm.denormalize(norm.normalize(x)), x, atol=1e-12)
    t = torch.tensor(x, dtype=torch.float32)
    assert torch.allclose(norm.denormalize(norm.normalize(t)), t, atol=1e-6)
    assert g.PointmapNormalization.from_dict(norm.to_dict()) == norm
    with pytest.raises(ValueError):
        g.PointmapNormalization(lo=1.0, hi=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        norm.lo = 0.0  # type: ignore[misc]


def test_depth_codec():
    d = np.array([0.0, -1.0, np.nan, np.inf, 0.0002, 0.0012, 1.2344, 1.2346, 70.0], np.float32)
    mm = g.encode_depth_mm(d)
    assert mm.dtype == np.uint16
    assert mm.tolist() == [0, 0, 0, 0, 1, 1, 1234, 1235, 65535]
    back = g.decode_depth_mm(mm)
    assert back.dtype == np.float32 and back[0] == 0.0
    np.testing.assert_allclose(back[6], 1.234, atol=1e-6)


def test_torch_twins_match_numpy(rng):
    intr = CameraIntrinsics(8, 6, 7.0, 6.0, 3.5, 2.5)
    depth = rng.uniform(0.5, 2.0, (2, 6, 8)).astype(np.float32)
    depth[0, 0, 0] = 0
    pts, valid = g.depth_to_pointmap(depth, intr)
    pts_t, valid_t = g.depth_to_pointmap_torch(torch.from_numpy(depth), torch.from_numpy(intr.K))
    np.testing.assert_allclose(pts_t.numpy(), pts, atol=1e-6)
    assert (valid_t.numpy() == valid).all()
    X = look_at(np.array([0.3, 0.2, 0.9]), np.zeros(3))
    np.testing.assert_allclose(g.transform_points_torch(torch.from_numpy(X), torch.from_numpy(pts)).numpy(),
                               g.transform_points(X, pts), atol=1e-5)
    batched = g.transform_points_torch(torch.from_numpy(np.stack([X, np.eye(4)])), torch.from_numpy(pts))
    np.testing.assert_allclose(batched[1].numpy(), pts[1], atol=1e-6)
    uvz, vis = g.project_points(pts, intr)
    uvz_t, vis_t = g.project_points_torch(torch.from_numpy(pts), torch.from_numpy(intr.K), height=6, width=8)
    np.testing.assert_allclose(uvz_t.numpy(), uvz, atol=1e-4)
    assert (vis_t.numpy() == vis).all()


def test_rotation_6d_round_trip(rng):
    q = rng.normal(size=(10, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    R = np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], axis=1)
    np.testing.assert_allclose(g.rotation_from_6d(g.rotation_to_6d(R)), R, atol=1e-12)


def test_pointmap_chw_matches_the_reference_path(rng):
    intr = CameraIntrinsics(8, 6, 7.0, 6.0, 3.5, 2.5)
    depth = rng.uniform(0.5, 2.0, (3, 6, 8)).astype(np.float32)
    depth[1, 2, 3] = 0.0
    X_AC = look_at(np.array([0.3, -0.2, 0.9]), np.zeros(3))
    norm = g.PointmapNormalization()
    fast, valid = g.pointmap_chw(depth, intr, X_AC=X_AC, normalization=norm)
    pts, ok = g.depth_to_pointmap(depth, intr)
    ref = np.where(ok[..., None], norm.normalize(g.transform_points(X_AC, pts)), 0.0)
    assert fast.shape == (3, 3, 6, 8) and fast.dtype == np.float32 and (valid == ok).all()
    np.testing.assert_allclose(np.moveaxis(fast, -3, -1), ref, atol=1e-5)
    plain, _ = g.pointmap_chw(depth, intr.K)
    np.testing.assert_allclose(np.moveaxis(plain, -3, -1), pts, atol=1e-6)

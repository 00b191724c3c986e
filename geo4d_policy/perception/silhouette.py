"""The gripper model's part-label silhouettes for a pinhole camera: the RGB pose estimator's renderer.

:class:`SilhouetteRenderer` is a numpy z-buffered triangle rasteriser of the gripper model
(:mod:`gripper_model`'s palm and finger meshes at a finger opening, behind the wrist link that
hides part of the palm) for a pinhole ``K`` and one or several poses ``X_CG``, producing an (H, W)
part-label image (-1 none, 0 palm, 1 left finger, 2 right finger) per pose; a pixel belongs to a
triangle when its centre (integer coordinates, the convention of ``project_points`` and of the
simulator's label images) lies inside it. :class:`TorchSilhouetteRenderer` is the same
rasterisation in torch, for batches of pose hypotheses on a GPU
(:mod:`geo4d_policy.perception.rgb_objective` scores them there); on the CPU it reproduces the
numpy images (tested), which stay the default without a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from geo4d_policy.data.geometry import checked_transform
from geo4d_policy.perception.gripper_model import PARTS, GripperModel

OCCLUDER = -2
"""Face label of the occluder while rasterising (never in an image)."""


def check_intrinsics(K: np.ndarray) -> np.ndarray:  # noqa: N803 - the standard symbol
    """``K`` as a float64 3x3 intrinsic matrix.

    Raises:
        ValueError: not finite 3x3, non-positive focal lengths or a last row other than (0, 0, 1).
    """
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all():
        raise ValueError(f"K must be a finite 3x3 intrinsic matrix, got shape {K.shape}")
    if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], (0.0, 0.0, 1.0)):
        raise ValueError(f"K must have positive focal lengths and last row (0, 0, 1), got {K.tolist()}")
    return K


def check_image_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` as two positive ints (ValueError otherwise)."""
    if len(shape) != 2 or int(shape[0]) <= 0 or int(shape[1]) <= 0:
        raise ValueError(f"shape must be (H, W) with positive sizes, got {shape}")
    return int(shape[0]), int(shape[1])



class SilhouetteRenderer:
    """Z-buffered part-label rendering of the gripper model for a pinhole camera, in numpy.

    All triangles are rasterised at once: every (triangle, pixel of its bounding box) pair is
    tested with edge functions, depth is interpolated perspective-correctly (``1/z`` is affine
    in the image), and the nearest surface wins each pixel. Triangles with a vertex closer than
    ``near`` to the camera plane are skipped (the gripper is never that close to a camera).
    Several poses can be rasterised in one call (:meth:`render_many`): numpy's per-call
    overhead, not the pixel work, dominates a render of this small model, so a batch of poses
    costs little more than one.

    The model's occluder (the arm link rigid in ``G``, :attr:`GripperModel.occluder`) is drawn
    into the z-buffer but not into the image: gripper pixels behind it are not gripper pixels
    in a label image either (they belong to the arm there).

    Args:
        model: the gripper model (default: :meth:`GripperModel.load`).
        cull_back_faces: skip triangles facing away from the camera. The part meshes are closed
            unions of outward-wound primitives, so a back face is always hidden behind a front
            face and culling only halves the work (a test checks the images are identical).
        near: near-plane distance (m).
        occlusion: draw the model's occluder (if it has one).

    A renderer keeps a z-buffer between calls: use one per thread.

    Example:
        >>> labels = SilhouetteRenderer().render(X_CG, K=K, shape=(128, 160), width=0.04)
    """

    def __init__(self, model: GripperModel | None = None, *, cull_back_faces: bool = True,
                 near: float = 1e-3, occlusion: bool = True) -> None:
        self.model = model or GripperModel.load()
        self.cull_back_faces = bool(cull_back_faces)
        self.near = float(near)
        verts, slopes, faces, labels, offset = [], [], [], [], 0
        parts = [(code, self.model.meshes[part], self.model.X_GB(part, 0.0), self.model.X_GB(part, self.model.stroke))
                 for code, part in enumerate(PARTS)]
        if occlusion and self.model.occluder is not None:
            parts.append((OCCLUDER, self.model.occluder, np.eye(4), np.eye(4)))
        for code, mesh, X0, X1 in parts:
            v = np.asarray(mesh.vertices, dtype=np.float64)
            # Parts are rigid and the fingers slide along the closing axis, so a vertex in G is
            # affine in the opening: v(w) = v(0) + w * dv.
            verts.append(v @ X0[:3, :3].T + X0[:3, 3])
            slopes.append(np.broadcast_to((X1[:3, 3] - X0[:3, 3]) / self.model.stroke, v.shape))
            faces.append(np.asarray(mesh.faces, dtype=np.int64) + offset)
            labels.append(np.full(len(mesh.faces), code, dtype=np.int8))
            offset += len(mesh.vertices)
        self._V0_G = np.concatenate(verts)
        self._dV_G = np.concatenate(slopes)
        self._faces = np.concatenate(faces)
        self._face_label = np.concatenate(labels)
        # Back-face test in G: with n the (unnormalised) face normal and p0 a face vertex, the
        # face points away from the camera when n . p0_C > 0, i.e. n . (p0_G(w) + R^T t) > 0.
        P = self._V0_G[self._faces]
        self._n_G = np.cross(P[:, 1] - P[:, 0], P[:, 2] - P[:, 0])
        self._n_dot_p0 = np.einsum("ij,ij->i", self._n_G, P[:, 0])
        self._n_dot_dp0 = np.einsum("ij,ij->i", self._n_G, self._dV_G[self._faces[:, 0]])
        self._zbuffer = (np.zeros(0), np.zeros(0, dtype=np.int64))

    def vertices_in_camera(self, X_CG: np.ndarray, *, width: float) -> np.ndarray:
        """(V, 3) model vertices in the camera frame at finger opening ``width`` (all parts)."""
        X = np.asarray(X_CG, dtype=np.float64)
        w = float(np.clip(width, 0.0, self.model.stroke))
        return self._vertices(X[None, :3, :3], X[None, :3, 3], np.array([w]))[0]

    def _vertices(self, R: np.ndarray, t: np.ndarray, widths: np.ndarray) -> np.ndarray:
        """(B, V, 3) vertices for B poses ``(R, t)`` of G in the camera and openings (clipped)."""
        V_G = self._V0_G[None] + widths[:, None, None] * self._dV_G[None]
        return np.einsum("bij,bvj->bvi", R, V_G) + t[:, None, :]

    def render(self, X_CG: np.ndarray, *, K: np.ndarray, shape: tuple[int, int], width: float) -> np.ndarray:
        """The (H, W) int8 part-label image of the gripper at pose ``X_CG``.

        Args:
            X_CG: 4x4 pose of the gripper frame in the camera frame (+z forward, +x right, +y down).
            K: 3x3 intrinsics.
            shape: ``(H, W)`` of the image.
            width: finger opening (m), clipped to the model's stroke.

        Returns:
            (H, W) int8: -1 none, 0 palm, 1 left finger, 2 right finger.

        Raises:
            ValueError: ``K`` is not a valid intrinsic matrix, ``X_CG`` not a finite 4x4, or
                ``shape`` not two positive integers.
        """
        return self.render_many(np.asarray(X_CG)[None], K=K, shape=shape, widths=[width])[0]

    def render_many(self, X_CG: np.ndarray, *, K: np.ndarray, shape: tuple[int, int],
                    widths: Sequence[float] | np.ndarray) -> np.ndarray:
        """(B, H, W) part-label images of B poses (see :meth:`render`) in one rasterisation.

        Raises:
            ValueError: as :meth:`render`, or the number of widths differs from the poses'.
        """
        K = check_intrinsics(K)
        X = np.asarray(X_CG, dtype=np.float64)
        if X.ndim != 3:
            raise ValueError(f"X_CG must be (B, 4, 4) poses, got shape {X.shape}")
        X = np.stack([checked_transform(x, "X_CG") for x in X]) if len(X) else X.reshape(0, 4, 4)
        H, W = check_image_shape(shape)
        w = np.asarray(widths, dtype=np.float64).reshape(-1)
        if w.shape != (len(X),) or not np.isfinite(w).all():
            raise ValueError(f"need one finite width per pose ({len(X)}), got {widths}")
        return self._render_many(X[:, :3, :3], X[:, :3, 3], np.clip(w, 0.0, self.model.stroke), K, H, W)

    def _render_many(self, R: np.ndarray, t: np.ndarray, widths: np.ndarray, K: np.ndarray, H: int, W: int
                     ) -> np.ndarray:
        """:meth:`render_many` without argument checks (widths already clipped)."""
        image = np.full(len(R) * H * W, -1, dtype=np.int8)
        pix, lab = self._rasterize(R, t, widths, K, H, W)
        image[pix] = lab
        return image.reshape(len(R), H, W)

    def _rasterize(self, R: np.ndarray, t: np.ndarray, widths: np.ndarray, K: np.ndarray, H: int, W: int
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Visible gripper surface of B poses: flat indices into (B, H, W) (pose-major, so
        sorted by pose) and part labels, one entry per covered pixel (occluded ones left out)."""
        B = len(R)
        V = self._vertices(R, t, widths)  # (B, V, 3)
        keep = (V[:, :, 2] > self.near)[:, self._faces].all(axis=2)  # (B, F)
        if self.cull_back_faces:
            t_G = np.einsum("bji,bj->bi", R, t)  # R^T t: the camera centre's offset, in G
            facing = self._n_dot_p0[None] + widths[:, None] * self._n_dot_dp0[None] + t_G @ self._n_G.T
            keep &= facing < 0.0
        pose, face = np.nonzero(keep)
        if len(face) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int8)
        P = V[pose[:, None], self._faces[face]]  # (M, 3, 3)
        labels = self._face_label[face]
        z = P[:, :, 2]
        u = (K[0, 0] * P[:, :, 0] + K[0, 1] * P[:, :, 1]) / z + K[0, 2]
        v = K[1, 1] * P[:, :, 1] / z + K[1, 2]
        u0, u1, u2 = u.T
        v0, v1, v2 = v.T
        area = (u1 - u0) * (v2 - v0) - (v1 - v0) * (u2 - u0)
        u_lo = np.maximum(np.ceil(u.min(axis=1)), 0).astype(np.int64)
        u_hi = np.minimum(np.floor(u.max(axis=1)), W - 1).astype(np.int64)
        v_lo = np.maximum(np.ceil(v.min(axis=1)), 0).astype(np.int64)
        v_hi = np.minimum(np.floor(v.max(axis=1)), H - 1).astype(np.int64)
        occ = labels == OCCLUDER
        if occ.any():
            # The occluder only matters where it covers the gripper: clip its triangles' boxes to
            # the box of the pose's gripper triangles (most of the arm link lies outside it).
            part_pose = pose[~occ]
            box = np.stack([np.full(B, W), np.full(B, -1), np.full(B, H), np.full(B, -1)])
            np.minimum.at(box[0], part_pose, u_lo[~occ])
            np.maximum.at(box[1], part_pose, u_hi[~occ])
            np.minimum.at(box[2], part_pose, v_lo[~occ])
            np.maximum.at(box[3], part_pose, v_hi[~occ])
            op = pose[occ]
            u_lo[occ] = np.maximum(u_lo[occ], box[0, op])
            u_hi[occ] = np.minimum(u_hi[occ], box[1, op])
            v_lo[occ] = np.maximum(v_lo[occ], box[2, op])
            v_hi[occ] = np.minimum(v_hi[occ], box[3, op])
        nu = np.maximum(u_hi - u_lo + 1, 0)
        nv = np.maximum(v_hi - v_lo + 1, 0)
        # (Nearly) edge-on triangles are skipped: their neighbours cover those pixels.
        count = np.where(np.abs(area) > 1e-9, nu * nv, 0)
        total = int(count.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int8)
        # One row per (triangle, pixel of its bounding box). Per-triangle values are spread
        # over the rows with np.repeat (rows are grouped by triangle), cheaper than a gather.
        def spread(a: np.ndarray) -> np.ndarray:
            return np.repeat(a, count)

        local = np.arange(total) - spread(np.cumsum(count) - count)
        row, col = np.divmod(local, spread(nu))
        fu = spread(u_lo.astype(np.float64)) + col
        fv = spread(v_lo.astype(np.float64)) + row
        inv_area = np.divide(1.0, area, out=np.zeros_like(area), where=count > 0)
        # Barycentric coordinates from edge functions; dividing by the signed area makes the
        # inside test independent of the winding in the image. The first coordinate rejects
        # about half the rows, so the others are computed on the survivors only.
        du2, dv2 = spread(u2) - fu, spread(v2) - fv
        b0 = ((spread(u1) - fu) * dv2 - (spread(v1) - fv) * du2) * spread(inv_area)
        rows = np.flatnonzero(b0 >= 0.0)
        tri = np.repeat(np.arange(len(P)), count)[rows]
        fu, fv, du2, dv2, b0 = fu[rows], fv[rows], du2[rows], dv2[rows], b0[rows]
        b1 = (du2 * (v0[tri] - fv) - dv2 * (u0[tri] - fu)) * inv_area[tri]
        b2 = 1.0 - b0 - b1
        inside = (b1 >= 0.0) & (b2 >= 0.0)
        tri, b0, b1, b2 = tri[inside], b0[inside], b1[inside], b2[inside]
        pix = (pose[tri] * H + (v_lo[tri] + row[rows[inside]])) * W + (u_lo[tri] + col[rows[inside]])
        inv_z = b0 / z[tri, 0] + b1 / z[tri, 1] + b2 / z[tri, 2]
        # Z-buffer: the largest 1/z (nearest surface) wins each pixel. One buffer, grown when a
        # call needs more, is kept between calls and only its touched entries are cleared (a
        # fresh one per call costs more than the rasterisation at supersampled sizes).
        if len(self._zbuffer[0]) < B * H * W:
            self._zbuffer = (np.zeros(B * H * W), np.zeros(B * H * W, dtype=np.int64))
        nearest, claim = self._zbuffer
        np.maximum.at(nearest, pix, inv_z)
        win = np.flatnonzero(inv_z >= nearest[pix])
        nearest[pix] = 0.0
        # Ties (pixels on an edge shared by two triangles) leave several winners: one of them
        # claims the pixel, so that each pixel is reported once.
        claim[pix[win]] = win
        win = win[claim[pix[win]] == win]
        lab = labels[tri[win]]
        part = lab != OCCLUDER
        return pix[win][part], lab[part]


class TorchSilhouetteRenderer(SilhouetteRenderer):
    """:class:`SilhouetteRenderer`'s rasterisation in torch (float64), on ``device``.

    The same steps as the numpy rasteriser (edge functions per (triangle, pixel of its box),
    perspective-correct ``1/z``, nearest surface wins, ties to the last candidate, occluder in
    the z-buffer only), so on the CPU its images equal the numpy ones (tested); on a GPU a batch
    of pose hypotheses is one pass of a few dozen kernels. :meth:`rasterize_torch` keeps the
    result on the device for the torch objective; :meth:`render_many` returns numpy images.

    Args:
        model, cull_back_faces, near, occlusion: as :class:`SilhouetteRenderer`.
        device: torch device (``"cuda"``, ``"cpu"``, ...).
    """

    def __init__(self, model: GripperModel | None = None, *, device: Any = "cpu", cull_back_faces: bool = True,
                 near: float = 1e-3, occlusion: bool = True) -> None:
        super().__init__(model, cull_back_faces=cull_back_faces, near=near, occlusion=occlusion)
        import torch

        self.torch = torch
        self.device = torch.device(device)

        def tensor(a: np.ndarray, dtype: Any = torch.float64) -> Any:
            return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=self.device)

        self._t_V0, self._t_dV = tensor(self._V0_G), tensor(self._dV_G)
        self._t_faces = tensor(self._faces, torch.long)
        self._t_label = tensor(self._face_label, torch.int8)
        self._t_n, self._t_n_p0, self._t_n_dp0 = tensor(self._n_G), tensor(self._n_dot_p0), tensor(self._n_dot_dp0)

    def _render_many(self, R: np.ndarray, t: np.ndarray, widths: np.ndarray, K: np.ndarray, H: int, W: int
                     ) -> np.ndarray:
        torch = self.torch
        image = torch.full((len(R) * H * W,), -1, dtype=torch.int8, device=self.device)
        pix, lab = self.rasterize_torch(R, t, widths, K, H, W)
        image[pix] = lab
        return image.reshape(len(R), H, W).cpu().numpy()

    def _rasterize(self, R: np.ndarray, t: np.ndarray, widths: np.ndarray, K: np.ndarray, H: int, W: int
                   ) -> tuple[np.ndarray, np.ndarray]:
        pix, lab = self.rasterize_torch(R, t, widths, K, H, W)
        return pix.cpu().numpy(), lab.cpu().numpy()

    def rasterize_torch(self, R: np.ndarray, t: np.ndarray, widths: np.ndarray, K: np.ndarray, H: int, W: int
                        ) -> tuple[Any, Any]:
        """As :meth:`SilhouetteRenderer._rasterize`, on the device: (flat pixel indices into
        (B, H, W), int64; part labels, int8), tensors."""
        torch = self.torch
        dev = self.device
        B = len(R)
        R_t = torch.as_tensor(R, dtype=torch.float64, device=dev)
        t_t = torch.as_tensor(t, dtype=torch.float64, device=dev)
        w_t = torch.as_tensor(widths, dtype=torch.float64, device=dev)
        empty = (torch.zeros(0, dtype=torch.long, device=dev), torch.zeros(0, dtype=torch.int8, device=dev))
        V = torch.einsum("bij,bvj->bvi", R_t, self._t_V0[None] + w_t[:, None, None] * self._t_dV[None]) + t_t[:, None]
        keep = (V[:, :, 2] > self.near)[:, self._t_faces].all(dim=2)  # (B, F)
        if self.cull_back_faces:
            t_G = torch.einsum("bji,bj->bi", R_t, t_t)
            facing = self._t_n_p0[None] + w_t[:, None] * self._t_n_dp0[None] + t_G @ self._t_n.T
            keep &= facing < 0.0
        pose, face = torch.nonzero(keep, as_tuple=True)
        if face.numel() == 0:
            return empty
        P = V[pose[:, None], self._t_faces[face]]  # (M, 3, 3)
        labels = self._t_label[face]
        z = P[:, :, 2]
        k = [float(x) for x in (K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2])]
        u = (k[0] * P[:, :, 0] + k[1] * P[:, :, 1]) / z + k[2]
        v = k[3] * P[:, :, 1] / z + k[4]
        u0, u1, u2 = u.unbind(1)
        v0, v1, v2 = v.unbind(1)
        area = (u1 - u0) * (v2 - v0) - (v1 - v0) * (u2 - u0)
        u_lo = torch.ceil(u.min(dim=1).values).clamp(min=0).long()
        u_hi = torch.floor(u.max(dim=1).values).clamp(max=W - 1).long()
        v_lo = torch.ceil(v.min(dim=1).values).clamp(min=0).long()
        v_hi = torch.floor(v.max(dim=1).values).clamp(max=H - 1).long()
        occ = labels == OCCLUDER
        if bool(occ.any()):
            part_pose, op = pose[~occ], pose[occ]

            def reduce(fill: int, values: Any, how: str) -> Any:
                out = torch.full((B,), fill, dtype=torch.long, device=dev)
                return out.scatter_reduce(0, part_pose, values, how, include_self=True)

            u_lo[occ] = torch.maximum(u_lo[occ], reduce(W, u_lo[~occ], "amin")[op])
            u_hi[occ] = torch.minimum(u_hi[occ], reduce(-1, u_hi[~occ], "amax")[op])
            v_lo[occ] = torch.maximum(v_lo[occ], reduce(H, v_lo[~occ], "amin")[op])
            v_hi[occ] = torch.minimum(v_hi[occ], reduce(-1, v_hi[~occ], "amax")[op])
        nu = (u_hi - u_lo + 1).clamp(min=0)
        nv = (v_hi - v_lo + 1).clamp(min=0)
        count = torch.where(area.abs() > 1e-9, nu * nv, torch.zeros_like(nu))
        total = int(count.sum())
        if total == 0:
            return empty
        tri = torch.repeat_interleave(torch.arange(len(P), device=dev), count)
        local = torch.arange(total, device=dev) - (torch.cumsum(count, 0) - count)[tri]
        row, col = local // nu[tri], local % nu[tri]
        fu = u_lo[tri].double() + col
        fv = v_lo[tri].double() + row
        inv_area = torch.where(count > 0, 1.0 / torch.where(count > 0, area, torch.ones_like(area)),
                               torch.zeros_like(area))
        du2, dv2 = u2[tri] - fu, v2[tri] - fv
        b0 = ((u1[tri] - fu) * dv2 - (v1[tri] - fv) * du2) * inv_area[tri]
        rows = torch.nonzero(b0 >= 0.0).squeeze(1)
        tri, fu, fv, du2, dv2, b0, row, col = (x[rows] for x in (tri, fu, fv, du2, dv2, b0, row, col))
        b1 = (du2 * (v0[tri] - fv) - dv2 * (u0[tri] - fu)) * inv_area[tri]
        b2 = 1.0 - b0 - b1
        inside = torch.nonzero((b1 >= 0.0) & (b2 >= 0.0)).squeeze(1)
        tri, b0, b1, b2, row, col = (x[inside] for x in (tri, b0, b1, b2, row, col))
        pix = (pose[tri] * H + (v_lo[tri] + row)) * W + (u_lo[tri] + col)
        inv_z = b0 / z[tri, 0] + b1 / z[tri, 1] + b2 / z[tri, 2]
        nearest = torch.zeros(B * H * W, dtype=torch.float64, device=dev)
        nearest.scatter_reduce_(0, pix, inv_z, "amax", include_self=True)
        win = torch.nonzero(inv_z >= nearest[pix]).squeeze(1)
        # Ties: the last candidate claims the pixel (numpy's fancy assignment keeps the last write).
        claim = torch.full((B * H * W,), -1, dtype=torch.long, device=dev)
        claim.scatter_reduce_(0, pix[win], win, "amax", include_self=True)
        win = win[claim[pix[win]] == win]
        lab = labels[tri[win]]
        part = lab != OCCLUDER
        return pix[win][part], lab[part]

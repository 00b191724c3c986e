"""RGB-only gripper pose estimation and two-view ray fusion: the Dreamitate baseline's perception.

Dreamitate generates RGB-only video of two views and recovers the gripper's 6DoF pose in each
view from the image alone (MegaPose's role: render-and-compare of the known CAD model against
the segmented gripper, scale fixed by the model's known size), then fuses the two per-view
estimates: the translation is the midpoint of the closest points of the two camera rays through
the per-view gripper origins, the rotation an average. As in our geo4d pipeline, the policy
knows both views' calibrated ``X_TC`` (for fairness, Dreamitate gets them too).

This module owns:
  * :class:`SilhouetteRenderer`: a numpy z-buffered triangle rasteriser of the gripper model
    (:mod:`gripper_model`'s palm and finger meshes at a finger opening, behind the wrist link
    that hides part of the palm) for a pinhole ``K`` and one or several poses ``X_CG``,
    producing an (H, W) part-label image (-1 none, 0 palm, 1 left finger, 2 right finger) per
    pose; a pixel belongs to a triangle when its centre (integer coordinates, the convention
    of ``project_points`` and of the simulator's label images) lies inside it.
  * :class:`RGBPoseEstimator`: a :class:`~geo4d_policy.perception.tracker.PoseTracker` that uses
    only a frame's segmentation (part labels or a gripper mask), the intrinsics and a prior pose;
    it never reads the pointmap or depth. ``X_CG`` is in the camera that owns the pixels.
  * :func:`fuse_rays` and :func:`fuse_rgb_views`: ray-midpoint translation and chordal-mean
    rotation of the two views' estimates, in the task frame, reusing
    :class:`~geo4d_policy.perception.fusion.FusedPose`.

The estimator, in brief (the why is in the comments):
  * Pose parameters are the image position of the model's centre (normalised image coordinates),
    the log of its depth, a rotation about the camera axes through that centre, and the finger
    opening: image-space motion, scale and rotation are then nearly decoupled, which suits a
    coordinate-wise search.
  * Poses are rendered ``supersample`` times finer (less for large masks) and compared as
    fractional coverage of each pixel by each part: a binary silhouette only changes when the
    pose moves a boundary across a pixel centre, and a search on it stalls on plateaus a few
    degrees from the optimum.
  * The cost of a pose is an overlap term plus ``edge_weight`` times the mean distance (pixels,
    clipped) from the rendered outlines (whole silhouette and, with part labels, each part) to
    the observed ones (distance transforms computed once per frame): overlap is flat once the
    silhouettes stop overlapping, the edge term still points the way. The overlap term is by
    default a per-part likelihood (each observed label is a pixel-centre sample, whose
    probability is the rendered coverage of that label), or the soft whole-silhouette IoU plus
    the mean soft per-part IoU (``overlap="iou"``); the likelihood measured more accurate.
  * Each start is first aligned: the rendered silhouette's centroid is moved onto the observed
    one and the depth scaled by ``sqrt(rendered area / observed area)``: depth along the ray is
    resolved by the model's known size. A Hooke-Jeeves pattern search then refines all seven
    parameters coarse-to-fine (step sizes halve until a fraction of a pixel / degree).
  * Registration and tracking start from the prior (the hint; the constant-velocity
    prediction, then the previous pose). When registering, or when no prior's coarse fit
    reaches ``good_iou`` or it costs more than ``max_cost_ratio`` times the last frame's fit,
    six starts tilted by ``start_angle`` about the camera axes around the first prior are
    searched too and the best two refined: out-of-plane rotation has shallow local minima in a
    silhouette. Without any prior (or when the prior-based fit fails while tracking), a coarse
    search over a fixed set of orientations runs (MegaPose's coarse stage), and its result must
    reach ``min_search_iou``.
  * Accuracy is bounded by the image: at 128x160 and 0.8 m the gripper covers about 200 pixels
    and a 5 deg turn moves its outline by about a pixel; some silhouettes are genuinely
    ambiguous (a turn towards or away from the camera), which is what the two-view fusion and
    the geo4d pointmaps address.
  * ``confidence`` is the final whole-silhouette IoU; below ``min_iou``, or with an empty or
    too small mask, the frame is ``"lost"``: confidence 0 and the last good pose held, never an
    exception or a NaN for bad frames. Malformed arguments (intrinsics that are not a finite 3x3
    with positive focal lengths, a non-finite prior pose) raise ``ValueError``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from geo4d_policy.data.geometry import invert_transform
from geo4d_policy.perception.fusion import FusedPose
from geo4d_policy.perception.gripper_model import PARTS, GripperModel
from geo4d_policy.perception.tracker import Observation, TrackingFrame, TrackResult

# --------------------------------------------------------------------------------------------
# Argument checks and small rotation helpers
# --------------------------------------------------------------------------------------------


OCCLUDER = -2
"""Face label of the occluder while rasterising (never in an image)."""


def _check_K(K: np.ndarray) -> np.ndarray:  # noqa: N802 - the standard symbol
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all():
        raise ValueError(f"K must be a finite 3x3 intrinsic matrix, got shape {K.shape}")
    if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], (0.0, 0.0, 1.0)):
        raise ValueError(f"K must have positive focal lengths and last row (0, 0, 1), got {K.tolist()}")
    return K


def _check_pose(X: np.ndarray, name: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.shape != (4, 4) or not np.isfinite(X).all():
        raise ValueError(f"{name} must be a finite 4x4 transform, got shape {X.shape}")
    out = np.eye(4)
    out[:3, :3] = _nearest_rotation(X[:3, :3])
    out[:3, 3] = X[:3, 3]
    return out


def _nearest_rotation(M: np.ndarray) -> np.ndarray:
    """The rotation closest to ``M`` in Frobenius norm (SVD projection onto SO(3))."""
    U, _, Vt = np.linalg.svd(M)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt)) or 1.0])
    return U @ D @ Vt


# --------------------------------------------------------------------------------------------
# Silhouette renderer
# --------------------------------------------------------------------------------------------


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
        K = _check_K(K)
        X = np.asarray(X_CG, dtype=np.float64)
        if X.ndim != 3:
            raise ValueError(f"X_CG must be (B, 4, 4) poses, got shape {X.shape}")
        X = np.stack([_check_pose(x, "X_CG") for x in X]) if len(X) else X.reshape(0, 4, 4)
        H, W = _check_shape(shape)
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


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or int(shape[0]) <= 0 or int(shape[1]) <= 0:
        raise ValueError(f"shape must be (H, W) with positive sizes, got {shape}")
    return int(shape[0]), int(shape[1])


# --------------------------------------------------------------------------------------------
# Render-and-compare pose estimation
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RGBPoseConfig:
    """Options of :class:`RGBPoseEstimator` (metres, radians, pixels).

    Attributes:
        min_pixels: fewer segmented pixels than this is a lost frame (nothing to compare with).
        min_iou: a fit whose whole-silhouette IoU is below this is not accepted.
        good_iou: a fit from the prior at or above this is not second-guessed with extra starts.
        min_search_iou: acceptance threshold of a pose found by the prior-free coarse search.
        overlap: ``"likelihood"`` (default): mean over the observed gripper pixels of the
            negative log of the rendered coverage of each pixel's observed label (background
            included); ``"iou"``: ``1 - soft IoU`` of the whole silhouette plus ``part_weight``
            times ``1 - mean soft per-part IoU``. On 16 seeded 128x160 cases at 0.8 m (start
            3 cm / 10 deg off) the likelihood gave median/max rotation errors of 1.7/5.1 deg
            against 2.7/6.1 deg, and depth errors of 7/26 mm against 9/33 mm.
        eps: floor added to coverages in the likelihood (a pixel whose centre lies on a sliver
            of a part can be labelled with it at zero sampled coverage).
        part_weight: weight of the per-part term of the ``"iou"`` overlap.
        edge_weight: cost per pixel of mean boundary distance.
        max_edge_px: boundary distances are clipped here, so that a stray part cannot dominate.
        supersample: poses are rendered this many times finer (per axis) and compared as pixel
            coverage; 3 suits 128x160 images, 2 is enough from 256x320 up.
        max_subpixels: the factor is lowered for frames whose mask times its square exceeds this.
        step_px: initial step of the image position of the model centre (pixels).
        step_log_depth: initial step of the log depth.
        step_rotation: initial rotation step about each camera axis.
        step_width: initial step of the finger opening.
        min_step_scale: the search stops when the step scale falls below this (steps halve).
        max_evaluations: cost evaluations of one search (a render each).
        coarse_step_scale: the per-start coarse search stops at this step scale.
        start_angle: tilt of the extra starts about each camera axis (the capture range of one
            start is about half of it).
        n_refine: starts refined to the end after the coarse stage.
        widen_register: always add the tilted starts when registering (a first frame's hint
            may be further off than the previous frame's pose is when tracking).
        max_cost_ratio: when tracking, a coarse fit costing more than this times the last
            accepted frame's cost gets the tilted starts too (consecutive frames of the same
            gripper fit about equally well at the right pose).
        align_iterations: centroid/scale alignment passes per start.
        n_search_rotations: orientations tried by the prior-free coarse search.
        constant_velocity: predict the next pose by repeating the last motion.
        fit_width: estimate the finger opening as a 7th parameter.
        initial_width: opening assumed before any estimate (default: half the stroke).
        seed: seed of the prior-free search's orientation set (results are deterministic).
    """

    min_pixels: int = 20
    min_iou: float = 0.5
    good_iou: float = 0.85
    min_search_iou: float = 0.7
    part_weight: float = 0.5
    edge_weight: float = 0.05
    max_edge_px: float = 8.0
    supersample: int = 3
    max_subpixels: int = 5000
    overlap: Literal["likelihood", "iou"] = "likelihood"
    eps: float = 0.05
    step_px: float = 4.0
    step_log_depth: float = 0.08
    step_rotation: float = float(np.deg2rad(8.0))
    step_width: float = 0.02
    min_step_scale: float = 1.0 / 32.0
    max_evaluations: int = 400
    coarse_step_scale: float = 0.25
    start_angle: float = float(np.deg2rad(15.0))
    n_refine: int = 2
    widen_register: bool = True
    max_cost_ratio: float = 1.3
    align_iterations: int = 2
    n_search_rotations: int = 96
    constant_velocity: bool = True
    fit_width: bool = True
    initial_width: float | None = None
    seed: int = 0


def _outline(image: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another value (the image border counts as another value).

    ``image`` is (H, W) or a stack (..., H, W) of images, each outlined on its own.
    """
    mid = image[..., 1:-1, 1:-1]
    same = np.zeros(image.shape, dtype=bool)
    same[..., 1:-1, 1:-1] = (mid == image[..., :-2, 1:-1]) & (mid == image[..., 2:, 1:-1]) \
        & (mid == image[..., 1:-1, :-2]) & (mid == image[..., 1:-1, 2:])
    return ~same


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the image border counts as outside)."""
    return mask & _outline(mask)


def _soft_iou(coverage: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """IoU of fractional coverage images (..., H, W) with a binary mask (``sum min / sum max``)."""
    union = np.count_nonzero(observed) + (coverage * ~observed).sum(axis=(-2, -1))
    inter = (coverage * observed).sum(axis=(-2, -1))
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _rotvecs_to_matrices(rotvecs: np.ndarray) -> np.ndarray:
    """(B, 3, 3) rotations of (B, 3) rotation vectors (Rodrigues; series near zero)."""
    theta = np.linalg.norm(rotvecs, axis=1)
    small = theta < 1e-4
    th = np.where(small, 1.0, theta)
    t2 = theta * theta
    a = np.where(small, 1.0 - t2 / 6.0, np.sin(th) / th)
    b = np.where(small, 0.5 - t2 / 24.0, (1.0 - np.cos(th)) / (th * th))
    x, y, z = rotvecs.T
    S = np.zeros((len(rotvecs), 3, 3))
    S[:, 0, 1], S[:, 0, 2], S[:, 1, 2] = -z, y, -x
    S[:, 1, 0], S[:, 2, 0], S[:, 2, 1] = z, -y, x
    return np.eye(3)[None] + a[:, None, None] * S + b[:, None, None] * (S @ S)


@dataclasses.dataclass(frozen=True)
class _Score:
    """A pose's fit to the observed segmentation: ``cost = overlap + edge_weight * edge_px``."""

    cost: float
    overlap: float
    edge_px: float


class _Objective:
    """Render-and-compare cost of poses against one frame's observed segmentation.

    Pose parameters ``p = (x, y, log z, rx, ry, rz, w)``: the model centre ``c`` (``center_G``)
    sits at ``z * (x, y, 1)`` in the camera, the rotation is ``exp([rx, ry, rz]) @ R_ref``
    (rotation about the camera axes through the centre), ``w`` the finger opening.

    Poses are rendered ``supersample`` times finer and compared as fractional pixel coverage:
    a binary silhouette only changes when a pixel centre is crossed, so a search on it stalls
    on plateaus a few degrees from the optimum; coverage moves with every sub-pixel change.
    Costs are computed for a batch of parameter vectors at once (:meth:`costs`): one
    rasterisation and one pass of array operations for the whole batch.
    """

    def __init__(self, renderer: SilhouetteRenderer, observed: np.ndarray, has_parts: bool, K: np.ndarray,
                 config: RGBPoseConfig) -> None:
        self.renderer = renderer
        self.config = config
        self.K = K
        self.K_inv = np.linalg.inv(K)
        self.obs_mask = observed >= 0
        self.n_obs = int(np.count_nonzero(self.obs_mask))
        # Pixel quantisation matters less the larger the silhouette: cap the sub-pixel count
        # (a gripper close to the camera would otherwise cost tens of milliseconds a render).
        s = max(1, min(int(config.supersample), int(np.sqrt(config.max_subpixels / max(self.n_obs, 1)))))
        self.sub = s
        # Sub-pixel U of a pixel u: U = s * u + (s - 1) / 2, so pixel u holds sub-pixels s*u .. s*u + s - 1.
        self.K_sub = K.copy()
        self.K_sub[:2] *= s
        self.K_sub[:2, 2] += 0.5 * (s - 1)
        self.shape = observed.shape
        self.center_G = renderer.model.center_G
        self.stroke = renderer.model.stroke
        self.observed = observed
        self.has_parts = has_parts
        rows = np.flatnonzero(self.obs_mask.any(axis=1))
        cols = np.flatnonzero(self.obs_mask.any(axis=0))
        self.obs_box = (rows[0], rows[-1], cols[0], cols[-1]) if self.n_obs else None
        vv, uu = np.nonzero(self.obs_mask)
        self.obs_centroid = np.array([uu.mean(), vv.mean()]) if self.n_obs else None
        # Distance (pixels) to the nearest observed boundary, on the sub-pixel grid, once per frame.
        self.edge_dt = self._edge_distance(self.obs_mask)
        self.evaluations = 0  # poses rendered for a cost so far, for diagnostics
        self._memo: dict[bytes, dict[bytes, tuple[float, float, float]]] = {}  # R_ref -> p -> scores
        self.part_present = np.array([bool(np.any(observed == k)) for k in range(len(PARTS))])
        if has_parts:
            self.part_dt = np.stack([self._edge_distance(observed == k) for k in range(len(PARTS))])

    def _edge_distance(self, mask: np.ndarray) -> np.ndarray:
        fine = np.repeat(np.repeat(mask, self.sub, axis=0), self.sub, axis=1)
        edges = _boundary(fine)
        if not edges.any():
            return np.full(fine.shape, self.config.max_edge_px)
        return np.minimum(ndimage.distance_transform_edt(~edges) / self.sub, self.config.max_edge_px)

    # --- parameters <-> poses ------------------------------------------------------------------

    def params_from_pose(self, X_CG: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray]:
        """``(p, R_ref)`` of a pose: the parameters are relative to ``R_ref = R_CG``."""
        c = X_CG[:3, :3] @ self.center_G + X_CG[:3, 3]
        z = max(float(c[2]), 1e-3)
        p = np.array([c[0] / z, c[1] / z, np.log(z), 0.0, 0.0, 0.0, float(width)])
        return p, X_CG[:3, :3].copy()

    def poses_from_params(self, P: np.ndarray, R_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(R, t, widths)`` of (B, 7) parameter vectors: (B, 3, 3), (B, 3), (B,) clipped."""
        z = np.exp(P[:, 2])
        c = z[:, None] * np.stack([P[:, 0], P[:, 1], np.ones(len(P))], axis=1)
        R = _rotvecs_to_matrices(P[:, 3:6]) @ R_ref
        t = c - R @ self.center_G
        return R, t, np.clip(P[:, 6], 0.0, self.stroke)

    def pose_from_params(self, p: np.ndarray, R_ref: np.ndarray) -> tuple[np.ndarray, float]:
        R, t, w = self.poses_from_params(np.asarray(p, dtype=np.float64)[None], R_ref)
        X = np.eye(4)
        X[:3, :3], X[:3, 3] = R[0], t[0]
        return X, float(w[0])

    # --- scoring -----------------------------------------------------------------------------

    def render(self, p: np.ndarray, R_ref: np.ndarray) -> np.ndarray:
        """Part labels of a pose at the image's resolution."""
        R, t, w = self.poses_from_params(np.asarray(p, dtype=np.float64)[None], R_ref)
        return self.renderer._render_many(R, t, w, self.K, self.shape[0], self.shape[1])[0]

    def iou(self, p: np.ndarray, R_ref: np.ndarray) -> tuple[float, int]:
        """Binary whole-silhouette IoU at the image's resolution and the intersection size."""
        mask = self.render(p, R_ref) >= 0
        inter = int(np.count_nonzero(mask & self.obs_mask))
        union = int(np.count_nonzero(mask | self.obs_mask))
        return (inter / union if union else 0.0), inter

    def score(self, p: np.ndarray, R_ref: np.ndarray) -> _Score:
        cost, overlap, edge_px = self.scores(np.asarray(p, dtype=np.float64)[None], R_ref)
        return _Score(float(cost[0]), float(overlap[0]), float(edge_px[0]))

    def cost(self, p: np.ndarray, R_ref: np.ndarray) -> float:
        return self.score(p, R_ref).cost

    def costs(self, P: np.ndarray, R_ref: np.ndarray) -> np.ndarray:
        """(B,) costs of (B, 7) parameter vectors."""
        return self.scores(P, R_ref)[0]

    def scores(self, P: np.ndarray, R_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(cost, overlap, edge_px)``, each (B,), of (B, 7) parameter vectors.

        A pose that puts nothing on screen costs ``inf`` (worse than any pose that shows
        something). Every pose is compared inside one window, the union of all silhouettes'
        and the observation's boxes plus one pixel: pixels outside a pose's own such window add
        nothing to its cost (no coverage, observed background), so the batch changes no cost.

        Scores are remembered per parameter vector: a pattern search comes back to points it
        has scored (about one evaluation in ten on generated frames), and as a point scores the
        same in any batch, only the new points are rendered.
        """
        P = np.asarray(P, dtype=np.float64)
        known = self._memo.setdefault(np.asarray(R_ref, dtype=np.float64).tobytes(), {})
        keys = [p.tobytes() for p in P]
        new = list(dict.fromkeys(k for k in keys if k not in known))
        if new:
            fresh = self._scores(P[[keys.index(k) for k in new]], R_ref)
            for i, k in enumerate(new):
                known[k] = (fresh[0][i], fresh[1][i], fresh[2][i])
        cost, overlap, edge_px = (np.array([known[k][j] for k in keys], dtype=np.float64).reshape(len(P))
                                  for j in range(3))
        return cost, overlap, edge_px

    def _scores(self, P: np.ndarray, R_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`scores` of a batch, rendered."""
        c, s = self.config, self.sub
        B = len(P)
        self.evaluations += B
        H, W = self.shape
        Hs, Ws = H * s, W * s
        R, t, widths = self.poses_from_params(P, R_ref)
        pix, lab = self.renderer._rasterize(R, t, widths, self.K_sub, Hs, Ws)
        cost = np.full(B, np.inf)
        overlap = np.full(B, np.inf)
        edge_px = np.full(B, float(c.max_edge_px))
        if pix.size == 0:
            return cost, overlap, edge_px
        b, rem = np.divmod(pix, Hs * Ws)
        rr, cc = np.divmod(rem, Ws)
        drawn = np.bincount(b, minlength=B) > 0
        r0 = max(min(int(rr.min()) // s, self.obs_box[0]) - 1, 0)
        r1 = min(max(int(rr.max()) // s, self.obs_box[1]) + 2, H)
        c0 = max(min(int(cc.min()) // s, self.obs_box[2]) - 1, 0)
        c1 = min(max(int(cc.max()) // s, self.obs_box[3]) + 2, W)
        h, w = r1 - r0, c1 - c0
        obs = self.observed[r0:r1, c0:c1]
        fg_obs = obs >= 0
        # Fractional coverage of every pixel by each part (last axis), per pose.
        n_part = len(PARTS)
        block = (b * h + (rr // s - r0)) * w + (cc // s - c0)
        counts = np.bincount(block * n_part + lab, minlength=B * h * w * n_part).reshape(B, h, w, n_part) / (s * s)
        cover_fg = counts.sum(axis=3)
        if c.overlap == "likelihood":
            if self.has_parts:
                onehot = np.arange(n_part) == np.maximum(obs, 0)[..., None]
                cover_obs = (counts * onehot).sum(axis=3)
            else:
                cover_obs = cover_fg
            cover_obs = np.where(fg_obs, cover_obs, 1.0 - cover_fg)
            # Each observed label is a pixel-centre sample of the true image; with the centre
            # anywhere in the pixel, its probability is the rendered coverage of that label.
            nll = -np.log((cover_obs + c.eps) / (1.0 + c.eps))
            ov = self._per_pose_sum(nll) / self.n_obs
        else:
            ov = 1.0 - _soft_iou(cover_fg, fg_obs)
            if self.has_parts:
                part_iou = np.stack([_soft_iou(counts[..., k], obs == k) for k in range(n_part)], axis=1)
                present = self.part_present[None] | counts.any(axis=(1, 2))
                ov = ov + c.part_weight * (1.0 - (part_iou * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1))
        edge = self._edge_terms(b, rr - s * r0, cc - s * c0, lab, B, (h * s, w * s), (s * r0, s * c0))
        overlap[drawn] = ov[drawn]
        edge_px[drawn] = edge[drawn]
        cost[drawn] = ov[drawn] + c.edge_weight * edge[drawn]
        return cost, overlap, edge_px

    def _edge_terms(self, b: np.ndarray, rr: np.ndarray, cc: np.ndarray, lab: np.ndarray, B: int,
                    shape: tuple[int, int], offset: tuple[int, int]) -> np.ndarray:
        """(B,) mean distances (pixels) from the rendered boundaries to the observed ones.

        The whole silhouette's outline is compared with the observed outline and, with part
        labels, each part's outline (internal part borders included) with that part's observed
        outline; a rendered part that the segmentation does not show sits at the cap.
        """
        cap = self.config.max_edge_px
        L = np.full((B, *shape), -1, dtype=np.int8)
        L[b, rr, cc] = lab
        fg = L >= 0
        # Rendered pixels never touch the window's edge (one pixel of margin) except at the
        # image border, which counts as outside, as in _boundary.
        bi, ri, ci = np.nonzero(_boundary(fg))
        edge = self._per_pose_mean(bi, self.edge_dt[ri + offset[0], ci + offset[1]], B, cap)
        if not self.has_parts:
            return edge
        bi, ri, ci = np.nonzero(fg & _outline(L))
        d_part = self.part_dt[L[bi, ri, ci], ri + offset[0], ci + offset[1]]
        return 0.5 * (edge + self._per_pose_mean(bi, d_part, B, cap))

    # Per-pose reductions add a pose's nonzero values one by one in row-major order: the same
    # additions in the same order whatever the window and the other poses of the batch, so a
    # pose costs bit for bit the same in any batch (a pairwise sum over a window would group the
    # terms by their position in it, and exact ties between poses with the same render, common
    # as the cost is piecewise constant, could then break either way).

    @staticmethod
    def _per_pose_sum(values: np.ndarray) -> np.ndarray:
        """(B,) sums of (B, ...) values."""
        pose = np.nonzero(values)[0]
        return np.bincount(pose, weights=values[values != 0], minlength=len(values))

    @staticmethod
    def _per_pose_mean(pose: np.ndarray, values: np.ndarray, B: int, empty: float) -> np.ndarray:
        """(B,) means of ``values`` grouped by ``pose`` (sorted), ``empty`` for a pose without any."""
        n = np.bincount(pose, minlength=B)
        total = np.bincount(pose, weights=values, minlength=B)
        return np.where(n > 0, total / np.maximum(n, 1), empty)

    # --- alignment ---------------------------------------------------------------------------

    def align(self, p: np.ndarray, R_ref: np.ndarray, *, iterations: int) -> np.ndarray:
        """Move the rendered centroid onto the observed one and fix the depth by the area ratio.

        The depth update is the model-size argument: a silhouette's area scales with ``1/z^2``.
        Ratios are clamped per pass, because partial occlusion or a wrong orientation also
        change the area.
        """
        p = p.copy()
        for _ in range(iterations):
            rendered = self.render(p, R_ref)
            vv, uu = np.nonzero(rendered >= 0)
            if len(uu) == 0:
                break
            z = np.exp(p[2])
            # The centre keeps its depth while its image point moves by the centroid offset.
            shift = self.obs_centroid - np.array([uu.mean(), vv.mean()])
            c_img = self.K @ np.array([p[0], p[1], 1.0])
            ray = self.K_inv @ np.array([c_img[0] + shift[0], c_img[1] + shift[1], 1.0])
            p[0], p[1] = ray[0] / ray[2], ray[1] / ray[2]
            ratio = np.clip(len(uu) / self.n_obs, 0.5, 2.0)
            p[2] = np.log(z * np.sqrt(ratio))
        return p


POLL_BATCH = 2
"""Coordinates polled per speculative batch of :func:`_pattern_search` (two trials each):
measured fastest of 1, 2 and 7 on the policy's 128x160 frames (``scripts/bench_rgb_pose.py``),
as a render's per-call overhead is about the cost of one pose's pixel work."""


def _pattern_search(costs: Callable[[np.ndarray], np.ndarray], p0: np.ndarray, steps: np.ndarray, *,
                    min_scale: float, max_evaluations: int, scale: float = 1.0,
                    f0: float | None = None) -> tuple[np.ndarray, float, float]:
    """Hooke-Jeeves pattern search: coordinate polls, pattern moves, halving steps.

    Gradient-free because a rendered silhouette, hence the cost, is piecewise constant in the
    pose (at the sub-pixel scale). Returns ``(p, cost, final step scale)``.

    ``costs`` maps (B, n) points to (B,) costs. The coordinate polls of an exploration are
    sequential (each starts from the best point so far), but until one succeeds they all start
    from the same point: the next :data:`POLL_BATCH` coordinates' polls are evaluated
    speculatively as one batch and the sequential rule is replayed over it; after a success
    the following polls are batched from the new point. The search visits exactly the points,
    takes exactly the moves and counts exactly the evaluations of the one-at-a-time search
    (``costs`` must give a point the same value in any batch); the unused polls of a batch are
    the price of fewer, larger renders.
    """
    active = np.flatnonzero(steps > 0)
    p = np.asarray(p0, dtype=np.float64).copy()
    f = float(costs(p[None])[0]) if f0 is None else float(f0)
    evals = 1

    def explore(base: np.ndarray, fb: float | None) -> tuple[np.ndarray, float]:
        """One exploration around ``base``; ``fb`` None evaluates ``base`` in the first batch."""
        nonlocal evals
        x, fx = base.copy(), fb
        k = 0  # next coordinate (index into ``active``) to poll
        while k < len(active) or fx is None:
            idx = active[k:k + POLL_BATCH]
            trials = np.repeat(x[None], 2 * len(idx), axis=0)
            rows = np.arange(len(idx))
            trials[2 * rows, idx] += scale * steps[idx]
            trials[2 * rows + 1, idx] -= scale * steps[idx]
            if fx is None:
                f_all = costs(np.concatenate([x[None], trials]))
                fx, f_trials = float(f_all[0]), f_all[1:]
            else:
                f_trials = costs(trials)
            moved = False
            for j in range(len(idx)):
                for sign in (0, 1):
                    evals += 1
                    if f_trials[2 * j + sign] < fx:
                        x, fx, moved = trials[2 * j + sign], float(f_trials[2 * j + sign]), True
                        break
                if moved:
                    k += j + 1
                    break
            if not moved:
                k += len(idx)
        return x, fx

    while scale >= min_scale and evals < max_evaluations:
        x, fx = explore(p, f)
        if fx >= f:
            scale *= 0.5
            continue
        # Pattern moves: keep going in the direction that just paid off while it pays.
        while evals < max_evaluations:
            p_prev, p, f = p, x, fx
            x, fx = explore(p + (p - p_prev), None)
            evals += 1
            if fx >= f:
                break
    return p, f, scale


@dataclasses.dataclass
class _Candidate:
    p: np.ndarray
    R_ref: np.ndarray
    cost: float
    scale: float = 1.0


class RGBPoseEstimator:
    """RGB-only :class:`~geo4d_policy.perception.tracker.PoseTracker`: render-and-compare of the
    gripper model against the frame's segmented gripper (MegaPose's role in Dreamitate).

    Only the frame's part labels (or, without them, its gripper mask) and the intrinsics of the
    camera that owns the pixels are used; the pointmap, depth and ``X_CnCv`` are ignored, and
    ``X_CG`` is in that camera's frame (convert with that camera's ``X_TC``, e.g. in
    :func:`fuse_rgb_views`).

    Args:
        model: the gripper model (default: :meth:`GripperModel.load`).
        K: intrinsics used for frames that carry none (``TrackingFrame.K`` wins when set).
        config: options; keyword ``overrides`` replace single fields of it.

    Example:
        >>> est = RGBPoseEstimator(K=K)
        >>> first = est.register(labels_0, init_pose=X_CG_hint)
        >>> results = [est.track(labels) for labels in later_labels]
    """

    def __init__(self, model: GripperModel | None = None, *, K: np.ndarray | None = None,
                 config: RGBPoseConfig | None = None, **overrides) -> None:
        self.model = model or GripperModel.load()
        self.config = dataclasses.replace(config or RGBPoseConfig(), **overrides)
        self.K = None if K is None else _check_K(K)
        self.renderer = SilhouetteRenderer(self.model)
        self.reset()

    # ---------------------------------------------------------------------------------------
    # State
    # ---------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget all state (poses, width, hint)."""
        self._X_last: np.ndarray | None = None
        self._X_prev: np.ndarray | None = None
        self._hint: np.ndarray | None = None
        self._last_cost: float | None = None
        c = self.config
        self._width = c.initial_width if c.initial_width is not None else 0.5 * self.model.stroke
        self._n_lost = 0

    @property
    def last_pose(self) -> np.ndarray | None:
        """The last accepted ``X_CG`` (None before the first success)."""
        return None if self._X_last is None else self._X_last.copy()

    # ---------------------------------------------------------------------------------------
    # Public API
    # ---------------------------------------------------------------------------------------

    def register(self, observation: Observation, *, part_labels: np.ndarray | None = None,
                 init_pose: np.ndarray | None = None, init_width: float | None = None) -> TrackResult:
        """Estimate the pose in a first frame and (re)start tracking from there.

        Args:
            observation: a :class:`TrackingFrame` (its ``part_labels``, else its ``mask``, and its
                ``K`` are used) or an (H, W) segmentation image: integer part codes (-1 none,
                0 palm, 1 left finger, 2 right finger) or a bool gripper mask.
            part_labels: (H, W) part codes replacing a bare image's segmentation; ignored for a
                :class:`TrackingFrame` (it has its own).
            init_pose: prior ``X_CG`` in the pixels' camera (e.g. ``X_CT @ X_TG`` from
                proprioception). Without it a prior-free coarse search runs.
            init_width: prior finger opening (default: the current estimate).

        Returns:
            The frame's :class:`TrackResult`.

        Raises:
            ValueError: ``init_pose`` is not a finite 4x4, no valid intrinsics are available, or
                the observation is a float array (points are not a segmentation).
        """
        hint = None if init_pose is None else _check_pose(init_pose, "init_pose")
        self.reset()
        self._hint = hint
        if init_width is not None and np.isfinite(init_width):
            self._width = float(np.clip(init_width, 0.0, self.model.stroke))
        objective, reason = self._objective(observation, part_labels)
        if reason:
            return self._lost(reason)
        if hint is not None:
            best = self._fit(objective, [hint], widen=self.config.widen_register)
            if self._iou(objective, best) >= self.config.min_iou:
                return self._accept(objective, best)
        best = self._search(objective)
        if best is None or self._iou(objective, best) < self.config.min_search_iou:
            return self._lost("no confident fit", objective=objective, candidate=best)
        return self._accept(objective, best)

    def track(self, observation: Observation, *, part_labels: np.ndarray | None = None) -> TrackResult:
        """Estimate the pose in the next frame, starting from the previous one.

        Before any successful registration this registers instead (with the last hint).
        """
        if self._X_last is None:
            return self.register(observation, part_labels=part_labels, init_pose=self._hint)
        objective, reason = self._objective(observation, part_labels)
        if reason:
            return self._lost(reason)
        X_pred = self._predict()
        priors = [X_pred] if np.allclose(X_pred, self._X_last) else [X_pred, self._X_last]
        best = self._fit(objective, priors, widen=False)
        if self._iou(objective, best) < self.config.min_iou:
            # Lost the thread (a fast motion, a bad frame before): search without the prior.
            found = self._search(objective)
            if found is not None and self._iou(objective, found) >= self.config.min_search_iou:
                best = found
            else:
                return self._lost("no confident fit", objective=objective, candidate=best)
        return self._accept(objective, best)

    # ---------------------------------------------------------------------------------------
    # Internals
    # ---------------------------------------------------------------------------------------

    def _objective(self, observation: Observation, part_labels: np.ndarray | None
                   ) -> tuple[_Objective | None, str]:
        """The frame's objective, or a reason why the frame cannot be used."""
        K = self.K
        if isinstance(observation, TrackingFrame):
            if observation.K is not None:
                K = _check_K(observation.K)
            if observation.part_labels is not None:
                seg, has_parts = np.asarray(observation.part_labels), True
            elif observation.mask is not None:
                seg, has_parts = np.asarray(observation.mask), False
            else:
                return None, "unsegmented frame (RGB-only estimation needs a gripper mask)"
        else:
            seg = np.asarray(observation if part_labels is None else part_labels)
            if np.issubdtype(seg.dtype, np.floating):
                raise ValueError("RGBPoseEstimator takes a segmentation image (int part codes or bool "
                                 "mask) or a TrackingFrame, not points")
            has_parts = seg.dtype != np.bool_
        if K is None:
            raise ValueError("no intrinsics: pass K= to RGBPoseEstimator or set TrackingFrame.K")
        if seg.ndim != 2 or min(seg.shape) < 3:
            return None, f"segmentation must be an (H, W) image, got shape {seg.shape}"
        if has_parts:
            observed = np.where((seg >= 0) & (seg < len(PARTS)), seg, -1).astype(np.int8)
        else:
            observed = np.where(seg.astype(bool), 0, -1).astype(np.int8)
        n = int(np.count_nonzero(observed >= 0))
        if n == 0:
            return None, "empty mask"
        if n < self.config.min_pixels:
            return None, f"mask too small ({n} < {self.config.min_pixels} pixels)"
        return _Objective(self.renderer, observed, has_parts, K, self.config), ""

    def _steps(self, objective: _Objective) -> np.ndarray:
        c = self.config
        return np.array([c.step_px / objective.K[0, 0], c.step_px / objective.K[1, 1], c.step_log_depth,
                         c.step_rotation, c.step_rotation, c.step_rotation,
                         c.step_width if c.fit_width else 0.0])

    def _search_from(self, objective: _Objective, cand: _Candidate, *, min_scale: float) -> _Candidate:
        c = self.config
        p, f, scale = _pattern_search(lambda Q: objective.costs(Q, cand.R_ref), cand.p, self._steps(objective),
                                      min_scale=min_scale, max_evaluations=c.max_evaluations,
                                      scale=cand.scale, f0=cand.cost)
        return _Candidate(p, cand.R_ref, f, scale)

    def _start(self, objective: _Objective, X_CG: np.ndarray, width: float) -> _Candidate:
        p, R_ref = objective.params_from_pose(X_CG, width)
        p = objective.align(p, R_ref, iterations=self.config.align_iterations)
        return _Candidate(p, R_ref, objective.cost(p, R_ref))

    def _fit(self, objective: _Objective, priors: Sequence[np.ndarray], *, widen: bool) -> _Candidate:
        """Coarse-to-fine search from the priors, in order until one looks right; widened with
        starts tilted around the first prior when ``widen`` or when none does."""
        c = self.config
        coarse: list[_Candidate] = []
        for X in priors:
            coarse.append(self._search_from(objective, self._start(objective, X, self._width),
                                            min_scale=c.coarse_step_scale))
            if self._looks_right(objective, coarse[-1]):
                break
        else:
            widen = True
        if widen:
            # Tilted starts escape the local minima of out-of-plane rotation (a silhouette
            # changes little when the gripper turns towards or away from the camera). They are
            # placed around the first prior, not around its coarse fit: measured more robust, as
            # they then sample the prior's neighbourhood whichever way its own search went.
            for axis in np.eye(3):
                for sign in (1.0, -1.0):
                    tilt = Rotation.from_rotvec(sign * c.start_angle * axis)
                    start = self._start(objective, self._rotated_about_center(priors[0], tilt), self._width)
                    coarse.append(self._search_from(objective, start, min_scale=c.coarse_step_scale))
        coarse.sort(key=lambda k: k.cost)
        # Refining a second candidate only pays when the starts disagreed about the basin.
        n_refine = c.n_refine if widen else 1
        fine = [self._search_from(objective, k, min_scale=c.min_step_scale) for k in coarse[:n_refine]]
        return min(fine, key=lambda k: k.cost)

    def _looks_right(self, objective: _Objective, cand: _Candidate) -> bool:
        """Whether a coarse fit needs no second opinion: a good IoU, and (when tracking) a cost
        not much above the last accepted frame's (a local minimum fits visibly worse)."""
        if self._iou(objective, cand) < self.config.good_iou:
            return False
        return self._last_cost is None or cand.cost <= self.config.max_cost_ratio * self._last_cost

    def _search(self, objective: _Objective) -> _Candidate | None:
        """Prior-free coarse stage: a fixed set of orientations, each placed on the observed
        centroid's ray at the depth its silhouette area implies, the best few refined."""
        c = self.config
        rotations = Rotation.random(c.n_search_rotations, random_state=c.seed).as_matrix()
        # A nominal depth to start from; align() corrects it by the area ratio.
        ray = objective.K_inv @ np.array([*objective.obs_centroid, 1.0])
        starts = []
        for R in rotations:
            X = np.eye(4)
            X[:3, :3] = R
            X[:3, 3] = ray / ray[2] - R @ objective.center_G
            starts.append(self._start(objective, X, self._width))
        starts.sort(key=lambda k: k.cost)
        coarse = [self._search_from(objective, k, min_scale=c.coarse_step_scale)
                  for k in starts[: 2 * c.n_refine]]
        coarse.sort(key=lambda k: k.cost)
        fine = [self._search_from(objective, k, min_scale=c.min_step_scale) for k in coarse[: c.n_refine]]
        return min(fine, key=lambda k: k.cost) if fine else None

    def _rotated_about_center(self, X_CG: np.ndarray, rotation: Rotation) -> np.ndarray:
        """``X_CG`` turned by ``rotation`` (camera axes) about the model centre."""
        c = X_CG[:3, :3] @ self.model.center_G + X_CG[:3, 3]
        X = np.eye(4)
        X[:3, :3] = rotation.as_matrix() @ X_CG[:3, :3]
        X[:3, 3] = c - X[:3, :3] @ self.model.center_G
        return X

    @staticmethod
    def _iou(objective: _Objective, cand: _Candidate) -> float:
        return objective.iou(cand.p, cand.R_ref)[0]

    def _predict(self) -> np.ndarray:
        if self.config.constant_velocity and self._X_prev is not None and self._n_lost == 0:
            # The last motion, taken in the gripper's own frame, applied once more.
            return _check_pose(self._X_last @ invert_transform(self._X_prev) @ self._X_last, "X_pred")
        return self._X_last.copy()

    def _accept(self, objective: _Objective, cand: _Candidate) -> TrackResult:
        X, width = objective.pose_from_params(cand.p, cand.R_ref)
        iou, inter = objective.iou(cand.p, cand.R_ref)
        self._X_prev = self._X_last if self._n_lost == 0 else None
        self._X_last = X.copy()
        if self.config.fit_width:
            self._width = width
        self._n_lost = 0
        self._last_cost = cand.cost
        return TrackResult(X, float(np.clip(iou, 0.0, 1.0)), "ok", fitness=iou, coverage=iou,
                           n_points=objective.n_obs, n_inliers=inter, width=self._width)

    def _lost(self, reason: str, *, objective: _Objective | None = None,
              candidate: _Candidate | None = None) -> TrackResult:
        self._n_lost += 1
        X = self._X_last if self._X_last is not None else self._hint
        iou = 0.0 if objective is None or candidate is None else self._iou(objective, candidate)
        return TrackResult(np.eye(4) if X is None else X.copy(), 0.0, "lost", fitness=iou, coverage=iou,
                           n_points=0 if objective is None else objective.n_obs,
                           width=self._width, reason=reason)


# --------------------------------------------------------------------------------------------
# Two-view fusion
# --------------------------------------------------------------------------------------------


def fuse_rays(
    X_C1G: np.ndarray,
    X_C2G: np.ndarray,
    *,
    X_TC1: np.ndarray,
    X_TC2: np.ndarray,
    confidences: Sequence[float] | None = None,
    min_ray_angle: float = float(np.deg2rad(2.0)),
) -> np.ndarray:
    """Fuse two views' gripper poses into one ``X_TG`` (Dreamitate's stereo step).

    Translation: each view's estimate defines a ray from its camera centre through the
    estimated gripper origin (the image position is what an RGB-only estimate gets right;
    its depth is only as good as the model-size argument). The fused origin is the midpoint
    of the two rays' closest points, weighted by confidence (equal confidences give the plain
    midpoint). When the rays are within ``min_ray_angle`` of parallel, or the closest points
    lie behind a camera, triangulation says nothing and the confidence-weighted mean of the
    two per-view positions is used instead.

    Rotation: the chordal L2 mean, i.e. the rotation nearest (Frobenius) to the
    confidence-weighted sum of the two rotation matrices.

    Args:
        X_C1G: 4x4 gripper pose in camera 1.
        X_C2G: 4x4 gripper pose in camera 2.
        X_TC1: 4x4 pose of camera 1 in the task frame.
        X_TC2: 4x4 pose of camera 2 in the task frame.
        confidences: two non-negative weights (default equal; all zero also means equal).
        min_ray_angle: rays closer to parallel than this (radians) are not triangulated.

    Returns:
        4x4 ``X_TG``.

    Raises:
        ValueError: a pose is not a finite 4x4, or the confidences are not two finite
            non-negative numbers.
    """
    X_TG1 = _check_pose(X_TC1, "X_TC1") @ _check_pose(X_C1G, "X_C1G")
    X_TG2 = _check_pose(X_TC2, "X_TC2") @ _check_pose(X_C2G, "X_C2G")
    w = np.ones(2) if confidences is None else np.asarray(confidences, dtype=np.float64).reshape(-1)
    if w.shape != (2,) or not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"confidences must be two finite non-negative numbers, got {confidences}")
    w = np.ones(2) if w.sum() <= 0 else w / w.sum()
    p1, p2 = X_TG1[:3, 3], X_TG2[:3, 3]
    o1, o2 = np.asarray(X_TC1, dtype=np.float64)[:3, 3], np.asarray(X_TC2, dtype=np.float64)[:3, 3]
    X = np.eye(4)
    X[:3, :3] = _nearest_rotation(w[0] * X_TG1[:3, :3] + w[1] * X_TG2[:3, :3])
    X[:3, 3] = w[0] * p1 + w[1] * p2
    d1, d2 = p1 - o1, p2 - o2
    n1, n2 = np.linalg.norm(d1), np.linalg.norm(d2)
    if n1 < 1e-9 or n2 < 1e-9:
        return X  # an estimate at a camera centre defines no ray
    d1, d2 = d1 / n1, d2 / n2
    # Closest points o1 + s d1 and o2 + t d2 of the two lines (unit directions).
    b = float(d1 @ d2)
    sin2 = 1.0 - b * b
    if sin2 < np.sin(min_ray_angle) ** 2:
        return X
    r = o1 - o2
    s = (b * float(d2 @ r) - float(d1 @ r)) / sin2
    t = (float(d2 @ r) - b * float(d1 @ r)) / sin2
    if s <= 0.0 or t <= 0.0:
        return X  # the rays meet behind a camera: the estimates are inconsistent
    X[:3, 3] = w[0] * (o1 + s * d1) + w[1] * (o2 + t * d2)
    return X


def fuse_rgb_views(
    results_1: Sequence[TrackResult],
    results_2: Sequence[TrackResult],
    *,
    X_TC1: np.ndarray,
    X_TC2: np.ndarray,
) -> list[FusedPose]:
    """Per frame, :func:`fuse_rays` of two views' RGB-only results, as :class:`FusedPose`.

    View 1 plays view n (``X_CnG`` is in camera 1, ``source="n"``), view 2 view m. When both
    views are ok the poses are ray-fused with their confidences as weights (``source="n"``,
    confidence the mean of the two: ``FusedPose`` has no two-view source); when one view is
    lost the other view's full pose is used; when both are, the previous fused pose is held
    (confidence 0, ``source="none"``, status ``"lost"``), or before any good frame view 1's held
    pose (its hint), else view 2's.

    Args:
        results_1: per-frame results of the estimator in camera 1 (``X_C1G``).
        results_2: per-frame results in camera 2 (same length).
        X_TC1: 4x4 pose of camera 1 in the task frame.
        X_TC2: 4x4 pose of camera 2 in the task frame.

    Returns:
        One :class:`FusedPose` per frame.

    Raises:
        ValueError: the sequences differ in length or a camera pose is not a finite 4x4.
    """
    X_TC1 = _check_pose(X_TC1, "X_TC1")
    X_TC2 = _check_pose(X_TC2, "X_TC2")
    if len(results_1) != len(results_2):
        raise ValueError(f"view 1 has {len(results_1)} frames, view 2 {len(results_2)}")
    X_C1T = invert_transform(X_TC1)

    def usable(r: TrackResult) -> bool:
        return r.ok and r.confidence > 0 and np.isfinite(r.X_CG).all()

    out: list[FusedPose] = []
    for r1, r2 in zip(results_1, results_2):
        ok1, ok2 = usable(r1), usable(r2)
        if ok1 and ok2:
            X_TG = fuse_rays(r1.X_CG, r2.X_CG, X_TC1=X_TC1, X_TC2=X_TC2,
                             confidences=(r1.confidence, r2.confidence))
            widths = [r.width for r in (r1, r2) if r.width is not None]
            fused = FusedPose(X_TG, X_C1T @ X_TG, 0.5 * (r1.confidence + r2.confidence), "n", "ok",
                              float(np.mean(widths)) if widths else None)
        elif ok1 or ok2:
            r, X_TC, src = (r1, X_TC1, "n") if ok1 else (r2, X_TC2, "m")
            X_TG = X_TC @ np.asarray(r.X_CG, dtype=np.float64)
            fused = FusedPose(X_TG, X_C1T @ X_TG, float(r.confidence), src, "ok", r.width)
        elif out:
            prev = out[-1]
            fused = FusedPose(prev.X_TG.copy(), prev.X_CnG.copy(), 0.0, "none", "lost", prev.width)
        else:
            held = [(r, X_TC) for r, X_TC in ((r1, X_TC1), (r2, X_TC2)) if np.isfinite(r.X_CG).all()]
            X_TG = held[0][1] @ np.asarray(held[0][0].X_CG, dtype=np.float64) if held else np.eye(4)
            fused = FusedPose(X_TG, X_C1T @ X_TG, 0.0, "none", "lost", held[0][0].width if held else None)
        out.append(fused)
    return out

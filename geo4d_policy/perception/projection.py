"""Where points land in a frame's pixels: model surface hidden by the scene, or seen through.

This module owns:
  * :class:`PixelProjection`, a frame's own pointmap used as a depth buffer: which model points
    the frame's camera could see (coverage in ICP scoring leaves the hidden ones out) and which
    ones it sees through (free space where a surface would have hidden what the camera saw).
  * :func:`finger_see_through`, negative evidence on a finger opening: finger surface a camera
    would see but sees through (used where the fingers show no points), for several candidate
    openings at once.
  * :func:`see_through_fraction`, the same test on the whole gripper: the share of its
    camera-facing surface at a tracked pose that a frame sees through (a consistency check of
    the pose against the frame, used by :func:`~geo4d_policy.perception.fusion.fail_safe`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from geo4d_policy.perception.gripper_model import GripperModel
from geo4d_policy.perception.pose_tracker import TrackingFrame


class PixelProjection:
    """Which model points a frame's camera could see: the frame's own pointmap as a depth buffer.

    A model point projecting onto a pixel whose observed point lies clearly nearer the camera
    is hidden by the scene (a shelf, the held object): it is not expected in the observation,
    and coverage must not count it as missing. The projection is the frame's ``K`` and camera
    pose ``X_CnCv`` (identity when absent: camera n's own pixels). Without ``K`` it is fitted to
    the pointmap seen from that camera (the points moved into its frame), a fit checked by its
    reprojection error: a pointmap of another camera, e.g. ``X^{m->n}`` without its pose, fails
    the check and gets no occlusion model (``ok`` is False).

    Attributes:
        points: (H, W, 3) the frame's points (camera n's frame).
        valid: (H, W) their validity.
        P: 3x4 projection of camera-n points to the frame's pixels (when ``ok``).
        center: (3,) the frame's camera centre in camera n's frame (when ``ok``).
        ok: whether the projection is known.
    """

    def __init__(self, frame: TrackingFrame, points: np.ndarray, valid: np.ndarray, *,
                 rng: np.random.Generator, samples: int = 400, max_error_px: float = 0.75) -> None:
        self.points = points
        self.valid = valid
        self.ok = False
        X_CnCv = frame.camera_pose
        R, t = X_CnCv[:3, :3], X_CnCv[:3, 3]
        extrinsic = np.c_[R.T, -R.T @ t]  # camera n's frame -> the pixels' camera
        if frame.K is not None:
            self.P = np.asarray(frame.K, dtype=np.float64) @ extrinsic
            self.center = t.copy()
            self.ok = bool(np.isfinite(self.P).all())
            return
        rows, cols = np.nonzero(valid)
        if len(rows) < 50:
            return
        pick = rng.choice(len(rows), min(samples, len(rows)), replace=False)
        X = points[rows[pick], cols[pick]]
        if frame.X_CnCv is not None:
            X = X @ extrinsic[:, :3].T + extrinsic[:, 3]
        if np.any(X[:, 2] <= 1e-6):
            return
        K = np.eye(3)
        for axis, pix in ((0, cols[pick]), (1, rows[pick])):
            A = np.c_[X[:, axis] / X[:, 2], np.ones(len(X))]
            (f, c), *_ = np.linalg.lstsq(A, pix.astype(np.float64), rcond=None)
            if not np.median(np.abs(A @ [f, c] - pix)) <= max_error_px or f <= 0:
                return
            K[axis, axis], K[axis, 2] = f, c
        self.P = K @ extrinsic
        self.center = t.copy()
        self.ok = True

    @classmethod
    def of_frame(cls, frame: TrackingFrame, *, seed: int = 0) -> PixelProjection:
        """The projection of ``frame``'s pixels (finite, valid points only)."""
        pm = np.asarray(frame.pointmap, dtype=np.float64)
        ok = np.asarray(frame.valid, dtype=bool) & np.isfinite(pm).all(axis=-1)
        return cls(frame, pm, ok, rng=np.random.default_rng(seed))

    def _lookup(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Project ``pts``: the mask of those inside the image, their indices, whether their pixel
        holds an observed point, and the camera distances of that point and of theirs."""
        h = np.c_[pts, np.ones(len(pts))] @ self.P.T
        front = h[:, 2] > 1e-9
        uv = np.full((len(pts), 2), -1, dtype=np.int64)
        uv[front] = np.round(h[front, :2] / h[front, 2:3]).astype(np.int64)
        H, W = self.valid.shape
        inside = front & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
        idx = np.flatnonzero(inside)
        obs_ok = self.valid[uv[idx, 1], uv[idx, 0]]
        d_obs = np.linalg.norm(self.points[uv[idx, 1], uv[idx, 0]] - self.center, axis=1)
        d_pt = np.linalg.norm(pts[idx] - self.center, axis=1)
        return inside, idx, obs_ok, d_obs, d_pt

    def visibility(self, pts: np.ndarray, *, margin: float) -> tuple[np.ndarray, np.ndarray]:
        """Masks of ``pts`` inside the image, and of those among them not hidden behind an
        observed point at least ``margin`` nearer the camera (the points it expects to see)."""
        inside, idx, obs_ok, d_obs, d_pt = self._lookup(pts)
        out = inside.copy()
        out[idx[obs_ok & (d_obs < d_pt - margin)]] = False
        return inside, out

    def in_view(self, pts: np.ndarray) -> int:
        """How many of ``pts`` project inside the image (in front of the camera)."""
        _, idx, _, _, _ = self._lookup(pts)
        return len(idx)

    def seen_through(self, pts: np.ndarray, *, margin: float) -> np.ndarray:
        """Mask of ``pts`` inside the image whose pixel shows free space at them: the observed
        point lies more than ``margin`` beyond them, or the pixel has no point. A surface there
        would have hidden what the camera saw."""
        _, idx, obs_ok, d_obs, d_pt = self._lookup(pts)
        out = np.zeros(len(pts), dtype=bool)
        out[idx] = ~obs_ok | (d_obs > d_pt + margin)
        return out


def finger_see_through(frame: TrackingFrame, X_CG: np.ndarray, width: float | Sequence[float], *,
                       model: GripperModel, margin: float = 0.01, samples: int = 700,
                       seed: int = 0) -> int | np.ndarray | None:
    """Finger surface samples at opening ``width`` that ``frame``'s camera faces but sees through.

    Negative evidence on the opening where the fingers show no points (at 128x160 a finger is a
    few pixels, often none): a finger at this opening would hide whatever the camera saw behind
    it, so each camera-facing finger sample whose pixel shows a surface more than ``margin``
    beyond it (or nothing) speaks against the opening. Samples hidden behind nearer observed
    surface (the palm, a held object) say nothing. Counts at two openings compare only on the
    same frame and pose.

    Args:
        frame: the view (pointmap in camera n's frame; its ``K`` / ``X_CnCv`` when its pixels
            are not camera n's, else the projection is fitted to the pointmap as for occlusion).
        X_CG: gripper pose in camera n's frame.
        width: the opening to test (m), or several (the frame's projection is built once).
        model: the gripper model.
        margin: how far beyond a finger sample the observed surface must be (m).
        samples: surface samples per finger.
        seed: sample seed.

    Returns:
        The count (an int array of one count per opening when ``width`` is a sequence), or None
        when the frame's projection is unknown.
    """
    occ = PixelProjection.of_frame(frame, seed=seed)
    if not occ.ok:
        return None
    widths = np.atleast_1d(np.asarray(width, dtype=np.float64))
    # The fingers translate rigidly with the opening: sample them once (at width 0) and shift.
    parts = model.sample_points(width=0.0, counts=samples, seed=seed, parts=("left_finger", "right_finger"))
    axis = model.closing_axis_G
    counts = np.zeros(len(widths), dtype=np.int64)
    for i, w in enumerate(np.clip(widths, 0.0, model.stroke)):
        pG = np.concatenate([parts["left_finger"].points + 0.5 * w * axis,
                             parts["right_finger"].points - 0.5 * w * axis])
        pts = pG @ X_CG[:3, :3].T + X_CG[:3, 3]
        nrm = np.concatenate([p.normals for p in parts.values()]) @ X_CG[:3, :3].T
        facing = np.einsum("ij,ij->i", nrm, pts - occ.center) < 0
        counts[i] = int(occ.seen_through(pts[facing], margin=margin).sum())
    return counts if np.ndim(width) else int(counts[0])


def see_through_fraction(frame: TrackingFrame, X_CG: np.ndarray, width: float, *, model: GripperModel,
                         margin: float = 0.01, samples: int = 400, seed: int = 0) -> float | None:
    """Share of the gripper's camera-facing surface at ``X_CG`` (opening ``width``) that
    ``frame``'s camera sees through: a consistency check of a tracked pose against the frame.

    Model samples whose pixel shows a surface more than ``margin`` beyond them, or nothing, speak
    against the pose (a gripper there would hide what the camera saw); the share is taken over
    the camera-facing samples inside the image (those hidden behind nearer observed surface
    count as consistent). A pose on the gripper leaves a few per cent (edges, pixel footprint);
    one drifted off it onto the scene leaves a large share. Same projection as
    :func:`finger_see_through`.

    Returns:
        The share in [0, 1], or None when the frame's projection is unknown or no sample is in view.
    """
    occ = PixelProjection.of_frame(frame, seed=seed)
    if not occ.ok:
        return None
    parts = model.sample_points(width=width, counts=samples, seed=seed)
    pts = np.concatenate([p.points for p in parts.values()]) @ X_CG[:3, :3].T + X_CG[:3, 3]
    nrm = np.concatenate([p.normals for p in parts.values()]) @ X_CG[:3, :3].T
    pts = pts[np.einsum("ij,ij->i", nrm, pts - occ.center) < 0]
    in_view = occ.in_view(pts)
    return float(occ.seen_through(pts, margin=margin).sum() / in_view) if in_view else None

"""Render-and-compare cost of gripper poses against one frame's segmentation (the RGB estimator's objective).

:class:`Objective` scores batches of pose hypotheses (image position of the model centre, log
depth, rotation about the camera axes, finger opening) against an observed part-label image or
gripper mask: an overlap term (per-part likelihood, or soft IoU) plus ``edge_weight`` times the
mean distance from the rendered outlines to the observed ones, on a ``supersample`` times finer
grid. Two backends compute the same costs: numpy (:class:`~geo4d_policy.perception.silhouette.SilhouetteRenderer`,
the default) and torch (:class:`~geo4d_policy.perception.silhouette.TorchSilhouetteRenderer`, used on a GPU,
where a batch of hypotheses costs little more than one). The numpy backend's sums are ordered so
that a pose costs bit for bit the same in any batch; the torch backend agrees to float rounding.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from geo4d_policy.perception.gripper_model import PARTS
from geo4d_policy.perception.silhouette import SilhouetteRenderer, TorchSilhouetteRenderer

if TYPE_CHECKING:
    from geo4d_policy.perception.rgb_pose import RGBPoseConfig


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
class Score:
    """A pose's fit to the observed segmentation: ``cost = overlap + edge_weight * edge_px``."""

    cost: float
    overlap: float
    edge_px: float


class Objective:
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
        self._torch = renderer if isinstance(renderer, TorchSilhouetteRenderer) else None
        if self._torch is not None:
            torch, dev = self._torch.torch, self._torch.device
            self._t_observed = torch.as_tensor(observed, device=dev)
            self._t_edge_dt = torch.as_tensor(self.edge_dt, dtype=torch.float64, device=dev)
            self._t_part_dt = (torch.as_tensor(self.part_dt, dtype=torch.float64, device=dev) if has_parts
                               else None)

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

    def score(self, p: np.ndarray, R_ref: np.ndarray) -> Score:
        cost, overlap, edge_px = self.scores(np.asarray(p, dtype=np.float64)[None], R_ref)
        return Score(float(cost[0]), float(overlap[0]), float(edge_px[0]))

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
        cost = np.full(B, np.inf)
        overlap = np.full(B, np.inf)
        edge_px = np.full(B, float(c.max_edge_px))
        if self._torch is not None:
            pix, lab = self._torch.rasterize_torch(R, t, widths, self.K_sub, Hs, Ws)
            return (cost, overlap, edge_px) if pix.numel() == 0 else self._scores_torch(B, pix, lab)
        pix, lab = self.renderer._rasterize(R, t, widths, self.K_sub, Hs, Ws)
        if pix.size == 0:
            return cost, overlap, edge_px
        b, rem = np.divmod(pix, Hs * Ws)
        rr, cc = np.divmod(rem, Ws)
        drawn = np.bincount(b, minlength=B) > 0
        r0, r1, c0, c1 = self._window(int(rr.min()), int(rr.max()), int(cc.min()), int(cc.max()))
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

    def _window(self, rmin: int, rmax: int, cmin: int, cmax: int) -> tuple[int, int, int, int]:
        """Image rows/columns ``r0:r1, c0:c1`` holding the observation's box and the rendered
        sub-pixels' extent (``rmin..rmax``, ``cmin..cmax``), plus one pixel."""
        s, (H, W) = self.sub, self.shape
        return (max(min(rmin // s, self.obs_box[0]) - 1, 0), min(max(rmax // s, self.obs_box[1]) + 2, H),
                max(min(cmin // s, self.obs_box[2]) - 1, 0), min(max(cmax // s, self.obs_box[3]) + 2, W))

    def _scores_torch(self, B: int, pix: Any, lab: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`_scores` of B rasterised poses (torch renderer's output): the same terms,
        computed on its device."""
        torch = self._torch.torch
        c, s = self.config, self.sub
        Hs, Ws = self.shape[0] * s, self.shape[1] * s
        b, rem = pix // (Hs * Ws), pix % (Hs * Ws)
        rr, cc = rem // Ws, rem % Ws
        lab = lab.long()
        r0, r1, c0, c1 = self._window(*torch.stack([rr.min(), rr.max(), cc.min(), cc.max()]).tolist())
        h, w = r1 - r0, c1 - c0
        obs = self._t_observed[r0:r1, c0:c1].long()
        fg_obs = obs >= 0
        n_part = len(PARTS)
        block = (b * h + (rr // s - r0)) * w + (cc // s - c0)
        counts = torch.bincount(block * n_part + lab, minlength=B * h * w * n_part).reshape(B, h, w, n_part)
        counts = counts.double() / (s * s)
        cover_fg = counts.sum(dim=3)
        if c.overlap == "likelihood":
            if self.has_parts:
                cover_obs = counts.gather(3, obs.clamp(min=0)[None, :, :, None].expand(B, h, w, 1))[..., 0]
            else:
                cover_obs = cover_fg
            cover_obs = torch.where(fg_obs, cover_obs, 1.0 - cover_fg)
            nll = -torch.log((cover_obs + c.eps) / (1.0 + c.eps))
            ov = nll.sum(dim=(1, 2)) / self.n_obs
        else:
            def soft_iou(cov: Any, m: Any) -> Any:
                union = m.sum() + (cov * ~m).sum(dim=(-2, -1))
                return torch.where(union > 0, (cov * m).sum(dim=(-2, -1)) / union.clamp(min=1e-12),
                                   torch.zeros_like(union))

            ov = 1.0 - soft_iou(cover_fg, fg_obs)
            if self.has_parts:
                part_iou = torch.stack([soft_iou(counts[..., k], obs == k) for k in range(n_part)], dim=1)
                present = torch.as_tensor(self.part_present, device=counts.device)[None] | (counts > 0).any(dim=(1, 2))
                ov = ov + c.part_weight * (1.0 - (part_iou * present).sum(dim=1) / present.sum(dim=1).clamp(min=1))
        # Edge terms on the window's sub-pixel grid (the rendered labels, per pose).
        L = torch.full((B, h * s, w * s), -1, dtype=torch.long, device=counts.device)
        L[b, rr - s * r0, cc - s * c0] = lab
        fg = L >= 0
        cap = float(c.max_edge_px)

        def outline(img: Any) -> Any:
            mid = img[:, 1:-1, 1:-1]
            same = torch.zeros(img.shape, dtype=torch.bool, device=img.device)
            same[:, 1:-1, 1:-1] = (mid == img[:, :-2, 1:-1]) & (mid == img[:, 2:, 1:-1]) \
                & (mid == img[:, 1:-1, :-2]) & (mid == img[:, 1:-1, 2:])
            return ~same

        def mean_over(mask: Any, values: Any) -> Any:
            n = mask.sum(dim=(1, 2))
            total = (values * mask).sum(dim=(1, 2))
            return torch.where(n > 0, total / n.clamp(min=1), torch.full_like(total, cap))

        win = (slice(s * r0, s * r0 + h * s), slice(s * c0, s * c0 + w * s))
        edge = mean_over(fg & outline(fg), self._t_edge_dt[win][None])
        if self.has_parts:
            part_dt = self._t_part_dt[:, win[0], win[1]]  # (parts, h s, w s)
            d_part = part_dt[L.clamp(min=0), torch.arange(h * s, device=L.device)[None, :, None],
                             torch.arange(w * s, device=L.device)[None, None, :]]
            edge = 0.5 * (edge + mean_over(fg & outline(L), d_part))
        drawn = torch.bincount(b, minlength=B) > 0
        out = torch.stack([torch.where(drawn, ov + c.edge_weight * edge, torch.full_like(ov, np.inf)),
                           torch.where(drawn, ov, torch.full_like(ov, np.inf)),
                           torch.where(drawn, edge, torch.full_like(edge, cap))]).cpu().numpy()
        return out[0], out[1], out[2]

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

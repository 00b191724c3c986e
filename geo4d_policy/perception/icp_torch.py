"""Batched torch numerics of the ICP gripper tracker (the GPU path).

This module owns :class:`TorchICPEngine`: the jobs of :mod:`geo4d_policy.perception.icp_core`
(refine, evaluate, opening grid) computed for many jobs at once, padded to a common point
count. It is the same algorithm as :class:`~geo4d_policy.perception.icp_core.NumpyICPEngine`,
batched as that one batches them (every Gauss-Newton iteration of all jobs in one step, 7x7
solves batched; a job that converged, ran out of correspondences or of iterations stops
changing while the others go on), with one change of means, not of results: nearest model
samples by brute force (distances of every point to every sample, then the
``facing_neighbours`` smallest) instead of KD-trees: on a GPU a (jobs x points x samples)
distance block is one kernel, where a tree search is a sequential walk per point.

Arithmetic is float64, as numpy's: results agree with the numpy engine to rounding (the
tests check poses within 1e-6 m / 1e-6 rad on synthetic clouds); a decision on a threshold
that rounding moves (a point at exactly the correspondence radius, two grid openings of equal
cost) can differ, and with it the rest of a track. The engine is used through
:func:`geo4d_policy.perception.icp_core.make_engine` (``ICPTrackerConfig.engine``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from geo4d_policy.perception.gripper_model import PART_LEFT, PART_RIGHT
from geo4d_policy.perception.icp_core import (
    EvaluateJob,
    Fit,
    ICPProblem,
    ICPTrackerConfig,
    Job,
    ModelSamples,
    RefineJob,
    WidthCosts,
    WidthJob,
    pack_clouds,
    run_jobs,
    width_points,
)

_PARTS = (0, 1, 2)
_INF = float("inf")
_CPU_BLOCK = int(__import__("os").environ.get("GEO4D_ICP_CPU_BLOCK", 2 ** 22))
"""Largest distance block on the CPU (elements); GEO4D_ICP_CPU_BLOCK overrides it (benchmarks)."""
_FAR = 1e6
"""Coordinate (m) of padding samples: never within any correspondence radius."""


def _levi_civita(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(3, 3, 3) with ``K[i, j] = sum_k L[i, j, k] v[k]`` the cross-product matrix ``[v]_x``."""
    L = torch.zeros((3, 3, 3), dtype=dtype, device=device)
    for i, j, k in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):
        L[i, j, k] = -1.0
        L[j, i, k] = 1.0
    return L


def _rodrigues(v: torch.Tensor, levi: torch.Tensor) -> torch.Tensor:
    """(B, 3) rotation vectors -> (B, 3, 3) matrices (``levi`` from :func:`_levi_civita`)."""
    theta2 = (v * v).sum(-1)[:, None, None]
    theta = theta2.sqrt()
    small = theta2 < 1e-12
    # The unselected branch may hold 0/0 at theta = 0; torch.where discards it.
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2)
    K = levi @ v.T  # (3, 3, B)
    K = K.permute(2, 0, 1)
    return torch.eye(3, dtype=v.dtype, device=v.device) + a * K + b * (K @ K)


def _orthonormalize(R: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) -> nearest rotations (SVD; a reflection is flipped as numpy's helper does)."""
    U, _, Vt = torch.linalg.svd(R)
    out = U @ Vt
    flip = torch.linalg.det(out) < 0
    if bool(flip.any()):
        U = U.clone()
        U[flip, :, -1] *= -1
        out = U @ Vt
    return out


class TorchICPEngine:
    """Batched ICP numerics on a torch device (see the module docstring).

    Args:
        samples: the model samples.
        config: the tracker options (the numerics read theirs).
        device: torch device name.
        max_elements: largest (jobs x points x samples) distance block computed at once.
    """

    name = "torch"

    def __init__(self, samples: ModelSamples, config: ICPTrackerConfig, *, device: str = "cpu",
                 max_elements: int | None = None) -> None:
        self.samples = samples
        self.config = config
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"tracker device {device!r} asked for, but torch sees no CUDA device")
        self.dtype = torch.float64
        self.max_elements = int(max_elements or (2 ** 26 if self.device.type == "cuda" else _CPU_BLOCK))
        t = self._t
        # The three parts' samples padded to one length (padding far away and never facing), so
        # that one distance block serves all parts: on a GPU the cost is in kernel launches.
        M = max(len(p) for p in samples.points)
        self.M = M
        self.Pp = torch.full((3, M, 3), _FAR, dtype=self.dtype, device=self.device)
        self.Np = torch.zeros((3, M, 3), dtype=self.dtype, device=self.device)
        self.real = torch.zeros((3, M), dtype=torch.bool, device=self.device)
        for k, (pts, nrm) in enumerate(zip(samples.points, samples.normals)):
            self.Pp[k, :len(pts)] = t(pts)
            self.Np[k, :len(pts)] = t(nrm)
            self.real[k, :len(pts)] = True
        self.P2p = (self.Pp * self.Pp).sum(-1)
        self.axis = t(samples.axis)
        self.sign = t(samples.sign)
        self.lo = torch.stack([t(x) for x in samples.lo])
        self.hi = torch.stack([t(x) for x in samples.hi])
        self.P_all = torch.cat([t(p) for p in samples.points])
        self.N_all = torch.cat([t(n) for n in samples.normals])
        self.part_all = torch.cat([torch.full((len(p),), k, device=self.device) for k, p in enumerate(samples.points)])
        self.eye7 = torch.eye(7, dtype=self.dtype, device=self.device)
        self._levi = _levi_civita(self.dtype, self.device)
        self._sign_axis = 0.5 * self.sign[:, None] * self.axis  # (3 parts, 3): shift per unit opening
        ptp = config.point_to_point_weight
        self._row_weights = t([1.0, ptp, ptp, ptp])  # plane row, then the three point rows
        self._pose_diag = torch.diag(t([1.0] * 6 + [0.0]))
        self._pose_block = torch.ones((7, 7), dtype=self.dtype, device=self.device)
        self._pose_block[6, :] = 0.0
        self._pose_block[:, 6] = 0.0
        self._width_unit = torch.diag(t([0.0] * 6 + [1.0]))

    def _t(self, x: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=self.dtype, device=self.device)

    # ---------------------------------------------------------------------------------------
    # Dispatch
    # ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def run(self, jobs: Sequence[Job]) -> list[Any]:
        """Each job's result (:class:`Fit` or :class:`WidthCosts`), in order (:func:`run_jobs`)."""
        return run_jobs(self, jobs)

    def _evaluate_jobs(self, jobs: Sequence[EvaluateJob]) -> list[Fit]:
        return self._evaluate([j.problem for j in jobs], self._t(np.stack([j.X_CG for j in jobs])),
                              self._t([j.width for j in jobs]))

    # ---------------------------------------------------------------------------------------
    # Packing
    # ---------------------------------------------------------------------------------------

    def _pack(self, clouds: Sequence[tuple[np.ndarray, np.ndarray | None]]):
        """Points (J, N, 3), validity (J, N), labels (J, N) (-1 unlabelled) and the per-part
        eligibility (J, 3, N) of padded clouds."""
        q_np, lab_np = pack_clouds(clouds)
        q = self._t(q_np)
        lab = torch.as_tensor(lab_np, device=self.device)
        valid = lab >= -1
        parts = torch.arange(3, device=self.device)[None, :, None]
        elig = valid[:, None, :] & ((lab[:, None, :] == -1) | (lab[:, None, :] == parts))
        return q, valid, lab, elig

    # ---------------------------------------------------------------------------------------
    # Nearest model samples
    # ---------------------------------------------------------------------------------------

    def _chunks(self, J: int, per_job: int) -> list[slice]:
        step = max(1, self.max_elements // max(1, per_job))
        return [slice(a, min(J, a + step)) for a in range(0, J, step)]

    def _shifts(self, width: torch.Tensor) -> torch.Tensor:
        """(J, 3 parts, 3) translation of each part's samples at each job's opening."""
        return width[:, None, None] * self._sign_axis

    def _match(self, qG: torch.Tensor, elig: torch.Tensor, width: torch.Tensor, max_dist: torch.Tensor,
               cam_G: torch.Tensor | None = None, *, parts: slice = slice(0, 3),
               init: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None):
        """Batched :meth:`NumpyICPEngine.match`: (dist, part, idx) per point, (J, N) each.

        Per part, the nearest sample within ``max_dist`` (strictly, as a KD-tree's upper bound),
        or with ``cam_G`` the first camera-facing one among the ``facing_neighbours`` nearest;
        then the nearest part, the earlier part on ties (the reference's order). ``parts``
        limits the search; ``init`` is the result over the parts before them (e.g. the palm,
        which no opening moves)."""
        J, N, _ = qG.shape
        K = len(range(3)[parts])
        shift = self._shifts(width)[:, parts]  # (J, K, 3)
        facing = None
        if cam_G is not None:
            rel = self.Pp[None, parts] + shift[:, :, None, :] - cam_G[:, None, None, :]
            facing = ((self.Np[None, parts] * rel).sum(-1) < 0) & self.real[None, parts]  # (J, K, M)
        kq = 1 if cam_G is None else self.config.facing_neighbours
        d_out, i_out = [], []
        for sl in self._chunks(J, K * N * self.M):
            x = qG[sl, None] - shift[sl, :, None, :]  # (B, K, N, 3)
            d2 = (x * x).sum(-1, keepdim=True) + self.P2p[None, parts, None, :] \
                - 2.0 * (x @ self.Pp[parts].transpose(1, 2))
            d2.clamp_(min=0.0)
            bound = max_dist[sl, None, None]
            if kq == 1:
                v, i = d2.min(-1)
                d = v.sqrt()
                d = torch.where(d < bound, d, _INF)
            else:
                v, idx = torch.topk(d2, kq, dim=-1, largest=False, sorted=True)
                d = v.sqrt()
                f = facing[sl]
                ok = torch.gather(f[:, :, None, :].expand(-1, -1, N, -1), 3, idx) & (d < bound[..., None])
                first = ok.to(torch.uint8).argmax(-1, keepdim=True)
                d = torch.where(torch.gather(ok, 3, first), torch.gather(d, 3, first), _INF).squeeze(-1)
                i = torch.gather(idx, 3, first).squeeze(-1)
            d_out.append(d)
            i_out.append(i)
        d = torch.cat(d_out) if len(d_out) > 1 else d_out[0]  # (J, K, N)
        i = torch.cat(i_out) if len(i_out) > 1 else i_out[0]
        d = torch.where(elig[:, parts], d, _INF)
        dist, which = d.min(1)
        idx = torch.gather(i, 1, which[:, None]).squeeze(1)
        part = torch.where(torch.isfinite(dist), which + (parts.start or 0), -1)
        if init is not None:
            d0, p0, i0 = init
            better = dist < d0
            dist, part, idx = torch.where(better, dist, d0), torch.where(better, part, p0), torch.where(better, idx, i0)
        return dist, part, idx

    def _matched_samples(self, part: torch.Tensor, idx: torch.Tensor, width: torch.Tensor):
        """Model points (shifted to ``width``) and normals of matches (J, N, 3) each."""
        k = part.clamp(min=0)
        shift = torch.gather(self._shifts(width), 1, k[..., None].expand(-1, -1, 3))
        # Points without a match get some real sample: they carry no weight.
        return self.Pp[k, idx] + shift, self.Np[k, idx]

    # ---------------------------------------------------------------------------------------
    # Gauss-Newton ICP
    # ---------------------------------------------------------------------------------------

    def _normal_equations(self, qG: torch.Tensor, p: torch.Tensor, nrm: torch.Tensor, s: torch.Tensor,
                          wt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """H (J, 7, 7) and g (J, 7) of the weighted rows (:meth:`NumpyICPEngine._normal_equations`):
        per correspondence a point-to-plane row ``[q x n, n, -s/2 n.axis]`` with residual
        ``n.(q - p)`` and point-to-point rows ``[-[q]_x, I, -s/2 axis]`` with residuals ``q - p``."""
        c = self.config
        diff = qG - p
        qx, qy, qz = qG.unbind(-1)
        zero = torch.zeros_like(qx)
        one = torch.ones_like(qx)
        half = -0.5 * s
        sa = half[..., None] * self.axis  # (J, N, 3)
        sx, sy, sz = sa.unbind(-1)
        plane = torch.cat([torch.linalg.cross(qG, nrm), nrm, (half * (nrm @ self.axis))[..., None]], -1)
        point = torch.stack([zero, qz, -qy, one, zero, zero, sx,
                             -qz, zero, qx, zero, one, zero, sy,
                             qy, -qx, zero, zero, zero, one, sz], -1).view(*qx.shape, 3, 7)
        A = torch.cat([plane[..., None, :], point], -2)  # (J, N, 4, 7)
        if not c.fingers_in_pose:
            keep = torch.cat([(s == 0)[..., None, None].expand(*s.shape, 4, 6), torch.ones_like(A[..., 6:], dtype=bool)], -1)
            A = torch.where(keep, A, 0.0)
        res = torch.cat([(nrm * diff).sum(-1, keepdim=True), diff], -1)  # (J, N, 4)
        weights = wt[..., None] * self._row_weights  # (J, N, 4)
        Aw = (A * weights[..., None]).flatten(1, 2)  # (J, 4N, 7)
        A = A.flatten(1, 2)
        H = Aw.transpose(1, 2) @ A
        g = (Aw.transpose(1, 2) @ res.flatten(1)[..., None]).squeeze(-1)
        return H, g

    def _refine(self, jobs: Sequence[RefineJob], *, facing: bool) -> list[Fit]:
        c = self.config
        J = len(jobs)
        packed = self._pack([(j.problem.q, j.problem.labels) for j in jobs])
        q, _, _, elig = packed
        X0 = self._t(np.stack([j.X_CG for j in jobs]))
        R = X0[:, :3, :3].transpose(1, 2).contiguous()  # R_GC
        t = -(R @ X0[:, :3, 3:4]).squeeze(-1)  # t_GC
        w = self._t([j.width for j in jobs])
        w_prev = w.clone()
        iters_np = np.array([j.iterations or c.iterations for j in jobs])
        iters = torch.as_tensor(iters_np, device=self.device)
        corr_start = self._t([j.corr_start for j in jobs])
        corr_min = self._t([c.corr_dist_min if j.corr_min is None else j.corr_min for j in jobs])
        decay = self._t([c.corr_decay if j.decay is None else j.decay for j in jobs])
        # Each frame's camera centre (camera m's for X^{m->n}): the facing test's viewpoint.
        center = self._t(np.stack([j.problem.camera_center for j in jobs]))
        active = torch.ones(J, dtype=torch.bool, device=self.device)
        all_idx = torch.arange(J, device=self.device)
        for it in range(int(iters_np.max())):
            active &= iters > it
            # Only the jobs still running are computed (the set shrinks as they converge).
            a_idx = torch.nonzero(active).squeeze(1)
            n_active = a_idx.numel()
            if n_active == 0:
                break
            if n_active == J:
                a_idx = all_idx
                Ra, ta, wa, qa, ea, ca = R, t, w, q, elig, center
            else:
                Ra, ta, wa, qa, ea, ca = R[a_idx], t[a_idx], w[a_idx], q[a_idx], elig[a_idx], center[a_idx]
            # Coarse-to-fine trimming: the correspondence radius shrinks geometrically.
            cmin = corr_min[a_idx]
            corr = torch.maximum(cmin, corr_start[a_idx] * decay[a_idx] ** it)
            qG = qa @ Ra.transpose(1, 2) + ta[:, None, :]
            cam_G = (Ra @ ca[..., None]).squeeze(-1) + ta if facing else None
            dist, part, idx = self._match(qG, ea, wa, corr, cam_G)
            p, nrm = self._matched_samples(part, idx, wa)
            sel = dist <= corr[:, None]
            m = sel.sum(-1)
            unsel = ~sel
            s = self.sign[part.clamp(min=0)].masked_fill_(unsel, 0.0)
            ds = dist.masked_fill(unsel, 0.0)
            wt = (c.huber_delta / ds.clamp(min=c.huber_delta)).masked_fill_(unsel, 0.0)
            H, g = self._normal_equations(qG, p, nrm, s, wt)
            mf = m.to(self.dtype)
            # Damping keeps the solve well posed (e.g. no finger seen -> width unobservable).
            H = H + (1e-6 * mf)[:, None, None] * self._pose_diag
            if c.fit_width:
                H[:, 6, 6] += c.width_prior * mf + 1e-9
                g[:, 6] += c.width_prior * mf * (wa - w_prev[a_idx])
            else:
                H = H * self._pose_block + self._width_unit
                g = g * self._pose_block[0]
            # Jobs with too few correspondences stop (their system is replaced by a harmless one).
            enough = m >= 6
            H = torch.where(enough[:, None, None], H, self.eye7)
            sol, info = torch.linalg.solve_ex(H, g)
            delta = -sol
            ok = enough & (info == 0) & torch.isfinite(delta).all(-1)
            delta = delta.masked_fill(~ok[:, None], 0.0)
            Rs = _rodrigues(delta[:, :3], self._levi)
            R_new = Rs @ Ra
            t_new = (Rs @ ta[..., None]).squeeze(-1) + delta[:, 3:6]
            w_new = torch.clamp(wa + delta[:, 6], 0.0, self.samples.stroke)
            converged = (corr <= cmin) & (delta[:, :3].norm(dim=-1) < 2e-4) & (delta[:, 3:6].norm(dim=-1) < 1e-4)
            if n_active == J:
                R, t, w = R_new, t_new, w_new
                active = ok & ~converged
            else:
                R[a_idx], t[a_idx], w[a_idx] = R_new, t_new, w_new
                active[a_idx] = ok & ~converged
        # X_CG = inverse(X_GC), orthonormalised.
        R_CG = _orthonormalize(R.transpose(1, 2))
        t_CG = -(R.transpose(1, 2) @ t[..., None]).squeeze(-1)
        X = torch.eye(4, dtype=self.dtype, device=self.device).repeat(J, 1, 1)
        X[:, :3, :3] = R_CG
        X[:, :3, 3] = t_CG
        return self._evaluate([j.problem for j in jobs], X, w, packed=packed)

    # ---------------------------------------------------------------------------------------
    # Scoring
    # ---------------------------------------------------------------------------------------

    def _spacing(self, problem: ICPProblem) -> float:
        """Median nearest-neighbour distance among the observed points (cached per problem)."""
        cached = problem.cache.get("spacing")
        if cached is None:
            q = self._t(problem.q)
            if len(q) > 1:
                d2 = (q * q).sum(-1)[:, None] + (q * q).sum(-1)[None, :] - 2.0 * q @ q.T
                d2.fill_diagonal_(float("inf"))
                nn = d2.clamp(min=0.0).min(-1).values.sqrt()
                cached = float(np.median(nn.cpu().numpy()))
            else:
                cached = 0.0
            problem.cache["spacing"] = cached
        return cached

    def _evaluate(self, problems: Sequence[ICPProblem], X_CG: torch.Tensor, width: torch.Tensor, *,
                  packed: tuple[torch.Tensor, ...] | None = None) -> list[Fit]:
        c = self.config
        J = len(problems)
        q, valid, lab, elig = packed if packed is not None else self._pack([(p.q, p.labels) for p in problems])
        R_CG, t_CG = X_CG[:, :3, :3], X_CG[:, :3, 3]
        R_GC = R_CG.transpose(1, 2)
        t_GC = -(R_GC @ t_CG[..., None]).squeeze(-1)
        qG = q @ R_GC.transpose(1, 2) + t_GC[:, None, :]
        inlier = torch.full((J,), c.inlier_dist, dtype=self.dtype, device=self.device)
        dist, part, _ = self._match(qG, elig, width, inlier)
        inl = (dist <= c.inlier_dist) & valid
        cluttered = torch.as_tensor([p.cluttered for p in problems], device=self.device)
        shifts = self.sign[:, None, None] * 0.5 * width[None, :, None] * self.axis  # (3, J, 3)
        lo = (self.lo[:, None, :] + shifts).amin(0)
        hi = (self.hi[:, None, :] + shifts).amax(0)
        in_box = ((qG >= (lo - c.clutter_margin)[:, None, :]) & (qG <= (hi + c.clutter_margin)[:, None, :])).all(-1)
        near = valid & (in_box | ~cluttered[:, None])
        n_near = near.sum(-1)
        n_in_near = (inl & near).sum(-1)
        fitness = torch.where(n_near >= c.min_points, n_in_near.to(self.dtype) / n_near.clamp(min=1).to(self.dtype), 0.0)
        n_inl = inl.sum(-1)
        sq = torch.where(inl, dist, 0.0) ** 2
        rmse = torch.where(n_inl > 0, (sq.sum(-1) / n_inl.clamp(min=1).to(self.dtype)).sqrt(), float("inf"))
        fingers = torch.stack([(inl & (part == PART_LEFT)).sum(-1), (inl & (part == PART_RIGHT)).sum(-1)], -1)
        coverage, frame_coverage = self._coverage(problems, q, valid, lab, X_CG, width)
        X_np = X_CG.cpu().numpy()
        w_np = width.cpu().numpy()
        stats = torch.stack([fitness, coverage, rmse, frame_coverage]).cpu().numpy()
        counts = torch.stack([n_near, n_in_near]).cpu().numpy()
        fingers_np = fingers.cpu().numpy()
        return [Fit(X_np[j], float(w_np[j]), float(stats[0, j]), float(stats[1, j]), float(stats[2, j]),
                    int(counts[0, j]), int(counts[1, j]), (int(fingers_np[j, 0]), int(fingers_np[j, 1])),
                    float(stats[3, j]))
                for j in range(J)]

    def _coverage(self, problems: Sequence[ICPProblem], q: torch.Tensor, valid: torch.Tensor, lab: torch.Tensor,
                  X_CG: torch.Tensor, width: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``coverage`` and ``frame_coverage`` (:class:`Fit`): camera-facing model samples with an
        observed point near them (see NumpyICPEngine._coverage)."""
        c = self.config
        J = len(problems)
        radius = self._t([max(c.inlier_dist, 1.5 * self._spacing(p)) for p in problems])
        shift = self.sign[self.part_all][None, :, None] * 0.5 * width[:, None, None] * self.axis  # (J, M, 3)
        R_CG, t_CG = X_CG[:, :3, :3], X_CG[:, :3, 3]
        pC = (self.P_all[None] + shift) @ R_CG.transpose(1, 2) + t_CG[:, None, :]
        nC = self.N_all @ R_CG.transpose(1, 2)
        labeled = torch.as_tensor([p.labels is not None for p in problems], device=self.device)
        present = torch.stack([((lab == k) & valid).any(-1) for k in _PARTS], -1)  # (J, 3)
        keep = ~labeled[:, None] | present[:, self.part_all]
        # Facing the frame's own camera (camera m for X^{m->n}), and in front of it.
        ray = pC - self._t(np.stack([p.camera_center for p in problems]))[:, None, :]
        axis = self._t(np.stack([p.camera_axis for p in problems]))[:, None, :]
        facing = keep & ((nC * ray).sum(-1) < 0) & ((ray * axis).sum(-1) > 0)
        # Nearest observed point of every model sample, bounded by the radius.
        M = pC.shape[1]
        hit_parts = []
        for sl in self._chunks(J, M * q.shape[1]):
            x, y = pC[sl], q[sl]
            d2 = (x * x).sum(-1, keepdim=True) + (y * y).sum(-1)[:, None, :] - 2.0 * (x @ y.transpose(1, 2))
            d2 = torch.where(valid[sl][:, None, :], d2.clamp(min=0.0), float("inf"))
            hit_parts.append(d2.min(-1).values.sqrt() < radius[sl, None])
        hit = torch.cat(hit_parts) & facing
        n_facing = facing.sum(-1)
        coverage = torch.where(n_facing > 0, hit.sum(-1).to(self.dtype) / n_facing.clamp(min=1).to(self.dtype), 0.0)
        frame_coverage = coverage.clone()
        occluded = [j for j, p in enumerate(problems) if p.occlusion is not None]
        if occluded:
            inside, expect = self._visibility([problems[j] for j in occluded], pC[occluded])
            inside, expect = inside & facing[occluded], expect & facing[occluded]
            n_exp = expect.sum(-1).to(self.dtype)
            seen = (hit[occluded] & expect).sum(-1).to(self.dtype)
            for out, n_floor in ((coverage, n_facing[occluded]), (frame_coverage, inside.sum(-1))):
                denom = torch.maximum(torch.maximum(n_exp, c.min_visible_fraction * n_floor.to(self.dtype)),
                                      torch.ones_like(n_exp))
                out[occluded] = torch.where(n_facing[occluded] > 0, torch.clamp(seen / denom, max=1.0), 0.0)
        return coverage, frame_coverage

    def _visibility(self, problems: Sequence[ICPProblem], pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched :meth:`PixelProjection.visibility` of ``pts`` (B, M, 3), each in its problem's frame."""
        c = self.config
        B, M, _ = pts.shape
        images: dict[int, int] = {}
        occs = []
        for p in problems:
            if id(p.occlusion) not in images:
                images[id(p.occlusion)] = len(occs)
                occs.append(p.occlusion)
        H = max(o.valid.shape[0] for o in occs)
        W = max(o.valid.shape[1] for o in occs)
        img = torch.zeros((len(occs), H, W, 3), dtype=self.dtype, device=self.device)
        ok = torch.zeros((len(occs), H, W), dtype=torch.bool, device=self.device)
        size = torch.zeros((len(occs), 2), dtype=torch.long, device=self.device)
        for u, o in enumerate(occs):
            h, w = o.valid.shape
            cached = getattr(o, "torch_cache", None)
            if cached is None or cached[0].device != self.device:
                cached = (self._t(np.nan_to_num(o.points)), torch.as_tensor(o.valid, device=self.device))
                o.torch_cache = cached  # the frame's image on the device, shared by its problems
            img[u, :h, :w] = cached[0]
            ok[u, :h, :w] = cached[1]
            size[u, 0], size[u, 1] = h, w
        which = torch.as_tensor([images[id(p.occlusion)] for p in problems], device=self.device)
        P = self._t(np.stack([p.occlusion.P for p in problems]))  # (B, 3, 4)
        center = self._t(np.stack([p.occlusion.center for p in problems]))  # (B, 3)
        h = pts @ P[:, :, :3].transpose(1, 2) + P[:, None, :, 3]
        front = h[..., 2] > 1e-9
        z = torch.where(front, h[..., 2], torch.ones_like(h[..., 2]))
        uv = torch.round(h[..., :2] / z[..., None])
        uv = torch.where(front[..., None], uv, torch.full_like(uv, -1.0))
        Hs = size[which, 0][:, None].to(self.dtype)
        Ws = size[which, 1][:, None].to(self.dtype)
        inside = front & (uv[..., 0] >= 0) & (uv[..., 0] < Ws) & (uv[..., 1] >= 0) & (uv[..., 1] < Hs)
        u = torch.where(inside, uv[..., 0], 0.0).long()
        v = torch.where(inside, uv[..., 1], 0.0).long()
        b = which[:, None].expand(B, M)
        obs_ok = ok[b, v, u] & inside
        d_obs = (img[b, v, u] - center[:, None, :]).norm(dim=-1)
        d_pt = (pts - center[:, None, :]).norm(dim=-1)
        return inside, inside & ~(obs_ok & (d_obs < d_pt - c.occlusion_margin))

    # ---------------------------------------------------------------------------------------
    # The opening grid
    # ---------------------------------------------------------------------------------------

    def _width_costs(self, jobs: Sequence[WidthJob]) -> list[WidthCosts]:
        tau = self.config.inlier_dist
        clouds = [width_points(j) for j in jobs]
        out: list[WidthCosts | None] = [None] * len(jobs)
        live = [i for i, (qG, _) in enumerate(clouds) if len(qG)]
        for i, j in enumerate(jobs):
            if i not in live:
                out[i] = WidthCosts(np.zeros(len(j.grid)), 0.0, None)
        if not live:
            return out
        qG, valid, _, elig = self._pack([clouds[i] for i in live])
        J, N, _ = qG.shape
        grid = self._t(np.stack([jobs[i].grid for i in live]))  # (J, G)
        widths = torch.cat([grid, self._t([jobs[i].width for i in live])[:, None]], -1)  # (J, G + 1)
        G1 = widths.shape[1]
        bound = torch.full((J,), tau, dtype=self.dtype, device=self.device)
        # The palm does not move with the opening: matched once, then the fingers at every
        # opening, as (J * (G+1)) problems of the same points.
        palm = self._match(qG, elig, widths[:, 0], bound, parts=slice(0, 1))

        def per_width(x: torch.Tensor) -> torch.Tensor:
            return x[:, None].expand(J, G1, *x.shape[1:]).reshape(J * G1, *x.shape[1:])

        dist, part, _ = self._match(per_width(qG), per_width(elig), widths.reshape(-1), per_width(bound),
                                    parts=slice(1, 3), init=tuple(per_width(x) for x in palm))
        dist = dist.view(J, G1, N)
        part = part.view(J, G1, N)
        cost = torch.where(valid[:, None, :], torch.clamp(dist, max=tau) ** 2, 0.0).sum(-1)  # (J, G + 1)
        best = cost[:, :-1].argmin(-1)
        rows = torch.arange(J, device=self.device)
        d_best, p_best = dist[rows, best], part[rows, best]
        inl = (d_best <= tau) & valid
        both = ((inl & (p_best == PART_LEFT)).any(-1) & (inl & (p_best == PART_RIGHT)).any(-1)).cpu().numpy()
        cost_np = cost.cpu().numpy()
        for r, i in enumerate(live):
            out[i] = WidthCosts(cost_np[r, :-1], float(cost_np[r, -1]), bool(both[r]))
        return out

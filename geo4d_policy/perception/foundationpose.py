"""Optional adapter: FoundationPose (the paper's tracker) behind the :class:`PoseTracker` protocol.

FoundationPose (NVlabs) is a research-licensed project with its own CUDA extensions and
weights; it is never vendored or downloaded here. This adapter activates when the user has a
working checkout: pass its directory (or set ``GEO4D_FOUNDATIONPOSE_DIR``), with its weights
where FoundationPose's predictors read them (``<checkout>/weights``, or ``weights_dir``).

It uses the estimator API documented by FoundationPose's demo:
``FoundationPose(model_pts, model_normals, mesh=, scorer=, refiner=, glctx=, debug=, debug_dir=)``,
``register(K=, rgb=, depth=, ob_mask=, iteration=)`` and
``track_one(rgb=, depth=, K=, iteration=)``, both returning the 4x4 object pose in the camera
of the given depth image. The CAD model is our gripper (:mod:`gripper_model`) at a fixed
``mesh_width``; FoundationPose treats it as rigid.

Frames: FoundationPose works in the pixels' own camera. For view n that is camera n; for view
m the frame carries ``X_CnCv`` (e.g. from :func:`view_pose.estimate_view_pose` on the
conditioning frame), the adapter rebuilds view m's own depth from ``X^{m->n}`` and maps the
result back to camera n. Confidence is not FoundationPose's internal score (not exposed by
``register``/``track_one``) but the ICP tracker's model-fit score of the returned pose against
the frame's points, so that both trackers' confidences compare when fusing views.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from geo4d_policy.data.geometry import invert_transform, transform_points
from geo4d_policy.perception.gripper_model import GripperModel
from geo4d_policy.perception.icp_tracker import ICPGripperTracker
from geo4d_policy.perception.pose_tracker import (
    Observation,
    TrackingFrame,
    TrackResult,
    part_label_image,
    track_gripper_sequence,
)

ENV_DIR = "GEO4D_FOUNDATIONPOSE_DIR"


class FoundationPoseUnavailable(ImportError):
    """FoundationPose (or its weights, or nvdiffrast) is not installed where we were told to look."""


def _import_foundationpose(root: Path | None) -> tuple[Any, Any]:
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        estimater = importlib.import_module("estimater")
        dr = importlib.import_module("nvdiffrast.torch")
    except Exception as exc:  # ImportError, or a CUDA extension failing to load
        raise FoundationPoseUnavailable(
            "FoundationPose is not available: install it yourself (github.com/NVlabs/FoundationPose, "
            "research license; build its CUDA extensions and nvdiffrast) and pass foundationpose_dir= "
            f"or set {ENV_DIR}. The default ICPGripperTracker needs none of this. "
            f"(import error: {exc})"
        ) from exc
    return estimater, dr


class FoundationPoseTracker:
    """:class:`PoseTracker` over a user-installed FoundationPose.

    Args:
        model: the gripper model (default: :meth:`GripperModel.load`).
        foundationpose_dir: FoundationPose checkout (default: ``$GEO4D_FOUNDATIONPOSE_DIR``).
        weights_dir: its weights directory, checked before anything loads (default:
            ``<foundationpose_dir>/weights``, where its predictors read them).
        mesh_width: finger opening of the rigid CAD mesh given to FoundationPose (m).
        register_iterations, track_iterations: FoundationPose refinement iterations.
        debug_dir: FoundationPose's debug directory (debug level 0).
        scorer, refiner, glctx: pre-built FoundationPose objects (e.g. loaded from custom weight
            paths); built with their defaults when None.
        min_confidence: results below this (model-fit confidence) are reported lost.

    Raises:
        FoundationPoseUnavailable: the package, nvdiffrast or the weights are missing.
    """

    def __init__(self, model: GripperModel | None = None, *, foundationpose_dir: str | Path | None = None,
                 weights_dir: str | Path | None = None, mesh_width: float = 0.04, register_iterations: int = 5,
                 track_iterations: int = 2, debug_dir: str | Path | None = None, scorer: Any = None,
                 refiner: Any = None, glctx: Any = None, min_confidence: float = 0.25) -> None:
        self.model = model or GripperModel.load()
        root = foundationpose_dir or os.environ.get(ENV_DIR)
        root = Path(root) if root else None
        estimater, dr = _import_foundationpose(root)
        if scorer is None or refiner is None:
            wdir = Path(weights_dir) if weights_dir else (root / "weights" if root else None)
            if wdir is None or not wdir.is_dir() or not any(wdir.iterdir()):
                raise FoundationPoseUnavailable(
                    f"FoundationPose weights not found at {wdir}: download them yourself (see its README) "
                    "into <foundationpose_dir>/weights, or pass weights_dir= / pre-built scorer= and refiner="
                )
        self._scorer = scorer if scorer is not None else estimater.ScorePredictor()
        self._refiner = refiner if refiner is not None else estimater.PoseRefinePredictor()
        self._glctx = glctx if glctx is not None else dr.RasterizeCudaContext()
        mesh = self.model.mesh_in_G(mesh_width)
        self._estimator = estimater.FoundationPose(
            model_pts=np.asarray(mesh.vertices), model_normals=np.asarray(mesh.vertex_normals), mesh=mesh,
            scorer=self._scorer, refiner=self._refiner, glctx=self._glctx, debug=0,
            debug_dir=str(debug_dir) if debug_dir else "/tmp/foundationpose_debug",
        )
        self.register_iterations = int(register_iterations)
        self.track_iterations = int(track_iterations)
        self._scoring = ICPGripperTracker(self.model, min_confidence=min_confidence)
        self.min_confidence = float(min_confidence)
        self.reset()

    def reset(self) -> None:
        self._X_last: np.ndarray | None = None
        self._registered = False

    # ---------------------------------------------------------------------------------------

    @staticmethod
    def _inputs(frame: Observation) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """rgb, own-camera depth, K, X_CnCv, gripper mask (all-True when unsegmented)."""
        if not isinstance(frame, TrackingFrame) or frame.rgb is None or frame.K is None:
            raise TypeError("FoundationPoseTracker needs TrackingFrame observations with rgb and K")
        X_CnCv = np.eye(4) if frame.X_CnCv is None else np.asarray(frame.X_CnCv, dtype=np.float64)
        valid = np.asarray(frame.valid, dtype=bool)
        pts_v = transform_points(invert_transform(X_CnCv), np.asarray(frame.pointmap, dtype=np.float64))
        depth = np.where(valid & (pts_v[..., 2] > 0), pts_v[..., 2], 0.0).astype(np.float32)
        if frame.part_labels is not None:
            mask = np.asarray(frame.part_labels) >= 0
        elif frame.mask is not None:
            mask = np.asarray(frame.mask, dtype=bool)
        else:
            mask = np.ones(valid.shape, dtype=bool)
        return np.asarray(frame.rgb, dtype=np.uint8), depth, np.asarray(frame.K, dtype=np.float64), X_CnCv, mask

    def _result(self, frame: TrackingFrame, X_CnG: np.ndarray) -> TrackResult:
        pts, labels = frame.points()
        if not frame.segmented:
            # Unsegmented frame: only the points near the returned pose matter.
            c = X_CnG[:3, :3] @ self.model.center_G + X_CnG[:3, 3]
            pts = pts[np.linalg.norm(pts - c, axis=1) <= self.model.radius + 0.02]
        r = self._scoring.score_pose(pts, X_CnG, part_labels=labels, segmented=frame.segmented)
        if r.confidence < self.min_confidence:
            return self._lost(f"low model-fit confidence {r.confidence:.2f}")
        self._X_last = X_CnG
        return r

    def _lost(self, reason: str, held: np.ndarray | None = None) -> TrackResult:
        X = self._X_last if self._X_last is not None else (held if held is not None else np.eye(4))
        return TrackResult(np.array(X, dtype=np.float64), 0.0, "lost", reason=reason)

    def register(self, observation: Observation, *, part_labels: np.ndarray | None = None,
                 init_pose: np.ndarray | None = None) -> TrackResult:
        """Run FoundationPose's ``register`` on the frame's RGB, own-camera depth and mask."""
        self.reset()
        rgb, depth, K, X_CnCv, mask = self._inputs(observation)
        if not (mask & (depth > 0)).any():
            return self._lost("empty mask or no valid depth", held=init_pose)
        try:
            X_CvG = np.asarray(self._estimator.register(K=K, rgb=rgb, depth=depth, ob_mask=mask,
                                                        iteration=self.register_iterations), dtype=np.float64)
        except Exception as exc:  # FoundationPose raises on degenerate input; report, never crash
            return self._lost(f"FoundationPose register failed: {exc}", held=init_pose)
        if X_CvG.shape != (4, 4) or not np.isfinite(X_CvG).all():
            return self._lost("FoundationPose returned a non-finite pose", held=init_pose)
        self._registered = True
        return self._result(observation, X_CnCv @ X_CvG)

    def track(self, observation: Observation, *, part_labels: np.ndarray | None = None) -> TrackResult:
        """Run FoundationPose's ``track_one`` (registers first if nothing is registered yet)."""
        if not self._registered:
            return self.register(observation, part_labels=part_labels)
        rgb, depth, K, X_CnCv, _ = self._inputs(observation)
        if not (depth > 0).any():
            return self._lost("no valid depth")
        try:
            X_CvG = np.asarray(self._estimator.track_one(rgb=rgb, depth=depth, K=K, iteration=self.track_iterations),
                               dtype=np.float64)
        except Exception as exc:
            return self._lost(f"FoundationPose track_one failed: {exc}")
        if X_CvG.shape != (4, 4) or not np.isfinite(X_CvG).all():
            return self._lost("FoundationPose returned a non-finite pose")
        return self._result(observation, X_CnCv @ X_CvG)


def main(argv: list[str] | None = None) -> int:
    """Track one arm's gripper through a recorded clip with a user's FoundationPose; print errors."""
    import argparse

    from geo4d_policy.data.format import DatasetError
    from geo4d_policy.data.geometry import depth_to_pointmap
    from geo4d_policy.eval.tracking_eval import load_clip, sample_clips
    from geo4d_policy.perception.metrics import pose_errors

    p = argparse.ArgumentParser(prog="python -m geo4d_policy.perception.foundationpose",
                                description="Register FoundationPose on the first frame of a recorded clip "
                                            "(its label mask), track through the clip on a held-out camera and "
                                            "print the pose error against the robot's measured gripper pose.")
    p.add_argument("--dir", default=None, help=f"FoundationPose checkout (default ${ENV_DIR})")
    p.add_argument("--weights-dir", default=None, help="its weights (default <dir>/weights)")
    p.add_argument("--data", required=True, help="a dataset directory (geo4d-collect)")
    p.add_argument("--arm", default="right", help="arm to track (default right)")
    p.add_argument("--frames", type=int, default=10, help="frames of the clip after the first (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the clip draw")
    args = p.parse_args(argv)
    try:
        clips = sample_clips(args.data, n_clips=1, n_future=args.frames, seed=args.seed)
        if not clips:
            raise DatasetError(f"{args.data}: no clip of {args.frames + 1} frames with measured poses")
        clip = clips[0]
        data = load_clip(clip)
    except DatasetError as e:
        p.error(str(e))
    if args.arm not in data.X_TG:
        p.error(f"unknown arm {args.arm!r}; arms: {sorted(data.X_TG)}")
    tracker = FoundationPoseTracker(foundationpose_dir=args.dir, weights_dir=args.weights_dir)
    pm, valid = depth_to_pointmap(data.depth[0], data.K[0])  # view n, in its own camera frame
    labels = [part_label_image(data.masks[0, 0], args.arm)] + [None] * (len(pm) - 1)
    results = track_gripper_sequence(pm, valid, part_labels=labels, rgb=data.rgb[0], K=data.K[0], tracker=tracker)
    X_CnG = np.stack([invert_transform(data.X_TC[0]) @ X for X in data.X_TG[args.arm]])
    trans, rot = pose_errors(np.stack([r.X_CG for r in results]), X_CnG)
    print(f"episode seed {clip.episode_seed}, camera {clip.cams[0]}, frames {clip.frames[0]}-{clip.frames[-1]}, "
          f"arm {args.arm}")
    for t, (r, e_t, e_r) in enumerate(zip(results, trans, rot)):
        print(f"  frame {t:2d} {r.status:10s} confidence {r.confidence:.2f}  {e_t:6.1f} mm  {e_r:5.1f} deg")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

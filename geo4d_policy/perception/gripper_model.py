"""The gripper CAD model as perception sees it: meshes, part frames, surface samples, TCP.

This module owns the geometry of one parallel-jaw gripper expressed in the gripper frame ``G``
(``panda_link8``, the frame of the action space). It reads ``assets/robot/gripper.json`` and
the three meshes it names (palm ``hand``, ``left_finger``, ``right_finger``, each in its own
body frame) with trimesh; it never imports pydrake.

Frames (see ``sim/assets_gen/robot.py``, which writes the assets):
  * ``H`` (``panda_hand``) is ``G`` rotated by ``X_GH_yaw`` (-45 deg) about z, no offset.
  * A finger body sits at ``z = finger_joint_z`` in ``H`` and ``y = +w/2`` (left) or
    ``-w/2`` (right) for an opening width ``w`` in ``[0, stroke]``: the fingers close along
    ``H``'s y axis (the *closing axis*), and the fingertips point along ``+z``.
  * The TCP (fingertip centre) is ``tcp_z`` along ``G``'s z axis.

Surface samples skip faces buried inside another primitive of the same mesh (the meshes are
unions of overlapping boxes/cylinders), so that every sample can actually be seen by a camera.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import trimesh

PARTS: tuple[str, ...] = ("hand", "left_finger", "right_finger")
"""Gripper parts, in the order used for part codes (0, 1, 2) everywhere in perception."""

PART_HAND, PART_LEFT, PART_RIGHT = 0, 1, 2
"""Integer codes of the parts (``-1`` = unknown / not a gripper point)."""

DEFAULT_ASSET_DIR = Path(__file__).resolve().parents[2] / "assets" / "robot"
"""``assets/robot`` of this repository (holds ``gripper.json`` and ``meshes/``)."""


def _rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    X = np.eye(4)
    X[:2, :2] = [[c, -s], [s, c]]
    return X


def _translation(p) -> np.ndarray:
    X = np.eye(4)
    X[:3, 3] = p
    return X


@dataclasses.dataclass(frozen=True)
class PartSamples:
    """Surface samples of one part in the frame they were requested in.

    Attributes:
        points: (N, 3) float64 points.
        normals: (N, 3) outward unit normals.
    """

    points: np.ndarray
    normals: np.ndarray


def _interior_filter(mesh: trimesh.Trimesh, points: np.ndarray, *, tol: float = 1e-4) -> np.ndarray:
    """True for samples not strictly inside another primitive of ``mesh``.

    The meshes are concatenations of convex primitives; a sample of one primitive that lies
    inside another is hidden surface, which a camera never sees and which would pull ICP inward.
    """
    keep = np.ones(len(points), dtype=bool)
    # Flat-shaded OBJs carry one vertex per face corner; merge them to recover the primitives.
    merged = mesh.copy()
    merged.merge_vertices(merge_norm=True, merge_tex=True)
    bodies = merged.split(only_watertight=False)
    if len(bodies) < 2:
        return keep
    for body in bodies:
        hull = body.convex_hull
        # Half-space form of the hull: n.x <= d on the inside.
        normals = hull.face_normals
        offsets = np.einsum("ij,ij->i", normals, hull.triangles[:, 0])
        signed = points @ normals.T - offsets
        keep &= ~np.all(signed < -tol, axis=1)
    return keep


@dataclasses.dataclass(frozen=True, eq=False)
class GripperModel:
    """The gripper's geometry for perception (all transforms 4x4 float64, metres).

    Build it with :meth:`load`; it is immutable and cheap to share between trackers.

    Attributes:
        meshes: part name -> mesh in the part's own body frame.
        X_GH: pose of the hand frame in ``G``.
        finger_joint_z: height of the finger bodies above the hand origin.
        stroke: full opening width (0.08 m).
        tcp_z: TCP offset along ``G``'s z axis.
        finger_size: finger (x, y, z) extents in the hand frame.
        palm_size: palm (x, y, z) extents in the hand frame.
        asset_dir: where the model was read from.
        occluder: mesh in ``G`` of the arm link rigid in ``G`` (``panda_link7``), which hides parts
            of the hand from some views; None for a spec without one.
    """

    meshes: Mapping[str, trimesh.Trimesh]
    X_GH: np.ndarray
    finger_joint_z: float
    stroke: float
    tcp_z: float
    finger_size: tuple[float, float, float]
    palm_size: tuple[float, float, float]
    asset_dir: Path
    occluder: trimesh.Trimesh | None = None

    @classmethod
    def load(cls, asset_dir: str | Path | None = None) -> GripperModel:
        """Read ``gripper.json`` and the part meshes from ``asset_dir`` (default ``assets/robot``).

        Raises:
            FileNotFoundError: the directory, the spec or a mesh is missing.
        """
        return _load_cached(str(Path(asset_dir or DEFAULT_ASSET_DIR).resolve()))

    # ---------------------------------------------------------------------------------------
    # Frames
    # ---------------------------------------------------------------------------------------

    @property
    def X_G_TCP(self) -> np.ndarray:  # noqa: N802 - Drake-style frame name
        """Pose of the TCP (fingertip centre) in ``G``: ``tcp_z`` along z, same orientation."""
        return _translation((0.0, 0.0, self.tcp_z))

    @property
    def closing_axis_G(self) -> np.ndarray:
        """Unit vector in ``G`` along which the left finger opens (the hand's +y)."""
        return self.X_GH[:3, 1].copy()

    def X_GB(self, part: str, width: float = 0.0) -> np.ndarray:  # noqa: N802
        """Pose of ``part``'s body frame in ``G`` at opening ``width`` (clipped to the stroke)."""
        if part not in PARTS:
            raise KeyError(f"unknown gripper part {part!r}; parts: {PARTS}")
        if part == "hand":
            return self.X_GH.copy()
        w = float(np.clip(width, 0.0, self.stroke))
        y = 0.5 * w if part == "left_finger" else -0.5 * w
        return self.X_GH @ _translation((0.0, y, self.finger_joint_z))

    def meshes_in_G(self, width: float) -> dict[str, trimesh.Trimesh]:
        """Copies of the part meshes placed in ``G`` at opening ``width``."""
        return {p: self.meshes[p].copy().apply_transform(self.X_GB(p, width)) for p in PARTS}

    def mesh_in_G(self, width: float) -> trimesh.Trimesh:
        """The whole gripper as one mesh in ``G`` at opening ``width`` (e.g. for external trackers)."""
        return trimesh.util.concatenate(list(self.meshes_in_G(width).values()))

    # ---------------------------------------------------------------------------------------
    # Samples
    # ---------------------------------------------------------------------------------------

    def sample_part(self, part: str, count: int, *, width: float = 0.0, seed: int = 0) -> PartSamples:
        """``count`` surface samples (visible surface only) of ``part`` in ``G`` at ``width``."""
        body = _body_samples(str(self.asset_dir), part, int(count), int(seed))
        X = self.X_GB(part, width)
        return PartSamples(body.points @ X[:3, :3].T + X[:3, 3], body.normals @ X[:3, :3].T)

    def sample_points(
        self,
        *,
        width: float,
        counts: Mapping[str, int] | int = 2000,
        seed: int = 0,
        parts: tuple[str, ...] = PARTS,
    ) -> dict[str, PartSamples]:
        """Surface samples of several parts in ``G`` at opening ``width``.

        Args:
            width: finger opening in metres (clipped to ``[0, stroke]``).
            counts: samples per part, or one number for all. By default the palm and fingers
                get the same count; pass a mapping for area-proportional sampling.
            seed: sampling seed (the same seed gives the same samples).
            parts: which parts.

        Returns:
            part -> :class:`PartSamples` in ``G``.
        """
        out = {}
        for i, part in enumerate(parts):
            n = counts if isinstance(counts, int) else counts[part]
            out[part] = self.sample_part(part, n, width=width, seed=seed + 7919 * i)
        return out

    def finger_centroid_offset(self) -> float:
        """Mean distance of a finger's surface from its body origin along the closing axis.

        The distance between the two finger centroids at opening ``w`` is
        ``w + 2 * finger_centroid_offset()`` (both fingers extend outward from their origins).
        """
        s = _body_samples(str(self.asset_dir), "left_finger", 4000, 0)
        return float(np.mean(s.points[:, 1]))

    def finger_centroid_distance(self, width: float) -> float:
        """Model distance between the finger centroids (along the closing axis) at ``width``."""
        return float(np.clip(width, 0.0, self.stroke)) + 2.0 * self.finger_centroid_offset()

    def width_from_centroid_distance(self, distance: float) -> float:
        """Inverse of :meth:`finger_centroid_distance` (unclipped, so noise stays visible)."""
        return float(distance) - 2.0 * self.finger_centroid_offset()

    @functools.cached_property
    def radius(self) -> float:
        """Radius of a ball about ``G``'s origin + (0, 0, bbox centre) enclosing the open gripper."""
        pts = np.concatenate([m.vertices for m in self.meshes_in_G(self.stroke).values()])
        return float(np.max(np.linalg.norm(pts - self.center_G, axis=1)))

    @functools.cached_property
    def center_G(self) -> np.ndarray:  # noqa: N802
        """Centre of the open gripper's bounding box in ``G`` (used for cropping around a pose)."""
        pts = np.concatenate([m.vertices for m in self.meshes_in_G(self.stroke).values()])
        return 0.5 * (pts.min(axis=0) + pts.max(axis=0))


@functools.lru_cache(maxsize=8)
def _load_cached(asset_dir: str) -> GripperModel:
    root = Path(asset_dir)
    spec_path = root / "gripper.json"
    if not spec_path.is_file():
        raise FileNotFoundError(
            f"gripper spec {spec_path} not found; pass the directory holding gripper.json and meshes/ "
            "(sim/assets_gen writes it)"
        )
    spec = json.loads(spec_path.read_text())
    meshes = {}
    for part in PARTS:
        path = root / spec["meshes"][part]
        if not path.is_file():
            raise FileNotFoundError(f"gripper mesh {path} ({part}) not found")
        meshes[part] = trimesh.load(path, force="mesh", process=True)
    occluder = None
    if spec.get("occluder"):
        path = root / spec["occluder"]
        if not path.is_file():
            raise FileNotFoundError(f"gripper occluder mesh {path} not found")
        occluder = trimesh.load(path, force="mesh", process=True)
    return GripperModel(
        meshes=meshes,
        X_GH=_rot_z(float(spec["X_GH_yaw"])),
        finger_joint_z=float(spec["finger_joint_z"]),
        stroke=float(spec["stroke"]),
        tcp_z=float(spec["tcp_z"]),
        finger_size=tuple(float(v) for v in spec["finger_size"]),
        palm_size=tuple(float(v) for v in spec["palm_size"]),
        asset_dir=root,
        occluder=occluder,
    )


@functools.lru_cache(maxsize=64)
def _body_samples(asset_dir: str, part: str, count: int, seed: int) -> PartSamples:
    """Visible-surface samples of one part in its body frame (cached: models are immutable)."""
    mesh = _load_cached(asset_dir).meshes[part]
    rng = np.random.default_rng(seed)
    points = np.zeros((0, 3))
    normals = np.zeros((0, 3))
    # Oversample, then drop buried samples until enough visible ones remain.
    for _ in range(4):
        need = count - len(points)
        if need <= 0:
            break
        pts, face = trimesh.sample.sample_surface(mesh, int(need * 1.5) + 16, seed=rng)
        keep = _interior_filter(mesh, pts)
        points = np.concatenate([points, pts[keep]])
        normals = np.concatenate([normals, mesh.face_normals[face[keep]]])
    points, normals = points[:count], normals[:count]
    points.setflags(write=False)
    normals.setflags(write=False)
    return PartSamples(points, normals)

"""Per-episode camera sampling (paper appendix A.2) and the fixed train / held-out split.

Positions are drawn uniformly inside the box 0.2 <= x <= 0.6, -0.5 <= y <= 0.5,
0.7 <= z <= 1.2 (metres, task frame) and kept when their distance to the table centre lies in
the half-sphere shell [0.7, 1.2] m; each camera looks at the origin with the image "up"
pointing as close to +z as possible. Of the 16 cameras of an episode the first 12 are training
views and the last 4 are held out; the policy's two evaluation views are the first two
held-out ones (reference view n first). numpy only.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from geo4d_policy.interface import CameraIntrinsics, CameraSpec, look_at


@dataclasses.dataclass(frozen=True)
class CameraConfig:
    """Camera sampling and image settings (``configs/cameras.yaml``)."""

    height: int = 128
    width: int = 160
    # Station cameras are 640x480 with fx = fy = 381 (lbm_eval); we keep that horizontal field
    # of view at any resolution: fx = 381 * width / 640.
    focal_at_640: float = 381.0
    n_cameras: int = 16
    n_train: int = 12
    n_eval_views: int = 2
    radius: tuple[float, float] = (0.7, 1.2)
    x: tuple[float, float] = (0.2, 0.6)
    y: tuple[float, float] = (-0.5, 0.5)
    z: tuple[float, float] = (0.7, 1.2)
    look_at: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def intrinsics(self) -> CameraIntrinsics:
        f = self.focal_at_640 * self.width / 640.0
        return CameraIntrinsics(self.width, self.height, f, f, 0.5 * (self.width - 1), 0.5 * (self.height - 1))

    def __post_init__(self) -> None:
        if not 0 < self.n_train < self.n_cameras:
            raise ValueError(f"need 0 < n_train < n_cameras, got {self.n_train}, {self.n_cameras}")
        if self.n_eval_views > self.n_cameras - self.n_train:
            raise ValueError("more evaluation views than held-out cameras")
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"bad resolution {self.height}x{self.width}")


def camera_name(index: int) -> str:
    return f"cam{index:02d}"


def sample_cameras(rng: np.random.Generator, config: CameraConfig = CameraConfig()) -> list[CameraSpec]:
    """Sample ``config.n_cameras`` cameras (see module docstring for the distribution)."""
    lo = np.array([config.x[0], config.y[0], config.z[0]])
    hi = np.array([config.x[1], config.y[1], config.z[1]])
    intr = config.intrinsics()
    specs: list[CameraSpec] = []
    while len(specs) < config.n_cameras:
        p = rng.uniform(lo, hi)
        r = np.linalg.norm(p - np.asarray(config.look_at))
        if config.radius[0] <= r <= config.radius[1]:
            specs.append(CameraSpec(camera_name(len(specs)), intr, look_at(p, np.asarray(config.look_at))))
    return specs


def split_names(config: CameraConfig = CameraConfig()) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(training cameras, held-out cameras, the policy's evaluation views)."""
    train = tuple(camera_name(i) for i in range(config.n_train))
    held = tuple(camera_name(i) for i in range(config.n_train, config.n_cameras))
    return train, held, held[: config.n_eval_views]

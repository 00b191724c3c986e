"""Dataset inspection and integrity checks (behind ``geo4d-dataset info`` / ``verify``).

:func:`verify_dataset` reads every listed episode completely (every chunk passes its Fletcher-32
checksum) and checks it against ``meta.json``: shapes and dtypes, camera names, task and seed,
finite and rigid camera/gripper poses, increasing timestamps, mask values within the defined
bits. Problems are collected per file, never raised, so one run names every broken file.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from geo4d_policy.data.format import (
    EPISODES_DIR,
    META_FILE,
    N_JOINTS,
    DatasetError,
    DatasetMeta,
    EpisodeEntry,
    EpisodeReader,
    load_meta,
)
from geo4d_policy.data.masks import ALL_PARTS_MASK


@dataclasses.dataclass
class VerifyReport:
    """Outcome of :func:`verify_dataset`.

    Attributes:
        root: the dataset directory.
        n_checked: episode files checked.
        problems: file path -> its problems (only broken files appear; ``meta.json`` included).
        unlisted: episode files on disk that ``meta.json`` does not list (left by a crash;
            not part of the dataset, so not an error).
    """

    root: Path
    n_checked: int = 0
    problems: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    unlisted: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _is_rigid(X: np.ndarray, tol: float = 1e-4) -> np.ndarray:
    """Per-transform check that (..., 4, 4) is a finite proper rigid transform."""
    X = np.asarray(X, dtype=np.float64)
    finite = np.isfinite(X).all(axis=(-2, -1))
    Xs = np.where(np.isfinite(X), X, 0.0)
    R = Xs[..., :3, :3]
    orth = np.abs(np.swapaxes(R, -1, -2) @ R - np.eye(3)).max(axis=(-2, -1)) < tol
    det = np.abs(np.linalg.det(R) - 1.0) < tol
    last = np.abs(Xs[..., 3, :] - [0.0, 0.0, 0.0, 1.0]).max(axis=-1) < tol
    return finite & orth & det & last


def verify_episode(
    path: str | os.PathLike[str], meta: DatasetMeta, entry: EpisodeEntry | None = None
) -> list[str]:
    """Problems of one episode file against the dataset's metadata (empty list: OK)."""
    problems: list[str] = []
    try:
        reader = EpisodeReader(path)
    except DatasetError as e:
        return [str(getattr(e, "reason", e))]
    with reader as r:
        f = r.file
        T, N = r.n_frames, r.n_steps
        H, W = meta.resolution
        if r.task != meta.task:
            problems.append(f"task {r.task!r}, dataset is {meta.task!r}")
        if entry is not None:
            if r.seed != entry.seed:
                problems.append(f"seed attribute {r.seed}, meta.json lists {entry.seed}")
            if T != entry.n_frames:
                problems.append(f"{T} video frames, meta.json lists {entry.n_frames}")
            if N != entry.n_steps:
                problems.append(f"{N} robot steps, meta.json lists {entry.n_steps}")
            if r.success != entry.success:
                problems.append(f"success={r.success}, meta.json lists {entry.success}")
        if r.camera_names != meta.camera_names:
            problems.append(f"cameras {list(r.camera_names)}, dataset has {list(meta.camera_names)}")

        def check(key: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray | None:
            if key not in f:
                problems.append(f"{key}: missing")
                return None
            ds = f[key]
            if ds.shape != shape or ds.dtype != np.dtype(dtype):
                problems.append(f"{key}: {ds.shape} {ds.dtype}, expected {shape} {np.dtype(dtype)}")
                return None
            try:
                return ds[()]  # reads every chunk: checksums and decompression run here
            except Exception as e:
                problems.append(f"{key}: unreadable data ({type(e).__name__}: {e})")
                return None

        vt = check("video_time", (T,), np.float64)
        if vt is not None and not (np.isfinite(vt).all() and (np.diff(vt) > 0).all()):
            problems.append("video_time: not finite and strictly increasing")
        for name in meta.camera_names:
            g = f"cameras/{name}"
            if g not in f:
                problems.append(f"{g}: missing")
                continue
            attrs = f[g].attrs
            K = np.asarray(attrs.get("K", np.full((3, 3), np.nan)), dtype=np.float64)
            if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
                problems.append(f"{g}: bad intrinsics K")
            X_TC = np.asarray(attrs.get("X_TC", np.full((4, 4), np.nan)), dtype=np.float64)
            if X_TC.shape != (4, 4) or not _is_rigid(X_TC):
                problems.append(f"{g}: X_TC is not a finite rigid transform")
            check(f"{g}/rgb", (T, H, W, 3), np.uint8)
            check(f"{g}/depth_mm", (T, H, W), np.uint16)
            masks = check(f"{g}/masks", (T, H, W), np.uint8)
            if masks is not None and (masks & ~np.uint8(ALL_PARTS_MASK)).any():
                problems.append(f"{g}/masks: values outside the defined part bits (0b{ALL_PARTS_MASK:b})")
        rt = check("robot/time", (N,), np.float64)
        if rt is not None and not (np.isfinite(rt).all() and (np.diff(rt) > 0).all()):
            problems.append("robot/time: not finite and strictly increasing")
        for arm in r.arms:
            for key, shape in (("action_X_TG", (N, 4, 4)), ("X_TG", (N, 4, 4)), ("action_width", (N,)),
                               ("width", (N,)), ("q", (N, N_JOINTS))):
                data = check(f"robot/{key}/{arm}", shape, np.float64)
                if data is None:
                    continue
                if not np.isfinite(data).all():
                    problems.append(f"robot/{key}/{arm}: NaN or infinite values")
                elif len(shape) == 3 and not _is_rigid(data).all():
                    problems.append(f"robot/{key}/{arm}: poses that are not rigid transforms")
    return problems


def verify_dataset(root: str | os.PathLike[str]) -> VerifyReport:
    """Check ``meta.json`` and every listed episode file; collect problems per file."""
    root = Path(root)
    report = VerifyReport(root=root)
    try:
        meta = load_meta(root)
    except DatasetError as e:
        report.problems[str(root / META_FILE)] = [str(e)]
        return report
    for entry in meta.episodes:
        path = root / entry.file
        problems = verify_episode(path, meta, entry)
        report.n_checked += 1
        if problems:
            report.problems[str(path)] = problems
    listed = {str(root / e.file) for e in meta.episodes}
    ep_dir = root / EPISODES_DIR
    if ep_dir.is_dir():
        report.unlisted = sorted(str(p) for p in ep_dir.iterdir() if p.is_file() and str(p) not in listed)
    return report


def dataset_info(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Summary of a dataset: episodes, successes, frames, sizes on disk, resolution, split.

    Raises:
        DatasetError: no readable ``meta.json`` (or another format version).
    """
    root = Path(root)
    meta = load_meta(root)
    episodes = []
    for e in meta.episodes:
        p = root / e.file
        size = p.stat().st_size if p.is_file() else None
        episodes.append({"seed": e.seed, "file": e.file, "n_frames": e.n_frames, "n_steps": e.n_steps,
                         "success": e.success, "bytes": size})
    sizes = [e["bytes"] for e in episodes if e["bytes"] is not None]
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return {
        "root": str(root),
        "format_version": meta.format_version,
        "task": meta.task,
        "resolution": list(meta.resolution),
        "cameras": {"train": list(meta.train_cameras), "heldout": list(meta.heldout_cameras)},
        "rates_hz": {"robot": meta.robot_hz, "video": meta.video_hz},
        "n_episodes": len(meta.episodes),
        "n_successes": meta.n_successes,
        "n_frames": meta.n_frames,
        "n_steps": sum(e.n_steps for e in meta.episodes),
        "bytes_total": total,
        "bytes_per_episode_mean": (sum(sizes) / len(sizes)) if sizes else 0,
        "missing_files": [e["file"] for e in episodes if e["bytes"] is None],
        "provenance": meta.provenance,
        "episodes": episodes,
    }

"""Synthetic datasets shared by the data tests (built once per session; tests that damage
files work on copies)."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from geo4d_policy.data import synthetic

N_FRAMES = 6
RESOLUTION = (32, 40)


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ds") / "apple"
    synthetic.make_dataset(root, seeds=[0, 1, 2], n_frames=N_FRAMES, resolution=RESOLUTION)
    return root


@pytest.fixture
def dataset_copy(dataset_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(dataset_dir, dst)
    return dst


def corrupt_chunks(path: Path, key: str) -> None:
    """Overwrite bytes inside every stored chunk of dataset ``key`` (checksums then fail)."""
    spans = []
    with h5py.File(path, "r") as f:
        ds = f[key]
        for i in range(ds.id.get_num_chunks()):
            info = ds.id.get_chunk_info(i)
            spans.append((info.byte_offset, info.size))
    with open(path, "r+b") as fh:
        for off, size in spans:
            fh.seek(off + size // 2)
            fh.write(bytes(np.arange(min(8, size // 2), dtype=np.uint8) ^ 0xA5))


@pytest.fixture
def corrupt():
    """The :func:`corrupt_chunks` helper (fixtures avoid importing conftest modules by name)."""
    return corrupt_chunks

"""Shared test settings: passive OpenMP waits (CPU timings swing 20x without it), seeded RNGs,
the scripts/ modules as importable modules."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def load_script():
    """``load_script("table2")``: ``scripts/table2.py`` imported as a module (scripts/ is no package)."""
    import importlib.util

    from geo4d_policy.config import REPO_ROOT

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"{name}_script", REPO_ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load

"""The committed models are exactly what scripts/generate_assets.py produces (no hand edits, no drift)."""

from pathlib import Path

import pytest

from sim.assets_gen.objects import write_object_assets
from sim.assets_gen.robot import write_robot_assets

ASSETS = Path(__file__).resolve().parents[2] / "assets"


@pytest.mark.parametrize("kind, write", [("robot", write_robot_assets), ("objects", write_object_assets)])
def test_generated_assets_match_committed(tmp_path, kind, write):
    written = write(tmp_path / kind)
    assert written
    for path in written:
        committed = ASSETS / kind / path.relative_to(tmp_path / kind)
        assert committed.is_file(), f"{committed} missing: run scripts/generate_assets.py"
        assert committed.read_bytes() == path.read_bytes(), f"{committed} differs from its generator"

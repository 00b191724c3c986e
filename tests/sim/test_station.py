"""Station physics: what happens to an object that leaves the table."""

import numpy as np
import pytest

from sim.cameras import CameraConfig, sample_cameras
from sim.station import ObjectPlacement, StationConfig, build_station, pose


def test_an_object_knocked_off_the_table_comes_to_rest_on_the_floor():
    config = StationConfig()
    # Tumbling off the +x edge of the table (which ends at centre_x + size_x / 2 = 0.605 m).
    station = build_station(config=config, objects=[
        ObjectPlacement("box", "cereal_box.sdf", pose((0.75, 0.0, 0.2), (0.3, 0.2, 0.0)))])
    station.reset()
    station.advance(3.0)
    X = station.body_pose("box")
    assert np.isfinite(X).all()
    assert X[2, 3] == pytest.approx(config.floor_z, abs=0.25)  # resting on the floor, any side down
    v = station.plant.GetVelocities(station.plant_context)
    assert np.abs(v).max() < 0.05
    assert frozenset({"box/cereal_box", "floor/floor"}) in station.contact_pairs()


def test_the_floor_is_not_rendered():
    """Images are the same whether the floor is where it is or far away (collision only)."""
    import dataclasses

    specs = sample_cameras(np.random.default_rng(0), CameraConfig())[:3]
    frames = []
    for floor_z in (StationConfig().floor_z, -100.0):
        station = build_station(config=dataclasses.replace(StationConfig(), floor_z=floor_z), objects=[])
        station.reset()
        frames.append([station.render(s) for s in specs])
    for a, b in zip(*frames):
        np.testing.assert_array_equal(a.rgb, b.rgb)
        np.testing.assert_array_equal(a.depth, b.depth)

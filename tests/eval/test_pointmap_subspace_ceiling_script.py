"""scripts/pointmap_subspace_ceiling.py: all components reconstruct exactly, fewer lose geometry, bad K exits 2."""

from __future__ import annotations

import json

import pytest

from geo4d_policy.data.synthetic import make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("subspace")
    make_dataset(root / "train", seeds=[0], n_frames=4, resolution=(32, 40))
    make_dataset(root / "val", seeds=[700000], n_frames=4, resolution=(32, 40))
    return root


def test_full_rank_is_exact_and_one_component_is_not(data, load_script):
    script = load_script("pointmap_subspace_ceiling")
    out = data / "c.json"
    assert script.main(["--train", str(data / "train"), "--val", str(data / "val"), "--clips", "6", "4",
                        "--ks", "1", "192", "--out", str(out)]) == 0
    views = json.loads(out.read_text())["views"]
    for rows in views.values():
        for code in ("absolute", "change"):
            assert rows[f"{code}_192"]["all_mm_median"] < 1e-2, (code, rows[f"{code}_192"])
            assert rows[f"{code}_192"]["abs_rel"] < 1e-5
        assert rows["absolute_1"]["all_mm_median"] > 1.0
    # The change code is exact where nothing moves: view n's static pixels, any K.
    assert views["n"]["change_1"]["all_mm_median"] < 1e-2


def test_bad_k_exits_2(data, load_script):
    script = load_script("pointmap_subspace_ceiling")
    with pytest.raises(SystemExit) as e:
        script.main(["--train", str(data / "train"), "--val", str(data / "val"), "--ks", "0", "--out", str(data / "x")])
    assert e.value.code == 2

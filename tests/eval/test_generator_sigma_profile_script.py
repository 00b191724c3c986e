"""scripts/generator_sigma_profile.py: its references are what they claim, bad input exits 2."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from geo4d_policy.config import CONFIG_DIR
from geo4d_policy.data.synthetic import make_dataset
from geo4d_policy.models.config import load_model_config
from geo4d_policy.models.pipeline import Generator4D


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sigma_profile")
    make_dataset(root / "apple", seeds=[0], n_frames=4, resolution=(32, 40))
    cfg = yaml.safe_load((CONFIG_DIR / "model" / "tiny.yaml").read_text())
    cfg.update(height=32, width=40, num_frames=2)
    cfg["edm"]["residual"] = True
    (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    torch.manual_seed(0)
    g = Generator4D(load_model_config(root / "tiny.yaml"))
    with torch.no_grad():  # F = 0: the denoiser is its skip path
        for conv in (g.unet.unet.conv_out, g.unet.decoder_m.conv_out):
            conv.weight.zero_()
            conv.bias.zero_()
    g.save_pretrained(root / "zero")
    return root


def test_a_network_that_outputs_nothing_is_its_skip_path(setup, load_script):
    script = load_script("generator_sigma_profile")
    out = setup / "p.json"
    assert script.main(["--checkpoint", str(setup / "zero"), "--data", str(setup / "apple"), "--clips", "2",
                        "--sigmas", "0.05", "80.0", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["residual"] and len(r["means"]) == 4 * 2 * 2 * 2  # regions x sigmas x views x modalities
    assert {m["region"] for m in r["means"]} == {"all", "gripper", "arrive", "leave"}
    for row in r["rows"]:
        assert row["denoiser_rmse"] == pytest.approx(row["skip_only_rmse"], rel=1e-4)
        # At a high noise level the skip path keeps almost nothing: its error is the target's size
        # (over every cell: a region of a few cells keeps its share of the noise).
        if row["sigma"] == 80.0 and row["region"] == "all":
            assert row["skip_only_rmse"] == pytest.approx(row["target_rms"], rel=0.05)


def test_region_rms_counts_only_its_cells(load_script):
    script = load_script("generator_sigma_profile")
    x = torch.zeros(1, 2, 3, 4, 5)  # (B, F, C, h, w)
    cells = torch.zeros(1, 2, 4, 5, dtype=torch.bool)
    x[0, 1, :, 2, 3], cells[0, 1, 2, 3] = 2.0, True
    x[0, 0, :, 0, 0], cells[0, 0, 0, 0] = 0.0, True  # a cell of the region without error
    assert script._rms(x, cells) == pytest.approx((3 * 4.0 / 6) ** 0.5)
    assert script._rms(x) == pytest.approx((3 * 4.0 / x.numel()) ** 0.5)


def test_bad_input_exits_2(setup, load_script, capsys):
    script = load_script("generator_sigma_profile")
    assert script.main(["--checkpoint", str(setup / "zero"), "--data", str(setup / "apple"),
                        "--sigmas", "-1", "--out", str(setup / "x.json")]) == 2
    assert "positive" in capsys.readouterr().err

"""geo4d-train (VAEs, generator, resume) and geo4d-eval-video end to end on a tiny synthetic dataset."""

import json

import pytest
import yaml

from geo4d_policy.cli.eval_video import main as eval_main
from geo4d_policy.cli.train import main as train_main
from geo4d_policy.config import CONFIG_DIR
from geo4d_policy.data.synthetic import make_dataset


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    make_dataset(root / "data", seeds=range(2), n_frames=12, resolution=(32, 40))
    make_dataset(root / "val", seeds=[500], n_frames=12, resolution=(32, 40))
    cfg = yaml.safe_load((CONFIG_DIR / "model" / "tiny.yaml").read_text())
    cfg.update(height=32, width=40, num_frames=2)
    (root / "tiny32.yaml").write_text(yaml.safe_dump(cfg))
    return root


def _train(setup, *args):
    common = ["--data", str(setup / "data"), "--config", str(setup / "tiny32.yaml"), "--batch-size", "1",
              "--workers", "0"]
    return train_main([*args, *common])


def test_train_resume_and_evaluate(setup, capsys):
    runs = setup / "runs"
    assert _train(setup, "vae", "--modality", "rgb", "--out", str(runs / "ivae"), "--steps", "2") == 0
    assert _train(setup, "vae", "--modality", "pointmap", "--out", str(runs / "pvae"), "--steps", "2",
                  "--init", str(runs / "ivae")) == 0
    gen = ["generator", "--task", "all", "--out", str(runs / "gen"), "--image-vae", str(runs / "ivae"),
           "--pointmap-vae", str(runs / "pvae")]
    assert _train(setup, *gen, "--steps", "2") == 0
    assert (runs / "gen" / "last").read_text().strip() == "step_2"
    # Without --resume an existing run is refused; with it training continues from step 2.
    assert _train(setup, *gen, "--steps", "3") == 2
    assert _train(setup, *gen, "--steps", "3", "--resume") == 0
    assert (runs / "gen" / "last").read_text().strip() == "step_3"
    # Provenance: the resumed session is recorded; a resume with another recipe is refused.
    record = json.loads((runs / "gen" / "provenance.json").read_text())
    assert record["command"] == "geo4d-train generator" and len(record["sessions"]) == 2
    assert record["config"]["model"]["height"] == 32 and "max_steps" not in record["config"]
    assert record["config"]["image_vae"] and record["seeds"] == {"seed": 0, "seed_stream": "data"}
    assert _train(setup, *gen, "--steps", "4", "--resume", "--lr", "0.5") == 2
    assert "config.lr: 0.0001 -> 0.5" in capsys.readouterr().err
    assert (runs / "gen" / "last").read_text().strip() == "step_3"
    out = setup / "eval"
    # Validation episodes (seed 500, not trained on); the synthetic grippers are a few pixels at 32x40.
    assert eval_main(["--checkpoint", str(runs / "gen"), "--data", str(setup / "val"), "--out", str(out),
                      "--clips", "1", "--steps", "2", "--segmenter", "none", "--workers", "0",
                      "--min-part-pixels", "2", "--min-motion", "0.005"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "error_by_frame.png").is_file()
    assert set(metrics["rows"]) == {"generator", "autoencoder", "repeat_current"}
    for row in metrics["rows"].values():
        for key in ("gripper_track_mm_median", "gripper_track_mm_p90", "gripper_track_deg_median",
                    "open_close_acc", "abs_rel", "delta1", "gripper_px_mm_median"):
            assert key in row
        per_frame = row["per_task"]["PlaceAppleFromBowlIntoBin"]["per_frame"]
        assert [f["frame"] for f in per_frame] == [1, 2]
    # The floor repeats the true current frame: its view-n depth at frame 1 is close to exact.
    assert metrics["rows"]["repeat_current"]["abs_rel"] < metrics["rows"]["generator"]["abs_rel"]
    record = json.loads((out / "provenance.json").read_text())
    assert record["command"] == "geo4d-eval-video" and record["config"]["eval"]["steps"] == 2
    assert len(record["config"]["checkpoint"]) == 64 and record["code"]["tree_sha256"]


def test_train_refuses_task_mismatch(setup, capsys):
    rc = _train(setup, "generator", "--task", "PutSpatulaOnTable", "--out", str(setup / "x"), "--image-vae", "none")
    assert rc == 2 and "PutSpatulaOnTable" in capsys.readouterr().err


def test_eval_video_missing_checkpoint(setup, capsys):
    rc = eval_main(["--checkpoint", str(setup / "nope"), "--data", str(setup / "data"), "--out", str(setup / "e2")])
    assert rc == 2 and "nope" in capsys.readouterr().err

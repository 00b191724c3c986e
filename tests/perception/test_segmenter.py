"""Gripper part segmenter: shapes, checkpoints, label conversions, learning a rendered gripper."""

import json

import numpy as np
import pytest
import torch

from geo4d_policy.data.masks import MASK_BITS, pack_masks
from geo4d_policy.models.checkpoint import CheckpointError
from geo4d_policy.perception.segmenter import (
    CLASS_NAMES,
    NUM_CLASSES,
    GripperSegmenter,
    SegmenterConfig,
    class_id,
    classes_from_packed_masks,
    confusion_matrix,
    gripper_mask_for_arm,
    iou_from_confusion,
    part_labels_for_arm,
)
from geo4d_policy.perception.pose_tracker import part_label_image

TINY = SegmenterConfig(channels=(8, 8, 16), norm_groups=4)


def _model(seed=0, config=TINY):
    torch.manual_seed(seed)
    return GripperSegmenter(config)


def _gripper_scene(h=32, w=40, seed=0):
    """An RGB image with a grey palm and two bright fingers of the right arm on a textured table,
    and its packed masks (like a label-image render of one gripper)."""
    rng = np.random.default_rng(seed)
    rgb = (rng.integers(90, 140, size=(h, w, 3))).astype(np.uint8)
    rgb[..., 0] += 40  # a brownish table
    parts = {k: np.zeros((h, w), bool) for k in ("right_hand", "right_left_finger", "right_right_finger")}
    parts["right_hand"][8:16, 12:30] = True
    parts["right_left_finger"][16:26, 13:17] = True
    parts["right_right_finger"][16:26, 25:29] = True
    rgb[parts["right_hand"]] = (60, 60, 70)
    rgb[parts["right_left_finger"] | parts["right_right_finger"]] = (225, 225, 235)
    return rgb, pack_masks(parts)


def test_class_layout_follows_the_mask_bits():
    assert CLASS_NAMES[0] == "background" and NUM_CLASSES == 1 + len(MASK_BITS)
    for name, bit in MASK_BITS.items():
        assert CLASS_NAMES[1 + bit] == name
    assert class_id("right", "left_finger") == 1 + MASK_BITS["right_left_finger"]


def test_forward_and_predict_shapes():
    model = _model()
    x = torch.zeros(2, 3, 30, 38)  # not a multiple of 4: padded inside, cropped back
    assert model(x).shape == (2, NUM_CLASSES, 30, 38)
    rgb = np.random.default_rng(0).integers(0, 255, size=(3, 30, 38, 3), dtype=np.uint8)
    pred = model.predict(rgb, batch_size=2)
    assert pred.shape == (3, 30, 38) and pred.dtype == np.int8
    assert pred.min() >= 0 and pred.max() < NUM_CLASSES


@pytest.mark.parametrize("bad", [np.zeros((30, 38, 3), np.uint8), np.zeros((2, 30, 38, 4), np.uint8),
                                 np.zeros((2, 30, 38, 3), np.float32)])
def test_bad_input_shapes_raise(bad):
    with pytest.raises(ValueError):
        _model().predict(bad)
    with pytest.raises(ValueError):
        _model()(torch.zeros(2, 4, 8, 8))


def test_save_and_load_give_identical_outputs(tmp_path):
    model = _model(seed=3)
    rgb = np.random.default_rng(1).integers(0, 255, size=(2, 32, 40, 3), dtype=np.uint8)
    path = model.save_pretrained(tmp_path / "seg", extra={"note": "test"})
    loaded = GripperSegmenter.from_pretrained(path)
    assert loaded.config == model.config
    x = GripperSegmenter.images_to_tensor(rgb)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))
    np.testing.assert_array_equal(model.predict(rgb), loaded.predict(rgb))
    # fp16 storage loads back as float32 weights, within half precision of the original.
    half = GripperSegmenter.from_pretrained(model.save_pretrained(tmp_path / "seg16", dtype=torch.float16))
    assert all(p.dtype == torch.float32 for p in half.parameters())
    with torch.no_grad():
        assert torch.allclose(model(x), half(x), atol=5e-2)


def test_from_pretrained_rejects_other_checkpoints(tmp_path):
    with pytest.raises(CheckpointError):
        GripperSegmenter.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"format": "geo4d-vae"}')
    with pytest.raises(CheckpointError):
        GripperSegmenter.from_pretrained(tmp_path)


def test_part_labels_for_arm_on_a_hand_built_array():
    classes = np.array([[0, 1, 2, 3], [4, 5, 6, 0]], dtype=np.int8)
    np.testing.assert_array_equal(part_labels_for_arm(classes, "left"), [[-1, 0, 1, 2], [-1, -1, -1, -1]])
    np.testing.assert_array_equal(part_labels_for_arm(classes, "right"), [[-1, -1, -1, -1], [0, 1, 2, -1]])
    np.testing.assert_array_equal(gripper_mask_for_arm(classes, "right"), [[0, 0, 0, 0], [1, 1, 1, 0]])
    assert part_labels_for_arm(classes[None], "left").shape == (1, 2, 4)
    with pytest.raises(KeyError):
        part_labels_for_arm(classes, "middle")
    with pytest.raises(ValueError):
        part_labels_for_arm(classes.astype(float), "left")


def test_classes_from_packed_masks_agree_with_the_tracker_convention():
    _, packed = _gripper_scene()
    classes = classes_from_packed_masks(packed)
    for arm in ("left", "right"):
        np.testing.assert_array_equal(part_labels_for_arm(classes, arm), part_label_image(packed, arm))
    # Several bits (not produced by label images): the lowest bit wins.
    assert classes_from_packed_masks(np.array([0b101000], np.uint8))[0] == 1 + 3


def test_iou_from_confusion():
    target = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    iou = iou_from_confusion(confusion_matrix(pred, target, num_classes=4))
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 0.0])
    assert np.isnan(iou[3])


def test_tiny_model_overfits_a_rendered_gripper():
    rgb, packed = _gripper_scene()
    x = GripperSegmenter.images_to_tensor(rgb[None])
    y = torch.from_numpy(classes_from_packed_masks(packed))[None]
    model = _model(seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 20, (losses[0], losses[-1])
    pred = model.predict(rgb[None])[0]
    iou = iou_from_confusion(confusion_matrix(pred, y[0].numpy()))
    assert np.all(iou[[0, 4, 5, 6]] > 0.8), iou


# --------------------------------------------------------------------------------------------
# Training (geo4d_policy.train.segmenter) on a tiny synthetic dataset
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frames_dataset(tmp_path_factory):
    from geo4d_policy.data import synthetic

    root = tmp_path_factory.mktemp("seg") / "apple"
    synthetic.make_dataset(root, seeds=[0, 1], n_frames=3, resolution=(32, 40))
    return root


def test_frame_dataset_uses_the_meta_camera_split(frames_dataset):
    from geo4d_policy.data.format import load_meta
    from geo4d_policy.train.segmenter import ColorJitter, SegmentationFrameDataset

    meta = load_meta(frames_dataset)
    train = SegmentationFrameDataset(frames_dataset, split="train", jitter=ColorJitter())
    held = SegmentationFrameDataset(frames_dataset, split="heldout")
    assert len(train) == 2 * 3 * len(meta.train_indices) and len(held) == 2 * 3 * len(meta.heldout_indices)
    assert {held.locate(i)[1] for i in range(len(held))} == set(meta.heldout_cameras)
    assert {train.locate(i)[1] for i in range(len(train))} == set(meta.train_cameras)
    s = train[5]
    assert s["image"].shape == (3, 32, 40) and s["target"].shape == (32, 40)
    assert s["image"].min() >= -1 and s["image"].max() <= 1
    # Augmentation is a function of (seed, epoch, index).
    assert torch.equal(train[5]["image"], s["image"])
    train.set_epoch(1)
    assert not torch.equal(train[5]["image"], s["image"])
    assert torch.equal(train[5]["target"], s["target"])


def test_training_writes_checkpoints_and_resumes_exactly(frames_dataset, tmp_path):
    from safetensors.torch import load_file

    from geo4d_policy.train.segmenter import load_segmenter_train_config, train_segmenter

    cfg = load_segmenter_train_config("tiny", overrides={"max_steps": 6, "ckpt_every": 3, "eval_every": 3})
    full = train_segmenter(cfg, data_dirs=[frames_dataset], out_dir=tmp_path / "full")
    assert full.step == 6 and full.checkpoint.name == "step_6"
    assert (tmp_path / "full" / "last").read_text().strip() == "step_6"
    assert (tmp_path / "full" / "train_config.yaml").is_file()
    assert set(full.heldout["iou"]) == set(CLASS_NAMES) and full.heldout["n_frames"] == 16
    lines = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    assert any("heldout_miou_gripper" in ln for ln in lines)
    GripperSegmenter.from_pretrained(tmp_path / "full")  # loads through the `last` pointer

    half = load_segmenter_train_config("tiny", overrides={"max_steps": 3, "ckpt_every": 3, "eval_every": 3})
    train_segmenter(half, data_dirs=[frames_dataset], out_dir=tmp_path / "resumed")
    with pytest.raises(FileExistsError):
        train_segmenter(cfg, data_dirs=[frames_dataset], out_dir=tmp_path / "resumed")
    resumed = train_segmenter(cfg, data_dirs=[frames_dataset], out_dir=tmp_path / "resumed", resume=True)
    assert resumed.step == 6
    a = load_file(str(full.checkpoint / "model.safetensors"))
    b = load_file(str(resumed.checkpoint / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_loader_workers_give_the_same_training_and_resume_mid_epoch(frames_dataset, tmp_path):
    from safetensors.torch import load_file

    from geo4d_policy.train.segmenter import load_segmenter_train_config, train_segmenter

    # 24 training frames / batch 4 = 6 batches per epoch: step 4 stops mid-epoch.
    serial = train_segmenter(load_segmenter_train_config("tiny", overrides={"max_steps": 8, "eval_every": 0}),
                             data_dirs=[frames_dataset], out_dir=tmp_path / "serial")
    half = load_segmenter_train_config("tiny", overrides={"max_steps": 4, "eval_every": 0, "num_workers": 2})
    train_segmenter(half, data_dirs=[frames_dataset], out_dir=tmp_path / "workers")
    full = load_segmenter_train_config("tiny", overrides={"max_steps": 8, "eval_every": 0, "num_workers": 2})
    resumed = train_segmenter(full, data_dirs=[frames_dataset], out_dir=tmp_path / "workers", resume=True)
    a = load_file(str(serial.checkpoint / "model.safetensors"))
    b = load_file(str(resumed.checkpoint / "model.safetensors"))
    assert resumed.step == 8 and all(torch.equal(a[k], b[k]) for k in a)


def test_max_time_stops_with_a_checkpoint_and_a_final_evaluation(frames_dataset, tmp_path):
    from geo4d_policy.train.segmenter import load_segmenter_train_config, train_segmenter

    cfg = load_segmenter_train_config("tiny", overrides={"max_steps": 1000, "ckpt_every": 500,
                                                         "max_time_s": 1e-6})
    result = train_segmenter(cfg, data_dirs=[frames_dataset], out_dir=tmp_path / "run")
    assert result.step == 1 and result.checkpoint.name == "step_1"
    assert (tmp_path / "run" / "last").read_text().strip() == "step_1"
    assert result.heldout is not None and (tmp_path / "run" / "eval_heldout.json").is_file()


@pytest.mark.parametrize("override", [{"num_workers": -1}, {"max_time_s": 0}, {"device": "gpu"}])
def test_bad_runtime_options_are_refused(override):
    from geo4d_policy.config import ConfigError
    from geo4d_policy.train.segmenter import load_segmenter_train_config

    with pytest.raises(ConfigError):
        load_segmenter_train_config("tiny", overrides=override)


def test_every_shipped_recipe_loads():
    from geo4d_policy.train.segmenter import SEGMENTER_CONFIG_DIR, load_segmenter_train_config

    names = sorted(p.stem for p in SEGMENTER_CONFIG_DIR.glob("*.yaml"))
    assert {"tiny", "small", "medium"} <= set(names)
    for name in names:
        assert load_segmenter_train_config(name).name == name


def test_train_cli_segmenter_and_export(frames_dataset, tmp_path):
    from geo4d_policy.cli.train import main

    rc = main(["segmenter", "--data", str(frames_dataset), "--out", str(tmp_path / "run"), "--config", "tiny",
               "--steps", "2", "--export", str(tmp_path / "ship")])
    assert rc == 0
    shipped = GripperSegmenter.from_pretrained(tmp_path / "ship")
    assert shipped.predict(np.zeros((1, 32, 40, 3), np.uint8)).shape == (1, 32, 40)
    assert main(["segmenter", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r2"), "--config",
                 "tiny"]) == 2
    assert main(["segmenter", "--data", str(frames_dataset), "--out", str(tmp_path / "r3"), "--config",
                 "huge"]) == 2


def test_shipped_checkpoint_loads_and_fits_the_size_budget():
    from geo4d_policy.policies.video_policy import DEFAULT_SEGMENTER as path

    assert (path / "model.safetensors").stat().st_size < 3_000_000
    seg = GripperSegmenter.from_pretrained(path)
    pred = seg.predict(np.zeros((1, 128, 160, 3), np.uint8))
    assert pred.shape == (1, 128, 160)
    info = json.loads((path / "config.json").read_text())
    assert set(info["heldout_eval"]["iou"]) == set(CLASS_NAMES)
    # The policies' default must stay the GPU-trained one (held-out mIoU 0.87), not the 0.54 CPU one.
    assert info["heldout_eval"]["miou_gripper"] > 0.8


# --------------------------------------------------------------------------------------------
# Generated-frame degradation (blur / resampling / noise)
# --------------------------------------------------------------------------------------------


def test_degrade_image_shapes_determinism_and_identity_when_disabled():
    from geo4d_policy.config import ConfigError
    from geo4d_policy.train.segmenter import EVAL_DEGRADATION, Degradation, degrade_image, gaussian_blur

    rgb, _ = _gripper_scene(seed=2)
    x = GripperSegmenter.images_to_tensor(rgb[None])[0]
    deg = Degradation(blur_sigma=(0.5, 1.5), resample_factor=(1.5, 2.0), noise_std=(0.01, 0.03), prob=1.0)
    a = degrade_image(x, deg, np.random.default_rng([7, 0, 3]))
    b = degrade_image(x, deg, np.random.default_rng([7, 0, 3]))
    c = degrade_image(x, deg, np.random.default_rng([7, 0, 4]))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x)
    # Off (prob 0, or empty ranges): the very same tensor, no draws needed.
    for off in (Degradation(prob=0.0),
                Degradation(blur_sigma=(0, 0), resample_factor=(1, 1), noise_std=(0, 0), prob=1.0)):
        assert not off.enabled
        assert degrade_image(x, off, np.random.default_rng(0)) is x
    # Blur alone keeps the mean and lowers the high frequencies; the eval degradation is fixed.
    blurred = gaussian_blur(x, 1.0)
    assert blurred.shape == x.shape and abs(float(blurred.mean() - x.mean())) < 0.02
    assert float(blurred.diff(dim=-1).abs().mean()) < float(x.diff(dim=-1).abs().mean())
    assert EVAL_DEGRADATION.blur_sigma == (1.0, 1.0) and EVAL_DEGRADATION.prob == 1.0
    with pytest.raises(ConfigError):
        Degradation(resample_factor=(0.5, 2.0))


def test_frame_dataset_degradation_is_seeded_and_evaluated(frames_dataset):
    from geo4d_policy.train.segmenter import (EVAL_DEGRADATION, Degradation, SegmentationFrameDataset,
                                              evaluate_segmenter, frame_datasets)

    deg = Degradation(prob=1.0)
    clean = SegmentationFrameDataset(frames_dataset, split="train")
    train = SegmentationFrameDataset(frames_dataset, split="train", degrade=deg, seed=3)
    s = train[4]
    assert s["image"].shape == clean[4]["image"].shape
    assert torch.equal(train[4]["image"], s["image"]) and not torch.equal(s["image"], clean[4]["image"])
    assert torch.equal(s["target"], clean[4]["target"])
    train.set_epoch(1)
    assert not torch.equal(train[4]["image"], s["image"])
    # Disabled degradation: identical to no degradation.
    off = SegmentationFrameDataset(frames_dataset, split="train", degrade=Degradation(prob=0.0))
    assert torch.equal(off[4]["image"], clean[4]["image"])
    # The degraded held-out evaluation reports per-class and per-arm IoU.
    model = _model()
    ev = evaluate_segmenter(model, frame_datasets([frames_dataset], split="heldout", degrade=EVAL_DEGRADATION),
                            max_frames=4)
    assert set(ev["iou"]) == set(CLASS_NAMES) and set(ev["arm_iou"]) == {"left", "right"}
    assert ev["n_frames"] == 4


def test_train_cli_segmenter_evaluate_reports_clean_and_degraded(frames_dataset, tmp_path):
    from geo4d_policy.cli.train import main

    model = _model()
    model.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "ev.json"
    assert main(["segmenter", "--data", str(frames_dataset), "--out", str(out), "--evaluate",
                 str(tmp_path / "ckpt"), "--frames", "4"]) == 0
    ev = json.loads(out.read_text())
    assert ev["n_frames"] == 4 and ev["degraded"]["n_frames"] == 4
    assert set(ev["degraded"]["arm_iou"]) == {"left", "right"}

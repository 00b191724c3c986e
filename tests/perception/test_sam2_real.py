"""The SAM2 adapter against the real ``sam2`` package (PyPI, the optional ``sam2`` extra).

SAM2's smallest configuration (Hiera-T, ``configs/sam2.1/sam2.1_hiera_t.yaml``) is built with
random weights, saved as a checkpoint file in SAM2's release format and loaded through the
adapter, at a 256 px input size to keep the CPU time to seconds. A clip of simulator frames
goes through ``init_state``, prompting and propagation. Random weights say nothing about mask
quality: the checks are the plumbing (prompts reach SAM2's state, every frame comes back,
masks of the clip's shape are SAM2's own logits thresholded). Skipped when ``sam2`` is absent.
"""

from __future__ import annotations

import numpy as np
import pytest

build_sam = pytest.importorskip("sam2.build_sam", reason="the optional sam2 extra is not installed")
torch = pytest.importorskip("torch")

from geo4d_policy.data.masks import masks_from_frame  # noqa: E402
from geo4d_policy.perception.sam2_adapter import SAM2Segmenter, gripper_part_prompts, main  # noqa: E402

# sam2 built without its optional CUDA extension skips mask post-processing and says so on every frame.
pytestmark = pytest.mark.filterwarnings("ignore:cannot import name '_C' from 'sam2'")

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
SMALL = ["++model.image_size=256"]
SEED = 3  # a data-stream seed (collection seeds are below interface.EVAL_SEED_OFFSET)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_sam.build_sam2_video_predictor(CONFIG, None, device="cpu", hydra_overrides_extra=SMALL)
    path = tmp_path_factory.mktemp("sam2") / "sam2_random_tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def sim_clip():
    """Frames of the expert's first second, 0.5 s apart, from the policy's reference camera."""
    pytest.importorskip("pydrake")
    from sim.env import make_env
    from sim.experts import make_expert_policy

    task = "PlaceAppleFromBowlIntoBin"
    env, expert = make_env(task), make_expert_policy(task=task)
    obs = env.reset(seed=SEED)
    expert.reset(seed=SEED)
    camera = obs.eval_cameras[0]
    frames, packed = [], []
    for _ in range(3):
        frames.append(obs.cameras[camera].rgb)
        packed.append(masks_from_frame(obs.cameras[camera]))
        for action in list(expert.act(obs))[:5]:
            obs, _, _ = env.step(action)
    env.close()
    return np.stack(frames), np.stack(packed)


def test_simulator_clip_through_real_sam2(checkpoint, sim_clip):
    frames, packed = sim_clip
    T, H, W = frames.shape[:3]
    parts = gripper_part_prompts(packed[0])
    assert parts, "the reference camera sees no gripper part on the first frame"
    seg = SAM2Segmenter(config=CONFIG, checkpoint=checkpoint, device="cpu", hydra_overrides=SMALL)
    assert seg.predictor.image_size == 256

    # Spy on the real predictor (no stand-in): what init_state got, and what propagation yields.
    seen: dict = {}
    init_state, propagate = seg.predictor.init_state, seg.predictor.propagate_in_video

    def spy_init_state(**kwargs):
        seen["state"] = init_state(**kwargs)
        return seen["state"]

    def spy_propagate(state):
        for frame_idx, obj_ids, logits in propagate(state):
            seen.setdefault("frames", {})[frame_idx] = (list(obj_ids), logits.detach().clone())
            yield frame_idx, obj_ids, logits

    seg.predictor.init_state, seg.predictor.propagate_in_video = spy_init_state, spy_propagate
    with torch.inference_mode():
        masks = seg.segment_video(frames, {obj: prompt for obj, (_, prompt) in parts.items()})

    state = seen["state"]
    assert state["num_frames"] == T and (state["video_height"], state["video_width"]) == (H, W)
    assert sorted(state["obj_ids"]) == sorted(parts)
    for obj in parts:  # every object's click (and box) reached SAM2 on frame 0
        idx = state["obj_id_to_idx"][obj]
        assert 0 in state["point_inputs_per_obj"][idx]
    assert sorted(seen["frames"]) == list(range(T))
    assert set(masks) == set(parts)
    for frame_idx, (obj_ids, logits) in seen["frames"].items():
        assert obj_ids == list(state["obj_ids"]) and tuple(logits.shape) == (len(parts), 1, H, W)
        for i, obj in enumerate(obj_ids):
            assert np.array_equal(masks[obj][frame_idx], logits[i, 0].numpy() > 0)
    for m in masks.values():
        assert m.shape == (T, H, W) and m.dtype == bool


def test_weights_check_command_on_a_dataset(checkpoint, tmp_path, capsys):
    from geo4d_policy.data import synthetic

    root = tmp_path / "apple"
    synthetic.make_dataset(root, seeds=[0], n_frames=3, resolution=(32, 40))
    assert main(["--config", CONFIG, "--checkpoint", str(checkpoint), "--data", str(root), "--frames", "3",
                 "--image-size", "256"]) == 0
    out = capsys.readouterr().out
    assert "episode seed 0" in out and "first frame" in out
    with pytest.raises(SystemExit):
        main(["--config", CONFIG, "--checkpoint", str(checkpoint), "--data", str(root), "--seed", "9"])

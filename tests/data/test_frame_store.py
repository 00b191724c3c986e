"""FrameStore: whole datasets on a device give the same frames and pointmaps as the clip loader."""

import numpy as np
import pytest
import torch

from geo4d_policy.data.datasets import GeneratorClipDataset
from geo4d_policy.data.format import DatasetError
from geo4d_policy.data.frame_store import FrameStore
from geo4d_policy.data.geometry import PointmapNormalization
from geo4d_policy.data.synthetic import make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    make_dataset(root / "apple", seeds=range(2), n_frames=5, resolution=(32, 40))
    make_dataset(root / "spatula", seeds=[7], task="PutSpatulaOnTable", n_frames=4, resolution=(32, 40))
    return root


def test_store_matches_the_clip_loader(data):
    store = FrameStore.load([data / "apple", data / "spatula"], cameras="all", workers=1)
    assert store.rgb.shape[:3] == (3, 16, 5) and store.n_frames.tolist() == [5, 5, 4]
    assert store.tasks == ("PlaceAppleFromBowlIntoBin", "PutSpatulaOnTable") and store.task_ids.tolist() == [0, 0, 1]
    # The short episode is padded with its last frame.
    assert torch.equal(store.rgb[2, :, 4], store.rgb[2, :, 3])
    ds = GeneratorClipDataset(data / "apple", split="train", n_future=2, seed=0)
    norm = PointmapNormalization()
    for i in (0, 5):
        s = ds[i]
        n, m = s["cams"].tolist()
        e = torch.tensor([int(s["seed"])])
        t = int(s["t"])
        pts, ok = store.pointmaps(e, torch.tensor([m]), torch.tensor([t + 1]), torch.tensor([n]), normalization=norm)
        np.testing.assert_allclose(pts[0].numpy(), s["pm"][1, 0].numpy(), atol=1e-5)
        assert torch.equal(ok[0], s["valid"][1, 0])
        own, _ = store.pointmaps(e, torch.tensor([m]), torch.tensor([t]), normalization=norm)
        np.testing.assert_allclose(own[0].numpy(), s["pm_cond"][1].numpy(), atol=1e-5)
        assert torch.equal(store.rgb_float(e, torch.tensor([n]), torch.tensor([t]))[0], s["rgb_cond"][0])
        assert torch.equal(store.gripper(e, torch.tensor([n]), torch.tensor([t + 1]))[0], s["gripper"][0, 0])


def test_train_cameras_and_sampling(data):
    store = FrameStore.load([data / "apple"], cameras="train", workers=1)
    assert store.rgb.shape[1] == 12 and store.train_cameras == tuple(range(12)) and store.heldout_cameras == ()
    g = torch.Generator().manual_seed(0)
    e, c, t = store.sample_frames(500, cameras=store.train_cameras, generator=g)
    assert (t < store.n_frames[e]).all() and set(e.tolist()) == {0, 1}


def test_bad_input(data, tmp_path):
    with pytest.raises(ValueError, match="cameras"):
        FrameStore.load([data / "apple"], cameras="some")
    make_dataset(tmp_path / "other", seeds=[0], n_frames=3, resolution=(16, 24))
    with pytest.raises(DatasetError, match="resolution"):
        FrameStore.load([data / "apple", tmp_path / "other"], workers=1)


def test_rgb_only_store_of_chosen_episodes_resized_as_the_loader(data):
    from geo4d_policy.data.datasets import rgb_to_tensor
    from geo4d_policy.data.format import EpisodeReader, load_meta

    store = FrameStore.load([data / "apple", data / "spatula"], cameras="train", workers=1, seeds=[[1], None],
                            rgb_only=True, resolution=(24, 30))
    assert store.seeds.tolist() == [1, 7] and store.depth_mm is None and store.masks is None
    assert store.resolution == (24, 30) and store.nbytes() == store.rgb.numel()
    meta = load_meta(data / "apple")
    cam = meta.camera_names[meta.train_indices[3]]
    with EpisodeReader(data / "apple" / next(e.file for e in meta.episodes if e.seed == 1)) as r:
        want = rgb_to_tensor(r.rgb(cam, slice(None)), (24, 30))  # (T, 3, H, W) in [-1, 1]
    got = store.rgb_float(torch.zeros(5, dtype=torch.int64), torch.full((5,), 3), torch.arange(5))
    assert (got - want).abs().max() <= 0.5 / 127.5 + 1e-6  # uint8 after the loader's resize
    with pytest.raises(ValueError, match="rgb_only"):
        FrameStore.load([data / "apple"], resolution=(24, 30))
    with pytest.raises(DatasetError, match=r"seed\(s\) \[9\]"):
        FrameStore.load([data / "apple"], seeds=[[0, 9]], rgb_only=True, workers=1)
    with pytest.raises(ValueError, match="2 seed lists for 1 datasets"):
        FrameStore.load([data / "apple"], seeds=[[0], [1]], workers=1)

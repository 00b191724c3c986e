"""Device-resident training data: the latent cache gives the generator the same loss as frames do,
autoencoder batches are well formed, and a run continues from an exported checkpoint."""

import json

import pytest
import torch
import yaml

from geo4d_policy.config import CONFIG_DIR
from geo4d_policy.data.frame_store import FrameStore
from geo4d_policy.data.synthetic import make_dataset
from geo4d_policy.models.config import load_model_config
from geo4d_policy.models.pipeline import Generator4D
from geo4d_policy.train.gpu_data import LatentCache, frame_batch_factory

F = 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_data")
    make_dataset(root / "apple", seeds=range(2), n_frames=4, resolution=(32, 40))
    cfg = yaml.safe_load((CONFIG_DIR / "model" / "tiny.yaml").read_text())
    cfg.update(height=32, width=40, num_frames=F)
    cfg["pointmap_vae"]["latent_channels"] = 8  # image and pointmap latents may differ
    (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    return root


@pytest.fixture(scope="module")
def model(data):
    torch.manual_seed(0)
    return Generator4D(load_model_config(data / "tiny.yaml")).eval()


def _frame_batch(store, model, e, t, n, m):
    """The uncached batch of one clip, built from the store the way the clip loader builds it."""
    norm = model.normalization
    fr = torch.clamp(torch.arange(t + 1, t + 1 + F), max=int(store.n_frames[e]) - 1)
    E = torch.full((F,), e)
    one = torch.tensor([e]), torch.tensor([t])
    rgb_cond = torch.stack([store.rgb_float(one[0], torch.tensor([c]), one[1])[0] for c in (n, m)])
    rgb = torch.stack([store.rgb_float(E, torch.full((F,), c), fr) for c in (n, m)])
    pc = [store.pointmaps(one[0], torch.tensor([c]), one[1], normalization=norm) for c in (n, m)]
    pn = store.pointmaps(E, torch.full((F,), n), fr, normalization=norm)
    pm = store.pointmaps(E, torch.full((F,), m), fr, torch.full((F,), n), normalization=norm)
    grip = torch.stack([store.gripper(E, torch.full((F,), c), fr) for c in (n, m)])
    return {"rgb_cond": rgb_cond[None], "rgb": rgb[None],
            "pm_cond": torch.stack([p[0][0] for p in pc])[None], "valid_cond": torch.stack([p[1][0] for p in pc])[None],
            "pm": torch.stack([pn[0], pm[0]])[None], "valid": torch.stack([pn[1], pm[1]])[None],
            "gripper": grip[None], "task_id": torch.tensor([0])}


def test_cached_step_gives_the_uncached_loss(data, model):
    store = FrameStore.load([data / "apple"], cameras="train", workers=1)
    cache = LatentCache.build(model, store, pairs_per_episode=3, batch_size=7, autocast=False)
    assert cache.rgb.shape[:3] == (2, 12, 4) and cache.pm_own.shape[3] == 8 and cache.pairs.shape == (2, 3, 2)
    e, t, p = torch.tensor([1]), torch.tensor([1]), torch.tensor([2])
    cached = cache.clips(e, t, p, F)
    n, m = (int(c) for c in cache.pairs[1, 2])
    frames = _frame_batch(store, model, 1, 1, n, m)
    l_cached, _ = model.training_loss(cached, generator=torch.Generator().manual_seed(5))
    l_frames, _ = model.training_loss(frames, generator=torch.Generator().manual_seed(5))
    # Latents are cached in fp16: equal up to that rounding.
    assert torch.allclose(l_cached, l_frames, rtol=2e-3), (l_cached, l_frames)
    l_other, _ = model.training_loss(cached, generator=torch.Generator().manual_seed(6))
    assert not torch.allclose(l_other, l_frames, rtol=2e-3)


def test_cache_batches_are_seeded_and_in_range(data, model):
    store = FrameStore.load([data / "apple"], cameras="train", workers=1)
    cache = LatentCache.build(model, store, pairs_per_episode=4, autocast=False)
    f = cache.batch_factory(batch_size=6, num_frames=F, batches_per_epoch=3, seed=1)
    a = list(f(epoch=0, rank=0, world_size=1))
    b = list(f(epoch=0, rank=0, world_size=1))
    assert len(a) == 3 and all(torch.equal(x["latents"], y["latents"]) for x, y in zip(a, b))
    assert a[0]["latents"].shape == (6, 2, F, 4 + 8, 4, 5) and a[0]["cond_latents"].shape == (6, 2, 12, 4, 5)
    assert not torch.equal(a[0]["latents"], next(iter(f(epoch=1, rank=0, world_size=1)))["latents"])


def test_autoencoder_batches(data):
    store = FrameStore.load([data / "apple"], cameras="train", workers=1)
    from geo4d_policy.data.geometry import PointmapNormalization

    f = frame_batch_factory(store, kind="pointmap_vae", batch_size=5, batches_per_epoch=2,
                            normalization=PointmapNormalization())
    b = next(iter(f(epoch=0, rank=0, world_size=1)))
    assert b["images"].shape == (5, 3, 32, 40) and b["valid"].shape == (5, 32, 40) and b["gripper"].dtype == torch.bool
    assert (b["images"][~b["valid"][:, None].expand(-1, 3, -1, -1)] == 0).all()
    with pytest.raises(ValueError, match="normalization"):
        frame_batch_factory(store, kind="pointmap_vae", batch_size=2)


def test_train_export_and_continue(data, tmp_path, capsys):
    """VAEs and generator on the device path, then a new run continues from the exported
    checkpoint: it keeps the checkpoint's autoencoders and records both runs' data seeds."""
    from geo4d_policy.cli.train import main

    make_dataset(tmp_path / "more", seeds=[9], n_frames=4, resolution=(32, 40))
    common = ["--config", str(data / "tiny.yaml"), "--batch-size", "2", "--workers", "1", "--gpu-data"]
    runs = tmp_path / "runs"
    assert main(["vae", "--modality", "rgb", "--data", str(data / "apple"), "--out", str(runs / "iv"),
                 "--steps", "2", *common]) == 0
    assert main(["vae", "--modality", "pointmap", "--data", str(data / "apple"), "--out", str(runs / "pv"),
                 "--steps", "2", *common]) == 0
    assert main(["generator", "--task", "all", "--data", str(data / "apple"), "--out", str(runs / "g1"),
                 "--image-vae", str(runs / "iv"), "--pointmap-vae", str(runs / "pv"), "--steps", "2",
                 "--cache-pairs", "2", *common]) == 0
    g1 = Generator4D.from_pretrained(runs / "g1")
    g1.save_pretrained(tmp_path / "shipped", dtype=torch.float16)
    assert main(["generator", "--task", "all", "--data", str(tmp_path / "more"), "--out", str(runs / "g2"),
                 "--init", str(tmp_path / "shipped"), "--steps", "1", "--cache-pairs", "2", *common]) == 0
    g2 = Generator4D.from_pretrained(runs / "g2")
    for a, b in zip(g1.pointmap_vae.state_dict().values(), g2.pointmap_vae.state_dict().values()):
        assert torch.allclose(a, b.float(), atol=1e-3)
    cfg = json.loads((runs / "g2" / "step_1" / "config.json").read_text())
    assert cfg["training"]["train_config"]["data_seeds"] == {"PlaceAppleFromBowlIntoBin": [0, 1, 9]}
    # An image autoencoder run may start from a generator checkpoint: its own image autoencoder.
    from geo4d_policy.train.trainer import init_vae_source

    for a, b in zip(init_vae_source(tmp_path / "shipped").state_dict().values(), g1.image_vae.state_dict().values()):
        assert torch.allclose(a, b.float(), atol=1e-3)
    assert main(["vae", "--modality", "rgb", "--data", str(data / "apple"), "--out", str(runs / "iv2"),
                 "--init", str(tmp_path / "shipped"), "--steps", "1", *common]) == 0
    # The objective may change on the way (residual targets), the network may not.
    init = ["generator", "--task", "all", "--data", str(tmp_path / "more"), "--init", str(tmp_path / "shipped"),
            "--steps", "1", "--cache-pairs", "2", *common]
    assert main([*init, "--out", str(runs / "g3"), "--override", "edm.residual=true",
                 "--override", "edm.sigma_data=0.15"]) == 0
    assert Generator4D.from_pretrained(runs / "g3").config.edm.residual
    # So may the clip length: the same weights predict fewer frames.
    assert main([*init, "--out", str(runs / "g5"), "--override", "num_frames=1"]) == 0
    g5 = Generator4D.from_pretrained(runs / "g5")
    assert g5.config.num_frames == 1 and g5.unet.state_dict().keys() == g1.unet.state_dict().keys()
    assert main([*init, "--out", str(runs / "g4"), "--override", "unet.layers_per_block=2"]) == 2
    assert "another generator network" in capsys.readouterr().err


def test_patch_codec_run_and_generator_on_it(data, tmp_path):
    """A patch codec is "trained" by measuring its latent normalisation (step 0, nothing else);
    a generator trains on it, and its decoder returns the recorded points exactly."""
    from geo4d_policy.cli.train import main
    from geo4d_policy.data.geometry import PointmapNormalization
    from geo4d_policy.models.vae import VAE

    common = ["--config", str(data / "tiny.yaml"), "--batch-size", "2", "--workers", "1", "--gpu-data"]
    patch = ["--override", "pointmap_vae.codec=patch", "--override", "pointmap_vae.latent_channels=192"]
    runs = tmp_path / "runs"
    assert main(["vae", "--modality", "rgb", "--data", str(data / "apple"), "--out", str(runs / "iv"),
                 "--steps", "1", *common]) == 0
    assert main(["vae", "--modality", "pointmap", "--data", str(data / "apple"), "--out", str(runs / "pv"),
                 "--steps", "5", *common, *patch]) == 0
    pv = VAE.from_pretrained(runs / "pv", kind="pointmap")
    assert (runs / "pv" / "step_0").is_dir() and not (runs / "pv" / "step_5").exists()
    assert pv.config.codec == "patch" and pv.config.scaling_factor != 1.0
    store = FrameStore.load([data / "apple"], cameras="train", workers=1)
    pts, valid = store.pointmaps(torch.tensor([0, 1]), torch.tensor([0, 3]), torch.tensor([1, 2]),
                                 normalization=PointmapNormalization())
    z = pv.encode(pts, valid=valid)
    assert z.shape == (2, 192, 4, 5)
    back = pv.decode(z)
    assert torch.allclose(back[valid[:, None].expand_as(back)], pts[valid[:, None].expand_as(pts)], atol=1e-5)
    assert main(["generator", "--task", "all", "--data", str(data / "apple"), "--out", str(runs / "g"),
                 "--image-vae", str(runs / "iv"), "--pointmap-vae", str(runs / "pv"), "--steps", "2",
                 "--cache-pairs", "2", *common, *patch]) == 0
    g = Generator4D.from_pretrained(runs / "g")
    assert g.config.pointmap_vae.codec == "patch" and g.config.latent_channels == 4
    # A generator on the patch codec may grow the full-resolution pointmap path on --init.
    fine = ["--override", "unet.fine_pointmap_channels=32"]
    assert main(["generator", "--task", "all", "--data", str(data / "apple"), "--out", str(runs / "gf"),
                 "--init", str(runs / "g"), "--steps", "1", "--cache-pairs", "2", *common, *patch, *fine]) == 0
    gf = Generator4D.from_pretrained(runs / "gf")
    assert gf.config.unet.fine_pointmap_channels == 32 and gf.unet.fine is not None
    for k, v in g.unet.state_dict().items():
        assert gf.unet.state_dict()[k].shape == v.shape

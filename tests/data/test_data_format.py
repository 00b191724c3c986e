"""Episode files and dataset metadata: round trip, atomicity, version and mismatch refusals."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from geo4d_policy.data import format as fmt
from geo4d_policy.data import synthetic
from geo4d_policy.data.masks import MASK_BITS, masks_from_frame, pack_masks, part_bits, unpack_mask
from geo4d_policy.interface import Action, ArmCommand, ArmState, CameraFrame, gripper_link_names


def test_write_read_round_trip(tmp_path: Path):
    ep = synthetic.make_episode(seed=5, n_frames=3, resolution=(16, 20), n_cameras=4)
    path = fmt.write_episode(tmp_path / "episode_5.h5", ep)
    assert [p.name for p in tmp_path.iterdir()] == ["episode_5.h5"]  # no temp file left
    back = fmt.read_episode(path)
    assert (back.task, back.seed, back.success, back.info) == (ep.task, ep.seed, ep.success, ep.info)
    np.testing.assert_array_equal(back.video_time, ep.video_time)
    for a, b in zip(ep.cameras, back.cameras):
        assert a.spec.name == b.spec.name and a.spec.intrinsics == b.spec.intrinsics
        np.testing.assert_array_equal(a.spec.X_TC, b.spec.X_TC)
        np.testing.assert_array_equal(a.rgb, b.rgb)
        np.testing.assert_array_equal(a.masks, b.masks)
        assert np.abs(a.depth - b.depth).max() <= 0.5e-3 + 1e-6  # uint16 mm on disk
        assert ((a.depth > 0) == (b.depth > 0)).all()
    for key in ("action_X_TG", "action_width", "X_TG", "width", "q"):
        for arm in ep.robot.arms:
            np.testing.assert_array_equal(getattr(back.robot, key)[arm], getattr(ep.robot, key)[arm])
    with fmt.EpisodeReader(path) as r:  # lazy random access, repeats and any order
        np.testing.assert_array_equal(r.rgb("cam02", [2, 0, 2]), ep.cameras[2].rgb[[2, 0, 2]])
        assert r.depth("cam01", 1).shape == (16, 20)
        assert r.rgb("cam00", slice(0, 2)).shape == (2, 16, 20, 3)
        ds = r.file["cameras/cam00/rgb"]
        assert ds.chunks == (1, 16, 20, 3) and ds.compression == "gzip" and ds.fletcher32


def test_streaming_writer_and_abort(tmp_path: Path):
    ep = synthetic.make_episode(seed=1, n_frames=2, resolution=(8, 10), n_cameras=2)
    specs = [c.spec for c in ep.cameras]
    path = tmp_path / "episode_1.h5"
    with pytest.raises(RuntimeError):
        with fmt.EpisodeWriter(path, task="place_apple_from_bowl_into_bin", seed=1, cameras=specs) as w:
            w.add_frame(0.0, rgb={c.spec.name: c.rgb[0] for c in ep.cameras},
                        depth={c.spec.name: c.depth[0] for c in ep.cameras},
                        masks={c.spec.name: c.masks[0] for c in ep.cameras})
            raise RuntimeError("rollout crashed")
    assert list(tmp_path.iterdir()) == []  # nothing half-written survives
    with fmt.EpisodeWriter(path, task="PlaceAppleFromBowlIntoBin", seed=1, cameras=specs) as w:
        labels = {f"{arm}/{b}": i + 1 for i, (arm, b) in enumerate(
            (a, n.split("/")[1]) for a in ("left", "right") for n in gripper_link_names(a).values())}
        label = np.zeros((8, 10), np.int32)
        label[2, 3] = labels["right/panda_leftfinger"]
        rgb0, depth0 = ep.cameras[0].rgb[0], ep.cameras[0].depth[0]
        frames = {s.name: CameraFrame(s, rgb0, depth0, label, labels) for s in specs}
        w.add_camera_frames(0.0, frames)
        with pytest.raises(ValueError, match="increase"):
            w.add_camera_frames(0.0, frames)
        state = ArmState(q=np.zeros(7), v=np.zeros(7), X_TG=np.eye(4), width=0.08)
        for k in range(3):
            action = Action({a: ArmCommand(np.eye(4), 0.04) for a in ("left", "right")})
            w.add_robot_step(0.1 * k, action=action, arms={"left": state, "right": state})
        w.finish(success=False, info={"failure_reason": "timeout"})
    with fmt.EpisodeReader(path) as r:
        assert r.masks("cam00", 0)[2, 3] == 1 << MASK_BITS["right_left_finger"]
        assert r.n_steps == 3 and r.info == {"failure_reason": "timeout"} and not r.success
        np.testing.assert_array_equal(r.robot().action_width["left"], [0.04] * 3)


def test_mask_bits():
    assert MASK_BITS == {"left_hand": 0, "left_left_finger": 1, "left_right_finger": 2,
                         "right_hand": 3, "right_left_finger": 4, "right_right_finger": 5}
    a = np.array([[True, False]])
    packed = pack_masks({"left_hand": a, "right_right_finger": ~a})
    assert packed.tolist() == [[1, 32]]
    assert unpack_mask(packed, part_bits(arms=["right"])).tolist() == [[False, True]]
    labels = {"left/panda_hand": 7}
    frame = CameraFrame(None, None, None, np.array([[7, 0]]), labels)  # type: ignore[arg-type]
    with pytest.raises(KeyError):  # never silently zero: a missing body is an error
        masks_from_frame(frame)


def test_create_append_resume(tmp_path: Path):
    root = tmp_path / "ds"
    meta = fmt.create_dataset(root, task="PutSpatulaOnTable", resolution=(8, 10), command="pytest")
    assert meta.train_cameras == tuple(f"cam{i:02d}" for i in range(12))
    assert meta.heldout_cameras == ("cam12", "cam13", "cam14", "cam15")
    on_disk = json.loads((root / "meta.json").read_text())
    assert on_disk["format_version"] == fmt.FORMAT_VERSION
    assert on_disk["cameras"]["train"] == list(range(12))
    assert on_disk["rates_hz"] == {"robot": 10.0, "video": 2.0}
    assert on_disk["provenance"]["command"] == "pytest" and "created" in on_disk["provenance"]
    for seed in (4, 2):
        ep = synthetic.make_episode(seed=seed, task="PutSpatulaOnTable", n_frames=2, resolution=(8, 10))
        fmt.write_episode(root / fmt.episode_filename(seed), ep)
        meta = fmt.append_episode(root, seed)
    assert [e.seed for e in meta.episodes] == [2, 4]
    assert meta.episodes[0] == fmt.EpisodeEntry(2, "episodes/episode_2.h5", 2, 6, False)
    # Same seed again replaces its entry; resume opens the same dataset.
    assert len(fmt.append_episode(root, 4).episodes) == 2
    assert fmt.create_dataset(root, task="put_spatula_on_table", resolution=(8, 10)).episodes == meta.episodes
    # A crash left an unlisted episode and a temp file: resume ignores, then prunes them.
    (root / "episodes" / "episode_9.h5").write_bytes(b"partial")
    (root / "episodes" / ".episode_10.h5.123.tmp").write_bytes(b"x")
    assert fmt.completed_seeds(root) == {2, 4}
    removed = fmt.prune_unlisted(root)
    assert sorted(p.name for p in removed) == [".episode_10.h5.123.tmp", "episode_9.h5"]
    assert sorted(p.name for p in (root / "episodes").iterdir()) == ["episode_2.h5", "episode_4.h5"]
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


def test_create_refuses_other_task_or_resolution(tmp_path: Path):
    root = tmp_path / "ds"
    fmt.create_dataset(root, task="PutSpatulaOnTable", resolution=(8, 10))
    with pytest.raises(fmt.DatasetMismatchError, match="task.*PutSpatulaOnTable.*StoreCerealBoxUnderShelf"):
        fmt.create_dataset(root, task="StoreCerealBoxUnderShelf", resolution=(8, 10))
    with pytest.raises(fmt.DatasetMismatchError, match="resolution"):
        fmt.create_dataset(root, task="PutSpatulaOnTable", resolution=(16, 20))
    other = tmp_path / "not_a_dataset"
    other.mkdir()
    (other / "notes.txt").write_text("hi")
    with pytest.raises(fmt.DatasetMismatchError, match="not an empty directory"):
        fmt.create_dataset(other, task="PutSpatulaOnTable", resolution=(8, 10))
    # An episode of another task cannot be appended.
    ep = synthetic.make_episode(seed=0, task="StoreCerealBoxUnderShelf", n_frames=2, resolution=(8, 10))
    fmt.write_episode(root / fmt.episode_filename(0), ep)
    with pytest.raises(fmt.DatasetMismatchError, match="task"):
        fmt.append_episode(root, 0)


def test_other_format_version_refused(tmp_path: Path, dataset_copy: Path):
    meta_path = dataset_copy / "meta.json"
    data = json.loads(meta_path.read_text())
    data["format_version"] = 0
    meta_path.write_text(json.dumps(data))
    with pytest.raises(fmt.DatasetFormatError, match=rf"version 0.*version {fmt.FORMAT_VERSION}"):
        fmt.load_meta(dataset_copy)
    with pytest.raises(fmt.DatasetFormatError):
        fmt.create_dataset(dataset_copy, task="PlaceAppleFromBowlIntoBin", resolution=(32, 40))
    ep_path = dataset_copy / "episodes" / "episode_0.h5"
    with h5py.File(ep_path, "r+") as f:
        f.attrs["format_version"] = 99
    match = rf"episode_0.h5.*version 99.*version {fmt.FORMAT_VERSION}"
    with pytest.raises(fmt.DatasetFormatError, match=match):
        fmt.EpisodeReader(ep_path)
    with pytest.raises(fmt.DatasetError, match="no dataset"):
        fmt.load_meta(tmp_path / "missing")


def _append_all(root: str, seeds: list[int]) -> None:
    for s in seeds:
        fmt.append_episode(root, s)


def test_parallel_appends_lose_nothing(tmp_path: Path):
    import multiprocessing as mp

    root = tmp_path / "ds"
    fmt.create_dataset(root, task="PutSpatulaOnTable", resolution=(4, 5))
    ep = synthetic.make_episode(seed=0, task="PutSpatulaOnTable", n_frames=1, resolution=(4, 5), n_cameras=16)
    for seed in range(8):
        ep.seed = seed
        fmt.write_episode(root / fmt.episode_filename(seed), ep)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_all, args=(str(root), list(range(i, 8, 2)))) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    assert fmt.completed_seeds(root) == set(range(8))


def test_corrupt_episode_error_pickles():
    import pickle

    e = pickle.loads(pickle.dumps(fmt.CorruptEpisodeError("/x/episode_3.h5", "truncated")))
    assert isinstance(e, fmt.CorruptEpisodeError)
    assert e.path == Path("/x/episode_3.h5") and "truncated" in str(e)

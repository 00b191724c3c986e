"""Optional adapters, tested against small FAKES of FoundationPose's and SAM2's documented APIs.

The fakes only record their arguments and return canned results: they check our plumbing
(argument names, frames, shapes), never the real models' behaviour. The SAM2 adapter is also
run against the real ``sam2`` package (``test_sam2_real.py``, when the extra is installed).
"""

import sys
import types
from pathlib import Path

import numpy as np
import pytest

from geo4d_policy.data.geometry import invert_transform, transform_points
from geo4d_policy.perception.gripper_model import GripperModel
from geo4d_policy.perception.synthetic import render_gripper, smooth_trajectory
from geo4d_policy.perception.pose_tracker import TrackingFrame

H, W = 96, 120
K = np.array([[180.0, 0, (W - 1) / 2], [0, 180.0, (H - 1) / 2], [0, 0, 1]])


@pytest.fixture(scope="module")
def model():
    return GripperModel.load()


# ------------------------------------------------------------------------------------------
# FoundationPose
# ------------------------------------------------------------------------------------------


class FakeFoundationPoseEstimator:
    """FAKE of FoundationPose's estimator: records calls, returns the pose it is told to."""

    instances: list = []

    def __init__(self, model_pts, model_normals, symmetry_tfs=None, mesh=None, scorer=None, refiner=None,
                 glctx=None, debug=0, debug_dir=None):
        self.init = dict(model_pts=model_pts, model_normals=model_normals, mesh=mesh, scorer=scorer,
                         refiner=refiner, glctx=glctx, debug=debug)
        self.calls = []
        self.next_pose = np.eye(4)
        FakeFoundationPoseEstimator.instances.append(self)

    def register(self, K, rgb, depth, ob_mask, ob_id=None, glctx=None, iteration=5):
        self.calls.append(("register", dict(K=K, rgb=rgb, depth=depth, ob_mask=ob_mask, iteration=iteration)))
        return self.next_pose.copy()

    def track_one(self, rgb, depth, K, iteration, extra=None):
        self.calls.append(("track_one", dict(K=K, rgb=rgb, depth=depth, iteration=iteration)))
        return self.next_pose.copy()


@pytest.fixture
def fake_foundationpose(monkeypatch, tmp_path):
    estimater = types.ModuleType("estimater")
    estimater.FoundationPose = FakeFoundationPoseEstimator
    estimater.ScorePredictor = lambda: "fake-scorer"
    estimater.PoseRefinePredictor = lambda: "fake-refiner"
    nvd = types.ModuleType("nvdiffrast")
    nvd_torch = types.ModuleType("nvdiffrast.torch")
    nvd_torch.RasterizeCudaContext = lambda: "fake-glctx"
    nvd.torch = nvd_torch
    monkeypatch.setitem(sys.modules, "estimater", estimater)
    monkeypatch.setitem(sys.modules, "nvdiffrast", nvd)
    monkeypatch.setitem(sys.modules, "nvdiffrast.torch", nvd_torch)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model_best.pth").write_bytes(b"fake")
    FakeFoundationPoseEstimator.instances.clear()
    return tmp_path


def test_foundationpose_plumbing_in_view_m(model, fake_foundationpose):
    from geo4d_policy.perception.foundationpose import FoundationPoseTracker

    X_CnG = smooth_trajectory(1, seed=3, depth=0.6)[0]
    X_CnCv = np.eye(4)
    X_CnCv[:3, 3] = [0.05, -0.02, 0.01]  # view m's camera, as estimated in camera n
    X_CvG = invert_transform(X_CnCv) @ X_CnG
    view = render_gripper(model, X_CvG, 0.05, K, H, W, seed=0)  # rendered in m's own camera
    pm_n = transform_points(X_CnCv, view.pointmap.astype(np.float64))  # X^{m->n}
    rgb = np.zeros((H, W, 3), np.uint8)
    frame = TrackingFrame(pm_n, view.valid, mask=view.part_labels >= 0, rgb=rgb, K=K, X_CnCv=X_CnCv)

    tracker = FoundationPoseTracker(model, foundationpose_dir=fake_foundationpose, mesh_width=0.05,
                                    register_iterations=4, track_iterations=3)
    est = FakeFoundationPoseEstimator.instances[-1]
    assert est.init["scorer"] == "fake-scorer" and est.init["glctx"] == "fake-glctx"
    assert est.init["model_pts"].shape[1] == 3 and len(est.init["model_pts"]) == len(est.init["model_normals"])
    est.next_pose = X_CvG

    r = tracker.register(frame)
    name, args = est.calls[-1]
    assert name == "register" and args["iteration"] == 4
    assert np.array_equal(args["K"], K) and args["rgb"].shape == (H, W, 3)
    # FoundationPose gets view m's own depth and mask, and the pose comes back in camera n.
    assert np.allclose(args["depth"][view.valid], view.pointmap[view.valid, 2], atol=1e-5)
    assert np.array_equal(args["ob_mask"], view.part_labels >= 0)
    assert r.ok and r.confidence > 0.5 and np.allclose(r.X_CG, X_CnG)

    r2 = tracker.track(TrackingFrame(pm_n, view.valid, rgb=rgb, K=K, X_CnCv=X_CnCv))
    assert est.calls[-1][0] == "track_one" and est.calls[-1][1]["iteration"] == 3
    assert r2.ok and np.allclose(r2.X_CG, X_CnG)

    # A pose far from the data is reported lost with the last good pose held.
    wrong = X_CvG.copy()
    wrong[:3, 3] += [0.2, 0.0, 0.0]
    est.next_pose = wrong
    r3 = tracker.track(TrackingFrame(pm_n, view.valid, rgb=rgb, K=K, X_CnCv=X_CnCv))
    assert r3.status == "lost" and r3.confidence == 0.0 and np.allclose(r3.X_CG, X_CnG)
    # Empty mask: lost, no call.
    n_calls = len(est.calls)
    r4 = tracker.register(TrackingFrame(pm_n, view.valid, mask=np.zeros((H, W), bool), rgb=rgb, K=K))
    assert r4.status == "lost" and len(est.calls) == n_calls
    with pytest.raises(TypeError):
        tracker.register(np.zeros((10, 3)))


def test_foundationpose_check_command_on_a_dataset(fake_foundationpose, tmp_path, capsys):
    from geo4d_policy.data import synthetic
    from geo4d_policy.perception.foundationpose import main

    root = tmp_path / "apple"
    synthetic.make_dataset(root, seeds=[0], n_frames=4, resolution=(32, 40))
    assert main(["--dir", str(fake_foundationpose), "--data", str(root), "--frames", "2"]) == 0
    est = FakeFoundationPoseEstimator.instances[-1]
    assert [name for name, _ in est.calls] == ["register", "track_one", "track_one"]
    assert est.calls[0][1]["rgb"].shape == (32, 40, 3) and est.calls[0][1]["ob_mask"].any()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("episode seed 0") and len(lines) == 4 and all(" mm " in ln for ln in lines[1:])
    with pytest.raises(SystemExit):
        main(["--dir", str(fake_foundationpose), "--data", str(root), "--arm", "middle", "--frames", "2"])
    with pytest.raises(SystemExit):  # clips longer than the episodes
        main(["--dir", str(fake_foundationpose), "--data", str(root), "--frames", "9"])


def test_foundationpose_absent_or_without_weights(monkeypatch, tmp_path, fake_foundationpose):
    from geo4d_policy.perception.foundationpose import FoundationPoseTracker, FoundationPoseUnavailable

    with pytest.raises(FoundationPoseUnavailable, match="weights"):
        FoundationPoseTracker(foundationpose_dir=tmp_path / "elsewhere")
    monkeypatch.setitem(sys.modules, "estimater", None)  # import now fails, as when not installed
    with pytest.raises(FoundationPoseUnavailable, match="FoundationPose is not available"):
        FoundationPoseTracker(foundationpose_dir=tmp_path)


# ------------------------------------------------------------------------------------------
# SAM2
# ------------------------------------------------------------------------------------------


class FakeSAM2Predictor:
    """FAKE of sam2's video predictor: checks the frame directory, echoes box prompts as masks."""

    def __init__(self, config, ckpt_path, device, overrides):
        self.config, self.ckpt_path, self.device, self.overrides = config, ckpt_path, device, overrides
        self.prompts = {}

    def init_state(self, video_path):
        files = sorted(Path(video_path).glob("*.jpg"))
        self.n_frames = len(files)
        assert [int(f.stem) for f in files] == list(range(self.n_frames))
        return {"video_path": video_path}

    def add_new_points_or_box(self, inference_state, frame_idx, obj_id, points=None, labels=None, box=None):
        self.prompts[obj_id] = dict(frame_idx=frame_idx, points=points, labels=labels, box=box)
        return frame_idx, list(self.prompts), None

    def propagate_in_video(self, inference_state):
        ids = list(self.prompts)
        for t in range(self.n_frames):
            logits = -np.ones((len(ids), 1, H, W), np.float32)
            for i, obj in enumerate(ids):
                x0, y0, x1, y1 = (int(v) for v in self.prompts[obj]["box"])
                logits[i, 0, y0:y1 + 1, x0 + t:x1 + 1 + t] = 5.0  # the object drifts right
            yield t, ids, logits


@pytest.fixture
def fake_sam2(monkeypatch):
    sam2 = types.ModuleType("sam2")
    build = types.ModuleType("sam2.build_sam")
    made = []

    def build_sam2_video_predictor(config, ckpt_path=None, device="cuda", mode="eval", hydra_overrides_extra=(),
                                   apply_postprocessing=True, **kwargs):
        made.append(FakeSAM2Predictor(config, ckpt_path, device, list(hydra_overrides_extra)))
        return made[-1]

    build.build_sam2_video_predictor = build_sam2_video_predictor
    sam2.build_sam = build
    monkeypatch.setitem(sys.modules, "sam2", sam2)
    monkeypatch.setitem(sys.modules, "sam2.build_sam", build)
    return made


def test_sam2_plumbing(fake_sam2, tmp_path):
    from geo4d_policy.perception.sam2_adapter import SAM2Segmenter, prompt_from_mask

    ckpt = tmp_path / "sam2.pt"
    ckpt.write_bytes(b"fake")
    seg = SAM2Segmenter(config="configs/sam2.1/sam2.1_hiera_s.yaml", checkpoint=ckpt, device="cpu",
                        hydra_overrides=["++model.image_size=512"])
    pred = fake_sam2[-1]
    assert pred.ckpt_path == str(ckpt) and pred.device == "cpu" and pred.config.endswith("hiera_s.yaml")
    assert pred.overrides == ["++model.image_size=512"]
    first = np.zeros((H, W), bool)
    first[10:20, 30:40] = True
    prompt = prompt_from_mask(first)
    assert prompt.box == (30.0, 10.0, 39.0, 19.0) and prompt.labels.tolist() == [1]
    assert prompt_from_mask(np.zeros((H, W), bool)) is None
    frames = np.zeros((3, H, W, 3), np.uint8)
    masks = seg.segment_video(frames, {7: prompt})
    assert pred.prompts[7]["frame_idx"] == 0 and pred.prompts[7]["points"].shape == (1, 2)
    assert masks[7].shape == (3, H, W) and np.array_equal(masks[7][0], first)
    assert masks[7][2, 10, 32] and not masks[7][2, 10, 31]
    with pytest.raises(FileNotFoundError):
        SAM2Segmenter(config="x.yaml", checkpoint=tmp_path / "missing.pt")


def test_sam2_absent(monkeypatch):
    from geo4d_policy.perception import sam2_adapter

    monkeypatch.setitem(sys.modules, "sam2", None)
    monkeypatch.setitem(sys.modules, "sam2.build_sam", None)
    with pytest.raises(sam2_adapter.SAM2Unavailable, match="pip install sam2"):
        sam2_adapter.SAM2Segmenter(config="x.yaml", checkpoint="/nonexistent.pt")

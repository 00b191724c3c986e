"""The one model base (:mod:`geo4d_policy.models.pretrained`) across the four model families.

Every family saves and loads through ``PretrainedModel``; these tests check the shared round
trip and each refusal message on a tiny instance of each family, and that the checkpoints
shipped in ``assets/checkpoints/`` (written before the base existed) still load as they are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from pathlib import Path

import pytest
import torch

from model_fixtures import TASK, tiny_config
from geo4d_policy.config import REPO_ROOT
from geo4d_policy.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError
from geo4d_policy.models.config import flat_config
from geo4d_policy.models.diffusion_policy import DiffusionPolicyModel
from geo4d_policy.models.pipeline import Generator4D
from geo4d_policy.models.pretrained import PretrainedModel
from geo4d_policy.models.vae import VAE
from geo4d_policy.perception.segmenter import GripperSegmenter, SegmenterConfig
from geo4d_policy.train.diffusion_policy import load_dp_train_config

SHIPPED = REPO_ROOT / "assets" / "checkpoints"
OTHER_TASK = "StoreCerealBoxUnderShelf"


def _generator() -> Generator4D:
    return Generator4D(tiny_config(), trained_tasks=[TASK])


def _dp() -> DiffusionPolicyModel:
    return DiffusionPolicyModel(load_dp_train_config("tiny").model, trained_tasks=[TASK])


def _vae() -> VAE:
    return VAE(tiny_config().image_vae, kind="image")


def _segmenter() -> GripperSegmenter:
    return GripperSegmenter(SegmenterConfig(channels=(8, 8, 16)))


FAMILIES = {"generator": _generator, "diffusion_policy": _dp, "vae": _vae, "segmenter": _segmenter}


@pytest.fixture(params=sorted(FAMILIES))
def saved(request, tmp_path) -> tuple[PretrainedModel, Path]:
    torch.manual_seed(0)
    model = FAMILIES[request.param]().eval()
    path = model.save_pretrained(tmp_path / request.param, extra={"training": {"step": 7}})
    return model, path


def _edit_config(path: Path, **changes) -> None:
    data = json.loads((path / CONFIG_NAME).read_text())
    data.update(changes)
    (path / CONFIG_NAME).write_text(json.dumps(data))


def test_every_family_uses_the_base(saved):
    model, path = saved
    cls = type(model)
    assert isinstance(model, PretrainedModel)
    for name in ("save_pretrained", "checkpoint_config", "load_checkpoint_weights", "resolve_task"):
        assert getattr(cls, name) is getattr(PretrainedModel, name), f"{cls.__name__} redefines {name}"
    data = json.loads((path / CONFIG_NAME).read_text())
    assert data["format"] == cls.checkpoint_format and data["version"] == cls.format_version
    assert data["dtype"] == "float32" and data["training"] == {"step": 7}
    assert ("tasks" in data) == bool(model.trained_tasks)


def test_round_trip_and_fp16(saved, tmp_path):
    model, path = saved
    cls = type(model)
    back = cls.from_pretrained(path)
    assert not back.training and back.config == model.config
    assert back.trained_tasks == model.trained_tasks
    for (k, a), (k2, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    half = model.save_pretrained(tmp_path / "half", dtype=torch.float16)
    assert json.loads((half / CONFIG_NAME).read_text())["dtype"] == "float16"
    loaded = cls.from_pretrained(half)
    p = next(loaded.parameters())
    assert p.dtype == torch.float32
    assert torch.allclose(p, next(model.parameters()).half().float())
    # The training record survives re-saving (an export still says what the model has seen).
    assert back.training_record == {"step": 7}
    again = back.save_pretrained(tmp_path / "again")
    assert json.loads((again / CONFIG_NAME).read_text())["training"] == {"step": 7}
    # A run directory's `last` pointer reaches the same checkpoint.
    (tmp_path / "last").write_text(path.name + "\n")
    assert cls.from_pretrained(tmp_path).config == model.config


def test_refusals_name_what_is_wrong(saved, tmp_path):
    model, path = saved
    cls = type(model)
    other = VAE if cls is not VAE else GripperSegmenter
    with pytest.raises(CheckpointError, match=f"holds a '{cls.checkpoint_format}' checkpoint, not a "
                                              f"'{other.checkpoint_format}' one"):
        other.from_pretrained(path)

    _edit_config(path, version=99)
    with pytest.raises(CheckpointError, match=f"format version 99, this code reads version {cls.format_version}"):
        cls.from_pretrained(path)
    _edit_config(path, version=cls.format_version)

    if model.trained_tasks:
        with pytest.raises(CheckpointError, match=f"it was not trained on '{OTHER_TASK}'"):
            cls.from_pretrained(path, task="store_cereal_box_under_shelf")
        assert cls.from_pretrained(path, task="place_apple_from_bowl_into_bin").trained_tasks == (TASK,)
    else:
        with pytest.raises(CheckpointError, match="records no trained tasks"):
            cls.from_pretrained(path, task=TASK)

    if isinstance(model, GripperSegmenter):
        key, changed = "channels", dataclasses.replace(model.config, channels=(8, 8, 8))
    elif isinstance(model, VAE):
        key, changed = "latent_channels", dataclasses.replace(model.config, latent_channels=8)
    else:
        key, changed = "name", dataclasses.replace(model.config, name="renamed")
    with pytest.raises(CheckpointError, match=rf"another {cls.family} config:\n  {key}: expected"):
        cls.from_pretrained(path, config=changed)
    assert cls.from_pretrained(path, config=model.config).config == model.config

    # Weights that do not match the stored config: a tensor dropped, renamed, reshaped.
    from safetensors.torch import load_file, save_file

    good = load_file(str(path / WEIGHTS_NAME))
    first = next(iter(good))
    bad = dict(good)
    bad["extra.weight"] = bad.pop(first)
    save_file(bad, str(path / WEIGHTS_NAME))
    with pytest.raises(CheckpointError, match=rf"weights do not match the config: missing \['{first}'\], "
                                              r"unexpected \['extra.weight'\]"):
        cls.from_pretrained(path)
    bad = dict(good)
    bad[first] = torch.zeros(3, 1)
    save_file(bad, str(path / WEIGHTS_NAME))
    with pytest.raises(CheckpointError, match=rf"other shapes \['{first} \(3, 1\)"):
        cls.from_pretrained(path)


def test_int8_storage_keeps_the_generator_autoencoders_fp16(tmp_path):
    from safetensors.torch import load_file

    model = _generator()
    path = model.save_pretrained(tmp_path / "int8", dtype=torch.int8)
    stored = load_file(str(path / WEIGHTS_NAME))
    int8 = {k for k, v in stored.items() if v.dtype == torch.int8}
    assert int8 and all(k.startswith("unet.") for k in int8)
    assert any(k.startswith("image_vae.") and v.dtype == torch.float16 and v.numel() >= 4096
               for k, v in stored.items())
    back = Generator4D.from_pretrained(path)
    vae_w = dict(model.named_parameters())
    assert all(torch.allclose(p, vae_w[k].half().float()) for k, p in back.named_parameters() if "_vae." in k)


def test_family_specific_fields(tmp_path):
    vae = VAE(tiny_config().pointmap_vae, kind="pointmap")
    vae.save_pretrained(tmp_path / "vae")
    assert VAE.from_pretrained(tmp_path / "vae", kind="pointmap").kind == "pointmap"
    with pytest.raises(CheckpointError, match="holds a VAE with kind 'pointmap', not the 'image'"):
        VAE.from_pretrained(tmp_path / "vae", kind="image")
    seg = _segmenter().save_pretrained(tmp_path / "seg")
    _edit_config(seg, classes=["background", "hand"])
    with pytest.raises(CheckpointError, match=r"with classes \['background', 'hand'\], not the \['background'"):
        GripperSegmenter.from_pretrained(seg)


def test_resolve_task_is_shared():
    for model in (_generator(), _dp()):
        assert model.resolve_task(None) == TASK
        assert model.resolve_task("place_apple_from_bowl_into_bin") == TASK
        with pytest.raises(ValueError, match=rf"trained on \['{TASK}'\], not on '{OTHER_TASK}'"):
            model.resolve_task(OTHER_TASK)
    multi = DiffusionPolicyModel(load_dp_train_config("tiny").model, trained_tasks=[TASK, OTHER_TASK])
    with pytest.raises(ValueError, match="several tasks"):
        multi.resolve_task(None)


def test_export_keeps_training_metadata(saved, tmp_path):
    model, path = saved
    out = type(model).export_pretrained(path, tmp_path / "export", extra={"note": "x"})
    data = json.loads((out / CONFIG_NAME).read_text())
    assert data["dtype"] == "float16" and data["training"] == {"step": 7} and data["note"] == "x"


# ------------------------------------------------------------------------------------------
# The shipped checkpoints load as they are
# ------------------------------------------------------------------------------------------


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("name,cls", [("geo4d_small", Generator4D), ("dreamitate_small", Generator4D),
                                      ("diffusion_policy_small", DiffusionPolicyModel),
                                      ("segmenter_medium", GripperSegmenter)])
def test_shipped_checkpoints_load_unchanged(name, cls, tmp_path):
    path = SHIPPED / name
    before = _digest(path)
    stored = json.loads((path / CONFIG_NAME).read_text())
    assert stored["format"] == cls.checkpoint_format and stored["version"] in (cls.format_version,
                                                                               *cls.legacy_versions)
    with warnings.catch_warnings():  # a legacy version may be repaired with a warning (tested per family)
        warnings.simplefilter("ignore")
        model = cls.from_pretrained(path)
    assert _digest(path) == before
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    # The base writes the same family fields the shipped file holds (plus the storage dtype), in
    # the current format version.
    resaved = json.loads((model.save_pretrained(tmp_path / name, dtype=torch.float16) / CONFIG_NAME).read_text())
    assert resaved["version"] == cls.format_version
    for key, value in stored.items():
        if key in model.checkpoint_config() and key not in ("dtype", "version"):
            # Every stored entry is written back the same (a config may gain fields later).
            old, new = flat_config({key: value}), flat_config({key: resaved[key]})
            assert {k: new.get(k) for k in old} == old, key
    if model.trained_tasks:
        assert list(model.trained_tasks) == stored["tasks"]
        model.resolve_task(stored["tasks"][0])

"""Policy settings as data: configs/policy/*.yaml, dotted options, typed refusals, task settings."""

from __future__ import annotations

import pytest

from geo4d_policy.config import ConfigError
from geo4d_policy.policies.oracle import OraclePolicyConfig
from geo4d_policy.policies.policy_config import (
    PolicyOptionError,
    apply_options,
    main as policy_config_main,
    option_keys,
    resolve_key,
    resolve_policy_config,
)
from geo4d_policy.policies.registry import resolve_policy_target
from geo4d_policy.policies.video_policy import OPTION_ALIASES
from geo4d_policy.task_settings import load_task_settings, task_settings


def test_the_yaml_files_hold_every_setting_at_its_default(capsys):
    # Regenerate with: python -m geo4d_policy.policies.policy_config --write
    assert policy_config_main([]) == 0, capsys.readouterr().out
    for policy in ("geo4d", "oracle", "dreamitate", "rgb_oracle", "diffusion_policy"):
        resolved = resolve_policy_config(policy, resolve_policy_target(policy), task="PutSpatulaOnTable")
        assert resolved.source is not None and resolved.source.endswith(f"configs/policy/{policy}.yaml")


def test_every_setting_of_the_nested_dataclasses_is_reachable():
    keys = option_keys(OraclePolicyConfig)
    for key in ("num_frames", "labels", "video.release_backdate_frames", "video.control.execute_frames",
                "video.control.keep_corners", "video.fail_safe.views_apart_mm", "video.tracker.iterations", "video.tracker.model_points"):
        assert key in keys
    assert len(keys) > 60
    assert resolve_key(OraclePolicyConfig, "execute_frames", OPTION_ALIASES) == "video.control.execute_frames"
    assert resolve_key(OraclePolicyConfig, "release_backdate_frames") == "video.release_backdate_frames"
    with pytest.raises(PolicyOptionError, match="ambiguous.*video.control.min_confidence, video.tracker.min_conf"):
        resolve_key(OraclePolicyConfig, "min_confidence")
    with pytest.raises(PolicyOptionError, match="unknown policy option 'video.nope'; valid keys: num_frames"):
        resolve_key(OraclePolicyConfig, "video.nope")


def test_options_are_type_checked_and_may_set_a_whole_section():
    config = apply_options(OraclePolicyConfig(), {"video.tracker": {"iterations": 7, "model_points": [10, 5, 5]},
                                                  "video.turn_descent": None, "num_frames": 4})
    assert config.video.tracker.iterations == 7 and config.video.tracker.model_points == (10, 5, 5)
    assert config.video.tracker.max_points == 1000  # the rest of the section keeps its values
    assert config.video.turn_descent is None and config.num_frames == 4
    for options, needle in (({"num_frames": 2.5}, "num_frames: expected an integer"),
                            ({"labels": "gt"}, "labels: 'gt' is not one of"),
                            ({"video.tracker.model_points": [1, 2]}, "expected 3 items"),
                            ({"execute_frames": 0}, "execute_frames and hold_steps >= 1")):
        with pytest.raises(PolicyOptionError, match=needle):
            apply_options(OraclePolicyConfig(), options, OPTION_ALIASES)


def test_task_settings_fill_in_the_video_policy_configuration():
    resolved = resolve_policy_config("oracle", resolve_policy_target("oracle"), task="StoreCerealBoxUnderShelf")
    cereal = task_settings("store_cereal_box_under_shelf")
    control = resolved.config.video.control
    assert resolved.config.video.object_width == cereal.held_object_width == 0.049
    assert control.closed_width == cereal.closed_command_width
    apple = resolve_policy_config("oracle", resolve_policy_target("oracle"), task="PlaceAppleFromBowlIntoBin",
                                  options={"video.object_width": 0.05})
    assert apple.config.video.object_width == 0.05 and apple.config.video.control.closed_width == 0.0


def test_task_settings_file_is_typed(tmp_path):
    assert set(load_task_settings()) == {"PlaceAppleFromBowlIntoBin", "PutSpatulaOnTable", "StoreCerealBoxUnderShelf"}
    (tmp_path / "t.yaml").write_text("StackBlocks: {held_object_width: 0.01}\n")
    with pytest.raises(ConfigError, match="unknown task.*StackBlocks"):
        load_task_settings(tmp_path / "t.yaml")
    (tmp_path / "t.yaml").write_text("PutSpatulaOnTable: {held_width: 0.01}\n")
    with pytest.raises(ConfigError, match="unknown key.*held_width"):
        load_task_settings(tmp_path / "t.yaml")

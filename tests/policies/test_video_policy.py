"""Shared video-policy helpers: gripper-state debouncing, closing/release commands, tracked frames."""

from __future__ import annotations

import json

import numpy as np

from geo4d_policy.policies.video_policy import debounce


def test_gripper_state_debounce():
    s = np.array([False, True, False, True, True, True])
    assert debounce(s, start=False, frames=2).tolist() == [False, False, False, True, True, True]
    assert debounce(s, start=False, frames=1).tolist() == s.tolist()
    # A change in the last frame cannot be confirmed yet.
    assert debounce(np.array([True, True, False]), start=True, frames=2).tolist() == [True, True, True]


def test_closing_command_squeezes_the_box_and_fully_closes_on_the_apple():
    from geo4d_policy.policies.video_policy import VideoPolicy, VideoPolicyConfig, resolve_video_config
    from geo4d_policy.task_settings import task_settings

    cereal = task_settings("StoreCerealBoxUnderShelf")
    box = VideoPolicy(task="StoreCerealBoxUnderShelf")
    assert box.config.control.closed_width == cereal.closed_command_width > 0
    assert VideoPolicy(task="PlaceAppleFromBowlIntoBin").config.control.closed_width == 0.0
    plain = VideoPolicy(task="StoreCerealBoxUnderShelf", config=VideoPolicyConfig(task_closed_width=False))
    assert plain.config.control.closed_width == 0.0
    assert box.config.object_width == cereal.held_object_width
    # The policy uses exactly the configuration a run records: resolving again changes nothing.
    assert resolve_video_config(box.config, task="StoreCerealBoxUnderShelf") == box.config


def test_one_frame_beyond_the_executed_ones_is_tracked_to_confirm_a_change_there():
    from geo4d_policy.control.receding_horizon import RecedingHorizonConfig
    from geo4d_policy.policies.video_policy import VideoPolicy, VideoPolicyConfig

    pol = VideoPolicy(task="PutSpatulaOnTable",
                      config=VideoPolicyConfig(control=RecedingHorizonConfig(execute_frames=4), toggle_frames=2))
    assert pol.frames_to_track == 5
    # The last executed frame is the first of two agreeing ones: the close happens in this plan.
    assert debounce(np.array([0, 0, 0, 1, 1], bool), start=False, frames=2).tolist()[:4] == [False] * 3 + [True]
    fixed = VideoPolicy(task="PutSpatulaOnTable", config=VideoPolicyConfig(track_frames=3))
    assert fixed.frames_to_track == 3


def test_a_release_moves_one_frame_earlier_over_unseen_fingers():
    from geo4d_policy.policies.video_policy import backdate_release

    closed = np.array([True, True, True, False, False])
    seen = np.array([True, False, False, True, True])
    assert backdate_release(closed, seen, frames=1).tolist() == [True, True, False, False, False]
    assert backdate_release(closed, seen, frames=2).tolist() == [True, False, False, False, False]
    # Seen closed just before: the release stays where it was seen.
    assert backdate_release(closed, np.ones(5, bool), frames=2).tolist() == closed.tolist()
    # Closings are never moved.
    assert backdate_release(~closed, seen, frames=2).tolist() == (~closed).tolist()


def test_a_closing_waits_until_the_predicted_hand_is_at_rest():
    from geo4d_policy.policies.video_policy import close_at_rest

    def at(z):
        return np.stack([np.zeros(len(z)), np.zeros(len(z)), np.asarray(z, dtype=float)], axis=1)

    start = np.array([0.0, 0.0, 0.304])
    # The apple trace (eval seed 1): read closed while still descending 6 cm into the bowl.
    z = [0.256, 0.194, 0.193, 0.193, 0.239]
    out = close_at_rest(np.ones(5, bool), at(z), start=False, start_position=start, still_distance=0.015)
    assert out.tolist() == [False, True, True, True, True]
    # Arrived (no step into the frame) but already lifting out of it: closes there.
    z = [0.285, 0.214, 0.186, 0.186, 0.213]
    closed = np.array([0, 0, 0, 1, 1], bool)
    assert close_at_rest(closed, at(z), start=False, start_position=start, still_distance=0.015).tolist() == \
        closed.tolist()
    # Never at rest: stays open for now.
    z = [0.25, 0.20, 0.15, 0.10, 0.05]
    assert not close_at_rest(np.ones(5, bool), at(z), start=False, start_position=start, still_distance=0.015).any()
    # Already closed, and releases, are left alone.
    assert close_at_rest(np.ones(5, bool), at(z), start=True, start_position=start, still_distance=0.015).all()
    rel = np.array([1, 1, 0, 0, 0], bool)
    assert close_at_rest(rel, at(z), start=True, start_position=start, still_distance=0.015).tolist() == rel.tolist()


def test_the_gripper_changes_at_the_bottom_of_a_descend_then_rise_with_unseen_fingers():
    from geo4d_policy.policies.video_policy import toggle_at_turn

    # The spatula trace (eval seed 4, t=4 s): arrived 28 cm below the start, rests, then lifts.
    z = np.array([0.306, 0.305, 0.312, 0.363, 0.436])
    P = np.stack([np.zeros(5), np.zeros(5), z], axis=1)
    ok, unseen = np.ones(5, bool), np.zeros(5, bool)
    opts = dict(peak_z=0.59, descent=0.05, rise=0.03)
    assert toggle_at_turn(np.zeros(5, bool), P, ok, unseen, start=False, **opts).tolist() == \
        [False, True, True, True, True]
    # The same for a release (closed -> open at the bottom).
    assert toggle_at_turn(np.ones(5, bool), P, ok, unseen, start=True, **opts).tolist() == \
        [True, False, False, False, False]
    # Fingers seen at the bottom, a shallow descent, no rise, or untrusted frames: unchanged.
    assert not toggle_at_turn(np.zeros(5, bool), P, ok, np.ones(5, bool), start=False, **opts).any()
    assert not toggle_at_turn(np.zeros(5, bool), P, ok, unseen, start=False, peak_z=0.33, descent=0.05,
                              rise=0.03).any()
    flat = np.stack([np.zeros(5), np.zeros(5), np.full(5, 0.306)], axis=1)
    assert not toggle_at_turn(np.zeros(5, bool), flat, ok, unseen, start=False, **opts).any()
    assert not toggle_at_turn(np.zeros(5, bool), P, np.array([1, 1, 1, 0, 0], bool), unseen, start=False,
                              **opts).any()
    # The bottom is where the hand stands now (it waited there, the look-ahead opened and rose).
    up = np.stack([np.zeros(5), np.zeros(5), np.full(5, 0.153)], axis=1)
    assert not toggle_at_turn(np.ones(5, bool), up, ok, unseen, start=True, start_z=0.095, **opts).any()
    # Not for a closing (it would close in the air, after the rise).
    assert not toggle_at_turn(np.zeros(5, bool), up, ok, unseen, start=False, start_z=0.095, **opts).any()
    # ... but not right after a change there (the peak restarts at the bottom) or without a rise.
    assert toggle_at_turn(np.ones(5, bool), up, ok, unseen, start=True, start_z=0.095, peak_z=0.095,
                          descent=0.05, rise=0.03).all()
    assert toggle_at_turn(np.ones(5, bool), up, ok, unseen, start=True, start_z=0.14, **opts).all()
    # A change the fingers read is kept as read.
    read = np.array([0, 0, 0, 0, 1], bool)
    assert toggle_at_turn(read, P, ok, unseen, start=False, **opts).tolist() == read.tolist()


def test_gripper_decisions_round_trip_through_the_record_and_each_rule_switches_off():
    import dataclasses

    from geo4d_policy.policies.video_policy import GripperStateInputs, VideoPolicyConfig, decide_gripper_states

    # A hand descending 6 cm onto its object, readings "closed" one frame early (still moving),
    # then at rest and rising with the object: close-at-rest moves the closing to the stop.
    z = np.array([0.30, 0.27, 0.24, 0.24, 0.30])
    inputs = GripperStateInputs(raw=np.array([False, True, True, True, True]), observed=np.ones(5, bool),
                                pose_ok=np.ones(5, bool), positions=np.c_[np.zeros((5, 2)), z], start=False,
                                start_position=np.array([0.0, 0.0, 0.33]), peak_z=0.33)
    back = GripperStateInputs.from_dict(json.loads(json.dumps(inputs.to_dict())))
    np.testing.assert_allclose(back.positions, inputs.positions, atol=1e-4)
    assert back.to_dict() == inputs.to_dict()
    cfg = VideoPolicyConfig()
    assert cfg.release_backdate_frames == 0  # off: it opened early on development seeds
    assert decide_gripper_states(back, cfg).tolist() == [False, False, True, True, True]
    no_rest = dataclasses.replace(cfg, close_still_distance=None)
    assert decide_gripper_states(back, no_rest).tolist() == [False, True, True, True, True]

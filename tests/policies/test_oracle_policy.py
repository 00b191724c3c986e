"""The oracle: the expert's look-ahead from the current state, tracked through the geo4d pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from geo4d_policy.policies.oracle import make_policy

TASK = "PutSpatulaOnTable"


@pytest.fixture(scope="module")
def env():
    from sim.env import make_env

    return make_env(TASK)


def test_oracle_follows_the_experts_look_ahead_over_two_replans(env):
    policy = make_policy(task=TASK, num_frames=4, execute_frames=2)
    obs = env.reset(11)
    policy.reset(seed=11)
    moved = 0.0
    for _ in range(2):
        start = {arm: obs.arms[arm].X_TG.copy() for arm in obs.arms}
        chunk = policy.act(obs)
        truth = policy.lookahead.frame_poses
        for arm in obs.arms:
            # Each arm ends its chunk at a tracked keyframe: within 1.5 cm of one of the expert's
            # true look-ahead poses (or holds where it is).
            end = chunk.X_TG[arm][-1][:3, 3]
            err = np.linalg.norm(truth[arm][:2, :3, 3] - end, axis=1).min()
            held = np.linalg.norm(end - start[arm][:3, 3])
            assert err < 0.015 or held < 0.02, (arm, err, held)
            moved = max(moved, float(np.linalg.norm(truth[arm][1, :3, 3] - start[arm][:3, 3])))
        for action in chunk:
            policy.observe(obs)
            obs, done, _ = env.step(action)
    assert moved > 0.02  # the expert does move an arm in the first second of this task
    d = policy.diagnostics()
    assert d["replans"] == 2 and d["tracking_confidence_mean"] > 0.4
    # Per replan: tracked vs true gripper pose, and where each arm's chunk ended against the
    # look-ahead pose it aimed at (known once the chunk has run: the first replan's).
    replans = d["oracle_replans"]
    assert [r["t"] for r in replans] == sorted(r["t"] for r in replans) and len(replans) == 2
    for r in replans:
        for arm in obs.arms:
            assert r[arm]["frames"] == policy.frames_to_track
            assert 0 <= r[arm]["tracked_vs_true_mm"] < 15, r
            if "executed_frames" in r[arm] and r is not replans[-1]:
                assert 0 <= r[arm]["lookahead_vs_executed_mm"] < 30, r
    assert any("lookahead_vs_executed_mm" in r[arm] for r in replans for arm in obs.arms)
    assert d["tracked_vs_true_mm_median"] <= d["tracked_vs_true_mm_p90"]


def test_look_ahead_is_the_experts_own_future(env):
    """Executing the shadow expert's actions for real reproduces the look-ahead exactly: the
    replayed script sees the real episode's observations, so its plan is the expert's plan."""
    from geo4d_policy.policies.oracle import ExpertLookahead
    from sim.experts import make_expert_policy

    lookahead = ExpertLookahead(TASK, num_frames=3, env_factory=lambda task: make_env_for_test())
    lookahead.reset(seed=13)
    expert = make_expert_policy(task=TASK)
    expert.reset(seed=13)
    obs = env.reset(13)
    queue = []
    for step in range(45):
        if step in (0, 17, 30):  # mid-chunk replans included
            lookahead.rollout(obs)
            predicted, t0, reached = lookahead.frame_poses, obs.time, {}
        if not queue:
            queue = list(expert.act(obs))
        lookahead.observe(obs)
        obs, _, _ = env.step(queue.pop(0))
        k = round((obs.time - t0) / 0.5) - 1
        if abs(obs.time - t0 - 0.5 * (k + 1)) < 1e-6 and 0 <= k < 3:
            reached[k] = {arm: s.X_TG for arm, s in obs.arms.items()}
            for arm in obs.arms:
                np.testing.assert_allclose(reached[k][arm], predicted[arm][k], atol=1e-6)
    assert len(reached) >= 2


def make_env_for_test():
    from sim.env import make_env

    return make_env(TASK)


def test_oracle_refuses_observations_without_simulator_state(env):
    import dataclasses

    policy = make_policy(task=TASK)
    obs = env.reset(12)
    policy.reset(seed=12)
    blind = dataclasses.replace(obs, privileged=None)
    with pytest.raises(RuntimeError, match="simulator's state"):
        policy.act(blind)


def test_view_m_camera_is_recovered_from_the_prediction(env):
    """The free-space reading's camera of view m: from the observed depth of view m against the
    predicted X^{m->n} (here the true look-ahead), it matches the calibration the policy is not
    given; a prediction unrelated to the scene gives no pose rather than a wrong one."""
    import dataclasses

    from geo4d_policy.data.geometry import invert_transform
    from geo4d_policy.policies.video_policy import view_cameras

    policy = make_policy(task=TASK, num_frames=2)
    obs = env.reset(14)
    policy.reset(seed=14)
    video = policy.predict_video(obs)
    cams = view_cameras(obs, video)
    n, m = (obs.camera_specs[c] for c in obs.eval_cameras[:2])
    np.testing.assert_allclose(cams[0][0], n.intrinsics.K)
    assert cams[0][1] is None  # view n's pixels are camera n's
    np.testing.assert_allclose(cams[1][0], m.intrinsics.K)
    truth = invert_transform(n.X_TC) @ m.X_TC
    assert np.linalg.norm(cams[1][1][:3, 3] - truth[:3, 3]) < 0.005
    cos = (np.trace(cams[1][1][:3, :3].T @ truth[:3, :3]) - 1) / 2
    assert np.degrees(np.arccos(np.clip(cos, -1, 1))) < 0.5

    rng = np.random.default_rng(0)
    noise = rng.uniform(-1.0, 1.0, size=video.pointmaps.shape).astype(video.pointmaps.dtype) + [0, 0, 2.0]
    assert view_cameras(obs, dataclasses.replace(video, pointmaps=noise))[1] == (None, None)

    # The oracle knows the calibration; a learned policy estimates it, and the diagnostics
    # count both and record why an estimate was not trusted.
    from geo4d_policy.policies.video_policy import VideoPolicy

    np.testing.assert_allclose(policy.view_cameras(obs, video)[1][1], truth, atol=1e-12)
    VideoPolicy.view_cameras(policy, obs, video)
    VideoPolicy.view_cameras(policy, obs, dataclasses.replace(video, pointmaps=noise))
    rec = policy.diagnostics()["view_m_pose"]
    assert (rec["calibrated"], rec["estimated"], rec["fallback"]) == (1, 1, 1)
    assert rec["last_fallback_reason"] and len(rec["residual_mm"]) == 2 and rec["residual_mm"][0] < 5.0


def test_a_policy_put_on_the_cpu_keeps_its_tracker_there():
    """``--device cpu`` resolves the tracker's ``auto`` device to the CPU (on a GPU machine,
    ``auto`` would put every episode process's ICP on the GPU); without a device the config's
    setting stands, and an explicit tracker device is never overridden."""
    assert make_policy(task=TASK, device="cpu").tracker_config.device == "cpu"
    bare = make_policy(task=TASK)
    assert bare.tracker_config.device == "auto" == bare.config.tracker.device
    explicit = make_policy(task=TASK, device="cpu", **{"video.tracker.device": "cuda:0"})
    assert explicit.tracker_config.device == "cuda:0"
    assert make_policy(task=TASK, device="cpu").config.tracker.device == "auto"  # the recorded config is unchanged

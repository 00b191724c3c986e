"""Policy registry: lazy imports, unknown vs. unavailable policies, registration, the Policy protocol."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from geo4d_policy.interface import ActionChunk, UnknownNameError
from geo4d_policy.policies import (
    Policy,
    PolicyUnavailableError,
    check_policy_available,
    make_policy,
    policy_diagnostics,
    policy_names,
    policy_uses_cameras,
    register_policy,
    resolve_policy_target,
    unregister_policy,
)

BUILT_IN = ("expert", "geo4d", "oracle", "dreamitate", "diffusion_policy")


class DummyPolicy:
    """Test double: holds still."""

    def __init__(self, task, **options):
        self.name, self.task, self.options = "dummy", task, options

    def reset(self, *, seed):
        pass

    def act(self, obs):
        return ActionChunk({"left": np.eye(4)[None]}, {"left": np.zeros(1)})


def make_dummy(*, task, **options):
    return DummyPolicy(task, **options)


def make_not_a_policy(*, task, **options):
    return object()


@pytest.fixture
def registered():
    names = []

    def register(name, target, **kw):
        register_policy(name, target, **kw)
        names.append(name)

    yield register
    for name in names:
        unregister_policy(name)


def test_built_in_names_and_unknown_name():
    assert set(BUILT_IN) <= set(policy_names())
    assert resolve_policy_target("expert") == "sim.experts:make_expert_policy"
    with pytest.raises(UnknownNameError) as err:
        make_policy("geo5d", task="PutSpatulaOnTable")
    assert not isinstance(err.value, PolicyUnavailableError)
    for name in BUILT_IN:
        assert name in str(err.value)


def test_a_registered_policy_without_its_module_is_unavailable_not_unknown(registered):
    registered("future", "geo4d_policy.policies.no_such_module:make_policy", note="issue: someday")
    for call in (lambda: make_policy("future", task="PutSpatulaOnTable"), lambda: check_policy_available("future")):
        with pytest.raises(PolicyUnavailableError, match="not available yet") as err:
            call()
        assert not isinstance(err.value, UnknownNameError)
        assert "geo4d_policy.policies.no_such_module" in str(err.value) and "--policy expert" in str(err.value)
    assert "the future policy is not available yet (issue: someday); use --policy expert" in str(err.value)


def test_register_make_and_unregister(registered):
    registered("dummy", f"{__name__}:make_dummy")
    policy = make_policy("dummy", task="put_spatula_on_table", gain=2)
    assert isinstance(policy, Policy) and policy.task == "PutSpatulaOnTable" and policy.options == {"gain": 2}
    assert policy_uses_cameras(policy) and policy_diagnostics(policy) == {}
    with pytest.raises(ValueError, match="already registered"):
        register_policy("dummy", f"{__name__}:make_not_a_policy")
    with pytest.raises(ValueError, match="module:attribute"):
        register_policy("bad", "no_colon")
    unregister_policy("dummy")
    assert "dummy" not in policy_names()


def test_broken_targets(registered, tmp_path, monkeypatch):
    (tmp_path / "policy_needing_missing_pkg.py").write_text("import surely_not_installed_pkg_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registered("needs_pkg", "policy_needing_missing_pkg:make_policy")
    with pytest.raises(PolicyUnavailableError, match="surely_not_installed_pkg_xyz"):
        make_policy("needs_pkg", task="PutSpatulaOnTable")
    registered("no_attr", f"{__name__}:no_such_factory")
    with pytest.raises(PolicyUnavailableError, match="no_such_factory"):
        make_policy("no_attr", task="PutSpatulaOnTable")
    registered("not_policy", f"{__name__}:make_not_a_policy")
    with pytest.raises(TypeError, match="Policy protocol"):
        make_policy("not_policy", task="PutSpatulaOnTable")
    with pytest.raises(UnknownNameError, match="unknown task"):
        make_policy("not_policy", task="StackBlocks")


def test_importing_the_learning_side_stays_light():
    code = textwrap.dedent("""
        import sys
        import geo4d_policy.policies, geo4d_policy.eval.runner, geo4d_policy.eval.report, geo4d_policy.cli.rollout
        from geo4d_policy.policies import is_policy_available
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "pydrake", "sim", "diffusers"))
        assert not heavy, heavy
        assert is_policy_available("expert")  # finds sim.experts without importing it
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "pydrake", "diffusers")
                       or m.startswith("sim.experts"))
        assert not heavy, heavy
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_expert_through_the_registry():
    policy = make_policy("expert", task="place_apple_from_bowl_into_bin")
    assert isinstance(policy, Policy) and policy.name == "expert" and policy_uses_cameras(policy) is False

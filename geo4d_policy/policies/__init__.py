"""Policies: the :class:`Policy` protocol and the name -> factory registry.

Every policy (the scripted expert, geo4d, oracle, the baselines) is built by name through
:func:`make_policy`. Importing this package is cheap: a policy's module (and with it torch or
pydrake) is imported only when that policy is chosen.
"""

from geo4d_policy.policies.base import Policy, policy_diagnostics, policy_uses_cameras
from geo4d_policy.policies.registry import (
    PolicyUnavailableError,
    check_policy_available,
    is_policy_available,
    load_policy_factory,
    make_policy,
    make_policy_from_target,
    policy_names,
    register_policy,
    resolve_policy_target,
    unregister_policy,
)

__all__ = [
    "Policy",
    "PolicyUnavailableError",
    "check_policy_available",
    "is_policy_available",
    "load_policy_factory",
    "make_policy",
    "make_policy_from_target",
    "policy_diagnostics",
    "policy_names",
    "policy_uses_cameras",
    "register_policy",
    "resolve_policy_target",
    "unregister_policy",
]

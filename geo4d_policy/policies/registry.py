"""Policy registry: policy names -> ``"module:attribute"`` factories, imported lazily.

A factory is called as ``factory(*, task: str, **options) -> Policy`` with the canonical
(CamelCase) task name. Only the chosen policy's module is imported, so importing
``geo4d_policy`` never pulls in pydrake (the expert) or torch (the learned policies).

Two failure modes are kept apart on purpose:

* :class:`~geo4d_policy.interface.UnknownNameError` -- the name is not registered (a typo);
  the message lists the registered names.
* :class:`PolicyUnavailableError` -- the name is registered but its module cannot be imported
  yet (not implemented, or an optional dependency is missing).

The rollout runner resolves a name to its target string in the parent process and hands the
string to the episode worker processes (:func:`make_policy_from_target`), so policies added
with :func:`register_policy` (e.g. by tests) also work in spawned workers.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from geo4d_policy.interface import UnknownNameError, canonical_task_name
from geo4d_policy.policies.base import Policy

_DEFAULT_POLICIES: dict[str, tuple[str, str | None]] = {
    # name: (target, note shown while the target module does not exist yet)
    "expert": ("sim.experts:make_expert_policy", None),
    "geo4d": ("geo4d_policy.policies.geo4d:make_policy", "issue: 4D generator"),
    "oracle": ("geo4d_policy.policies.oracle:make_policy", "issue: oracle look-ahead + tracking pipeline"),
    "dreamitate": ("geo4d_policy.policies.dreamitate:make_policy", "issue: Dreamitate baseline"),
    "rgb_oracle": ("geo4d_policy.policies.rgb_oracle:make_policy", "issue: Dreamitate's perception on true RGB"),
    "diffusion_policy": ("geo4d_policy.policies.diffusion_policy:make_policy", "issue: Diffusion Policy baseline"),
}

_REGISTRY: dict[str, tuple[str, str | None]] = dict(_DEFAULT_POLICIES)

FALLBACK_POLICY = "expert"
"""Suggested in messages when the chosen policy is not available."""


class PolicyUnavailableError(RuntimeError):
    """A registered policy whose module cannot be imported (not implemented yet, or a missing dependency)."""


def _split_target(target: str) -> tuple[str, str]:
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"a policy target must look like 'package.module:attribute', got {target!r}")
    return module, attr


def register_policy(name: str, target: str, *, note: str | None = None, replace: bool = False) -> None:
    """Register policy ``name`` built by the factory at ``target`` (``"module:attribute"``).

    Args:
        name: the policy's name (``--policy NAME``).
        target: where the factory ``f(*, task, **options) -> Policy`` lives; not imported here.
        note: shown in the "not available yet" message while the module does not exist.
        replace: allow overwriting an existing registration.

    Raises:
        ValueError: ``name`` is already registered (and ``replace`` is false) or ``target`` is malformed.
    """
    _split_target(target)
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"policy names are letters, digits, '_' and '-', got {name!r}")
    if name in _REGISTRY and not replace and _REGISTRY[name][0] != target:
        raise ValueError(f"policy {name!r} is already registered as {_REGISTRY[name][0]!r}; pass replace=True")
    _REGISTRY[name] = (target, note)


def unregister_policy(name: str) -> None:
    """Remove ``name`` (a built-in name goes back to its default target). Unknown names are ignored."""
    if name in _DEFAULT_POLICIES:
        _REGISTRY[name] = _DEFAULT_POLICIES[name]
    else:
        _REGISTRY.pop(name, None)


def policy_names() -> tuple[str, ...]:
    """Registered policy names, built-ins first."""
    return tuple(_REGISTRY)


def resolve_policy_target(name: str) -> str:
    """The ``"module:attribute"`` factory target of policy ``name``.

    Raises:
        UnknownNameError: ``name`` is not registered; the message lists the valid names.
    """
    try:
        return _REGISTRY[name][0]
    except KeyError:
        raise UnknownNameError(f"unknown policy {name!r}; valid policies: {', '.join(_REGISTRY)}") from None


def _unavailable_message(name: str, module: str) -> str:
    note = _REGISTRY.get(name, (None, None))[1]
    what = f"the {name} policy is not available yet" + (f" ({note})" if note else "")
    hint = f"; use --policy {FALLBACK_POLICY}" if name != FALLBACK_POLICY else ""
    return f"{what}{hint} [module {module} not found]"


def _module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def is_policy_available(name: str) -> bool:
    """Whether policy ``name``'s module exists (checked without importing it).

    Raises:
        UnknownNameError: ``name`` is not registered.
    """
    return _module_exists(_split_target(resolve_policy_target(name))[0])


def check_policy_available(name: str) -> None:
    """Raise unless policy ``name`` is registered and its module exists (nothing heavy is imported).

    Raises:
        UnknownNameError: ``name`` is not registered.
        PolicyUnavailableError: its module does not exist yet.
    """
    module = _split_target(resolve_policy_target(name))[0]
    if not _module_exists(module):
        raise PolicyUnavailableError(_unavailable_message(name, module))


def load_policy_factory(target: str, *, name: str) -> Any:
    """Import the factory at ``target`` (``"module:attribute"``) of policy ``name``.

    Raises:
        PolicyUnavailableError: the module (or a package it needs) or the attribute is missing.
    """
    module_name, attr = _split_target(target)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise PolicyUnavailableError(_unavailable_message(name, module_name)) from e
        raise PolicyUnavailableError(
            f"the {name} policy ({module_name}) needs the package {missing!r}, which is not installed: {e}"
        ) from e
    try:
        return getattr(module, attr)
    except AttributeError:
        raise PolicyUnavailableError(
            f"the {name} policy's module {module_name} has no factory {attr!r} (target {target!r})"
        ) from None


def make_policy_from_target(target: str, *, name: str, task: str, **options: Any) -> Policy:
    """Import ``target`` (``"module:attribute"``) and build a policy with it.

    Args:
        target: the factory, as returned by :func:`resolve_policy_target`.
        name: the policy's registry name (for messages).
        task: task name, CamelCase or snake_case; the factory gets the CamelCase one.
        **options: passed to the factory.

    Raises:
        PolicyUnavailableError: the module or its factory cannot be imported.
        TypeError: the factory returned something that is not a :class:`Policy`.
    """
    task = canonical_task_name(task)
    factory = load_policy_factory(target, name=name)
    policy = factory(task=task, **options)
    if not isinstance(policy, Policy):
        raise TypeError(
            f"the factory {target!r} returned a {type(policy).__name__}, which lacks the Policy "
            "protocol (name, reset(*, seed), act(obs))"
        )
    return policy


def make_policy(name: str, *, task: str, **options: Any) -> Policy:
    """Build the registered policy ``name`` for ``task``.

    Args:
        name: a registered policy name (see :func:`policy_names`).
        task: task name, CamelCase or snake_case.
        **options: policy-specific options (checkpoint paths, sampler steps, device, ...).

    Raises:
        UnknownNameError: ``name`` (or ``task``) is unknown; the message lists the valid names.
        PolicyUnavailableError: the policy is registered but its module does not exist yet.
    """
    return make_policy_from_target(resolve_policy_target(name), name=name, task=task, **options)

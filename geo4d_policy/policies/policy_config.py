"""Policy configuration as data: which dataclass holds a policy's settings, its YAML file, and
``KEY=VALUE`` overrides by dotted path.

A policy module declares its inference settings with module attributes:

* ``CONFIG``: a frozen dataclass holding every setting (nested dataclasses for the tracker,
  the controller, ...); ``configs/policy/<name>.yaml`` holds a complete copy of its defaults
  (``python -m geo4d_policy.policies.policy_config --write`` regenerates them; a test checks
  they are in sync) and is what a run starts from unless ``--policy-config FILE`` is given;
* ``OPTION_ALIASES`` (optional): short option names kept for the command line -> dotted paths;
* ``for_task(config, *, task) -> config`` (optional): fills in what depends on the task
  (``configs/tasks.yaml``); idempotent, so the configuration recorded is the one used;
* ``preflight(*, task, config, runtime)`` (optional): refuses, before any episode, settings that
  cannot run (a missing checkpoint); ``runtime`` holds the session's runtime options;
* ``checkpoints(config, *, task) -> {setting: path}`` (optional): the checkpoints the settings
  load, hashed into every run's provenance;

and its factory takes ``config=`` (an instance) plus runtime keyword arguments that are not part
of a run's identity (``device``, ``server``, ``record_predictions``, ...); keyword overrides given
to the factory directly are applied like ``--policy-option`` (:func:`configure`).

An option key is a dotted path (``video.tracker.iterations``), an alias (``execute_frames``) or
the name of a single leaf (``release_backdate_frames``, when no other leaf has that name).
Unknown keys and values of the wrong type are refused with :class:`PolicyOptionError`, which
names the valid keys, before any episode runs.

A policy module without ``CONFIG`` (the scripted expert, test doubles) takes its options as its
factory's keyword parameters; they are checked against the factory's signature.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from geo4d_policy.config import CONFIG_DIR, from_dict, load_config, to_dict

POLICY_CONFIG_DIR = CONFIG_DIR / "policy"
NOT_OPTIONS = frozenset({"task", "config"})
"""Factory parameters that are never options."""


class PolicyOptionError(ValueError):
    """A policy option or configuration file that does not fit the policy's settings."""


@dataclasses.dataclass(frozen=True)
class ResolvedPolicyConfig:
    """A policy's configuration for one task, ready to build it and to record.

    Attributes:
        policy: the policy's name.
        config: the ``CONFIG`` instance, with task-dependent values filled in; or, for a policy
            without ``CONFIG``, the dict of its factory options.
        source: the YAML file it started from (None: the dataclass defaults / no file).
    """

    policy: str
    config: Any
    source: str | None = None

    @property
    def typed(self) -> bool:
        return dataclasses.is_dataclass(self.config)

    def as_dict(self) -> dict[str, Any]:
        """Every setting, as plain data (what records carry)."""
        return to_dict(self.config) if self.typed else dict(to_dict(self.config))

    def factory_options(self) -> dict[str, Any]:
        """Keyword arguments for the policy's factory."""
        return {"config": self.config} if self.typed else dict(self.config)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass a field's type names (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None


def option_keys(cls: type, prefix: str = "") -> list[str]:
    """Dotted paths of every leaf setting of dataclass ``cls``."""
    keys = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        sub = _dataclass_of(hints[f.name])
        path = f"{prefix}{f.name}"
        keys.extend(option_keys(sub, path + ".") if sub is not None else [path])
    return keys


def _node_paths(cls: type, prefix: str = "") -> set[str]:
    """Dotted paths of the nested dataclass fields (a whole mapping may be set there)."""
    out = set()
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        sub = _dataclass_of(hints[f.name])
        if sub is not None:
            out.add(prefix + f.name)
            out |= _node_paths(sub, prefix + f.name + ".")
    return out


def _valid_keys_text(cls: type, aliases: Mapping[str, str]) -> str:
    text = "valid keys: " + ", ".join(option_keys(cls))
    if aliases:
        text += "; short names: " + ", ".join(f"{k} (= {v})" for k, v in aliases.items())
    return text


def resolve_key(cls: type, key: str, aliases: Mapping[str, str] | None = None, *, policy: str = "") -> str:
    """The dotted path option ``key`` names (see the module docstring).

    Raises:
        PolicyOptionError: unknown or ambiguous key; the message lists the valid keys.
    """
    aliases = dict(aliases or {})
    leaves = option_keys(cls)
    if key in aliases:
        return aliases[key]
    if key in leaves or key in _node_paths(cls):
        return key
    named = [p for p in leaves if p.rsplit(".", 1)[-1] == key]
    if len(named) == 1 and "." not in key:
        return named[0]
    who = f"{policy} " if policy else ""
    if len(named) > 1:
        raise PolicyOptionError(f"ambiguous {who}policy option {key!r}: it names {', '.join(named)}; "
                                "give the dotted path")
    raise PolicyOptionError(f"unknown {who}policy option {key!r}; {_valid_keys_text(cls, aliases)}")


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if isinstance(value, Mapping) and isinstance(node.get(parts[-1]), dict):
        merged = dict(node[parts[-1]])
        for k, v in value.items():
            _set(merged, str(k), v)
        value = merged
    node[parts[-1]] = value


def apply_options(config: Any, options: Mapping[str, Any], aliases: Mapping[str, str] | None = None, *,
                  policy: str = "") -> Any:
    """``config`` (a dataclass instance) with ``options`` (option key -> value) applied, type-checked.

    Raises:
        PolicyOptionError: an unknown key, or a value of the wrong type (named with its path).
    """
    cls = type(config)
    data = to_dict(config)
    for key, value in options.items():
        _set(data, resolve_key(cls, str(key), aliases, policy=policy), value)
    try:
        return from_dict(cls, data, where=policy or cls.__name__)
    except ValueError as e:  # ConfigError, or a dataclass's own range check
        raise PolicyOptionError(f"bad {policy + ' ' if policy else ''}policy option: {e}") from None


def load_config_file(cls: type, path: str | Path, *, policy: str = "") -> Any:
    """``cls`` from a YAML file (missing keys keep their defaults).

    Raises:
        PolicyOptionError: the file is missing, or has an unknown key or a value of the wrong type.
    """
    try:
        return load_config(cls, path)
    except ValueError as e:  # ConfigError, or a dataclass's own range check
        raise PolicyOptionError(f"{policy + ' policy config: ' if policy else ''}{e}; "
                                f"{_valid_keys_text(cls, {})}") from None


def default_config_file(policy: str) -> Path:
    """``configs/policy/<policy>.yaml``."""
    return POLICY_CONFIG_DIR / f"{policy}.yaml"


def _module(target: str) -> Any:
    return importlib.import_module(target.partition(":")[0])


def config_class(target: str) -> type | None:
    """The ``CONFIG`` dataclass of the policy module at ``target`` (None when it has none)."""
    return getattr(_module(target), "CONFIG", None)


def _factory_parameters(target: str, *, name: str) -> tuple[dict[str, inspect.Parameter], bool]:
    """The factory's keyword parameters (options) and whether it takes ``**kwargs``."""
    from geo4d_policy.policies.registry import load_policy_factory

    factory = load_policy_factory(target, name=name)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}, True
    named = {k: p for k, p in params.items()
             if k not in NOT_OPTIONS and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return named, any(p.kind is p.VAR_KEYWORD for p in params.values())


def check_runtime_options(policy: str, target: str, options: Mapping[str, Any]) -> None:
    """Refuse runtime options (not part of a run's identity) that the factory does not take.

    Raises:
        PolicyOptionError: names the unknown keys and the factory's runtime parameters.
    """
    if not options:
        return
    params, var_kw = _factory_parameters(target, name=policy)
    cls = config_class(target)
    runtime = [k for k in params if cls is None or k not in option_keys(cls)]
    unknown = [k for k in options if k not in runtime and not (var_kw and cls is None)]
    if unknown:
        raise PolicyOptionError(f"unknown {policy} runtime option(s) {unknown}; valid: "
                                f"{', '.join(runtime) or 'none'} (settings go in --policy-option)")


def resolve_policy_config(policy: str, target: str, *, task: str, config_file: str | Path | None = None,
                          options: Mapping[str, Any] | None = None) -> ResolvedPolicyConfig:
    """The configuration a run of ``policy`` on ``task`` uses, without building the policy.

    Args:
        policy: the policy's registry name.
        target: its factory, ``"module:attribute"``.
        task: canonical task name.
        config_file: YAML of the policy's settings (default ``configs/policy/<policy>.yaml`` if
            it exists, else the dataclass defaults).
        options: option key -> value overrides (``--policy-option``).

    Raises:
        PolicyOptionError: an unknown key, a wrong type, a missing file, or options for a policy
            that takes none; the message lists the valid keys.
    """
    options = dict(options or {})
    module = _module(target)
    cls = getattr(module, "CONFIG", None)
    if cls is None:
        if config_file is not None:
            raise PolicyOptionError(f"the {policy} policy has no settings dataclass; --policy-config does not apply")
        params, var_kw = _factory_parameters(target, name=policy)
        unknown = [k for k in options if k not in params]
        if unknown and not var_kw:
            valid = ", ".join(params) if params else "none (it takes no options)"
            raise PolicyOptionError(f"unknown {policy} policy option(s) {unknown}; valid keys: {valid}")
        defaults = {k: p.default for k, p in params.items()
                    if p.default is not inspect.Parameter.empty and k not in ("device", "record_predictions")}
        return ResolvedPolicyConfig(policy, {**defaults, **options})
    source = Path(config_file) if config_file is not None else default_config_file(policy)
    if config_file is not None or source.is_file():
        config = load_config_file(cls, source, policy=policy)
    else:
        config, source = cls(), None
    config = apply_options(config, options, getattr(module, "OPTION_ALIASES", {}), policy=policy)
    for_task = getattr(module, "for_task", None)
    if for_task is not None:
        config = for_task(config, task=task)
    return ResolvedPolicyConfig(policy, config, None if source is None else str(source))


def configure(module_name: str, config: Any, options: Mapping[str, Any], *, task: str) -> Any:
    """What a policy factory does with its ``config=`` and keyword overrides (Python callers):
    the module's ``CONFIG`` defaults when ``config`` is None, ``options`` applied, ``for_task``."""
    module = importlib.import_module(module_name)
    cls = module.CONFIG
    config = cls() if config is None else config
    if not isinstance(config, cls):
        raise PolicyOptionError(f"config must be a {cls.__name__}, got {type(config).__name__}")
    policy = module_name.rsplit(".", 1)[-1]
    config = apply_options(config, options, getattr(module, "OPTION_ALIASES", {}), policy=policy)
    for_task = getattr(module, "for_task", None)
    return config if for_task is None else for_task(config, task=task)


BUILTIN_CONFIGS = {
    "geo4d": "geo4d_policy.policies.geo4d",
    "oracle": "geo4d_policy.policies.oracle",
    "dreamitate": "geo4d_policy.policies.dreamitate",
    "rgb_oracle": "geo4d_policy.policies.rgb_oracle",
    "diffusion_policy": "geo4d_policy.policies.diffusion_policy",
}
"""Policies whose defaults ``configs/policy/<name>.yaml`` mirrors."""


def _sections(cls: type, prefix: str = "") -> list[str]:
    """``"path = module.Class"`` of every nested settings dataclass (where their meanings are documented)."""
    out = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        sub = _dataclass_of(hints[f.name])
        if sub is not None:
            out.append(f"{prefix}{f.name} = {sub.__module__}.{sub.__name__}")
            out += _sections(sub, f"{prefix}{f.name}.")
    return out


def default_config_yaml(policy: str) -> str:
    """The text of ``configs/policy/<policy>.yaml``: every setting at its default."""
    module = importlib.import_module(BUILTIN_CONFIGS[policy])
    cls = module.CONFIG
    keys = option_keys(cls)
    header = [
        f"# Every inference setting of the {policy} policy, at its defaults (generated; regenerate after",
        "# changing a default: python -m geo4d_policy.policies.policy_config --write). geo4d-rollout starts",
        "# from this file (or --policy-config FILE) and applies --policy-option KEY=VALUE on top, KEY a",
        f"# dotted path (e.g. {keys[-1]}) or a leaf name no other leaf shares.",
        f"# Meanings: the docstrings of {module.__name__}.{cls.__name__} (top level)",
        *(f"#   and {line}" for line in _sections(cls)),
    ]
    aliases = getattr(module, "OPTION_ALIASES", {})
    if aliases:
        header.append("# Short option names: " + ", ".join(f"{k} = {v}" for k, v in aliases.items()))
    return "\n".join(header) + "\n" + yaml.safe_dump(to_dict(cls()), sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    """``python -m geo4d_policy.policies.policy_config [--write]``: check (or rewrite) the YAML defaults."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--write", action="store_true", help="rewrite configs/policy/<name>.yaml from the dataclasses")
    args = p.parse_args(argv)
    stale = []
    for policy in BUILTIN_CONFIGS:
        path, text = default_config_file(policy), default_config_yaml(policy)
        if not path.is_file() or path.read_text() != text:
            stale.append(str(path))
            if args.write:
                path.write_text(text)
    print(("rewrote " if args.write else "out of date: ") + ", ".join(stale) if stale else "all up to date")
    return 0 if args.write or not stale else 1


if __name__ == "__main__":
    raise SystemExit(main())

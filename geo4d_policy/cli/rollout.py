"""``geo4d-rollout``: evaluate a policy on a task and report its success rate.

Example::

    geo4d-rollout --task PlaceAppleFromBowlIntoBin --episodes 30 --policy expert --workers 2

Policy settings: ``configs/policy/<policy>.yaml`` (or ``--policy-config FILE``) holds every one;
``--policy-option KEY=VALUE`` overrides one by dotted path (``video.tracker.iterations=20``) or
short name (``checkpoint=``, ``num_steps=``, ``execute_frames=``); ``--show-policy-config``
prints the resolved settings and exits.

Exit codes: 0 when the run finished (whatever the success rate), 2 for invalid input (unknown
task or policy, a policy not implemented yet, an unknown policy option or one of the wrong type,
bad numbers, a clash with an existing run directory, a resume with other code or settings),
130 when interrupted (finished episodes are kept; continue with ``--resume``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from geo4d_policy.cli import interruptible

PROG = "geo4d-rollout"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _device(text: str) -> str:
    if text == "cpu" or text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:<index>, got {text!r}")


def parse_policy_options(items: Sequence[str]) -> dict[str, Any]:
    """``["steps=25", "ckpt=a.pt", "guide=true"]`` -> ``{"steps": 25, "ckpt": "a.pt", "guide": True}``.

    Values are parsed as YAML scalars/lists (numbers, booleans, ``null``, ``[1, 2]``); anything
    else stays a string.

    Raises:
        ValueError: an item without ``=`` or with an empty key, or a repeated key.
    """
    import yaml

    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--policy-option expects key=value, got {item!r}")
        if key in options:
            raise ValueError(f"--policy-option {key!r} given twice")
        try:
            options[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            options[key] = raw
    return options


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``geo4d-rollout``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run seeded evaluation episodes of a policy on a simulated task; write per-episode "
        "records and a summary (success rate with a Wilson 95% interval).",
    )
    p.add_argument("--task", required=True, help="task name, CamelCase or snake_case (e.g. PutSpatulaOnTable)")
    p.add_argument("--episodes", required=True, type=_positive_int, help="number of episodes")
    p.add_argument("--policy", default="geo4d", help="policy name (default: geo4d); e.g. expert, geo4d, oracle, "
                   "dreamitate, diffusion_policy")
    p.add_argument("--seed", type=_non_negative_int, default=0,
                   help="base seed; episode i uses seed (seed, i) of --seed-stream (default: 0)")
    p.add_argument("--seed-stream", default=None, metavar="{eval,dev,data}",
                   help="seed stream of the episodes: eval (reported figures, default), dev (tracing, tuning, "
                        "bisecting; disjoint from the data and evaluation streams) or data (the sanity control "
                        "of --data-seeds)")
    p.add_argument("--data-seeds", action="store_true",
                   help="sanity control: run on the data-collection seeds data_seed(seed, i), the layouts and "
                        "cameras of the demonstrations, instead of the evaluation seeds (never a reported figure); "
                        "the same as --seed-stream data")
    p.add_argument("--views", default="heldout", metavar="{heldout,train,fixed-train}",
                   help="the policy's two evaluation cameras: heldout (novel views, default), train (the "
                        "episode's first two training cameras) or fixed-train (the training pair of data seed 0 "
                        "in every episode); the last two are sanity controls")
    p.add_argument("--workers", type=_positive_int, default=1, help="episodes run in parallel (default: 1)")
    p.add_argument("--out", default=None, help="run directory (default: runs/rollout/<task>/<policy>/seed<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out, running unfinished episodes")
    p.add_argument("--resume-anyway", action="store_true",
                   help="with --resume: continue even if the run was made with other code or settings "
                        "(recorded in its provenance.json)")
    p.add_argument("--video", type=_non_negative_int, default=0, metavar="K",
                   help="record mp4 videos of the first K episodes (default: 0)")
    p.add_argument("--meshcat", action="store_true", help="save a Meshcat HTML replay per episode (needs --workers 1)")
    p.add_argument("--device", type=_device, default="cpu", help="torch device of learned policies: cpu|cuda")
    p.add_argument("--policy-config", default=None, metavar="FILE",
                   help="YAML of the policy's settings (default: configs/policy/<policy>.yaml)")
    p.add_argument("--policy-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a policy setting by dotted path or short name (repeatable); values are parsed as YAML")
    p.add_argument("--show-policy-config", action="store_true",
                   help="print the policy's resolved settings for --task and exit")
    p.add_argument("--runtime-option", action="append", default=[], metavar="KEY=VALUE",
                   help="policy option for this session only, not part of the run's identity (not saved, "
                        "not compared on --resume), e.g. server=ADDRESS of a shared generator server")
    p.add_argument("--episode-timeout", type=_positive_float, default=None, metavar="SECONDS",
                   help="kill and fail an episode running longer than this (default: no limit)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the episodes on a Ray cluster: auto | HOST:PORT | ray://HOST:PORT | local "
                        "(--workers caps the episodes in flight; needs pip install -e '.[ray]')")
    p.add_argument("--ray-gpus-per-episode", type=_positive_float, default=0.25, metavar="F",
                   help="GPU share of each Ray episode when --device is cuda (default: 0.25)")
    p.add_argument("--env-factory", default=None, metavar="MODULE:ATTR",
                   help="environment factory make_env(task, *, record_video, meshcat) (default: sim.env:make_env)")
    return p


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def _show_policy_config(task: str, policy: str, config_file: str | None, options: dict[str, Any]) -> int:
    import yaml

    from geo4d_policy.policies.policy_config import PolicyOptionError, resolve_policy_config
    from geo4d_policy.policies.registry import resolve_policy_target

    try:
        resolved = resolve_policy_config(policy, resolve_policy_target(policy), task=task, config_file=config_file,
                                         options=options)
    except PolicyOptionError as e:
        return _error(str(e))
    print(f"# {policy} on {task}" + (f", from {resolved.source}" if resolved.source else ""))
    print(yaml.safe_dump(resolved.as_dict(), sort_keys=False), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    interruptible()
    # Before numpy/torch start their thread pools (CPU timings swing ~20x with spinning waits);
    # spawned episode workers inherit it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits on --help (0) and on bad arguments (2)
        return e.code if isinstance(e.code, int) else 2

    from geo4d_policy.eval.runner import DEFAULT_ENV_FACTORY, RolloutConfig, RolloutConfigError, run_rollouts
    from geo4d_policy.interface import UnknownNameError, canonical_task_name
    from geo4d_policy.policies.registry import PolicyUnavailableError, check_policy_available

    try:
        task = canonical_task_name(args.task)
        check_policy_available(args.policy)
        options = parse_policy_options(args.policy_option)
        runtime = parse_policy_options(args.runtime_option)
    except (UnknownNameError, PolicyUnavailableError, ValueError) as e:
        return _error(str(e))
    if args.meshcat and args.workers != 1:
        return _error(f"--meshcat needs --workers 1 (got --workers {args.workers})")
    if args.resume_anyway and not args.resume:
        return _error("--resume-anyway needs --resume")
    if args.data_seeds and args.seed_stream not in (None, "data"):
        return _error(f"--data-seeds is --seed-stream data; it contradicts --seed-stream {args.seed_stream}")
    if args.show_policy_config:
        return _show_policy_config(task, args.policy, args.policy_config, options)

    config = RolloutConfig(
        task=task,
        policy=args.policy,
        episodes=args.episodes,
        seed=args.seed,
        workers=args.workers,
        out_dir=args.out,
        resume=args.resume,
        video=args.video,
        meshcat=args.meshcat,
        policy_options=options,
        policy_config=args.policy_config,
        runtime_options=runtime,
        resume_anyway=args.resume_anyway,
        device=args.device,
        episode_timeout_s=args.episode_timeout,
        ray_address=args.ray,
        ray_gpus_per_episode=args.ray_gpus_per_episode,
        views=args.views,
        seed_stream="data" if args.data_seeds else args.seed_stream or "eval",
    )
    from geo4d_policy.eval.ray_backend import RayUnavailableError

    try:
        run_rollouts(config, env_factory=args.env_factory or DEFAULT_ENV_FACTORY)
    except (RolloutConfigError, UnknownNameError, PolicyUnavailableError, RayUnavailableError) as e:
        return _error(str(e))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

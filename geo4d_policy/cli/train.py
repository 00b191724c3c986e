"""``geo4d-train``: train the image/pointmap VAEs and the 4D generator on collected datasets.

    geo4d-train vae --modality rgb|pointmap --data DIR [DIR ...] --out RUN [--config small]
                    [--steps N] [--batch-size B] [--init CKPT] [--resume]
    geo4d-train generator --task T|all --data DIR [DIR ...] --out RUN [--config small]
                    --image-vae CKPT --pointmap-vae CKPT [--steps N] [--batch-size B]
                    [--init PATH | --init-svd-unet FILE] [--resume]
    geo4d-train segmenter --data DIR [DIR ...] --out RUN [--config small|tiny|YAML] [--steps N]
                    [--batch-size B] [--lr LR] [--threads T] [--resume] [--export DIR]
    geo4d-train segmenter --data DIR [DIR ...] --out FILE.json --evaluate CKPT [--frames N]
                    (held-out IoU of a checkpoint on clean and degraded frames; no training)
    geo4d-train diffusion_policy --data DIR [DIR ...] --out RUN [--config small|tiny|YAML] [--steps N]
                    [--batch-size B] [--max-time S] [--init-image-encoder FILE | --init CKPT] [--resume]
                    [--export DIR [--export-dtype fp16|int8]]

One generator may be trained on several tasks at once (``--task all`` with one dataset per
task): it is conditioned on the task, which keeps the shipped checkpoints within the
repository's size budget. Checkpoints: ``RUN/step_<N>/`` (config.json + model.safetensors of
the EMA weights + training state) with a ``RUN/last`` pointer; ``--resume`` continues exactly.
``RUN/provenance.json`` records the code version, the resolved recipe, the datasets (hash of
their index), seeds and device (``geo4d_policy.provenance``); ``--resume`` refuses a run made
with other code or another recipe unless ``--resume-anyway`` (how long and where it trains,
e.g. ``--steps``, ``--workers``, ``--device``, may change). ``--evaluate`` puts the provenance
into its JSON.

Several GPUs (vae, generator, diffusion_policy): the same command under
``accelerate launch --multi_gpu --num_processes N -m geo4d_policy.cli.train ...`` (one process per
GPU; more processes than GPUs are refused before anything loads). ``--batch-size`` is per
process: each step trains on ``N x batch-size`` samples, the same samples and noise one process
with that batch would train on (:mod:`geo4d_policy.train.distributed`), at the recipe's learning
rate. A run resumes on any number of GPUs that keeps its global batch (``provenance.json``
compares the global batch and records each session's number of processes).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from geo4d_policy.cli import interruptible

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # CPU timings swing 20x without it (notes/mlstack.md)

RECIPE_OVERRIDES = {"steps": "max_steps", "batch_size": "batch_size", "lr": "lr", "threads": "num_threads",
                    "seed": "seed", "device": "device", "workers": "num_workers", "max_time": "max_time_s",
                    "ckpt_every": "ckpt_every", "init_image_encoder": "init_image_encoder"}
"""Command-line options that override a segmenter / Diffusion Policy recipe field (option -> field)."""

SESSION_FIELDS = frozenset({"max_steps", "max_time_s", "progress", "num_workers", "num_threads", "device",
                            "ckpt_every", "log_every", "keep_last", "compile_unet"})
"""Recipe fields that say how long or where a run trains, not what it trains: a resume may change them."""


class _TaskTagged:
    """A dataset whose samples carry their task name (the generator is task-conditioned)."""

    def __init__(self, dataset, task: str) -> None:
        self.dataset, self.task = dataset, task

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        sample = dict(self.dataset[i])
        sample["task"] = self.task
        return sample

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


def make_data_iter_factory(data_dirs: Sequence[str], *, batch_size: int, num_workers: int, seed: int,
                           split: str = "train"):
    """``factory(epoch=, rank=, world_size=)`` over the clip datasets of ``data_dirs`` (``batch_size``
    per process: each process's rows of the epoch's global batches)."""
    import torch
    from torch.utils.data import ConcatDataset, DataLoader

    from geo4d_policy.data.datasets import GeneratorClipDataset
    from geo4d_policy.data.format import load_meta
    from geo4d_policy.train.distributed import global_batch_rows

    parts = []
    for d in data_dirs:
        meta = load_meta(d)
        parts.append(_TaskTagged(GeneratorClipDataset(d, split=split, seed=seed), meta.task))
    dataset = ConcatDataset(parts)

    def factory(*, epoch: int, rank: int, world_size: int):
        for part in parts:
            part.set_epoch(epoch)
        g = torch.Generator().manual_seed(seed * 7919 + epoch)
        order = global_batch_rows(torch.randperm(len(dataset), generator=g), batch_size, rank, world_size).tolist()
        return DataLoader(torch.utils.data.Subset(dataset, order), batch_size=batch_size, shuffle=False,
                          num_workers=num_workers, drop_last=True, persistent_workers=False,
                          pin_memory=torch.cuda.is_available())

    return factory


def _model_config(name: str, overrides: Sequence[str]):
    """The model config ``name`` with dotted ``KEY=VALUE`` overrides (values parsed as YAML)."""
    import yaml

    from geo4d_policy.config import ConfigError, to_dict
    from geo4d_policy.models.config import load_model_config, model_config_from_dict

    cfg = load_model_config(name)
    if not overrides:
        return cfg
    data = to_dict(cfg)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--override expects KEY=VALUE, got {item!r}")
        node, parts = data, key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"--override {key}: {part!r} is not a section of the model config")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"--override {key}: unknown field; valid: {sorted(node)}")
        node[parts[-1]] = yaml.safe_load(value)
    return model_config_from_dict(data)


def training_seeds(data_dirs: Sequence[str], *, init: str | None, max_episodes: int | None
                   ) -> dict[str, tuple[int, ...]]:
    """task -> data seeds of the episodes a run trains on, plus those ``init``'s checkpoint records."""
    from geo4d_policy.data.format import load_meta
    from geo4d_policy.models.checkpoint import read_config_json

    seeds: dict[str, set[int]] = {}
    for d in data_dirs:
        meta = load_meta(d)
        eps = sorted(e.seed for e in meta.episodes)[: max_episodes or None]
        seeds.setdefault(meta.task, set()).update(eps)
    if init is not None:
        try:
            recorded = read_config_json(init).get("training", {}).get("train_config", {}).get("data_seeds", {})
        except Exception:  # not a checkpoint of ours (e.g. a VAE run): nothing recorded
            recorded = {}
        for task, lst in (recorded or {}).items():
            seeds.setdefault(task, set()).update(int(x) for x in lst)
    return {t: tuple(sorted(v)) for t, v in seeds.items()}


def gpu_data_iter_factory(config, data_dirs: Sequence[str], *, batch_size: int, seed: int,
                          max_episodes: int | None, workers: int, cache_pairs: int):
    """The device-resident data path: a FrameStore, and for the generator a latent cache.

    Several processes: each holds the frames on its own GPU and encodes its share of the
    latent cache (:meth:`~geo4d_policy.train.gpu_data.LatentCache.build`)."""
    import time

    import torch

    from geo4d_policy.data.frame_store import FrameStore
    from geo4d_policy.data.geometry import PointmapNormalization
    from geo4d_policy.train import gpu_data
    from geo4d_policy.train.distributed import launch_state

    state = launch_state()
    device = state.device

    def say(msg: str) -> None:
        if state.is_main_process:
            print(f"geo4d-train: {msg}", file=sys.stderr)

    t0 = time.perf_counter()
    store = FrameStore.load(data_dirs, device=device, cameras="train", max_episodes=max_episodes,
                            workers=max(workers, 1))
    say(f"{store.num_episodes} episodes on {device} ({store.nbytes() / 1e9:.2f} GB) in "
        f"{time.perf_counter() - t0:.1f} s")
    mc = config.model
    if config.kind != "generator":
        return gpu_data.frame_batch_factory(store, kind=config.kind, batch_size=batch_size, seed=seed,
                                            normalization=PointmapNormalization(*mc.pointmap_range))
    from geo4d_policy.train.trainer import build_generator_for_cache

    t0 = time.perf_counter()
    model = build_generator_for_cache(config).to(device)
    cache = gpu_data.LatentCache.build(model, store, pairs_per_episode=cache_pairs, seed=seed,
                                       rank=state.process_index, world_size=state.num_processes)
    del model, store
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    say(f"latent cache {cache.nbytes() / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s "
        f"({state.num_processes} process{'es' if state.num_processes > 1 else ''} encoding)")
    return cache.batch_factory(batch_size=batch_size, num_frames=mc.num_frames, seed=seed)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="geo4d-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    for name in ("vae", "generator"):
        s = sub.add_parser(name)
        s.add_argument("--data", nargs="+", required=True, help="dataset directories (geo4d-collect)")
        s.add_argument("--out", required=True, help="run directory")
        s.add_argument("--config", default="small", help="model config: tiny|small|paper or a YAML path")
        s.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the recipe's)")
        s.add_argument("--batch-size", type=int, default=4, help="samples per step and process")
        s.add_argument("--lr", type=float, default=None)
        s.add_argument("--workers", type=int, default=2, help="data-loader worker processes")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--ckpt-every", type=int, default=None)
        s.add_argument("--log-every", type=int, default=None, help="metrics period in steps (default 50)")
        s.add_argument("--resume", action="store_true")
        s.add_argument("--resume-anyway", action="store_true", help="resume even with other code or recipe")
        s.add_argument("--init", default=None, help="start from these weights (see --help of the kind)")
        s.add_argument("--max-time", type=float, default=None,
                       help="stop with a checkpoint after this many seconds of training (continue with --resume)")
        s.add_argument("--warmup-steps", type=int, default=None, help="linear learning-rate warm-up (default 500)")
        s.add_argument("--ema-decay", type=float, default=None, help="EMA decay of the shipped weights (default 0.999)")
        s.add_argument("--gpu-data", action="store_true",
                       help="hold the datasets on the training device and draw batches there (the fast "
                            "path; the generator trains on a latent cache encoded once at start)")
        s.add_argument("--max-episodes", type=int, default=None,
                       help="with --gpu-data: at most this many episodes per dataset (lowest seeds)")
        s.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                       help="model-config field by dotted path, e.g. pointmap_vae.latent_channels=16 "
                            "(YAML value syntax; repeatable)")
    sub.choices["vae"].add_argument("--modality", choices=("rgb", "pointmap"), required=True)
    sub.choices["generator"].add_argument("--cache-pairs", type=int, default=16,
                                          help="with --gpu-data: camera pairs per episode whose X^{m->n} is cached")
    g = sub.choices["generator"]
    g.add_argument("--task", required=True, help="task name, or 'all' for every dataset's task")
    g.add_argument("--image-vae", default=None,
                   help="trained image VAE checkpoint (run or step directory); default with --init: the "
                        "initial generator's own autoencoders")
    g.add_argument("--pointmap-vae", default=None, help="trained pointmap VAE checkpoint")
    g.add_argument("--init-svd-unet", default=None, help="local SVD U-Net safetensors (paper config only)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the U-Net (same weights and checkpoints; pays on CUDA in long runs)")
    s = sub.add_parser("segmenter", help="gripper part segmenter (RGB -> palm/finger classes per arm)")
    s.add_argument("--data", nargs="+", required=True, help="dataset directories (geo4d-collect)")
    s.add_argument("--out", required=True, help="run directory")
    s.add_argument("--config", default="small", help="configs/segmenter recipe: tiny|small or a YAML path")
    s.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the recipe's)")
    s.add_argument("--batch-size", type=int, default=None)
    s.add_argument("--lr", type=float, default=None)
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the recipe's)")
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: the recipe's)")
    s.add_argument("--workers", type=int, default=None, help="data-loader processes (default: the recipe's)")
    s.add_argument("--max-time", type=float, default=None,
                   help="stop cleanly (checkpoint + final evaluation) after this many seconds of training")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--resume", action="store_true")
    s.add_argument("--resume-anyway", action="store_true", help="resume even with other code or recipe")
    s.add_argument("--export", default=None, help="also write the last checkpoint here in fp16 (to ship)")
    s.add_argument("--evaluate", default=None, metavar="CKPT",
                   help="do not train: evaluate CKPT on the held-out cameras, clean and degraded (blur "
                        "sigma 1 px + noise, like generated frames), and write the JSON to --out")
    s.add_argument("--frames", type=int, default=0, help="with --evaluate: seeded subset of frames (0 = all)")
    d = sub.add_parser("diffusion_policy", help="Diffusion Policy baseline (one model for the datasets' tasks)")
    d.add_argument("--data", nargs="+", required=True, help="dataset directories (geo4d-collect), one task each")
    d.add_argument("--out", required=True, help="run directory")
    d.add_argument("--config", default="small", help="configs/policy/diffusion_policy_<NAME>.yaml or a YAML path")
    for flag, kind in (("--steps", int), ("--batch-size", int), ("--lr", float), ("--workers", int),
                       ("--seed", int), ("--ckpt-every", int), ("--max-time", float)):
        d.add_argument(flag, type=kind, default=None, help="(default: the recipe's)")
    d.add_argument("--init-image-encoder", default=None, help="local image-encoder weights (ResNet keys ok)")
    d.add_argument("--init", default=None, metavar="CKPT",
                   help="start a fresh run from this Diffusion Policy checkpoint's weights and normalisation "
                        "(e.g. the shipped one; training accumulates across machines)")
    d.add_argument("--resume", action="store_true")
    d.add_argument("--resume-anyway", action="store_true", help="resume even with other code or recipe")
    d.add_argument("--export", default=None, help="also write the last checkpoint here (to ship)")
    d.add_argument("--export-dtype", choices=("fp16", "bf16", "int8", "fp32"), default="fp16",
                   help="storage of --export (int8: per-row quantised matrices, half of fp16)")
    return p


def _overrides(args: argparse.Namespace) -> dict:
    """Recipe overrides given on the command line (see :data:`RECIPE_OVERRIDES`)."""
    return {field: getattr(args, opt) for opt, field in RECIPE_OVERRIDES.items()
            if getattr(args, opt, None) is not None}


def _identity(config: dict, **more) -> dict:
    """A recipe's plain form without its :data:`SESSION_FIELDS`, plus ``more``."""
    return {**{k: v for k, v in config.items() if k not in SESSION_FIELDS}, **more}


def _weights_digest(path: str | None) -> str | None:
    """Hash of the weights a run starts from (a run directory's ``last`` step), None for none."""
    if path is None:
        return None
    from geo4d_policy.models.checkpoint import CheckpointError, resolve_checkpoint_dir
    from geo4d_policy.provenance import path_digest

    try:
        return path_digest(resolve_checkpoint_dir(path))
    except (CheckpointError, OSError, ValueError):
        return path_digest(path)


def _record_provenance(args: argparse.Namespace, recipe: object, *, launch=None, **more) -> dict | None:
    """Write ``RUN/provenance.json`` (checking the run's on ``--resume``); see the module docstring.

    ``launch`` (:func:`~geo4d_policy.train.distributed.launch_state`; None: one process): every
    process checks, the main one writes; the recipe's per-process ``batch_size`` is compared as
    the global batch, and the number of processes is recorded, not compared.
    """
    from pathlib import Path

    from geo4d_policy import provenance
    from geo4d_policy.config import to_dict

    out = Path(args.out)
    processes = 1 if launch is None else launch.num_processes
    config = _identity(to_dict(recipe), command=args.what, data=provenance.data_identity(args.data), **more)
    if config.get("batch_size") is not None:
        config["batch_size"] = config["batch_size"] * processes
    return provenance.start_provenance(
        out, command=f"geo4d-train {args.what}", config=config,
        seeds={"seed": config.get("seed"), "seed_stream": "data"}, device=getattr(args, "device", None),
        has_run=(out / "last").exists(), resume=args.resume, anyway=args.resume_anyway,
        session_info={"data_dirs": [str(d) for d in args.data], "recipe": str(args.config),
                      "num_processes": processes},
        what="training run", write=launch is None or launch.is_main_process)


def _train_segmenter(args: argparse.Namespace) -> int:
    """The ``segmenter`` subcommand (errors propagate to :func:`main`, which maps them to exit 2)."""
    from geo4d_policy.train.segmenter import export_segmenter, load_segmenter_train_config, train_segmenter

    if args.evaluate:
        import json
        from pathlib import Path

        from geo4d_policy.train.segmenter import evaluate_checkpoint

        from geo4d_policy import provenance

        ev = evaluate_checkpoint(args.evaluate, args.data, max_frames=args.frames, seed=args.seed or 0,
                                 num_threads=args.threads or 0, device=args.device or "cpu")
        ev["provenance"] = provenance.new_provenance(
            command="geo4d-train segmenter --evaluate", device=args.device or "cpu",
            config={"checkpoint": provenance.path_digest(args.evaluate), "data": provenance.data_identity(args.data),
                    "frames": args.frames},
            seeds={"seed": args.seed or 0, "seed_stream": "data"},
            session_info={"checkpoint_path": str(args.evaluate), "data_dirs": [str(d) for d in args.data]})
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(ev, indent=1) + "\n")
        for tag, e in (("clean", ev), ("degraded", ev["degraded"])):
            print(f"geo4d-train: {tag} held-out gripper mIoU {e['miou_gripper']:.3f}, whole-gripper IoU "
                  + ", ".join(f"{a} {v:.3f}" for a, v in e["arm_iou"].items() if v is not None)
                  + f" ({e['n_frames']} frames)")
        return 0
    config = load_segmenter_train_config(args.config, overrides=_overrides(args))
    config.progress = config.progress and (sys.stderr.isatty() or bool(os.environ.get("GEO4D_PROGRESS")))
    _record_provenance(args, config)
    result = train_segmenter(config, data_dirs=args.data, out_dir=args.out, resume=args.resume)
    if args.export:
        export_segmenter(args.out, args.export)
    if result.heldout is not None:
        print(f"geo4d-train: held-out gripper mIoU {result.heldout['miou_gripper']:.3f} "
              f"({result.heldout['n_frames']} frames)")
    print(f"geo4d-train: done; last checkpoint {result.checkpoint} (step {result.step})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    interruptible()
    args = build_parser().parse_args(argv)
    from geo4d_policy.config import ConfigError, to_dict
    from geo4d_policy.data.format import DatasetError, load_meta
    from geo4d_policy.models.config import load_model_config
    from geo4d_policy.interface import UnknownNameError, canonical_task_name
    from geo4d_policy.train.config import TrainConfig
    from geo4d_policy.train.trainer import train

    try:
        if args.what == "segmenter":
            return _train_segmenter(args)
        from geo4d_policy.train.distributed import launch_state

        launch = launch_state()  # refuses more processes than GPUs before anything loads
        if args.what == "diffusion_policy":
            from geo4d_policy.train.diffusion_policy import load_dp_train_config, run_cli

            init = {"init_from": args.init} if args.init is not None else {}
            _record_provenance(args, load_dp_train_config(args.config, overrides={**_overrides(args), **init}),
                               launch=launch, init_from=_weights_digest(args.init))
            return run_cli(args)
        tasks = tuple(load_meta(d).task for d in args.data)
        if args.what == "generator" and args.task != "all":
            wanted = canonical_task_name(args.task)
            if any(t != wanted for t in tasks):
                raise ValueError(f"--task {wanted} but the datasets hold {sorted(set(tasks))}")
        kind = "generator" if args.what == "generator" else f"{'image' if args.modality == 'rgb' else 'pointmap'}_vae"
        if kind == "generator" and args.image_vae is None and args.init is None:
            raise ValueError("generator training needs --image-vae/--pointmap-vae, or --init GENERATOR_CKPT "
                             "whose autoencoders it keeps")
        overrides = {k: v for k, v in (("max_steps", args.steps), ("lr", args.lr), ("ckpt_every", args.ckpt_every),
                                       ("max_time_s", args.max_time), ("warmup_steps", args.warmup_steps),
                                       ("ema_decay", args.ema_decay), ("log_every", args.log_every)) if v is not None}
        model_cfg = _model_config(args.config, args.override)
        config = TrainConfig(
            kind=kind, model=model_cfg, tasks=tuple(dict.fromkeys(tasks)), seed=args.seed,
            image_vae=getattr(args, "image_vae", None), pointmap_vae=getattr(args, "pointmap_vae", None),
            init_from=args.init, init_svd_unet=getattr(args, "init_svd_unet", None),
            progress=sys.stderr.isatty() or bool(os.environ.get("GEO4D_PROGRESS")),
            data_seeds=training_seeds(args.data, init=args.init, max_episodes=args.max_episodes),
            batch_size=args.batch_size, compile_unet=bool(getattr(args, "compile", False)), **overrides,
        )
        model = config.model if not isinstance(config.model, str) else load_model_config(config.model)
        _record_provenance(args, config, launch=launch, model=to_dict(model),
                           **{k: _weights_digest(getattr(config, k)) for k in ("image_vae", "pointmap_vae", "init_from",
                                                                                "init_svd_unet")})
        if args.gpu_data:
            factory = gpu_data_iter_factory(config, args.data, batch_size=args.batch_size, seed=args.seed,
                                            max_episodes=args.max_episodes, workers=args.workers,
                                            cache_pairs=getattr(args, "cache_pairs", 16))
        else:
            factory = make_data_iter_factory(args.data, batch_size=args.batch_size, num_workers=args.workers,
                                             seed=args.seed)
        result = train(config, data_iter_factory=factory, out_dir=args.out, resume=args.resume)
    except (UnknownNameError, ValueError, ConfigError, DatasetError, FileExistsError, FileNotFoundError) as e:
        print(f"geo4d-train: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ngeo4d-train: interrupted; continue with --resume", file=sys.stderr)
        return 130
    if launch.is_main_process:
        print(f"geo4d-train: done; last checkpoint {result.checkpoint} (step {result.step})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

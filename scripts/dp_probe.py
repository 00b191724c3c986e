#!/usr/bin/env python
"""Validation probe of a Diffusion Policy checkpoint: per-arm errors of its sampled actions.

    python scripts/dp_probe.py --checkpoint DIR --data DIR [DIR ...] [--seeds S ...] [--size N]
                               [--device cpu|cuda] [--out probe.json]

On the held-out episodes of each dataset (the training split rule of
:func:`geo4d_policy.train.diffusion_policy.split_episodes` with the checkpoint's
``val_fraction``, or explicit ``--seeds``), ``--size`` fixed samples per dataset and view set are
scored: ``val`` (random training-view pairs) and ``val_novel`` (held-out views). Errors are the
mean over the executed actions of the gripper position (mm), rotation (deg) and width (mm) per
arm (:func:`geo4d_policy.train.diffusion_policy.probe_errors`). The JSON carries its provenance
(:func:`geo4d_policy.provenance.new_provenance`: code version, the checkpoint and datasets by
hash, the seeds and their stream, device). The held-out episodes are data-stream episodes that
training never saw.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from geo4d_policy import provenance
from geo4d_policy.config import atomic_write_text
from geo4d_policy.data.format import load_meta
from geo4d_policy.interface import canonical_task_name
from geo4d_policy.models.checkpoint import resolve_checkpoint_dir
from geo4d_policy.models.diffusion_policy import DiffusionPolicyModel
from geo4d_policy.train.diffusion_policy import heldout_probe_sets, probe_batch, run_probes, split_episodes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", nargs="+", required=True, help="dataset directories (one task each)")
    p.add_argument("--seeds", type=int, nargs="*", default=None, help="episodes to probe (default: held-out split)")
    p.add_argument("--size", type=int, default=64, help="samples per dataset and view set")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="sampling noise and camera-pair draws")
    p.add_argument("--out", default=None, help="JSON file to write")
    args = p.parse_args(argv)

    model = DiffusionPolicyModel.from_pretrained(args.checkpoint, device=args.device)
    cfg = model.config
    info = model.training_record or {}
    fraction = float(info.get("train_config", {}).get("val_fraction", 0.05))
    results, seeds_used = {}, {}
    for d in args.data:
        meta = load_meta(d)
        task = canonical_task_name(meta.task)
        seeds = args.seeds if args.seeds is not None else split_episodes([e.seed for e in meta.episodes], fraction)[1]
        seeds_used[str(d)] = list(seeds)
        if not seeds:
            continue
        sets = heldout_probe_sets(d, cfg, seeds=seeds, task_id=cfg.tasks.index(task),
                                  stats=model.normalization[task], seed=args.seed)
        results[task] = run_probes(model, {k: probe_batch(v, args.size) for k, v in sets.items()}, seed=args.seed)
    config = {"checkpoint": provenance.path_digest(resolve_checkpoint_dir(args.checkpoint)), "data": provenance.data_identity(args.data),
              "samples_per_set": args.size, "val_fraction": fraction}
    record = {"checkpoint": str(args.checkpoint), "steps_trained": info.get("total_steps", info.get("step")),
              "data": [str(d) for d in args.data], "seeds": seeds_used, "samples_per_set": args.size,
              "results": results,
              "provenance": provenance.new_provenance(
                  command="scripts/dp_probe.py", config=config, device=args.device,
                  seeds={"seed": args.seed, "episodes": seeds_used, "seed_stream": "data (held-out split)"})}
    for task, r in results.items():
        for name in ("val", "val_novel"):
            if f"{name}/left/pos_mm" in r:
                print(f"{task:28s} {name:9s} " + "  ".join(
                    f"{arm}: {r[f'{name}/{arm}/pos_mm']:6.1f} mm {r[f'{name}/{arm}/rot_deg']:5.1f} deg "
                    f"{r[f'{name}/{arm}/width_mm']:5.1f} mm" for arm in ("left", "right")))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.out), json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

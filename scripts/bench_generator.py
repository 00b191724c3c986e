"""Benchmark the 4D generator: parameter counts, fp16 sizes and one prediction's latency.

One prediction = encode the two conditioning views (RGB + pointmap), 25 Euler EDM steps over
two views x 10 frames at 128x160 pixels (16x20 latents), decode RGB and pointmaps of both
views. Random weights (timing does not depend on them). On CUDA the prediction runs under bf16
autocast. ``paper`` is counted on the meta device (no memory) and not timed by default.

    .venv/bin/python scripts/bench_generator.py                      # tiny + small on the CPU
    .venv/bin/python scripts/bench_generator.py --device cuda --configs tiny small paper
    # old vs new training path (clips/s) of a generator checkpoint on real datasets:
    python scripts/bench_generator.py --device cuda --paths-checkpoint CKPT --paths-data DIR ... --train-steps 30
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _observation(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(2, h, w, 3), dtype=np.uint8)
    yy, xx = np.meshgrid(np.linspace(-0.3, 0.3, h), np.linspace(-0.4, 0.4, w), indexing="ij")
    pm = np.stack([xx, yy, 0.9 + 0.1 * xx], axis=-1).astype(np.float32)
    return rgb, pm, pm[:, ::-1].copy()


def _bench_training(name: str, batch: int, steps: int) -> float:
    """Median seconds per generator training step on synthetic batches (random VAEs)."""
    import json as _json
    import tempfile

    from geo4d_policy.models.config import load_model_config
    from geo4d_policy.train.config import TrainConfig
    from geo4d_policy.train.trainer import train

    cfg = load_model_config(name)
    g = torch.Generator().manual_seed(0)
    f, h, w = cfg.num_frames, cfg.height, cfg.width
    clip = {
        "rgb_cond": torch.rand(batch, 2, 3, h, w, generator=g) * 2 - 1,
        "rgb": torch.rand(batch, 2, f, 3, h, w, generator=g) * 2 - 1,
        "pm_cond": torch.rand(batch, 2, 3, h, w, generator=g) - 0.2,
        "pm": torch.rand(batch, 2, f, 3, h, w, generator=g) - 0.2,
        "valid": torch.rand(batch, 2, f, h, w, generator=g) > 0.1,
        "gripper": torch.rand(batch, 2, f, h, w, generator=g) > 0.95,
    }

    def factory(*, epoch: int, rank: int, world_size: int):
        return [clip] * steps

    with tempfile.TemporaryDirectory() as tmp:
        tc = TrainConfig(kind="generator", model=name, tasks=(cfg.tasks[0],), max_steps=steps, log_every=1,
                         ckpt_every=10**9, progress=False)
        train(tc, data_iter_factory=factory, out_dir=tmp)
        rows = [_json.loads(x) for x in open(os.path.join(tmp, "metrics.jsonl"))]
    return statistics.median(r["s_per_step"] for r in rows[2:])


def _bench_training_paths(checkpoint: str, data: list[str], *, old_batch: int, new_batch: list[int], steps: int,
                          workers: int, device: str, compile_mode: str | None = None) -> dict:
    """Clips per second of the old and the new generator training paths on the same data and GPU.

    old: clips read from HDF5 by a DataLoader (``workers`` processes), encoded by the frozen
    VAEs every step, per-tensor AdamW and EMA, a host read of the loss every step (what
    ``train()`` did before the device-resident path). new: the latent cache on the device,
    batches drawn there, fused AdamW, one multi-tensor EMA kernel, no host synchronisation.
    Both start from ``checkpoint``'s U-Net and VAEs; the first 3 steps of each are not timed.
    """
    from geo4d_policy.cli.train import make_data_iter_factory
    from geo4d_policy.data.frame_store import FrameStore
    from geo4d_policy.models.pipeline import Generator4D
    from geo4d_policy.train.ema import EMA
    from geo4d_policy.train.gpu_data import LatentCache

    dev = torch.device(device)
    out = {}
    model = Generator4D.from_pretrained(checkpoint, device=device)
    model.freeze_vaes()
    model.unet.train()
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    # --- old path ---------------------------------------------------------------------------
    opt = torch.optim.AdamW(model.unet.parameters(), lr=1e-5)
    shadow = {n: p.detach().float().clone() for n, p in model.unet.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    loader = make_data_iter_factory(data, batch_size=old_batch, num_workers=workers, seed=0)(
        epoch=0, rank=0, world_size=1)
    it = iter(loader)
    times = []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        batch = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in next(it).items()}
        with torch.autocast(**amp):
            loss, _ = model.training_loss(batch, generator=gen)
        float(loss)  # the old loop read the loss every step (finite check, progress bar)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        for n, p in model.unet.named_parameters():
            shadow[n].lerp_(p.detach().float(), 1e-3)
        sync()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    out["old"] = {"batch": old_batch, "s_per_step": statistics.median(times),
                  "clips_per_s": old_batch / statistics.median(times)}
    del it, loader
    # --- new path ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    store = FrameStore.load(data, device=device, cameras="train", workers=workers)
    cache = LatentCache.build(model, store, pairs_per_episode=16)
    del store
    out["cache_build_s"] = time.perf_counter() - t0
    out["cache_GB"] = cache.nbytes() / 1e9
    from geo4d_policy.train.trainer import attention_backends

    opt = torch.optim.AdamW(model.unet.parameters(), lr=1e-5, fused=dev.type == "cuda")
    ema = EMA(model.unet, decay=0.999)
    gdev = torch.Generator(device=dev).manual_seed(0)
    out["new"] = []
    runs = [(b, False) for b in new_batch]
    if compile_mode is not None:  # then the same batches with the U-Net compiled (train --compile)
        runs += [(b, True) for b in new_batch]
    is_compiled = False
    for b, compiled in runs:
        if compiled and not is_compiled:
            model.unet.compile(dynamic=False, mode=None if compile_mode == "default" else compile_mode)
            is_compiled = True
        batches = cache.batch_factory(batch_size=b, num_frames=model.config.num_frames)(epoch=0, rank=0, world_size=1)
        try:
            for i in range(steps + 3):
                if i == 3:
                    sync()
                    t0 = time.perf_counter()
                batch = next(batches)
                with torch.autocast(**amp), attention_backends(dev):
                    loss, _ = model.training_loss(batch, generator=gdev)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                ema.update(i)
            sync()
        except torch.OutOfMemoryError as e:  # report the size that does not fit, keep the others
            out["new"].append({"batch": b, "compiled": compiled, "error": f"out of memory: {e}"[:200]})
            torch.cuda.empty_cache()
            continue
        dt = (time.perf_counter() - t0) / steps
        out["new"].append({"batch": b, "compiled": compiled, "s_per_step": dt, "clips_per_s": b / dt})
    best = max((r for r in out["new"] if "clips_per_s" in r), key=lambda r: r["clips_per_s"])
    out["speedup"] = best["clips_per_s"] / out["old"]["clips_per_s"]
    return out


def main() -> None:
    from geo4d_policy.models.config import load_model_config
    from geo4d_policy.models.pipeline import Generator4D, fp16_megabytes, parameter_summary

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["tiny", "small"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=1, help="timed predictions per config (median reported)")
    ap.add_argument("--time-paper", action="store_true", help="also time the paper size (slow, large)")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                    help="weights dtype for prediction (fp32 runs under bf16 autocast on CUDA)")
    ap.add_argument(
        "--compile", default=None,
        help="torch.compile mode for the U-Net (default, reduce-overhead, ...; CUDA); with --paths-checkpoint "
             "the new training path is also timed compiled (geo4d-train generator --compile)"
    )
    ap.add_argument("--train-batch", type=int, default=0, help="also time training steps at this batch size")
    ap.add_argument(
        "--train-steps", type=int, default=12, help="training steps to run (the first 2 are not timed)"
    )
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--paths-checkpoint", default=None,
                    help="with --paths-data: time the old and new training paths of this generator checkpoint")
    ap.add_argument("--paths-data", nargs="+", default=None, help="datasets for the training-path benchmark")
    ap.add_argument("--old-batch", type=int, default=16)
    ap.add_argument("--new-batch", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--workers", type=int, default=12)
    args = ap.parse_args()
    if args.paths_checkpoint:
        r = _bench_training_paths(args.paths_checkpoint, args.paths_data, old_batch=args.old_batch,
                                  new_batch=args.new_batch, steps=args.train_steps, workers=args.workers,
                                  device=args.device, compile_mode=args.compile)
        print(f"training paths on {args.device}: old {r['old']['clips_per_s']:.1f} clips/s "
              f"(batch {args.old_batch}, {r['old']['s_per_step']:.3f} s/step); cache {r['cache_GB']:.2f} GB built "
              f"in {r['cache_build_s']:.1f} s")
        for n in r["new"]:
            print(f"  new{', compiled' if n['compiled'] else ''}, batch {n['batch']}: " + (n["error"] if "error" in n else
                  f"{n['clips_per_s']:.1f} clips/s ({n['s_per_step']:.3f} s/step), "
                  f"x{n['clips_per_s'] / r['old']['clips_per_s']:.1f}"))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"device": args.device, "training_paths": r}, fh, indent=2)
        return

    dev = torch.device(args.device)
    print(f"torch {torch.__version__}, device {dev}, threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    results = []
    for name in args.configs:
        cfg = load_model_config(name)
        timed = name != "paper" or args.time_paper
        torch.manual_seed(0)
        if timed:
            model = Generator4D(cfg, trained_tasks=cfg.tasks[:1]).to(dev).eval()
            if args.dtype == "bf16":
                model = model.to(torch.bfloat16)
            if args.compile:
                model.compile_unet(mode=args.compile)
        else:
            with torch.device("meta"):
                model = Generator4D(cfg, trained_tasks=cfg.tasks[:1])
        counts = parameter_summary(model)
        rec = {
            "config": name,
            "resolution": [cfg.height, cfg.width],
            "latent": list(cfg.latent_size),
            "frames": cfg.num_frames,
            "dtype": args.dtype,
            "compile": args.compile,
            "params": counts,
            "fp16_MB": {k: round(fp16_megabytes(v), 2) for k, v in counts.items()},
        }
        lh, lw = cfg.latent_size
        print(f"\n== {name}: {cfg.height}x{cfg.width} px -> {lh}x{lw} latents, "
              f"{cfg.num_frames} frames")
        for k, v in counts.items():
            print(f"  {k:28s} {v / 1e6:9.3f} M   fp16 {fp16_megabytes(v):8.2f} MB")
        if timed:
            rgb, pn, pm = _observation(cfg.height, cfg.width)
            t_warm = time.perf_counter()
            model.predict(rgb, pn, pm, num_steps=2)  # warm-up: first passes on new shapes are slow
            rec["warmup_s"] = time.perf_counter() - t_warm
            runs = []
            for _ in range(args.repeats):
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0, c0 = time.perf_counter(), time.process_time()
                out = model.predict(rgb, pn, pm, num_steps=args.steps, seed=0)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                out["timings"]["wall"] = time.perf_counter() - t0
                # CPU time of this process: on a shared machine, cpu / threads estimates the
                # wall time the prediction would take with the cores to itself.
                out["timings"]["cpu"] = time.process_time() - c0
                runs.append(out["timings"])
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            rec["latency_s"] = med
            rec["steps"] = args.steps
            if dev.type == "cuda":
                rec["peak_gpu_GiB"] = torch.cuda.max_memory_allocated() / 2**30
            print(f"  predict ({args.steps} steps, 2 views): total {med['wall']:.2f} s "
                  f"(encode {med['encode']:.2f}, sample {med['sample']:.2f}, decode {med['decode']:.2f}); "
                  f"{med['sample'] / args.steps * 1000:.0f} ms per step; process CPU time {med['cpu']:.2f} s")
        del model
        if timed and args.train_batch > 0:
            rec["train_s_per_step"] = _bench_training(name, args.train_batch, args.train_steps)
            print(f"  train step (batch {args.train_batch} clips, fwd+bwd+AdamW+EMA): "
                  f"{rec['train_s_per_step']:.3f} s")
        results.append(rec)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": str(dev), "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()

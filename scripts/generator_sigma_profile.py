"""Where a generator's denoiser fails: its x0 error per noise level, view and modality.

For validation clips of each dataset (held-out cameras), the clean latents ``x0`` (or, for a
residual-target model, their change from the conditioning frame times ``edm.change_scale``, the
diffused quantity) are noised at each
``--sigmas`` level and denoised once. Per (sigma, view n|m, rgb|pm) the RMS error of the
denoised estimate is printed beside two references: "F = 0", the error of the preconditioning
skip path alone (what a network that has learned nothing gives), and the RMS of the target
itself ("predict nothing": for residual targets, repeating the current frame). A trained denoiser
is below both at every level; where it is not, the sampler passes that level's noise into the
frames (docs/decisions.md). Each figure is given per region of latent cells: ``all``;
``gripper``, the cells a gripper occupies in the conditioning frame or in the target frame (where
the motion is); and its two parts that change, ``arrive`` (a gripper in the target frame, none in
the conditioning frame) and ``leave`` (the reverse). At the high levels, where a sample's motion
is decided, a denoiser that has not learned the motion is no better there than "predict
nothing"; one that erases the gripper where it is but does not draw it where it goes is good on
``leave`` and poor on ``arrive``.

    python scripts/generator_sigma_profile.py --checkpoint assets/checkpoints/geo4d_small \\
        --data VAL_DIR [VAL_DIR ...] --clips 6 --out profile.json

Writes ``--out`` (JSON: one row per task, sigma, view and modality, and the means over tasks).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict

import torch

DEFAULT_SIGMAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def _rms(x: torch.Tensor, cells: torch.Tensor | None = None) -> float:
    """RMS of ``x`` (B, F, C, h, w), over every element or over the ``cells`` (B, F, h, w) only."""
    if cells is None:
        return x.pow(2).mean().sqrt().item()
    w = cells[:, :, None].expand_as(x).to(x.dtype)
    return (x.pow(2).mul(w).sum() / w.sum().clamp_min(1.0)).sqrt().item()


def profile(checkpoint: str, data: list[str], *, clips: int, sigmas: tuple[float, ...], seed: int = 0) -> dict:
    from geo4d_policy.data.datasets import GeneratorClipDataset
    from geo4d_policy.data.format import load_meta
    from geo4d_policy.models.edm import denoise, diffused_target
    from geo4d_policy.models.inputs import mask_any_on_latent_grid
    from geo4d_policy.models.pipeline import Generator4D
    from geo4d_policy.models.pretrained import canonical_task

    g = Generator4D.from_pretrained(checkpoint)
    cfg = g.config
    lat = cfg.latent_channels
    groups = [("rgb", slice(0, lat))] + ([("pm", slice(lat, None))] if cfg.use_pointmaps else [])
    sd = cfg.edm.sigma_data
    rows = []
    for root in data:
        task = canonical_task(load_meta(root).task)
        ds = GeneratorClipDataset(root, split="heldout", n_future=cfg.num_frames,
                                  resolution=(cfg.height, cfg.width), seed=seed, normalization=g.normalization)
        if len(ds) == 0:
            raise ValueError(f"{root}: no clips")
        pick = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:clips].tolist()
        batch = torch.utils.data.default_collate([ds[i] for i in pick])
        cond, x0 = g.encode_batch(batch)
        target = diffused_target(x0, cond, cfg)
        f = g.image_vae.downsample_factor
        now = mask_any_on_latent_grid(batch["gripper_cond"], f)[:, :, None]  # (B, 2, 1, h, w)
        future = mask_any_on_latent_grid(batch["gripper"], f)  # (B, 2, F, h, w)
        regions = {"all": None, "gripper": future | now, "arrive": future & ~now, "leave": now & ~future}
        tids = g.unet.task_ids([task] * len(pick), device="cpu")
        noise_gen = torch.Generator().manual_seed(seed + 1)
        for s in sigmas:
            noisy = target + s * torch.randn(target.shape, generator=noise_gen)
            with torch.no_grad():
                d = denoise(g.unet, noisy, torch.full((len(pick),), float(s)), cond, task_ids=tids, config=cfg)
            c_skip = sd**2 / (s**2 + sd**2)
            for v, view in ((0, "n"), (1, "m")):
                for mod, sl in groups:
                    t = target[:, v, :, sl]
                    for region, cells in regions.items():
                        view_cells = None if cells is None else cells[:, v]
                        rows.append({"task": task, "sigma": s, "view": view, "modality": mod, "region": region,
                                     "denoiser_rmse": _rms(d[:, v, :, sl] - t, view_cells),
                                     "skip_only_rmse": _rms(c_skip * noisy[:, v, :, sl] - t, view_cells),
                                     "target_rms": _rms(t, view_cells)})
    means = defaultdict(list)
    for r in rows:
        means[(r["region"], r["sigma"], r["view"], r["modality"])].append(r)
    mean_rows = [{"sigma": s, "view": v, "modality": m, "region": reg,
                  **{k: sum(r[k] for r in rs) / len(rs) for k in ("denoiser_rmse", "skip_only_rmse", "target_rms")}}
                 for (reg, s, v, m), rs in sorted(means.items())]
    return {"checkpoint": checkpoint, "residual": cfg.edm.residual, "sigma_data": sd, "clips_per_task": clips,
            "rows": rows, "means": mean_rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", nargs="+", required=True, help="validation datasets (geo4d-collect), one task each")
    ap.add_argument("--clips", type=int, default=6, help="clips per dataset")
    ap.add_argument("--sigmas", type=float, nargs="+", default=list(DEFAULT_SIGMAS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.clips < 1 or any(not (s > 0 and math.isfinite(s)) for s in args.sigmas):
        print("generator_sigma_profile: --clips must be >= 1 and every sigma a positive number", file=sys.stderr)
        return 2
    result = profile(args.checkpoint, args.data, clips=args.clips, sigmas=tuple(args.sigmas), seed=args.seed)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print("region   sigma  view mod  denoiser  skip-only  target")
    for r in result["means"]:
        print(f"{r['region']:<8} {r['sigma']:<6} {r['view']:<4} {r['modality']:<4} {r['denoiser_rmse']:.4f}    "
              f"{r['skip_only_rmse']:.4f}     {r['target_rms']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

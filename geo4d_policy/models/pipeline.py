"""``Generator4D``: the geometry-aware 4D generator as one object (VAEs + U-Net + config).

Owns the user-facing model: building from a :class:`GeneratorConfig`, the training loss of a
dataset batch, sampling, ``predict`` on raw observations, and ``save_pretrained`` /
``from_pretrained`` checkpoint directories (``config.json`` + ``model.safetensors``).

Data conventions (shared with the dataset loader, ``geo4d_policy.data``):

* RGB in [-1, 1]; pointmaps normalised by the fixed affine map of
  ``config.pointmap_range`` (metres, every axis) onto [-1, 1]
  (:class:`geo4d_policy.data.geometry.PointmapNormalization`).
* View index 0 is the reference view n, 1 is view m. Conditioning pointmaps are each in
  their own camera frame; target pointmaps are both in n's frame (``X^n``, ``X^{m->n}``).
* Training batches (dicts of tensors): ``rgb_cond`` (B,2,3,H,W), ``rgb`` (B,2,F,3,H,W),
  ``pm_cond`` (B,2,3,H,W), ``pm`` (B,2,F,3,H,W), ``valid`` (B,2,F,H,W) bool,
  ``gripper`` (B,2,F,H,W) bool; optional ``valid_cond`` (B,2,H,W) bool (else: finite
  conditioning points in front of their camera, metric z > 0, since each conditioning
  pointmap is in its own camera frame) and ``task`` (list of B names) or ``task_id`` (B,)
  (else: the checkpoint's single training task).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from geo4d_policy.config import to_dict
from geo4d_policy.data.geometry import PointmapNormalization
from geo4d_policy.models.config import DATA_DERIVED_KEYS, GeneratorConfig, model_config_from_dict
from geo4d_policy.models.edm import cell_weights, edm_loss, latent_weights, sample_edm
from geo4d_policy.models.generator import Geo4DUNet
from geo4d_policy.models.inputs import fill_invalid_points, resize_images, resize_nearest
from geo4d_policy.models.pretrained import PretrainedModel, canonical_task
from geo4d_policy.models.shard import Randomness
from geo4d_policy.models.vae import VAE

GENERATOR_FORMAT = "geo4d-generator"
FORMAT_VERSION = 1


class Generator4D(PretrainedModel):
    """Image VAE + pointmap VAE + :class:`Geo4DUNet`, with their config and trained tasks.

    Args:
        config: the model config.
        trained_tasks: tasks this model was trained on (default: every task of
            ``config.tasks``); :meth:`from_pretrained` refuses other tasks.
    """

    def __init__(self, config: GeneratorConfig, *, trained_tasks: Sequence[str] | None = None) -> None:
        super().__init__()
        config = model_config_from_dict(to_dict(config))  # own copy: VAE calibration mutates it
        self.config = config
        tasks = tuple(canonical_task(t) for t in (trained_tasks or config.tasks))
        unknown = [t for t in tasks if t not in config.tasks]
        if unknown:
            raise ValueError(
                f"trained task(s) {unknown} are not in the model's task table {list(config.tasks)}"
            )
        self.trained_tasks: tuple[str, ...] = tasks
        self.image_vae = VAE(config.image_vae, kind="image")
        self.pointmap_vae = VAE(config.pointmap_vae, kind="pointmap") if config.use_pointmaps else None
        self.unet = Geo4DUNet(config)
        self.normalization = PointmapNormalization(*config.pointmap_range)
        # The "training" record of the checkpoint this model was loaded from (recipe, step, the
        # data seeds it has seen): kept through re-saving (export), so that evaluations can
        # still refuse the training episodes.
        self.training_record: dict[str, Any] | None = None

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def set_vaes(self, image_vae: VAE, pointmap_vae: VAE | None) -> None:
        """Use trained (frozen) VAEs; their configs, with latent scales, go into ``self.config``."""
        self.image_vae = image_vae
        self.config.image_vae = image_vae.config
        if self.config.use_pointmaps:
            if pointmap_vae is None:
                raise ValueError("this model uses pointmaps: a pointmap VAE is required")
            self.pointmap_vae = pointmap_vae
            self.config.pointmap_vae = pointmap_vae.config

    def compile_unet(self, *, mode: str = "reduce-overhead") -> Generator4D:
        """``torch.compile`` the U-Net in place (GPU inference; returns ``self``).

        On an H100 with bf16 weights, ``reduce-overhead`` (CUDA graphs) cut a 25-step two-view
        prediction of the small model from 1.45 s to 0.14 s: eager small models are bound by
        kernel launches. The first prediction per input shape compiles (about 1-2 min).
        Do not use on the CPU (no speed-up there; compiling takes minutes).
        """
        self.unet.compile(mode=mode)
        return self

    def freeze_vaes(self) -> None:
        """Freeze the VAEs (the paper trains the U-Net with frozen VAEs)."""
        for vae in (self.image_vae, self.pointmap_vae):
            if vae is not None:
                vae.requires_grad_(False)
                vae.eval()

    # ---------------------------------------------------------------------------------------
    # Latents
    # ---------------------------------------------------------------------------------------

    def encode_frames(
        self, rgb: torch.Tensor, pm: torch.Tensor | None = None, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """RGB (..., 3, H, W) in [-1, 1] (+ normalised pointmaps) -> latents (..., C, h, w)."""
        z = self.image_vae.encode(rgb)
        if self.config.use_pointmaps:
            if pm is None:
                raise ValueError("this model uses pointmaps: pass them")
            z = torch.cat([z, self.pointmap_vae.encode(pm, valid=valid)], dim=-3)
        return z

    def decode_latents(
        self, z: torch.Tensor, *, rgb: bool = True, pointmaps: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Latents (..., C, h, w) -> (RGB in [-1, 1] clamped, normalised pointmaps); None if skipped."""
        lat = self.config.latent_channels
        out_rgb = self.image_vae.decode(z[..., :lat, :, :]).clamp(-1.0, 1.0) if rgb else None
        out_pm = None
        if pointmaps and self.config.use_pointmaps:
            out_pm = self.pointmap_vae.decode(z[..., lat:, :, :])
        return out_rgb, out_pm

    def conditioning_validity(self, pm_cond: torch.Tensor) -> torch.Tensor:
        """(..., H, W) validity of normalised conditioning pointmaps (..., 3, H, W) without a mask.

        A conditioning pointmap is in its own camera's frame, so a real point has metric
        z > 0; the loaders' placeholder for missing depth (metric 0) and NaNs fail the test.
        """
        z = self.normalization.denormalize(pm_cond[..., 2, :, :])
        return torch.isfinite(pm_cond).all(dim=-3) & (torch.nan_to_num(z, nan=0.0) > 0)

    def task_ids_for(self, batch: Mapping[str, Any], b: int) -> torch.Tensor:
        """(B,) task-table rows of a batch (``task_id``, ``task`` names, or the single task)."""
        dev = self.device
        if "task_id" in batch:
            return torch.as_tensor(batch["task_id"], dtype=torch.long, device=dev).reshape(b)
        if "task" in batch:
            names = batch["task"]
            names = [names] * b if isinstance(names, str) else list(names)
            return self.unet.task_ids([canonical_task(n) for n in names], device=dev)
        if len(self.trained_tasks) != 1:
            raise ValueError(f"batch has no task and the model was trained on several: {self.trained_tasks}")
        return self.unet.task_ids([self.trained_tasks[0]] * b, device=dev)

    # ---------------------------------------------------------------------------------------
    # Training
    # ---------------------------------------------------------------------------------------

    def training_loss(
        self, batch: Mapping[str, Any], *, generator: Randomness = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """EDM loss of a dataset batch (see the module docstring for the keys).

        The VAEs encode under ``no_grad`` (they are frozen); only the U-Net gets gradients. A
        batch from a latent cache (:mod:`geo4d_policy.train.latent_cache`) carries the encoded
        clip instead of frames: ``latents`` (B, 2, F, C, h, w), ``cond_latents`` (B, 2, C, h, w),
        ``gripper_cells`` (B, 2, F, h, w) bool and ``valid_fraction`` (B, 2, F, h, w); the loss
        is then the same as for the frames those latents were encoded from.
        """
        cfg = self.config
        use_pm = cfg.use_pointmaps
        if "latents" in batch:
            x0, cond = batch["latents"], batch["cond_latents"]
            b = x0.shape[0]
            gw, vw = cell_weights(gripper_cells=batch.get("gripper_cells"),
                                  valid_fraction=batch.get("valid_fraction") if use_pm else None, edm=cfg.edm)
        else:
            cond, x0 = self.encode_batch(batch)
            b = x0.shape[0]
            gw, vw = latent_weights(
                gripper=batch.get("gripper"),
                valid=batch.get("valid") if use_pm else None,
                factor=self.image_vae.downsample_factor,
                edm=cfg.edm,
            )
        return edm_loss(
            self.unet,
            x0.float(),
            cond.float(),
            task_ids=self.task_ids_for(batch, b),
            config=cfg,
            generator=generator,
            gripper_weight=gw,
            pointmap_weight=vw,
        )

    @torch.no_grad()
    def encode_batch(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cond (B, 2, C, h, w), x0 (B, 2, F, C, h, w))`` latents of a frame batch."""
        cfg = self.config
        rgb = batch["rgb"]
        hgt, wid = rgb.shape[-2:]
        if (hgt, wid) != (cfg.height, cfg.width):
            raise ValueError(
                f"batch resolution {hgt}x{wid} differs from the model's {cfg.height}x{cfg.width}"
            )
        use_pm = cfg.use_pointmaps
        pm_cond = valid_cond = None
        if use_pm:
            pm_cond = batch["pm_cond"]
            valid_cond = batch.get("valid_cond")
            if valid_cond is None:
                valid_cond = self.conditioning_validity(pm_cond)
        cond = self.encode_frames(batch["rgb_cond"], pm_cond, valid_cond)
        x0 = self.encode_frames(rgb, batch.get("pm") if use_pm else None, batch.get("valid") if use_pm else None)
        return cond, x0

    def forward(self, batch: Mapping[str, Any], *, generator: Randomness = None):
        """The training loss (so that DDP wrappers see a forward call)."""
        return self.training_loss(batch, generator=generator)

    # ---------------------------------------------------------------------------------------
    # Sampling
    # ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        cond: torch.Tensor,
        task_ids: torch.Tensor,
        *,
        num_steps: int | None = None,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        guidance_scale: float | None = None,
        num_frames: int | None = None,
    ) -> torch.Tensor:
        """Latents (B, 2, F, C, h, w) given conditioning latents (B, 2, C, h, w).

        ``generator`` wins over ``seed``; ``seed=None`` without a generator draws fresh noise.
        """
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        return sample_edm(
            self.unet,
            cond,
            task_ids=task_ids,
            config=self.config,
            num_frames=num_frames,
            num_steps=num_steps,
            generator=generator,
            guidance_scale=guidance_scale,
        )

    @torch.no_grad()
    def predict(
        self,
        rgb: np.ndarray,
        pointmap_n: np.ndarray | None = None,
        pointmap_m: np.ndarray | None = None,
        *,
        valid_n: np.ndarray | None = None,
        valid_m: np.ndarray | None = None,
        task: str | None = None,
        num_steps: int | None = None,
        seed: int = 0,
        guidance_scale: float | None = None,
        on_resolution_mismatch: Literal["resize", "error"] = "resize",
        decode_rgb: bool = True,
        decode_pointmaps: bool = True,
        frames: int | None = None,
    ) -> dict[str, Any]:
        """Predict the next ``num_frames`` RGB frames and pointmaps of both views.

        Args:
            rgb: (2, H, W, 3) uint8 current frames of views n and m.
            pointmap_n: (H, W, 3) metric pointmap of view n in n's camera frame.
            pointmap_m: (H, W, 3) metric pointmap of view m in m's own camera frame (camera m
                is uncalibrated; the model places its prediction in n's frame).
            valid_n, valid_m: (H, W) bool validity; default: finite points with z > 0.
                Invalid or non-finite points are replaced before encoding (no NaN propagates).
            task: task name; may be omitted when the model was trained on one task.
            num_steps: sampler steps (default ``config.edm.num_steps``, 25).
            seed: seed of the sampling noise (same seed, same output).
            guidance_scale: classifier-free guidance scale (default: config, 1.0 = off).
            on_resolution_mismatch: inputs whose H x W differ from the model's are resized to
                it (RGB bilinear, pointmaps and masks nearest) and the outputs resized back
                to H x W (``"resize"``), or refused with ``ValueError`` (``"error"``).
            decode_rgb, decode_pointmaps: skip decoding what the caller does not use (VAE
                decoding of 2 x 10 frames is a large share of the CPU time).
            frames: decode only the first ``frames`` predicted frames of each view (None: all).
                The video is still sampled whole; the autoencoders decode frame by frame, so
                each decoded frame is the one a full decode gives.

        Returns:
            dict with ``rgb`` (2, F, H, W, 3) uint8, ``pointmaps`` (2, F, H, W, 3) float32 metres
            both in camera n's frame (None for RGB-only models or when not decoded; F is
            ``frames`` when given, at most ``num_frames``),
            ``task``, and ``timings`` (seconds: ``encode``, ``sample``, ``decode``, ``total``).
        """
        return self.predict_many([dict(
            rgb=rgb, pointmap_n=pointmap_n, pointmap_m=pointmap_m, valid_n=valid_n, valid_m=valid_m, task=task,
            seed=seed)], num_steps=num_steps, guidance_scale=guidance_scale,
            on_resolution_mismatch=on_resolution_mismatch, decode_rgb=decode_rgb,
            decode_pointmaps=decode_pointmaps, frames=frames)[0]

    @torch.no_grad()
    def predict_many(
        self,
        requests: Sequence[Mapping[str, Any]],
        *,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        on_resolution_mismatch: Literal["resize", "error"] = "resize",
        decode_rgb: bool = True,
        decode_pointmaps: bool = True,
        frames: int | None = None,
    ) -> list[dict[str, Any]]:
        """:meth:`predict` for several requests at once: one batched sampling run.

        Each request is a mapping of :meth:`predict`'s per-request arguments (``rgb``,
        ``pointmap_n``, ``pointmap_m``, ``valid_n``, ``valid_m``, ``task``, ``seed``); requests
        may be of different tasks. Each request's noise comes from its own seed, so its
        prediction equals the one :meth:`predict` gives it alone (up to floating-point
        reassociation in batched kernels). On a GPU the batch costs little more than one
        request: this is what the shared generator server uses to serve parallel workers. The
        requests' latents (their first ``frames`` frames) are decoded together, in one call per
        autoencoder.

        Returns:
            One :meth:`predict` result per request, in order; ``timings`` are the batch's, with
            ``batch_size``.

        Raises:
            ValueError: any request is malformed, or ``frames`` is not positive (nothing is sampled).
        """
        if frames is not None and int(frames) < 1:
            raise ValueError(f"frames must be a positive number of frames to decode (or None: all), got {frames}")
        if not requests:
            return []
        t0 = time.perf_counter()
        prepared = [self._prepare_request(r, on_resolution_mismatch=on_resolution_mismatch) for r in requests]
        dev = self.device
        # bf16 autocast on CUDA for fp32 weights; weights loaded in bf16/fp16 run as they are.
        use_amp = dev.type == "cuda" and next(self.unet.parameters()).dtype == torch.float32
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_amp):
            cond = torch.stack([self.encode_frames(x, pm, valid) for x, pm, valid, _, _, _ in prepared]).float()
        t1 = time.perf_counter()
        tasks = [task for *_, task, _ in prepared]
        task_ids = self.unet.task_ids(tasks, device=dev)
        generators = [torch.Generator().manual_seed(int(seed)) for *_, seed in prepared]
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_amp):
            z = sample_edm(self.unet, cond, task_ids=task_ids, config=self.config, num_steps=num_steps,
                           generator=generators, guidance_scale=guidance_scale)
        t2 = time.perf_counter()
        # (B, 2, F, C, h, w) -> (B, 2, F, 3, H, W) each, every request's frames in one decode.
        z = z[:, :, :frames] if frames is not None else z
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_amp):
            all_rgb, all_pm = self.decode_latents(z, rgb=decode_rgb, pointmaps=decode_pointmaps)
        results = []
        for i, (*_, in_size, task, _) in enumerate(prepared):
            rgb_np = None
            if all_rgb is not None:
                out_rgb = resize_images(all_rgb[i].float(), tuple(in_size))
                rgb_u8 = ((out_rgb + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 1, 3, 4, 2)
                rgb_np = rgb_u8.cpu().numpy()
            points = None
            if all_pm is not None:
                out_pm = resize_nearest(all_pm[i].float(), tuple(in_size))
                points = self.normalization.denormalize(out_pm).permute(0, 1, 3, 4, 2).contiguous().cpu().numpy()
            results.append({"rgb": rgb_np, "pointmaps": points, "task": task})
        t3 = time.perf_counter()
        timings = {"encode": t1 - t0, "sample": t2 - t1, "decode": t3 - t2, "total": t3 - t0,
                   "batch_size": len(requests)}
        for r in results:
            r["timings"] = dict(timings)
        return results

    def _prepare_request(self, request: Mapping[str, Any], *, on_resolution_mismatch: str):
        """One request's model-resolution inputs: (rgb, pointmaps, validity, input size, task, seed)."""
        known = {"rgb", "pointmap_n", "pointmap_m", "valid_n", "valid_m", "task", "seed"}
        unknown = set(request) - known
        if unknown:
            raise ValueError(f"unknown request field(s) {sorted(unknown)}; expected {sorted(known)}")
        cfg = self.config
        rgb = np.asarray(request["rgb"])
        if rgb.ndim != 4 or rgb.shape[0] != 2 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be (2, H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
        in_size = rgb.shape[1:3]
        size = (cfg.height, cfg.width)
        if tuple(in_size) != size and on_resolution_mismatch == "error":
            raise ValueError(
                f"input resolution {in_size[0]}x{in_size[1]} differs from the model's {size[0]}x{size[1]}"
            )
        task = self.resolve_task(request.get("task"))
        dev = self.device
        x = torch.from_numpy(rgb).to(dev).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (2,3,H,W)
        x = resize_images(x, size)
        pm = valid = None
        if cfg.use_pointmaps:
            pointmap_n, pointmap_m = request.get("pointmap_n"), request.get("pointmap_m")
            if pointmap_n is None or pointmap_m is None:
                raise ValueError("this model needs pointmap_n and pointmap_m")
            pms, valids = [], []
            for p, vmask in ((pointmap_n, request.get("valid_n")), (pointmap_m, request.get("valid_m"))):
                p = torch.as_tensor(np.asarray(p, dtype=np.float32), device=dev)
                if p.shape != (*in_size, 3):
                    raise ValueError(f"pointmaps must be {(*in_size, 3)}, got {tuple(p.shape)}")
                ok = torch.isfinite(p).all(-1) & (torch.nan_to_num(p[..., 2], nan=0.0) > 0)
                if vmask is not None:
                    ok &= torch.as_tensor(np.asarray(vmask, dtype=bool), device=dev)
                p = torch.where(ok[..., None], p, torch.zeros((), device=dev))
                pms.append(self.normalization.normalize(p).permute(2, 0, 1))
                valids.append(ok)
            pm = resize_nearest(torch.stack(pms), size)
            valid = resize_nearest(torch.stack(valids), size, channels=False)
            pm, valid = fill_invalid_points(pm, valid)
        return x, pm, valid, in_size, task, int(request.get("seed", 0))

    # ---------------------------------------------------------------------------------------
    # Save / load
    # ---------------------------------------------------------------------------------------

    checkpoint_format = GENERATOR_FORMAT
    format_version = FORMAT_VERSION
    family = "generator"
    config_type = GeneratorConfig
    task_conditioned = True
    config_ignore = DATA_DERIVED_KEYS
    int8_keep_prefixes = ("image_vae.", "pointmap_vae.")  # the autoencoders bound every prediction

    def checkpoint_fields(self) -> dict[str, Any]:
        """``config.json`` entries besides the model config: normalisation, resolution, frames."""
        cfg = self.config
        return {
            "pointmap_normalization": self.normalization.to_dict(),
            "resolution": [cfg.height, cfg.width],
            "num_frames": cfg.num_frames,
        }

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], **kwargs: Any) -> Generator4D:
        """Load a generator saved by ``save_pretrained`` (``dtype=torch.int8`` stores the large
        matrices in int8) or a training run directory, with frozen VAEs.

        Arguments (``device``, ``dtype``, ``task``, ``config``) and refusals as
        :meth:`PretrainedModel.from_pretrained`; ``config`` comparisons ignore the
        data-measured VAE latent scales.
        """
        model = super().from_pretrained(path, **kwargs)
        model.freeze_vaes()
        return model


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def parameter_summary(model: Generator4D) -> dict[str, int]:
    """Parameter counts per part (U-Net encoder + decoder n, decoder m, cross-view, fine pointmap path, VAEs)."""
    u = model.unet
    out = {
        "unet_shared_and_decoder_n": count_parameters(u.unet),
        "decoder_m": count_parameters(u.decoder_m) if u.decoder_m is not None else 0,
        "cross_view_attention": count_parameters(u.cross_view) if u.cross_view is not None else 0,
        "context_tokens": u.view_tokens.numel() + u.task_tokens.weight.numel(),
        "fine_pointmap_path": count_parameters(u.fine) if u.fine is not None else 0,
        "image_vae": count_parameters(model.image_vae),
        "pointmap_vae": count_parameters(model.pointmap_vae) if model.pointmap_vae is not None else 0,
    }
    out["unet_total"] = count_parameters(u)
    out["total"] = count_parameters(model)
    return out


def fp16_megabytes(n_params: int) -> float:
    """Size of ``n_params`` fp16 weights in MB (10^6 bytes)."""
    return n_params * 2 / 1e6


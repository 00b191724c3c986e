"""EDM diffusion for the two-view latent video: preconditioning, loss, Euler sampler, CFG.

Owns the diffusion maths around :class:`~geo4d_policy.models.generator.Geo4DUNet`
(Karras et al. 2022, "Elucidating the design space of diffusion-based generative models"):

* Denoiser ``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)`` with
  ``c_skip = sd^2 / (s^2 + sd^2)``, ``c_out = s sd / sqrt(s^2 + sd^2)``,
  ``c_in = 1 / sqrt(s^2 + sd^2)``, ``c_noise = ln(s) / 4`` (``sd`` = ``sigma_data``).
  The conditioning latents are not scaled (they are clean).
* Training (:func:`edm_loss`): one ``sigma`` per clip (shared by both views and all frames),
  ``ln sigma ~ N(p_mean, p_std)``; clean-sample (x0) objective with the EDM weight
  ``(s^2 + sd^2) / (s sd)^2``, i.e. unit-variance targets for ``F``. The loss is
  ``RGB_n + RGB_m + lambda * (PM_n + PM_{m->n})``, each term the weighted mean over its latent
  elements, with per-cell weights from :func:`latent_weights`.
* Sampling (:func:`sample_edm`): Euler steps on the probability-flow ODE over the Karras
  schedule (``sigma_max -> sigma_min`` with ``rho``, then 0), i.e. sgm's ``EulerEDMSampler``
  without churn; the initial noise and any noise augmentation come from one seeded
  ``torch.Generator`` on the CPU, so a seed gives the same sample on every device.
* Residual targets (``edm.residual``): the diffused sample is ``(x0 - cond) * S`` (the
  conditioning latents repeated over the frames; ``S`` = ``edm.change_scale`` per view and
  modality, :func:`change_scale`); the sampler divides by ``S`` and adds ``cond`` back. The
  anchor is the clean conditioning, before any noise augmentation.
* Classifier-free guidance: with probability ``cond_drop_prob`` a training clip loses its
  conditioning (both views' conditioning latents set to 0 and the task token replaced by the
  null token; the view tokens stay). At sampling, ``guidance_scale`` w != 1 evaluates the
  conditional and unconditional denoisers in one batch and uses ``D_u + w (D_c - D_u)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from geo4d_policy.models.config import EDMConfig, GeneratorConfig
from geo4d_policy.models.generator import Geo4DUNet
from geo4d_policy.models.shard import Randomness, draw


def precondition(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, ...]:
    """EDM ``(c_skip, c_out, c_in, c_noise)`` for (B,) ``sigma``."""
    s2 = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / s2
    c_out = sigma * sigma_data / s2.sqrt()
    c_in = 1.0 / s2.sqrt()
    c_noise = sigma.log() / 4.0
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM loss weight ``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2``."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def karras_sigmas(
    num_steps: int,
    *,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The ``num_steps`` Karras noise levels from ``sigma_max`` down to ``sigma_min``, then 0."""
    if num_steps < 1:
        raise ValueError("num_steps must be >= 1")
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho
    if num_steps == 1:
        sig = torch.tensor([sigma_max], dtype=torch.float64)
    return torch.cat([sig, sig.new_zeros(1)]).to(device=device, dtype=torch.float32)


def added_time_ids(config: GeneratorConfig, batch: int, *, device: torch.device | str) -> torch.Tensor:
    """(B, 3) (fps, motion bucket 0, conditioning noise-augmentation strength)."""
    ids = torch.tensor([config.fps, 0.0, config.edm.cond_noise_aug], dtype=torch.float32, device=device)
    return ids[None].expand(batch, -1)


def change_scale(config: GeneratorConfig, *, device: torch.device | str) -> torch.Tensor:
    """(1, 2, 1, C, 1, 1) factors of ``edm.change_scale``: view n then m; RGB channels, then pointmap."""
    rgb_n, rgb_m, pm_n, pm_m = config.edm.change_scale
    lat, c = config.latent_channels, config.target_channels
    s = torch.empty(2, c, device=device)
    s[0, :lat], s[1, :lat] = rgb_n, rgb_m
    s[0, lat:], s[1, lat:] = pm_n, pm_m
    return s.reshape(1, 2, 1, c, 1, 1)


def diffused_target(x0: torch.Tensor, cond: torch.Tensor, config: GeneratorConfig) -> torch.Tensor:
    """What the model diffuses for clean latents ``x0`` (B, 2, F, C, h, w): ``x0`` itself, or with
    ``edm.residual`` the change from the conditioning latents ``cond`` (B, 2, C, h, w) times
    :func:`change_scale` (:func:`sample_edm` inverts it)."""
    if not config.edm.residual:
        return x0
    return (x0 - cond[:, :, None].to(x0.dtype)) * change_scale(config, device=x0.device).to(x0.dtype)


def drop_conditioning(
    unet: Geo4DUNet, cond: torch.Tensor, task_ids: torch.Tensor, drop: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unconditional inputs where ``drop`` (B,) is True: zero latents, null task token."""
    keep = (~drop).to(cond.dtype).reshape(-1, *([1] * (cond.dim() - 1)))
    return cond * keep, torch.where(drop, torch.full_like(task_ids, unet.null_task_id), task_ids)


def denoise(
    unet: Geo4DUNet,
    x: torch.Tensor,
    sigma: torch.Tensor,
    cond: torch.Tensor,
    *,
    task_ids: torch.Tensor,
    config: GeneratorConfig,
) -> torch.Tensor:
    """The EDM denoiser ``D(x; sigma)``: the clean-latent estimate for both views.

    Args:
        unet: the network ``F``.
        x: (B, 2, F, C, h, w) noisy latents.
        sigma: (B,) noise level per clip.
        cond: (B, 2, C, h, w) conditioning latents (already noise-augmented if configured).
        task_ids: (B,) task-table rows.
        config: generator config (``edm.sigma_data``, fps, ...).
    """
    c_skip, c_out, c_in, c_noise = precondition(sigma.float(), config.edm.sigma_data)
    bcast = (-1,) + (1,) * (x.dim() - 1)
    dtype = unet.unet.conv_in.weight.dtype
    f = unet(
        (x * c_in.reshape(bcast)).to(dtype),
        c_noise.to(dtype),
        cond.to(dtype),
        task_ids=task_ids,
        added_time_ids=added_time_ids(config, x.shape[0], device=x.device).to(dtype),
    )
    return c_skip.reshape(bcast) * x + c_out.reshape(bcast) * f.float()


def latent_weights(
    *,
    gripper: torch.Tensor | None,
    valid: torch.Tensor | None,
    factor: int,
    edm: EDMConfig,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per-latent-cell loss weights (B, 2, F, h, w) from pixel masks (B, 2, F, H, W).

    * Gripper: ``gripper_loss_weight`` (2x, paper eq. 4) on cells whose f x f pixel block
      contains any gripper pixel (max-pool keeps thin fingers that an average would dilute),
      1 elsewhere; applied to RGB and pointmap terms alike.
    * Pointmap validity: latents are dense, but invalid pixels carry filled-in values, not
      geometry. A cell counts by the valid fraction of its block, floored at
      ``invalid_latent_weight``: mostly invalid cells weigh little, yet still receive some
      supervision, because the VAE decoder's receptive field spreads whatever sits in them
      into the neighbouring valid pixels.

    Returns:
        ``(gripper_weight, pointmap_validity_weight)``, each None when its mask is None.
    """
    from geo4d_policy.models.inputs import mask_any_on_latent_grid, mask_fraction_on_latent_grid

    cells = None if gripper is None else mask_any_on_latent_grid(gripper.bool(), factor)
    frac = None if valid is None else mask_fraction_on_latent_grid(valid.bool(), factor)
    return cell_weights(gripper_cells=cells, valid_fraction=frac, edm=edm)


def cell_weights(
    *, gripper_cells: torch.Tensor | None, valid_fraction: torch.Tensor | None, edm: EDMConfig
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """:func:`latent_weights` from masks already on the latent grid (what a latent cache keeps):
    ``gripper_cells`` (bool, any gripper pixel in the cell), ``valid_fraction`` (valid share)."""
    gw = vw = None
    if gripper_cells is not None:
        gw = 1.0 + (edm.gripper_loss_weight - 1.0) * gripper_cells.float()
    if valid_fraction is not None:
        vw = edm.invalid_latent_weight + (1.0 - edm.invalid_latent_weight) * valid_fraction.float()
    return gw, vw


def edm_loss(
    unet: Geo4DUNet,
    x0: torch.Tensor,
    cond: torch.Tensor,
    *,
    task_ids: torch.Tensor,
    config: GeneratorConfig,
    generator: Randomness = None,
    gripper_weight: torch.Tensor | None = None,
    pointmap_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The EDM training loss of one batch of clips.

    Args:
        unet: the network.
        x0: (B, 2, F, C, h, w) clean latents, RGB channels first then pointmap channels.
        cond: (B, 2, C, h, w) clean conditioning latents.
        task_ids: (B,) task-table rows.
        config: generator config.
        generator: RNG for sigma, noise, conditioning dropout and augmentation, on any device
            (the trainer's lives on the training device; training state saves it, so resumed
            runs draw the same numbers), or a :class:`~geo4d_policy.models.shard.BatchShard`
            (several processes: each clip's draws are those of its row in the global batch).
        gripper_weight: (B, 2, F, h, w) gripper cell weights (see :func:`latent_weights`).
        pointmap_weight: (B, 2, F, h, w) validity weights of the pointmap cells.

    Returns:
        ``(loss, metrics)``: the scalar loss and detached scalar tensors (``loss_rgb``,
        ``loss_pm``, ...; read them when logging, not every step: that waits for the GPU).
    """
    edm = config.edm
    b = x0.shape[0]
    dev = x0.device

    def rows(fn, shape: tuple[int, ...]) -> torch.Tensor:
        # Drawn where the generator lives (the training device in the trainer: no host copy).
        return draw(fn, shape, generator, device=dev).to(dev)

    x0 = diffused_target(x0, cond, config)
    sigma = (rows(torch.randn, (b,)) * edm.p_std + edm.p_mean).exp()
    noise = rows(torch.randn, tuple(x0.shape)).to(x0.dtype)
    if edm.cond_noise_aug > 0:
        cond = cond + edm.cond_noise_aug * rows(torch.randn, tuple(cond.shape)).to(cond.dtype)
    if edm.cond_drop_prob > 0:
        drop = rows(torch.rand, (b,)) < edm.cond_drop_prob
        cond, task_ids = drop_conditioning(unet, cond, task_ids, drop)
    x = x0 + sigma.reshape(-1, 1, 1, 1, 1, 1) * noise
    d = denoise(unet, x, sigma, cond, task_ids=task_ids, config=config)
    err = (d - x0.float()) ** 2 * loss_weight(sigma, edm.sigma_data).reshape(-1, 1, 1, 1, 1, 1)
    if gripper_weight is not None:
        err = err * gripper_weight[:, :, :, None].float()
    lat = config.latent_channels
    rgb = err[:, :, :, :lat].mean(dim=(0, 2, 3, 4, 5))  # (2,) per view
    loss_rgb = rgb.sum()
    metrics = {"loss_rgb_n": rgb[0].detach(), "loss_rgb_m": rgb[1].detach()}
    loss = loss_rgb
    if config.use_pointmaps:
        pe = err[:, :, :, lat:]
        if pointmap_weight is not None:
            pe = pe * pointmap_weight[:, :, :, None].float()
        pm = pe.mean(dim=(0, 2, 3, 4, 5))
        loss_pm = pm.sum()
        loss = loss + edm.pointmap_loss_weight * loss_pm
        metrics.update(
            loss_pm_n=pm[0].detach(), loss_pm_m=pm[1].detach(), loss_pm=loss_pm.detach()
        )
    metrics.update(
        loss=loss.detach(), loss_rgb=loss_rgb.detach(), sigma_mean=sigma.mean().detach()
    )
    return loss, metrics


@torch.no_grad()
def sample_edm(
    unet: Geo4DUNet,
    cond: torch.Tensor,
    *,
    task_ids: torch.Tensor,
    config: GeneratorConfig,
    num_frames: int | None = None,
    num_steps: int | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    guidance_scale: float | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Sample clean latents of both views with the Euler EDM sampler.

    Args:
        unet: the network.
        cond: (B, 2, C, h, w) conditioning latents.
        task_ids: (B,) task-table rows.
        config: generator config (schedule, guidance defaults).
        num_frames: frames to generate (default ``config.num_frames``).
        num_steps: Euler steps, one network evaluation each (default ``config.edm.num_steps``).
        generator: CPU RNG of the initial noise (and noise augmentation); seeded by callers. A
            sequence of B generators draws each row's noise from its own one, so a row of a
            batch gets exactly the noise it would get sampled alone (batched serving).
        guidance_scale: CFG scale (default ``config.edm.guidance_scale``; 1.0 = off).
        callback: called as ``callback(step, denoised)`` after every step.

    Returns:
        (B, 2, F, C, h, w) float32 latents (with ``edm.residual``, the conditioning latents
        plus the sampled change; ``callback`` then sees the denoised change).
    """
    edm = config.edm
    steps = num_steps or edm.num_steps
    w = edm.guidance_scale if guidance_scale is None else float(guidance_scale)
    f = num_frames or config.num_frames
    b, v, c, h, wd = cond.shape
    dev = cond.device
    cond = cond.float()
    anchor = cond[:, :, None] if edm.residual else None
    sigmas = karras_sigmas(steps, sigma_min=edm.sigma_min, sigma_max=edm.sigma_max, rho=edm.rho, device=dev)
    if isinstance(generator, Sequence):
        if len(generator) != b:
            raise ValueError(f"{len(generator)} generators for a batch of {b}")
        gens = list(generator)
    else:
        gens = [generator]

    def noise(shape: tuple[int, ...]) -> torch.Tensor:  # per-generator rows, in the single-row draw order
        rows = shape[0] // len(gens)
        return torch.cat([torch.randn((rows, *shape[1:]), generator=g) for g in gens]).to(dev)

    x = noise((b, v, f, c, h, wd)) * sigmas[0]
    if edm.cond_noise_aug > 0:
        cond = cond + edm.cond_noise_aug * noise(tuple(cond.shape))
    guided = not math.isclose(w, 1.0)
    if guided:
        cond_u, task_u = drop_conditioning(unet, cond, task_ids, torch.ones(b, dtype=torch.bool, device=dev))
        cond_all, task_all = torch.cat([cond, cond_u]), torch.cat([task_ids, task_u])
    levels = sigmas.tolist()  # python floats for control flow: no device sync per step
    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        if guided:
            d_both = denoise(
                unet, torch.cat([x, x]), s.expand(2 * b), cond_all, task_ids=task_all, config=config
            )
            d_c, d_u = d_both.chunk(2)
            denoised = d_u + w * (d_c - d_u)
        else:
            denoised = denoise(unet, x, s.expand(b), cond, task_ids=task_ids, config=config)
        if levels[i + 1] > 0:
            x = x + (x - denoised) / s * (s_next - s)
        else:
            x = denoised
        if callback is not None:
            callback(i, denoised)
    return x if anchor is None else x / change_scale(config, device=dev) + anchor

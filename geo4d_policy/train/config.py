"""``TrainConfig``: one typed recipe for training the generator or either VAE; ``OptimRecipe``,
its optimisation part, shared with the Diffusion Policy recipe.

Optimiser defaults follow the paper's appendix A.3 (AdamW, betas (0.95, 0.999), eps 1e-8,
weight decay 1e-6) except the learning rate: the paper's 1e-6 is for fine-tuning pretrained
SVD weights; our models train from scratch, where ~1e-4 with a linear warm-up is the usual
choice for U-Nets and VAEs of this size (1e-6 would barely move random weights).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from geo4d_policy.config import ConfigError
from geo4d_policy.models.config import GeneratorConfig

TrainKind = Literal["generator", "image_vae", "pointmap_vae"]


@dataclasses.dataclass
class OptimRecipe:
    """AdamW with warm-up, clipping and an EMA, and the checkpoint cadence of an accelerate run.

    Attributes:
        max_steps: optimizer steps of the run (may be raised when resuming).
        lr, warmup_steps, lr_schedule: peak learning rate, linear warm-up, then constant or
            cosine decay to 10% at ``max_steps``.
        betas, eps, weight_decay: AdamW.
        grad_clip: max global gradient norm (0 = off).
        ema_decay: EMA of the weights; checkpoints hold the EMA weights.
        mixed_precision: ``auto`` = bf16 on CUDA, fp32 on the CPU.
        seed: seeds the model initialisation and the training noise stream.
        ckpt_every, log_every: checkpoint and metrics periods, in steps.
        keep_last: step directories kept (older ones are deleted).
    """

    max_steps: int = 20000
    lr: float = 1e-4
    warmup_steps: int = 500
    lr_schedule: Literal["constant", "cosine"] = "constant"
    betas: tuple[float, float] = (0.95, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-6
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    seed: int = 0
    ckpt_every: int = 1000
    log_every: int = 50
    keep_last: int = 3

    def __post_init__(self) -> None:
        if min(self.max_steps, self.ckpt_every, self.log_every, self.keep_last) < 1:
            raise ConfigError(f"{type(self).__name__}: max_steps, ckpt_every, log_every and keep_last must be >= 1")


@dataclasses.dataclass
class TrainConfig(OptimRecipe):
    """A training run (the optimisation fields: :class:`OptimRecipe`).

    Attributes:
        kind: what to train: the 4D ``generator`` (U-Net; VAEs frozen), the ``image_vae``
            or the ``pointmap_vae``.
        model: model config name (``tiny``/``small``/``paper``), YAML path, or inline mapping.
        tasks: tasks of the training data (recorded in the checkpoint; ``from_pretrained``
            refuses other tasks). Each must be in the model's task table.
        image_vae, pointmap_vae: trained VAE checkpoints (step or run directories) the
            generator encodes with; None builds random ones (tests only: the latents then
            mean nothing).
        init_from: weights to start from: for a VAE a VAE checkpoint or a generator checkpoint
            (its image autoencoder; the paper initialises the pointmap VAE from the image VAE);
            for ``generator`` a generator checkpoint of the same network (fine-tuning; its
            ``edm`` settings may differ).
        init_svd_unet: for ``generator``, a local SVD U-Net safetensors file (paper size).
        vae_max_images: frames per VAE step and process, drawn from each clip batch (the
            device path's frame batches are used whole).
        progress: show a progress bar.
        max_time_s: stop (with a checkpoint) after this many seconds of training in this
            session (several processes: at the first log step after it, all together); a
            resumed run continues towards ``max_steps`` (time-boxed device calls).
        data_seeds: task -> data-stream seeds of every episode the weights have seen (this run's
            datasets plus those recorded by ``init_from``); evaluations refuse validation
            episodes among them.
        compile_unet: for ``generator``, ``torch.compile`` the U-Net in place (same weights and
            checkpoints; a one-off compile at the first step and at a new batch shape, then
            fewer, fused kernels: it pays on CUDA in long runs).
        batch_size: clips (generator) or frames (VAEs) per step and process, as recorded (the
            data factory makes the batches; the global batch is this times the processes,
            stated in each checkpoint's ``training.launch``).
    """

    kind: TrainKind = "generator"
    model: str | GeneratorConfig = "small"
    tasks: tuple[str, ...] = ("PlaceAppleFromBowlIntoBin",)
    image_vae: str | None = None
    pointmap_vae: str | None = None
    init_from: str | None = None
    init_svd_unet: str | None = None
    vae_max_images: int = 32
    progress: bool = True
    max_time_s: float | None = None
    data_seeds: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    batch_size: int | None = None
    compile_unet: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_time_s is not None and not self.max_time_s > 0:
            raise ConfigError(f"TrainConfig.max_time_s must be > 0 or null, got {self.max_time_s}")
        if not self.tasks:
            raise ConfigError("TrainConfig.tasks must name at least one task")

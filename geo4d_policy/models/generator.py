"""The two-view spatio-temporal denoiser ``Geo4DUNet`` (paper sec. 3.1-3.2, A.1).

Built from diffusers ``UNetSpatioTemporalConditionModel`` parts (SVD's U-Net):

* Per view, the input is the noisy clean-latent video (RGB latent 4 ch + pointmap latent 4 ch)
  concatenated along channels with that view's conditioning-frame latents (RGB + pointmap of
  the current frame) repeated over the F frames: 16 -> 8 channels (RGB-only: 8 -> 4).
* ONE shared encoder (``conv_in``, time and added-time embeddings, down blocks, mid block)
  runs on both views stacked along the batch.
* TWO decoders with independent weights (``up_blocks`` + ``conv_norm_out`` + ``conv_out``):
  ``unet``'s own for the reference view n, a deep copy (``decoder_m``) for view m, whose
  pointmap target is expressed in n's camera frame. (The official release's "copy" was a
  shallow one that shared weights; here they are separate parameters.)
* After EACH up block, branch m cross-attends to branch n (:class:`CrossViewAttention`):
  per frame, the queries are m's feature-map positions, keys/values n's positions at the same
  stage. Output projections start at zero, so a new model's view-n output equals the plain
  single-branch U-Net's, and branch n never depends on branch m.

* With the patch codec, an optional full-resolution pointmap path
  (:mod:`~geo4d_policy.models.fine_pointmap`, ``unet.fine_pointmap_channels``) adds to
  ``conv_in``'s output and to each decoder's pointmap output.

Conditioning without CLIP (no image-encoder weights are reachable offline): the image
conditioning is the concatenated latents above; ``encoder_hidden_states`` carries two learned
tokens per view, a view token (n or m; the shared encoder is told which role it encodes) and
a task token from a table over ``GeneratorConfig.tasks`` plus one *null* row used when the
conditioning is dropped for classifier-free guidance. ``added_time_ids`` are (fps, motion
bucket = 0, conditioning noise-augmentation strength), SVD's three, as plain scalars.
Both views get their own context (the official release swapped the two views' contexts).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from diffusers import UNetSpatioTemporalConditionModel
from diffusers.models.attention_processor import Attention
from torch import nn

from geo4d_policy.models.config import NUM_ADDED_TIME_IDS, GeneratorConfig
from geo4d_policy.models.fine_pointmap import FinePointmapPath

NUM_VIEWS = 2
CONTEXT_TOKENS = 2  # view token + task token


class CrossViewAttention(nn.Module):
    """Residual cross-attention from view m's feature map (queries) to view n's (keys/values).

    Tokens are the spatial positions of one frame. Both inputs are group-normalised (the query
    as in the paper's layer; the keys/values too, because raw decoder activations grow with
    depth and would make the softmax temperature drift). The output projection is
    zero-initialised, so the layer starts as the identity.
    """

    def __init__(self, channels: int, *, head_dim: int = 32, num_groups: int = 32) -> None:
        super().__init__()
        self.norm_q = nn.GroupNorm(num_groups, channels, eps=1e-6)
        self.norm_kv = nn.GroupNorm(num_groups, channels, eps=1e-6)
        self.attn = Attention(
            query_dim=channels,
            cross_attention_dim=channels,
            heads=channels // head_dim,
            dim_head=head_dim,
            out_bias=True,
        )
        nn.init.zeros_(self.attn.to_out[0].weight)
        nn.init.zeros_(self.attn.to_out[0].bias)

    def forward(self, h_m: torch.Tensor, h_n: torch.Tensor) -> torch.Tensor:
        """``h_m + attn(norm(h_m), norm(h_n))`` for (N, C, h, w) feature maps of the same frames."""
        n, c, h, w = h_m.shape
        q = self.norm_q(h_m).flatten(2).transpose(1, 2)
        kv = self.norm_kv(h_n).flatten(2).transpose(1, 2)
        out = self.attn(q, encoder_hidden_states=kv)
        return h_m + out.transpose(1, 2).reshape(n, c, h, w)


class BranchDecoder(nn.Module):
    """The decoder half of a spatio-temporal U-Net: up blocks + output norm + output conv."""

    def __init__(self, up_blocks: nn.ModuleList, conv_norm_out: nn.GroupNorm, conv_out: nn.Conv2d) -> None:
        super().__init__()
        self.up_blocks = up_blocks
        self.conv_norm_out = conv_norm_out
        self.conv_out = conv_out


def build_unet(config: GeneratorConfig) -> UNetSpatioTemporalConditionModel:
    """The single-branch diffusers U-Net whose parts :class:`Geo4DUNet` composes."""
    u = config.unet
    levels = len(u.block_out_channels)
    c = config.target_channels
    return UNetSpatioTemporalConditionModel(
        in_channels=2 * c,
        out_channels=c,
        down_block_types=("CrossAttnDownBlockSpatioTemporal",) * (levels - 1) + ("DownBlockSpatioTemporal",),
        up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * (levels - 1),
        block_out_channels=tuple(u.block_out_channels),
        addition_time_embed_dim=u.addition_time_embed_dim,
        projection_class_embeddings_input_dim=u.addition_time_embed_dim * NUM_ADDED_TIME_IDS,
        layers_per_block=u.layers_per_block,
        cross_attention_dim=u.cross_attention_dim,
        transformer_layers_per_block=u.transformer_layers_per_block,
        num_attention_heads=tuple(u.num_attention_heads),
        num_frames=config.num_frames,
    )


class Geo4DUNet(nn.Module):
    """Shared encoder, two decoders and cross-view attention over two views of a clip.

    Shapes: B clips, V = 2 views (index 0 = reference view n, 1 = view m), F frames,
    C = ``config.target_channels`` (8, or 4 RGB-only), latent grid h x w.

    Args:
        config: the generator config (``unet`` sizes and the ablation switches).
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = build_unet(config)
        self.decoder_m: BranchDecoder | None = None
        if config.separate_decoders:
            self.decoder_m = BranchDecoder(
                copy.deepcopy(self.unet.up_blocks),
                copy.deepcopy(self.unet.conv_norm_out),
                copy.deepcopy(self.unet.conv_out),
            )
        self.cross_view: nn.ModuleList | None = None
        if config.cross_view_attention:
            chans = list(reversed(config.unet.block_out_channels))
            self.cross_view = nn.ModuleList(
                CrossViewAttention(ch, head_dim=config.unet.xattn_head_dim) for ch in chans
            )
        self.fine: FinePointmapPath | None = None
        if config.unet.fine_pointmap_channels:
            self.fine = FinePointmapPath(
                config.unet.fine_pointmap_channels,
                unet_channels=config.unet.block_out_channels[0],
                temb_channels=self.unet.time_embedding.linear_2.out_features,
                factor=config.pointmap_vae.downsample_factor,
                heads=NUM_VIEWS if config.separate_decoders else 1,
            )
        d = config.unet.cross_attention_dim
        self.view_tokens = nn.Parameter(torch.randn(NUM_VIEWS, d) * 0.02)
        self.task_tokens = nn.Embedding(len(config.tasks) + 1, d)
        nn.init.normal_(self.task_tokens.weight, std=0.02)

    # ---------------------------------------------------------------------------------------

    @property
    def null_task_id(self) -> int:
        """Task-table row of the dropped (unconditional) context."""
        return len(self.config.tasks)

    def task_ids(
        self, tasks: list[str] | tuple[str, ...], *, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """(B,) task indices of task names (raises ``KeyError`` naming the known tasks)."""
        index = {t: i for i, t in enumerate(self.config.tasks)}
        try:
            return torch.tensor([index[t] for t in tasks], dtype=torch.long, device=device)
        except KeyError as e:
            raise KeyError(
                f"task {e.args[0]!r} is not in the model's task table {list(self.config.tasks)}"
            ) from None

    def context(self, task_ids: torch.Tensor) -> torch.Tensor:
        """(B,) task ids -> (B, 2 views, 2 tokens, D) ``encoder_hidden_states`` per view."""
        b = task_ids.shape[0]
        task = self.task_tokens(task_ids)  # (B, D)
        views = self.view_tokens[None].expand(b, -1, -1)  # (B, 2, D)
        return torch.stack([views, task[:, None].expand(-1, NUM_VIEWS, -1)], dim=2)

    def unet_inputs(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Noisy latents (B,2,F,C,h,w) + conditioning latents (B,2,C,h,w) -> (B,2,F,2C,h,w)."""
        f = x.shape[2]
        return torch.cat([x, cond[:, :, None].expand(-1, -1, f, -1, -1, -1).to(x.dtype)], dim=3)

    def _embed_time(
        self, c_noise: torch.Tensor, added_time_ids: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        u = self.unet
        b = c_noise.shape[0]
        emb = u.time_embedding(u.time_proj(c_noise).to(dtype))
        add = u.add_time_proj(added_time_ids.flatten()).reshape(b, -1).to(emb.dtype)
        return emb + u.add_embedding(add)

    # ---------------------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor,
        cond: torch.Tensor,
        *,
        task_ids: torch.Tensor,
        added_time_ids: torch.Tensor,
    ) -> torch.Tensor:
        """Predict the network output F(x) for both views (EDM preconditioning is outside).

        Args:
            x: (B, 2, F, C, h, w) (preconditioned) noisy latents, view n first.
            c_noise: (B,) noise conditioning (EDM ``ln(sigma) / 4``), one per clip.
            cond: (B, 2, C, h, w) conditioning-frame latents of each view (zeros when dropped).
            task_ids: (B,) rows of the task table (``null_task_id`` when dropped).
            added_time_ids: (B, 3) (fps, motion bucket, noise-augmentation strength).

        Returns:
            (B, 2, F, C, h, w) network output per view.
        """
        u = self.unet
        b, v, f = x.shape[:3]
        if v != NUM_VIEWS:
            raise ValueError(f"Geo4DUNet expects {NUM_VIEWS} views on dim 1, got shape {tuple(x.shape)}")
        inp = self.unet_inputs(x, cond)
        # View-major stacking: rows [0, B*F) are view n, [B*F, 2*B*F) view m, which lets every
        # per-row tensor (features, skips, embeddings) be split with chunk(2).
        s = inp.transpose(0, 1).reshape(v * b * f, *inp.shape[3:])
        emb = self._embed_time(c_noise.repeat(v), added_time_ids.repeat(v, 1), s.dtype)
        emb = emb.repeat_interleave(f, dim=0)
        ehs = self.context(task_ids).transpose(0, 1).reshape(v * b, CONTEXT_TOKENS, -1)
        ehs = ehs.repeat_interleave(f, dim=0).to(emb.dtype)

        h = u.conv_in(s)
        if self.fine is not None:
            rgb, c = self.config.latent_channels, self.config.target_channels
            fine_skip, coarse = self.fine.encode(s[:, rgb:c], s[:, c + rgb:], emb)
            h = h + coarse
        ioi = torch.zeros(v * b, f, dtype=h.dtype, device=h.device)
        res: tuple[torch.Tensor, ...] = (h,)
        for blk in u.down_blocks:
            if getattr(blk, "has_cross_attention", False):
                h, r = blk(hidden_states=h, temb=emb, encoder_hidden_states=ehs, image_only_indicator=ioi)
            else:
                h, r = blk(hidden_states=h, temb=emb, image_only_indicator=ioi)
            res += r
        h = u.mid_block(hidden_states=h, temb=emb, encoder_hidden_states=ehs, image_only_indicator=ioi)

        # Decoders in lock-step; branch m reads branch n's output of the same up block.
        h_n, h_m = h.chunk(2)
        emb_n, emb_m = emb.chunk(2)
        ehs_n, ehs_m = ehs.chunk(2)
        ioi_v = torch.zeros(b, f, dtype=h.dtype, device=h.device)
        up_n = u.up_blocks
        dec_m = self.decoder_m
        up_m = dec_m.up_blocks if dec_m is not None else u.up_blocks
        forward_size = any(s_ % (2**u.num_upsamplers) for s_ in x.shape[-2:])
        for i in range(len(up_n)):
            k = len(up_n[i].resnets)
            skips, res = res[-k:], res[:-k]
            size = res[-1].shape[2:] if (forward_size and i < len(up_n) - 1) else None
            skips_n = tuple(t.chunk(2)[0] for t in skips)
            skips_m = tuple(t.chunk(2)[1] for t in skips)
            h_n = self._up(up_n[i], h_n, skips_n, emb_n, ehs_n, ioi_v, size)
            h_m = self._up(up_m[i], h_m, skips_m, emb_m, ehs_m, ioi_v, size)
            if self.cross_view is not None:
                h_m = self.cross_view[i](h_m, h_n)

        a_n = u.conv_act(u.conv_norm_out(h_n))
        out_n = u.conv_out(a_n)
        head_m = dec_m if dec_m is not None else u
        norm_m, conv_m = head_m.conv_norm_out, head_m.conv_out
        a_m = u.conv_act(norm_m(h_m))
        out_m = conv_m(a_m)
        if self.fine is not None:
            rgb = self.config.latent_channels
            skip_n, skip_m = fine_skip.chunk(2)
            fine_n = self.fine.decode(0, a_n, skip_n, emb_n)
            fine_m = self.fine.decode(1, a_m, skip_m, emb_m)
            out_n = torch.cat([out_n[:, :rgb], out_n[:, rgb:] + fine_n], dim=1)
            out_m = torch.cat([out_m[:, :rgb], out_m[:, rgb:] + fine_m], dim=1)
        out = torch.stack([out_n, out_m], dim=0)  # (2, B*F, C, h, w)
        return out.reshape(v, b, f, *out.shape[2:]).transpose(0, 1)

    @staticmethod
    def _up(blk, h, skips, emb, ehs, ioi, size) -> torch.Tensor:
        if getattr(blk, "has_cross_attention", False):
            return blk(
                hidden_states=h,
                temb=emb,
                res_hidden_states_tuple=skips,
                encoder_hidden_states=ehs,
                upsample_size=size,
                image_only_indicator=ioi,
            )
        return blk(
            hidden_states=h,
            temb=emb,
            res_hidden_states_tuple=skips,
            upsample_size=size,
            image_only_indicator=ioi,
        )


def load_svd_unet_weights(model: Geo4DUNet, svd_state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Initialise a :class:`Geo4DUNet` from a (local) SVD ``UNetSpatioTemporalConditionModel``.

    SVD's U-Net takes 8 input channels (4 noisy + 4 conditioning-image latents) and predicts 4.
    Ours takes [noisy RGB, noisy pointmap, cond RGB, cond pointmap] (4 each) and predicts
    [RGB, pointmap]: SVD's noisy/cond input filters go to our RGB slots, the pointmap input
    filters start at zero (so the pretrained function is unchanged at initialisation), and the
    pointmap output filters copy the RGB ones (the pointmap VAE starts as a copy of the image
    VAE, so its latents live on a similar scale). Decoder m is then a copy of decoder n.
    Requires the ``paper`` sizes (or any config whose U-Net matches the checkpoint).

    Args:
        model: the model to initialise in place.
        svd_state_dict: the state dict of a diffusers SVD U-Net (e.g. loaded with safetensors
            from ``<svd>/unet/diffusion_pytorch_model.safetensors``).

    Returns:
        Keys of ``model.unet`` left at their initialisation (expected: none).
    """
    sd = dict(svd_state_dict)
    lat = model.config.latent_channels
    own = model.unet.state_dict()
    w_in, w_out, b_out = sd["conv_in.weight"], sd["conv_out.weight"], sd["conv_out.bias"]
    if w_in.shape[1] != 2 * lat or w_out.shape[0] != lat:
        raise ValueError(
            f"not an SVD-style U-Net: conv_in {tuple(w_in.shape)}, conv_out {tuple(w_out.shape)}"
        )
    new_in = torch.zeros_like(own["conv_in.weight"])
    if model.config.use_pointmaps:
        new_in[:, 0:lat] = w_in[:, 0:lat]
        new_in[:, 2 * lat : 3 * lat] = w_in[:, lat:]
        sd["conv_out.weight"] = torch.cat([w_out, w_out], dim=0)
        sd["conv_out.bias"] = torch.cat([b_out, b_out], dim=0)
    else:
        new_in.copy_(w_in)
    sd["conv_in.weight"] = new_in
    missing, unexpected = model.unet.load_state_dict(sd, strict=False)
    if unexpected:
        raise ValueError(f"SVD weights have keys the U-Net lacks (sizes differ?): {unexpected[:5]} ...")
    if model.decoder_m is not None:
        model.decoder_m.up_blocks.load_state_dict(model.unet.up_blocks.state_dict())
        model.decoder_m.conv_norm_out.load_state_dict(model.unet.conv_norm_out.state_dict())
        model.decoder_m.conv_out.load_state_dict(model.unet.conv_out.state_dict())
    return list(missing)

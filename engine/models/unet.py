"""The SD1.5-shaped UNet skeleton shared by the ReferenceNet and the backbone.

Down, mid and up blocks with diffusers names. Which pieces exist is decided by the config: the
spatial cross-attention (``attn2``), motion modules at chosen resolutions (backbone only), and
the output head (backbone only). Transformer blocks get consecutive ``bank_index`` values and
motion-module locations consecutive ``motion_index`` values, in forward order, so the
ReferenceNet's outputs line up with the backbone's inputs layer by layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import AudioModulesConfig, TemporalConfig, UNetConfig
from engine.models.blocks import (Downsample2D, ResnetBlock2D, TimestepEmbedding, Transformer2DModel,
                                  UNetContext, Upsample2D, timestep_embedding)
from engine.models.hallo_audio import AudioModule, hallo_inner_widths
from engine.models.temporal import MotionModule


class _Counter:
    def __init__(self) -> None:
        self.value = 0

    def next(self) -> int:
        self.value += 1
        return self.value - 1


class UNetBlock(nn.Module):
    """A down, mid or up block: ``resnets``, optional ``attentions``, ``audio_modules`` and
    ``motion_modules``, resampler.

    Layer ``j`` runs resnet -> attention -> audio module -> motion module. A mid block runs
    ``resnets[0]`` first, then (attention -> audio module -> motion module -> resnet) per layer, as in
    AnimateAnyone's and Hallo's 3D mid block. ``level`` is the block's resolution level (0 = the
    latent's); ``block_input`` its ``in_channels`` in diffusers' sense (Hallo's audio-module width).
    """

    def __init__(self, kind: str, in_channels: list[int], out_channels: int, temb: int, cfg: UNetConfig,
                 attention: bool, cross_attention_dim: int | None, temporal: TemporalConfig | None,
                 build_motion_modules: bool, speed_dim: int | None, banks: _Counter, motions: _Counter,
                 resample: bool, level: int = 0, audio_modules: AudioModulesConfig | None = None,
                 block_input: int = 0):
        super().__init__()
        self.kind = kind
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(c, out_channels, temb, cfg.norm_num_groups, cfg.norm_eps) for c in in_channels])
        layers = len(in_channels) - 1 if kind == "mid" else len(in_channels)
        if attention:
            self.attentions = nn.ModuleList([
                Transformer2DModel(out_channels, cfg.num_attention_heads, cross_attention_dim, cfg.norm_num_groups,
                                   banks.next(), cfg.use_linear_projection, cfg.cross_attention_scale)
                for _ in range(layers)])
        if attention and audio_modules is not None and audio_modules.enabled:
            widths = hallo_inner_widths(kind, in_channels[:layers], out_channels, block_input)
            self.audio_modules = nn.ModuleList([
                AudioModule(out_channels, inner, cfg.num_attention_heads, cfg.norm_num_groups,
                            audio_modules.cross_attention_dim, level, audio_modules.region_weights)
                for inner in widths])
        self.motion_indices = [motions.next() for _ in range(layers)] if temporal is not None else []
        self.run_motion_modules = attention or kind == "mid" or temporal is None or not temporal.skip_plain_blocks
        if temporal is not None and build_motion_modules:
            groups = temporal.norm_num_groups or cfg.norm_num_groups
            self.motion_modules = nn.ModuleList([
                MotionModule(out_channels, temporal.num_attention_heads, groups, temporal.max_frames, speed_dim, index)
                for index in self.motion_indices])
        if resample and kind == "down":
            self.downsamplers = nn.ModuleList([Downsample2D(out_channels)])
        if resample and kind == "up":
            self.upsamplers = nn.ModuleList([Upsample2D(out_channels)])

    def _layer(self, j: int, x: torch.Tensor, ctx: UNetContext) -> torch.Tensor:
        if hasattr(self, "attentions"):
            x = self.attentions[j](x, ctx)
        if self.motion_indices and ctx.motion_out is not None:
            ctx.motion_out.append(self._motion_feature(x, ctx))
        if hasattr(self, "audio_modules"):
            x = self.audio_modules[j](x, ctx)
        if hasattr(self, "motion_modules") and self.run_motion_modules:
            x = self.motion_modules[j](x, ctx)
        return x

    def _motion_feature(self, x: torch.Tensor, ctx: UNetContext) -> torch.Tensor:
        """What a motion frame hands to this layer's motion module: ``[N, C, h, w]``."""
        if ctx.motion_source == "norm1" and hasattr(self, "attentions"):
            tokens = ctx.bank_out[-1]
            n, c, h, w = x.shape
            return tokens.transpose(1, 2).reshape(n, c, h, w)
        return x

    def forward_down(self, x: torch.Tensor, ctx: UNetContext) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for j, resnet in enumerate(self.resnets):
            x = self._layer(j, resnet(x, ctx.temb), ctx)
            skips.append(x)
        if hasattr(self, "downsamplers"):
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips

    def forward_mid(self, x: torch.Tensor, ctx: UNetContext) -> torch.Tensor:
        x = self.resnets[0](x, ctx.temb)
        for j, resnet in enumerate(self.resnets[1:]):
            x = resnet(self._layer(j, x, ctx), ctx.temb)
        return x

    def forward_up(self, x: torch.Tensor, skips: list[torch.Tensor], ctx: UNetContext,
                   upsample_size: tuple[int, int] | None) -> torch.Tensor:
        for j, resnet in enumerate(self.resnets):
            x = self._layer(j, resnet(torch.cat([x, skips.pop()], dim=1), ctx.temb), ctx)
        if hasattr(self, "upsamplers"):
            x = self.upsamplers[0](x, upsample_size)
        return x


class UNet(nn.Module):
    """SD1.5-shaped UNet on the frame-stacked layout ``[B*F, C, h, w]``.

    Args:
        cfg: block widths, layer counts, heads, norms.
        cross_attention_dim: width of the ``attn2`` context tokens; None removes ``attn2``/``norm2``.
        temporal: where motion modules sit (their locations are numbered even when not built).
        motion_modules: build the motion modules (backbone) or only record features at their
            locations (ReferenceNet, for the motion frames).
        speed_dim: width of speed tokens for the temporal cross-attention; None disables it.
        head: build ``conv_norm_out``/``conv_out`` (the backbone) or not (the ReferenceNet).
        audio_modules: Hallo's audio modules after every spatial transformer (backbone), or None.
    """

    def __init__(self, cfg: UNetConfig, cross_attention_dim: int | None, temporal: TemporalConfig,
                 motion_modules: bool, speed_dim: int | None, head: bool,
                 audio_modules: AudioModulesConfig | None = None):
        super().__init__()
        self.cfg = cfg
        widths = list(cfg.block_out_channels)
        temb = widths[0] * 4
        banks, motions = _Counter(), _Counter()
        self.conv_in = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(widths[0], temb)
        n = len(widths)

        def temporal_at(level: int) -> TemporalConfig | None:
            return temporal if 2 ** level in temporal.resolutions else None

        self.down_blocks = nn.ModuleList()
        out = widths[0]
        for i, kind in enumerate(cfg.down_block_types):
            inp, out = out, widths[i]
            self.down_blocks.append(UNetBlock(
                "down", [inp] + [out] * (cfg.layers_per_block - 1), out, temb, cfg, kind.startswith("CrossAttn"),
                cross_attention_dim, temporal_at(i), motion_modules, speed_dim, banks, motions, resample=i < n - 1,
                level=i, audio_modules=audio_modules, block_input=inp))
        self.mid_block = UNetBlock("mid", [widths[-1], widths[-1]], widths[-1], temb, cfg, True, cross_attention_dim,
                                   temporal if temporal.mid_block else None, motion_modules, speed_dim, banks,
                                   motions, resample=False, level=n - 1, audio_modules=audio_modules,
                                   block_input=widths[-1])
        self.up_blocks = nn.ModuleList()
        reversed_widths = widths[::-1]
        prev = reversed_widths[0]
        for i, kind in enumerate(cfg.up_block_types):
            out = reversed_widths[i]
            skip_in = reversed_widths[min(i + 1, n - 1)]
            ins = [(prev if j == 0 else out) + (skip_in if j == cfg.layers_per_block else out)
                   for j in range(cfg.layers_per_block + 1)]
            self.up_blocks.append(UNetBlock(
                "up", ins, out, temb, cfg, kind.startswith("CrossAttn"), cross_attention_dim,
                temporal_at(n - 1 - i), motion_modules, speed_dim, banks, motions, resample=i < n - 1,
                level=n - 1 - i, audio_modules=audio_modules, block_input=skip_in))
            prev = out
        self.num_bank_layers = banks.value
        self.num_motion_locations = motions.value
        if head:
            self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, widths[0], eps=cfg.norm_eps)
            self.conv_out = nn.Conv2d(widths[0], cfg.out_channels, 3, padding=1)

    def time_embed(self, timesteps: torch.Tensor) -> torch.Tensor:
        """``[N]`` timesteps -> ``[N, 4 * block_out_channels[0]]`` embedding."""
        emb = timestep_embedding(timesteps, self.cfg.block_out_channels[0], self.cfg.flip_sin_to_cos,
                                 self.cfg.freq_shift)
        return self.time_embedding(emb.to(self.conv_in.weight.dtype))

    def run_blocks(self, x: torch.Tensor, ctx: UNetContext, residual_in: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``[N, in_channels, h, w]`` (``h``, ``w`` any size) -> ``[N, C0, h, w]`` before the head.

        ``residual_in`` (``[N, C0, h, w]``), when given, is added after ``conv_in`` (face locator).
        """
        x = self.conv_in(x)
        if residual_in is not None:
            x = x + residual_in
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block.forward_down(x, ctx)
            skips.extend(block_skips)
        x = self.mid_block.forward_mid(x, ctx)
        for i, block in enumerate(self.up_blocks):
            n_skips = len(block.resnets)
            block_skips, skips = skips[-n_skips:], skips[:-n_skips]
            size = tuple(skips[-1].shape[-2:]) if skips else None
            x = block.forward_up(x, block_skips, ctx, size)
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.conv_norm_out(x)))

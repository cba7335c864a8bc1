"""Hallo's audio modules: a separate audio transformer after each spatial transformer of the backbone.

Parameter names follow Hallo's checkpoint (``down_blocks.N.audio_modules.M.transformer_blocks.0.attn2_0``
...), so its ``net.pth`` loads without renaming. One module, on the frame-stacked layout
``[B*F, C, h, w]``:

    GroupNorm(C) -> 1x1 proj_in (C -> inner) -> tokens
    x = x + attn1(norm1(x))                                     self-attention within the frame
    n = norm2(x)
    x = x + w_full * zero_conv_full(attn2_0(n, audio) * m_full)
          + w_face * zero_conv_face(attn2_1(n, audio) * m_face)
          + w_lip  * zero_conv_lip (attn2_2(n, audio) * m_lip)    three audio cross-attentions
    x = x + ff(norm3(x))
    1x1 proj_out (inner -> C) + residual

``m_*`` are the region masks at the module's resolution level, one weight per spatial position;
``w_*`` are Hallo's pose / face / lip weights. The 1x1 ``zero_conv_*`` convolutions act per token
(a linear map over channels). ``inner`` is Hallo's: the block's *input* channels (see
:func:`hallo_inner_widths`), not always the block width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.blocks import Attention, FeedForward, UNetContext

REGIONS = ("full", "face", "lip")


def hallo_inner_widths(kind: str, layer_inputs: list[int], out_channels: int, block_input: int) -> list[int]:
    """Inner widths of a block's audio modules, as Hallo derives them (from ``in_channels``, not the width).

    Args:
        kind: ``"down"``, ``"mid"`` or ``"up"``.
        layer_inputs: input channels of each layer's resnet (down: the block input, then the width).
        out_channels: the block width.
        block_input: the block's ``in_channels`` argument (up blocks: the skip width of the block's
            last layer; down: the previous block's width; mid: the width).
    Returns:
        one width per layer: down: each layer's resnet input; mid: the width; up: ``block_input``.
    """
    if kind == "down":
        return list(layer_inputs)
    if kind == "mid":
        return [out_channels]
    return [block_input] * len(layer_inputs)


class RegionAudioBlock(nn.Module):
    """Self-attention, three region-masked audio cross-attentions, feed-forward (Hallo's block)."""

    def __init__(self, dim: int, heads: int, audio_dim: int, region_weights: tuple[float, float, float]):
        super().__init__()
        self.region_weights = tuple(float(w) for w in region_weights)
        self.zero_conv_full = nn.Conv2d(dim, dim, 1)
        self.zero_conv_face = nn.Conv2d(dim, dim, 1)
        self.zero_conv_lip = nn.Conv2d(dim, dim, 1)
        self.attn1 = Attention(dim, heads, dim // heads)
        self.norm1 = nn.LayerNorm(dim)
        self.attn2_0 = Attention(dim, heads, dim // heads, context_dim=audio_dim)
        self.attn2_1 = Attention(dim, heads, dim // heads, context_dim=audio_dim)
        self.attn2_2 = Attention(dim, heads, dim // heads, context_dim=audio_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)
        self.norm3 = nn.LayerNorm(dim)
        for conv in (self.zero_conv_full, self.zero_conv_face, self.zero_conv_lip):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor, audio: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        """``x``: ``[N, L, dim]`` tokens of ``N = B*F`` frames; ``audio``: ``[N, T, audio_dim]``;
        ``masks``: ``[N, 3, L]`` full / face / lip weights or None (all 1). Returns ``[N, L, dim]``."""
        x = self.attn1(self.norm1(x)) + x
        normed = self.norm2(x)
        attentions = (self.attn2_0, self.attn2_1, self.attn2_2)
        convs = (self.zero_conv_full, self.zero_conv_face, self.zero_conv_lip)
        out = x
        for r, (attention, conv, weight) in enumerate(zip(attentions, convs, self.region_weights)):
            branch = attention(normed, context=audio)
            if masks is not None:
                branch = branch * masks[:, r, :, None].to(branch.dtype)
            out = out + weight * F.linear(branch, conv.weight.flatten(1), conv.bias)
        return self.ff(self.norm3(out)) + out


class AudioModule(nn.Module):
    """One Hallo audio module (``audio_modules.M``) at resolution ``level`` (0 = the latent's).

    Runs only when the context carries audio tokens; otherwise it passes ``x`` through.
    """

    def __init__(self, channels: int, inner: int, heads: int, groups: int, audio_dim: int, level: int,
                 region_weights: tuple[float, float, float]):
        super().__init__()
        if inner % heads:
            raise ValueError(f"audio module width {inner} is not a multiple of {heads} heads")
        self.level = level
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList([RegionAudioBlock(inner, heads, audio_dim, region_weights)])
        self.proj_out = nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, ctx: UNetContext) -> torch.Tensor:
        """``x``: ``[B*F, C, h, w]`` -> same shape."""
        if ctx.audio_tokens is None:
            return x
        n, _, h, w = x.shape
        masks = None
        if ctx.region_masks is not None:
            masks = ctx.region_masks[self.level]
            if masks.shape[-1] != h * w:
                raise ValueError(f"region masks at level {self.level} have {masks.shape[-1]} positions, "
                                 f"the features {h}x{w}")
        hidden = self.proj_in(self.norm(x))
        inner = hidden.shape[1]
        hidden = hidden.permute(0, 2, 3, 1).reshape(n, h * w, inner)
        for block in self.transformer_blocks:
            hidden = block(hidden, ctx.audio_tokens, masks)
        hidden = hidden.reshape(n, h, w, inner).permute(0, 3, 1, 2)
        return self.proj_out(hidden) + x


def region_mask_levels(masks: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Full / face / lip masks at the latent resolution -> one flattened copy per resolution level.

    Args:
        masks: ``[B, 3, h, w]`` in [0, 1] (h, w: the latent size).
        levels: resolution levels of the UNet (SD1.5: 4: 64, 32, 16, 8 for 512 px).
    Returns:
        per level ``l``: ``[B, 3, h_l * w_l]`` (sizes halved per level, rounded up like the UNet's
        stride-2 convolutions), area-averaged (Hallo resizes its 64x64
        mask images with PIL's antialiasing filter; an area average is close, not identical).
    """
    out = []
    h, w = masks.shape[-2:]
    for _ in range(levels):
        out.append(F.adaptive_avg_pool2d(masks, (h, w)).flatten(2))
        h, w = -(-h // 2), -(-w // 2)
    return out

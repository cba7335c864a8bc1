"""AnimateDiff-style temporal (motion) modules with AnimateDiff v2 parameter names.

A motion module attends across frames at every spatial position:
GroupNorm -> ``proj_in`` -> [LayerNorm -> self-attention over frames with sinusoidal positions] x2
-> (optional speed cross-attention) -> LayerNorm -> GEGLU feed-forward -> ``proj_out`` + residual.
Key names match ``motion_modules.N.temporal_transformer...`` of AnimateDiff v2, Hallo and EchoMimic.
Motion-frame features are prepended on the frame axis before the module; they are keys and values of the
attention across frames, and their own outputs are dropped. The last self-attention therefore queries the
clip's frames only, and what follows it (speed cross-attention, feed-forward, ``proj_out``) runs on those
rows only: the same result as running every row and slicing the motion frames off at the end.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from engine.models.blocks import Attention, FeedForward, UNetContext
from emote_kernels.group_norm import group_norm
from emote_kernels.temporal_attention import temporal_attention


def frames_from(t: torch.Tensor, num_frames: int, first: int) -> torch.Tensor:
    """Frame-stacked ``t`` ``[B*F, ...]`` -> ``[B*(F-first), ...]``: frames ``first .. F-1`` of every sample (a view
    where ``t`` allows one; all of ``t`` for ``first = 0``)."""
    return t.view(-1, num_frames, *t.shape[1:])[:, first:].flatten(0, 1)


class PositionalEncoding(nn.Module):
    """Sinusoidal frame positions added to the tokens (persistent buffer ``pe`` ``[1, max_len, dim]``)."""

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32)[:, None]
        div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        pe = torch.zeros(1, max_len, dim)
        pe[0, :, 0::2] = torch.sin(position * div_term)
        pe[0, :, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe, persistent=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, F, N, C]`` -> same, with position ``f`` added to frame ``f``."""
        if x.shape[1] > self.pe.shape[1]:
            raise ValueError(f"{x.shape[1]} frames exceed the temporal position table of {self.pe.shape[1]}")
        return x + self.pe[:, : x.shape[1], None, :].to(x.dtype)


class TemporalSelfAttention(Attention):
    """Self-attention across frames on the frame-stacked layout ``[B*F, N, C]``.

    Positions are added before the projections (so Q, K and V carry them); attention runs
    independently for every sample, spatial token and head over the ``F`` frames.
    """

    def __init__(self, dim: int, heads: int, max_frames: int):
        super().__init__(dim, heads, dim // heads)
        self.pos_encoder = PositionalEncoding(dim, max_frames)

    def forward(self, x: torch.Tensor, num_frames: int,  # type: ignore[override]
                context_frames: int = 0) -> torch.Tensor:
        """``x`` ``[B*F, N, C]`` -> ``[B*(F-c), N, C]``: the outputs of frames ``c .. F-1`` of every sample, where
        ``c = context_frames`` leading frames are keys and values only."""
        bf, n, c = x.shape
        b = bf // num_frames
        x = self.pos_encoder(x.view(b, num_frames, n, c)).view(bf, n, c)
        q, k, v = self.to_q(frames_from(x, num_frames, context_frames)), self.to_k(x), self.to_v(x)
        out = temporal_attention(q, k, v, num_frames, self.heads, context_frames)
        return self.to_out[0](out)


class TemporalTransformerBlock(nn.Module):
    """Two temporal self-attentions, an optional speed cross-attention, and a feed-forward."""

    def __init__(self, dim: int, heads: int, max_frames: int, speed_dim: int | None):
        super().__init__()
        self.attention_blocks = nn.ModuleList([TemporalSelfAttention(dim, heads, max_frames) for _ in range(2)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(2)])
        if speed_dim is not None:
            self.speed_norm = nn.LayerNorm(dim)
            self.speed_attn = Attention(dim, heads, dim // heads, context_dim=speed_dim)
            nn.init.zeros_(self.speed_attn.to_out[0].weight)
            nn.init.zeros_(self.speed_attn.to_out[0].bias)
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, num_frames: int, speed_tokens: torch.Tensor | None,
                context_frames: int = 0) -> torch.Tensor:
        """``x`` ``[B*F, N, C]``, ``speed_tokens`` ``[B, F, S, D_s]`` -> ``[B*(F-c), N, C]`` (``c =
        context_frames`` leading frames per sample are only read by the last self-attention)."""
        last = len(self.attention_blocks) - 1
        for index, (attention, norm) in enumerate(zip(self.attention_blocks, self.norms)):
            dropped = context_frames if index == last else 0
            x = attention(norm(x), num_frames, dropped) + frames_from(x, num_frames, dropped)
        if hasattr(self, "speed_attn") and speed_tokens is not None:
            x = self.speed_attn(self.speed_norm(x), context=speed_tokens[:, context_frames:].flatten(0, 1)) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer3DModel(nn.Module):
    """Per-frame GroupNorm, linear ``proj_in``, one temporal block, zero-initialised ``proj_out``, residual."""

    def __init__(self, channels: int, heads: int, groups: int, max_frames: int, speed_dim: int | None):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([TemporalTransformerBlock(channels, heads, max_frames, speed_dim)])
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, num_frames: int, speed_tokens: torch.Tensor | None,
                context_frames: int = 0) -> torch.Tensor:
        """``x``: ``[B*F, C, h, w]`` -> ``[B*(F-c), C, h, w]``, the frames after the ``c = context_frames``
        leading ones of every sample (all of them by default)."""
        bf, c, h, w = x.shape
        last = len(self.transformer_blocks) - 1
        hidden = group_norm(x, self.norm.num_groups, self.norm.weight, self.norm.bias, self.norm.eps)
        hidden = hidden.permute(0, 2, 3, 1).reshape(bf, h * w, c)
        hidden = self.proj_in(hidden)
        for index, block in enumerate(self.transformer_blocks):
            hidden = block(hidden, num_frames, speed_tokens, context_frames if index == last else 0)
        hidden = self.proj_out(hidden)
        x = frames_from(x, num_frames, context_frames)
        return hidden.reshape(x.shape[0], h, w, c).permute(0, 3, 1, 2) + x


class MotionModule(nn.Module):
    """One temporal module at a UNet location (``motion_modules.N``).

    ``motion_index`` selects this location's entry of the motion-frame features.
    """

    def __init__(self, channels: int, heads: int, groups: int, max_frames: int, speed_dim: int | None,
                 motion_index: int):
        super().__init__()
        self.motion_index = motion_index
        self.temporal_transformer = TemporalTransformer3DModel(channels, heads, groups, max_frames, speed_dim)

    def forward(self, x: torch.Tensor, ctx: UNetContext) -> torch.Tensor:
        """``x``: ``[B*F, C, h, w]``; motion frames (``[B, n, C, h, w]``) join on the frame axis."""
        frames = ctx.num_frames
        motion = ctx.motion_features[self.motion_index] if ctx.motion_features is not None else None
        if motion is None:
            return self.temporal_transformer(x, frames, ctx.speed_tokens)
        b, n = motion.shape[:2]
        joined = torch.cat([motion.to(x.dtype), x.view(b, frames, *x.shape[1:])], dim=1)
        return self.temporal_transformer(joined.flatten(0, 1), n + frames, ctx.speed_tokens, context_frames=n)

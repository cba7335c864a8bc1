"""UNet building blocks with diffusers parameter names.

GroupNorm (+SiLU) runs through :mod:`emote_kernels.group_norm` (Triton on CUDA, PyTorch elsewhere).
Every module here keeps the attribute names of diffusers' ``UNet2DConditionModel`` pieces
(``resnets.N.norm1``, ``attentions.N.transformer_blocks.0.attn1.to_q``, ...), so SD1.5 weights in
diffusers format load without renaming. The spatial layout is always "frames stacked in the
batch": a clip of ``B`` samples with ``F`` frames travels as ``[B*F, C, h, w]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from emote_kernels.group_norm import group_norm
from emote_kernels.reference_attention import reference_attention


def timestep_embedding(timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool = True,
                       freq_shift: float = 0.0, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of diffusion timesteps.

    Args:
        timesteps: ``[N]`` timesteps (integer or fractional).
        dim: embedding width (even).
    Returns:
        ``[N, dim]`` float32 embedding, ``[cos, sin]`` halves when ``flip_sin_to_cos``.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    angles = timesteps.float()[:, None] * freqs[None, :]
    sin, cos = torch.sin(angles), torch.cos(angles)
    return torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)


class TimestepEmbedding(nn.Module):
    """Two-layer MLP on the sinusoidal embedding (``time_embedding.linear_1/linear_2``)."""

    def __init__(self, in_dim: int, embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, embed_dim)
        self.linear_2 = nn.Linear(embed_dim, embed_dim)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(emb)))


@dataclass
class UNetContext:
    """Per-call state that every block of one UNet forward reads or writes.

    Attributes:
        temb: ``[B*F, temb_dim]`` time embedding, one row per frame.
        num_frames: frames per sample ``F`` (1 for the ReferenceNet).
        cross_tokens: ``[B*F, T, D]`` tokens the spatial cross-attention (``attn2``) reads: audio
            tokens (EMO, EchoMimic) or face-embedding tokens (Hallo); None skips ``attn2``.
        audio_tokens: ``[B*F, T, D]`` audio tokens for the separate audio modules (Hallo), or None.
        region_masks: per resolution level (0 = the latent's), ``[B*F, 3, h_l * w_l]`` full / face /
            lip weights in [0, 1] for the audio modules; None weighs every position 1.
        reference_bank: per transformer block, ``[B, L, C]`` reference tokens appended to the
            self-attention keys/values; None means plain self-attention.
        reference_keep: ``[B]`` bool; samples marked False ignore the reference tokens (plain
            self-attention), so guidance branches with and without the reference share one batch.
        motion_features: per motion-module location, ``[B, n, C, h, w]`` features of the motion
            frames, prepended on the frame axis inside the motion module; None means no motion frames.
        speed_tokens: ``[B, n+F, S, D_s]`` speed tokens for the temporal modules' cross-attention.
        bank_out / motion_out: lists the ReferenceNet fills (None in the backbone).
        motion_source: what ``motion_out`` records per motion-module location: ``"hidden"`` (the
            hidden state) or ``"norm1"`` (the preceding transformer block's ``norm1`` tokens).
    """

    temb: torch.Tensor
    num_frames: int = 1
    cross_tokens: torch.Tensor | None = None
    audio_tokens: torch.Tensor | None = None
    region_masks: list[torch.Tensor] | None = None
    reference_bank: list[torch.Tensor] | None = None
    reference_keep: torch.Tensor | None = None
    motion_features: list[torch.Tensor] | None = None
    speed_tokens: torch.Tensor | None = None
    bank_out: list[torch.Tensor] | None = None
    motion_out: list[torch.Tensor] | None = None
    motion_source: str = "hidden"


class Attention(nn.Module):
    """Multi-head attention with diffusers names (``to_q``, ``to_k``, ``to_v``, ``to_out.0``).

    ``forward(x, context=None, reference=None)``: queries from ``x`` ``[N, L, query_dim]``; keys and
    values from ``context`` ``[N, S, context_dim]`` when given (cross-attention), else from ``x``.
    ``reference`` ``[B, R, query_dim]`` (with ``N = B * frames``) appends R reference tokens to the
    keys/values of every frame of its sample; their projections are computed once per sample,
    not once per frame. ``reference_keep`` ``[B]`` bool masks them out for the samples marked False. That path
    runs through :mod:`emote_kernels.reference_attention` (Triton on CUDA, PyTorch's SDPA elsewhere).
    """

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(0.0)])

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        n, length, inner = t.shape
        return t.view(n, length, self.heads, inner // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                reference: torch.Tensor | None = None, reference_keep: torch.Tensor | None = None) -> torch.Tensor:
        source = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(source), self.to_v(source)
        if reference is not None:
            out = reference_attention(q, k, v, self.to_k(reference), self.to_v(reference), reference_keep, self.heads)
            return self.to_out[0](out)
        out = F.scaled_dot_product_attention(self._split_heads(q), self._split_heads(k), self._split_heads(v))
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return self.to_out[0](out)


class GEGLU(nn.Module):
    """``proj`` to twice the width, gated by GELU (diffusers ``ff.net.0``)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return F.gelu(gate).mul_(hidden)


class FeedForward(nn.Module):
    """GEGLU feed-forward, 4x inner width (``ff.net.0.proj``, ``ff.net.2``)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Reference-attention (``attn1``), optional audio cross-attention (``attn2``), feed-forward.

    ``attn1`` is self-attention over the frame's own tokens concatenated with the reference bank's
    tokens for this layer (none -> plain self-attention). In the ReferenceNet the block writes its
    ``norm1`` output into the bank instead. ``attn2`` attends to the frame's audio tokens; its
    output is multiplied by ``cross_attention_scale`` (EchoMimic uses 3.0).
    """

    def __init__(self, dim: int, heads: int, cross_attention_dim: int | None, bank_index: int,
                 cross_attention_scale: float = 1.0):
        super().__init__()
        self.bank_index = bank_index
        self.cross_attention_scale = cross_attention_scale
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim // heads)
        if cross_attention_dim is not None:
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = Attention(dim, heads, dim // heads, context_dim=cross_attention_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, ctx: UNetContext) -> torch.Tensor:
        normed = self.norm1(x)
        if ctx.bank_out is not None:
            ctx.bank_out.append(normed)
        reference = ctx.reference_bank[self.bank_index] if ctx.reference_bank is not None else None
        x = self.attn1(normed, reference=reference, reference_keep=ctx.reference_keep) + x
        if hasattr(self, "attn2") and ctx.cross_tokens is not None:
            x = self.attn2(self.norm2(x), context=ctx.cross_tokens) * self.cross_attention_scale + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    """Spatial transformer (``attentions.N``): GroupNorm, ``proj_in``, one block, ``proj_out``, residual."""

    def __init__(self, channels: int, heads: int, cross_attention_dim: int | None, groups: int,
                 bank_index: int, use_linear_projection: bool = False, cross_attention_scale: float = 1.0):
        super().__init__()
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in = nn.Linear(channels, channels)
            self.proj_out = nn.Linear(channels, channels)
        else:
            self.proj_in = nn.Conv2d(channels, channels, 1)
            self.proj_out = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(channels, heads, cross_attention_dim, bank_index, cross_attention_scale)])

    def forward(self, x: torch.Tensor, ctx: UNetContext) -> torch.Tensor:
        n, c, h, w = x.shape
        residual = x
        x = self.norm(x)
        if not self.use_linear_projection:
            x = self.proj_in(x)
        x = x.permute(0, 2, 3, 1).reshape(n, h * w, c)
        if self.use_linear_projection:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, ctx)
        if self.use_linear_projection:
            x = self.proj_out(x)
        x = x.reshape(n, h, w, c).permute(0, 3, 1, 2)
        if not self.use_linear_projection:
            x = self.proj_out(x)
        return x + residual


class ResnetBlock2D(nn.Module):
    """GroupNorm-SiLU-conv residual block with a time-embedding shift (``resnets.N``)."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int, eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def _norm_silu(self, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        return group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps, silu=True)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self._norm_silu(self.norm1, x))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(self._norm_silu(self.norm2, h)))
        shortcut = self.conv_shortcut(x) if hasattr(self, "conv_shortcut") else x
        return shortcut + h


class Downsample2D(nn.Module):
    """Stride-2 3x3 convolution (``downsamplers.0.conv``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest 2x (or to an explicit size) then 3x3 convolution (``upsamplers.0.conv``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)

"""Temporal self-attention of AnimateDiff-style motion modules, fused over the UNet's layout.

A motion module attends, for every batch item, spatial position and head, across the frames of a clip.
Its projected queries, keys and values come out of the linear layers in the UNet's frame-stacked
token layout ``[(b*f), h*w, heads*head_dim]``; the usual implementation first transposes them to
``[(b*h*w), f, heads*head_dim]``, runs attention over sequences of length ``f`` and transposes back.
At these sequence lengths (frames plus motion frames, 12-48) the score and softmax arithmetic is tiny
and those transposes dominate. The Triton kernel here reads and writes the frame-stacked layout in
place through strides instead, so ``q``, ``k`` and ``v`` may also be views (e.g. chunks of one fused
QKV projection).

``temporal_attention`` dispatches (see :mod:`emote_kernels.dispatch`); ``temporal_attention_reference`` and
``temporal_attention_triton`` are the two implementations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from emote_kernels.dispatch import dot_precision, triton_jit, use_triton

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None
    tl = None

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_FRAMES = 128
"""Longest frame sequence the Triton kernel takes (one block holds the whole sequence)."""
_MIN_DOT = 16
_MAX_HEAD_BLOCK = 64


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_frames: int, heads: int,
                  context_frames: int = 0) -> None:
    if k.dim() != 3:
        raise ValueError(f"k must be [(b*f), h*w, heads*head_dim], got shape {tuple(k.shape)}")
    if not 0 <= context_frames < num_frames:
        raise ValueError(f"context_frames={context_frames} must be in [0, num_frames={num_frames})")
    if v.shape != k.shape:
        raise ValueError(f"k, v shapes differ: {tuple(k.shape)}, {tuple(v.shape)}")
    if num_frames < 1 or k.shape[0] % num_frames:
        raise ValueError(f"leading dimension {k.shape[0]} is not a multiple of num_frames={num_frames}")
    queries = (k.shape[0] // num_frames * (num_frames - context_frames), *k.shape[1:])
    if tuple(q.shape) != queries:
        raise ValueError(f"q must be {queries} for k {tuple(k.shape)} with {context_frames} context frames, "
                         f"got {tuple(q.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")
    if heads < 1 or q.shape[2] % heads:
        raise ValueError(f"channels {q.shape[2]} are not a multiple of heads={heads}")


def temporal_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_frames: int, heads: int, context_frames: int = 0
) -> torch.Tensor:
    """Attention across frames, in plain PyTorch (computed in fp32, or fp64 for fp64 inputs).

    Args:
        q: projected queries ``[(b*(f-c)), h*w, heads*head_dim]``: frames ``c .. f-1`` of every batch item.
        k, v: projected keys and values ``[(b*f), h*w, heads*head_dim]``, frame-stacked (row ``i*f + t`` is
            frame ``t`` of batch item ``i``).
        num_frames: ``f``, the sequence length of the keys.
        heads: number of attention heads; ``head_dim = channels // heads``.
        context_frames: ``c``, the leading frames of every item that are keys and values only (a motion
            module's motion frames in its last attention: their outputs are dropped, so they need no query).

    Returns:
        ``[(b*(f-c)), h*w, heads*head_dim]`` in ``q``'s dtype: for each batch item, spatial position, head
        and query frame, ``softmax(Q K^T / sqrt(head_dim)) V`` over the ``f`` frames.
    """
    _check_inputs(q, k, v, num_frames, heads, context_frames)
    rows, positions, channels = q.shape
    query_frames = num_frames - context_frames
    batch, head_dim = rows // query_frames, channels // heads
    compute_dtype = torch.promote_types(q.dtype, torch.float32)

    def frames_last(x: torch.Tensor, frames: int) -> torch.Tensor:
        # [(b*f), hw, heads*d] -> [b*hw, heads, f, d]
        x = x.to(compute_dtype).reshape(batch, frames, positions, heads, head_dim).permute(0, 2, 3, 1, 4)
        return x.reshape(batch * positions, heads, frames, head_dim)

    out = F.scaled_dot_product_attention(frames_last(q, query_frames), frames_last(k, num_frames),
                                         frames_last(v, num_frames))
    out = out.view(batch, positions, heads, query_frames, head_dim)
    return out.permute(0, 3, 1, 2, 4).reshape(rows, positions, channels).to(q.dtype)


def _temporal_attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    positions,
    num_frames,
    context_frames,
    stride_qr,
    stride_qp,
    stride_qc,
    stride_kr,
    stride_kp,
    stride_kc,
    stride_vr,
    stride_vp,
    stride_vc,
    stride_or,
    stride_op,
    stride_oc,
    qk_scale,
    BLOCK_F: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    """One program: one (batch item, spatial position) on grid axis 0, one head on axis 1.

    Keys and values cover the item's ``num_frames`` frames; queries and outputs only its frames from
    ``context_frames`` on, stored densely (``num_frames - context_frames`` rows per item).

    The whole frame sequence sits in one ``BLOCK_F`` block (>= 16, masked beyond ``num_frames``); the
    head dimension is walked in ``BLOCK_D`` chunks (masked beyond ``HEAD_DIM``), first to accumulate
    the ``[BLOCK_F, BLOCK_F]`` scores, then to write ``P V`` chunk by chunk. ``qk_scale`` is
    ``log2(e) / sqrt(HEAD_DIM)`` so that the softmax runs on ``exp2``. ``HEAD_DIM`` is a compile-time
    constant so that the compiler knows each head's channels start aligned (see the reference-attention
    kernel).
    """
    item = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    batch = item // positions
    position = item % positions

    frames = tl.arange(0, BLOCK_F)
    frame_mask = frames < num_frames
    query_mask = frame_mask & (frames >= context_frames)
    rows = batch * num_frames + frames
    query_rows = batch * (num_frames - context_frames) + frames - context_frames
    channel0 = head * HEAD_DIM
    q_rows = q_ptr + query_rows * stride_qr + position * stride_qp + channel0 * stride_qc
    k_rows = k_ptr + rows * stride_kr + position * stride_kp + channel0 * stride_kc
    v_rows = v_ptr + rows * stride_vr + position * stride_vp + channel0 * stride_vc
    o_rows = o_ptr + query_rows * stride_or + position * stride_op + channel0 * stride_oc

    scores = tl.zeros((BLOCK_F, BLOCK_F), dtype=tl.float32)
    for d0 in range(0, HEAD_DIM, BLOCK_D):
        dims = d0 + tl.arange(0, BLOCK_D)
        dim_mask = dims < HEAD_DIM
        q = tl.load(
            q_rows[:, None] + dims[None, :] * stride_qc,
            mask=query_mask[:, None] & dim_mask[None, :],
            other=0.0,
        ).to(tl.float32)
        k_t = tl.load(
            k_rows[None, :] + dims[:, None] * stride_kc,
            mask=dim_mask[:, None] & frame_mask[None, :],
            other=0.0,
        ).to(tl.float32)
        scores += tl.dot(q, k_t, input_precision=DOT_PRECISION)

    scores = tl.where(frame_mask[None, :], scores * qk_scale, float("-inf"))
    row_max = tl.max(scores, axis=1)
    probs = tl.exp2(scores - row_max[:, None])
    probs = probs / tl.sum(probs, axis=1)[:, None]

    for d0 in range(0, HEAD_DIM, BLOCK_D):
        dims = d0 + tl.arange(0, BLOCK_D)
        dim_mask = (dims < HEAD_DIM)[None, :]
        v = tl.load(v_rows[:, None] + dims[None, :] * stride_vc, mask=frame_mask[:, None] & dim_mask,
                    other=0.0).to(tl.float32)
        out = tl.dot(probs, v, input_precision=DOT_PRECISION)
        tl.store(o_rows[:, None] + dims[None, :] * stride_oc, out.to(o_ptr.dtype.element_ty),
                 mask=query_mask[:, None] & dim_mask)


def attention_grid(batch: int, positions: int, heads: int) -> tuple[int, int, int]:
    """Launch grid: ``batch * positions`` on axis 0 (limit 2**31 - 1), heads on axis 1 (limit 65,535)."""
    return (batch * positions, heads, 1)


def attention_config(num_frames: int, head_dim: int, dtype: torch.dtype = torch.float16) -> tuple[int, int, int]:
    """``(BLOCK_F, BLOCK_D, num_warps)``: the padded sequence block and head-dimension chunk (each >= 16
    so that ``tl.dot`` compiles for NVIDIA GPUs) and the warps per program. Sequences over 64 frames walk
    the head dimension in chunks of 16 (with chunks of 64 their ``[128, 128]`` scores spill registers on
    sm_90), and fp32 takes 8 warps from 32 frames (with 4 it spills at head dim 80 and 160); checked by
    ``python -m emote_kernels.aot_compile``."""
    block_f = max(_MIN_DOT, triton.next_power_of_2(num_frames))
    widest = _MIN_DOT if block_f > 64 else _MAX_HEAD_BLOCK
    block_d = max(_MIN_DOT, min(widest, triton.next_power_of_2(head_dim)))
    small = block_f <= (16 if dtype == torch.float32 else 32)
    return block_f, block_d, 4 if small else 8


def temporal_attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_frames: int, heads: int, context_frames: int = 0
) -> torch.Tensor:
    """Attention across frames with the Triton kernel; same contract as :func:`temporal_attention_reference`.

    Any strides are accepted for ``q``, ``k``, ``v`` (nothing is copied); the output is a new contiguous
    ``[(b*(f-c)), h*w, heads*head_dim]`` tensor. Runs on CUDA tensors, or on CPU tensors under
    ``TRITON_INTERPRET=1``. Supports fp32, fp16 and bf16 (accumulation in fp32) and
    ``num_frames <= MAX_FRAMES``.
    """
    if triton is None:
        raise RuntimeError("temporal_attention_triton needs the triton package")
    _check_inputs(q, k, v, num_frames, heads, context_frames)
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype {q.dtype} not supported; use one of {SUPPORTED_DTYPES}")
    if num_frames > MAX_FRAMES:
        raise ValueError(f"num_frames={num_frames} exceeds the kernel's MAX_FRAMES={MAX_FRAMES}")
    rows, positions, channels = q.shape
    out = torch.empty((rows, positions, channels), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    batch, head_dim = k.shape[0] // num_frames, channels // heads
    block_f, block_d, num_warps = attention_config(num_frames, head_dim, q.dtype)
    kernel = triton_jit(_temporal_attention_kernel)
    kernel[attention_grid(batch, positions, heads)](
        q,
        k,
        v,
        out,
        positions,
        num_frames,
        context_frames,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *out.stride(),
        math.log2(math.e) / math.sqrt(head_dim),
        BLOCK_F=block_f,
        BLOCK_D=block_d,
        DOT_PRECISION=dot_precision(q.dtype),
        HEAD_DIM=head_dim,
        num_warps=num_warps,
    )
    return out


def temporal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_frames: int, heads: int, context_frames: int = 0
) -> torch.Tensor:
    """Attention across frames in the frame-stacked layout: Triton where it applies, else the reference.

    Args:
        q: ``[(b*(f-c)), h*w, heads*head_dim]``, the queries of frames ``c .. f-1`` of each item.
        k, v: ``[(b*f), h*w, heads*head_dim]`` each.
        num_frames: ``f``.
        heads: number of heads.
        context_frames: ``c``, leading frames that are keys and values only (default 0: every frame queries).

    Returns:
        ``[(b*(f-c)), h*w, heads*head_dim]`` in ``q``'s dtype.
    """
    if use_triton(q, k, v) and q.dtype in SUPPORTED_DTYPES and num_frames <= MAX_FRAMES:
        return temporal_attention_triton(q, k, v, num_frames, heads, context_frames)
    return temporal_attention_reference(q, k, v, num_frames, heads, context_frames)

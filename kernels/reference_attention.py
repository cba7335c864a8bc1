"""Reference attention: the backbone's spatial self-attention over a frame's own tokens and the reference bank.

In every backbone transformer block (``attn1``) each frame's queries attend to the frame's own keys and values
followed by the reference bank's: the ReferenceNet's tokens of the portrait at that block, one set per sample,
shared by all frames of the sample and fixed for the whole session. ``reference_keep`` drops the bank for the
samples marked False (the guidance branches without the reference).

The usual implementation repeats the bank's keys and values for every frame, concatenates them to the frame's
own, builds a boolean mask from ``reference_keep`` and calls SDPA, then transposes the heads back. The Triton
kernel here reads the bank where it lies (row ``n // frames`` for frame-row ``n``), reads ``reference_keep`` on
the device as a per-sample loop length (no mask, no host sync, so it can be captured in a CUDA graph), reads
``q``/``k``/``v`` through strides in the ``[(b*f), tokens, heads*head_dim]`` layout the projections produce, and
writes the output in that layout for ``to_out``: a flash-attention loop (online softmax in fp32) over the own
tokens' blocks and then the bank's.

``reference_attention`` dispatches (see :mod:`emote_kernels.dispatch`); ``reference_attention_reference`` (the
model's SDPA path, also what the ONNX export traces) and ``reference_attention_triton`` are the two
implementations.
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
MAX_HEAD_DIM = 256
"""Largest head dimension the Triton kernel takes (the head sits whole in one block, padded to a power of 2)."""


def repeat_rows(t: torch.Tensor, times: int) -> torch.Tensor:
    """``t`` ``[b, ...]`` -> ``[b*times, ...]``, each row repeated ``times`` times in a row (``repeat_interleave`` on
    dim 0), written as expand + flatten: exported to ONNX as Expand/Reshape, without the OneHot nodes
    ``repeat_interleave`` brings (TensorRT does not document OneHot as computing shape tensors)."""
    return t[:, None].expand(t.shape[0], times, *t.shape[1:]).flatten(0, 1)


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bank_k: torch.Tensor, bank_v: torch.Tensor,
                  keep: torch.Tensor | None, heads: int) -> None:
    if q.dim() != 3:
        raise ValueError(f"q must be [(b*f), tokens, heads*head_dim], got shape {tuple(q.shape)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if bank_k.dim() != 3 or bank_v.shape != bank_k.shape or bank_k.shape[2] != q.shape[2]:
        raise ValueError(f"bank_k, bank_v must both be [b, bank tokens, {q.shape[2]}], "
                         f"got {tuple(bank_k.shape)}, {tuple(bank_v.shape)}")
    if bank_k.shape[0] < 1 or q.shape[0] % bank_k.shape[0]:
        raise ValueError(f"{q.shape[0]} frame rows are not a whole number of frames for {bank_k.shape[0]} samples")
    if any(t.dtype != q.dtype for t in (k, v, bank_k, bank_v)):
        raise ValueError(f"dtypes differ: q {q.dtype}, k {k.dtype}, v {v.dtype}, bank {bank_k.dtype}, {bank_v.dtype}")
    if any(t.device != q.device for t in (k, v, bank_k, bank_v)):
        raise ValueError("q, k, v and the bank are not on one device")
    if keep is not None and (tuple(keep.shape) != (bank_k.shape[0],) or keep.dtype != torch.bool):
        raise ValueError(f"reference_keep must be [{bank_k.shape[0]}] bool (one flag per sample), "
                         f"got {tuple(keep.shape)} {keep.dtype}")
    if heads < 1 or q.shape[2] % heads:
        raise ValueError(f"channels {q.shape[2]} are not a multiple of heads={heads}")


def reference_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bank_k: torch.Tensor,
                                  bank_v: torch.Tensor, keep: torch.Tensor | None, heads: int) -> torch.Tensor:
    """Self-attention over [own tokens ; bank tokens] with PyTorch's SDPA (the model's own path).

    Args:
        q, k, v: projected queries, keys, values of the frames, each ``[(b*f), L, heads*head_dim]``,
            frame-stacked (row ``i*f + t`` is frame ``t`` of sample ``i``).
        bank_k, bank_v: the reference bank's projected keys and values, ``[b, R, heads*head_dim]``.
        keep: ``[b]`` bool; a sample marked False attends to its own tokens only. None keeps every bank.
        heads: number of attention heads; ``head_dim = channels // heads``.

    Returns:
        ``[(b*f), L, heads*head_dim]`` in ``q``'s dtype, computed in it (as SDPA does).
    """
    _check_inputs(q, k, v, bank_k, bank_v, keep, heads)
    rows, length, channels = q.shape
    frames = rows // bank_k.shape[0]
    k = torch.cat([k, repeat_rows(bank_k, frames)], dim=1)
    v = torch.cat([v, repeat_rows(bank_v, frames)], dim=1)
    mask = None
    if keep is not None:
        own = torch.ones(rows, length, dtype=torch.bool, device=q.device)
        bank = repeat_rows(keep.to(q.device), frames)[:, None].expand(-1, bank_k.shape[1])
        mask = torch.cat([own, bank], dim=1)[:, None, None, :]

    def split_heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(rows, t.shape[1], heads, channels // heads).transpose(1, 2)

    out = F.scaled_dot_product_attention(split_heads(q), split_heads(k), split_heads(v), attn_mask=mask)
    return out.transpose(1, 2).reshape(rows, length, channels)


def _reference_attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    bank_k_ptr,
    bank_v_ptr,
    keep_ptr,
    o_ptr,
    length,
    bank_length,
    num_frames,
    query_tiles,
    stride_qr,
    stride_ql,
    stride_qc,
    stride_kr,
    stride_kl,
    stride_kc,
    stride_vr,
    stride_vl,
    stride_vc,
    stride_bkr,
    stride_bkl,
    stride_bkc,
    stride_bvr,
    stride_bvl,
    stride_bvc,
    stride_or,
    stride_ol,
    stride_oc,
    qk_scale,
    HAS_KEEP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    """One program: ``BLOCK_M`` queries of one frame row (grid axis 0: row x query tile), one head (axis 1).

    Key blocks ``0 .. own_blocks - 1`` are the frame's own tokens, the next ``cdiv(kept, BLOCK_N)`` the bank of
    its sample (``kept`` = the bank's length, 0 when ``keep`` is False); a block never straddles the two, so
    each block reads one tensor, its base pointer and strides chosen per block. Scores are scaled by
    ``qk_scale = log2(e) / sqrt(HEAD_DIM)`` for ``exp2``; the running max, sum and output accumulate in fp32.
    ``DOT_FP32`` casts the ``tl.dot`` operands to fp32 (see :func:`reference_attention_triton`). ``HEAD_DIM`` is
    a compile-time constant so that the compiler knows each head's channels start 16-byte aligned (40
    channels of fp16 are 80 bytes, which Triton's launch-time divisibility-by-16 hint cannot say): with it
    passed at run time the 64x64 level's loads (head dim 40) were scalar.
    """
    program = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    row = program // query_tiles
    sample = row // num_frames
    queries = (program % query_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
    query_mask = queries < length
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < HEAD_DIM
    q = tl.load(q_ptr + row * stride_qr + queries[:, None] * stride_ql + (head * HEAD_DIM + dims)[None, :] * stride_qc,
                mask=query_mask[:, None] & dim_mask[None, :], other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)
    k_row = k_ptr + row * stride_kr + head * HEAD_DIM * stride_kc
    v_row = v_ptr + row * stride_vr + head * HEAD_DIM * stride_vc
    bank_k_row = bank_k_ptr + sample * stride_bkr + head * HEAD_DIM * stride_bkc
    bank_v_row = bank_v_ptr + sample * stride_bvr + head * HEAD_DIM * stride_bvc

    kept_length = bank_length
    if HAS_KEEP:
        kept_length = tl.where(tl.load(keep_ptr + sample) != 0, bank_length, 0)
    own_blocks = tl.cdiv(length, BLOCK_N)
    total_blocks = own_blocks + tl.cdiv(kept_length, BLOCK_N)

    running_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for block in range(0, total_blocks):
        own = block < own_blocks
        keys = tl.where(own, block, block - own_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
        key_mask = keys < tl.where(own, length, kept_length)
        k_t = tl.load(tl.where(own, k_row, bank_k_row) + keys[None, :] * tl.where(own, stride_kl, stride_bkl)
                      + dims[:, None] * tl.where(own, stride_kc, stride_bkc),
                      mask=dim_mask[:, None] & key_mask[None, :], other=0.0)
        if DOT_FP32:
            k_t = k_t.to(tl.float32)
        scores = tl.dot(q, k_t, input_precision=DOT_PRECISION) * qk_scale
        scores = tl.where(key_mask[None, :], scores, float("-inf"))
        block_max = tl.maximum(running_max, tl.max(scores, axis=1))
        rescale = tl.exp2(running_max - block_max)
        probs = tl.exp2(scores - block_max[:, None])
        running_sum = running_sum * rescale + tl.sum(probs, axis=1)
        values = tl.load(tl.where(own, v_row, bank_v_row) + keys[:, None] * tl.where(own, stride_vl, stride_bvl)
                         + dims[None, :] * tl.where(own, stride_vc, stride_bvc),
                         mask=key_mask[:, None] & dim_mask[None, :], other=0.0)
        if DOT_FP32:
            values = values.to(tl.float32)
        acc = acc * rescale[:, None] + tl.dot(probs.to(values.dtype), values, input_precision=DOT_PRECISION)
        running_max = block_max

    out = acc / running_sum[:, None]
    tl.store(o_ptr + row * stride_or + queries[:, None] * stride_ol + (head * HEAD_DIM + dims)[None, :] * stride_oc,
             out.to(o_ptr.dtype.element_ty), mask=query_mask[:, None] & dim_mask[None, :])


def attention_grid(rows: int, length: int, heads: int, block_m: int) -> tuple[int, int, int]:
    """Launch grid: frame rows x query tiles on axis 0 (limit 2**31 - 1), heads on axis 1 (limit 65,535)."""
    return (rows * triton.cdiv(length, block_m), heads, 1)


_CONFIGS = {
    # (padded head dim, fp32 inputs): (BLOCK_M, BLOCK_N, num_warps), large tiles that compile for sm_80 and sm_90,
    # specialised as launched at SD1.5's shapes, without spilling (`python -m emote_kernels.aot_compile`); fp16/bf16
    # use the tensor cores, fp32 the FMA units. Not tuned on a GPU yet.
    (64, False): (128, 64, 8),
    (128, False): (128, 64, 8),
    (256, False): (64, 64, 8),
    (64, True): (64, 32, 8),
    (128, True): (64, 32, 8),
    (256, True): (32, 32, 8),
}


def attention_config(head_dim: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, BLOCK_D, num_warps)`` for a head dimension and element type.

    ``BLOCK_D`` is the head dimension padded to a power of two, at least 64 (so that ``tl.dot`` tiles are
    >= 16 and one table serves every head dim); the query and key blocks shrink as it grows so that the
    fp32 accumulator and the tiles stay in registers.
    """
    block_d = max(64, triton.next_power_of_2(head_dim))
    block_m, block_n, num_warps = _CONFIGS[block_d, dtype == torch.float32]
    return block_m, block_n, block_d, num_warps


def reference_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bank_k: torch.Tensor,
                               bank_v: torch.Tensor, keep: torch.Tensor | None, heads: int) -> torch.Tensor:
    """Reference attention with the Triton kernel; same contract as :func:`reference_attention_reference`
    except that the softmax runs in fp32 whatever the input dtype.

    bf16 on the CPU (Triton's interpreter) multiplies in fp32: the interpreter of Triton 3.7 computes ``tl.dot``
    of bf16 operands wrongly (a 16x16 product off by 1e10); on CUDA bf16 stays bf16 for the tensor cores.

    Any strides are accepted for the inputs (nothing is copied; ``keep`` is moved to ``q``'s device if it is
    elsewhere); the output is a new contiguous ``[(b*f), L, heads*head_dim]`` tensor. Runs on CUDA tensors,
    or on CPU tensors under ``TRITON_INTERPRET=1``; fp32, fp16 and bf16; ``head_dim <= MAX_HEAD_DIM``.
    """
    if triton is None:
        raise RuntimeError("reference_attention_triton needs the triton package")
    _check_inputs(q, k, v, bank_k, bank_v, keep, heads)
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype {q.dtype} not supported; use one of {SUPPORTED_DTYPES}")
    rows, length, channels = q.shape
    head_dim = channels // heads
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"head_dim={head_dim} exceeds the kernel's MAX_HEAD_DIM={MAX_HEAD_DIM}")
    out = torch.empty((rows, length, channels), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    block_m, block_n, block_d, num_warps = attention_config(head_dim, q.dtype)
    keep_flags = q if keep is None else keep.to(q.device)
    kernel = triton_jit(_reference_attention_kernel)
    kernel[attention_grid(rows, length, heads, block_m)](
        q,
        k,
        v,
        bank_k,
        bank_v,
        keep_flags,
        out,
        length,
        bank_k.shape[1],
        rows // bank_k.shape[0],
        triton.cdiv(length, block_m),
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *bank_k.stride(),
        *bank_v.stride(),
        *out.stride(),
        math.log2(math.e) / math.sqrt(head_dim),
        HAS_KEEP=keep is not None,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        DOT_PRECISION=dot_precision(q.dtype),
        DOT_FP32=q.dtype == torch.bfloat16 and not q.is_cuda,
        HEAD_DIM=head_dim,
        num_warps=num_warps,
    )
    return out


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bank_k: torch.Tensor,
                        bank_v: torch.Tensor, keep: torch.Tensor | None, heads: int) -> torch.Tensor:
    """Self-attention over [own tokens ; the sample's bank tokens]: Triton where it applies, else the reference.

    Args:
        q, k, v: ``[(b*f), L, heads*head_dim]`` each.
        bank_k, bank_v: ``[b, R, heads*head_dim]`` each.
        keep: ``[b]`` bool or None (every sample keeps its bank).
        heads: number of heads.

    Returns:
        ``[(b*f), L, heads*head_dim]`` in ``q``'s dtype.
    """
    head_dim = q.shape[2] // max(heads, 1)
    if use_triton(q, k, v, bank_k, bank_v) and q.dtype in SUPPORTED_DTYPES and head_dim <= MAX_HEAD_DIM:
        return reference_attention_triton(q, k, v, bank_k, bank_v, keep, heads)
    return reference_attention_reference(q, k, v, bank_k, bank_v, keep, heads)

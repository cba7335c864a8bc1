"""GroupNorm with optional fused SiLU, as used before every convolution of the UNet's resnets and
before the motion modules.

``group_norm`` dispatches (see :mod:`emote_kernels.dispatch`); ``group_norm_reference`` (PyTorch's
``group_norm`` followed by ``silu``) and ``group_norm_triton`` are the two implementations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from emote_kernels.dispatch import triton_jit, use_triton

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None
    tl = None

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MIN_BLOCK = 16
_MAX_BLOCK = 2048


def _check_inputs(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None) -> None:
    if x.dim() < 2:
        raise ValueError(f"x must be [N, C, *spatial], got shape {tuple(x.shape)}")
    channels = x.shape[1]
    if num_groups < 1 or channels % num_groups:
        raise ValueError(f"channels {channels} are not a multiple of num_groups={num_groups}")
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None and param.shape != (channels,):
            raise ValueError(f"{name} must have shape ({channels},), got {tuple(param.shape)}")


def group_norm_reference(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    silu: bool = False,
) -> torch.Tensor:
    """GroupNorm (+ SiLU) in plain PyTorch.

    Args:
        x: ``[N, C, *spatial]`` (any number of trailing dimensions, including none).
        num_groups: groups ``G``; ``C`` must be a multiple of it.
        weight, bias: per-channel affine parameters ``[C]``, or ``None``.
        eps: added to the variance.
        silu: apply ``x * sigmoid(x)`` after the affine.

    Returns:
        A tensor shaped and typed like ``x``.
    """
    _check_inputs(x, num_groups, weight, bias)
    y = F.group_norm(x, num_groups, weight, bias, eps)
    return F.silu(y) if silu else y


def _group_norm_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    num_groups,
    spatial,
    channels_per_group,
    group_size,
    eps,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    APPLY_SILU: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program per (sample, group), over a contiguous ``[N, C, S]`` input.

    A group is the contiguous run of ``channels_per_group * spatial`` elements. Pass 1 accumulates in
    fp32 the sum and sum of squares of ``x - x0`` (``x0`` the group's first element, a shift that
    keeps the variance accurate when the mean is large against the spread); pass 2 normalises
    ``(x - x0) - mean(x - x0)`` (so the large mean never has to be rounded),
    applies the per-channel affine and optionally SiLU, and stores in the output's dtype.
    """
    pid = tl.program_id(0).to(tl.int64)
    group = pid % num_groups
    start = pid * group_size
    offsets = tl.arange(0, BLOCK)

    shift = tl.load(x_ptr + start).to(tl.float32)
    sum_acc = tl.zeros((BLOCK,), dtype=tl.float32)
    sq_acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for i0 in range(0, group_size, BLOCK):
        idx = i0 + offsets
        mask = idx < group_size
        x = tl.load(x_ptr + start + idx, mask=mask, other=0.0).to(tl.float32)
        centred = tl.where(mask, x - shift, 0.0)
        sum_acc += centred
        sq_acc += centred * centred
    mean_shifted = tl.sum(sum_acc, axis=0) / group_size
    var = tl.maximum(tl.sum(sq_acc, axis=0) / group_size - mean_shifted * mean_shifted, 0.0)
    rstd = 1.0 / tl.sqrt(var + eps)

    for i0 in range(0, group_size, BLOCK):
        idx = i0 + offsets
        mask = idx < group_size
        x = tl.load(x_ptr + start + idx, mask=mask, other=0.0).to(tl.float32)
        y = tl.where(mask, (x - shift - mean_shifted) * rstd, 0.0)
        channel = group * channels_per_group + idx // spatial
        if HAS_WEIGHT:
            y = y * tl.load(w_ptr + channel, mask=mask, other=1.0).to(tl.float32)
        if HAS_BIAS:
            y = y + tl.load(b_ptr + channel, mask=mask, other=0.0).to(tl.float32)
        if APPLY_SILU:
            y = y * tl.sigmoid(y)
        tl.store(y_ptr + start + idx, y.to(y_ptr.dtype.element_ty), mask=mask)


def group_norm_config(group_size: int) -> tuple[int, int]:
    """``(BLOCK, num_warps)``: elements per loop step (the group size rounded up to a power of two,
    clamped to [16, 2048]) and warps per program (one per 256 elements of the block, 1 to 8)."""
    block = max(_MIN_BLOCK, min(_MAX_BLOCK, triton.next_power_of_2(group_size)))
    return block, min(8, max(1, block // 256))


def group_norm_triton(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    silu: bool = False,
) -> torch.Tensor:
    """GroupNorm (+ SiLU) with the Triton kernel; same contract as :func:`group_norm_reference`.

    Statistics in fp32 for fp32, fp16 and bf16 inputs. A non-contiguous ``x`` is made contiguous
    first. Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``.
    """
    if triton is None:
        raise RuntimeError("group_norm_triton needs the triton package")
    _check_inputs(x, num_groups, weight, bias)
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype {x.dtype} not supported; use one of {SUPPORTED_DTYPES}")
    x = x.contiguous()
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    samples, channels = x.shape[:2]
    spatial = math.prod(x.shape[2:])
    channels_per_group = channels // num_groups
    group_size = channels_per_group * spatial
    block, num_warps = group_norm_config(group_size)
    kernel = triton_jit(_group_norm_kernel)
    kernel[(samples * num_groups,)](
        x,
        weight.contiguous() if weight is not None else x,
        bias.contiguous() if bias is not None else x,
        y,
        num_groups,
        spatial,
        channels_per_group,
        group_size,
        eps,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        APPLY_SILU=silu,
        BLOCK=block,
        num_warps=num_warps,
    )
    return y


def group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    silu: bool = False,
) -> torch.Tensor:
    """GroupNorm (+ SiLU): Triton where it applies, else the reference.

    Args:
        x: ``[N, C, *spatial]``.
        num_groups: groups ``G`` dividing ``C``.
        weight, bias: ``[C]`` or ``None``.
        eps: added to the variance.
        silu: fuse a SiLU after the affine.

    Returns:
        A tensor shaped and typed like ``x``.
    """
    if use_triton(x, weight, bias) and x.dtype in SUPPORTED_DTYPES:
        return group_norm_triton(x, num_groups, weight, bias, eps, silu)
    return group_norm_reference(x, num_groups, weight, bias, eps, silu)

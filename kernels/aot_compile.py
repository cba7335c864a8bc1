"""Compile the kernels for NVIDIA GPUs ahead of time, on a machine without one.

Triton's interpreter (how the kernels are tested on a CPU) accepts code that no NVIDIA GPU compiles,
``tl.dot`` tiles under 16 for one. Compiling each kernel's launch configurations to a cubin with the
``ptxas`` bundled in the triton wheel catches that anywhere, and ``cuobjdump`` (bundled too) reports
the registers and spills of each, which bound occupancy. The attention cases carry the integer arguments
of an SD1.5 launch and are specialised as Triton's launcher would (1 becomes a constant, multiples of 16 are
marked so, pointers 16-byte aligned), so the counts of vector and scalar global loads in their PTX say
whether the real launch reads its tiles with vector loads.

    python -m emote_kernels.aot_compile [--arch 80 90] [--json]

Must run without ``TRITON_INTERPRET=1``: Triton decorates its own library functions for the interpreter
when that is set at import, and those cannot be compiled afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from emote_kernels import group_norm, reference_attention, temporal_attention
from emote_kernels.dispatch import check_triton_mode, dot_precision, interpreter_enabled

DEFAULT_ARCHS = (80, 90)
POINTER_DTYPES = {"*fp32": torch.float32, "*fp16": torch.float16, "*bf16": torch.bfloat16}


@dataclass
class KernelCase:
    """One launch configuration of a kernel: pointer element type (``other_pointers`` names the pointers of
    another type), fp32 scalars, constexprs, warps, and the integer arguments of a real launch
    (``int_args``: empty compiles without the launcher's specialisation)."""

    name: str
    fn: Callable
    pointer_type: str
    float_args: frozenset[str]
    constexprs: dict
    num_warps: int
    other_pointers: dict[str, str] = field(default_factory=dict)
    int_args: dict[str, int] = field(default_factory=dict)


@dataclass
class CompileResult:
    """Outcome of compiling one case for one architecture; registers and spills when cuobjdump ran; global
    loads in the PTX (vector: ``ld.global.v2``/``.v4`` and 8-16 byte ``cp.async``)."""

    name: str
    arch: int
    config: dict
    ok: bool
    registers: int | None = None
    local_bytes: int | None = None
    stack_bytes: int | None = None
    vector_loads: int | None = None
    scalar_loads: int | None = None
    error: str | None = None


SD15_TOKENS = {40: 64 * 64, 80: 32 * 32, 160: 16 * 16}
"""Tokens per frame at the SD1.5 level (512x512) whose 8 heads have this head dim; 8x8 for others."""
SD15_HEADS = 8


def _contiguous_strides(tensors, token_axis: str, tokens: int, channels: int) -> dict[str, int]:
    """The stride arguments (``stride_<tensor>r``, ``stride_<tensor><token_axis>``, ``stride_<tensor>c``) of
    contiguous ``[rows, tokens, channels]`` tensors."""
    strides = {}
    for tensor in tensors:
        strides.update({f"stride_{tensor}r": tokens * channels, f"stride_{tensor}{token_axis}": channels,
                        f"stride_{tensor}c": 1})
    return strides


def attention_case(num_frames: int, head_dim: int, pointer_type: str) -> KernelCase:
    """The temporal-attention launch the wrapper makes for these frames, head dim and element type, on
    contiguous projections at the SD1.5 level of that head dim."""
    dtype = POINTER_DTYPES[pointer_type]
    block_f, block_d, num_warps = temporal_attention.attention_config(num_frames, head_dim, dtype)
    positions, channels = SD15_TOKENS.get(head_dim, 64), SD15_HEADS * head_dim
    strides = _contiguous_strides("qkvo", "p", positions, channels)
    return KernelCase(
        name=f"temporal_attention f={num_frames} d={head_dim} {pointer_type[1:]}",
        fn=temporal_attention._temporal_attention_kernel,
        pointer_type=pointer_type,
        float_args=frozenset({"qk_scale"}),
        constexprs=dict(BLOCK_F=block_f, BLOCK_D=block_d, DOT_PRECISION=dot_precision(dtype), HEAD_DIM=head_dim),
        num_warps=num_warps,
        int_args=dict(positions=positions, num_frames=num_frames, context_frames=4, **strides),
    )


def reference_attention_case(head_dim: int, pointer_type: str, keep: bool) -> KernelCase:
    """The reference-attention launch the wrapper makes for this head dim, element type and keep flags."""
    dtype = POINTER_DTYPES[pointer_type]
    block_m, block_n, block_d, num_warps = reference_attention.attention_config(head_dim, dtype)
    tokens, channels = SD15_TOKENS.get(head_dim, 64), SD15_HEADS * head_dim
    strides = _contiguous_strides(("q", "k", "v", "bk", "bv", "o"), "l", tokens, channels)
    return KernelCase(
        name=f"reference_attention d={head_dim} {pointer_type[1:]}{' keep' if keep else ''}",
        fn=reference_attention._reference_attention_kernel,
        pointer_type=pointer_type,
        float_args=frozenset({"qk_scale"}),
        constexprs=dict(HAS_KEEP=keep, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
                        DOT_PRECISION=dot_precision(dtype), DOT_FP32=False,
                        HEAD_DIM=head_dim),
        num_warps=num_warps,
        other_pointers={"keep_ptr": "*i1"},
        int_args=dict(length=tokens, bank_length=tokens, num_frames=12, query_tiles=-(-tokens // block_m), **strides),
    )


def group_norm_case(group_size: int, pointer_type: str, affine: bool, silu: bool) -> KernelCase:
    """The GroupNorm launch the wrapper makes for this group size, element type, affine and SiLU."""
    block, num_warps = group_norm.group_norm_config(group_size)
    spatial = next((side * side for side in (64, 32, 16, 8) if group_size % (side * side) == 0), 1)
    return KernelCase(
        name=f"group_norm group={group_size} {pointer_type[1:]}{' silu' if silu else ''}",
        fn=group_norm._group_norm_kernel,
        pointer_type=pointer_type,
        float_args=frozenset({"eps"}),
        constexprs=dict(HAS_WEIGHT=affine, HAS_BIAS=affine, APPLY_SILU=silu, BLOCK=block),
        num_warps=num_warps,
        int_args=dict(num_groups=32, spatial=spatial, channels_per_group=group_size // spatial, group_size=group_size),
    )


def default_cases() -> list[KernelCase]:
    """Configurations that SD1.5-sized motion modules and resnets launch (every block size they reach)."""
    return [
        attention_case(16, 40, "*fp16"),
        attention_case(18, 80, "*bf16"),
        attention_case(48, 160, "*fp16"),
        attention_case(100, 40, "*fp16"),
        attention_case(28, 160, "*fp32"),
        reference_attention_case(40, "*fp16", keep=True),
        reference_attention_case(80, "*fp16", keep=False),
        reference_attention_case(160, "*fp16", keep=True),
        reference_attention_case(80, "*bf16", keep=True),
        reference_attention_case(40, "*fp32", keep=True),
        reference_attention_case(160, "*fp32", keep=False),
        group_norm_case(10 * 64 * 64, "*fp16", affine=True, silu=True),
        group_norm_case(40 * 8 * 8, "*bf16", affine=True, silu=False),
        group_norm_case(30, "*fp32", affine=False, silu=True),
    ]


def _resource_usage(cubin: bytes) -> tuple[int | None, int | None, int | None]:
    """Registers, local and stack bytes per thread of the cubin's kernel (None where cuobjdump is missing);
    spilled registers land in the stack frame."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None, None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        report = subprocess.run([tool, "--dump-resource-usage", handle.name], capture_output=True, text=True).stdout
    found = [re.search(rf"{key}:(\d+)", report) for key in ("REG", "LOCAL", "STACK")]
    registers, local, stack = (int(match.group(1)) if match else None for match in found)
    return registers, local, stack


def _global_loads(ptx: str) -> tuple[int, int]:
    """(vector, scalar) global-load instructions in ``ptx``: ``ld.global.v2/.v4`` and asynchronous copies of
    8 or 16 bytes into shared memory (``cp.async``, how the compiler pipelines tiles) against 1-4 byte ones."""
    vector = scalar = 0
    for load in re.finditer(r"ld\.global\S*", ptx):
        vector, scalar = (vector + 1, scalar) if re.search(r"\.v[248]\b", load.group()) else (vector, scalar + 1)
    pattern = r"cp\.async\.c[ag]\.shared\.global\S*\s+\[[^\]]+\],\s*\[[^\]]+\],\s*(0x[0-9a-fA-F]+|\d+)"
    for copy in re.finditer(pattern, ptx):
        vector, scalar = (vector + 1, scalar) if int(copy.group(1), 0) >= 8 else (vector, scalar + 1)
    return vector, scalar


def compile_case(case: KernelCase, arch: int) -> CompileResult:
    """Compile ``case`` for ``sm_<arch>`` down to a cubin; the error's first line when it fails."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    check_triton_mode(interpret=False)
    kernel = JITFunction(case.fn)
    signature, constexprs, attrs = {}, dict(case.constexprs), {}
    for index, name in enumerate(kernel.arg_names):
        value = case.int_args.get(name)
        if name in case.constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = case.other_pointers.get(name, case.pointer_type)
            if case.int_args:
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif name in case.float_args:
            signature[name] = "fp32"
        elif value == 1:
            signature[name], constexprs[name] = "constexpr", 1
        else:
            signature[name] = "i32"
            if value is not None and value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    config = dict(case.constexprs, num_warps=case.num_warps)
    try:
        compiled = triton.compile(
            ASTSource(kernel, signature, constexprs, attrs),
            target=GPUTarget("cuda", arch, 32),
            options=dict(num_warps=case.num_warps),
        )
    except Exception as exc:  # noqa: BLE001 - any compiler failure is the result being reported
        message = " ".join(str(exc).split())
        return CompileResult(case.name, arch, config, ok=False, error=f"{type(exc).__name__}: {message}")
    registers, local, stack = _resource_usage(compiled.asm["cubin"])
    vector, scalar = _global_loads(compiled.asm["ptx"])
    return CompileResult(case.name, arch, config, ok=True, registers=registers, local_bytes=local, stack_bytes=stack,
                         vector_loads=vector, scalar_loads=scalar)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compile the Triton kernels for NVIDIA GPUs without a GPU.")
    parser.add_argument("--arch", type=int, nargs="+", default=list(DEFAULT_ARCHS), help="SM versions (default 80 90)")
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    args = parser.parse_args(argv)
    if interpreter_enabled():
        print("aot_compile: unset TRITON_INTERPRET; compiling needs Triton's compiler, not its interpreter",
              file=sys.stderr)
        return 2
    results = [compile_case(case, arch) for arch in args.arch for case in default_cases()]
    if args.json:
        print(json.dumps([asdict(r) for r in results]))
    else:
        for r in results:
            usage = (f"{r.registers} registers, {r.stack_bytes} B stack, global loads {r.vector_loads} vector "
                     f"{r.scalar_loads} scalar" if r.ok else r.error)
            print(f"sm_{r.arch}  {'ok  ' if r.ok else 'FAIL'}  {r.name}  {usage}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

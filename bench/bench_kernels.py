"""Time each Triton kernel against its PyTorch reference at SD1.5 shapes (CUDA only).

Temporal attention: latents 64x64 / 32x32 / 16x16 / 8x8 with 320 / 640 / 1280 / 1280 channels, 8 heads,
clips of 12 + 4 and 16 + 2 frames (clip + motion frames), fp16, in the frame-stacked layout. Beside the
kernel's own reference (fp32 math) it times the usual eager path: explicit (b f) <-> (b h w) transposes
around fp16 ``scaled_dot_product_attention``.
GroupNorm: the UNet's resnet inputs at the same resolutions, 32 groups, with and without SiLU.

Each timing: warm-up calls (the first compiles the kernel), then CUDA events around every repeat, median.
Prints a Markdown table and writes JSON (``--out``) with reference / kernel per row.

    python bench/bench_kernels.py [--out bench/results/kernels.json] [--repeats 50] [--batch 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from kernels import group_norm as gn
from kernels import temporal_attention as ta

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "kernels.json"
RESOLUTIONS = ((64, 320), (32, 640), (16, 1280), (8, 1280))
CLIPS = ((12, 4), (16, 2))
HEADS = 8
GROUPS = 32


def time_cuda(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` calls, each timed by CUDA events, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def sdpa_with_transposes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frames: int, heads: int) -> torch.Tensor:
    """The eager motion-module path: [(b f), hw, c] -> [(b hw), heads, f, d], SDPA, and back."""
    rows, positions, channels = q.shape
    batch, head_dim = rows // frames, channels // heads

    def to_sequences(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(batch, frames, positions, heads, head_dim).permute(0, 2, 3, 1, 4)
        return x.reshape(batch * positions, heads, frames, head_dim)

    out = F.scaled_dot_product_attention(to_sequences(q), to_sequences(k), to_sequences(v))
    out = out.reshape(batch, positions, heads, frames, head_dim).permute(0, 3, 1, 2, 4)
    return out.reshape(rows, positions, channels)


def time_or_error(fn: Callable[[], object], warmup: int, repeats: int) -> float | str:
    """Like :func:`time_cuda`, but a failing call (e.g. a grid over 65,535) gives its one-line error."""
    try:
        return time_cuda(fn, warmup, repeats)
    except RuntimeError as exc:
        return f"error: {str(exc).splitlines()[0]}"


def bench_temporal_attention(batch: int, warmup: int, repeats: int) -> list[dict]:
    rows = []
    for (size, channels) in RESOLUTIONS:
        for clip, motion in CLIPS:
            frames = clip + motion
            q, k, v = (
                torch.randn(batch * frames, size * size, channels, device="cuda", dtype=torch.float16)
                for _ in range(3)
            )
            kernel_out = ta.temporal_attention_triton(q, k, v, frames, HEADS)
            reference_out = ta.temporal_attention_reference(q, k, v, frames, HEADS)
            kernel_ms = time_cuda(lambda: ta.temporal_attention_triton(q, k, v, frames, HEADS), warmup, repeats)
            reference_ms = time_cuda(lambda: ta.temporal_attention_reference(q, k, v, frames, HEADS), warmup, repeats)
            sdpa_ms = time_or_error(lambda: sdpa_with_transposes(q, k, v, frames, HEADS), warmup, repeats)
            rows.append(
                dict(
                    op="temporal_attention",
                    shape=f"b={batch} f={clip}+{motion} {size}x{size} c={channels} heads={HEADS}",
                    dtype="fp16",
                    kernel_ms=kernel_ms,
                    reference_ms=reference_ms,
                    ratio=reference_ms / kernel_ms,
                    sdpa_ms=sdpa_ms,
                    sdpa_ratio=sdpa_ms / kernel_ms if isinstance(sdpa_ms, float) else None,
                    max_abs_diff=(kernel_out.float() - reference_out.float()).abs().max().item(),
                )
            )
    return rows


def bench_group_norm(batch: int, warmup: int, repeats: int) -> list[dict]:
    rows = []
    frames = sum(CLIPS[1])
    for (size, channels) in RESOLUTIONS:
        for silu in (True, False):
            x = torch.randn(batch * frames, channels, size, size, device="cuda", dtype=torch.float16)
            weight = torch.randn(channels, device="cuda", dtype=torch.float16)
            bias = torch.randn(channels, device="cuda", dtype=torch.float16)
            kernel_out = gn.group_norm_triton(x, GROUPS, weight, bias, silu=silu)
            reference_out = gn.group_norm_reference(x, GROUPS, weight, bias, silu=silu)
            kernel_ms = time_cuda(lambda: gn.group_norm_triton(x, GROUPS, weight, bias, silu=silu), warmup, repeats)
            reference_ms = time_cuda(lambda: gn.group_norm_reference(x, GROUPS, weight, bias, silu=silu), warmup, repeats)
            rows.append(
                dict(
                    op="group_norm_silu" if silu else "group_norm",
                    shape=f"n={batch * frames} c={channels} {size}x{size} groups={GROUPS}",
                    dtype="fp16",
                    kernel_ms=kernel_ms,
                    reference_ms=reference_ms,
                    ratio=reference_ms / kernel_ms,
                    sdpa_ms=None,
                    sdpa_ratio=None,
                    max_abs_diff=(kernel_out.float() - reference_out.float()).abs().max().item(),
                )
            )
    return rows


def markdown_table(rows: list[dict], device: str) -> str:
    """Rows as a Markdown table, times in ms, with the device in the heading line."""

    def fmt(value: float | str | None, spec: str) -> str:
        if value is None:
            return "-"
        return format(value, spec) if isinstance(value, float) else value

    lines = [
        f"Kernels vs references on {device} (median ms; ratio = reference / kernel)",
        "",
        "| op | shape | dtype | kernel ms | reference ms | ratio | eager SDPA ms | SDPA / kernel | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['kernel_ms']:.3f} | {r['reference_ms']:.3f} | "
            f"{r['ratio']:.2f} | {fmt(r['sdpa_ms'], '.3f')} | {fmt(r['sdpa_ratio'], '.2f')} | {r['max_abs_diff']:.2e} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results path (default {DEFAULT_OUT})")
    parser.add_argument("--batch", type=int, default=1, help="batch before frames (2 with CFG; default 1)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls before timing (default 10)")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls; the median is reported (default 50)")
    parser.add_argument(
        "--ops", choices=("all", "temporal_attention", "group_norm"), default="all", help="which kernels to time"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA device here; these kernel timings need an NVIDIA GPU", file=sys.stderr)
        return 2
    if ta.triton is None:
        print("bench_kernels: the triton package is not installed", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    device = torch.cuda.get_device_name()
    rows = []
    if args.ops in ("all", "temporal_attention"):
        rows += bench_temporal_attention(args.batch, args.warmup, args.repeats)
    if args.ops in ("all", "group_norm"):
        rows += bench_group_norm(args.batch, args.warmup, args.repeats)
    print(markdown_table(rows, device))
    result = dict(
        device=device,
        torch=torch.__version__,
        triton=ta.triton.__version__,
        python=platform.python_version(),
        warmup=args.warmup,
        repeats=args.repeats,
        rows=rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

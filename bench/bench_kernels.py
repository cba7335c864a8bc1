"""Time each Triton kernel against (a) eager PyTorch and (b) torch.compile of the same eager code (CUDA only).

Shapes are SD1.5's at 512x512 (the four UNet resolutions, clips of 12 + 4 motion frames, batch 1 and 2,
fp16); the ops, their baselines and how the figures are taken: docs/decisions.md. Without a CUDA device the
script says so and exits 0.

    python -m bench.bench_kernels [--out-dir bench/results/<gpu>/] [--repeats 50] [--batches 1,2]
    python bench/bench_kernels.py ...   (the same)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):  # run as a script (python bench/bench_kernels.py): the repository's packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from bench.cli import RESULTS, add_common_flags, int_tuple, write_atomic
from bench.environment import gpu_driver, slug
from emote_kernels import group_norm as gn
from emote_kernels import reference_attention as ra
from emote_kernels import temporal_attention as ta

RESOLUTIONS = ((64, 320), (32, 640), (16, 1280), (8, 1280))
"""(latent side, channels) of SD1.5's four UNet levels at 512x512."""
CLIP_FRAMES, MOTION_FRAMES = 12, 4
HEADS = 8
GROUPS = 32
OPS = ("temporal_attention", "group_norm_silu", "group_norm", "reference_attention", "layer_norm")
LAYER_NORM_PAYS = 1.2
"""(a) / (b) speed-up of torch.compile's LayerNorm over eager at which a Triton LayerNorm would pay."""
GOALS = {"temporal_attention": 2.0, "group_norm_silu": 3.0}
"""Speed-up over eager PyTorch (a) each kernel aims for at these shapes."""


@dataclass(frozen=True)
class Case:
    """One benchmarked shape: ``op`` on a batch of ``batch`` clips of ``frames`` frames at ``size`` x ``size``
    latents with ``channels`` channels, in ``dtype``."""

    op: str
    batch: int
    size: int
    channels: int
    frames: int = CLIP_FRAMES + MOTION_FRAMES
    dtype: torch.dtype = torch.float16

    @property
    def rows(self) -> int:
        """Frame-stacked rows: ``batch * frames``."""
        return self.batch * self.frames

    @property
    def elements(self) -> int:
        """Elements of one activation tensor ``[rows, channels, size, size]``."""
        return self.rows * self.channels * self.size * self.size

    @property
    def element_bytes(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def bytes_moved(self) -> int:
        """Bytes the op must move at least: attention reads q, k, v and writes the output (4 tensors), reference
        attention also reads the bank's K and V once per clip; GroupNorm and LayerNorm read x and their
        per-channel weight and bias, and write the output."""
        if self.op == "temporal_attention":
            return 4 * self.elements * self.element_bytes
        if self.op == "reference_attention":
            return (4 * self.elements + 2 * self.elements // self.frames) * self.element_bytes
        return (2 * self.elements + 2 * self.channels) * self.element_bytes

    def describe(self) -> str:
        """E.g. ``b=2 f=12+4 64x64 c=320`` (12 clip frames and 4 motion frames), ``b=1 f=12 8x8 c=1280``."""
        motion = self.frames - CLIP_FRAMES
        frames = f"{CLIP_FRAMES}+{motion}" if motion else f"{self.frames}"
        return f"b={self.batch} f={frames} {self.size}x{self.size} c={self.channels}"


def cases(batches: tuple[int, ...] = (1, 2), ops: tuple[str, ...] = OPS) -> list[Case]:
    """Every op at every SD1.5 resolution for every batch (reference attention on the clip frames alone), batch
    by batch and shape by shape with every op at each, so that a run cut short has measured every op."""
    return [Case(op, batch, size, channels,
                 frames=CLIP_FRAMES if op == "reference_attention" else CLIP_FRAMES + MOTION_FRAMES)
            for batch in batches for size, channels in RESOLUTIONS for op in ops]


def bandwidth_gbs(bytes_moved: int, ms: float | None) -> float | None:
    """Achieved bandwidth in GB/s (1e9 bytes) of moving ``bytes_moved`` in ``ms`` milliseconds."""
    if ms is None or not ms > 0:
        return None
    return bytes_moved / (ms / 1000.0) / 1e9


def speedup(baseline_ms: float | str | None, kernel_ms: float | None) -> float | None:
    """``baseline / kernel`` (above 1: the kernel is faster); None when either is missing or failed."""
    if not isinstance(baseline_ms, float) or kernel_ms is None or not kernel_ms > 0:
        return None
    return baseline_ms / kernel_ms


def eager_temporal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frames: int,
                             heads: int) -> torch.Tensor:
    """The eager motion-module path in the inputs' dtype: ``[(b F), hw, C]`` -> ``[(b hw), heads, F, d]``,
    SDPA, and back to ``[(b F), hw, C]``."""
    rows, positions, channels = q.shape
    batch, head_dim = rows // frames, channels // heads

    def to_sequences(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(batch, frames, positions, heads, head_dim).permute(0, 2, 3, 1, 4)
        return x.reshape(batch * positions, heads, frames, head_dim)

    out = F.scaled_dot_product_attention(to_sequences(q), to_sequences(k), to_sequences(v))
    out = out.reshape(batch, positions, heads, frames, head_dim).permute(0, 3, 1, 2, 4)
    return out.reshape(rows, positions, channels)


def eager_group_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, silu: bool) -> torch.Tensor:
    """``F.group_norm`` (32 groups) then, when ``silu``, ``F.silu``: ``[N, C, h, w]`` in and out."""
    y = F.group_norm(x, GROUPS, weight, bias)
    return F.silu(y) if silu else y


def eager_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``F.layer_norm`` over the last dimension (the channels of ``[rows, tokens, C]``)."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias)


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


def time_or_error(fn: Callable[[], object], warmup: int, repeats: int) -> float | str:
    """Like :func:`time_cuda`, but a failing call gives ``"error: <its first line>"``."""
    try:
        return time_cuda(fn, warmup, repeats)
    except Exception as exc:  # e.g. a grid over 65,535 or a compile failure: reported, not fatal
        torch.cuda.synchronize()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"error: {first}"


def _inputs(case: Case) -> tuple[Callable[[], torch.Tensor] | None, Callable[[], torch.Tensor],
                                 Callable[[], torch.Tensor]]:
    """(kernel, eager, compiled) closures over fresh CUDA inputs for ``case`` (kernel None for ``layer_norm``,
    which has none)."""
    if case.op == "layer_norm":
        x = torch.randn(case.rows, case.size * case.size, case.channels, device="cuda", dtype=case.dtype)
        weight, bias = (torch.randn(case.channels, device="cuda", dtype=case.dtype) for _ in range(2))
        compiled = torch.compile(eager_layer_norm, dynamic=False)
        return None, lambda: eager_layer_norm(x, weight, bias), lambda: compiled(x, weight, bias)
    if case.op == "reference_attention":
        q, k, v = (torch.randn(case.rows, case.size * case.size, case.channels, device="cuda", dtype=case.dtype)
                   for _ in range(3))
        bank_k, bank_v = (torch.randn(case.batch, case.size * case.size, case.channels, device="cuda", dtype=case.dtype)
                          for _ in range(2))
        keep = torch.ones(case.batch, dtype=torch.bool, device="cuda")
        compiled = torch.compile(ra.reference_attention_reference, dynamic=False)
        return (lambda: ra.reference_attention_triton(q, k, v, bank_k, bank_v, keep, HEADS),
                lambda: ra.reference_attention_reference(q, k, v, bank_k, bank_v, keep, HEADS),
                lambda: compiled(q, k, v, bank_k, bank_v, keep, HEADS))
    if case.op == "temporal_attention":
        q, k, v = (torch.randn(case.rows, case.size * case.size, case.channels, device="cuda", dtype=case.dtype)
                   for _ in range(3))
        compiled = torch.compile(eager_temporal_attention, dynamic=False)
        return (lambda: ta.temporal_attention_triton(q, k, v, case.frames, HEADS),
                lambda: eager_temporal_attention(q, k, v, case.frames, HEADS),
                lambda: compiled(q, k, v, case.frames, HEADS))
    x = torch.randn(case.rows, case.channels, case.size, case.size, device="cuda", dtype=case.dtype)
    weight = torch.randn(case.channels, device="cuda", dtype=case.dtype)
    bias = torch.randn(case.channels, device="cuda", dtype=case.dtype)
    silu = case.op == "group_norm_silu"
    compiled = torch.compile(eager_group_norm, dynamic=False)
    return (lambda: gn.group_norm_triton(x, GROUPS, weight, bias, silu=silu),
            lambda: eager_group_norm(x, weight, bias, silu),
            lambda: compiled(x, weight, bias, silu))


def measure(case: Case, warmup: int, repeats: int, compile_baseline: bool = True) -> dict:
    """One result row for ``case``: times (ms), bandwidths (GB/s), speed-ups and the kernel's max abs
    difference from eager (an error string where eager fails; None for an op without a kernel)."""
    kernel, eager, compiled = _inputs(case)
    kernel_ms = time_cuda(kernel, warmup, repeats) if kernel is not None else None
    eager_ms = time_or_error(eager, warmup, repeats)
    compiled_ms = time_or_error(compiled, warmup, repeats) if compile_baseline or kernel is None else None
    difference: float | str | None = None
    try:
        if kernel is not None:
            difference = (kernel().float() - eager().float()).abs().max().item()
    except Exception as exc:  # the eager baseline cannot run at this shape
        difference = f"error: {str(exc).strip().splitlines()[0]}"
    moved = case.bytes_moved()
    return {
        "op": case.op,
        "shape": case.describe(),
        "batch": case.batch,
        "size": case.size,
        "channels": case.channels,
        "frames": case.frames,
        "dtype": str(case.dtype).removeprefix("torch."),
        "bytes": moved,
        "kernel_ms": kernel_ms,
        "eager_ms": eager_ms,
        "compiled_ms": compiled_ms,
        "kernel_gbs": bandwidth_gbs(moved, kernel_ms),
        "eager_gbs": bandwidth_gbs(moved, eager_ms if isinstance(eager_ms, float) else None),
        "compiled_gbs": bandwidth_gbs(moved, compiled_ms if isinstance(compiled_ms, float) else None),
        "eager_over_kernel": speedup(eager_ms, kernel_ms),
        "compiled_over_kernel": speedup(compiled_ms, kernel_ms),
        "max_abs_diff": difference,
    }


def _cell(value: float | str | None, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value.replace("|", "/")
    return format(value, spec)


def markdown_table(rows: list[dict], device: str) -> str:
    """The rows as a Markdown table (ms, GB/s, speed-ups), with the device in the heading line."""
    lines = [
        f"Triton kernels vs (a) eager PyTorch and (b) torch.compile of it, on {device} "
        "(median ms; GB/s = minimum bytes moved / time; speed-up = baseline / kernel)",
        "",
        "| op | shape | dtype | kernel ms | (a) eager ms | (b) compiled ms | kernel GB/s | (a) GB/s | (b) GB/s | "
        "(a) / kernel | (b) / kernel | max abs diff vs (a) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['op']} | {r['shape']} | {r['dtype']} | {_cell(r['kernel_ms'], '.3f')} | "
            f"{_cell(r['eager_ms'], '.3f')} | "
            f"{_cell(r['compiled_ms'], '.3f')} | {_cell(r['kernel_gbs'], '.0f')} | {_cell(r['eager_gbs'], '.0f')} | "
            f"{_cell(r['compiled_gbs'], '.0f')} | {_cell(r['eager_over_kernel'], '.2f')} | "
            f"{_cell(r['compiled_over_kernel'], '.2f')} | {_cell(r['max_abs_diff'], '.2e')} |")
    return "\n".join(lines)


def goal_summary(rows: list[dict]) -> list[str]:
    """Per op with a goal (:data:`GOALS`): the smallest speed-up over (a) among its shapes that (a) ran,
    whether the goal is met, and the shapes where (a) failed."""
    lines = []
    for op, goal in GOALS.items():
        ratios = [r["eager_over_kernel"] for r in rows if r["op"] == op and r["eager_over_kernel"] is not None]
        failed = [r["shape"] for r in rows if r["op"] == op and isinstance(r["eager_ms"], str)]
        if not ratios and not failed:
            continue
        if ratios:
            worst = min(ratios)
            verdict = "met" if worst >= goal else f"not met (short by {goal / worst:.2f}x at the worst shape)"
            line = (f"{op}: speed-up over eager {worst:.2f}x (worst) to {max(ratios):.2f}x (best); "
                    f"goal {goal:g}x {verdict}")
        else:
            line = f"{op}: eager failed at every shape"
        if failed:
            line += f"; eager failed at {', '.join(failed)}"
        lines.append(line)
    return lines


def layer_norm_decision(rows: list[dict]) -> list[str]:
    """Whether a Triton LayerNorm would pay: torch.compile's (Inductor's Triton kernel) speed-up over eager
    ``F.layer_norm`` at the measured shapes, against :data:`LAYER_NORM_PAYS`."""
    ratios = [speedup(r["eager_ms"], r["compiled_ms"]) for r in rows if r["op"] == "layer_norm"]
    ratios = [ratio for ratio in ratios if ratio is not None]
    if not ratios:
        return []
    eager = [r["eager_gbs"] for r in rows if r["op"] == "layer_norm" and r["eager_gbs"] is not None]
    pays = max(ratios) >= LAYER_NORM_PAYS
    verdict = (f"a Triton LayerNorm would pay (torch.compile reaches {LAYER_NORM_PAYS:g}x at some shapes)" if pays else
               f"no Triton LayerNorm: torch.compile's does not reach {LAYER_NORM_PAYS:g}x over eager at any shape")
    return [f"layer_norm: (a) eager / (b) torch.compile {min(ratios):.2f}x to {max(ratios):.2f}x, eager "
            f"{min(eager):.0f}-{max(eager):.0f} GB/s; {verdict}"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_flags(parser, out_dir="where kernels.json and kernels.md go (default bench/results/<gpu name>/)")
    parser.add_argument("--batches", type=int_tuple, default=(1, 2), help="clip batches (default 1,2)")
    add_common_flags(parser, warmup="untimed calls before timing (default 10)",
                     repeats="timed calls; the median is reported (default 50)")
    parser.set_defaults(warmup=10, repeats=50)
    parser.add_argument("--ops", choices=("all",) + OPS, default="all", help="which kernels to time")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the torch.compile baseline (b) (not for layer_norm, which is measured against it)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA device here; these kernel timings need an NVIDIA GPU (nothing measured)")
        return 0
    if ta.triton is None:
        print("bench_kernels: a CUDA device is present but the triton package is not installed", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    device = torch.cuda.get_device_name()
    ops = OPS if args.ops == "all" else (args.ops,)
    out_dir = args.out_dir or RESULTS / slug(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = cases(args.batches, ops)
    rows: list[dict] = []
    for case in todo:
        print(f"bench_kernels: {case.op} {case.describe()}", file=sys.stderr, flush=True)
        rows.append(measure(case, args.warmup, args.repeats, compile_baseline=not args.no_compile))
        table = write_results(out_dir, rows, device, args, complete=len(rows) == len(todo))
    print(table)
    print(f"wrote {out_dir / 'kernels.json'} and {out_dir / 'kernels.md'}")
    return 0


def write_results(out_dir: Path, rows: list[dict], device: str, args: argparse.Namespace, complete: bool) -> str:
    """kernels.json and kernels.md for the rows measured so far (rewritten after every case, so that a run
    stopped early keeps what it measured; ``complete`` says whether every case ran); returns the page."""
    summary = goal_summary(rows) + layer_norm_decision(rows)
    table = markdown_table(rows, device) + "\n\n" + "\n".join(f"- {line}" for line in summary) + "\n"
    if not complete:
        table += f"\n(partial: {len(rows)} of the run's cases measured)\n"
    result = dict(device=device, driver=gpu_driver(), torch=torch.__version__, cuda=torch.version.cuda,
                  triton=ta.triton.__version__, python=platform.python_version(), warmup=args.warmup,
                  repeats=args.repeats, goals=GOALS, complete=complete, summary=summary, rows=rows)
    write_atomic(out_dir / "kernels.json", json.dumps(result, indent=2) + "\n")
    write_atomic(out_dir / "kernels.md", table)
    return table


if __name__ == "__main__":
    sys.exit(main())

"""The reference-attention kernel against the PyTorch path it replaces, and the parts of that path a change
could remove: the backbone's self-attention over [own tokens ; bank tokens].

Without the kernel (``emote_kernels.reference_attention.reference_attention_reference``) the block projects the frame's
tokens, projects the reference bank's tokens once per sample, repeats the bank's K/V for every frame of the
sample and concatenates them to the frame's own (copies), and passes a boolean mask built from
``reference_keep`` (every branch keeps the bank in the engine's default, guidance-free path) to
``scaled_dot_product_attention``. At SD1.5's transformer levels at 512x512 (latents 64x64 / 32x32 / 16x16 /
8x8, 320 / 640 / 1280 / 1280 channels, 8 heads, bank as long as the frame's tokens), clips of 12 frames,
batch 1 and 2, fp16 on CUDA, projections included in every variant:

- ``model``: that PyTorch path (mask from an all-True ``reference_keep``);
- ``kernel``: the Triton kernel (``reference_attention_triton``: the bank read in place, ``reference_keep``
  read on the device), what the model runs on CUDA;
- ``no_mask``: the PyTorch path with ``reference_keep=None`` (no mask: SDPA may pick its flash kernel);
- ``cached_bank``: no mask and the bank's K/V projected once per session (passed in), the projection
  left out of every step;
- ``copies``: the repeat and concatenation alone (what the kernel does not move).

The ratios ``model / kernel``, ``model / no_mask``, ``model / cached_bank`` and ``copies / model`` are the
measured case for keeping the kernel as the CUDA default, dropping the mask and caching the bank's projections.

    python -m bench.bench_reference_attention [--out-dir DIR] [--repeats 20] [--batches 1,2]
    python -m bench.bench_reference_attention --device cpu --smoke --out-dir /tmp/r   (the test suite's run)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

import torch

from bench.cli import add_common_flags, int_tuple, results_dir, write_atomic
from bench.environment import describe
from bench.timing import time_call
from engine.models.blocks import Attention
from emote_kernels import reference_attention as ra
from emote_kernels.dispatch import interpreter_enabled

LEVELS = ((64, 320), (32, 640), (16, 1280), (8, 1280))
"""(latent side, channels) of SD1.5's transformer levels at 512x512."""
SMOKE_LEVELS = ((8, 64), (4, 64))
SMOKE_FRAMES = 2
"""Frames per clip in the smoke run (the kernel runs there under Triton's interpreter, one program at a time)."""
CLIP_FRAMES = 12
HEADS = 8
VARIANTS = ("model", "kernel", "no_mask", "cached_bank", "copies")


@dataclass(frozen=True)
class Case:
    """``batch`` clips of ``frames`` frames at ``size`` x ``size`` latents with ``channels`` channels."""

    batch: int
    size: int
    channels: int
    frames: int = CLIP_FRAMES

    def describe(self) -> str:
        return f"b={self.batch} f={self.frames} {self.size}x{self.size} c={self.channels}"


def attend(module: Attention, x: torch.Tensor, bank_k: torch.Tensor, bank_v: torch.Tensor,
           keep: torch.Tensor | None, implementation) -> torch.Tensor:
    """The module's attention over [own ; bank] with the bank's K/V given and one implementation of
    :mod:`emote_kernels.reference_attention`."""
    q, k, v = module.to_q(x), module.to_k(x), module.to_v(x)
    return module.to_out[0](implementation(q, k, v, bank_k, bank_v, keep, module.heads))


def kernel_unavailable(device: torch.device) -> str | None:
    """Why the Triton variant cannot run on ``device``, or None."""
    if ra.triton is None:
        return "triton is not installed"
    if device.type != "cuda" and not interpreter_enabled():
        return "the Triton kernel needs CUDA (or TRITON_INTERPRET=1 on the CPU)"
    return None


def measure(case: Case, device: torch.device, dtype: torch.dtype, warmup: int, repeats: int) -> dict:
    """One row: median ms of each variant (:data:`VARIANTS`, less ``kernel`` where it cannot run) over fresh
    inputs, the ratios, and the largest difference of the variants' outputs from the model's."""
    with torch.device(device):
        module = Attention(case.channels, HEADS, case.channels // HEADS).to(dtype).eval()
        x = torch.randn(case.batch * case.frames, case.size * case.size, case.channels, dtype=dtype)
        bank = torch.randn(case.batch, case.size * case.size, case.channels, dtype=dtype)
        keep = torch.ones(case.batch, dtype=torch.bool)
    reference, triton = ra.reference_attention_reference, ra.reference_attention_triton
    with torch.inference_mode():
        own_k, own_v, bank_k, bank_v = module.to_k(x), module.to_v(x), module.to_k(bank), module.to_v(bank)
        timed = {
            "model": lambda: attend(module, x, module.to_k(bank), module.to_v(bank), keep, reference),
            "kernel": lambda: attend(module, x, module.to_k(bank), module.to_v(bank), keep, triton),
            "no_mask": lambda: attend(module, x, module.to_k(bank), module.to_v(bank), None, reference),
            "cached_bank": lambda: attend(module, x, bank_k, bank_v, None, reference),
            "copies": lambda: (torch.cat([own_k, bank_k.repeat_interleave(case.frames, dim=0)], dim=1),
                               torch.cat([own_v, bank_v.repeat_interleave(case.frames, dim=0)], dim=1)),
        }
        if kernel_unavailable(device):
            del timed["kernel"]
        ms = {name: time_call(fn, device, warmup, repeats).median * 1000 for name, fn in timed.items()}
        expected = timed["model"]().float()
        compared = [name for name in ("kernel", "no_mask", "cached_bank") if name in timed]
        difference = max(float((timed[name]().float() - expected).abs().max()) for name in compared)
    row = {"shape": case.describe(), "batch": case.batch, "size": case.size, "channels": case.channels,
           "frames": case.frames, "ms": ms, "model_over_no_mask": ms["model"] / ms["no_mask"],
           "model_over_cached_bank": ms["model"] / ms["cached_bank"], "copies_share": ms["copies"] / ms["model"],
           "max_abs_diff": difference}
    if "kernel" in ms:
        row["model_over_kernel"] = ms["model"] / ms["kernel"]
    return row


def markdown(results: dict) -> str:
    """The rows as a Markdown page."""
    env = results["environment"]
    smoke = " (smoke run, not a measurement)" if results["smoke"] else ""
    lines = [f"# Reference attention on {env['device']}" + smoke,
             "", f"torch {env['torch']}, {results['dtype']}, median of {results['repeats']} calls after "
             f"{results['warmup']}, {env['date']}. ms per call of one transformer block's self-attention with the "
             "reference bank (projections included); see bench/bench_reference_attention.py for the variants.", ""]
    if results.get("kernel_unavailable"):
        lines += [f"Kernel not measured: {results['kernel_unavailable']}.", ""]
    lines += ["| shape | model ms | kernel ms | no mask ms | cached bank ms | copies ms | model / kernel "
              "| model / no mask | model / cached bank | copies / model | max abs diff |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        ms = r["ms"]
        kernel = f"{ms['kernel']:.3f}" if "kernel" in ms else "-"
        speedup = f"{r['model_over_kernel']:.2f}x" if "kernel" in ms else "-"
        lines.append(f"| {r['shape']} | {ms['model']:.3f} | {kernel} | {ms['no_mask']:.3f} | {ms['cached_bank']:.3f} | "
                     f"{ms['copies']:.3f} | {speedup} | {r['model_over_no_mask']:.2f}x | "
                     f"{r['model_over_cached_bank']:.2f}x | "
                     f"{100 * r['copies_share']:.1f}% | {r['max_abs_diff']:.2e} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_reference_attention",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int_tuple, default=(1, 2), help="clip batches (default 1,2)")
    add_common_flags(parser, device="cuda (default) or cpu (the smoke run)",
                     warmup="untimed calls before timing (default 5)",
                     repeats="timed calls; the median is reported (default 20)",
                     smoke="two small levels, one repeat: checks the benchmark",
                     out_dir="where reference-attention.{json,md} go (default bench/results/<device>/)")
    parser.set_defaults(device="cuda", warmup=5, repeats=20)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_reference_attention: no CUDA device here; these timings need an NVIDIA GPU (nothing measured)")
        return 0
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    warmup, repeats = (1, 1) if args.smoke else (args.warmup, args.repeats)
    torch.manual_seed(0)
    rows = []
    for batch in args.batches:
        for size, channels in SMOKE_LEVELS if args.smoke else LEVELS:
            case = Case(batch, size, channels, SMOKE_FRAMES if args.smoke else CLIP_FRAMES)
            print(f"bench_reference_attention: {case.describe()}", file=sys.stderr, flush=True)
            rows.append(measure(case, device, dtype, warmup, repeats))
    results = {"schema": "bench.reference_attention/2", "smoke": args.smoke, "environment": describe(device),
               "dtype": str(dtype).removeprefix("torch."), "warmup": warmup, "repeats": repeats,
               "kernel_unavailable": kernel_unavailable(device), "rows": rows}
    out_dir = results_dir(args.out_dir, args.smoke, device)
    json_path, md_path = out_dir / "reference-attention.json", out_dir / "reference-attention.md"
    write_atomic(json_path, json.dumps(results, indent=1) + "\n")
    page = markdown(results)
    write_atomic(md_path, page)
    print(page)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

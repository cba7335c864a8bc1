"""What the benchmark commands share: their argument types, the device set-up and atomic result files."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from bench.environment import device_name, slug

RESULTS = Path(__file__).resolve().parent / "results"
"""Committed results: ``bench/results/<device>/``."""
SMOKE_OUT = Path(__file__).resolve().parents[1] / "out" / "bench-smoke"
"""Where smoke runs write (ignored by git)."""


def int_tuple(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated positive integers, e.g. ``"4,2,1"`` -> ``(4, 2, 1)``."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so no half-written result is left."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def select_device(name: str, threads: int | None) -> torch.device:
    """The torch device ``name`` (refused when it is CUDA and none is present), after setting ``threads``
    intra-op threads (None: torch's default)."""
    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but no CUDA device is available")
    return device


def cuda_missing(device: torch.device, program: str) -> bool:
    """True, after saying so on stderr, when ``device`` is CUDA and this machine has none."""
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"{program}: --device cuda, but no CUDA device is available here", file=sys.stderr)
        return True
    return False


def results_dir(out_dir: Path | None, smoke: bool, device: torch.device) -> Path:
    """Where a run's files go, created: ``out_dir`` when given, else out/bench-smoke/ for a smoke run, else
    bench/results/<device>/."""
    directory = out_dir or (SMOKE_OUT if smoke else RESULTS / slug(device_name(device)))
    directory.mkdir(parents=True, exist_ok=True)
    return directory

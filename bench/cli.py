"""What the benchmark commands share: their common flags and argument types, the device set-up and atomic
result files."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

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


COMMON_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "preset": ("--preset", dict(default="tiny", help="model preset: tiny (default) or sd15")),
    "device": ("--device", dict(default="cpu", help="cpu (default) or cuda")),
    "backend": ("--backend", dict(help="engine backend (default auto: the fastest present)")),
    "stream_s": ("--stream-seconds", dict(type=float, dest="stream_s")),
    "steps": ("--steps", dict(type=int)),
    "warmup": ("--warmup", dict(type=int)),
    "repeats": ("--repeats", dict(type=int)),
    "threads": ("--threads", dict(type=int, help="torch intra-op threads (default: 1 on CPU, torch's on GPU)")),
    "seed": ("--seed", dict(type=int, help="weights and noise seed (default 0)")),
    "smoke": ("--smoke", dict(action="store_true")),
    "out_dir": ("--out-dir", dict(type=Path, help="where the files go (default bench/results/<device>/)")),
    "render": ("--render", dict(type=Path, metavar="JSON",
                                help="measure nothing: redraw the .md and .png beside an existing results JSON")),
}
"""The flags several benchmark commands take: destination -> (flag, its add_argument keywords)."""


def add_common_flags(parser: argparse.ArgumentParser, *names: str, **helps: str) -> None:
    """Add the :data:`COMMON_FLAGS` named by destination, in the order given: ``names`` with their usual help,
    ``helps`` with the command's own. A command whose default differs says so with ``parser.set_defaults``."""
    for dest, text in [*((name, None) for name in names), *helps.items()]:
        flag, keywords = COMMON_FLAGS[dest]
        parser.add_argument(flag, **{**keywords, **({"help": text} if text is not None else {})})


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so no half-written result is left."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def write_results(results: dict, directory: Path, stem: str, markdown: Callable[[dict, str | None], str],
                  plot: Callable[[dict, Path], Path]) -> Path:
    """``stem``.json, .png and .md of ``results`` in ``directory``, each written atomically; returns the
    Markdown's path."""
    write_atomic(directory / f"{stem}.json", json.dumps(results, indent=1) + "\n")
    drawn = plot(results, directory / f"{stem}.png")
    md = directory / f"{stem}.md"
    write_atomic(md, markdown(results, drawn.name))
    return md


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

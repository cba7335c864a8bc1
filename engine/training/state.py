"""Resumable training state and the loss log.

A stage checkpoints (model, optimiser, step, random streams, elapsed time) every few steps into
``<stage>.ckpt.pt`` and, when finished, writes ``<stage>.done.pt`` with the model alone; a rerun skips
finished stages and resumes an unfinished one from its last checkpoint. Files are written to a
temporary name and renamed, and read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import torch


def atomic_save(obj: dict, path: Path) -> None:
    """``torch.save`` to a temporary sibling, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> dict:
    """A state written by :func:`atomic_save` (tensors and plain Python values only)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


class LossLog:
    """Appends one CSV row per logged step: stage, step, elapsed seconds, learning rate, metrics."""

    FIELDS = ("stage", "step", "seconds", "lr", "loss", "loss_mouth", "wall_time")

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(self.FIELDS)

    def write(self, stage: str, step: int, seconds: float, lr: float, metrics: dict[str, float]) -> None:
        row = [stage, step, f"{seconds:.1f}", f"{lr:.3g}", f"{metrics.get('loss', float('nan')):.5f}",
               f"{metrics.get('loss_mouth', float('nan')):.5f}", f"{time.time():.0f}"]
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow(row)

    def rows(self, stage: str | None = None) -> list[dict[str, str]]:
        """Logged rows (of one stage when given), as dicts of strings."""
        with self.path.open(newline="") as f:
            return [r for r in csv.DictReader(f) if stage is None or r["stage"] == stage]

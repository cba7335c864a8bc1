"""Small pieces shared by the tests (importable as ``support``: pytest puts tests/ on the path)."""

from __future__ import annotations

from pathlib import Path

import torch

COMPAT = Path(__file__).resolve().parent / "fixtures" / "compat"


def read_manifest(relative: str) -> dict[str, tuple[int, ...]]:
    """``key -> shape`` of a layout manifest (``key<TAB>[shape]<TAB>dtype`` lines, ``#`` comments)."""
    out = {}
    for line in (COMPAT / relative).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape, _ = line.split("\t")
        out[key] = tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())
    return out


def randomize_(module: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter with N(0, std) noise (so zero-initialised layers take part)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module

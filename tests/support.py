"""Small pieces shared by the tests (importable as ``support``: pytest puts tests/ on the path)."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.config import ModelConfig, preset

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


def hallo_tiny() -> ModelConfig:
    """The tiny preset with Hallo's optional pieces on: audio modules with region masks, face-embedding
    tokens (16-d embedding), ReferenceNet cross-attention with norm1 motion features, skipped plain-block
    motion modules, a three-plane face locator, no speed layers."""
    cfg = preset("tiny")
    cfg.speed.enabled = False
    cfg.face_locator.conditioning_channels = 3
    cfg.audio_modules.enabled = True
    cfg.audio_modules.cross_attention_dim = cfg.audio.projection.output_dim
    cfg.image_proj.enabled = True
    cfg.image_proj.embedding_dim = 16
    cfg.reference_net.cross_attention = True
    cfg.reference_net.motion_source = "norm1"
    cfg.temporal.skip_plain_blocks = True
    return cfg

"""Hallo's image projection: a face-recognition embedding -> context tokens for the spatial cross-attention."""

from __future__ import annotations

import torch
from torch import nn

from engine.config import ImageProjConfig


class ImageProjection(nn.Module):
    """``proj`` (Linear ``embedding_dim -> tokens * dim``), reshape, ``norm`` (LayerNorm over ``dim``).

    Parameter names are Hallo's ``imageproj.*`` without the prefix.
    """

    def __init__(self, cfg: ImageProjConfig, dim: int):
        super().__init__()
        self.tokens, self.dim, self.embedding_dim = cfg.tokens, dim, cfg.embedding_dim
        self.proj = nn.Linear(cfg.embedding_dim, cfg.tokens * dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """``embedding``: ``[N, embedding_dim]`` (insightface's 512-d face embedding) -> ``[N, tokens, dim]``."""
        if embedding.shape[-1] != self.embedding_dim:
            raise ValueError(f"face embedding is {embedding.shape[-1]}-d, the image projection takes "
                             f"{self.embedding_dim}-d")
        return self.norm(self.proj(embedding.to(self.proj.weight.dtype)).reshape(-1, self.tokens, self.dim))

    def zero_embedding_tokens(self) -> torch.Tensor:
        """``[tokens, dim]``: the tokens of an all-zero embedding (Hallo's input when no face is found)."""
        with torch.no_grad():
            return self(torch.zeros(1, self.embedding_dim, device=self.proj.weight.device,
                                    dtype=self.proj.weight.dtype))[0]

"""EMO's speed layers: head rotation speed -> bucketed tanh code -> +-m window -> MLP -> tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import SpeedConfig


def speed_code(speed: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """``speed``: ``[..., F]`` rad/s -> ``[..., F, D]`` with ``tanh((w - c_d) / r_d * 3)`` per bucket ``d``."""
    return torch.tanh((speed[..., None] - centers) / radii * 3.0)


def frame_window(x: torch.Tensor, m: int) -> torch.Tensor:
    """``x``: ``[B, F, ...]`` -> ``[B, F, 2m+1, ...]``: frames ``f-m .. f+m`` of each frame, clamped at the ends."""
    frames = x.shape[1]
    idx = (torch.arange(frames, device=x.device)[:, None] + torch.arange(-m, m + 1, device=x.device)[None, :])
    return x[:, idx.clamp(0, frames - 1)]


class SpeedEncoder(nn.Module):
    """Per-frame speed ``[B, F]`` (rad/s) -> speed tokens ``[B, F, tokens, dim]``."""

    def __init__(self, cfg: SpeedConfig):
        super().__init__()
        if len(cfg.centers) != len(cfg.radii):
            raise ValueError("speed centers and radii must have the same length")
        self.window = cfg.window
        self.tokens, self.dim = cfg.tokens, cfg.dim
        self.register_buffer("centers", torch.tensor(cfg.centers, dtype=torch.float32))
        self.register_buffer("radii", torch.tensor(cfg.radii, dtype=torch.float32))
        self.proj1 = nn.Linear((2 * cfg.window + 1) * len(cfg.centers), cfg.hidden_dim)
        self.proj2 = nn.Linear(cfg.hidden_dim, cfg.tokens * cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, speed: torch.Tensor) -> torch.Tensor:
        code = frame_window(speed_code(speed.float(), self.centers, self.radii), self.window)
        hidden = F.silu(self.proj1(code.flatten(2).to(self.proj1.weight.dtype)))
        tokens = self.proj2(hidden).view(*speed.shape, self.tokens, self.dim)
        return self.norm(tokens)

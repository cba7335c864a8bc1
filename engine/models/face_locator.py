"""Face locator: a light conv encoder of the face-region mask (AnimateAnyone/EchoMimic names)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import FaceLocatorConfig


class FaceLocator(nn.Module):
    """``conv_in`` -> pairs of (3x3 conv, stride-2 3x3 conv) -> zero-initialised ``conv_out``, SiLU between.

    Three stride-2 convolutions take a pixel-resolution mask to latent resolution (/8).
    """

    def __init__(self, cfg: FaceLocatorConfig, out_channels: int):
        super().__init__()
        widths = cfg.block_out_channels
        self.conv_in = nn.Conv2d(cfg.conditioning_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for a, b in zip(widths[:-1], widths[1:]):
            self.blocks.append(nn.Conv2d(a, a, 3, padding=1))
            self.blocks.append(nn.Conv2d(a, b, 3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(widths[-1], out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """``mask``: ``[N, cond_ch, H, W]`` in [0, 1] -> ``[N, out_channels, H/8, W/8]``.

        A one-plane mask feeds every plane of a multi-plane locator (Hallo's locator reads the face
        mask as an RGB image whose three planes are equal).
        """
        planes = self.conv_in.in_channels
        if mask.shape[1] == 1 and planes > 1:
            mask = mask.expand(-1, planes, -1, -1)
        x = F.silu(self.conv_in(mask))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(x)

"""ReferenceNet: the SD1.5-shaped 2D UNet that turns reference latents into a reference bank."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.config import ModelConfig
from engine.models.blocks import UNetContext
from engine.models.unet import UNet

MOTION_SOURCES = ("hidden", "norm1")


@dataclass
class ReferenceBank:
    """What the backbone reads from the ReferenceNet.

    Attributes:
        tokens: one entry per spatial transformer block (forward order), ``[N, h*w, C]``: the
            block's ``norm1`` output, appended to the backbone's self-attention keys/values.
        features: one entry per motion-module location, ``[N, C, h, w]``: the hidden state where the
            backbone's motion module sits (or, with ``motion_source = "norm1"``, the preceding
            transformer block's ``norm1`` tokens as a map); for motion frames these join the temporal
            modules' input.
    """

    tokens: list[torch.Tensor]
    features: list[torch.Tensor]

    def motion_features(self, batch: int) -> list[torch.Tensor]:
        """Features of ``batch * n`` motion frames regrouped as ``[batch, n, C, h, w]`` per location."""
        return [f.view(batch, f.shape[0] // batch, *f.shape[1:]) for f in self.features]


class ReferenceNet(UNet):
    """The 2D UNet without temporal layers or output head; ``forward`` returns a :class:`ReferenceBank`.

    It runs at timestep 0 on the reference image's latents (once per session) and on the motion
    frames' latents (once per clip). With ``reference_net.cross_attention`` its ``attn2`` keeps
    SD1.5's cross-attention and reads ``context``; without one it reads ``context_tokens`` zeros, or
    with ``image_proj`` ``default_context``: the tokens of a zero face embedding, set by
    :meth:`engine.models.model.EmoteModel.sync_default_context`. ``reference_net.motion_source``
    decides what :attr:`ReferenceBank.features` holds.
    """

    def __init__(self, cfg: ModelConfig):
        cross = cfg.unet.cross_attention_dim if cfg.reference_net.cross_attention else None
        super().__init__(cfg.unet, cross, cfg.temporal, motion_modules=False, speed_dim=None, head=False)
        if cfg.reference_net.motion_source not in MOTION_SOURCES:
            raise ValueError(f"reference_net.motion_source must be one of {MOTION_SOURCES}, "
                             f"not {cfg.reference_net.motion_source!r}")
        self.motion_source = cfg.reference_net.motion_source
        self.cross_attention_dim = cross
        self.context_tokens = cfg.reference_net.context_tokens
        if cross is not None and cfg.image_proj.enabled:
            self.register_buffer("default_context", torch.zeros(cfg.image_proj.tokens, cross), persistent=False)

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor | float = 0.0,
                context: torch.Tensor | None = None) -> ReferenceBank:
        """``latents``: ``[N, C, h, w]`` (scaled VAE latents); ``context``: ``[N, T, cross_dim]``."""
        n = latents.shape[0]
        t = torch.as_tensor(timestep, device=latents.device, dtype=torch.float32).reshape(-1).expand(n)
        if context is None and hasattr(self, "default_context"):
            context = self.default_context.to(latents.dtype)[None].expand(n, -1, -1)
        elif context is None and self.cross_attention_dim is not None:
            context = latents.new_zeros(n, self.context_tokens, self.cross_attention_dim)
        ctx = UNetContext(temb=self.time_embed(t), cross_tokens=context, bank_out=[], motion_out=[],
                          motion_source=self.motion_source)
        self.run_blocks(latents, ctx)
        return ReferenceBank(tokens=ctx.bank_out, features=ctx.motion_out)

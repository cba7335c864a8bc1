"""The networks of one model, built together from a :class:`ModelConfig`."""

from __future__ import annotations

import torch
from torch import nn

from engine.config import ModelConfig
from engine.models.audio import AudioEncoder
from engine.models.backbone import Backbone
from engine.models.face_locator import FaceLocator
from engine.models.reference_net import ReferenceNet
from engine.models.speed import SpeedEncoder
from engine.models.vae import VAE


class EmoteModel(nn.Module):
    """ReferenceNet, backbone, face locator, speed encoder (when enabled), audio encoder and VAE.

    Build on the meta device to count parameters without memory:
    ``with torch.device("meta"): EmoteModel(cfg)``.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.reference_net = ReferenceNet(cfg)
        self.backbone = Backbone(cfg)
        face_out = cfg.unet.block_out_channels[0] if cfg.face_locator.target == "conv_in" else cfg.unet.in_channels
        if cfg.face_locator.target not in ("conv_in", "latent"):
            raise ValueError(f"face_locator.target must be 'conv_in' or 'latent', not {cfg.face_locator.target!r}")
        self.face_locator = FaceLocator(cfg.face_locator, face_out)
        if cfg.speed.enabled:
            self.speed_encoder = SpeedEncoder(cfg.speed)
        self.audio_encoder = AudioEncoder(cfg.audio)
        self.vae = VAE(cfg.vae)
        if self.audio_encoder.output_dim != cfg.unet.cross_attention_dim:
            raise ValueError(f"audio tokens are {self.audio_encoder.output_dim}-d but the backbone's attn2 reads "
                             f"{cfg.unet.cross_attention_dim}-d (unet.cross_attention_dim)")

    def components(self) -> dict[str, nn.Module]:
        """The modules stored one safetensors file each, by file stem (the VAE as its diffusers model)."""
        out: dict[str, nn.Module] = {"reference_net": self.reference_net, "backbone": self.backbone,
                                     "face_locator": self.face_locator}
        if hasattr(self, "speed_encoder"):
            out["speed_encoder"] = self.speed_encoder
        out["audio_encoder"] = self.audio_encoder
        out["vae"] = self.vae.model
        return out

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component (buffers excluded); works on the meta device."""
        return {name: sum(p.numel() for p in module.parameters()) for name, module in self.components().items()}

    @classmethod
    def on_meta(cls, cfg: ModelConfig) -> "EmoteModel":
        """Build without allocating memory (shapes only)."""
        with torch.device("meta"):
            return cls(cfg)

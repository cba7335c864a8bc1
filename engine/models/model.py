"""The networks of one model, built together from a :class:`ModelConfig`."""

from __future__ import annotations

import torch
from torch import nn

from engine.config import ModelConfig
from engine.models.audio import AudioEncoder
from engine.models.backbone import Backbone
from engine.models.face_locator import FaceLocator
from engine.models.image_proj import ImageProjection
from engine.models.reference_net import ReferenceNet
from engine.models.speed import SpeedEncoder
from engine.models.vae import VAE


class EmoteModel(nn.Module):
    """ReferenceNet, backbone, face locator, speed encoder (when enabled), image projection (when
    enabled, Hallo), audio encoder and VAE.

    Build on the meta device to count parameters without memory:
    ``with torch.device("meta"): EmoteModel(cfg)``; after loading weights into such a model call
    :meth:`sync_default_context` (``load_model`` does).
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
        if cfg.image_proj.enabled:
            if not cfg.audio_modules.enabled:
                raise ValueError("image_proj needs audio_modules: attn2 reads the face tokens, the audio "
                                 "needs its own modules")
            self.image_proj = ImageProjection(cfg.image_proj, cfg.unet.cross_attention_dim)
        self.audio_encoder = AudioEncoder(cfg.audio, cfg.fps)
        self.vae = VAE(cfg.vae)
        if cfg.audio_modules.enabled:
            audio_dim, reader, setting = cfg.audio_modules.cross_attention_dim, "audio modules read", \
                "audio_modules.cross_attention_dim"
        else:
            audio_dim, reader, setting = cfg.unet.cross_attention_dim, "backbone's attn2 reads", \
                "unet.cross_attention_dim"
        if self.audio_encoder.output_dim != audio_dim:
            raise ValueError(f"audio tokens are {self.audio_encoder.output_dim}-d but the {reader} "
                             f"{audio_dim}-d ({setting})")
        if not any(t.is_meta for t in self.parameters()):
            self.sync_default_context()

    def sync_default_context(self) -> None:
        """Recompute what ``attn2`` reads without a face embedding: the image projection of a zero
        embedding, into the ReferenceNet's ``default_context`` and the backbone's
        ``default_image_tokens``. No-op without ``image_proj``."""
        if hasattr(self, "image_proj"):
            tokens = self.image_proj.zero_embedding_tokens()
            self.backbone.default_image_tokens = tokens.clone()
            if hasattr(self.reference_net, "default_context"):
                self.reference_net.default_context = tokens.clone()

    def components(self) -> dict[str, nn.Module]:
        """The modules stored one safetensors file each, by file stem (the VAE as its diffusers model)."""
        out: dict[str, nn.Module] = {"reference_net": self.reference_net, "backbone": self.backbone,
                                     "face_locator": self.face_locator}
        if hasattr(self, "speed_encoder"):
            out["speed_encoder"] = self.speed_encoder
        if hasattr(self, "image_proj"):
            out["image_proj"] = self.image_proj
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

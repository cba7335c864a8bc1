"""The backbone: a 3D UNet (SD1.5 2D layers + motion modules) with EMO's conditioning.

Per transformer block: reference-attention (``attn1`` over the frame's tokens and the reference
bank's tokens), audio-attention (``attn2`` to the frame's audio tokens), feed-forward. A motion
module follows every layer at the configured resolutions, with motion-frame features prepended on
the frame axis and speed tokens read by cross-attention. The face locator's features are added
after ``conv_in`` or to the latent.

Hallo's variant (config ``audio_modules`` and ``image_proj``): ``attn2`` reads face-embedding tokens
(the same for every frame) and the audio goes through a separate audio module after each spatial
transformer, weighted by full / face / lip region masks.
"""

from __future__ import annotations

import torch

from engine.config import ModelConfig
from engine.models.blocks import UNetContext
from engine.models.unet import UNet


class Backbone(UNet):
    """Denoising network. Parameter names are diffusers' plus ``motion_modules`` (AnimateDiff v2)."""

    def __init__(self, cfg: ModelConfig):
        speed_dim = cfg.speed.dim if cfg.speed.enabled else None
        super().__init__(cfg.unet, cfg.unet.cross_attention_dim, cfg.temporal, motion_modules=True,
                         speed_dim=speed_dim, head=True, audio_modules=cfg.audio_modules)
        self.face_target = cfg.face_locator.target
        self.audio_modules_enabled = cfg.audio_modules.enabled
        self.num_levels = len(cfg.unet.block_out_channels)
        if cfg.image_proj.enabled:
            self.register_buffer("default_image_tokens",
                                 torch.zeros(cfg.image_proj.tokens, cfg.unet.cross_attention_dim), persistent=False)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, audio_tokens: torch.Tensor | None = None,
                reference_bank: list[torch.Tensor] | None = None,
                motion_features: list[torch.Tensor] | None = None,
                face_features: torch.Tensor | None = None,
                speed_tokens: torch.Tensor | None = None,
                reference_keep: torch.Tensor | None = None,
                image_tokens: torch.Tensor | None = None,
                region_masks: list[torch.Tensor] | None = None) -> torch.Tensor:
        """One denoising step on a batch of clips.

        Args:
            sample: noisy latents ``[B, C, F, h, w]``.
            timestep: ``[]`` or ``[B]`` (one per clip) or ``[B, F]`` (one per frame).
            audio_tokens: ``[B, F, T, D]`` per-frame tokens for ``attn2`` (with ``audio_modules``: for the
                audio modules); None skips audio-attention.
            reference_bank: per transformer block ``[B, L, C]`` (ReferenceNet tokens); None gives
                plain self-attention (the unconditional branch).
            motion_features: per motion-module location ``[B, n, C, h, w]`` (ReferenceNet features of
                the previous clip's last n frames); None runs the temporal modules on the clip alone.
            face_features: face-locator output ``[B, F or 1, C', h, w]`` (``C'`` = first block width for
                target ``conv_in``, latent channels for target ``latent``).
            speed_tokens: ``[B, F, S, D_s]``; motion frames reuse the first frame's tokens.
            reference_keep: ``[B]`` bool; False drops the reference bank for that clip (guidance).
            image_tokens: Hallo only (``image_proj`` on): ``[B, T_i, D]`` face-embedding tokens for
                ``attn2``; None uses the tokens of a zero embedding (``default_image_tokens``).
            region_masks: Hallo only (``audio_modules`` on): per resolution level (0 = latent),
                ``[B, 3, h_l * w_l]`` full / face / lip weights (:func:`region_mask_levels`); None
                weighs every position 1.
        Returns:
            model output (eps or v) ``[B, C_out, F, h, w]``.
        """
        b, c, frames, h, w = sample.shape
        x = sample.permute(0, 2, 1, 3, 4).reshape(b * frames, c, h, w)
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(-1, 1).expand(b, frames) if t.dim() < 2 else t
        if t.shape != (b, frames):
            raise ValueError(f"timestep shape {tuple(t.shape)} does not fit {b} clips of {frames} frames")
        face = None
        if face_features is not None:
            face = face_features.expand(b, frames, *face_features.shape[2:]).reshape(b * frames, -1, h, w)
            if self.face_target == "latent":
                x, face = x + face.to(x.dtype), None
        if speed_tokens is not None and motion_features is not None:
            n = motion_features[0].shape[1]
            speed_tokens = torch.cat([speed_tokens[:, :1].expand(-1, n, -1, -1), speed_tokens], dim=1)
        audio = audio_tokens.flatten(0, 1) if audio_tokens is not None else None
        if self.audio_modules_enabled:
            cross = self._image_context(image_tokens, b, sample)
            cross = cross[:, None].expand(-1, frames, -1, -1).flatten(0, 1) if cross is not None else None
            masks = self._frame_masks(region_masks, b, frames)
        else:
            cross, audio, masks = audio, None, None
        ctx = UNetContext(
            temb=self.time_embed(t.reshape(-1)), num_frames=frames, cross_tokens=cross, audio_tokens=audio,
            region_masks=masks, reference_bank=reference_bank, reference_keep=reference_keep,
            motion_features=motion_features, speed_tokens=speed_tokens)
        out = self.head(self.run_blocks(x, ctx, residual_in=face))
        return out.view(b, frames, -1, h, w).permute(0, 2, 1, 3, 4)

    def _image_context(self, image_tokens: torch.Tensor | None, batch: int, like: torch.Tensor) -> torch.Tensor | None:
        """``[B, T_i, D]`` tokens for ``attn2``: the given ones, or the zero-embedding tokens; None without any."""
        if image_tokens is not None:
            return image_tokens.to(like.dtype).expand(batch, *image_tokens.shape[1:])
        if not hasattr(self, "default_image_tokens"):
            return None
        return self.default_image_tokens.to(like.dtype)[None].expand(batch, -1, -1)

    def _frame_masks(self, region_masks: list[torch.Tensor] | None, batch: int,
                     frames: int) -> list[torch.Tensor] | None:
        """Per level ``[B, 3, h_l*w_l]`` -> ``[B*F, 3, h_l*w_l]`` (the same masks for every frame)."""
        if region_masks is None:
            return None
        if len(region_masks) != self.num_levels:
            raise ValueError(f"region_masks has {len(region_masks)} levels, the UNet {self.num_levels}")
        return [m.expand(batch, *m.shape[1:])[:, None].expand(-1, frames, -1, -1).flatten(0, 1) for m in region_masks]

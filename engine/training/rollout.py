"""Motion frames from the model's own generations: a batch's history segments (``Batch.history``, ``n``
frames each, oldest first) generated one after the other without gradient, each conditioned on the motion
frames the one before produced (the oldest on its ground-truth ones), as a stream generates clip after clip.
The last segment's clean latents then stand in for the batch's ground-truth motion frames."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from engine.models.model import EmoteModel
from engine.sampling.samplers import Sampler, sample
from engine.training.data import Batch
from engine.training.diffusion import LossOptions, backbone_conditions
from engine.training.motion import MotionAugment

BackboneFn = Callable[..., torch.Tensor]
"""``backbone(x [B, C, F, h, w], t [B, F], **conditions) -> output like x`` (a backbone module)."""


@dataclass
class Rollout:
    """Generates motion latents with ``backbone`` (the stage's own: the model being trained, or the
    distillation's student) and ``sampler`` in ``steps`` steps, with no classifier-free guidance."""

    backbone: BackboneFn
    sampler: Sampler
    steps: int

    @torch.no_grad()
    def motion(self, model: EmoteModel, batch: Batch, options: LossOptions, generator: torch.Generator
               ) -> torch.Tensor:
        """Clean latents ``[B, n, C, h, w]`` of the last history segment, generated (see the module docstring).

        ``options``: the stage's loss options; the rollout keeps their motion anchoring and drops their noise
        and patch dropping (at inference the motion frames are clean, only the anchor touches them).
        """
        if not batch.history:
            raise ValueError("the batch has no history segments to roll out (video_batch(history=...))")
        rollout_options = replace(options, augment=MotionAugment(anchor=options.augment.anchor))
        side = model.config.resolution // model.config.latent_downscale
        latents = None
        for segment in batch.history:
            cond = backbone_conditions(model, segment, rollout_options, generator, audio_drop_prob=0.0,
                                       motion=latents)
            b, frames = segment.frames.shape[0], segment.frames.shape[2]
            noise = torch.randn(b, model.config.unet.in_channels, frames, side, side, generator=generator)
            clean = sample(lambda x, t: self.backbone(x, t, **cond), self.sampler, noise, self.steps,
                           generator=generator, per_frame=True)
            latents = clean.transpose(1, 2).contiguous()
        return latents

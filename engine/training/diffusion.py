"""The conditioned denoising loss: the backbone fed what the session feeds it, v-prediction target.

Noise levels: one timestep per clip, or (with probability ``per_frame_prob``) an independent one per
frame, so frames at staggered noise levels in one call (a rolling schedule) stay in distribution.
Classifier-free guidance needs an audio-free branch: with probability ``audio_drop_prob`` a sample's
audio tokens are zeros, which is how :class:`engine.sampling.clip_denoiser.ClipDenoiser` drops audio.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from engine.models.model import EmoteModel
from engine.sampling.schedules import NoiseSchedule
from engine.training.data import AudioWindow, Batch
from engine.training.motion import MotionAugment, anchor_features, corrupt_latents


@dataclass(frozen=True)
class LossOptions:
    """What one stage's loss uses.

    ``audio`` / ``motion`` / ``speed``: feed audio tokens, motion frames, speed tokens (else None);
    ``reference_grad``: back-propagate into the ReferenceNet (image stage) or run it frozen;
    ``augment``: what is done to the motion frames (:class:`engine.training.motion.MotionAugment`; its
    ``rollout`` is the stage's business, see :mod:`engine.training.rollout`).
    """

    audio: bool = True
    motion: bool = True
    speed: bool = True
    reference_grad: bool = False
    per_frame_prob: float = 0.3
    audio_drop_prob: float = 0.1
    augment: MotionAugment = MotionAugment()


def encode(model: EmoteModel, images: torch.Tensor) -> torch.Tensor:
    """Images [N, 3, H, W] in [-1, 1] -> scaled latents [N, C, h, w]."""
    return model.vae.encode(images)


def clip_audio_tokens(model: EmoteModel, windows: list[AudioWindow], frames: int) -> torch.Tensor:
    """Audio tokens [B, F, T, D] of each sample's clip frames, one encoder call per window (as the session)."""
    return torch.stack([model.audio_encoder.tokens(w.pcm, w.frames)[w.offset:w.offset + frames] for w in windows])


def sample_timesteps(batch: int, frames: int, schedule: NoiseSchedule, per_frame_prob: float,
                     generator: torch.Generator) -> torch.Tensor:
    """LongTensor [B, F] uniform over the training timesteps; per clip, or per frame with ``per_frame_prob``."""
    t_max = schedule.num_train_timesteps
    if float(torch.rand((), generator=generator)) < per_frame_prob:
        return torch.randint(0, t_max, (batch, frames), generator=generator)
    return torch.randint(0, t_max, (batch, 1), generator=generator).expand(batch, frames).contiguous()


def motion_latents(model: EmoteModel, batch: Batch) -> torch.Tensor:
    """Latents ``[B, n, C, h, w]`` of the batch's (ground-truth) motion frames."""
    b, n = batch.motion.shape[:2]
    latents = encode(model, batch.motion.flatten(0, 1))
    return latents.view(b, n, *latents.shape[1:])


def backbone_conditions(model: EmoteModel, batch: Batch, options: LossOptions, generator: torch.Generator,
                        audio_drop_prob: float | None = None, motion: torch.Tensor | None = None) -> dict:
    """The backbone's keyword inputs besides the sample and timestep, built as the session builds them.

    ``motion``: clean motion latents ``[B, n, C, h, w]`` to use instead of the batch's motion frames (a
    rollout's); either way ``options.augment`` corrupts them before the ReferenceNet.
    Returns ``audio_tokens`` ([B, F, T, D] or None), ``reference_bank``, ``motion_features``,
    ``face_features`` ([B, 1, C', h, w]) and ``speed_tokens`` ([B, F, S, D] or None).
    """
    b, frames = batch.frames.shape[0], batch.frames.shape[2]
    reference_context = nullcontext() if options.reference_grad else torch.no_grad()
    with reference_context:
        bank = model.reference_net(encode(model, batch.reference))
    features = None
    if options.motion and batch.motion is not None:
        with torch.no_grad():
            latents = motion_latents(model, batch) if motion is None else motion
            n = latents.shape[1]
            latents = corrupt_latents(latents, options.augment, generator)
            features = [f.view(b, n, *f.shape[1:]) for f in model.reference_net(latents.flatten(0, 1)).features]
            features = anchor_features(features, [f.detach() for f in bank.features], options.augment, generator)
        keep = batch.motion_valid.to(features[0].dtype).view(b, n, 1, 1, 1)
        features = [f * keep for f in features]
    audio = None
    if options.audio and batch.audio is not None:
        audio = clip_audio_tokens(model, batch.audio, frames)
        drop = options.audio_drop_prob if audio_drop_prob is None else audio_drop_prob
        keep = (torch.rand(b, generator=generator) >= drop).to(audio.dtype)
        audio = audio * keep.view(b, 1, 1, 1)
    speed = model.speed_encoder(batch.speed) if options.speed and hasattr(model, "speed_encoder") else None
    return dict(audio_tokens=audio, reference_bank=bank.tokens, motion_features=features,
                face_features=model.face_locator(batch.mask)[:, None], speed_tokens=speed)


def diffusion_loss(model: EmoteModel, schedule: NoiseSchedule, batch: Batch, options: LossOptions,
                   generator: torch.Generator, motion: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted MSE between the backbone's output and the schedule's target (v or eps); ``motion``: motion
    latents in place of the batch's motion frames (see :func:`backbone_conditions`).

    Returns the loss (a scalar with gradient) and metrics: ``loss`` and ``loss_mouth`` (the error on
    the mouth-weighted cells alone), floats.
    """
    b, _, frames = batch.frames.shape[:3]
    x0 = encode(model, batch.frames.transpose(1, 2).flatten(0, 1))
    x0 = x0.view(b, frames, *x0.shape[1:]).transpose(1, 2)
    t = sample_timesteps(b, frames, schedule, options.per_frame_prob, generator)
    noise = torch.randn(x0.shape, generator=generator)
    x_t = schedule.add_noise(x0, noise, t)
    target = schedule.from_x0_eps(x0, noise, t)
    conditions = backbone_conditions(model, batch, options, generator, motion=motion)
    out = model.backbone(x_t, t, **conditions)
    error = (out - target).pow(2).mean(dim=1, keepdim=True)
    weights = batch.weights
    loss = (error * weights).mean() / weights.mean()
    mouth_loss = (error * batch.mouth).sum() / (batch.mouth.sum() * frames).clamp(min=1)
    return loss, {"loss": float(loss.detach()), "loss_mouth": float(mouth_loss.detach())}

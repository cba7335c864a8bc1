"""The training stages and the loop that runs (and resumes) any of them.

Stages, after EMO (arXiv 2402.17485), simplified for a 45-minute CPU budget:

0. ``audio``: the wav2vec2-shaped encoder and its projection learn from scratch to predict the mouth
   shape (opening, width) of each frame from the session's audio windows, through a linear head that
   is then dropped. No pre-trained speech model can be downloaded here, and learning speech features
   through the denoising loss alone is far too slow on this budget.
1. ``image``: ReferenceNet, backbone (spatial layers) and face locator learn to draw a frame of a clip
   from its reference image; motion modules stay the identity (zero output projection, not trained),
   audio- and speed-attention are not run.
2. ``video``: motion modules, audio-attention (zero-initialised output), speed layers and, at half the
   learning rate, everything trained before (backbone spatial layers, ReferenceNet through its reference
   bank, audio encoder), on clips of consecutive frames with motion frames and audio windows exactly as
   the session builds them (the ReferenceNet runs on the motion frames without gradient). EMO freezes the
   image-stage weights here; at this budget they are far from converged, and the reference path is what
   keeps the identity once the motion frames are the model's own.
3. ``speed``: speed encoder, speed-attention and motion modules alone, on clips with moving heads most of
   the time (EMO trains the speed layers last so that they do not take over from audio).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from engine.models.model import EmoteModel
from engine.sampling.samplers import DDIMSampler
from engine.sampling.schedules import NoiseSchedule
from engine.training.data import ClipSampler
from engine.training.diffusion import LossOptions, clip_audio_tokens, diffusion_loss
from engine.training.motion import MotionAugment
from engine.training.recipe import StageBudget
from engine.training.rollout import Rollout
from engine.training.state import LossLog, atomic_save, load_state

AUDIO_LAYER_KEYS = (".attn2.", ".norm2.")
"""Backbone parameters of the audio cross-attention (inside ``transformer_blocks``)."""

LossFn = Callable[[], tuple[torch.Tensor, dict[str, float]]]


def is_audio_attention(name: str) -> bool:
    return "transformer_blocks." in name and any(k in name for k in AUDIO_LAYER_KEYS)


def is_speed_layer(name: str) -> bool:
    return ".speed_attn." in name or ".speed_norm." in name


def is_motion_module(name: str) -> bool:
    return "motion_modules." in name and not is_speed_layer(name)


def zero_audio_attention_outputs(model: EmoteModel) -> None:
    """Zero the output projection of every backbone audio-attention (it then starts as a no-op)."""
    with torch.no_grad():
        for name, p in model.backbone.named_parameters():
            if "transformer_blocks." in name and ".attn2.to_out." in name:
                p.zero_()


@dataclass
class Stage:
    """One stage: its budget, the parameter groups it trains (``(params, lr_scale)``), its loss, and the
    extra modules (e.g. a probe head) and random streams its checkpoint must hold."""

    name: str
    budget: StageBudget
    groups: list[tuple[list[nn.Parameter], float]]
    loss: LossFn
    sampler: ClipSampler
    generator: torch.Generator
    extra: dict[str, nn.Module] = field(default_factory=dict)


def learning_rate(step: int, budget: StageBudget) -> float:
    """Linear warm-up to ``budget.lr``, then cosine decay to ``lr * final_lr_fraction`` at the last step."""
    if step < budget.warmup:
        return budget.lr * (step + 1) / budget.warmup
    span = max(1, budget.steps - budget.warmup)
    progress = min(1.0, (step - budget.warmup) / span)
    low = budget.final_lr_fraction
    return budget.lr * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress)))


def run_stage(stage: Stage, model: EmoteModel, workdir: Path, log: LossLog, checkpoint_every: int = 50,
              progress: bool = True) -> bool:
    """Train ``stage`` to its last step, resuming from its checkpoint; False if it had already finished.

    Only the stage's parameters take gradients; afterwards ``<name>.done.pt`` holds the model.
    """
    workdir = Path(workdir)
    done, ckpt = workdir / f"{stage.name}.done.pt", workdir / f"{stage.name}.ckpt.pt"
    if done.exists():
        model.load_state_dict(load_state(done)["model"])
        return False
    trainable = {id(p) for params, _ in stage.groups for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    optimizer = torch.optim.AdamW([{"params": params, "lr_scale": scale} for params, scale in stage.groups],
                                  lr=stage.budget.lr, betas=(0.9, 0.99), weight_decay=0.0)
    step, elapsed = 0, 0.0
    if ckpt.exists():
        state = load_state(ckpt)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for name, module in stage.extra.items():
            module.load_state_dict(state["extra"][name])
        stage.sampler.load_state_dict(state["sampler"])
        stage.generator.set_state(state["generator"])
        step, elapsed = int(state["step"]), float(state["elapsed"])

    def save_checkpoint() -> None:
        atomic_save(dict(model=model.state_dict(), optimizer=optimizer.state_dict(), step=step, elapsed=elapsed,
                         extra={k: m.state_dict() for k, m in stage.extra.items()},
                         sampler=stage.sampler.state_dict(), generator=stage.generator.get_state()), ckpt)

    params = [p for params, _ in stage.groups for p in params]
    with tqdm(total=stage.budget.steps, initial=step, desc=stage.name, unit="step", disable=not progress,
              dynamic_ncols=True) as bar:
        while step < stage.budget.steps:
            started = time.perf_counter()
            lr = learning_rate(step, stage.budget)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            loss, metrics = stage.loss()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"stage {stage.name}: loss is {float(loss)} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            step += 1
            elapsed += time.perf_counter() - started
            log.write(stage.name, step, elapsed, lr, metrics)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            bar.update(1)
            if step % checkpoint_every == 0 and step < stage.budget.steps:
                save_checkpoint()
    for p in model.parameters():
        p.requires_grad_(True)
    atomic_save({"model": model.state_dict()}, done)
    ckpt.unlink(missing_ok=True)
    return True


class MouthProbe(nn.Module):
    """Linear read-out of (opening, width) from a frame's audio tokens [.., T, D] (audio pre-training only)."""

    def __init__(self, tokens: int, dim: int):
        super().__init__()
        self.linear = nn.Linear(tokens * dim, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(tokens.flatten(-2))


def audio_stage(model: EmoteModel, sampler: ClipSampler, budget: StageBudget, seed: int) -> Stage:
    """Stage 0: audio encoder + projection regress the per-frame mouth shape."""
    encoder = model.audio_encoder
    probe = MouthProbe(encoder.output_tokens, encoder.output_dim)
    generator = torch.Generator().manual_seed(seed)

    def loss() -> tuple[torch.Tensor, dict[str, float]]:
        batch = sampler.video_batch(budget.clips, budget.frames)
        prediction = probe(clip_audio_tokens(model, batch.audio, budget.frames))
        target = torch.stack([batch.opening, (batch.width - 1.0) * 2.0], dim=-1)
        value = (prediction - target).pow(2).mean()
        return value, {"loss": float(value.detach())}

    return Stage("audio", budget, [(list(encoder.parameters()) + list(probe.parameters()), 1.0)], loss, sampler,
                 generator, extra={"probe": probe})


def image_stage(model: EmoteModel, sampler: ClipSampler, schedule: NoiseSchedule, budget: StageBudget,
                seed: int) -> Stage:
    """Stage 1: single frames from a reference (ReferenceNet, spatial backbone, face locator)."""
    spatial = [p for n, p in model.backbone.named_parameters()
               if not (is_motion_module(n) or is_audio_attention(n) or is_speed_layer(n))]
    params = list(model.reference_net.parameters()) + spatial + list(model.face_locator.parameters())
    generator = torch.Generator().manual_seed(seed)
    options = LossOptions(audio=False, motion=False, speed=False, reference_grad=True, per_frame_prob=1.0)

    def loss() -> tuple[torch.Tensor, dict[str, float]]:
        return diffusion_loss(model, schedule, sampler.image_batch(budget.clips, budget.frames), options, generator)

    return Stage("image", budget, [(params, 1.0)], loss, sampler, generator)


def video_loss(model: EmoteModel, sampler: ClipSampler, schedule: NoiseSchedule, budget: StageBudget,
               options: LossOptions, generator: torch.Generator, moving_prob: float | None = None) -> LossFn:
    """The diffusion loss on video batches; in a share ``options.augment.rollout`` of them the motion frames
    are the model's own (DDIM in ``augment.steps`` steps with the current weights, no guidance)."""
    augment = options.augment
    rollout = Rollout(model.backbone, DDIMSampler(schedule), augment.steps)

    def loss() -> tuple[torch.Tensor, dict[str, float]]:
        rolled = augment.rolls_out(generator)
        batch = sampler.video_batch(budget.clips, budget.frames, moving_prob=moving_prob,
                                    history=augment.segments if rolled else 0)
        motion = rollout.motion(model, batch, options, generator) if rolled else None
        return diffusion_loss(model, schedule, batch, options, generator, motion=motion)

    return loss


def video_stage(model: EmoteModel, sampler: ClipSampler, schedule: NoiseSchedule, budget: StageBudget,
                seed: int, augment: MotionAugment = MotionAugment(), pretrained_lr_scale: float = 0.5) -> Stage:
    """Stage 2: clips with motion frames and audio (temporal, audio and speed layers; the layers trained
    before, spatial, ReferenceNet and audio encoder, at ``pretrained_lr_scale`` of the rate); ``augment``:
    what is done to the motion frames."""
    new, pretrained = [], list(model.audio_encoder.parameters()) + list(model.reference_net.parameters())
    for name, p in model.backbone.named_parameters():
        (new if is_motion_module(name) or is_audio_attention(name) or is_speed_layer(name) else pretrained).append(p)
    new += list(model.face_locator.parameters())
    if hasattr(model, "speed_encoder"):
        new += list(model.speed_encoder.parameters())
    generator = torch.Generator().manual_seed(seed)
    options = LossOptions(audio=True, motion=True, speed=True, reference_grad=True, augment=augment)
    loss = video_loss(model, sampler, schedule, budget, options, generator)
    return Stage("video", budget, [(new, 1.0), (pretrained, pretrained_lr_scale)], loss, sampler, generator)


def speed_stage(model: EmoteModel, sampler: ClipSampler, schedule: NoiseSchedule, budget: StageBudget,
                seed: int, augment: MotionAugment = MotionAugment(), moving_prob: float = 0.75) -> Stage:
    """Stage 3: speed encoder, speed-attention and motion modules on mostly moving heads."""
    params = [p for n, p in model.backbone.named_parameters() if is_speed_layer(n) or is_motion_module(n)]
    if hasattr(model, "speed_encoder"):
        params += list(model.speed_encoder.parameters())
    generator = torch.Generator().manual_seed(seed)
    options = LossOptions(audio=True, motion=True, speed=True, reference_grad=False, augment=augment)
    loss = video_loss(model, sampler, schedule, budget, options, generator, moving_prob=moving_prob)
    return Stage("speed", budget, [(params, 1.0)], loss, sampler, generator)


def copy_backbone_into_reference_net(model: EmoteModel) -> None:
    """Start the ReferenceNet from the backbone's (random) spatial weights, as EMO starts both from the same
    SD1.5 UNet: at step 0 their attention inputs already live in the same feature space, so the backbone's
    reference-attention can match frame tokens to reference tokens from the first steps."""
    reference = model.reference_net.state_dict()
    shared = {k: v for k, v in model.backbone.state_dict().items() if k in reference and v.shape == reference[k].shape}
    model.reference_net.load_state_dict(shared, strict=False)

"""How long and how hard each stage trains: the full recipe (about 67 minutes on one CPU core) and a
tiny one (seconds, for tests)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from engine.training.motion import MotionAugment


STAGES = ("audio", "image", "video", "speed", "distill")
"""The stages in training order (the names of :class:`Recipe`'s budgets)."""


@dataclass(frozen=True)
class StageBudget:
    """One stage: optimiser ``steps``, ``clips`` per batch of ``frames`` frames each, peak learning
    rate ``lr`` after ``warmup`` steps (then cosine decay to ``lr * final_lr_fraction``)."""

    steps: int
    clips: int
    frames: int
    lr: float
    warmup: int = 20
    final_lr_fraction: float = 0.1


@dataclass(frozen=True)
class Recipe:
    """The whole training run.

    Attributes:
        train_clips / first_seed: cached synthetic clips used for training (seeds of the ``train`` split).
        audio: audio-encoder pre-training on mouth shape; image / video / speed: the EMO stages;
            distill: latent-consistency distillation.
        distill_guidance: the audio guidance scale baked into the student.
        distill_temporal: weight of the distillation's frame-difference term (see engine.training.distill).
        motion / distill_motion: what the video and speed stages / the distillation do to the motion frames
            (noise, dropped patches, the model's own rollouts, anchoring; engine.training.motion).
        checkpoint_every: steps between resumable checkpoints.
        seed: initial weights and batch order.
    """

    train_clips: int = 200
    first_seed: int = 0
    audio: StageBudget = field(default_factory=lambda: StageBudget(steps=500, clips=16, frames=8, lr=2e-3))
    image: StageBudget = field(default_factory=lambda: StageBudget(steps=1200, clips=4, frames=4, lr=1.5e-3))
    video: StageBudget = field(default_factory=lambda: StageBudget(steps=3000, clips=3, frames=8, lr=1e-3))
    speed: StageBudget = field(default_factory=lambda: StageBudget(steps=100, clips=3, frames=8, lr=3e-4))
    distill: StageBudget = field(default_factory=lambda: StageBudget(steps=300, clips=2, frames=8, lr=1e-4,
                                                                     warmup=10))
    distill_guidance: float = 3.0
    distill_temporal: float = 1.0
    motion: MotionAugment = MotionAugment(noise=0.3, patch_drop=0.15, rollout=0.5, segments=1, steps=2, anchor=0.5)
    distill_motion: MotionAugment = MotionAugment(noise=0.1, patch_drop=0.15, rollout=0.5, segments=2, steps=2,
                                                  anchor=0.5)
    checkpoint_every: int = 50
    seed: int = 0

    @classmethod
    def tiny(cls) -> Recipe:
        """A few steps of every stage on a handful of clips (end-to-end checks)."""
        small = dict(warmup=2)
        return cls(train_clips=4, audio=StageBudget(steps=6, clips=2, frames=4, lr=2e-3, **small),
                   image=StageBudget(steps=6, clips=2, frames=2, lr=6e-4, **small),
                   video=StageBudget(steps=6, clips=1, frames=4, lr=4e-4, **small),
                   speed=StageBudget(steps=3, clips=1, frames=4, lr=3e-4, **small),
                   distill=StageBudget(steps=6, clips=1, frames=4, lr=1e-4, **small), checkpoint_every=4)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def with_steps(self, steps: dict[str, int]) -> Recipe:
        """This recipe with the optimiser steps of the named stages replaced, e.g. ``{"video": 3000}``."""
        changes = {}
        for stage, count in steps.items():
            if stage not in STAGES:
                raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
            if count < 1:
                raise ValueError(f"stage {stage}: steps must be at least 1, got {count}")
            changes[stage] = dataclasses.replace(getattr(self, stage), steps=count)
        return dataclasses.replace(self, **changes)

    def with_distill_temporal(self, weight: float) -> Recipe:
        """This recipe with the distillation's frame-difference term at ``weight`` (0 turns it off)."""
        if not weight >= 0:
            raise ValueError(f"the distillation's temporal weight must be >= 0, got {weight}")
        return dataclasses.replace(self, distill_temporal=float(weight))

    @classmethod
    def named(cls, name: str) -> Recipe:
        """``"full"`` or ``"tiny"``."""
        if name == "full":
            return cls()
        if name == "tiny":
            return cls.tiny()
        raise ValueError(f"unknown recipe {name!r}; known: full, tiny")

"""Motion-frame augmentation and rollouts: what the video stages and the distillation do to motion frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.models.checkpoint import random_model
from engine.sampling.samplers import DDIMSampler
from engine.sampling.schedules import NoiseSchedule
from engine.training import rollout as rollout_module
from engine.training.data import ClipSampler
from engine.training.diffusion import LossOptions
from engine.training.distill import distill_stage
from engine.training.motion import MotionAugment, anchor_features, corrupt_latents
from engine.training.recipe import StageBudget
from engine.training.rollout import Rollout
from engine.training.stages import video_stage


def test_default_augmentation_changes_nothing():
    latents = torch.randn(2, 4, 3, 8, 8)
    assert torch.equal(corrupt_latents(latents, MotionAugment(), torch.Generator()), latents)
    features = [torch.randn(2, 4, 5, 8, 8)]
    assert anchor_features(features, [torch.randn(2, 5, 8, 8)], MotionAugment(), torch.Generator()) is features


def test_noise_is_one_level_per_sample_up_to_the_bound():
    latents = torch.zeros(64, 4, 3, 16, 16)
    noisy = corrupt_latents(latents, MotionAugment(noise=0.3), torch.Generator().manual_seed(0))
    std = noisy.flatten(1).std(dim=1)
    assert float(std.max()) < 0.32 and float(std.min()) < 0.05 and float(std.max()) > 0.25


def test_patches_drop_in_aligned_blocks_at_the_rate():
    latents = torch.ones(32, 4, 3, 16, 16)
    dropped = corrupt_latents(latents, MotionAugment(patch_drop=0.25, patch=2), torch.Generator().manual_seed(0))
    blocks = dropped[:, :, 0].unfold(2, 2, 2).unfold(3, 2, 2)
    per_block = blocks.flatten(-2)
    assert torch.all((per_block == 0).all(-1) | (per_block == 1).all(-1)), "a patch is dropped whole or kept"
    assert torch.equal(dropped[:, :, 0], dropped[:, :, 2]), "every channel of a patch goes together"
    assert float((dropped == 0).float().mean()) == pytest.approx(0.25, abs=0.02)


def test_anchor_moves_each_sample_toward_the_reference_by_at_most_the_bound():
    features, reference = [torch.randn(50, 4, 3, 2, 2)], [torch.randn(50, 3, 2, 2)]
    moved = anchor_features(features, reference, MotionAugment(anchor=0.5), torch.Generator().manual_seed(0))[0]
    direction = reference[0][:, None] - features[0]
    weight = ((moved - features[0]) * direction).flatten(1).sum(1) / direction.pow(2).flatten(1).sum(1)
    assert torch.allclose(moved, features[0] + weight.view(-1, 1, 1, 1, 1) * direction, atol=1e-5)
    assert float(weight.min()) >= 0 and float(weight.max()) <= 0.5 and float(weight.max()) > 0.4


@pytest.mark.parametrize("bad", [dict(rollout=1.5), dict(patch_drop=-0.1), dict(anchor=2.0), dict(noise=-1.0),
                                 dict(segments=0), dict(steps=0), dict(patch=0)])
def test_bad_augmentation_is_refused(bad):
    with pytest.raises(ValueError, match="motion augmentation"):
        MotionAugment(**bad)


def test_history_segments_are_the_frames_before_the_sample(config, clips):
    sampler = ClipSampler(clips, config, seed=0)
    batch = sampler.video_batch(3, 8, history=2)
    n = config.motion_frames
    assert len(batch.history) == 2
    for segment in batch.history:
        assert segment.frames.shape == (3, 3, n, 64, 64) and segment.motion.shape == (3, n, 3, 64, 64)
        assert torch.equal(segment.reference, batch.reference)
    assert torch.equal(batch.motion, batch.history[1].frames.transpose(1, 2))
    assert torch.equal(batch.history[1].motion, batch.history[0].frames.transpose(1, 2))
    per_frame = round(16000 / config.fps)
    for window, segment in zip(batch.audio, batch.history[1].audio):
        shift = n - (window.offset - segment.offset)
        assert 0 <= shift <= n, "the segment's audio window starts up to n frames before the sample's"
        overlap = min(window.pcm.shape[0], segment.pcm.shape[0] - shift * per_frame)
        assert torch.equal(segment.pcm[shift * per_frame:][:overlap], window.pcm[:overlap])
    assert batch.motion_valid.all() and not sampler.video_batch(2, 8).history
    with pytest.raises(ValueError, match="fewer than"):
        sampler.video_batch(1, max(c.num_frames for c in clips), history=1)


def test_rollout_chains_each_segment_on_the_one_before(config, clips, monkeypatch):
    model = random_model(config, seed=0)
    batch = ClipSampler(clips, config, seed=1).video_batch(2, 8, history=2)
    seen = []
    conditions = rollout_module.backbone_conditions

    def spy(model, segment, options, generator, audio_drop_prob=None, motion=None):
        seen.append((segment, None if motion is None else motion.clone(), options))
        return conditions(model, segment, options, generator, audio_drop_prob, motion)

    monkeypatch.setattr(rollout_module, "backbone_conditions", spy)
    rollout = Rollout(model.backbone, DDIMSampler(NoiseSchedule.from_dict(config.scheduler)), steps=1)
    options = LossOptions(augment=MotionAugment(noise=0.3, patch_drop=0.5, anchor=0.5))
    first = rollout.motion(model, batch, options, torch.Generator().manual_seed(5))
    again = rollout.motion(model, batch, options, torch.Generator().manual_seed(5))
    side = config.resolution // config.latent_downscale
    assert first.shape == (2, config.motion_frames, config.unet.in_channels, side, side)
    assert torch.equal(first, again)
    assert [s is seg for (s, _, _), seg in zip(seen[:2], batch.history)] == [True, True]
    assert seen[0][1] is None and seen[1][1].shape == first.shape and not torch.equal(seen[1][1], first)
    assert seen[0][2].augment == MotionAugment(anchor=0.5), "rollouts keep the anchor, not noise or dropped patches"
    with pytest.raises(ValueError, match="no history"):
        rollout.motion(model, ClipSampler(clips, config).video_batch(1, 8), options, torch.Generator())


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_stages_roll_out_the_share_of_batches_they_are_given(config, clips, monkeypatch, share):
    calls = []
    original = Rollout.motion

    def counting(self, *args, **kwargs):
        calls.append(self.sampler.__class__.__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Rollout, "motion", counting)
    schedule = NoiseSchedule.from_dict(config.scheduler)
    budget = StageBudget(steps=2, clips=1, frames=4, lr=1e-4)
    augment = MotionAugment(rollout=share, steps=1)
    model = random_model(config, seed=0)
    for _ in range(2):
        value, _ = video_stage(model, ClipSampler(clips, config, seed=2), schedule, budget, 0, augment).loss()
        assert np.isfinite(float(value.detach()))
    stage, _ = distill_stage(model, ClipSampler(clips, config, seed=2), schedule, budget, 0, guidance=2.0,
                             temporal=1.0, augment=augment)
    value, metrics = stage.loss()
    assert np.isfinite(float(value.detach()))
    assert calls == (["DDIMSampler"] * 2 + ["LCMSampler"] if share else [])

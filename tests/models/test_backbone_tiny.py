"""The tiny preset end to end through the networks: shapes, per-frame timesteps, conditioning paths."""

from __future__ import annotations

import pytest
import torch
from support import randomize_, tiny_random_model

from engine.config import preset
from engine.models.checkpoint import random_model
from engine.models.model import EmoteModel

B, F, N_MOTION, LATENT = 2, 8, 4, 16


@pytest.fixture(scope="module")
def model() -> EmoteModel:
    m = tiny_random_model(seed=0)
    randomize_(m.backbone, std=0.05, seed=1)
    randomize_(m.face_locator, std=0.05, seed=2)
    randomize_(m.speed_encoder, std=0.05, seed=3)
    return m


@pytest.fixture(scope="module")
def inputs(model):
    cfg = model.config
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(B, 4, F, LATENT, LATENT, generator=gen)
    audio = torch.randn(B, F, cfg.audio.projection.tokens, cfg.unet.cross_attention_dim, generator=gen)
    with torch.no_grad():
        reference = model.reference_net(torch.randn(B, 4, LATENT, LATENT, generator=gen))
        motion = model.reference_net(torch.randn(B * N_MOTION, 4, LATENT, LATENT, generator=gen))
        mask = torch.zeros(B, 1, 128, 128)
        mask[:, :, 32:96, 40:88] = 1
        face = model.face_locator(mask)[:, None]
        speed = model.speed_encoder(torch.full((B, F), 0.3))
    return dict(sample=sample, audio_tokens=audio, reference_bank=reference.tokens,
                motion_features=motion.motion_features(B), face_features=face, speed_tokens=speed)


def _run(model, inputs, t, **overrides):
    kwargs = dict(inputs, **overrides)
    sample = kwargs.pop("sample")
    with torch.no_grad():
        return model.backbone(sample, t, **kwargs)


def test_tiny_forward_with_motion_frames_has_clip_shape(model, inputs):
    assert len(inputs["motion_features"]) == model.backbone.num_motion_locations
    assert inputs["motion_features"][0].shape[:2] == (B, N_MOTION)
    out = _run(model, inputs, torch.tensor([500, 20]))
    assert out.shape == (B, 4, F, LATENT, LATENT)
    assert torch.isfinite(out).all()


def test_per_frame_timesteps(model, inputs):
    per_sample = _run(model, inputs, torch.tensor([500, 20]))
    same_per_frame = _run(model, inputs, torch.tensor([[500] * F, [20] * F]))
    torch.testing.assert_close(same_per_frame, per_sample, rtol=0, atol=1e-6)
    staggered = torch.tensor([[50 + 100 * i for i in range(F)], [20] * F])
    out = _run(model, inputs, staggered)
    frame_change = (out[0] - per_sample[0]).abs().amax(dim=(0, 2, 3))
    assert (frame_change > 1e-4).all(), "every frame of clip 0 got another timestep and must change"


def test_per_frame_timestep_reaches_only_its_frame_without_temporal_mixing():
    cfg = preset("tiny")
    cfg.temporal.resolutions, cfg.temporal.mid_block = (), False
    m = random_model(cfg, seed=5)
    sample = torch.randn(1, 4, 3, LATENT, LATENT)
    with torch.no_grad():
        joint = m.backbone(sample, torch.tensor([[10, 400, 900]]))
        for f, t in enumerate([10, 400, 900]):
            alone = m.backbone(sample[:, :, f:f + 1], torch.tensor([t]))
            torch.testing.assert_close(joint[:, :, f:f + 1], alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("condition", ["audio_tokens", "reference_bank", "motion_features", "face_features",
                                       "speed_tokens"])
def test_each_condition_changes_the_output(model, inputs, condition):
    t = torch.tensor([500, 20])
    full = _run(model, inputs, t)
    without = _run(model, inputs, t, **{condition: None})
    assert (full - without).abs().max().item() > 1e-4


def test_face_locator_and_temporal_outputs_start_at_zero():
    m = tiny_random_model(seed=6)
    mask = torch.ones(1, 1, 128, 128)
    assert m.face_locator(mask).abs().max().item() == 0.0
    sample = torch.randn(1, 4, 4, LATENT, LATENT)
    motion = m.reference_net(torch.randn(2, 4, LATENT, LATENT)).motion_features(1)
    with torch.no_grad():
        torch.testing.assert_close(m.backbone(sample, torch.tensor([3]), motion_features=motion),
                                   m.backbone(sample, torch.tensor([3])), rtol=0, atol=1e-6)


def test_timestep_shape_mismatch_is_a_clear_error(model, inputs):
    with pytest.raises(ValueError, match="timestep shape"):
        _run(model, inputs, torch.zeros(B, F + 1))


def test_reference_keep_false_equals_no_reference_bank(model, inputs):
    """One batch with the bank masked out for clip 1 equals plain self-attention for that clip."""
    t = torch.tensor([500, 20])
    masked = _run(model, inputs, t, reference_keep=torch.tensor([True, False]))
    with_bank = _run(model, inputs, t)
    without_bank = _run(model, inputs, t, reference_bank=None)
    torch.testing.assert_close(masked[0], with_bank[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(masked[1], without_bank[1], rtol=0, atol=1e-5)


def test_motion_modules_skip_only_work_whose_result_is_dropped(model, inputs):
    """Each motion module runs its last attention's queries, speed attention, feed-forward and ``proj_out`` on
    the clip's frames only; the motion frames' rows, run and then dropped, would give the same clip frames."""
    from engine.models.blocks import UNetContext
    from engine.models.temporal import MotionModule

    module = next(m for m in model.backbone.modules() if isinstance(m, MotionModule))
    motion = inputs["motion_features"][module.motion_index]
    b, n, c, h, w = motion.shape
    x = torch.randn(b * F, c, h, w, generator=torch.Generator().manual_seed(5))
    speed = inputs["speed_tokens"]
    joined_speed = torch.cat([speed[:, :1].expand(-1, n, -1, -1), speed], dim=1)
    ctx = UNetContext(temb=torch.zeros(b * F, 1), num_frames=F, motion_features=inputs["motion_features"],
                      speed_tokens=joined_speed)
    with torch.no_grad():
        out = module(x, ctx)
        joined = torch.cat([motion, x.view(b, F, c, h, w)], dim=1).flatten(0, 1)
        every_row = module.temporal_transformer(joined, n + F, joined_speed)
    assert out.shape == x.shape
    torch.testing.assert_close(out, every_row.view(b, n + F, c, h, w)[:, n:].reshape(x.shape), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, x, atol=1e-3)

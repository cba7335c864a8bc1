"""Training: batches cut as the session cuts them, stage losses that fall, and the tiny recipe end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from engine.backends.torch_eager import TorchEagerBackend
from engine.lipsync import portrait_mask
from engine.models.checkpoint import load_model, random_model
from engine.options import GenerationOptions
from engine.sampling.schedules import NoiseSchedule
from engine.stream.session import Session
from engine.training.data import ClipSampler, audio_window, window_pcm
from engine.training.distill import distill_stage, temporal_error
from engine.training.recipe import Recipe, StageBudget
from engine.training.stages import (audio_stage, copy_backbone_into_reference_net, image_stage, speed_stage,
                                    video_stage, zero_audio_attention_outputs)
from engine.training.train import main as train_main


class RecordingBackend(TorchEagerBackend):
    """Records every audio-encoder call the session makes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.audio_calls: list[tuple[np.ndarray, int]] = []

    def audio_tokens(self, pcm, num_frames):
        self.audio_calls.append((pcm.numpy().copy(), num_frames))
        return super().audio_tokens(pcm, num_frames)


@pytest.mark.parametrize("block", [None, 700])
def test_audio_windows_are_the_sessions(config, clips, block):
    clip = clips[1]
    backend = RecordingBackend(random_model(config, seed=0))
    session = Session(backend, config, clip.reference, portrait_mask(clip), GenerationOptions(steps=1))
    starts = []
    blocks = [clip.audio] if block is None else [clip.audio[i:i + block] for i in range(0, clip.audio.size, block)]
    for chunk in blocks:
        session.push_audio(chunk)
        starts += [f.index for f in session.frames()]
    session.end()
    starts += [f.index for f in session.frames()]
    assert starts == list(range(clip.num_frames))
    left = round(GenerationOptions().audio_context_s * config.fps)
    for k, (pcm, frames) in enumerate(backend.audio_calls):
        start = k * config.clip_frames
        end = min(start + config.clip_frames, clip.num_frames)
        first, last = audio_window(start, end, clip.num_frames, config.audio.window, left)
        assert frames == last - first
        np.testing.assert_array_equal(pcm, window_pcm(clip.audio, first, last, config.fps))


def test_video_batches(config, clips):
    sampler = ClipSampler(clips, config, seed=0)
    batch = sampler.video_batch(3, 8, first_clip_prob=1.0)
    assert batch.frames.shape == (3, 3, 8, 64, 64) and batch.motion.shape == (3, 4, 3, 64, 64)
    assert config.motion_init == "reference" and batch.motion_valid.all()
    assert torch.equal(batch.motion, batch.reference[:, None].expand_as(batch.motion))
    assert batch.weights.shape == (3, 1, 1, 16, 16) and batch.weights.max() > 4
    batch = sampler.video_batch(2, 8, first_clip_prob=0.0)
    assert batch.speed.shape == (2, 8) and batch.mask.shape == (2, 1, 64, 64)
    for window in batch.audio:
        assert window.offset + 8 <= window.frames
        assert window.pcm.shape[0] == round(window.frames * 16000 / 25)
    state = sampler.state_dict()
    a = sampler.video_batch(1, 8)
    sampler.load_state_dict(state)
    b = sampler.video_batch(1, 8)
    assert torch.equal(a.frames, b.frames) and torch.equal(a.audio[0].pcm, b.audio[0].pcm)


def _fixed(stage, batch_method: str):
    """Make a stage's loss see one batch and one noise draw at every step (so it must fall)."""
    sampler = stage.sampler
    cached = {}
    original = getattr(sampler, batch_method)

    def same_batch(*args, **kwargs):
        if "batch" not in cached:
            cached["batch"] = original(*args, **kwargs)
        return cached["batch"]

    setattr(sampler, batch_method, same_batch)
    loss = stage.loss

    def fixed_loss():
        stage.generator.manual_seed(1)
        return loss()

    return fixed_loss


def _train(stage, steps: int) -> list[float]:
    params = [p for group, _ in stage.groups for p in group]
    optimizer = torch.optim.Adam(params, lr=stage.budget.lr)
    losses = []
    for _ in range(steps):
        value, metrics = stage.loss()
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(metrics["loss"])
    return losses


@pytest.mark.parametrize("name", ["audio", "image", "video", "speed", "distill"])
def test_stage_losses_are_finite_and_fall(config, clips, name):
    torch.manual_seed(0)
    model = random_model(config, seed=0)
    copy_backbone_into_reference_net(model)
    schedule = NoiseSchedule.from_dict(config.scheduler)
    sampler = ClipSampler(clips, config, seed=0)
    budget = StageBudget(steps=8, clips=1, frames=4, lr=2e-4 if name != "distill" else 5e-5)
    if name == "audio":
        stage = audio_stage(model, sampler, budget, 0)
    elif name == "image":
        stage = image_stage(model, sampler, schedule, budget, 0)
    elif name == "video":
        zero_audio_attention_outputs(model)
        stage = video_stage(model, sampler, schedule, budget, 0)
    elif name == "speed":
        stage = speed_stage(model, sampler, schedule, budget, 0)
    else:
        stage, distiller = distill_stage(model, sampler, schedule, budget, 0, guidance=2.0)
        distiller.ema = 1.0
    stage.loss = _fixed(stage, "image_batch" if name == "image" else "video_batch")
    losses = _train(stage, 8)
    assert all(math.isfinite(v) for v in losses)
    assert max(losses[-2:]) < losses[0], losses


def test_temporal_error_is_the_frame_change_against_the_clean_clip():
    clean, before = torch.randn(2, 4, 5, 3, 3), torch.randn(2, 4, 3, 3)
    offset = torch.randn(2, 4, 1, 3, 3)
    assert temporal_error(clean + offset, clean, before + offset[:, :, 0], before).abs().max() < 1e-5
    shaken = temporal_error(clean + 0.3 * torch.randn(2, 4, 5, 3, 3), clean, before, before)
    assert shaken.shape == (2, 1, 5, 3, 3) and float(shaken.min()) > 0
    jump = temporal_error(clean, clean, before + 1.0, before)
    assert float(jump[:, :, 0].min()) == pytest.approx(1.0) and float(jump[:, :, 1:].abs().max()) == 0


def test_distillation_temporal_term_scales_with_its_weight(config, clips):
    model = random_model(config, seed=0)
    sampler = ClipSampler(clips, config, seed=0)
    budget = StageBudget(steps=1, clips=1, frames=4, lr=5e-5)
    _, distiller = distill_stage(model, sampler, NoiseSchedule.from_dict(config.scheduler), budget, 0, guidance=2.0)
    generator = torch.Generator()

    def loss(weight: float, per_frame_prob: float):
        distiller.temporal = weight
        sampler.rng = np.random.default_rng(0)
        value, metrics = distiller.loss(sampler, budget, generator.manual_seed(3), per_frame_prob)
        return float(value.detach()), metrics

    plain, plain_metrics = loss(0.0, 0.0)
    once, metrics = loss(1.0, 0.0)
    twice, _ = loss(2.0, 0.0)
    assert metrics["loss"] == pytest.approx(plain_metrics["loss"]) and "loss_temporal" not in plain_metrics
    assert metrics["loss_temporal"] > 0 and once > plain
    assert twice - plain == pytest.approx(2 * (once - plain), rel=1e-4)
    assert loss(1.0, 1.0)[0] == pytest.approx(loss(0.0, 1.0)[0])


def test_tiny_recipe_end_to_end_and_resume(tmp_path, capsys):
    out, data = tmp_path / "run", tmp_path / "data"
    args = ["--out", str(out), "--recipe", "tiny", "--data", str(data), "--threads", "1", "--workers", "1", "--quiet",
            "--stage-steps", "video=4"]
    assert train_main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    recipe = Recipe.tiny().with_steps({"video": 4})
    assert recipe.video.steps == 4 != Recipe.tiny().video.steps
    for name in ("audio", "image", "video", "speed", "distill"):
        stats = summary["stages"][name]
        assert stats["steps"] == getattr(recipe, name).steps
        assert math.isfinite(stats["loss_first"]) and math.isfinite(stats["loss_last"])
    student, teacher = load_model(out / "student"), load_model(out / "teacher")
    assert student.config.sampling.sampler == "lcm" and student.config.sampling.steps == 4
    assert teacher.config.sampling.sampler == "ddim"
    assert not torch.equal(student.backbone.conv_out.weight, teacher.backbone.conv_out.weight)
    assert torch.equal(student.reference_net.conv_in.weight, teacher.reference_net.conv_in.weight)
    before = {k: v.clone() for k, v in student.backbone.state_dict().items()}
    rows = (out / "log.csv").read_text().splitlines()
    assert train_main(args) == 0
    assert (out / "log.csv").read_text().splitlines() == rows
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["stage_seconds"] == summary["stage_seconds"] == pytest.approx(
        sum(s["seconds"] for s in summary["stages"].values()), abs=0.1)
    again = load_model(out / "student").backbone.state_dict()
    assert all(torch.equal(before[k], again[k]) for k in before)


def test_stage_steps_override_one_stage_and_refuse_bad_ones(capsys):
    recipe = Recipe().with_steps({"video": 3000, "image": 1200})
    assert (recipe.video.steps, recipe.image.steps) == (3000, 1200)
    assert recipe.video.lr == Recipe().video.lr and recipe.audio == Recipe().audio
    with pytest.raises(ValueError, match="unknown stage 'vidoe'"):
        Recipe().with_steps({"vidoe": 10})
    with pytest.raises(ValueError, match="steps must be at least 1"):
        Recipe().with_steps({"video": 0})
    for bad in ("video", "video=x", "sound=10"):
        with pytest.raises(SystemExit):
            train_main(["--out", "unused", "--stage-steps", bad])
        assert "expected STAGE=N" in capsys.readouterr().err


def test_distill_temporal_weight_from_the_command_line(capsys):
    recipe = Recipe().with_distill_temporal(2.5)
    assert recipe.distill_temporal == 2.5 and Recipe().distill_temporal == 1.0
    assert recipe.with_distill_temporal(0).distill_temporal == 0.0
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="temporal weight must be >= 0"):
            Recipe().with_distill_temporal(bad)
    with pytest.raises(SystemExit):
        train_main(["--out", "unused", "--distill-temporal", "-1"])
    assert "temporal weight must be >= 0" in capsys.readouterr().err

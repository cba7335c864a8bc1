"""The generation session: clip cut, chunking independence, guidance batching, motion frames."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from support import speech

from engine.backends.torch_eager import TorchEagerBackend
from engine.config import SamplingDefaults, preset
from engine.options import GenerationOptions
from engine.stream.chunk_planner import ChunkPlanner, Clip
from engine.stream.session import Session


class RecordingBackend(TorchEagerBackend):
    """The eager backend, recording what the backbone and the ReferenceNet receive."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.backbone_calls: list[dict] = []
        self.reference_calls: list[torch.Tensor] = []

    def backbone(self, inputs):
        self.backbone_calls.append(dict(inputs.kwargs(), sample=inputs.sample.clone(),
                                        timestep=inputs.timestep.clone()))
        return super().backbone(inputs)

    def reference(self, latents):
        self.reference_calls.append(latents.clone())
        return super().reference(latents)


def run(model, portrait, pcm, blocks=None, backend=None, **options):
    backend = backend or TorchEagerBackend(model)
    session = Session(backend, model.config, *portrait, GenerationOptions(**{"steps": 1, **options}))
    frames = []
    for block in (blocks if blocks is not None else [pcm]):
        session.push_audio(block)
        frames.extend(session.frames())
    session.end()
    frames.extend(session.frames())
    return frames


def test_planner_cuts_by_frame_count_only():
    planner = ChunkPlanner(clip_frames=12, first_clip_frames=4, lookahead=2)
    assert planner.ready(5) == []
    assert planner.ready(6) == [Clip(0, 0, 4)]
    assert planner.ready(18) == [Clip(1, 4, 16)]
    assert planner.ready(20, total_frames=21) == [Clip(2, 16, 21)]
    assert planner.ready(21, total_frames=21) == []


def test_frame_count_times_and_shape(model, portrait):
    pcm = speech(1.23, noise=0.02)
    frames = run(model, portrait, pcm)
    assert len(frames) == math.ceil(1.23 * 25)
    assert [f.index for f in frames] == list(range(len(frames)))
    assert frames[-1].pts == pytest.approx((len(frames) - 1) / 25)
    assert frames[0].image.shape == (128, 128, 3) and frames[0].image.dtype == np.uint8


def test_same_frames_however_the_audio_arrives(model, portrait):
    pcm = speech(1.0, noise=0.02)
    whole = run(model, portrait, pcm, first_clip_frames=4)
    ten_ms = run(model, portrait, pcm, blocks=np.array_split(pcm, len(pcm) // 160), first_clip_frames=4)
    cuts = np.sort(np.random.RandomState(3).choice(len(pcm), 17, replace=False))
    random_blocks = run(model, portrait, pcm, blocks=np.split(pcm, cuts), first_clip_frames=4)
    assert len(whole) == len(ten_ms) == len(random_blocks) == 25
    for a, b, c in zip(whole, ten_ms, random_blocks):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.image, c.image)


def test_seed_decides_the_frames(model, portrait):
    pcm = speech(0.4, noise=0.02)
    a, b = run(model, portrait, pcm, seed=5), run(model, portrait, pcm, seed=5)
    c = run(model, portrait, pcm, seed=6)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert not all(np.array_equal(x.image, y.image) for x, y in zip(a, c))


def test_guidance_one_is_one_batch_per_step(model, portrait):
    pcm = speech(0.32, noise=0.02)
    plain = RecordingBackend(model)
    frames = run(model, portrait, pcm, backend=plain, steps=3)
    assert len(plain.backbone_calls) == 3 and all(c["sample"].shape[0] == 1 for c in plain.backbone_calls)
    guided = RecordingBackend(model)
    guided_frames = run(model, portrait, pcm, backend=guided, steps=3, cfg_audio=3.5, cfg_ref=2.0)
    assert len(guided.backbone_calls) == 3 and all(c["sample"].shape[0] == 3 for c in guided.backbone_calls)
    call = guided.backbone_calls[0]
    assert call["reference_keep"].tolist() == [True, True, False]
    assert call["audio_tokens"][0].abs().sum() > 0 and call["audio_tokens"][1:].abs().sum() == 0
    assert not all(np.array_equal(a.image, b.image) for a, b in zip(frames, guided_frames))


def test_next_clip_gets_the_last_latents_of_the_previous_clip(model, portrait):
    backend = RecordingBackend(model)
    session = Session(backend, model.config, *portrait, GenerationOptions(steps=1, first_clip_frames=4,
                                                                          motion_anchor=0.0))
    session.push_audio(speech(1.0, noise=0.02))
    session.end()
    clips = session.ready_clips()
    assert [c.frames for c in clips] == [4, 8, 8, 5]
    n = model.config.motion_frames
    first_motion = session.conditions(clips[0]).motion_features
    assert all(m.abs().max() == 0 for m in first_motion), "motion_init 'zeros' gives zero features"
    latents = session.denoise(clips[0])
    motion_input = backend.reference_calls[-1]
    torch.testing.assert_close(motion_input, latents[0].transpose(0, 1)[-n:], rtol=0, atol=0)
    expected = model.reference_net(motion_input).features
    session.denoise(clips[1])
    received = backend.backbone_calls[-1]["motion_features"]
    for got, want in zip(received, expected):
        torch.testing.assert_close(got[0], want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("anchor", [0.3, 1.0])
def test_the_drift_guard_pulls_the_motion_features_toward_the_references(model, portrait, anchor):
    backend = RecordingBackend(model)
    session = Session(backend, model.config, *portrait, GenerationOptions(steps=1, motion_anchor=anchor))
    session.push_audio(speech(1.0, noise=0.02))
    session.end()
    first, second = session.ready_clips()[:2]
    session.denoise(first)
    raw = model.reference_net(backend.reference_calls[-1]).features
    session.denoise(second)
    received = backend.backbone_calls[-1]["motion_features"]
    for got, own, ref in zip(received, raw, session.reference_features):
        torch.testing.assert_close(got[0], own + anchor * (ref.expand_as(own) - own), rtol=0, atol=1e-6)
        assert not torch.allclose(got[0], own, atol=1e-4)
    assert session.anchored == 2


def test_the_drift_guard_is_a_share_between_0_and_1_and_the_models_default():
    assert GenerationOptions().motion_anchor is None
    assert GenerationOptions().with_model_defaults(SamplingDefaults()).motion_anchor == 0.0
    assert GenerationOptions().with_model_defaults(SamplingDefaults(motion_anchor=0.5)).motion_anchor == 0.5
    resolved = GenerationOptions(motion_anchor=0.0).with_model_defaults(SamplingDefaults(motion_anchor=0.5))
    assert resolved.motion_anchor == 0
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="motion_anchor"):
            GenerationOptions(motion_anchor=bad)


def test_reference_motion_init_uses_the_reference_features(model, portrait):
    cfg = preset("tiny")
    cfg.motion_init = "reference"
    session = Session(TorchEagerBackend(model), cfg, *portrait, GenerationOptions(steps=1))
    session.push_audio(speech(0.2, noise=0.02))
    motion = session.conditions(Clip(0, 0, 1))
    for got, ref in zip(motion.motion_features, session.reference_features):
        torch.testing.assert_close(got[0], ref.expand_as(got[0]))


def test_reset_keeps_the_reference_and_restarts_frames(model, portrait):
    backend = RecordingBackend(model)
    session = Session(backend, model.config, *portrait, GenerationOptions(steps=1))
    session.push_audio(speech(0.4, noise=0.02))
    session.end()
    first = list(session.frames())
    calls = len(backend.reference_calls)
    session.reset()
    session.push_audio(speech(0.4, noise=0.02))
    session.end()
    again = list(session.frames())
    assert [f.index for f in again] == [f.index for f in first]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, again))
    assert len(backend.reference_calls) - calls == len({f.index // 8 for f in again}), "no new reference-image pass"


@pytest.mark.parametrize("mode", ["clip", "session"])
def test_session_noise_starts_every_clip_from_the_same_noise(model, portrait, mode):
    backend = RecordingBackend(model)
    session = Session(backend, model.config, *portrait, GenerationOptions(steps=2, sampler="lcm", noise=mode))
    session.push_audio(speech(1.0, noise=0.02))
    session.end()
    first, second = session.ready_clips()[:2]
    assert first.start != second.start and first.frames == second.frames
    (a, _), (b, _) = session.noise(first), session.noise(second)
    assert torch.equal(a, b) == (mode == "session")
    session.denoise(first)
    session.denoise(second)
    starts = [c["sample"] for c in backend.backbone_calls[::2]]
    renoised = [c["sample"] for c in backend.backbone_calls[1::2]]
    assert torch.equal(starts[0], starts[1]) == (mode == "session")
    assert not torch.equal(renoised[0], renoised[1]), "the clips' conditions differ, so their samples do"


def test_the_noise_mode_is_the_models_default_unless_given():
    assert GenerationOptions().with_model_defaults(SamplingDefaults()).noise == "clip"
    assert GenerationOptions().with_model_defaults(SamplingDefaults(noise="session")).noise == "session"
    assert GenerationOptions(noise="clip").with_model_defaults(SamplingDefaults(noise="session")).noise == "clip"
    with pytest.raises(ValueError, match="noise must be 'clip' or 'session'"):
        GenerationOptions(noise="frame")

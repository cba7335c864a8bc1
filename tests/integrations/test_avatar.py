"""The framework-free avatar stream: the agent's own audio comes back with the frames, on the session's timeline.

Tiny preset on a fake clock: 25 fps, clips of 8 frames (a first clip of 4), two frames of look-ahead. The
agent speaks at 24 kHz, so a frame carries 960 of its samples and the session's sample ``k`` (16 kHz) is the
agent's sample ``1.5 k``. Everything is asserted on frame indices and sample positions, never on wall time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.backends.torch_eager import TorchEagerBackend
from engine.config import preset
from engine.integrations.avatar import AvatarStream, open_live
from engine.options import GenerationOptions
from engine.stream.runner import LiveSession
from engine.stream.session import Session

RATE, FPS = 24000, 25
PER_FRAME = RATE // FPS


def agent_speech(seconds: float, seed: int = 0) -> np.ndarray:
    """int16 noise-modulated tone, the way a TTS hands it over (never zero, so every sample is traceable)."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * RATE)) / RATE
    wave = 0.3 * np.sin(2 * np.pi * 170 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(t.size)
    pcm = (wave * 32767).astype(np.int16)
    pcm[pcm == 0] = 1
    return pcm


def open_stream(model, portrait, clock) -> AvatarStream:
    options = GenerationOptions(steps=1, idle_steps=1, first_clip_frames=4)
    live = LiveSession(Session(TorchEagerBackend(model), model.config, *portrait, options), clock=clock,
                       always_on=True)
    return AvatarStream(live, RATE)


def take(stream: AvatarStream, n: int) -> list:
    frames = [stream.next_frame(timeout=30) for _ in range(n)]
    assert all(f is not None for f in frames)
    return frames


def push_in_blocks(stream: AvatarStream, pcm: np.ndarray, block: int = 480) -> None:
    """The way TTS frames arrive: 20 ms blocks, all at once."""
    for i in range(0, pcm.size, block):
        stream.push_audio(pcm[i:i + block])


def test_the_agents_audio_plays_bit_for_bit_from_the_frame_where_the_lips_start(model, portrait, clock):
    stream = open_stream(model, portrait, clock)
    pcm = agent_speech(0.8)
    try:
        clock.now += 1.0  # frames 0..24 are silence
        push_in_blocks(stream, pcm)  # speech on the timeline from 1.0 s: frames 25..44
        segment = stream.end_segment()
        clock.now += 1.3  # silence again from frame 45 to 57
        frames = take(stream, 48)  # clips up to [44,52) are in (look-ahead 2)
    finally:
        stream.close()
    assert segment == 0
    assert [f.frame.index for f in frames] == list(range(48))
    assert all(f.audio.dtype == np.int16 and f.audio.size == PER_FRAME for f in frames)
    played = np.concatenate([f.audio for f in frames])
    want = np.zeros_like(played)
    want[25 * PER_FRAME:25 * PER_FRAME + pcm.size] = pcm
    assert np.array_equal(played, want), "the agent's samples, unchanged, from the first frame of speech"
    assert [f.speech for f in frames] == [False] * 25 + [True] * 20 + [False] * 3
    assert [f.frame.index for f in frames if f.segments_done] == [44], "done with the frame of its last sample"
    assert frames[44].segments_done == (0,)
    assert not frames[24].frame.idle and not frames[45].frame.idle, "the lips move within the look-ahead"


def test_speech_that_runs_dry_resumes_where_the_session_put_it(model, portrait, clock):
    stream = open_stream(model, portrait, clock)
    first, second = agent_speech(0.4, seed=1), agent_speech(0.4, seed=2)
    try:
        clock.now += 0.4  # frames 0..9 silence
        push_in_blocks(stream, first)  # frames 10..19
        clock.now += 1.2  # the TTS stalls: silence from frame 20 to frame 40
        push_in_blocks(stream, second)  # resumes at the clock: 1.6 s, frame 40
        stream.end_segment()
        clock.now += 1.0  # the clock at frame 65: clips up to [52,60) are in
        frames = take(stream, 60)
    finally:
        stream.close()
    played = np.concatenate([f.audio for f in frames])
    speaking = np.flatnonzero(played)
    assert speaking[0] == 10 * PER_FRAME and np.array_equal(played[10 * PER_FRAME:][:first.size - 8], first[:-8])
    resumed = speaking[speaking > 20 * PER_FRAME][0]
    # The engine's resampler held back a few samples of the first part; they lead the second part by under 1 ms.
    assert 40 * PER_FRAME <= resumed <= 40 * PER_FRAME + 24
    assert np.array_equal(played[resumed:resumed + second.size], second)
    assert [f.frame.index for f in frames if f.segments_done] == [(resumed + second.size - 1) // PER_FRAME]


def test_barge_in_cuts_the_audio_at_the_same_frame_as_the_lips(model, portrait, clock):
    stream = open_stream(model, portrait, clock)
    pcm = agent_speech(2.0)
    try:
        clock.now += 1.0
        push_in_blocks(stream, pcm)  # a reply far ahead of the clock: frames 25..74
        stream.end_segment()
        push_in_blocks(stream, agent_speech(0.5, seed=3))  # and the next one queued behind it
        heard = take(stream, 30)
        cut = stream.interrupt()
        clock.now += 1.0
        after = take(stream, 12)
    finally:
        stream.close()
    assert cut.report.frame == 30 and cut.segments == (0, 1), "both replies were cut short"
    assert np.array_equal(np.concatenate([f.audio for f in heard])[25 * PER_FRAME:], pcm[:5 * PER_FRAME])
    assert [f.frame.index for f in after] == list(range(30, 42))
    assert not any(f.speech or f.audio.any() or f.segments_done for f in after)
    assert all(f.frame.idle for f in after)


def test_speech_after_a_barge_in_starts_a_new_segment_on_the_clock(model, portrait, clock):
    stream = open_stream(model, portrait, clock)
    try:
        clock.now += 1.0
        push_in_blocks(stream, agent_speech(2.0))
        take(stream, 26)
        stream.interrupt()  # cut at frame 26
        clock.now += 0.4  # the clock at frame 35
        reply = agent_speech(0.2, seed=4)
        push_in_blocks(stream, reply)
        assert stream.end_segment() == 1
        clock.now += 1.2  # the clock at frame 65: clips [26,30) [30,38) ... [54,62) are in
        frames = take(stream, 30)  # frames 26..55
    finally:
        stream.close()
    played = np.concatenate([f.audio for f in frames])
    assert np.flatnonzero(played)[0] == (35 - 26) * PER_FRAME
    assert np.array_equal(played[9 * PER_FRAME:9 * PER_FRAME + reply.size], reply)
    assert [f.segments_done for f in frames if f.segments_done] == [(1,)]


def test_an_avatar_needs_an_always_on_session_and_int16_audio(model, portrait, clock):
    live = LiveSession(Session(TorchEagerBackend(model), model.config, *portrait, GenerationOptions(steps=1)))
    try:
        with pytest.raises(ValueError, match="always-on"):
            AvatarStream(live, RATE)
    finally:
        live.close()
    stream = open_stream(model, portrait, clock)
    try:
        with pytest.raises(TypeError, match="int16"):
            stream.push_audio(np.zeros(480, np.float32))
        assert stream.end_segment() is None, "no speech, no segment"
    finally:
        stream.close()


def test_open_live_builds_an_always_on_session_from_a_photo_and_a_model_name():
    live = open_live(Path(__file__).parents[2] / "engine/assets/demo/portrait.png", "tiny",
                     options=GenerationOptions(steps=1))
    try:
        assert live.always_on and live.session.size == preset("tiny").resolution
        assert live.session.options.steps == 1
        backend = live.session.backend
        assert backend.name == "torchscript", "an always-on avatar runs a live process's CPU default"
        assert any(key[0] == "backbone" for key in backend.inner.trace_seconds), "traced before the first words"
    finally:
        live.close()

"""Always-on sessions and barge-in, on a fake clock: frame counts, indices, pts and idle marks, never wall time.

The tiny preset: 25 fps, clips of 8 frames (a first clip of 4 here), two frames of audio look-ahead, four
motion frames. A clip is released once the audio of its frames plus the look-ahead is in.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import SR, speech

from engine.backends.torch_eager import TorchEagerBackend
from engine.options import GenerationOptions
from engine.stream.chunk_planner import Clip
from engine.stream.idle import AudioTimeline, SpeechSpans
from engine.stream.runner import LagPolicy, LiveSession
from engine.stream.session import Session
from engine.stream.stats import StreamStats

FPS = 25
FRAME = SR // FPS  # samples per frame


class FakeClock:
    """Seconds that move only when the test says so."""

    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingBackend(TorchEagerBackend):
    """The eager backend, counting backbone calls."""

    def __init__(self, model):
        super().__init__(model)
        self.calls = 0

    def backbone(self, *args, **kwargs):
        self.calls += 1
        return super().backbone(*args, **kwargs)


def take(live: LiveSession, n: int) -> list:
    frames = [live.next_frame(timeout=120) for _ in range(n)]
    assert all(f is not None for f in frames)
    return frames


def options(**kw) -> GenerationOptions:
    return GenerationOptions(**{"steps": 2, "idle_steps": 1, "first_clip_frames": 4, **kw})


def test_idle_steps_must_be_a_step_count():
    with pytest.raises(ValueError, match="idle_steps"):
        GenerationOptions(idle_steps=0)


def test_the_timeline_releases_silence_on_the_clock_and_speech_after_what_is_queued():
    clock = FakeClock(10.0)
    timeline = AudioTimeline(clock, start=10.0)
    assert timeline.silence_due() == []
    clock.now = 10.5
    [silence] = timeline.silence_due()
    assert not silence.speech and silence.pcm.size == 8000 and not silence.pcm.any()
    blocks = timeline.push(np.ones(16000, np.float32))  # a TTS burst: a second of speech at once
    assert [(b.speech, b.pcm.size) for b in blocks] == [(True, 16000)]
    clock.now = 11.0
    assert timeline.silence_due() == [], "the clock is still inside the queued speech"
    clock.now = 12.0
    assert [b.pcm.size for b in timeline.silence_due()] == [8000]
    assert timeline.truncate(16000) == 8000 and timeline.samples == 16000
    assert [b.pcm.size for b in timeline.silence_due()] == [16000]


def test_speech_spans_count_drop_and_forget():
    spans = SpeechSpans()
    spans.add(0, 100)
    spans.add(100, 200)
    spans.add(300, 400)
    assert spans.count(50, 350) == 200
    assert spans.drop_from(150) == 150 and spans.count(0, 1000) == 150
    spans.forget_before(150)
    assert spans.count(0, 1000) == 0


def test_always_on_emits_idle_frames_on_the_clock_and_speech_joins_on_the_same_timeline(model, portrait):
    backend = CountingBackend(model)
    clock = FakeClock()
    live = LiveSession(Session(backend, model.config, *portrait, options()), clock=clock, always_on=True)
    try:
        clock.now += 1.0  # 25 frames of silence due: clips [0,4) [4,12) [12,20) are in (look-ahead 2)
        first = take(live, 20)
        clock.now += 0.32  # frame 33: clip [20,28) is in
        first += take(live, 8)
        live.push_audio(speech(0.64, hz=170))  # speech at the clock's sample, frames 33..48
        clock.now += 1.18  # 2.5 s: silence after the speech, up to frame 62
        later = take(live, 32)  # clips [28,36) [36,44) [44,52) [52,60)
    finally:
        live.close()
    frames = first + later
    assert [f.index for f in frames] == list(range(60))
    assert all(f.pts == f.index / FPS for f in frames)
    assert [f.idle for f in frames] == [True] * 28 + [False] * 24 + [True] * 8, \
        "clips are idle unless speech falls in their frames or look-ahead"
    assert backend.calls == 5 * 1 + 3 * 2, "idle clips ran 1 step, speech clips 2"
    summary = live.stats.summary()
    assert summary["frames_idle"] == 36 and summary["idle_steps"] == 1
    assert "| idle frames (from silence) | 36, 1 steps per clip |" in live.stats.table()

    offline = Session(TorchEagerBackend(model), model.config, *portrait, options())
    offline.push_audio(np.zeros(33 * FRAME, np.float32), speech=False)
    offline.push_audio(speech(0.64, hz=170))
    offline.push_audio(np.zeros(round(2.5 * SR) - 49 * FRAME, np.float32), speech=False)
    want = list(offline.frames())[:60]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(frames, want)), \
        "always-on frames are those of a session fed the same timeline"


def test_interrupt_drops_queued_speech_and_goes_on_idle_from_the_next_frame(model, portrait):
    clock = FakeClock()
    live = LiveSession(Session(TorchEagerBackend(model), model.config, *portrait, options(steps=1)),
                       clock=clock, always_on=True)
    try:
        clock.now += 1.0
        live.push_audio(speech(2.0, hz=170))  # a TTS burst: frames 25..74, far ahead of the clock
        heard = take(live, 30)  # frames 0..29: speech from frame 25 on is being shown
        report = live.interrupt()
        clock.now += 1.0  # the clock at frame 50: silence from the cut (frame 30) to frame 50
        after = take(live, 12)  # clips [30,34) [34,42); [42,50) would need audio to frame 52
    finally:
        live.close()
    assert [f.idle for f in heard] == [True] * 20 + [False] * 10
    assert report.frame == 30 and report.pts == 30 / FPS
    assert report.speech_samples == 2 * SR - 5 * FRAME and report.speech_s == pytest.approx(1.8)
    assert [f.index for f in after] == list(range(30, 42)), "frames go on from the cut without a gap"
    assert all(f.idle and f.pts == f.index / FPS and not f.skipped for f in after)
    summary = live.stats.summary()
    assert summary["interrupts"] == [{"frame": 30, "pts": 1.2, "speech_samples": 28800, "speech_s": 1.8}]
    assert "| interrupts (barge-in) | 1: 1.80 s of speech dropped," in live.stats.table()


def test_interrupt_needs_an_always_on_session(model, portrait):
    live = LiveSession(Session(TorchEagerBackend(model), model.config, *portrait, options()))
    try:
        with pytest.raises(RuntimeError, match="always-on"):
            live.interrupt()
    finally:
        live.close()


def test_a_rewind_keeps_the_motion_frames_of_the_frames_before_the_cut(model, portrait):
    """Cutting far behind the newest clip gives the motion frames and the frames of cutting at it."""
    pcm = speech(2.0, hz=170)

    def session() -> Session:
        s = Session(TorchEagerBackend(model), model.config, *portrait, options(steps=1, first_clip_frames=None))
        s.keep_for_rewind(40)
        return s

    near = session()
    near.push_audio(pcm[:18 * FRAME])  # clips [0,8) [8,16) only
    clips = near.ready_clips()
    assert clips == [Clip(0, 0, 8), Clip(1, 8, 16)]
    for clip in clips:
        near.step(clip)
    natural = [m.clone() for m in near._motions[-1]]
    assert near.interrupt(16) == 2 * FRAME
    assert all(torch.equal(a, b) for a, b in zip(natural, near._motions[-1])), "the rewound motion is the natural one"

    far = session()
    far.push_audio(pcm)
    clips = far.ready_clips()
    assert clips[-1].end > 40
    for clip in clips:
        far.step(clip)
    assert far.interrupt(16) == pcm.size - 16 * FRAME
    for s in (near, far):
        s.push_audio(np.zeros(24 * FRAME, np.float32), speech=False)  # to frame 40: clips [16,24) [24,32)
    got, want = list(far.frames()), list(near.frames())
    assert [f.index for f in got] == [f.index for f in want] == list(range(16, 32))
    assert all(f.idle for f in got) and all(np.array_equal(a.image, b.image) for a, b in zip(got, want))


def test_a_cut_beyond_the_kept_frames_is_refused(model, portrait):
    s = Session(TorchEagerBackend(model), model.config, *portrait, options(steps=1, first_clip_frames=None))
    s.keep_for_rewind(8)
    s.push_audio(speech(2.0, hz=170))
    for clip in s.ready_clips():
        s.step(clip)
    with pytest.raises(RuntimeError, match="not kept"):
        s.interrupt(8)


def test_stats_forget_the_audio_past_a_cut():
    clock = FakeClock(0.0)
    stats = StreamStats(FPS, clock)
    for t, n in [(0.0, 640), (1.0, 640), (2.0, 640)]:
        clock.now = t
        stats.audio_in(n)
    stats.audio_truncated(1000)
    assert stats.samples_in == 1000 and stats.audio_arrival(1000) == 1.0
    clock.now = 5.0
    stats.audio_in(280)
    assert stats.samples_in == 1280 and stats.audio_arrival(1001) == 5.0


def test_the_lag_policy_is_in_the_table(model, portrait):
    live = LiveSession(Session(TorchEagerBackend(model), model.config, *portrait, options()), LagPolicy("skip", 0.5))
    live.close()
    assert live.stats.summary()["lag_policy"] == {"kind": "skip", "max_lag_s": 0.5}
    assert "| lag policy | skip past 0.5 s of lag |" in live.stats.table()

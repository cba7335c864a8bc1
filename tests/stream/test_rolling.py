"""Rolling (diagonal) schedule: equal to clip-wise where it must be, timesteps as planned, chunking-free."""

from __future__ import annotations

import numpy as np
from support import speech

from engine.backends.torch_eager import TorchEagerBackend
from engine.options import GenerationOptions
from engine.sampling.samplers import make_sampler
from engine.sampling.schedules import NoiseSchedule
from engine.stream.runner import LiveSession
from engine.stream.session import Session


class RecordingBackend(TorchEagerBackend):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.timesteps = []

    def backbone(self, inputs):
        self.timesteps.append(inputs.timestep.clone())
        return super().backbone(inputs)


def run(model, portrait, pcm, blocks=None, backend=None, **options):
    session = Session(backend or TorchEagerBackend(model), model.config, *portrait, GenerationOptions(**options))
    frames = []
    for block in blocks if blocks is not None else [pcm]:
        session.push_audio(block)
        frames += session.frames()
    session.end()
    frames += session.frames()
    return frames


def same(a, b) -> bool:
    return len(a) == len(b) and all(x.index == y.index and np.array_equal(x.image, y.image) for x, y in zip(a, b))


def test_one_step_rolling_equals_clipwise(model, portrait):
    pcm = speech(0.8, hz=150, syllable_hz=2.5)
    rolling = run(model, portrait, pcm, steps=1, schedule="rolling", group_frames=4)
    clipwise = run(model, portrait, pcm, steps=1, schedule="clip", clip_frames=4)
    assert len(rolling) == 20 and same(rolling, clipwise)


def test_timesteps_reach_the_backbone_staggered(model, portrait):
    backend = RecordingBackend(model)
    frames = run(model, portrait, speech(0.64, hz=150, syllable_hz=2.5), backend=backend, steps=4, schedule="rolling",
                 group_frames=2)
    assert len(frames) == 16
    ts = NoiseSchedule.from_dict(model.config.scheduler)
    t = make_sampler("ddim", ts).timesteps(4).tolist()
    groups = 8
    assert len(backend.timesteps) == groups + 4 - 1, "one call per group, plus S - 1 to empty the window"
    assert backend.timesteps[0].tolist() == [[t[0]] * 2]
    assert backend.timesteps[1].tolist() == [[t[1]] * 2 + [t[0]] * 2]
    assert backend.timesteps[3].tolist() == [[t[3]] * 2 + [t[2]] * 2 + [t[1]] * 2 + [t[0]] * 2]
    assert backend.timesteps[-1].tolist() == [[t[3]] * 2]


def test_rolling_is_independent_of_audio_blocks(model, portrait):
    pcm = speech(0.8, hz=150, syllable_hz=2.5)
    whole = run(model, portrait, pcm, steps=3, schedule="rolling", group_frames=2)
    ten_ms = run(model, portrait, pcm, blocks=np.array_split(pcm, len(pcm) // 160), steps=3, schedule="rolling",
                 group_frames=2)
    cuts = np.sort(np.random.RandomState(5).choice(len(pcm), 11, replace=False))
    random_blocks = run(model, portrait, pcm, blocks=np.split(pcm, cuts), steps=3, schedule="rolling", group_frames=2)
    assert len(whole) == 20 and same(whole, ten_ms) and same(whole, random_blocks)


def test_rolling_through_the_live_session(model, portrait):
    pcm = speech(0.6, hz=150, syllable_hz=2.5)
    want = run(model, portrait, pcm, steps=2, schedule="rolling", group_frames=1)
    live = LiveSession(Session(TorchEagerBackend(model), model.config, *portrait,
                               GenerationOptions(steps=2, schedule="rolling", group_frames=1)))
    for block in np.array_split(pcm, 30):
        live.push_audio(block)
    live.end()
    assert same(list(live), want)


def test_rolling_latency_floors_count_the_whole_window(model, portrait):
    fps = model.config.fps
    clip = LiveSession(Session(TorchEagerBackend(model), model.config, *portrait,
                               GenerationOptions(steps=4, clip_frames=2, first_clip_frames=2)))
    rolling = LiveSession(Session(TorchEagerBackend(model), model.config, *portrait,
                                  GenerationOptions(steps=4, schedule="rolling", group_frames=2)))
    try:
        lookahead = model.config.audio.window
        assert clip.stats.latency_floor_s == (2 - 1 + lookahead) / fps
        assert rolling.stats.latency_floor_s == (4 * 2 - 1 + lookahead) / fps
        assert rolling.stats.ttff_floor_s == (4 * 2 + lookahead) / fps
    finally:  # their stage threads wait for audio until closed
        clip.close()
        rolling.close()

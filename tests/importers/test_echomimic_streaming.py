"""Streaming an imported EchoMimic model: the causal form of its overlapping context windows.

Offline, EchoMimic denoises the whole video at once in 12-frame windows overlapping by 3 (wrapping round,
rotated 2 frames a step) and averages each frame's prediction over its windows. A stream cannot see the
whole video: its windows follow one another, each overlapping the previous by 3 frames whose predictions
are averaged with that window's at every step, and those 3 frames are held back until the next window has
added its own. Here the stream is compared with offline windows on the stream's own noise and audio tokens.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from support import speech
from tiny_sources import FIXTURES

from engine.backends import make_backend
from engine.options import GenerationOptions
from engine.pipeline import open_model, reproduction_note
from engine.sampling.clip_denoiser import ClipConditions
from engine.sampling.samplers import sample
from engine.stream.runner import LiveSession
from engine.stream.session import Session

WINDOW, OVERLAP = 12, 3
SECONDS = 1.0
"""24 frames at 24 fps: windows 0-11, 9-20, 18-23."""
CAUSAL_BOUND = 0.3
"""Largest difference allowed between the stream and the same windows run jointly over the whole video
(no wrap-round, no rotation) after 2 steps, relative to the joint run's largest latent. The stream's earlier
window denoised the frames it shares with the next on its own, not on the averaged trajectory; on the tiny
tree's random weights that costs 0.17 of the magnitude (0.21 at 4 steps), where independent 12-frame clips on
the same noise are 0.68 away (0.73)."""


@dataclasses.dataclass
class Streamed:
    """What a stream made: the finished pieces in order, and per window the noise, audio tokens and frames it
    shared with the window before."""

    session: Session
    pieces: list[tuple[int, int, torch.Tensor]]
    windows: list[tuple[torch.Tensor, ClipConditions, int]]

    @property
    def latents(self) -> torch.Tensor:
        """``[1, C, F, h, w]``: the pieces joined (they must follow one another)."""
        assert [start for start, _, _ in self.pieces] == [0] + [end for _, end, _ in self.pieces[:-1]]
        return torch.cat([latents for _, _, latents in self.pieces], dim=2)

    def inputs(self) -> tuple[torch.Tensor, ClipConditions]:
        """The whole video's noise ``[1, C, F, h, w]`` and conditions, as the windows read them."""
        noise, tokens, end = {}, {}, 0
        for window_noise, cond, shared in self.windows:
            start = end - shared
            for i in range(window_noise.shape[2]):
                noise[start + i], tokens[start + i] = window_noise[:, :, i], cond.audio_tokens[:, i]
            end = start + window_noise.shape[2]
        cond = dataclasses.replace(self.windows[0][1], audio_tokens=torch.stack([tokens[f] for f in range(end)], 1))
        return torch.stack([noise[f] for f in range(end)], 2), cond


@pytest.fixture(scope="module")
def oracle() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURES / "echomimic_pipeline" / "oracle.npz"))


def stream(model_dir: Path, oracle: dict[str, np.ndarray], steps: int, seconds: float = SECONDS) -> Streamed:
    """Stream ``seconds`` of speech in 100 ms blocks through a session of the imported model."""
    model = open_model(str(model_dir))
    backend = make_backend("torch", model, "cpu", torch.float32)
    session = Session(backend, model.config, oracle["portrait"], oracle["face_mask"], GenerationOptions(steps=steps))
    windows = []
    overlapping = session.denoiser.overlapping

    def recorded(noise, cond, earlier, **kwargs):
        windows.append((noise, cond, 0 if earlier is None else earlier.frames))
        return overlapping(noise, cond, earlier, **kwargs)

    session.denoiser.overlapping = recorded
    pcm = speech(seconds, hz=160, syllable_hz=4)
    finished = []
    with torch.no_grad():
        for start in range(0, pcm.size, 1600):
            session.push_audio(pcm[start:start + 1600])
            for clip in session.ready_clips():
                finished += session.step(clip)
        session.end()
        for clip in session.ready_clips():
            finished += session.step(clip)
        finished += session.flush()
    return Streamed(session, [(clip.start, clip.end, latents) for clip, latents in finished], windows)


def joint(streamed: Streamed, steps: int) -> torch.Tensor:
    """The stream's windows run jointly over the whole video (every window at every step, predictions
    averaged), on the stream's noise and conditions."""
    noise, cond = streamed.inputs()
    frames = noise.shape[2]
    windows = [list(range(a, min(a + WINDOW, frames))) for a in range(0, frames - OVERLAP, WINDOW - OVERLAP)]
    denoiser = streamed.session.denoiser
    return sample(lambda x, t: denoiser.windowed_output(x, t, cond, windows), denoiser.sampler, noise, steps,
                  per_frame=True)


def rel(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


def test_windows_overlap_and_hold_their_last_frames_back(echomimic_model, oracle):
    """Windows of 12 frames, 9 new each; a window's last 3 frames come out only after the next window (or at
    the end); every frame comes out once, in order."""
    streamed = stream(echomimic_model, oracle, steps=1)
    assert [(n.shape[2], shared) for n, _, shared in streamed.windows] == [(12, 0), (12, 3), (6, 3)]
    assert [(start, end) for start, end, _ in streamed.pieces] == [(0, 9), (9, 18), (18, 21), (21, 24)]
    assert streamed.latents.shape[2] == 24


def test_one_step_stream_is_echomimics_offline_windows(echomimic_model, oracle):
    """At one step every window reads the same noise, so averaging in turn is averaging at once: the stream
    equals the joint windows, and equals EchoMimic's offline windows on every frame its wrap-round window
    (18-23 and 0-5 at 24 frames) does not hold. Fails where the frames at a seam are not averaged."""
    streamed = stream(echomimic_model, oracle, steps=1)
    noise, cond = streamed.inputs()
    with torch.no_grad():
        offline = streamed.session.denoiser.windowed(noise, cond, WINDOW, OVERLAP, steps=1)
        together = joint(streamed, steps=1)
    latents = streamed.latents
    assert rel(latents, together) <= 1e-5
    assert rel(latents[:, :, 6:18], offline[:, :, 6:18]) <= 1e-5


def test_stream_approximates_joint_windows_within_the_bound(echomimic_model, oracle):
    """At 2 steps the stream stays within ``CAUSAL_BOUND`` of the joint windows; independent 12-frame clips on
    the same noise do not."""
    steps = 2
    streamed = stream(echomimic_model, oracle, steps=steps)
    noise, cond = streamed.inputs()
    denoiser = streamed.session.denoiser
    with torch.no_grad():
        together = joint(streamed, steps)
        clips = torch.cat([denoiser(noise[:, :, a:a + WINDOW], dataclasses.replace(
            cond, audio_tokens=cond.audio_tokens[:, a:a + WINDOW]), steps=steps) for a in (0, WINDOW)], dim=2)
    assert rel(streamed.latents, together) <= CAUSAL_BOUND < rel(clips, together)


def test_stream_note_gives_the_latency_of_the_held_frames(echomimic_model):
    """``emote stream``'s note: the causal windows and what holding 3 frames back costs at 24 fps."""
    config = open_model(str(echomimic_model)).config
    note = reproduction_note(config, GenerationOptions(), offline=False)
    assert "12-frame context windows overlapping by 3 as a causal chain" in note
    assert "3 frames held back for the next window: +125 ms latency" in note
    offline = reproduction_note(config, GenerationOptions(), offline=True)
    assert "causal" not in offline and "12-frame context windows overlapping by 3, predictions averaged" in offline


def test_held_frames_come_out_as_they_are_when_no_window_can_average_them(echomimic_model, oracle):
    """A skipped clip (the "skip" lag policy) or a window of another step count (an idle clip, the "fewer
    steps" policy) cannot share the held frames: they come out first, as their window left them."""
    model = open_model(str(echomimic_model))
    backend = make_backend("torch", model, "cpu", torch.float32)
    session = Session(backend, model.config, oracle["portrait"], oracle["face_mask"], GenerationOptions(steps=1))
    session.push_audio(speech(1.5, hz=160, syllable_hz=4))
    session.end()
    first, second, third, fourth = session.ready_clips()
    with torch.no_grad():
        alone_first = session.denoiser(session.noise(first)[0], session.conditions(first))
        ((done, latents),) = session.step(first)
        ((skipped, held),) = session.skip(second)
        nothing_held = session.skip(second)
        ((alone, _),) = session.step(third)
        (fewer, fewer_held), (last, _) = session.step(fourth, steps=2)
        flushed = session.flush()
    assert [(c.start, c.end) for c in (done, skipped, alone, fewer, last)] == [(0, 9), (9, 12), (21, 27), (27, 30),
                                                                               (30, 33)]
    assert torch.allclose(torch.cat([latents, held], dim=2), alone_first, rtol=0, atol=1e-6)
    assert nothing_held == [] and [(c.start, c.end) for c, _ in flushed] == [(33, 36)]
    assert fewer_held.shape[2] == 3


@pytest.mark.parametrize("first, ttff_frames", [(None, 12 + 2), (2, 2 + 9 + 2)])
def test_latency_floors_count_the_held_frames(echomimic_model, oracle, first, ttff_frames):
    """A window's first new frame waits for its 9 new frames, a held frame for 3 more: the latency floor is a
    12-frame clip's plus the 2-frame look-ahead, not a 9-frame one's. A first clip of 2 frames is all held:
    frame 0 comes out with the second window."""
    model = open_model(str(echomimic_model))
    session = Session(make_backend("torch", model, "cpu", torch.float32), model.config, oracle["portrait"],
                      oracle["face_mask"], GenerationOptions(steps=1, first_clip_frames=first))
    live = LiveSession(session)
    try:
        assert (session.planner.clip_frames, session.held_frames, session.planner.lookahead) == (9, 3, 2)
        assert live.stats.latency_floor_s == pytest.approx((12 - 1 + 2) / 24)
        assert live.stats.ttff_floor_s == pytest.approx(ttff_frames / 24)
    finally:
        live.close()

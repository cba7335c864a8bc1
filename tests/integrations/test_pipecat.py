"""Pipecat end to end, run locally: a pipeline (PipelineWorker + WorkerRunner, no transport) of a stand-in TTS
service speaking with espeak-ng, the avatar processor, and a recorder of what would reach the output transport.

The session runs on the real clock (a pipeline is live), so where the speech lands depends on when it was
spoken: the assertions are relative to the first frame that carries speech, on frame indices, pts and samples.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import numpy as np
import pytest

pytest.importorskip("pipecat", reason="needs pipecat-ai (pip install emote-engine[agents])")

from pipecat.frames.frames import (  # noqa: E402
    EndFrame,
    Frame,
    OutputImageRawFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.services.settings import TTSSettings  # noqa: E402
from pipecat.services.tts_service import TTSService  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from engine.backends.torch_eager import TorchEagerBackend  # noqa: E402
from engine.integrations.pipecat import INTERRUPTIONS, EmoteAvatarProcessor  # noqa: E402
from engine.options import GenerationOptions  # noqa: E402
from engine.stream.runner import LiveSession  # noqa: E402
from engine.stream.session import Session  # noqa: E402
from engine.synthetic.speech import synthesize  # noqa: E402

RATE, FPS = 24000, 25
PER_FRAME = RATE // FPS
TEXT = "Hello, I am the avatar."


def espeak_pcm(text: str) -> np.ndarray:
    """espeak-ng's speech of ``text`` at 24 kHz, int16 (the same call gives the same samples)."""
    return (synthesize(text, sample_rate=RATE).pcm * 32767).astype(np.int16)


class EspeakTTS(TTSService):
    """A stand-in TTS service: espeak-ng through the engine's binding, in 20 ms frames, all at once."""

    def __init__(self) -> None:
        super().__init__(push_start_frame=True, push_stop_frames=True, stop_frame_timeout_s=0.2,
                         sample_rate=RATE, settings=TTSSettings(model=None, voice=None, language=None))

    def can_generate_metrics(self) -> bool:
        return False

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        pcm = espeak_pcm(text)
        for i in range(0, pcm.size, 480):
            yield TTSAudioRawFrame(pcm[i:i + 480].tobytes(), RATE, 1, context_id=context_id)


class Recorder(FrameProcessor):
    """Keeps every frame that goes downstream past the avatar: what the output transport would get."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []
        self.changed = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            self.frames.append(frame)
            self.changed.set()
        await self.push_frame(frame, direction)

    def images(self) -> list[OutputImageRawFrame]:
        return [f for f in self.frames if isinstance(f, OutputImageRawFrame)]

    async def wait_for(self, condition, timeout: float = 90.0) -> None:
        async def poll() -> None:
            while not condition():
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(poll(), timeout)


def open_live(model, portrait) -> LiveSession:
    options = GenerationOptions(steps=1, idle_steps=1, first_clip_frames=4)
    return LiveSession(Session(TorchEagerBackend(model), model.config, *portrait, options), always_on=True)


async def run_pipeline(model, portrait, script) -> tuple[Recorder, EmoteAvatarProcessor]:
    avatar = EmoteAvatarProcessor(lambda: open_live(model, portrait), sample_rate=RATE)
    recorder = Recorder()
    worker = PipelineWorker(Pipeline([EspeakTTS(), avatar, recorder]),
                            params=PipelineParams(audio_out_sample_rate=RATE), enable_rtvi=False)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    try:
        await script(worker, recorder)
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(running, 60)
    finally:
        if not running.done():
            await worker.cancel()
    return recorder, avatar


def test_a_pipeline_speaks_through_the_avatar_with_the_audio_in_step(model, portrait):
    async def script(worker: PipelineWorker, recorder: Recorder) -> None:
        await recorder.wait_for(lambda: len(recorder.images()) >= 5)  # idle frames before anyone speaks
        await worker.queue_frame(TTSSpeakFrame(TEXT))
        await recorder.wait_for(lambda: any(isinstance(f, TTSStoppedFrame) for f in recorder.frames))
        stopped = len(recorder.images())
        await recorder.wait_for(lambda: len(recorder.images()) >= stopped + 5)

    recorder, _ = asyncio.run(run_pipeline(model, portrait, script))
    frames = [f for f in recorder.frames if isinstance(f, (OutputImageRawFrame, TTSAudioRawFrame, TTSStoppedFrame))]
    images = [f for f in frames if isinstance(f, OutputImageRawFrame)]
    size = model.config.resolution
    assert all(f.size == (size, size) and f.format == "RGB" and len(f.image) == size * size * 3 for f in images)
    assert all(f.sync_with_audio for f in images), "the transport shows each image after the audio before it"
    assert [f.pts for f in images] == [round(i / FPS * 1e9) for i in range(len(images))], "one image per frame"
    audio = [f for f in frames if isinstance(f, TTSAudioRawFrame)]
    for i, f in enumerate(frames):
        if isinstance(f, TTSAudioRawFrame):
            assert isinstance(frames[i - 1], OutputImageRawFrame) and frames[i - 1].pts == f.pts, \
                "each audio frame follows the image it plays with"
            assert f.sample_rate == RATE and len(f.audio) == 2 * PER_FRAME
    first = round(audio[0].pts * FPS / 1e9)
    played = np.concatenate([np.frombuffer(f.audio, np.int16) for f in audio])
    pcm = espeak_pcm(TEXT)
    start = np.flatnonzero(played)[0] - np.flatnonzero(pcm)[0]  # espeak-ng starts with a little silence
    assert 0 <= start < PER_FRAME and played.size == len(audio) * PER_FRAME, "it starts in the first frame"
    assert np.array_equal(played[start:start + pcm.size], pcm), "espeak-ng's samples, unchanged and unbroken"
    assert len(audio) == -(-(start + pcm.size) // PER_FRAME), "speech frames exactly cover the speech"
    assert [round(f.pts * FPS / 1e9) for f in audio] == list(range(first, first + len(audio)))
    [stop] = [i for i, f in enumerate(frames) if isinstance(f, TTSStoppedFrame)]
    last = frames.index(audio[-1])
    # The stop comes right after the audio of the reply's last frame, or, when the TTS ended the reply only after
    # that frame had gone out, with the next frames out (a clip of them comes at once: 8 in the tiny preset).
    assert last < stop and stop - last <= 1 + 8, "the reply's stop comes with the audio of its last frame"
    assert first >= 5 and len(images) >= first + len(audio) + 5


def test_an_interruption_frame_is_a_barge_in(model, portrait):
    async def script(worker: PipelineWorker, recorder: Recorder) -> None:
        await recorder.wait_for(lambda: len(recorder.images()) >= 3)
        await worker.queue_frame(TTSSpeakFrame(TEXT + " " + TEXT + " " + TEXT))
        await recorder.wait_for(lambda: sum(isinstance(f, TTSAudioRawFrame) for f in recorder.frames) >= 5)
        await worker.queue_frame(INTERRUPTIONS[0]())
        interrupted = len(recorder.images())
        await recorder.wait_for(lambda: len(recorder.images()) >= interrupted + 12)

    recorder, avatar = asyncio.run(run_pipeline(model, portrait, script))
    [cut] = avatar.interruptions
    images = recorder.images()
    after = [f for f in recorder.frames
             if isinstance(f, (OutputImageRawFrame, TTSAudioRawFrame)) and f.pts >= round(cut.report.pts * 1e9)]
    assert cut.report.speech_s > 1.0 and cut.segments, "most of the reply was dropped, unplayed"
    assert after and all(isinstance(f, OutputImageRawFrame) for f in after), "no audio from the cut on"
    assert [f.pts for f in images] == [round(i / FPS * 1e9) for i in range(len(images))], "no gap at the cut"
    assert any(isinstance(f, INTERRUPTIONS) for f in recorder.frames), "the interruption goes on to the transport"
    interruption = next(i for i, f in enumerate(recorder.frames) if isinstance(f, INTERRUPTIONS))
    assert not any(isinstance(f, TTSStoppedFrame) for f in recorder.frames[:interruption]), "the reply never finished"

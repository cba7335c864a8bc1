"""Pipecat: the engine as a frame processor that turns a pipeline's TTS audio into the avatar's video
(``pip install emote-engine[agents]``).

:class:`EmoteAvatarProcessor` goes after the TTS service, before the output transport. It consumes
``TTSAudioRawFrame`` (16-bit PCM at ``sample_rate``; not passed on as is) and, for every video frame of an
always-on live session, pushes an ``OutputImageRawFrame`` (RGB, the session's size; ``pts`` = the frame's
presentation time on the session's timeline, nanoseconds) followed by the ``TTSAudioRawFrame`` of the agent's
audio that plays during it (only while the agent speaks). The image is marked ``sync_with_audio``, so Pipecat's
output transport shows it only once the audio before it has been played: the audio is the clock, and the lips
stay in step with it. The ``TTSStoppedFrame`` of a reply is held back and pushed right after the audio of its
last frame. Pipecat's interruption frames (``InterruptionFrame``, and ``StartInterruptionFrame`` in versions
that have it) are the barge-in (:meth:`engine.integrations.avatar.AvatarStream.interrupt`): the speech not yet
shown is dropped and the face goes back to idle from the next frame; the interruption frame itself is passed on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
from pipecat.frames import frames as pipecat_frames
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    OutputImageRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from engine.integrations.avatar import AvatarFrame, AvatarInterruption, AvatarStream
from engine.stream.runner import LiveSession

DEFAULT_SAMPLE_RATE = 24000
"""The TTS audio rate the processor expects by default, Hz (Pipecat's common output rate)."""
INTERRUPTIONS: tuple[type, ...] = tuple(
    getattr(pipecat_frames, name) for name in ("InterruptionFrame", "StartInterruptionFrame")
    if hasattr(pipecat_frames, name))
"""The installed Pipecat's interruption frame classes (the name changed between versions)."""


def _mono_int16(frame: TTSAudioRawFrame) -> np.ndarray:
    pcm = np.frombuffer(frame.audio, dtype=np.int16)
    if frame.num_channels == 1:
        return pcm
    return pcm.reshape(-1, frame.num_channels).mean(axis=1).round().astype(np.int16)


class EmoteAvatarProcessor(FrameProcessor):
    """A Pipecat frame processor: TTS audio in, avatar video with the same audio in step out (see the module).

    ``open_live`` builds the always-on :class:`LiveSession` (blocking; it runs in a worker thread when the
    pipeline starts); ``sample_rate``: Hz of the TTS audio (the pipeline's output rate).
    """

    def __init__(self, open_live: Callable[[], LiveSession], *, sample_rate: int = DEFAULT_SAMPLE_RATE,
                 **kwargs: object):
        super().__init__(**kwargs)
        self._open_live, self.sample_rate = open_live, sample_rate
        self.stream: AvatarStream | None = None
        self.interruptions: list[AvatarInterruption] = []
        """Every barge-in so far: the session's report and the replies cut short."""
        self._stops: dict[int, TTSStoppedFrame] = {}
        self._pump: asyncio.Task | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Route one frame: TTS audio and its stop go to the avatar, interruptions cut it, the rest passes."""
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            await self._start()
        elif isinstance(frame, TTSAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            if frame.sample_rate != self.sample_rate:
                await self.push_error(error_msg=f"TTS audio at {frame.sample_rate} Hz, the avatar expects "
                                                f"{self.sample_rate} Hz (set the pipeline's audio_out_sample_rate)")
                return
            self.stream.push_audio(_mono_int16(frame))
        elif isinstance(frame, TTSStoppedFrame) and direction == FrameDirection.DOWNSTREAM:
            segment = self.stream.end_segment()
            if segment is None:
                await self.push_frame(frame, direction)
            else:
                self._stops[segment] = frame
        elif isinstance(frame, INTERRUPTIONS):
            cut = self.stream.interrupt()
            self.interruptions.append(cut)
            for segment in cut.segments:
                self._stops.pop(segment, None)
            await self.push_frame(frame, direction)
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await self._stop()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def _start(self) -> None:
        live = await asyncio.get_running_loop().run_in_executor(None, self._open_live)
        self.stream = AvatarStream(live, self.sample_rate)
        self._pump = self.create_task(self._push_frames())

    async def _stop(self) -> None:
        if self._pump is not None:
            await self.cancel_task(self._pump)
            self._pump = None
        if self.stream is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.stream.close)

    async def cleanup(self) -> None:
        """Stop the live session when the pipeline is torn down."""
        await self._stop()
        await super().cleanup()

    def _as_pipecat(self, item: AvatarFrame) -> list[Frame]:
        frame = item.frame
        image = OutputImageRawFrame(np.ascontiguousarray(frame.image).tobytes(),
                                    (frame.image.shape[1], frame.image.shape[0]), "RGB")
        image.sync_with_audio = True
        image.pts = round(frame.pts * 1e9)
        out: list[Frame] = [image]
        if item.speech:
            audio = TTSAudioRawFrame(item.audio.tobytes(), self.sample_rate, 1)
            audio.pts = image.pts
            out.append(audio)
        out.extend(self._stops.pop(segment) for segment in item.segments_done if segment in self._stops)
        return out

    async def _push_frames(self) -> None:
        async for item in self.stream.frames():
            for out in self._as_pipecat(item):
                await self.push_frame(out)

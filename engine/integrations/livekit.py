"""LiveKit Agents: the engine as the avatar of a LiveKit voice agent (``pip install emote-engine[agents]``).

Built on ``livekit.agents.voice.avatar``, the way LiveKit's own avatar plugins are:

- :class:`EmoteVideoGenerator` is a ``VideoGenerator``: ``push_audio`` takes the agent's ``rtc.AudioFrame``
  (16-bit, at the avatar's sample rate) and ``AudioSegmentEnd`` (the end of a reply); iterating it yields, per
  video frame, an ``rtc.VideoFrame`` (RGB24, the session's size), then the ``rtc.AudioFrame`` of the agent's
  audio that plays during that frame (only while the agent speaks), then an ``AudioSegmentEnd`` for each
  reply whose last sample that frame played. ``clear_buffer`` is the barge-in
  (:meth:`engine.integrations.avatar.AvatarStream.interrupt`): the speech not yet shown is dropped, and the
  face is back on idle motion from the first frame not yet yielded. An ``AvatarRunner`` publishes the
  frames through its audio/video synchroniser.
- :class:`EmoteAvatarSession` is the agent-side helper: ``await avatar.start(agent_session, room)`` builds the
  live session, runs the generator in an ``AvatarRunner`` inside the agent's own process (the avatar
  publishes as the agent's participant), and routes the agent's audio to it through a ``QueueAudioOutput``.
- :class:`EmoteAvatarWorkerSession` runs the avatar in a process of its own instead (the model's CPU or GPU
  time then stays out of the agent's event loop): ``start()`` mints a LiveKit token for the avatar's
  participant (allowed to publish on the agent's behalf), launches ``python -m engine.integrations.livekit``
  (:func:`main`: it joins the room, receives the agent's audio over LiveKit data streams with a
  ``DataStreamAudioReceiver`` and runs the same generator in an ``AvatarRunner``), and sends the agent's
  audio there with a ``DataStreamAudioOutput``.

The session must be always-on: frames keep coming at the stream's fps while the agent is silent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
from livekit import api, rtc
from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF
from livekit.agents.voice.avatar import (
    AudioSegmentEnd,
    AvatarOptions,
    AvatarRunner,
    DataStreamAudioOutput,
    DataStreamAudioReceiver,
    QueueAudioOutput,
    VideoGenerator,
)
from livekit.agents.voice.avatar import AvatarSession as _AvatarSession

from engine import DEFAULT_MODEL
from engine.integrations.avatar import AvatarFrame, AvatarInterruption, AvatarStream, open_live
from engine.stream.runner import LiveSession

DEFAULT_SAMPLE_RATE = 24000
"""The agent's audio rate the helper asks LiveKit for, Hz (LiveKit resamples the TTS to it)."""
TOKEN_ENV = "EMOTE_LIVEKIT_TOKEN"
"""The environment variable that hands the avatar worker its LiveKit token (never on its command line)."""


def _mono_int16(frame: rtc.AudioFrame) -> np.ndarray:
    """An ``rtc.AudioFrame``'s samples as int16 [n], channels averaged."""
    pcm = np.frombuffer(frame.data, dtype=np.int16)
    if frame.num_channels == 1:
        return pcm
    return pcm.reshape(-1, frame.num_channels).mean(axis=1).round().astype(np.int16)


class EmoteVideoGenerator(VideoGenerator):
    """LiveKit's ``VideoGenerator`` over an :class:`AvatarStream` (see the module's docstring)."""

    def __init__(self, stream: AvatarStream):
        self.stream = stream
        self.interruptions: list[AvatarInterruption] = []
        """Every barge-in so far: the session's report and the replies cut short."""

    @property
    def options(self) -> AvatarOptions:
        """What an ``AvatarRunner`` publishes: the session's square frame size and fps, mono audio at the
        stream's rate."""
        size = self.stream.live.session.size
        return AvatarOptions(video_width=size, video_height=size, video_fps=self.stream.fps,
                             audio_sample_rate=self.stream.sample_rate, audio_channels=1)

    async def push_audio(self, frame: rtc.AudioFrame | AudioSegmentEnd) -> None:
        """The agent's next audio frame (at the stream's rate; any channel count), or the end of its reply."""
        if isinstance(frame, AudioSegmentEnd):
            self.stream.end_segment()
            return
        if frame.sample_rate != self.stream.sample_rate:
            raise ValueError(f"agent audio at {frame.sample_rate} Hz, the avatar expects {self.stream.sample_rate} Hz "
                             "(give the QueueAudioOutput that sample_rate)")
        self.stream.push_audio(_mono_int16(frame))

    def clear_buffer(self) -> None:
        """Barge-in: drop the speech not yet shown; frames go on from idle without a gap."""
        self.interruptions.append(self.stream.interrupt())

    def __aiter__(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        return self._frames()

    def _as_livekit(self, item: AvatarFrame) -> list[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        image = np.ascontiguousarray(item.frame.image)
        out: list[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd] = [
            rtc.VideoFrame(image.shape[1], image.shape[0], rtc.VideoBufferType.RGB24, image.tobytes())]
        if item.speech:
            out.append(rtc.AudioFrame(item.audio.tobytes(), self.stream.sample_rate, 1, item.audio.size))
        out.extend(AudioSegmentEnd() for _ in item.segments_done)
        return out

    async def _frames(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        async for item in self.stream.frames():
            for out in self._as_livekit(item):
                yield out

    def close(self) -> None:
        """Stop the live session."""
        self.stream.close()


class EmoteAvatarSession(_AvatarSession):
    """The agent-side helper: ``await EmoteAvatarSession(open_live).start(agent_session, room)``.

    ``open_live`` builds the always-on :class:`LiveSession` (blocking: portrait, reference bank; it runs in a
    worker thread); ``sample_rate``: Hz of the agent's audio that the avatar takes in and plays out.
    """

    def __init__(self, open_live: Callable[[], LiveSession], *, sample_rate: int = DEFAULT_SAMPLE_RATE):
        super().__init__()
        self._open_live, self.sample_rate = open_live, sample_rate
        self.generator: EmoteVideoGenerator | None = None
        self.runner: AvatarRunner | None = None
        self.audio_output: QueueAudioOutput | None = None

    @property
    def avatar_identity(self) -> str:
        """The participant that publishes the avatar: the agent's own (the avatar runs in its process); empty
        until the room is connected."""
        room = self._room
        return room.local_participant.identity if room is not None and room.isconnected() else ""

    @property
    def provider(self) -> str:
        return "emote"

    async def start(self, agent_session: object, room: rtc.Room) -> None:
        """Build the session, start the runner in ``room`` and make it the agent's audio output."""
        live = await asyncio.get_running_loop().run_in_executor(None, self._open_live)
        self.generator = EmoteVideoGenerator(AvatarStream(live, self.sample_rate))
        await super().start(agent_session, room)
        self.audio_output = QueueAudioOutput(sample_rate=self.sample_rate)
        self.runner = AvatarRunner(room, audio_recv=self.audio_output, video_gen=self.generator,
                                   options=self.generator.options)
        await self.runner.start()
        agent_session.output.audio = self.audio_output

    async def aclose(self) -> None:
        """Stop the runner and the live session."""
        if self.runner is not None:
            await self.runner.aclose()
            self.runner = None
        if self.generator is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.generator.close)
        await super().aclose()


class EmoteAvatarWorkerSession(_AvatarSession):
    """The agent-side helper of an avatar in its own process (see the module's docstring).

    ``photo``, ``model``: what the worker's :func:`open_live` builds; ``identity``: the avatar's participant;
    ``sample_rate``: Hz of the agent's audio sent to it. LiveKit's URL, API key and secret come from
    :meth:`start`'s arguments or ``LIVEKIT_URL``, ``LIVEKIT_API_KEY``, ``LIVEKIT_API_SECRET``.
    """

    def __init__(self, photo: str | Path, model: str = DEFAULT_MODEL, *, identity: str = "emote-avatar",
                 sample_rate: int = DEFAULT_SAMPLE_RATE):
        super().__init__()
        self.photo, self.model, self.identity, self.sample_rate = Path(photo), model, identity, sample_rate
        self.process: subprocess.Popen | None = None

    @property
    def avatar_identity(self) -> str:
        return self.identity

    @property
    def provider(self) -> str:
        return "emote"

    def token(self, room_name: str, agent_identity: str, api_key: str, api_secret: str) -> str:
        """A JWT for the avatar's participant: joins ``room_name`` only, publishes on ``agent_identity``'s behalf."""
        return (api.AccessToken(api_key, api_secret).with_kind("agent").with_identity(self.identity)
                .with_name(self.identity).with_grants(api.VideoGrants(room_join=True, room=room_name))
                .with_attributes({ATTRIBUTE_PUBLISH_ON_BEHALF: agent_identity}).to_jwt())

    def command(self) -> list[str]:
        """The worker's command line (the token and URL travel in its environment)."""
        return [sys.executable, "-m", "engine.integrations.livekit", "--photo", str(self.photo),
                "--model", self.model, "--sample-rate", str(self.sample_rate)]

    async def start(self, agent_session: object, room: rtc.Room, *, livekit_url: str | None = None,
                    livekit_api_key: str | None = None, livekit_api_secret: str | None = None) -> None:
        """Launch the worker for ``room`` and send the agent's audio to it."""
        url = livekit_url or os.environ.get("LIVEKIT_URL")
        key = livekit_api_key or os.environ.get("LIVEKIT_API_KEY")
        secret = livekit_api_secret or os.environ.get("LIVEKIT_API_SECRET")
        if not (url and key and secret):
            raise ValueError("the avatar worker needs LiveKit's URL, API key and secret "
                             "(arguments, or LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET)")
        token = self.token(room.name, room.local_participant.identity, key, secret)
        self.process = subprocess.Popen(self.command(), env={**os.environ, "LIVEKIT_URL": url, TOKEN_ENV: token})
        await super().start(agent_session, room)
        agent_session.output.audio = DataStreamAudioOutput(room, destination_identity=self.identity,
                                                           sample_rate=self.sample_rate)

    async def aclose(self) -> None:
        """Stop the worker (it also leaves when the room closes)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            await asyncio.get_running_loop().run_in_executor(None, self.process.wait)
        await super().aclose()


async def serve(url: str, token: str, build: Callable[[], LiveSession], sample_rate: int) -> None:
    """The avatar worker: join the room, run the generator on the agent's data-stream audio until the room closes."""
    room = rtc.Room()
    left = asyncio.Event()
    room.on("disconnected", lambda *_: left.set())
    generator = EmoteVideoGenerator(AvatarStream(await asyncio.get_running_loop().run_in_executor(None, build),
                                                 sample_rate))
    try:
        await room.connect(url, token)
        runner = AvatarRunner(room, audio_recv=DataStreamAudioReceiver(room), video_gen=generator,
                              options=generator.options)
        await runner.start()
        try:
            await left.wait()
        finally:
            await runner.aclose()
    finally:
        generator.close()
        await room.disconnect()


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.integrations.livekit --photo P [--model M] [--sample-rate HZ]``, with ``LIVEKIT_URL``
    and the token in the environment (:class:`EmoteAvatarWorkerSession` starts it)."""
    parser = argparse.ArgumentParser(prog="python -m engine.integrations.livekit",
                                     description="The emote avatar worker of a LiveKit voice agent.")
    parser.add_argument("--photo", type=Path, required=True, help="the portrait")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a shipped model's name, a directory or a preset")
    parser.add_argument("--sample-rate", type=int, default=DEFAULT_SAMPLE_RATE, help="Hz of the agent's audio")
    args = parser.parse_args(argv)
    url, token = os.environ.get("LIVEKIT_URL"), os.environ.get(TOKEN_ENV)
    problem = None
    if not url or not token:
        problem = f"LIVEKIT_URL and {TOKEN_ENV} must be set (EmoteAvatarWorkerSession sets them)"
    elif not args.photo.is_file():
        problem = f"{args.photo}: no such file"
    elif args.sample_rate <= 0:
        problem = f"--sample-rate must be positive, got {args.sample_rate}"
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    asyncio.run(serve(url, token, lambda: open_live(args.photo, args.model), args.sample_rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""LiveKit Agents: the video generator and the agent-side helper against LiveKit's own classes, without a server.

Exercised: ``QueueAudioOutput`` (the agent's audio output) feeding the generator as ``AvatarRunner`` does
(``async for`` over it into ``push_audio``, with its ``AudioSegmentEnd``); the generator's own stream of
``rtc.VideoFrame`` / ``rtc.AudioFrame`` / ``AudioSegmentEnd``; and an ``AvatarRunner`` started by the helper in
an unconnected ``rtc.Room`` with a real ``AgentSession``: audio captured by the agent reaches the live
session, and ``clear_buffer`` interrupts it and reports an interrupted playback to the agent.
For the avatar in a process of its own: its token (decoded with LiveKit's verifier), the helper's refusal
without LiveKit's credentials, and the worker's refusal of bad input.
Not exercised (no LiveKit server can run here): publishing the tracks and the runner's audio/video
synchroniser, which start only once the room is connected; the worker joining a room and receiving the agent's
audio over data streams (``DataStreamAudioOutput`` / ``DataStreamAudioReceiver`` need a connected room).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

rtc = pytest.importorskip("livekit.rtc", reason="needs livekit-agents (pip install emote-engine[agents])")
avatar_api = pytest.importorskip("livekit.agents.voice.avatar", reason="needs livekit-agents")

from engine.backends.torch_eager import TorchEagerBackend  # noqa: E402
from engine.integrations.avatar import AvatarStream  # noqa: E402
from engine.integrations.livekit import (  # noqa: E402
    TOKEN_ENV,
    EmoteAvatarSession,
    EmoteAvatarWorkerSession,
    EmoteVideoGenerator,
    main,
)
from engine.options import GenerationOptions  # noqa: E402
from engine.stream.runner import LiveSession  # noqa: E402
from engine.stream.session import Session  # noqa: E402

RATE, FPS = 24000, 25
PER_FRAME = RATE // FPS


def open_live(model, portrait, clock) -> LiveSession:
    options = GenerationOptions(steps=1, idle_steps=1, first_clip_frames=4)
    return LiveSession(Session(TorchEagerBackend(model), model.config, *portrait, options), clock=clock,
                       always_on=True)


def tts_frames(seconds: float, block: int = 480) -> tuple[np.ndarray, list]:
    """A reply as LiveKit's TTS hands it to the audio output: 20 ms ``rtc.AudioFrame`` blocks of 16-bit PCM."""
    t = np.arange(round(seconds * RATE)) / RATE
    pcm = (9000 * np.sin(2 * np.pi * 170 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.int16)
    pcm[pcm == 0] = 1
    frames = [rtc.AudioFrame(pcm[i:i + block].tobytes(), RATE, 1, pcm[i:i + block].size)
              for i in range(0, pcm.size, block)]
    return pcm, frames


async def collect(generator: EmoteVideoGenerator, videos: int) -> list:
    """What the generator yields up to and including its ``videos``-th video frame (and what follows it)."""
    out, seen = [], 0
    iterator = generator.__aiter__()
    while seen < videos:
        item = await asyncio.wait_for(iterator.__anext__(), 60)
        out.append(item)
        seen += isinstance(item, rtc.VideoFrame)
    return out


def test_the_generator_yields_frames_with_the_agents_audio_and_segment_ends(model, portrait, clock):
    async def run() -> tuple[list, np.ndarray]:
        generator = EmoteVideoGenerator(AvatarStream(open_live(model, portrait, clock), RATE))
        output = avatar_api.QueueAudioOutput(sample_rate=RATE)
        pcm, frames = tts_frames(0.4)
        clock.now += 1.0
        for frame in frames:
            await output.capture_frame(frame)
        output.flush()  # the reply is complete: AudioSegmentEnd down the queue

        async def read_audio() -> None:  # what AvatarRunner._read_audio does with its receiver
            async for frame in output:
                await generator.push_audio(frame)
                if isinstance(frame, avatar_api.AudioSegmentEnd):
                    return

        await read_audio()
        clock.now += 1.0  # the clock at frame 50: clips up to [36,44) are in
        try:
            return await collect(generator, 40), pcm
        finally:
            generator.close()

    items, pcm = asyncio.run(run())
    kinds = [type(item).__name__ for item in items]
    videos = [i for i, item in enumerate(items) if isinstance(item, rtc.VideoFrame)]
    assert len(videos) == 40
    assert all(items[i].width == items[i].height == model.config.resolution for i in videos)
    audio = [item for item in items if isinstance(item, rtc.AudioFrame)]
    assert len(audio) == 10, "speech from frame 25 to 34, one audio frame per video frame"
    assert kinds[videos[25] + 1] == "AudioFrame" and kinds[videos[24] + 1] == "VideoFrame", \
        "audio follows the video frame it plays with, from the first frame of speech"
    assert all(a.sample_rate == RATE and a.samples_per_channel == PER_FRAME for a in audio)
    played = np.concatenate([np.frombuffer(a.data, np.int16) for a in audio])
    assert np.array_equal(played, pcm), "the agent's samples go out unchanged"
    ends = [i for i, item in enumerate(items) if isinstance(item, avatar_api.AudioSegmentEnd)]
    assert ends == [videos[34] + 2], "the reply ends right after the audio of its last frame"


def test_the_helper_routes_the_agents_audio_and_clear_buffer_is_a_barge_in(model, portrait, clock):
    agents = pytest.importorskip("livekit.agents")

    async def run() -> tuple[EmoteAvatarSession, list, int]:
        avatar = EmoteAvatarSession(lambda: open_live(model, portrait, clock), sample_rate=RATE)
        agent_session = agents.AgentSession()
        room = rtc.Room()
        await avatar.start(agent_session, room)
        finished = []
        output = agent_session.output.audio
        output.on("playback_finished", finished.append)
        try:
            assert output is avatar.audio_output
            clock.now += 1.0
            _, frames = tts_frames(0.4)
            for frame in frames:
                await output.capture_frame(frame)
            live = avatar.generator.stream.live
            for _ in range(200):  # the runner's reading task hands the frames to the generator
                if live.stats.samples_in >= 16000 + 6400:
                    break
                await asyncio.sleep(0.01)
            samples = live.stats.samples_in
            output.clear_buffer()  # what the agent does when the user barges in
            for _ in range(200):
                if finished:
                    break
                await asyncio.sleep(0.01)
            return avatar, finished, samples
        finally:
            await avatar.aclose()

    avatar, finished, samples = asyncio.run(run())
    assert samples >= 16000 + 6000, "1 s of silence, then the 0.4 s reply (less what the resampler holds)"
    [cut] = avatar.generator.interruptions
    # The runner takes the first frame, then waits for the room to connect before it publishes anything.
    assert cut.report.frame in (0, 1) and cut.segments == (0,)
    assert cut.report.speech_s > 0.39, "all of the reply was dropped (less what the resampler still held)"
    assert len(finished) == 1 and finished[0].interrupted, "the agent hears that its playback was interrupted"


def test_the_worker_token_joins_one_room_and_publishes_on_the_agents_behalf():
    lk_api = pytest.importorskip("livekit.api")
    secret = "s" * 32
    worker = EmoteAvatarWorkerSession("portrait.png", "tiny", identity="face")
    claims = lk_api.TokenVerifier("key", secret).verify(worker.token("room-7", "agent-1", "key", secret))
    assert claims.identity == "face" and claims.kind == "agent"
    assert claims.video.room == "room-7" and claims.video.room_join
    assert claims.attributes == {"lk.publish_on_behalf": "agent-1"}
    command = worker.command()
    assert command[1:3] == ["-m", "engine.integrations.livekit"] and "--photo" in command
    assert not any(secret in part or "key" == part for part in command), "credentials never on the command line"


def test_the_worker_helper_needs_livekits_credentials(monkeypatch):
    for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        monkeypatch.delenv(name, raising=False)
    worker = EmoteAvatarWorkerSession("portrait.png")

    async def start() -> None:
        await worker.start(object(), rtc.Room())

    with pytest.raises(ValueError, match="LIVEKIT_URL"):
        asyncio.run(start())
    assert worker.process is None, "nothing was launched"


@pytest.mark.parametrize("env, argv, message", [
    ({}, ["--photo", "portrait.png"], "LIVEKIT_URL and EMOTE_LIVEKIT_TOKEN must be set"),
    ({"LIVEKIT_URL": "ws://x", TOKEN_ENV: "t"}, ["--photo", "missing.png"], "missing.png: no such file"),
    ({"LIVEKIT_URL": "ws://x", TOKEN_ENV: "t"}, ["--photo", __file__, "--sample-rate", "0"], "must be positive"),
])
def test_the_worker_refuses_bad_input_in_one_line(monkeypatch, capsys, env, argv, message):
    monkeypatch.delenv("LIVEKIT_URL", raising=False)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1

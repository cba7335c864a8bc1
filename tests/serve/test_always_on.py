"""Always-on sessions over the WebSocket: idle frames without audio, and the ``interrupt`` message (barge-in).

The server runs on the real clock, so the tests assert frame indices, idle flags and what the messages say,
never how long anything took.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import numpy as np
import pytest
from support import demo_pcm16

from engine.cli import build_parser, main
from engine.serve.protocol import unpack_frame

FPS = 25


async def next_message(ws: aiohttp.ClientWebSocketResponse) -> object:
    """The next frame (unpacked) or text message (parsed) other than ``stats``."""
    while True:
        message = await asyncio.wait_for(ws.receive(), timeout=120)
        if message.type == aiohttp.WSMsgType.BINARY:
            return unpack_frame(message.data)
        assert message.type == aiohttp.WSMsgType.TEXT, message
        parsed = json.loads(message.data)
        if parsed["type"] != "stats":
            return parsed


def test_always_on_idles_without_audio_and_interrupt_returns_to_idle(start_server):
    server = start_server()
    pcm = np.concatenate([demo_pcm16()] * 2)  # the demo speech twice (6.3 s)

    async def run():
        async with aiohttp.ClientSession() as http, http.ws_connect(server.ws_url) as ws:
            await ws.send_str(json.dumps({"type": "start", "frames": "raw", "always_on": True}))
            ready = await next_message(ws)
            frames = [await next_message(ws) for _ in range(4)]  # no audio sent at all
            for first in range(0, pcm.size, 16000):
                await ws.send_bytes(pcm[first:first + 16000].tobytes())
            while sum(not f.idle for f in frames) < 12:  # some speech is shown
                frames.append(await next_message(ws))
            await ws.send_str(json.dumps({"type": "interrupt"}))
            while isinstance(message := await next_message(ws), type(frames[0])):
                frames.append(message)
            interrupted = message
            after = [await next_message(ws) for _ in range(12)]
            await ws.send_str(json.dumps({"type": "end"}))
            while isinstance(message := await next_message(ws), type(frames[0])):
                after.append(message)
            return ready, frames, interrupted, after, message

    ready, frames, interrupted, after, done = asyncio.run(run())
    assert ready["always_on"] is True and ready["idle_steps"] == 1
    assert all(f.idle for f in frames[:4]), "frames come before any audio, made from silence"
    assert not frames[-1].idle, "speech frames follow"
    assert interrupted["type"] == "interrupted" and interrupted["frame"] > frames[-1].index
    assert interrupted["pts"] == interrupted["frame"] / FPS
    assert 0 < interrupted["speech_s"] < pcm.size / 16000
    assert interrupted["speech_samples"] == round(interrupted["speech_s"] * 16000)
    indices = [f.index for f in frames + after]
    assert indices == list(range(len(indices))), "one frame per index, no gap across the interrupt"
    resumed = [f for f in after if f.index >= interrupted["frame"]]
    assert len(resumed) >= 10 and all(f.idle and f.pts == f.index / FPS for f in resumed)
    assert done["type"] == "done"
    assert [i["frame"] for i in done["stats"]["interrupts"]] == [interrupted["frame"]]
    assert done["stats"]["frames_idle"] >= 4 + len(resumed)


def test_interrupt_outside_an_always_on_session_is_a_bad_request(start_server):
    server = start_server()

    async def run(start: dict) -> dict:
        async with aiohttp.ClientSession() as http, http.ws_connect(server.ws_url) as ws:
            await ws.send_str(json.dumps(start))
            if (reply := await next_message(ws))["type"] == "ready":
                await ws.send_str(json.dumps({"type": "interrupt"}))
                while not isinstance(reply := await next_message(ws), dict):
                    pass
            return reply

    plain = asyncio.run(run({"type": "start"}))
    assert plain["type"] == "error" and plain["code"] == "bad_request" and "always-on" in plain["message"]
    wrong = asyncio.run(run({"type": "start", "always_on": 1}))
    assert wrong["type"] == "error" and wrong["code"] == "bad_request" and "always_on" in wrong["message"]


def test_idle_steps_is_a_bounded_serve_option(capsys):
    assert build_parser().parse_args(["serve", "--idle-steps", "2"]).idle_steps == 2
    assert build_parser().parse_args(["serve"]).idle_steps == 1
    with pytest.raises(SystemExit):
        main(["serve", "--idle-steps", "0"])
    assert "argument --idle-steps: must be 1 to 50, got 0" in capsys.readouterr().err


def test_the_python_client_starts_always_on_and_interrupts(start_server):
    from engine.serve.client import stream_session

    server = start_server()
    pcm = np.concatenate([demo_pcm16()] * 2)  # the demo speech twice (6.3 s)
    result = asyncio.run(stream_session(server.ws_url, pcm, frames="raw", always_on=True, interrupt_after_frames=16,
                                        frames_after_interrupt=12))
    assert result.error is None and result.ready["always_on"] is True
    cut = result.interrupted
    assert cut is not None and cut["frame"] >= 16 and cut["pts"] == cut["frame"] / FPS
    assert 0 < cut["speech_s"] < pcm.size / 16000, "speech queued but not shown was dropped"
    indices = [f.index for f in result.frames]
    assert indices == list(range(len(indices)))
    after = result.frames[cut["frame"]:]
    assert len(after) >= 12 and all(f.idle for f in after), "from the cut on, every frame is made from silence"
    assert [i["frame"] for i in result.done["stats"]["interrupts"]] == [cut["frame"]]


def test_the_python_client_refuses_an_interrupt_without_always_on():
    from engine.serve.client import stream_session

    with pytest.raises(ValueError, match="always_on"):
        asyncio.run(stream_session("ws://127.0.0.1:9/session", demo_pcm16(), interrupt_after_frames=4))

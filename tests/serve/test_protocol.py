"""The session protocol without a browser: a Python client streaming 20 ms blocks gets `emote generate`'s frames.

Frames are compared bitwise: the client asks for lossless PNG (or raw RGB) frames, which the protocol
offers for exactly this; the page asks for JPEG.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import aiohttp
import cv2
import numpy as np
from PIL import Image
from support import demo_pcm16, write_wav

from engine.cli import main
from engine.serve.client import stream_session
from engine.serve.protocol import unpack_frame

ROOT = Path(__file__).resolve().parents[2]
PORTRAIT = ROOT / "engine" / "assets" / "demo" / "portrait.png"
FPS = 25


def decode(frame) -> np.ndarray:
    if frame.frame_format == "raw":
        return np.frombuffer(frame.payload, np.uint8).reshape(frame.side, frame.side, 3)
    return np.asarray(Image.open(io.BytesIO(frame.payload)).convert("RGB"))


def test_streamed_20ms_blocks_give_the_frames_of_emote_generate(start_server, tmp_path):
    pcm = demo_pcm16(1.5)
    wav = write_wav(tmp_path / "speech.wav", pcm)
    server = start_server()
    result = asyncio.run(stream_session(server.ws_url, pcm, 16000, block_ms=20, portrait=PORTRAIT.read_bytes(),
                                        frames="png"))
    assert result.error is None and result.done is not None, result.error
    assert result.ready["face_detected"] and result.ready["size"] == 128 and result.ready["fps"] == FPS

    png_dir = tmp_path / "frames"
    assert main(["generate", "--image", str(PORTRAIT), "--audio", str(wav), "--out", str(tmp_path / "g.mp4"),
                 "--png-dir", str(png_dir), "--model", "tiny", "--steps", "1", "--first-clip", "4", "--quiet"]) == 0
    want = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(png_dir.glob("frame_*.png"))]

    assert len(want) == round(1.5 * FPS)
    assert [f.index for f in result.frames] == list(range(len(want)))
    assert all(abs(f.pts - f.index / FPS) < 1e-9 and not f.skipped for f in result.frames)
    got = [decode(f) for f in result.frames]
    assert all(np.array_equal(a, b) for a, b in zip(got, want)), "streamed frames differ from emote generate's"
    stats = result.done["stats"]
    assert stats["frames_out"] == len(want) and stats["frames_skipped"] == 0
    assert stats["time_to_first_frame_s"] > 0 and stats["latency_s"]["p95"] >= stats["latency_s"]["median"]


def test_raw_and_jpeg_frames_and_a_48khz_client(start_server):
    pcm = demo_pcm16(0.6)
    server = start_server()

    async def sessions():
        raw = await stream_session(server.ws_url, pcm, frames="raw")
        png = await stream_session(server.ws_url, pcm, frames="png")
        jpeg = await stream_session(server.ws_url, pcm, frames="jpeg")
        upsampled = np.repeat(pcm, 3)
        at48k = await stream_session(server.ws_url, upsampled, 48000, block_ms=20, frames="jpeg")
        return raw, png, jpeg, at48k

    raw, png, jpeg, at48k = asyncio.run(sessions())
    assert len(raw.frames) == len(png.frames) == len(jpeg.frames) == len(at48k.frames) == 15
    for a, b, c in zip(raw.frames, png.frames, jpeg.frames):
        exact = decode(a)
        assert np.array_equal(exact, decode(b))
        ok, local = cv2.imencode(".jpg", cv2.cvtColor(exact, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
        assert ok and c.payload == local.tobytes(), "the JPEG is that frame at quality 85"


def test_reset_starts_a_new_utterance_with_the_same_portrait(start_server):
    pcm = demo_pcm16(0.5).tobytes()
    server = start_server()

    async def utterance(ws) -> tuple[dict, list]:
        ready = json.loads((await ws.receive()).data)
        assert ready["type"] == "ready"
        await ws.send_bytes(pcm)
        await ws.send_str(json.dumps({"type": "end"}))
        frames = []
        async for message in ws:
            if message.type == aiohttp.WSMsgType.BINARY:
                frames.append(unpack_frame(message.data))
            elif json.loads(message.data)["type"] == "done":
                return ready, frames
        raise AssertionError("the socket closed before 'done'")

    async def run():
        async with aiohttp.ClientSession() as http, http.ws_connect(server.ws_url) as ws:
            await ws.send_str(json.dumps({"type": "start", "frames": "raw"}))
            first = await utterance(ws)
            await ws.send_str(json.dumps({"type": "reset"}))
            second = await utterance(ws)
            return first, second, server.hub.sessions_served

    (ready1, frames1), (ready2, frames2), built = asyncio.run(run())
    assert ready1["session"] == ready2["session"] and built == 1, "reset keeps the session and its reference bank"
    assert [f.index for f in frames1] == [f.index for f in frames2] == list(range(13))
    assert all(a.payload == b.payload for a, b in zip(frames1, frames2))

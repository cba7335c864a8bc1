"""A Python client of the session protocol: stream PCM to a running ``emote serve``, collect the frames.

Useful for a voice agent feeding a remote server, and what the tests drive the server with.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from engine.serve.protocol import FrameMessage, unpack_frame
from engine.timebase import SAMPLE_RATE


@dataclass
class SessionResult:
    """What one session got back.

    ``ready``/``done``/``error`` are the server's messages (None if not received); ``frames`` in
    arrival order with ``arrivals`` (client clock, seconds) beside them; ``sent_at`` the client clock
    when each audio block was sent with ``sent_samples`` the cumulative samples after it;
    ``close_code`` the WebSocket close code; ``interrupted`` the server's answer to an ``interrupt``
    (``frame``, ``pts``, ``speech_samples``, ``speech_s``), None if none was sent.
    """

    ready: dict | None = None
    done: dict | None = None
    error: dict | None = None
    frames: list[FrameMessage] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)
    sent_samples: list[int] = field(default_factory=list)
    stats: list[dict] = field(default_factory=list)
    close_code: int | None = None
    interrupted: dict | None = None


def to_pcm16(pcm: np.ndarray) -> np.ndarray:
    """float PCM in [-1, 1] -> int16 (x 32768, clipped), the wire format."""
    return np.clip(np.round(np.asarray(pcm, dtype=np.float64) * 32768.0), -32768, 32767).astype("<i2")


async def stream_session(url: str, pcm16: np.ndarray, sample_rate: int = SAMPLE_RATE, *, block_ms: float = 20.0,
                         realtime: bool = False, token: str = "", portrait: bytes | None = None,
                         frames: str = "jpeg", end: bool = True, timeout_s: float = 120.0,
                         http: aiohttp.ClientSession | None = None, always_on: bool = False,
                         interrupt_after_frames: int | None = None, frames_after_interrupt: int = 0) -> SessionResult:
    """Run one session at ``url`` (``ws://host:port/session``): start, send ``pcm16`` in blocks, end, collect.

    ``realtime`` paces the blocks at the audio's own rate (as a microphone would); otherwise they go
    as fast as the socket takes them. ``always_on`` starts an always-on session (frames at the stream's
    fps, idle ones while no audio comes). ``interrupt_after_frames`` (always-on): once that many frames have
    arrived, the rest of ``pcm16`` is not sent and an ``interrupt`` (barge-in) goes instead; ``end`` follows
    once the server's ``interrupted`` answer and ``frames_after_interrupt`` more frames (idle ones) have come.
    Returns after ``done``, an error, or the socket closing.
    """
    if interrupt_after_frames is not None and not always_on:
        raise ValueError("interrupt_after_frames needs always_on=True: only an always-on session can be interrupted")
    result = SessionResult()
    block = max(1, round(sample_rate * block_ms / 1000))
    owned = http is None
    http = http or aiohttp.ClientSession()
    barge_in, resumed = asyncio.Event(), asyncio.Event()
    frames_at_answer: int | None = None
    try:
        async with http.ws_connect(url, max_msg_size=0) as ws:
            await ws.send_str(json.dumps({
                "type": "start", "token": token, "portrait": "upload" if portrait else "sample",
                "portrait_bytes": len(portrait) if portrait else 0, "sample_rate": sample_rate, "frames": frames,
                "always_on": always_on}))
            if portrait:
                await ws.send_bytes(portrait)

            async def send_audio() -> None:
                started = time.perf_counter()
                for k, first in enumerate(range(0, pcm16.size, block)):
                    if realtime:
                        await asyncio.sleep(max(0.0, started + k * block / sample_rate - time.perf_counter()))
                    if barge_in.is_set():
                        break
                    chunk = pcm16[first:first + block]
                    await ws.send_bytes(chunk.astype("<i2").tobytes())
                    result.sent_at.append(time.perf_counter())
                    result.sent_samples.append(first + chunk.size)
                if interrupt_after_frames is not None:
                    await barge_in.wait()
                    await ws.send_str(json.dumps({"type": "interrupt"}))
                    await resumed.wait()
                if end:
                    await ws.send_str(json.dumps({"type": "end"}))

            sender: asyncio.Task | None = None

            async def receive() -> None:
                nonlocal sender, frames_at_answer
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.BINARY:
                        result.frames.append(unpack_frame(message.data))
                        result.arrivals.append(time.perf_counter())
                        if interrupt_after_frames is not None and len(result.frames) >= interrupt_after_frames:
                            barge_in.set()
                        if frames_at_answer is not None and len(result.frames) >= frames_at_answer:
                            resumed.set()
                        continue
                    if message.type != aiohttp.WSMsgType.TEXT:
                        return
                    body = json.loads(message.data)
                    if body["type"] == "ready":
                        result.ready = body
                        sender = asyncio.ensure_future(send_audio())
                    elif body["type"] == "stats":
                        result.stats.append(body["stats"])
                    elif body["type"] == "interrupted":
                        result.interrupted = body
                        frames_at_answer = len(result.frames) + frames_after_interrupt
                        if not frames_after_interrupt:
                            resumed.set()
                    elif body["type"] == "done":
                        result.done = body
                        return
                    elif body["type"] == "error":
                        result.error = body

            try:
                await asyncio.wait_for(receive(), timeout_s)
            finally:
                if sender is not None:
                    sender.cancel()
                    await asyncio.gather(sender, return_exceptions=True)
            await ws.close()
            result.close_code = ws.close_code
    finally:
        if owned:
            await http.close()
    return result

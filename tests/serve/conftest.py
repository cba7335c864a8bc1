"""Fixtures for the server tests: one tiny model for the whole run, servers in a background thread.

Each server runs the real aiohttp application on a free loopback port in its own event loop thread;
several servers (different limits or policies) share the one loaded model and backend.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import struct
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from engine.backends import make_backend
from engine.backends.base import Backend
from engine.config import ModelConfig
from engine.options import GenerationOptions
from engine.pipeline import open_model
from engine.serve.app import make_app, start_site
from engine.serve.hub import ServeConfig, SessionHub
from engine.stream.runner import LagPolicy

ROOT = Path(__file__).resolve().parents[2]
PORTRAIT = ROOT / "engine" / "assets" / "demo" / "portrait.png"
STEPS = 1
FIRST_CLIP = 4


class ServerThread:
    """``make_app(hub)`` served on 127.0.0.1 (a free port) from a background event loop."""

    def __init__(self, hub: SessionHub):
        self.hub = hub
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-server", daemon=True)
        self._runner = None
        self.app = None
        self.port = 0

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.app = make_app(self.hub)
        self._runner, self.port = self.loop.run_until_complete(start_site(self.app, "127.0.0.1", 0))
        self._started.set()
        self.loop.run_forever()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("the test server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()
        self.hub.close()

    def idle(self, timeout: float = 20.0) -> bool:
        """Wait until no session holds a slot and no upload is pending (a closed connection is freed shortly
        after it closes)."""
        deadline = time.monotonic() + timeout
        while self.hub.active or self.hub.uploads.count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    @property
    def url(self) -> str:
        """The page's address."""
        return f"http://127.0.0.1:{self.port}/"

    @property
    def ws_url(self) -> str:
        """The session endpoint."""
        return f"ws://127.0.0.1:{self.port}/session"


SERVE_MODEL = os.environ.get("EMOTE_TEST_SERVE_MODEL", "tiny")
"""The served model: the tiny preset, or ``$EMOTE_TEST_SERVE_MODEL`` (e.g. talking64 for the README's screenshot)."""


@pytest.fixture(scope="session")
def engine() -> tuple[Backend, ModelConfig]:
    """The served model (tiny preset, seeded random weights, unless overridden) and its eager CPU backend."""
    model = open_model(SERVE_MODEL)
    return make_backend("torch", model, "cpu"), model.config


def serve_config(**overrides: object) -> ServeConfig:
    """The tests' server settings: tiny model, 1 step, a 4-frame first clip, lossless-friendly 'grow' policy."""
    base = ServeConfig(host="127.0.0.1", port=0, model=SERVE_MODEL,
                       options=GenerationOptions(steps=STEPS, first_clip_frames=FIRST_CLIP), policy=LagPolicy("grow"),
                       max_sessions=4)
    return dataclasses.replace(base, **overrides)


@pytest.fixture
def start_server(engine) -> Iterator:
    """``start_server(**ServeConfig overrides) -> ServerThread`` (stopped at the end of the test)."""
    servers: list[ServerThread] = []

    def start(**overrides: object) -> ServerThread:
        backend, model_config = engine
        server = ServerThread(SessionHub(backend, model_config, serve_config(**overrides))).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


@pytest.fixture
def raw_ws() -> type:
    """The :class:`RawWebSocket` class (``await raw_ws.connect(port)``)."""
    return RawWebSocket


class RawWebSocket:
    """A WebSocket client written by hand over asyncio streams, to send what no client library would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, headers: dict[str, str] | None = None) -> tuple[RawWebSocket, int]:
        """Open ``/session`` on 127.0.0.1:``port``; returns the socket and the HTTP status of the handshake."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = ["GET /session HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        return cls(reader, writer), int(head.split(b" ", 2)[1])

    async def send_frame(self, opcode: int, payload: bytes) -> None:
        """One final, masked frame."""
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if n < 65536 else \
            (np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)).tobytes()
        self.writer.write(header + mask + body)
        await self.writer.drain()

    async def send_text(self, text: str) -> None:
        await self.send_frame(0x1, text.encode())

    async def send_raw(self, data: bytes) -> None:
        """Bytes straight onto the socket, framed or not."""
        self.writer.write(data)
        await self.writer.drain()

    async def read_message(self) -> tuple[int, bytes]:
        """The next frame from the server (opcode, payload); (-1, b"") when the socket closed."""
        try:
            first, second = await self.reader.readexactly(2)
            n = second & 0x7F
            if n == 126:
                n = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            return first & 0x0F, await self.reader.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError):
            return -1, b""

    async def read_text(self) -> dict:
        """The next text message as JSON (binary frames skipped); {} when the socket closed first."""
        while True:
            opcode, payload = await self.read_message()
            if opcode == 0x1:
                return json.loads(payload)
            if opcode in (-1, 0x8):
                return {}

    def abort(self) -> None:
        """Drop the connection without a closing handshake (a closed laptop, a lost network)."""
        self.writer.transport.abort()

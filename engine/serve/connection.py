"""One WebSocket session: the protocol of :mod:`engine.serve.protocol` over a :class:`LiveSession`.

Threads per session: the live session's denoise and decode stages, and a :class:`FramePump` that
takes frames out, encodes them and hands them to the event loop; the event loop only moves bytes.
Every way out (the client closes, the connection drops, a protocol error, an engine failure, the
server stops) goes through the same teardown, which stops the threads and frees the slot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import queue
import threading
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
from aiohttp import WSMsgType, web

from engine.allocator import trim_allocator
from engine.serve.hub import PendingUploads, SessionHub, client_key
from engine.serve.portraits import PortraitError, decode_portrait
from engine.serve.protocol import (
    ENGINE_SAMPLE_RATE,
    PROTOCOL_VERSION,
    ProtocolError,
    StartRequest,
    close_reason,
    error_message,
    max_audio_bytes,
    pack_frame,
    parse_start,
    parse_text,
)
from engine.stream.idle import Interruption
from engine.stream.runner import LiveSession
from engine.stream.session import Frame
from engine.stream.sources import StreamingResampler

SEND_WINDOW_FRAMES = 16
STATS_INTERVAL_S = 1.0
_POLL_S = 0.1


@dataclass
class _Done:
    summary: dict


@dataclass
class _Failed:
    error: BaseException


@dataclass
class _Interrupted:
    report: Interruption


def encode_frame(frame: Frame, frame_format: str, jpeg_quality: int) -> bytes:
    """A frame message for ``frame``: JPEG, lossless PNG or raw RGB after the header."""
    image = frame.image
    if frame_format == "raw":
        payload = np.ascontiguousarray(image).tobytes()
    else:
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        if frame_format == "png":
            ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        else:
            ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise RuntimeError(f"encoding frame {frame.index} as {frame_format} failed")
        payload = data.tobytes()
    return pack_frame(frame.index, frame.pts, image.shape[0], frame_format, frame.skipped, payload, frame.idle)


def compact_summary(summary: dict) -> dict:
    """A stream summary without the per-clip stage rows (kept short for the wire)."""
    stages = {name: {k: v for k, v in st.items() if k != "per_clip"} for name, st in summary["stages"].items()}
    return {**summary, "stages": stages}


class FramePump(threading.Thread):
    """Takes one utterance's frames out of a live session, encodes them and delivers them in order.

    At most ``window`` encoded frames wait for the socket (:meth:`sent` frees one place), so a slow
    client holds back the engine instead of filling memory. Ends after delivering the utterance's
    summary, a failure, or when :meth:`stop` is called.
    """

    def __init__(self, live: LiveSession, encode: Callable[[Frame], bytes], deliver: Callable[[object], None],
                 window: int = SEND_WINDOW_FRAMES):
        super().__init__(name="emote-serve-pump", daemon=True)
        self.live, self.encode, self.deliver = live, encode, deliver
        self._places = threading.Semaphore(window)
        self._halt = threading.Event()

    def stop(self) -> None:
        """Ask the pump to end soon (within about 0.1 s)."""
        self._halt.set()

    def sent(self) -> None:
        """One delivered frame left for the client."""
        self._places.release()

    def _wait_for_place(self) -> bool:
        while not self._places.acquire(timeout=_POLL_S):
            if self._halt.is_set():
                return False
        return True

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                try:
                    frame = self.live.next_frame(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if frame is None:
                    self.deliver(_Done(compact_summary(self.live.stats.summary())))
                    return
                data = self.encode(frame)
                if not self._wait_for_place():
                    return
                self.deliver(data)
        except Exception as exc:
            if not self._halt.is_set():
                self.deliver(_Failed(exc))


def admit_upload(uploads: PendingUploads, client: str) -> None:
    """Count one more portrait upload on its way from ``client`` (call ``uploads.finish(client)`` once it has
    arrived or failed); ProtocolError ``busy`` or ``too_many_uploads`` when a bound is full."""
    full = uploads.admit(client)
    if full == "total":
        raise ProtocolError("busy", f"the server is already waiting for {uploads.total} portrait uploads; "
                                    "try again shortly")
    if full == "client":
        raise ProtocolError("too_many_uploads", f"this address already has {uploads.per_client} portrait "
                                                "uploads on their way; finish those first")


def decode_upload(data: bytes) -> np.ndarray:
    """An uploaded portrait file as uint8 RGB ``[H, W, 3]`` (:func:`~engine.serve.portraits.decode_portrait`);
    ProtocolError ``bad_image`` with its one-line reason when it is not an acceptable image."""
    try:
        return decode_portrait(data)
    except PortraitError as exc:
        raise ProtocolError("bad_image", str(exc)) from None


class SessionConnection:
    """Serves one accepted WebSocket until it closes; :meth:`run` never raises for the client's mistakes."""

    def __init__(self, hub: SessionHub, ws: web.WebSocketResponse, extra: dict | None = None,
                 client: str | None = None):
        """``ws``: an aiohttp WebSocket (or anything with its ``receive/send_str/send_bytes/close/closed``,
        such as :class:`engine.serve.ray_app.StarletteSocket`); ``extra``: fields added to every ``ready``
        and ``stats`` message (the Ray server's replica id); ``client``: the peer's IP address, under which
        its pending uploads are counted (:func:`engine.serve.hub.client_key`)."""
        self.hub, self.ws = hub, ws
        self.client = client_key(client)
        self.extra = dict(extra or {})
        self.loop = asyncio.get_running_loop()
        self.session_id: str | None = None
        self.live: LiveSession | None = None
        self.pump: FramePump | None = None
        self.start: StartRequest | None = None
        self.resampler: StreamingResampler | None = None
        self.face_detected = False
        self.prepare_s = 0.0
        self.phase = "starting"  # starting -> streaming -> ending -> done (-> streaming after reset)
        self._outbox: asyncio.Queue = asyncio.Queue()

    # ---------------------------------------------------------------------------------------- receiving

    async def _receive(self, timeout: float | None = None, awaited: str = "message") -> web.WSMessage:
        """The next message; ProtocolError for a broken or oversized one, or when ``timeout`` passes."""
        try:
            message = await self.ws.receive(timeout=timeout)
        except asyncio.TimeoutError:
            raise ProtocolError("timeout", f"no {awaited} within {self.hub.config.start_timeout_s:g} s "
                                           "of connecting") from None
        if message.type == WSMsgType.ERROR:
            reason = str(message.data) or "broken message"
            code = "too_large" if "exceeds" in reason else "bad_request"
            raise ProtocolError(code, f"bad WebSocket message ({reason})")
        return message

    async def _open(self) -> None:
        """Read ``start`` (and the upload), take a slot, build the session and say ``ready``."""
        config = self.hub.config
        deadline = self.loop.time() + config.start_timeout_s
        message = await self._receive(config.start_timeout_s, "start message")
        if message.type != WSMsgType.TEXT:
            raise ProtocolError("bad_request", "expected a JSON 'start' message first")
        start = parse_start(parse_text(message.data), config.max_upload_bytes)
        if config.token is not None and not hmac.compare_digest(start.token.encode(), config.token.encode()):
            raise ProtocolError("unauthorized", "wrong or missing access token")
        upload = None
        if start.portrait == "upload":
            if self.hub.active >= config.max_sessions:
                raise self._busy()
            upload = await self._receive_upload(start, deadline)
        self.session_id = self.hub.reserve()
        if self.session_id is None:
            raise self._busy()
        image = None
        if upload is not None:
            image = await self.loop.run_in_executor(self.hub.executor, decode_upload, upload)
        self.start = start
        self.live, portrait, self.prepare_s = await self.loop.run_in_executor(
            self.hub.executor, self.hub.build, self.session_id, image, start.always_on)
        self.resampler = StreamingResampler(start.sample_rate, ENGINE_SAMPLE_RATE)
        self.face_detected = portrait.detected
        await self._begin_utterance()

    def _busy(self) -> ProtocolError:
        return ProtocolError("busy", f"the server is at its limit of {self.hub.config.max_sessions} sessions; "
                                     "try again when one ends")

    async def _receive_upload(self, start: StartRequest, deadline: float) -> bytes:
        """The announced portrait file, counted among the pending uploads (not the sessions) while it comes."""
        uploads = self.hub.uploads
        admit_upload(uploads, self.client)
        try:
            upload = await self._receive(max(0.1, deadline - self.loop.time()), "portrait upload")
        finally:
            uploads.finish(self.client)
        if upload.type != WSMsgType.BINARY:
            raise ProtocolError("bad_request", "expected the portrait image as a binary message")
        if len(upload.data) != start.portrait_bytes:
            raise ProtocolError("bad_request", f"the portrait has {len(upload.data)} bytes, "
                                               f"'start' announced {start.portrait_bytes}")
        return upload.data

    async def _begin_utterance(self) -> None:
        """Start the frame pump of a new utterance and tell the client it may send audio."""
        live = self.live
        self.pump = FramePump(live, self._encode, self._deliver)
        self.phase = "streaming"
        await self.ws.send_str(json.dumps({
            "type": "ready", "protocol": PROTOCOL_VERSION, "session": self.session_id,
            "fps": live.session.fps, "size": live.session.size, "sample_rate": ENGINE_SAMPLE_RATE,
            "face_detected": bool(self.face_detected),
            "model": self.hub.config.model, "untrained": self.hub.untrained,
            "steps": self.hub.config.options.steps, "policy": self.hub.config.policy.kind,
            "prepare_s": self.prepare_s, "ttff_floor_s": live.stats.ttff_floor_s,
            "latency_floor_s": live.stats.latency_floor_s, **self._always_on_fields(), **self.extra}))
        self.pump.start()

    def _always_on_fields(self) -> dict:
        """The ``ready`` fields of an always-on session (none otherwise)."""
        if not self.live.always_on:
            return {}
        return {"always_on": True, "idle_steps": self.live.idle_steps}

    def _encode(self, frame: Frame) -> bytes:
        return encode_frame(frame, self.start.frames, self.start.jpeg_quality)

    def _deliver(self, item: object) -> None:
        """Called from the pump thread: queue ``item`` on the event loop (dropped once the loop is gone)."""
        try:
            self.loop.call_soon_threadsafe(self._outbox.put_nowait, item)
        except RuntimeError:
            if self.pump is not None:
                self.pump.stop()

    def _push_audio(self, data: bytes) -> None:
        if self.phase != "streaming":
            raise ProtocolError("bad_request", "audio after 'end': send 'reset' to start a new utterance")
        limit = max_audio_bytes(self.start.sample_rate)
        if len(data) > limit:
            raise ProtocolError("too_large", f"audio message of {len(data)} bytes exceeds {limit} "
                                             f"(1 s at {self.start.sample_rate} Hz)")
        if len(data) % 2:
            raise ProtocolError("bad_request", "audio must be 16-bit PCM: an even number of bytes")
        if not data:
            return
        pcm = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        self.live.push_audio(self.resampler.process(pcm))
        stats = self.live.stats
        behind = stats.samples_in / ENGINE_SAMPLE_RATE - (stats.frames_out + stats.frames_skipped) / stats.fps
        if behind > self.hub.config.max_backlog_s:
            raise ProtocolError("backlog", f"audio is {behind:.1f} s ahead of the frames (limit "
                                           f"{self.hub.config.max_backlog_s:g} s): send it in real time")

    async def _control(self, message: dict) -> None:
        kind = message["type"]
        if kind == "end":
            if self.phase != "streaming":
                raise ProtocolError("bad_request", "'end' outside an utterance")
            self.phase = "ending"
            tail = self.resampler.flush()
            if tail.size:
                self.live.push_audio(tail)
            self.live.end()
        elif kind == "reset":
            if self.phase != "done":
                raise ProtocolError("bad_request", "'reset' before the utterance's 'done'")
            pump = self.pump
            await self.loop.run_in_executor(self.hub.executor, pump.join)
            await self.loop.run_in_executor(self.hub.executor, self.live.reset)
            self.resampler = StreamingResampler(self.start.sample_rate, ENGINE_SAMPLE_RATE)
            await self._begin_utterance()
        elif kind == "interrupt":
            if self.phase != "streaming" or not self.live.always_on:
                raise ProtocolError("bad_request", "'interrupt' needs an always-on session before its 'end'")
            self.resampler = StreamingResampler(self.start.sample_rate, ENGINE_SAMPLE_RATE)
            self._outbox.put_nowait(_Interrupted(self.live.interrupt()))
        elif kind == "start":
            raise ProtocolError("bad_request", "the session has already started")
        else:
            raise ProtocolError("bad_request", f"unknown message type {kind!r}")

    async def _receive_loop(self) -> None:
        while True:
            message = await self._receive()
            if message.type == WSMsgType.BINARY:
                self._push_audio(message.data)
            elif message.type == WSMsgType.TEXT:
                await self._control(parse_text(message.data))
            else:
                return

    # ------------------------------------------------------------------------------------------ sending

    async def _send_stats(self) -> None:
        s = self.live.stats.summary()
        await self.ws.send_str(json.dumps({"type": "stats", "stats": {
            "frames_out": s["frames_out"], "frames_skipped": s["frames_skipped"], "audio_in_s": s["audio_in_s"],
            "time_to_first_frame_s": s["time_to_first_frame_s"], "latency_p50_s": s["latency_s"]["median"],
            "latency_p95_s": s["latency_s"]["p95"], "sustained_fps": s["sustained_fps"],
            "sessions": self.hub.active, **self.extra}}))

    async def _send_loop(self) -> None:
        next_stats = self.loop.time() + STATS_INTERVAL_S
        while True:
            try:
                item = await asyncio.wait_for(self._outbox.get(), timeout=max(0.0, next_stats - self.loop.time()))
            except asyncio.TimeoutError:
                item = None
            if self.loop.time() >= next_stats:
                next_stats = self.loop.time() + STATS_INTERVAL_S
                if self.phase in ("streaming", "ending"):
                    await self._send_stats()
            if item is None:
                continue
            if isinstance(item, bytes):
                await self.ws.send_bytes(item)
                self.pump.sent()
            elif isinstance(item, _Done):
                self.phase = "done"
                await self.ws.send_str(json.dumps({"type": "done", "stats": item.summary}))
            elif isinstance(item, _Interrupted):
                await self.ws.send_str(json.dumps({"type": "interrupted", **dataclasses.asdict(item.report)}))
            elif isinstance(item, _Failed):
                reason = " ".join(str(item.error).split()) or type(item.error).__name__
                raise ProtocolError("internal", f"generation failed: {reason}")

    # ---------------------------------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Serve until the socket closes; errors go to the client as an ``error`` message and a close code."""
        try:
            await self._open()
            receiver = asyncio.ensure_future(self._receive_loop())
            sender = asyncio.ensure_future(self._send_loop())
            try:
                done, _ = await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (receiver, sender):
                    task.cancel()
                await asyncio.gather(receiver, sender, return_exceptions=True)
            for task in done:
                task.result()
        except ProtocolError as error:
            await self._refuse(error)
        except ConnectionResetError:
            pass
        except Exception as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            await self._refuse(ProtocolError("internal", f"server error: {reason}"))
        finally:
            await self._teardown()

    async def _refuse(self, error: ProtocolError) -> None:
        if self.ws.closed:
            return
        try:
            await self.ws.send_str(error_message(error))
            await self.ws.close(code=error.close_code, message=close_reason(error))
        except (ConnectionResetError, RuntimeError):
            pass

    async def _teardown(self) -> None:
        if self.pump is not None:
            self.pump.stop()
        if not self.ws.closed:
            try:
                await self.ws.close()
            except (ConnectionResetError, RuntimeError):
                pass
        if self.session_id is not None:
            await asyncio.shield(self.loop.run_in_executor(self.hub.executor, self._free))

    def _free(self) -> None:
        """Free the slot, wait for the pump, let go of the session, then give its memory back to the system.

        The pump's callbacks are this connection's methods, so connection and pump hold each other: without
        dropping them here the session (reference bank, motion frames, latents) would wait for Python's cycle
        collector, long after the trim, and a server's resident memory grew with the sessions it had served.
        """
        self.hub.release(self.session_id)
        if self.pump is not None and self.pump.ident is not None:
            self.pump.join()
        self.pump = self.live = None
        trim_allocator()

"""WebRTC on ``emote serve --webrtc`` (aiortc): the page's microphone in, the avatar's video and voice out.

Signalling is one HTTP request, ``POST /webrtc/offer`` with ``{"token": str, "type": "offer", "sdp": str,
"portrait": str}``, under the same rules as the ``/session`` socket (a Host the server answers to, no
cross-site Origin, the access token); the answer is ``{"type": "answer", "sdp": str}``. ``portrait``
(optional; the sample portrait without it) is the client's own image file (PNG, JPEG or WebP) in base64,
held to the socket's upload rules: at most the server's ``max_upload_bytes`` once decoded, checked from its
header before any pixel is decoded, counted among the pending uploads while the request's body arrives,
within the start timeout. Errors are ``{"error": code, "message": str}`` (one line) with the socket's code
names and the HTTP status of their close codes (4xxx -> xxx): 400 ``bad_request``, 401 ``unauthorized``,
403 (origin), 408 ``timeout``, 409 ``too_many_uploads``, 413 ``too_large``, 415 ``bad_image``, 503 ``busy``.

Each peer connection is one always-on :class:`~engine.stream.runner.LiveSession` on that portrait:
- in: the first audio track (the microphone), resampled to 16 kHz mono and pushed as it arrives;
- out: a video track (frame ``i`` with ``pts = i / fps``) and an audio track, the session's own timeline
  (the speech that drove the face, and the silence between it) with ``pts = k`` for sample ``k`` at 16 kHz.
  Both are paced against one origin: frame ``i`` leaves at ``T + i / fps`` and sample ``k`` at
  ``T + k / SAMPLE_RATE``, and audio never runs ahead of the frames already out, so the RTP timestamps and the
  sender reports of the two tracks put lips and voice at the same instant in the browser. A frame that
  comes later than its time moves ``T`` for both (:meth:`Playout.frame_ready`): delay grows, sync holds;
- a data channel ``control``: the client sends ``{"type": "interrupt"}`` (barge-in), answered by
  ``{"type": "interrupted", ...}`` as on the socket; the server sends ``ready`` when the channel opens and
  ``stats`` about once a second.
The session ends when the peer connection closes or fails, or when it has not connected within the start
timeout. The encode (VP8 or H.264, chosen by the browser's offer) runs in aiortc's threads.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import fractions
import hmac
import json
import logging
import queue
from dataclasses import dataclass, field

import av
import numpy as np
from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from engine.faces import Portrait
from engine.serve.connection import admit_upload, decode_upload
from engine.serve.hub import SessionHub, client_key
from engine.serve.protocol import ENGINE_SAMPLE_RATE, MAX_TEXT_BYTES, ProtocolError, check_upload_size
from engine.stream.runner import LiveSession

VIDEO_CLOCK_HZ = 90000
AUDIO_BLOCK_SAMPLES = ENGINE_SAMPLE_RATE // 50
"""Samples of one outgoing audio frame: 20 ms at 16 kHz (the Opus packet time)."""
MAX_SDP_CHARS = 32 * 1024
_POLL_S = 0.1

log = logging.getLogger("emote.serve.webrtc")


class SignallingError(Exception):
    """A refused offer: ``status`` the HTTP status, ``code`` a short name, the message one line."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    @classmethod
    def of(cls, error: ProtocolError) -> SignallingError:
        """The socket's ``error`` as an HTTP refusal: its code name and message, the status of its close code."""
        return cls(error.close_code - 4000, error.code, error.message)


@dataclass(frozen=True)
class Offer:
    """A parsed ``POST /webrtc/offer`` body: the session description and the portrait file's bytes (None: the
    sample portrait)."""

    description: RTCSessionDescription
    portrait: bytes | None = None


def offer_body_limit(max_upload_bytes: int) -> int:
    """The largest offer body read, in bytes: an SDP of :data:`MAX_SDP_CHARS`, a portrait of ``max_upload_bytes``
    in base64 and the JSON around them."""
    return MAX_SDP_CHARS + 4 * -(-max_upload_bytes // 3) + MAX_TEXT_BYTES


def parse_offer(body: object, token: str | None, max_upload_bytes: int) -> Offer:
    """The offer in a ``POST /webrtc/offer`` body (already parsed JSON); SignallingError when it is not one,
    when ``token`` is set and the body's ``token`` does not match it, or when its ``portrait`` is not base64
    or decodes to more than ``max_upload_bytes`` (the image itself is checked by :func:`decode_upload`)."""
    if not isinstance(body, dict):
        raise SignallingError(400, "bad_request", "expected a JSON object {token, type, sdp}")
    given = body.get("token", "")
    if not isinstance(given, str):
        raise SignallingError(400, "bad_request", "field 'token' must be str")
    if token is not None and not hmac.compare_digest(given.encode("utf-8", "replace"), token.encode()):
        raise SignallingError(401, "unauthorized", "wrong or missing access token")
    sdp = body.get("sdp")
    if body.get("type") != "offer" or not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise SignallingError(400, "bad_request", "expected {'type': 'offer', 'sdp': 'v=0...'}")
    if len(sdp) > MAX_SDP_CHARS:
        raise SignallingError(400, "bad_request", f"the offer has {len(sdp)} characters, more than {MAX_SDP_CHARS}")
    portrait = body.get("portrait")
    if portrait is None:
        return Offer(RTCSessionDescription(sdp=sdp, type="offer"))
    if not isinstance(portrait, str):
        raise SignallingError(400, "bad_request", f"field 'portrait' must be base64 str, got {type(portrait).__name__}")
    try:
        data = base64.b64decode(portrait.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise SignallingError(400, "bad_request", "field 'portrait' is not base64") from None
    if not data:
        raise SignallingError(400, "bad_request", "field 'portrait' is empty")
    try:
        check_upload_size(len(data), max_upload_bytes)
    except ProtocolError as error:
        raise SignallingError.of(error) from None
    return Offer(RTCSessionDescription(sdp=sdp, type="offer"), data)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request's body, at most ``limit`` bytes (SignallingError ``too_large`` beyond)."""
    too_large = SignallingError(413, "too_large", f"the offer's body is over {limit} bytes (a portrait may have "
                                                  f"{limit // 4 * 3 - MAX_SDP_CHARS} bytes at most, in base64)")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


@dataclass
class SentMedia:
    """What the two outgoing tracks handed to the encoders: frames (index and RTP-clock pts) and audio samples."""

    frame_pts: list[int] = field(default_factory=list)
    audio_samples: int = 0
    audio_blocks: int = 0


class Playout:
    """The one origin both outgoing tracks are paced against (set by the first frame), and how far the video
    has gone: sample ``k`` may leave only once the frame covering it has."""

    def __init__(self, fps: float):
        self.fps = fps
        self.origin: float | None = None
        self.video_end_s = 0.0
        self.advanced = asyncio.Event()

    def frame_ready(self, now: float, pts: float) -> None:
        """The frame at ``pts`` (seconds) is at hand at ``now`` (loop clock): the first sets the origin; one
        that comes later than its time moves the origin by its lateness, for both tracks (the playout waits
        for the engine instead of sending a frame late, so both tracks' timestamps keep mapping onto the
        same send times and the receiver's lip sync holds; the wait becomes delay)."""
        if self.origin is None or now > self.origin + pts:
            self.origin = now - pts

    def video_out(self, pts: float) -> None:
        """Frame at ``pts`` (seconds) left; its interval ends at ``pts + 1 / fps``."""
        self.video_end_s = max(self.video_end_s, pts + 1 / self.fps)
        self.advanced.set()

    async def until(self, media_s: float) -> None:
        """Sleep until ``media_s`` on the playout clock (the origin must be set)."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, self.origin + media_s - loop.time()))


class AvatarVideoTrack(MediaStreamTrack):
    """The session's frames as a video track: RGB frames at ``pts = index / fps`` (90 kHz RTP clock)."""

    kind = "video"

    def __init__(self, live: LiveSession, playout: Playout, sent: SentMedia, executor):
        super().__init__()
        self.live, self.playout, self.sent, self.executor = live, playout, sent, executor

    def _next(self):
        while self.readyState == "live":
            try:
                return self.live.next_frame(timeout=_POLL_S)
            except queue.Empty:
                continue
        return None

    async def recv(self) -> av.VideoFrame:
        loop = asyncio.get_running_loop()
        frame = await loop.run_in_executor(self.executor, self._next)
        if frame is None:
            self.stop()
            raise MediaStreamError
        self.playout.frame_ready(loop.time(), frame.pts)
        await self.playout.until(frame.pts)
        video = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame.image), format="rgb24")
        video.pts = round(frame.pts * VIDEO_CLOCK_HZ)
        video.time_base = fractions.Fraction(1, VIDEO_CLOCK_HZ)
        self.sent.frame_pts.append(video.pts)
        self.playout.video_out(frame.pts)
        return video


class AvatarAudioTrack(MediaStreamTrack):
    """The session's audio timeline as an audio track: 20 ms blocks of 16 kHz mono, ``pts`` = sample index,
    never ahead of the video already out (so a barge-in's dropped speech is never heard)."""

    kind = "audio"

    def __init__(self, live: LiveSession, playout: Playout, sent: SentMedia):
        super().__init__()
        self.live, self.playout, self.sent = live, playout, sent
        self.next_sample = 0

    async def recv(self) -> av.AudioFrame:
        start, count = self.next_sample, AUDIO_BLOCK_SAMPLES
        end_s = (start + count) / ENGINE_SAMPLE_RATE
        while self.playout.origin is None or self.playout.video_end_s < end_s:
            if self.readyState != "live":
                raise MediaStreamError
            self.playout.advanced.clear()
            try:
                await asyncio.wait_for(self.playout.advanced.wait(), _POLL_S)
            except asyncio.TimeoutError:
                pass
        await self.playout.until(start / ENGINE_SAMPLE_RATE)
        with self.live.audio_lock:
            kept = self.live.audio_out
            pcm = kept.read(start, count)
            kept.forget_before(start + count)
        block = np.zeros(count, np.int16)
        block[:pcm.size] = np.clip(np.round(pcm * 32768.0), -32768, 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = ENGINE_SAMPLE_RATE
        frame.pts = start
        frame.time_base = fractions.Fraction(1, ENGINE_SAMPLE_RATE)
        self.next_sample = start + count
        self.sent.audio_samples = self.next_sample
        self.sent.audio_blocks += 1
        return frame


class WebRtcSession:
    """One peer connection and the live session behind it (see the module's description)."""

    def __init__(self, hub: SessionHub, session_id: str, registry: set):
        self.hub, self.session_id, self.registry = hub, session_id, registry
        ice = [RTCIceServer(urls=url) for url in hub.config.ice_servers]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        self.live: LiveSession | None = None
        self.portrait: Portrait | None = None
        self.sent = SentMedia()
        self.mic_samples = 0
        self.tasks: list[asyncio.Task] = []
        self.closed = False
        self.control = None
        self.microphone: asyncio.Task | None = None

    async def answer(self, offer: RTCSessionDescription, image: np.ndarray | None = None) -> RTCSessionDescription:
        """Build the session on ``image`` (uint8 RGB [H, W, 3]; None: the sample portrait), attach the tracks,
        answer ``offer`` (ICE gathered: the answer is complete)."""
        loop = asyncio.get_running_loop()
        self.live, portrait, _ = await loop.run_in_executor(self.hub.executor, self.hub.build, self.session_id, image,
                                                            True, True)  # always-on, keeping its audio
        self.portrait = portrait
        playout = Playout(self.live.session.fps)
        self.pc.addTrack(AvatarAudioTrack(self.live, playout, self.sent))
        self.pc.addTrack(AvatarVideoTrack(self.live, playout, self.sent, self.hub.executor))
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_state)
        try:
            await self.pc.setRemoteDescription(offer)
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except Exception as exc:  # aiortc's SDP parsing raises ValueError, KeyError, its own errors...
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise SignallingError(400, "bad_request", f"the offer cannot be answered ({reason})") from None
        self.tasks.append(asyncio.ensure_future(self._connect_deadline()))
        return self.pc.localDescription

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self.microphone is None:
            self.microphone = asyncio.ensure_future(self._microphone(track))
            self.tasks.append(self.microphone)

    async def _microphone(self, track: MediaStreamTrack) -> None:
        """Push the incoming audio track into the session, as 16 kHz mono float32."""
        resampler = av.AudioResampler(format="flt", layout="mono", rate=ENGINE_SAMPLE_RATE)
        try:
            while True:
                frame = await track.recv()
                for out in resampler.resample(frame):
                    pcm = out.to_ndarray().reshape(-1).astype(np.float32)
                    self.live.push_audio(pcm)
                    self.mic_samples += pcm.size
        except MediaStreamError:
            return

    def _on_datachannel(self, channel) -> None:
        if channel.label != "control" or self.control is not None:
            return
        self.control = channel
        channel.on("message", self._on_control)
        if channel.readyState == "open":
            self._send_ready()
        else:
            channel.on("open", self._send_ready)
        self.tasks.append(asyncio.ensure_future(self._stats_loop()))

    def _send(self, message: dict) -> None:
        if self.control is not None and self.control.readyState == "open":
            self.control.send(json.dumps(message))

    def _send_ready(self) -> None:
        live, config = self.live, self.hub.config
        self._send({"type": "ready", "session": self.session_id, "fps": live.session.fps,
                    "size": live.session.size, "face_detected": bool(self.portrait.detected),
                    "model": config.model, "untrained": self.hub.untrained,
                    "steps": config.options.steps, "idle_steps": live.idle_steps, "policy": config.policy.kind,
                    "ttff_floor_s": live.stats.ttff_floor_s, "latency_floor_s": live.stats.latency_floor_s})

    def _on_control(self, data: object) -> None:
        try:
            message = json.loads(data) if isinstance(data, str) else None
        except ValueError:
            message = None
        if not isinstance(message, dict) or message.get("type") != "interrupt":
            self._send({"type": "error", "code": "bad_request", "message": "the control channel takes "
                                                                           "{\"type\": \"interrupt\"} only"})
            return
        self._send({"type": "interrupted", **dataclasses.asdict(self.live.interrupt())})

    def stats(self) -> dict:
        """The session's figures as the ``stats`` message carries them."""
        s = self.live.stats.summary()
        return {"frames_out": s["frames_out"], "frames_skipped": s["frames_skipped"], "frames_idle": s["frames_idle"],
                "sustained_fps": s["sustained_fps"], "latency_p50_s": s["latency_s"]["median"],
                "latency_p95_s": s["latency_s"]["p95"], "microphone_s": self.mic_samples / ENGINE_SAMPLE_RATE,
                "video_frames_sent": len(self.sent.frame_pts), "audio_samples_sent": self.sent.audio_samples,
                "sessions": self.hub.active}

    async def _stats_loop(self) -> None:
        while not self.closed:
            await asyncio.sleep(1.0)
            self._send({"type": "stats", "stats": self.stats()})

    async def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            await self.close()

    async def _connect_deadline(self) -> None:
        await asyncio.sleep(self.hub.config.start_timeout_s)
        if self.pc.connectionState != "connected":
            log.info("WebRTC session %s did not connect within %g s", self.session_id,
                     self.hub.config.start_timeout_s)
            await self.close()

    async def close(self) -> None:
        """Close the peer connection, stop the session and free its slot (idempotent)."""
        if self.closed:
            return
        self.closed = True
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        await self.pc.close()
        await asyncio.get_running_loop().run_in_executor(self.hub.executor, self.hub.release, self.session_id)
        self.registry.discard(self)


async def offer_handler(request: web.Request, hub: SessionHub, registry: set) -> web.Response:
    """``POST /webrtc/offer``: start a session for the offer and answer it (see the module's description)."""
    config = hub.config
    busy = SignallingError(503, "busy", f"the server is at its limit of {config.max_sessions} sessions")
    try:
        if hub.active >= config.max_sessions:
            raise busy
        client = client_key(request.remote)
        try:
            admit_upload(hub.uploads, client)
        except ProtocolError as error:
            raise SignallingError.of(error) from None
        try:
            data = await asyncio.wait_for(read_body(request, offer_body_limit(config.max_upload_bytes)),
                                          config.start_timeout_s)
        except asyncio.TimeoutError:
            raise SignallingError(408, "timeout", f"no offer within {config.start_timeout_s:g} s") from None
        finally:
            hub.uploads.finish(client)
        try:
            body = json.loads(data)
        except (ValueError, RecursionError):
            raise SignallingError(400, "bad_request", "the body is not JSON") from None
        offer = parse_offer(body, config.token, config.max_upload_bytes)
        session_id = hub.reserve()
        if session_id is None:
            raise busy
        session = WebRtcSession(hub, session_id, registry)
        registry.add(session)
        try:
            image = None
            if offer.portrait is not None:
                try:
                    image = await asyncio.get_running_loop().run_in_executor(hub.executor, decode_upload,
                                                                             offer.portrait)
                except ProtocolError as error:
                    raise SignallingError.of(error) from None
            answer = await session.answer(offer.description, image)
        except BaseException:
            await session.close()
            raise
    except SignallingError as error:
        return web.json_response({"error": error.code, "message": error.message}, status=error.status)
    return web.json_response({"type": answer.type, "sdp": answer.sdp})


async def close_all(registry: set) -> None:
    """Close every WebRTC session (the server is stopping)."""
    await asyncio.gather(*(session.close() for session in list(registry)), return_exceptions=True)

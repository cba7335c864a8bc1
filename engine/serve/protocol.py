"""The session protocol spoken over the ``/session`` WebSocket.

Client -> server
    1. text ``{"type": "start", "token": str, "portrait": "sample" | "upload", "portrait_bytes": int,
       "sample_rate": int, "frames": "jpeg" | "png" | "raw", "jpeg_quality": int, "always_on": bool}``; with
       ``"upload"`` the next message is binary: the image file, exactly ``portrait_bytes`` long. With
       ``"always_on": true`` frames come at the stream's fps whether or not audio arrives (silence is idle
       motion; audio is placed on the session's clock as it arrives), until ``end``.
    2. binary audio: 16-bit little-endian mono PCM at ``sample_rate`` Hz, any block size.
    3. text ``{"type": "end"}``: the utterance is over (its remaining frames follow, then ``done``);
       after ``done``, text ``{"type": "reset"}`` starts a new utterance with the same portrait.
    4. text ``{"type": "interrupt"}`` (always-on sessions, before ``end``): barge-in. The audio not yet
       shown is dropped and the face goes back to idle from the next frame; answered by ``interrupted``.
    Closing the socket ends the session at any time and frees everything it held. Limits: a text
    message :data:`MAX_TEXT_BYTES`, an audio message :data:`MAX_AUDIO_SECONDS_PER_MESSAGE` of audio,
    the upload the server's ``max_upload_bytes``; the start (and upload) within its start timeout.
    An announced upload waits outside the session limit, in a bound of its own: at most the server's
    ``max_pending_uploads`` at once (more: ``busy``) and ``max_pending_uploads_per_client`` from one
    address (more: ``too_many_uploads``); a session slot is taken once the image has arrived.

Server -> client
    - text ``{"type": "ready", "protocol": 1, "session": str, "fps": float, "size": int, "sample_rate": 16000,
      "face_detected": bool, "model": str, "untrained": bool (a preset's seeded random weights),
      "steps": int, "policy": str, "prepare_s": float (portrait + reference bank), "ttff_floor_s": float,
      "latency_floor_s": float}``: the session exists (after a ``reset`` too); send audio. On Ray Serve
      (:mod:`engine.serve.ray_app`) it and ``stats`` also carry ``"replica": str``, the serving replica.
    - binary frames: a 16-byte header (:data:`FRAME_HEADER`: frame index u32, presentation time
      f64 seconds, side u16 pixels, format u8, flags u8 with bit 0 = skipped, bit 1 = idle: made from
      silence), then the image:
      JPEG, PNG (lossless) or raw RGB bytes (side x side x 3), as asked in ``start``.
      With ``always_on`` it also carries ``"always_on": true, "idle_steps": int`` (sampler steps of a clip
      made from silence).
    - text ``{"type": "stats", "stats": {...}}`` about once a second (the engine's own measures).
    - text ``{"type": "interrupted", "frame": int, "pts": float, "speech_samples": int, "speech_s": float}``
      after ``interrupt``: frames from index ``frame`` (time ``pts``) on are made from silence; the speech
      dropped, in 16 kHz samples and seconds.
    - text ``{"type": "done", "stats": {...}}`` after the last frame of an utterance.
    - text ``{"type": "error", "code": str, "message": str}``, then the socket closes with the
      matching close code (:data:`CLOSE_CODES`). An error closes only that session.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from engine.timebase import SAMPLE_RATE

PROTOCOL_VERSION = 1
ENGINE_SAMPLE_RATE = SAMPLE_RATE
"""The rate sessions run at; a client's audio at another rate is resampled to it."""
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 192000
MAX_TEXT_BYTES = 4096
MAX_AUDIO_SECONDS_PER_MESSAGE = 1.0

FRAME_HEADER = struct.Struct("<IdHBB")
FRAME_FORMATS = {"jpeg": 0, "png": 1, "raw": 2}
FLAG_SKIPPED = 1
FLAG_IDLE = 2

CLOSE_CODES = {
    "bad_request": 4400,
    "unauthorized": 4401,
    "too_large": 4413,
    "bad_image": 4415,
    "busy": 4503,
    "backlog": 4429,
    "too_many_uploads": 4409,
    "timeout": 4408,
    "internal": 1011,
    "shutdown": 1001,
}


class ProtocolError(Exception):
    """A message that breaks the protocol; ``code`` is a key of :data:`CLOSE_CODES`, the message one line."""

    def __init__(self, code: str, message: str):
        if code not in CLOSE_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def close_code(self) -> int:
        """The WebSocket close code sent with this error."""
        return CLOSE_CODES[self.code]


@dataclass(frozen=True)
class StartRequest:
    """A parsed ``start`` message."""

    token: str
    portrait: str
    portrait_bytes: int
    sample_rate: int
    frames: str
    jpeg_quality: int
    always_on: bool = False


def _field(message: dict, name: str, kind: type | tuple[type, ...], default: object) -> object:
    value = message.get(name, default)
    if isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ProtocolError("bad_request", f"field {name!r} must be {names}, got {type(value).__name__}")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError("bad_request", f"field {name!r} is not valid Unicode (a lone surrogate)") from None
    return value


def parse_text(data: str) -> dict:
    """A text message as a JSON object with a string ``type``; ProtocolError otherwise."""
    if len(data) > MAX_TEXT_BYTES:
        raise ProtocolError("too_large", f"text message of {len(data)} characters exceeds {MAX_TEXT_BYTES}")
    try:
        message = json.loads(data)
    except ValueError:
        raise ProtocolError("bad_request", "malformed message: not JSON") from None
    except RecursionError:
        raise ProtocolError("bad_request", "malformed message: nested too deeply") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("bad_request", "malformed message: expected a JSON object with a 'type'")
    return message


def parse_start(message: dict, max_upload_bytes: int) -> StartRequest:
    """Check a ``start`` message's fields and limits (the upload's declared size among them)."""
    if message["type"] != "start":
        raise ProtocolError("bad_request", f"expected a 'start' message first, got {message['type']!r}")
    token = _field(message, "token", str, "")
    portrait = _field(message, "portrait", str, "sample")
    if portrait not in ("sample", "upload"):
        raise ProtocolError("bad_request", f"portrait must be 'sample' or 'upload', got {portrait!r}")
    size = _field(message, "portrait_bytes", int, 0)
    if portrait == "upload":
        if size <= 0:
            raise ProtocolError("bad_request", "an upload needs 'portrait_bytes' > 0")
        check_upload_size(size, max_upload_bytes)
    rate = _field(message, "sample_rate", int, ENGINE_SAMPLE_RATE)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ProtocolError("bad_request", f"sample_rate must be {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz, got {rate}")
    frames = _field(message, "frames", str, "jpeg")
    if frames not in FRAME_FORMATS:
        raise ProtocolError("bad_request", f"frames must be one of {', '.join(FRAME_FORMATS)}, got {frames!r}")
    quality = _field(message, "jpeg_quality", int, 85)
    if not 10 <= quality <= 100:
        raise ProtocolError("bad_request", f"jpeg_quality must be 10-100, got {quality}")
    always_on = message.get("always_on", False)
    if not isinstance(always_on, bool):
        raise ProtocolError("bad_request", f"field 'always_on' must be bool, got {type(always_on).__name__}")
    return StartRequest(token=token, portrait=portrait, portrait_bytes=size if portrait == "upload" else 0,
                        sample_rate=rate, frames=frames, jpeg_quality=quality, always_on=always_on)


def check_upload_size(size: int, max_upload_bytes: int) -> None:
    """ProtocolError ``too_large`` when a portrait of ``size`` bytes is over the server's upload limit."""
    if size > max_upload_bytes:
        shown = f"{size / 2**20:.1f} MiB" if size < 2**60 else "more than an EiB"
        raise ProtocolError("too_large", f"portrait of {shown} exceeds the "
                                         f"{max_upload_bytes / 2**20:.1f} MiB upload limit")


def max_audio_bytes(sample_rate: int) -> int:
    """The largest audio message accepted: :data:`MAX_AUDIO_SECONDS_PER_MESSAGE` of 16-bit mono."""
    return int(sample_rate * MAX_AUDIO_SECONDS_PER_MESSAGE) * 2


def pack_frame(index: int, pts: float, side: int, frame_format: str, skipped: bool, payload: bytes,
               idle: bool = False) -> bytes:
    """One binary frame message: header + encoded image."""
    flags = (FLAG_SKIPPED if skipped else 0) | (FLAG_IDLE if idle else 0)
    return FRAME_HEADER.pack(index, pts, side, FRAME_FORMATS[frame_format], flags) + payload


@dataclass(frozen=True)
class FrameMessage:
    """A decoded binary frame message (client side; the tests use it)."""

    index: int
    pts: float
    side: int
    frame_format: str
    skipped: bool
    payload: bytes
    idle: bool = False


def unpack_frame(data: bytes) -> FrameMessage:
    """Split a binary frame message into its header fields and payload."""
    if len(data) < FRAME_HEADER.size:
        raise ValueError(f"frame message of {len(data)} bytes is shorter than its header")
    index, pts, side, fmt, flags = FRAME_HEADER.unpack_from(data)
    names = {v: k for k, v in FRAME_FORMATS.items()}
    if fmt not in names:
        raise ValueError(f"unknown frame format {fmt}")
    return FrameMessage(index, pts, side, names[fmt], bool(flags & FLAG_SKIPPED), bytes(data[FRAME_HEADER.size:]),
                        bool(flags & FLAG_IDLE))


def error_message(error: ProtocolError) -> str:
    """The ``error`` text message for ``error``."""
    return json.dumps({"type": "error", "code": error.code, "message": error.message})


MAX_CLOSE_REASON_BYTES = 123
"""The longest close reason a WebSocket close frame carries (125 payload bytes, 2 of them the code)."""


def close_reason(error: ProtocolError) -> bytes:
    """The close frame's reason for ``error``: its message in UTF-8, cut at a character boundary to at most
    :data:`MAX_CLOSE_REASON_BYTES` (the whole message travels in the ``error`` text message)."""
    data = error.message.encode("utf-8", "replace")[:MAX_CLOSE_REASON_BYTES]
    return data.decode("utf-8", "ignore").encode("utf-8")

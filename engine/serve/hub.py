"""The server's shared state: one model and backend for every session, the session limit, session construction.

By default each session's denoise thread calls the shared backend on its own; with
``ServeConfig.batch_gather_ms`` set, the sessions share backbone calls through a
:class:`~engine.stream.batching.BatchScheduler` (one slot per session).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch

from engine import DEFAULT_MODEL
from engine.backends import make_backend
from engine.backends.base import Backend
from engine.config import ModelConfig
from engine.faces import Portrait, prepare_portrait
from engine.limits import THREADS_LIMITS
from engine.media import load_image
from engine.options import GenerationOptions
from engine.pipeline import is_untrained_preset, open_model
from engine.sampling.guidance import GuidanceScales, branches_needed
from engine.stream.batching import BatchScheduler, SlotBackend
from engine.stream.runner import LagPolicy, LiveSession
from engine.stream.session import Session

SAMPLE_PORTRAIT = Path(__file__).resolve().parents[1] / "assets" / "demo" / "portrait.png"
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def _default_options() -> GenerationOptions:
    return GenerationOptions(first_clip_frames=4)


def _default_policy() -> LagPolicy:
    return LagPolicy("skip", max_lag_s=1.0)


@dataclass(frozen=True)
class ServeConfig:
    """What ``emote serve`` was started with.

    Attributes:
        host, port: where to listen (loopback by default; port 0 picks a free one).
        model, device, backend: what to load once at start (a preset or a model directory).
        threads: on the CPU, the intra-op threads of the backend's compute thread (None: torch's count).
        max_sessions: sessions at once; one more is refused with a ``busy`` error. A session holds its slot
            from the moment its portrait is known (at ``start`` for the sample, once an upload has arrived).
        max_pending_uploads: portrait uploads announced but not yet received, at once (they hold no session
            slot); one more is refused with ``busy``.
        max_pending_uploads_per_client: of those, from one client address (an IPv6 address's /64 counts as
            one); one more is refused with ``too_many_uploads``.
        token: when set, a session's ``start`` message must carry it.
        max_upload_bytes: the largest portrait upload.
        size: the portrait side in pixels (None: the model's resolution).
        options, policy: generation options and the lag policy of every session.
        max_backlog_s: audio received but not yet turned into frames beyond this closes the session.
        start_timeout_s: a connection must send its ``start`` (and upload) within this.
        heartbeat_s: WebSocket ping interval; a peer that stops answering is dropped.
        batch_gather_ms: None (default): no session batching. A number: the sessions' backbone calls are
            batched (``max_sessions`` slots, every call at that fixed batch), each tick waiting at most this
            many milliseconds for sessions that have no call pending.
        allowed_hosts: Host names (lower case, no port) requests may carry besides the loopback names on a
            loopback bind; on another bind, when given, the only ones accepted (:meth:`host_allowed`).
        open_server: the operator accepts a non-loopback bind without a token (:meth:`exposure_error`).
        webrtc: also serve WebRTC sessions (``POST /webrtc/offer``, :mod:`engine.serve.webrtc`; needs aiortc).
        ice_servers: STUN/TURN URLs the server's WebRTC side gathers candidates with (none: host candidates
            only, enough on one machine or a LAN).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    model: str = DEFAULT_MODEL
    device: str = "cpu"
    backend: str = "torch"
    threads: int | None = None
    max_sessions: int = 4
    token: str | None = None
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pending_uploads: int = 8
    max_pending_uploads_per_client: int = 2
    size: int | None = None
    options: GenerationOptions = field(default_factory=_default_options)
    policy: LagPolicy = field(default_factory=_default_policy)
    max_backlog_s: float = 30.0
    start_timeout_s: float = 10.0
    heartbeat_s: float = 20.0
    batch_gather_ms: float | None = None
    allowed_hosts: tuple[str, ...] = ()
    open_server: bool = False
    webrtc: bool = False
    ice_servers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {self.max_sessions}")
        if self.max_upload_bytes < 1024:
            raise ValueError(f"max_upload_bytes must be at least 1024, got {self.max_upload_bytes}")
        if self.max_pending_uploads < 1 or self.max_pending_uploads_per_client < 1:
            raise ValueError(f"max_pending_uploads and max_pending_uploads_per_client must be at least 1, got "
                             f"{self.max_pending_uploads} and {self.max_pending_uploads_per_client}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0-65535, got {self.port}")
        if self.token is not None and not self.token:
            raise ValueError("the access token must not be empty")
        if self.threads is not None and not THREADS_LIMITS[0] <= self.threads <= THREADS_LIMITS[1]:
            raise ValueError(f"threads must be {THREADS_LIMITS[0]}-{THREADS_LIMITS[1]}, got {self.threads}")
        if self.batch_gather_ms is not None and self.batch_gather_ms < 0:
            raise ValueError(f"batch_gather_ms must be >= 0, got {self.batch_gather_ms}")

    @property
    def loopback(self) -> bool:
        """True when the server listens on this machine only."""
        return self.host in LOOPBACK_HOSTS or self.host.startswith("127.")

    def host_allowed(self, host: str | None) -> bool:
        """Whether a request's ``Host`` header (``name[:port]``) names this server.

        On a loopback bind only the loopback names and ``allowed_hosts`` are accepted, so a page whose
        DNS name was rebound to 127.0.0.1 gets nothing; on another bind any name is, unless
        ``allowed_hosts`` lists them.
        """
        try:
            name = urlsplit(f"//{host}").hostname if host else None
        except ValueError:
            return False
        allowed = set(self.allowed_hosts) | (set(LOOPBACK_HOSTS) if self.loopback else set())
        return name is not None and (not allowed or name in allowed)

    def exposure_error(self) -> str | None:
        """Why the server must not start as configured (one line), or None: a non-loopback bind needs a
        token unless ``open_server`` says the operator accepts anyone who can reach the port."""
        if self.loopback or self.token is not None or self.open_server:
            return None
        return (f"listening on {self.host} without a token lets anyone who can reach the port start sessions: "
                "give --token, --token-file or $EMOTE_TOKEN (or --open-server to accept that)")


def client_key(address: str | None) -> str:
    """The name one client's pending uploads are counted under: its IP address, or for IPv6 the address's
    /64 network (one host commonly holds a whole /64); an address that is not an IP is its own name."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return address or "unknown"
    if ip.version == 4:
        return str(ip)
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


class PendingUploads:
    """Portrait uploads announced in a ``start`` but not yet received: at most ``total`` at once, and at most
    ``per_client`` under one :func:`client_key`. Thread-safe."""

    def __init__(self, total: int, per_client: int):
        self.total, self.per_client = total, per_client
        self._lock = threading.Lock()
        self._by_client: dict[str, int] = {}

    @property
    def count(self) -> int:
        """Uploads pending now."""
        with self._lock:
            return sum(self._by_client.values())

    def admit(self, client: str) -> str | None:
        """Count one more pending upload from ``client``: None when admitted (call :meth:`finish` once it has
        arrived or failed), else which bound is full, ``"total"`` or ``"client"`` (nothing counted)."""
        with self._lock:
            if sum(self._by_client.values()) >= self.total:
                return "total"
            held = self._by_client.get(client, 0)
            if held >= self.per_client:
                return "client"
            self._by_client[client] = held + 1
            return None

    def finish(self, client: str) -> None:
        """One of ``client``'s admitted uploads is no longer pending."""
        with self._lock:
            held = self._by_client.pop(client) - 1
            if held:
                self._by_client[client] = held


class SessionHub:
    """Holds the shared backend and the live sessions; thread-safe.

    A session slot is reserved (:meth:`reserve`) once the session's portrait is at hand (the sample, or an
    upload that has arrived), so the limit bounds the work of decoding and preparing portraits while a
    client that announces an upload and never sends it holds no slot: uploads on their way are bounded
    apart (:attr:`uploads`). :meth:`build` makes the session in the slot and :meth:`release` frees it.
    """

    def __init__(self, backend: Backend, model_config: ModelConfig, config: ServeConfig,
                 sample: Path = SAMPLE_PORTRAIT):
        config = dataclasses.replace(config, options=config.options.with_model_defaults(model_config.sampling))
        self.backend, self.model_config, self.config = backend, model_config, config
        self.size = config.size or model_config.resolution
        self.untrained = is_untrained_preset(config.model)
        self.sample = prepare_portrait(load_image(sample), self.size)
        self.executor = ThreadPoolExecutor(max_workers=config.max_sessions + 2, thread_name_prefix="emote-serve")
        self.scheduler = None if config.batch_gather_ms is None else BatchScheduler(
            backend, slots=config.max_sessions, gather_s=config.batch_gather_ms / 1000)
        self._lock = threading.Lock()
        self._slots: dict[str, LiveSession | None] = {}
        self.sessions_served = 0
        self.uploads = PendingUploads(config.max_pending_uploads, config.max_pending_uploads_per_client)

    @classmethod
    def load(cls, config: ServeConfig) -> SessionHub:
        """Load ``config.model`` once onto ``config.device`` and make the hub around it."""
        model = open_model(config.model)
        dtype = torch.float16 if config.device.startswith("cuda") else torch.float32
        generation = config.options.with_model_defaults(model.config.sampling)
        hub = cls(make_backend(config.backend, model, config.device, dtype, threads=config.threads,
                               generation=generation), model.config, config)
        hub.prepare_backend()
        return hub

    def prepare_backend(self) -> None:
        """Let the backend make ahead what the sessions' first calls would (:meth:`Backend.prepare`: the torchscript
        backend's traces) for one guidance batch, or every batch the scheduler may gather."""
        branches = len(branches_needed(GuidanceScales.of(self.config.options)))
        self.backend.prepare(self.size, None if self.scheduler is not None else branches)

    @property
    def active(self) -> int:
        """Slots in use (sessions being prepared or running)."""
        with self._lock:
            return len(self._slots)

    def reserve(self) -> str | None:
        """A new session id holding a slot, or None when ``max_sessions`` are in use."""
        with self._lock:
            if len(self._slots) >= self.config.max_sessions:
                return None
            session_id = secrets.token_hex(6)
            self._slots[session_id] = None
            return session_id

    def build(self, session_id: str, image: np.ndarray | None, always_on: bool = False,
              keep_audio: bool = False) -> tuple[LiveSession, Portrait, float]:
        """The live session for slot ``session_id``: the sample portrait (``image`` None) or ``image``;
        ``always_on``: frames at the stream's fps whether or not audio arrives; ``keep_audio``: the session
        keeps its audio timeline for playback beside the frames (both: :class:`LiveSession`).

        Returns the session, the prepared portrait and the seconds it took (portrait + reference bank).
        Blocking (face detection, VAE encoding, ReferenceNet): call it from a worker thread.
        """
        started = time.perf_counter()
        portrait = self.sample if image is None else prepare_portrait(image, self.size)
        backend = self.backend if self.scheduler is None else self.scheduler.attach()
        try:
            session = Session(backend, self.model_config, portrait.image, portrait.mask, self.config.options)
        except BaseException:
            _detach(backend)
            raise
        live = LiveSession(session, self.config.policy, always_on=always_on, keep_audio=keep_audio)
        with self._lock:
            if session_id not in self._slots:
                _close(live)
                raise RuntimeError(f"session {session_id} was released while it was being built")
            self._slots[session_id] = live
            self.sessions_served += 1
        return live, portrait, time.perf_counter() - started

    def release(self, session_id: str) -> None:
        """Close slot ``session_id``'s session (if any) and free the slot. Blocking; idempotent.

        The session's memory is freed once its last holder lets go of it; that holder then calls
        :func:`trim_allocator` (the connection does, :meth:`engine.serve.connection.SessionConnection.run`).
        With batching, a built session keeps its hub slot until its batching slot is given back, so that a
        session admitted in its place always finds a free batching slot.
        """
        if self.scheduler is None:
            with self._lock:
                live = self._slots.pop(session_id, None)
            if live is not None:
                live.close()
            return
        with self._lock:
            live = self._slots.get(session_id)
            if live is None:
                self._slots.pop(session_id, None)
                return
        _close(live)
        with self._lock:
            self._slots.pop(session_id, None)

    def close(self) -> None:
        """Close every session and stop the worker threads."""
        with self._lock:
            ids = list(self._slots)
        for session_id in ids:
            self.release(session_id)
        self.executor.shutdown(wait=True)
        if self.scheduler is not None:
            self.scheduler.close()


def _detach(backend: Backend) -> None:
    """Give a batching slot back (nothing for the plain backend)."""
    if isinstance(backend, SlotBackend):
        backend.detach()


def _close(live: LiveSession) -> None:
    """Stop a live session's workers, then give its batching slot back."""
    live.close()
    _detach(live.session.backend)

"""The aiohttp application: one page (a fixed set of files held in memory) and the ``/session`` WebSocket.

No request path is ever joined to a directory: the page's files are read once, at start, from a
fixed table, and every other path is a 404. The WebSocket refuses cross-site origins (a page on
another site cannot drive a session in the visitor's browser), and every request must name the
server by a Host it answers to (on a loopback bind, a loopback name: no DNS rebinding).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
import weakref
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from engine.allocator import tune_allocator
from engine.serve.connection import SessionConnection
from engine.serve.hub import SAMPLE_PORTRAIT, ServeConfig, SessionHub
from engine.serve.protocol import MAX_SAMPLE_RATE, max_audio_bytes

STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE_FILES = {
    "/": (STATIC_DIR / "index.html", "text/html; charset=utf-8"),
    "/app.js": (STATIC_DIR / "app.js", "text/javascript; charset=utf-8"),
    "/pcm-worklet.js": (STATIC_DIR / "pcm-worklet.js", "text/javascript; charset=utf-8"),
    "/style.css": (STATIC_DIR / "style.css", "text/css; charset=utf-8"),
    "/sample.png": (SAMPLE_PORTRAIT, "image/png"),
}
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
                           "connect-src 'self'; media-src 'self' blob:; object-src 'none'; base-uri 'none'; "
                           "frame-ancestors 'none'; form-action 'none'")
HUB_KEY = web.AppKey("hub", SessionHub)
SOCKETS_KEY = web.AppKey("sockets", weakref.WeakSet)
WEBRTC_KEY = web.AppKey("webrtc", set)
"""The open WebRTC sessions (:class:`engine.serve.webrtc.WebRtcSession`) of an application serving WebRTC."""


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Permissions-Policy": "microphone=(self), camera=()",
}


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Headers on every answer the application makes, errors (404, 400, 403, 405) included: no sniffing,
    no framing, no referrer, no caching, the page's CSP (an ``on_response_prepare`` signal)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


class GuardedRequest(web.Request):
    """A request whose every answer carries :data:`SECURITY_HEADERS`, including the 400 aiohttp itself sends
    for malformed HTTP: that answer is made before routing, so the application's ``on_response_prepare``
    signal never sees it (:func:`start_site` makes the server build its requests of this class)."""

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        await security_headers(self, response)
        await super()._prepare_hook(response)


UNKNOWN_HOST = "unknown Host: this server answers to its own names only"
CROSS_ORIGIN = "cross-origin WebSocket refused"


def same_origin(origin: str | None, host: str | None) -> bool:
    """True when a request carries no ``Origin`` (not a browser page) or one naming the ``host:port`` of its
    ``Host`` header."""
    if origin is None:
        return True
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return host is not None and netloc.lower() == host.lower()


def refusal(config: ServeConfig, host: str | None, origin: str | None = None,
            websocket: bool = False) -> str | None:
    """Why a request must be refused (one line, answered with HTTP 403), or None.

    The one rule of both servers (aiohttp's and Ray Serve's): every request must name the server by a ``Host``
    it answers to (:meth:`ServeConfig.host_allowed`: on a loopback bind, a loopback name, so a page whose DNS
    name was rebound to 127.0.0.1 gets nothing); a WebSocket handshake's ``Origin``, when present, must name
    that same host:port.
    """
    if not config.host_allowed(host):
        return UNKNOWN_HOST
    if websocket and not same_origin(origin, host):
        return CROSS_ORIGIN
    return None


@web.middleware
async def known_host(request: web.Request, handler) -> web.StreamResponse:
    """Refuse (403) a request :func:`refusal` refuses; the WebSocket's Origin is checked by its handler."""
    reason = refusal(request.app[HUB_KEY].config, request.headers.get("Host"))
    if reason is not None:
        raise web.HTTPForbidden(text=reason + "\n")
    return await handler(request)


def _page_handler(body: bytes, content_type: str):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Content-Type": content_type})
    return handler


async def session_handler(request: web.Request) -> web.StreamResponse:
    """The ``/session`` WebSocket: one live session per connection."""
    hub = request.app[HUB_KEY]
    reason = refusal(hub.config, request.headers.get("Host"), request.headers.get("Origin"), websocket=True)
    if reason is not None:
        raise web.HTTPForbidden(text=reason + "\n")
    limit = max(hub.config.max_upload_bytes, max_audio_bytes(MAX_SAMPLE_RATE)) + 1
    ws = web.WebSocketResponse(max_msg_size=limit, heartbeat=hub.config.heartbeat_s)
    await ws.prepare(request)
    request.app[SOCKETS_KEY].add(ws)
    await SessionConnection(hub, ws, client=request.remote).run()
    return ws


async def _close_sockets(app: web.Application) -> None:
    for ws in list(app[SOCKETS_KEY]):
        await ws.close(code=1001, message=b"server shutting down")


def _webrtc_routes(app: web.Application, hub: SessionHub) -> None:
    """``POST /webrtc/offer`` (:mod:`engine.serve.webrtc`), same Host, Origin and token rules as the socket."""
    from engine.serve.webrtc import close_all, offer_handler

    sessions: set = set()
    app[WEBRTC_KEY] = sessions

    async def offer(request: web.Request) -> web.Response:
        if not same_origin(request.headers.get("Origin"), request.headers.get("Host")):
            return web.json_response({"error": "forbidden", "message": "cross-origin offer refused"}, status=403)
        return await offer_handler(request, hub, sessions)

    async def close(app: web.Application) -> None:
        await close_all(sessions)

    app.router.add_post("/webrtc/offer", offer)
    app.on_shutdown.append(close)


def make_app(hub: SessionHub) -> web.Application:
    """The application serving ``hub``'s sessions and the page (and WebRTC when ``hub.config.webrtc``)."""
    app = web.Application(middlewares=[known_host], client_max_size=64 * 1024)
    app.on_response_prepare.append(security_headers)
    app[HUB_KEY] = hub
    app[SOCKETS_KEY] = weakref.WeakSet()
    for path, (file, content_type) in PAGE_FILES.items():
        app.router.add_get(path, _page_handler(file.read_bytes(), content_type))
    app.router.add_get("/session", session_handler)
    if hub.config.webrtc:
        _webrtc_routes(app, hub)
    app.on_shutdown.append(_close_sockets)
    return app


SHUTDOWN_TIMEOUT_S = 5.0
"""On stop, how long open sessions' handlers may take to finish before they are cut (aiohttp's default: 60 s)."""


class OneLineFormatter(logging.Formatter):
    """A log record as one line, ``emote serve: message (ExceptionType: reason)``, never a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        exc = record.exc_info[1] if record.exc_info else None
        reason = f" ({type(exc).__name__}: {' '.join(str(exc).split())})" if exc is not None else ""
        return f"emote serve: {' '.join(record.getMessage().split())}{reason}"


def http_error_logger() -> logging.Logger:
    """A logger of its own (not registered with :mod:`logging`) for aiohttp's request errors (malformed HTTP,
    a handler's failure): one line each on stderr, INFO and above."""
    logger = logging.Logger("emote.serve.http", logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter())
    logger.addHandler(handler)
    return logger


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving ``app`` on ``host:port`` (0: a free port); returns the runner and the bound port.

    Every answer, aiohttp's own to malformed HTTP included, carries the security headers (:class:`GuardedRequest`);
    aiohttp's request errors are logged as one line each (:func:`http_error_logger`).
    """
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S,
                           logger=http_error_logger())
    await runner.setup()
    runner.server.request_factory = functools.partial(app._make_request, _cls=GuardedRequest)
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, bound


def page_url(host: str, port: int, token: str | None) -> str:
    """The address to open in a browser (the token rides in the fragment, which is never sent)."""
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::", "::1") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/" + (f"#token={token}" if token else "")


def run_server(config: ServeConfig) -> None:
    """Load the model, serve until Ctrl-C, then close every session; ValueError if the config exposes the
    server without a token (:meth:`ServeConfig.exposure_error`)."""
    if config.exposure_error() is not None:
        raise ValueError(config.exposure_error())
    tune_allocator()
    started = time.perf_counter()
    hub = SessionHub.load(config)
    print(f"emote serve: model {config.model} on {config.device} ready in {time.perf_counter() - started:.1f} s; "
          f"portraits {hub.size}x{hub.size}, {hub.config.options.steps} steps, policy {config.policy.kind}, "
          f"at most {config.max_sessions} sessions", file=sys.stderr)
    if not config.loopback and config.token is None:
        print(f"warning: listening on {config.host} without a token (--open-server): anyone who can reach "
              "this port can start sessions", file=sys.stderr)

    async def serve() -> None:
        runner, port = await start_site(make_app(hub), config.host, config.port)
        print(f"open {page_url(config.host, port, config.token)} in Chromium or Firefox (Ctrl-C stops)",
              file=sys.stderr, flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        print("emote serve: stopped", file=sys.stderr)
    finally:
        hub.close()

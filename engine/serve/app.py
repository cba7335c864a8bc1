"""The aiohttp application: one page (a fixed set of files held in memory) and the ``/session`` WebSocket.

No request path is ever joined to a directory: the page's files are read once, at start, from a
fixed table, and every other path is a 404. The WebSocket refuses cross-site origins (a page on
another site cannot drive a session in the visitor's browser).
"""

from __future__ import annotations

import asyncio
import sys
import time
import weakref
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

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


@web.middleware
async def security_headers(request: web.Request, handler) -> web.StreamResponse:
    """Headers on every answer: no sniffing, no framing, no referrer, no caching, the page's CSP."""
    response = await handler(request)
    if response.prepared:
        return response
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("Permissions-Policy", "microphone=(self), camera=()")
    return response


def _page_handler(body: bytes, content_type: str):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Content-Type": content_type})
    return handler


def same_origin(request: web.Request) -> bool:
    """True when the request carries no Origin (not a browser page) or one naming this server's host."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == request.host.lower()


async def session_handler(request: web.Request) -> web.StreamResponse:
    """The ``/session`` WebSocket: one live session per connection."""
    if not same_origin(request):
        raise web.HTTPForbidden(text="cross-origin WebSocket refused\n")
    hub = request.app[HUB_KEY]
    limit = max(hub.config.max_upload_bytes, max_audio_bytes(MAX_SAMPLE_RATE)) + 1
    ws = web.WebSocketResponse(max_msg_size=limit, heartbeat=hub.config.heartbeat_s)
    await ws.prepare(request)
    request.app[SOCKETS_KEY].add(ws)
    await SessionConnection(hub, ws).run()
    return ws


async def _close_sockets(app: web.Application) -> None:
    for ws in list(app[SOCKETS_KEY]):
        await ws.close(code=1001, message=b"server shutting down")


def make_app(hub: SessionHub) -> web.Application:
    """The application serving ``hub``'s sessions and the page."""
    app = web.Application(middlewares=[security_headers], client_max_size=64 * 1024)
    app[HUB_KEY] = hub
    app[SOCKETS_KEY] = weakref.WeakSet()
    for path, (file, content_type) in PAGE_FILES.items():
        app.router.add_get(path, _page_handler(file.read_bytes(), content_type))
    app.router.add_get("/session", session_handler)
    app.on_shutdown.append(_close_sockets)
    return app


SHUTDOWN_TIMEOUT_S = 5.0
"""On stop, how long open sessions' handlers may take to finish before they are cut (aiohttp's default: 60 s)."""


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving ``app`` on ``host:port`` (0: a free port); returns the runner and the bound port."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
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
    """Load the model, serve until Ctrl-C, then close every session."""
    started = time.perf_counter()
    hub = SessionHub.load(config)
    print(f"emote serve: model {config.model} on {config.device} ready in {time.perf_counter() - started:.1f} s; "
          f"portraits {hub.size}x{hub.size}, {config.options.steps} steps, policy {config.policy.kind}, "
          f"at most {config.max_sessions} sessions", file=sys.stderr)
    if not config.loopback and config.token is None:
        print(f"warning: listening on {config.host} without --token: anyone who can reach this port can "
              "start sessions", file=sys.stderr)

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

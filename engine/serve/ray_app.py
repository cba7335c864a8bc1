"""The live server on Ray Serve: N replicas, each holding one :class:`SessionHub` (one loaded model).

The same ``/session`` WebSocket protocol (:mod:`engine.serve.protocol`) and the same session code
(:class:`engine.serve.connection.SessionConnection`) as ``emote serve``: a FastAPI ingress deployment
accepts the WebSocket and drives the session through :class:`StarletteSocket`, a thin adapter giving a
Starlette WebSocket the part of aiohttp's WebSocket interface the session uses. A WebSocket is one
long-lived request to Ray Serve, so a session stays on the replica that accepted it.

Admission: a replica takes at most ``max_sessions + 1`` requests at once (``max_ongoing_requests``), and
:class:`LeastLoadedRouter` sends a new connection to the replica with the fewest requests of all, so
connections fill the free slots of every replica first. A connection reaching a replica whose slots are all
taken gets the protocol's ``busy`` error (close code 4503) from that replica at once (the one extra request
place is for that answer); that happens only when every replica is full, up to the race of connections
routed at the same moment (each router probes the replicas, then sends), so clients should retry.

Replicas: a fixed number, or Serve's autoscaler between ``MIN..MAX`` (:func:`autoscaling_config`);
a replica it removes takes no new sessions and keeps its live ones until they end, at most
:data:`AUTOSCALE_SHUTDOWN_S` (then they are cut).

Requires ``ray[serve]`` (``pip install "ray[serve]==2.60.0"``).
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route methods' annotations (a string
# ``WebSocket`` annotation is not resolved through Serve's ingress wrapper and the route refuses with 1008).
import asyncio
import os
import random
import re
import signal
import sys
import threading
import time

import ray
from aiohttp import WSMessage, WSMsgType
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from ray import serve
from ray.serve.config import AutoscalingConfig, RequestRouterConfig
from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica
from starlette.websockets import WebSocketDisconnect, WebSocketState

from engine.allocator import tune_allocator
from engine.serve.app import PAGE_FILES, SECURITY_HEADERS, page_url, refusal
from engine.serve.connection import SessionConnection
from engine.serve.hub import ServeConfig, SessionHub
from engine.serve.protocol import MAX_SAMPLE_RATE, max_audio_bytes

APP_NAME = "emote"
DEPLOYMENT_NAME = "EmoteReplica"
SHUTDOWN_S = 5.0
"""How long a stopping replica (``serve.delete``, Ctrl-C) waits for its sessions with a fixed replica count."""
AUTOSCALE_SHUTDOWN_S = 600.0
"""How long a replica the autoscaler removes keeps its live sessions (it takes no new ones) before they are cut."""
UPSCALE_DELAY_S = 10.0
"""Load above target this long adds replicas: soon, since a new replica needs its model-load time as well."""
DOWNSCALE_DELAY_S = 300.0
"""Load below target this long removes replicas: sessions come and go in bursts, and a model load is slow."""


class StarletteSocket:
    """An accepted Starlette WebSocket seen through aiohttp's ``WebSocketResponse`` interface.

    ``receive`` returns aiohttp ``WSMessage`` tuples (TEXT, BINARY, CLOSE, or ERROR for a message over
    ``max_msg_size``, as aiohttp reports it); sending on a socket the peer closed raises
    ``ConnectionResetError``, as aiohttp does.
    """

    def __init__(self, ws: WebSocket, max_msg_size: int):
        self.ws, self.max_msg_size = ws, max_msg_size
        self.close_code: int | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return (self._closed or self.ws.client_state == WebSocketState.DISCONNECTED
                or self.ws.application_state == WebSocketState.DISCONNECTED)

    async def receive(self, timeout: float | None = None) -> WSMessage:
        if self.closed:
            return WSMessage(WSMsgType.CLOSED, None, None)
        message = await asyncio.wait_for(self.ws.receive(), timeout)
        if message["type"] == "websocket.disconnect":
            self._closed = True
            self.close_code = message.get("code", 1000)
            return WSMessage(WSMsgType.CLOSE, self.close_code, message.get("reason"))
        data = message.get("bytes")
        kind = WSMsgType.BINARY
        if data is None:
            data, kind = message.get("text") or "", WSMsgType.TEXT
        if len(data) > self.max_msg_size:
            return WSMessage(WSMsgType.ERROR, f"message size {len(data)} exceeds limit {self.max_msg_size}", None)
        return WSMessage(kind, data, None)

    async def _send(self, message: dict) -> None:
        if self.closed:
            raise ConnectionResetError("the WebSocket is closed")
        try:
            await self.ws.send(message)
        except (WebSocketDisconnect, OSError, RuntimeError) as exc:
            self._closed = True
            raise ConnectionResetError(str(exc)) from None

    async def send_str(self, data: str) -> None:
        await self._send({"type": "websocket.send", "text": data})

    async def send_bytes(self, data: bytes) -> None:
        await self._send({"type": "websocket.send", "bytes": bytes(data)})

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        if self.closed:
            return False
        self._closed = True
        self.close_code = code
        try:
            await self.ws.close(code=code, reason=message.decode("utf-8", "replace"))
        except (WebSocketDisconnect, OSError, RuntimeError):
            pass
        return True


def replica_id() -> str:
    """This Serve replica's id (unique within the deployment); the process id outside Ray Serve."""
    try:
        context = serve.get_replica_context()
    except Exception:
        context = None
    if context is None:
        return f"pid{os.getpid()}"
    rid = getattr(context, "replica_id", None)
    return getattr(rid, "unique_id", None) or getattr(context, "replica_tag", f"pid{os.getpid()}")


def replica_actor_name(unique_id: str, app_name: str = APP_NAME) -> str:
    """The Ray actor name of replica ``unique_id`` (namespace ``"serve"``), for ``ray.get_actor``."""
    return f"SERVE_REPLICA::{app_name}#{DEPLOYMENT_NAME}#{unique_id}"


class LeastLoadedRouter(FIFOMixin, RequestRouter):
    """Serve's request router for :class:`EmoteReplica`: every request to the replica with the fewest ongoing.

    Serve's default router compares two replicas picked at random, so with more than two a connection can
    reach a full replica (which answers ``busy``) while a third has a free slot. This one offers every
    replica in one rank; Serve's selection then takes the lowest queue length among those that accept
    (queue length below ``max_ongoing_requests``), so a replica with all ``max_sessions`` slots taken is
    chosen only when every replica is. The router's cached queue lengths of the candidates are dropped
    first, so Serve probes them all afresh: a cached length may be up to 10 s old (other proxies, sessions
    ended since), and a WebSocket session is rare and long enough to afford one probe per replica.
    Candidates are shuffled so replicas with equal load share new connections.
    """

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        """One rank holding every candidate, in random order, with their cached queue lengths dropped."""
        if not candidate_replicas:
            return []
        for replica in candidate_replicas:
            self.replica_queue_len_cache.invalidate_key(replica.replica_id)
        return [random.sample(candidate_replicas, len(candidate_replicas))]


api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@serve.ingress(api)  # at import (not in build_app), so that a replica importing this module gets the routes too
class EmoteReplica:
    """One replica: one loaded model (:class:`SessionHub`), serving the page and ``/session``."""

    def __init__(self, config: ServeConfig, threads: int | None = None):
        import torch

        if threads is not None and not config.device.startswith("cuda"):
            torch.set_num_threads(max(1, threads))
        tune_allocator()
        started = time.perf_counter()
        self.hub = SessionHub.load(config)
        self.replica = replica_id()
        self.pages = {path: (file.read_bytes(), kind) for path, (file, kind) in PAGE_FILES.items()}
        print(f"emote serve (ray): replica {self.replica} loaded {config.model} on {config.device} in "
              f"{time.perf_counter() - started:.1f} s, at most {config.max_sessions} sessions", file=sys.stderr)

    @api.websocket("/session")
    async def session(self, ws: WebSocket) -> None:
        """The ``/session`` WebSocket: one live session on this replica."""
        reason = refusal(self.hub.config, ws.headers.get("host"), ws.headers.get("origin"), websocket=True)
        if reason is not None:  # closed before it is accepted: the client's handshake gets HTTP 403
            await ws.close(code=1008, reason=reason)
            return
        await ws.accept()
        limit = max(self.hub.config.max_upload_bytes, max_audio_bytes(MAX_SAMPLE_RATE)) + 1
        client = ws.client.host if ws.client is not None else None
        await SessionConnection(self.hub, StarletteSocket(ws, limit), extra={"replica": self.replica},
                                client=client).run()

    def _refused(self, request: Request) -> Response | None:
        """The 403 for a request whose Host this server does not answer to (:func:`refusal`), or None."""
        reason = refusal(self.hub.config, request.headers.get("host"))
        if reason is None:
            return None
        return PlainTextResponse(reason + "\n", status_code=403, headers=SECURITY_HEADERS)

    @api.get("/healthz")
    async def healthz(self, request: Request) -> Response:
        """This replica's id and slot use (answered by whichever replica the router picks)."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        return JSONResponse({"replica": self.replica, "sessions": self.hub.active,
                             "max_sessions": self.hub.config.max_sessions,
                             "sessions_served": self.hub.sessions_served}, headers=SECURITY_HEADERS)

    @api.get("/{path:path}")
    async def page(self, path: str, request: Request) -> Response:
        """The page's fixed files; every other path is a 404; a Host this server does not answer to, a 403."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        entry = self.pages.get("/" + path)
        if entry is None:
            return PlainTextResponse("404: Not Found", status_code=404, headers=SECURITY_HEADERS)
        body, kind = entry
        return Response(body, headers={**SECURITY_HEADERS, "Content-Type": kind})

    def __del__(self) -> None:
        hub = getattr(self, "hub", None)
        if hub is not None:
            hub.close()


def parse_autoscale(text: str) -> tuple[int, int]:
    """``"MIN..MAX"`` (e.g. ``"1..4"``) as ``(MIN, MAX)``, with ``1 <= MIN <= MAX``."""
    match = re.fullmatch(r"\s*([0-9]+)\.\.([0-9]+)\s*", text)
    if match is None:
        raise ValueError(f"--autoscale must be MIN..MAX (e.g. 1..4), got {text!r}")
    low_n, high_n = int(match[1]), int(match[2])
    if low_n < 1:
        raise ValueError(f"--autoscale MIN must be at least 1, got {low_n}")
    if high_n < low_n:
        raise ValueError(f"--autoscale MAX must be at least MIN ({low_n}), got {high_n}")
    return low_n, high_n


def autoscaling_config(autoscale: tuple[int, int], max_sessions: int) -> AutoscalingConfig:
    """Serve's autoscaler between ``autoscale = (MIN, MAX)`` replicas of ``max_sessions`` sessions each.

    A WebSocket session is one ongoing request for its whole life, so ongoing requests per replica is sessions
    per replica. The target is 3/4 of the slots, not all of them: Serve sizes the deployment to ongoing /
    target, so at a target of ``max_sessions`` a replica would be added only once every slot is taken, when
    new clients already get ``busy`` for the replica's start-up time (a model load); at 3/4 it is started
    while a quarter of the slots are still free.
    """
    low, high = autoscale
    return AutoscalingConfig(min_replicas=low, initial_replicas=low, max_replicas=high,
                             target_ongoing_requests=0.75 * max_sessions,
                             upscale_delay_s=UPSCALE_DELAY_S, downscale_delay_s=DOWNSCALE_DELAY_S)


def replica_deployment(config: ServeConfig, replicas: int = 1, replica_cpus: float = 1.0,
                       autoscale: tuple[int, int] | None = None) -> serve.Deployment:
    """The :class:`EmoteReplica` deployment: ``replicas`` replicas (one GPU each on cuda), or ``autoscale =
    (MIN, MAX)`` for Serve's autoscaler (:func:`autoscaling_config`), routed by :class:`LeastLoadedRouter`."""
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    if config.device.startswith("cuda"):
        resources = {"num_gpus": 1, "num_cpus": replica_cpus}
    else:
        resources = {"num_cpus": replica_cpus}
    if autoscale is None:
        scaling = {"num_replicas": replicas, "graceful_shutdown_timeout_s": SHUTDOWN_S}
    else:
        scaling = {"autoscaling_config": autoscaling_config(autoscale, config.max_sessions),
                   "graceful_shutdown_timeout_s": AUTOSCALE_SHUTDOWN_S}
    return serve.deployment(
        EmoteReplica, name=DEPLOYMENT_NAME, ray_actor_options=resources,
        max_ongoing_requests=config.max_sessions + 1,
        request_router_config=RequestRouterConfig(request_router_class=LeastLoadedRouter),
        health_check_period_s=2, health_check_timeout_s=30, **scaling)


def build_app(config: ServeConfig, replicas: int = 1, replica_cpus: float = 1.0,
              autoscale: tuple[int, int] | None = None) -> serve.Application:
    """The Serve application: :func:`replica_deployment` bound to ``config``."""
    deployment = replica_deployment(config, replicas, replica_cpus, autoscale)
    return deployment.bind(config, max(1, int(replica_cpus)))


def replicas_text(replicas: int, autoscale: tuple[int, int] | None) -> str:
    """The replicas as the startup message gives them: ``"2 replica(s)"``, ``"replicas 1..4 (autoscaling)"``."""
    if autoscale is None:
        return f"{replicas} replica(s)"
    return f"replicas {autoscale[0]}..{autoscale[1]} (autoscaling)"


def deploy(config: ServeConfig, replicas: int = 1, address: str | None = None, replica_cpus: float = 1.0,
           autoscale: tuple[int, int] | None = None, **init_kwargs) -> str:
    """Start or join a Ray cluster (``address``: None starts a local one, "auto" joins the running one),
    start Serve's HTTP proxy on ``config.host:config.port`` and deploy; returns the page's address."""
    if not ray.is_initialized():
        ray.init(address=address, **init_kwargs)
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build_app(config, replicas, replica_cpus, autoscale), name=APP_NAME, route_prefix="/",
              blocking=False)
    return page_url(config.host, config.port, config.token)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_ray_server(config: ServeConfig, replicas: int = 1, address: str | None = None,
                   replica_cpus: float = 1.0, autoscale: tuple[int, int] | None = None) -> None:
    """``emote serve --ray``: deploy ``replicas`` replicas (or ``autoscale = (MIN, MAX)``), serve until
    Ctrl-C, then remove the application."""
    if config.port == 0:
        raise ValueError("the Ray server needs a fixed port")
    if config.exposure_error() is not None:
        raise ValueError(config.exposure_error())
    started = time.perf_counter()
    url = deploy(config, replicas, address, replica_cpus, autoscale)
    print(f"emote serve (ray): {replicas_text(replicas, autoscale)} of {config.model} on {config.device} ready in "
          f"{time.perf_counter() - started:.1f} s, at most {config.max_sessions} sessions each", file=sys.stderr)
    if not config.loopback and config.token is None:
        print(f"warning: listening on {config.host} without a token (--open-server): anyone who can reach "
              "this port can start sessions", file=sys.stderr)
    print(f"open {url} in Chromium or Firefox (Ctrl-C stops)", file=sys.stderr, flush=True)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # a plain `kill` also removes the application and the cluster
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("emote serve (ray): stopped", file=sys.stderr)
    finally:
        remove_app(address, waits_s=AUTOSCALE_SHUTDOWN_S if autoscale is not None else SHUTDOWN_S)


def remove_app(address: str | None, waits_s: float) -> None:
    """Delete the application, its replicas letting their live sessions end for up to ``waits_s`` (a second
    Ctrl-C stops waiting), then stop Serve and Ray when this process started the cluster (``address`` None)."""
    if waits_s > SHUTDOWN_S:
        print(f"emote serve (ray): live sessions get up to {waits_s:.0f} s to end (Ctrl-C again: end them now)",
              file=sys.stderr, flush=True)
    try:
        serve.delete(APP_NAME)
        if address is None:
            serve.shutdown()
    except KeyboardInterrupt:
        print("emote serve (ray): not waiting for live sessions", file=sys.stderr, flush=True)
    finally:
        if address is None:
            ray.shutdown()


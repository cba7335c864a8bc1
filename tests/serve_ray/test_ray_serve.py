"""The live server on Ray Serve: 3 replicas of the tiny preset, two sessions each, on a local Ray cluster
(2 CPUs, loopback).

One cluster and one deployment for the module (started once, shut down at the end): four clients get
``emote generate``'s frames bit for bit and every replica serves; new sessions go to the least loaded replica
(six held sessions two per replica, round after round, and the seventh told ``busy`` at once: Serve's default
power-of-two router compares two random replicas, so it sends a session to a full one, which answers
``busy`` while a slot is free, in many rounds); and a replica killed mid-stream fails its sessions quickly
while new sessions are still served.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from collections import Counter
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from PIL import Image

NO_RAY = "ray[serve] is not installed (pip install 'ray[serve]==2.60.0', or the project's ray extra)"
ray = pytest.importorskip("ray", exc_type=ImportError, reason=NO_RAY)
pytest.importorskip("ray.serve", exc_type=ImportError, reason=NO_RAY)
pytest.importorskip("fastapi", exc_type=ImportError, reason=NO_RAY)

from support import demo_pcm16, write_wav  # noqa: E402

from engine.cli import main  # noqa: E402
from engine.options import GenerationOptions  # noqa: E402
from engine.serve.client import stream_session  # noqa: E402
from engine.serve.hub import ServeConfig  # noqa: E402
from engine.serve.ray_app import APP_NAME, deploy, replica_actor_name  # noqa: E402
from engine.stream.runner import LagPolicy  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
PORTRAIT = ROOT / "engine" / "assets" / "demo" / "portrait.png"
FPS = 25
SECONDS = 1.0
REPLICAS = 3
MAX_SESSIONS = 2
CLIENTS = 4
ADMISSION_ROUNDS = 5
KILL_ERROR_WITHIN_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster with 3 replicas of the tiny preset deployed; yields the session URL."""
    config = ServeConfig(host="127.0.0.1", port=free_port(), model="tiny", max_sessions=MAX_SESSIONS,
                         options=GenerationOptions(steps=1, first_clip_frames=4), policy=LagPolicy("grow"))
    started = time.perf_counter()
    deploy(config, replicas=REPLICAS, replica_cpus=0.6, num_cpus=2, include_dashboard=False,
           _node_ip_address="127.0.0.1", runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    print(f"ray cluster + {REPLICAS} replicas ready in {time.perf_counter() - started:.1f} s")
    try:
        yield f"ws://127.0.0.1:{config.port}/session"
    finally:
        from ray import serve
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def expected(tmp_path_factory) -> tuple[np.ndarray, list[np.ndarray]]:
    """The audio and ``emote generate --model tiny``'s frames for it."""
    tmp = tmp_path_factory.mktemp("generate")
    pcm = demo_pcm16(SECONDS)
    wav = write_wav(tmp / "speech.wav", pcm)
    assert main(["generate", "--image", str(PORTRAIT), "--audio", str(wav), "--out", str(tmp / "g.mp4"),
                 "--png-dir", str(tmp / "frames"), "--model", "tiny", "--steps", "1", "--first-clip", "4",
                 "--quiet"]) == 0
    want = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((tmp / "frames").glob("frame_*.png"))]
    assert len(want) == round(SECONDS * FPS)
    return pcm, want


def decode(frame) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(frame.payload)).convert("RGB"))


async def open_session(http: aiohttp.ClientSession, url: str) -> tuple[aiohttp.ClientWebSocketResponse, dict]:
    """Open a session on the sample portrait and wait for ``ready`` (or the error); the socket stays open."""
    ws = await http.ws_connect(url, max_msg_size=0)
    await ws.send_str(json.dumps({"type": "start", "portrait": "sample", "frames": "png"}))
    while True:
        message = await asyncio.wait_for(ws.receive(), 60)
        if message.type == aiohttp.WSMsgType.TEXT:
            body = json.loads(message.data)
            if body["type"] in ("ready", "error"):
                return ws, body
        elif message.type != aiohttp.WSMsgType.BINARY:
            return ws, {}


async def hold_session(http: aiohttp.ClientSession, url: str, within_s: float = 30.0):
    """:func:`open_session` until ``ready``, retrying while the slots of closed sessions are being freed."""
    deadline = time.monotonic() + within_s
    while True:
        ws, body = await open_session(http, url)
        if body.get("type") == "ready":
            return ws, body
        await ws.close()
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.3)


def test_four_clients_get_the_frames_of_emote_generate_and_every_replica_serves(cluster, expected):
    pcm, want = expected

    async def run():
        sessions = []
        for _ in range(CLIENTS):  # staggered a little so the router sees each replica's load
            sessions.append(asyncio.ensure_future(stream_session(
                cluster, pcm, 16000, block_ms=20, portrait=PORTRAIT.read_bytes(), frames="png", timeout_s=150)))
            await asyncio.sleep(0.3)
        return await asyncio.gather(*sessions)

    started = time.perf_counter()
    results = asyncio.run(run())
    print(f"{len(results)} sessions of {SECONDS:g} s audio in {time.perf_counter() - started:.1f} s")
    for result in results:
        assert result.error is None and result.done is not None, result.error
        assert [f.index for f in result.frames] == list(range(len(want)))
        assert all(not f.skipped for f in result.frames)
        got = [decode(f) for f in result.frames]
        assert all(np.array_equal(a, b) for a, b in zip(got, want)), "frames differ from emote generate's"
    replicas = Counter(r.ready["replica"] for r in results)
    assert len(replicas) == REPLICAS and max(replicas.values()) <= MAX_SESSIONS, replicas


def test_page_and_health(cluster):
    async def run():
        base = cluster.replace("ws://", "http://").rsplit("/", 1)[0]
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/") as page:
                body = await page.text()
                assert page.status == 200 and "Content-Security-Policy" in page.headers and "<html" in body.lower()
            async with http.get(base + "/nothing/../etc/passwd") as missing:
                assert missing.status == 404
            async with http.get(base + "/healthz") as health:
                return await health.json()

    health = asyncio.run(run())
    assert health["max_sessions"] == MAX_SESSIONS and health["replica"]


def test_a_rebound_dns_name_gets_nothing(cluster):
    """The loopback bind answers to loopback names only, as ``emote serve`` does: a page whose DNS name was
    rebound to 127.0.0.1 gets neither the page, the health report nor a session."""
    base = cluster.replace("ws://", "http://").rsplit("/", 1)[0]
    port = base.rsplit(":", 1)[1]

    async def run():
        answers = {}
        async with aiohttp.ClientSession() as http:
            for name, host, path in (("rebound page", f"rebind.example:{port}", "/"),
                                     ("rebound health", f"rebind.example:{port}", "/healthz"),
                                     ("lookalike", f"127.0.0.1.nip.io:{port}", "/app.js"),
                                     ("localhost", f"localhost:{port}", "/")):
                async with http.get(base + path, headers={"Host": host}) as response:
                    answers[name] = response.status, response.headers.get("X-Frame-Options")
            origin = f"http://rebind.example:{port}"
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(cluster, headers={"Host": f"rebind.example:{port}", "Origin": origin})
            answers["rebound socket"] = refused.value.status
        return answers

    assert asyncio.run(run()) == {"rebound page": (403, "DENY"), "rebound health": (403, "DENY"),
                                  "lookalike": (403, "DENY"), "localhost": (200, "DENY"), "rebound socket": 403}


def ongoing_requests() -> dict[str, int]:
    """Each live replica's ongoing requests (its sessions, plus any request being answered), by replica id."""
    prefix = replica_actor_name("", APP_NAME)
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]
    counts = ray.get([ray.get_actor(name, namespace="serve").get_num_ongoing_requests.remote() for name in names])
    return {name[len(prefix):]: n for name, n in zip(names, counts)}


async def wait_idle(within_s: float = 30.0) -> None:
    """Until every replica has no ongoing request (the sessions just closed have left)."""
    deadline = time.monotonic() + within_s
    while any(ongoing_requests().values()):
        assert time.monotonic() < deadline, ongoing_requests()
        await asyncio.sleep(0.1)


def test_sessions_fill_every_replica_before_a_client_is_told_busy(cluster):
    async def one_round(http: aiohttp.ClientSession) -> tuple[list[str], float, object]:
        await wait_idle()
        held = []
        try:
            for _ in range(REPLICAS * MAX_SESSIONS):  # no retry: a busy answer while a slot is free fails
                ws, ready = await open_session(http, cluster)
                held.append((ws, ready))
                assert ready.get("type") == "ready", ready
            started = time.perf_counter()
            result = await stream_session(cluster, demo_pcm16(0.2), timeout_s=30, http=http)
            return [ready["replica"] for _, ready in held], time.perf_counter() - started, result
        finally:
            for ws, _ in held:
                await ws.close()

    async def run():
        async with aiohttp.ClientSession() as http:
            return [await one_round(http) for _ in range(ADMISSION_ROUNDS)]

    for replicas, took, result in asyncio.run(run()):
        assert len(Counter(replicas)) == REPLICAS and set(Counter(replicas).values()) == {MAX_SESSIONS}, replicas
        assert result.error is not None and result.error["code"] == "busy", result.error
        assert result.close_code == 4503 and result.ready is None
        assert took < 10, f"the busy answer took {took:.1f} s"


def test_killing_a_replica_fails_its_sessions_fast_and_new_sessions_are_served(cluster, expected):
    pcm, want = expected

    async def run():
        async with aiohttp.ClientSession() as http:
            ws, ready = await hold_session(http, cluster)
            victim = ready["replica"]
            ray.kill(ray.get_actor(replica_actor_name(victim, APP_NAME), namespace="serve"), no_restart=True)
            killed = time.perf_counter()
            while True:
                message = await asyncio.wait_for(ws.receive(), KILL_ERROR_WITHIN_S)
                if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    break
            noticed = time.perf_counter() - killed
            close_code = ws.close_code
            await ws.close()
            after, tries = None, 0
            for tries in range(1, 21):  # the router may try the dead replica until the controller notices
                after = await stream_session(cluster, pcm, 16000, block_ms=20, portrait=PORTRAIT.read_bytes(),
                                             frames="png", timeout_s=120, http=http)
                if after.done is not None:
                    break
                await asyncio.sleep(1.0)
            return noticed, close_code, after, tries, victim

    noticed, close_code, after, tries, victim = asyncio.run(run())
    print(f"session on the killed replica closed after {noticed:.1f} s (code {close_code}); a new session "
          f"served by replica {after.ready and after.ready['replica']} on try {tries}")
    assert after.ready["replica"] != victim
    assert noticed < KILL_ERROR_WITHIN_S and close_code != 1000
    assert after.error is None and after.done is not None, after.error
    assert all(np.array_equal(decode(f), w) for f, w in zip(after.frames, want)) and len(after.frames) == len(want)

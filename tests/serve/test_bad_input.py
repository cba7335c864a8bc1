"""Bad input: each gives that client a clear error (a JSON ``error`` and a close code) and the server keeps
serving the others; nothing but the page's own files is reachable by path; tokens and origins are checked.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import zlib
from pathlib import Path

import aiohttp
import pytest
from PIL import Image
from support import DEMO_SPEECH, demo_pcm16

from engine.serve.app import CROSS_ORIGIN, SECURITY_HEADERS, UNKNOWN_HOST, refusal
from engine.serve.client import SessionResult, stream_session
from engine.serve.hub import ServeConfig, client_key

ROOT = Path(__file__).resolve().parents[2]
PORTRAIT = ROOT / "engine" / "assets" / "demo" / "portrait.png"


def png_claiming(width: int, height: int) -> bytes:
    """A PNG signature and IHDR announcing ``width`` x ``height`` (its pixels never follow)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack("!I", len(body)) + kind + body + struct.pack("!I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack("!IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def good_session(server) -> SessionResult:
    """A short, well-behaved session: the server is still serving."""
    return asyncio.run(stream_session(server.ws_url, demo_pcm16(0.2), frames="raw"))


def is_sample_start(text: str) -> bool:
    """A well-formed start message for the sample portrait (the server answers it with ``ready``)."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return isinstance(message, dict) and message == {"type": "start"}


async def exchange(server, *messages: str | bytes) -> tuple[dict, int | None]:
    """Send ``messages`` in order (waiting for ``ready`` after a sample-portrait start), then return
    the error the server sent (``{}`` if none) and the close code."""
    async with aiohttp.ClientSession() as http, http.ws_connect(server.ws_url) as ws:
        error: dict = {}
        for message in messages:
            if isinstance(message, bytes):
                await ws.send_bytes(message)
                continue
            await ws.send_str(message)
            if is_sample_start(message):
                reply = await ws.receive()
                body = json.loads(reply.data) if reply.type == aiohttp.WSMsgType.TEXT else {}
                if body.get("type") != "ready":
                    error = body
                    break
        async for reply in ws:
            if reply.type == aiohttp.WSMsgType.TEXT and json.loads(reply.data)["type"] == "error":
                error = json.loads(reply.data)
        return error, ws.close_code


def upload_start(size: int) -> str:
    return json.dumps({"type": "start", "portrait": "upload", "portrait_bytes": size})


def test_uploads_that_are_not_acceptable_images(start_server):
    server = start_server(max_sessions=16)
    real = PORTRAIT.read_bytes()
    cases = {
        "text": (b"this is a text file, not a photo\n" * 20, "not a PNG, JPEG or WebP"),
        "wav": (DEMO_SPEECH.read_bytes()[:4096], "not a PNG, JPEG or WebP"),
        "huge canvas": (png_claiming(100_000, 100_000), "larger than the limit"),
        "wide canvas": (png_claiming(9000, 100), "larger than the limit"),
        "tiny canvas": (png_claiming(4, 4), "at least"),
        "truncated": (real[:300], "could not be decoded"),
    }
    for name, (data, reason) in cases.items():
        error, code = asyncio.run(exchange(server, upload_start(len(data)), data))
        assert error.get("code") == "bad_image" and code == 4415, name
        assert reason in error["message"], (name, error["message"])
    mismatch, code = asyncio.run(exchange(server, upload_start(len(real) + 1), real))
    assert mismatch["code"] == "bad_request" and "announced" in mismatch["message"] and code == 4400
    image = Image.open(io.BytesIO(real)).convert("RGBA")
    webp = io.BytesIO()
    image.save(webp, format="WEBP")
    accepted = asyncio.run(stream_session(server.ws_url, demo_pcm16(0.2), portrait=webp.getvalue()))
    assert accepted.done is not None, "a WebP with transparency is a fine portrait"
    assert good_session(server).done is not None and server.idle()


def test_a_100_mb_upload_is_refused_without_being_read(start_server, raw_ws):
    server = start_server(max_upload_bytes=2 * 1024 * 1024)
    declared, code = asyncio.run(exchange(server, upload_start(100 * 1024 * 1024)))
    assert declared["code"] == "too_large" and "100.0 MiB exceeds the 2.0 MiB" in declared["message"] and code == 4413

    async def undeclared() -> tuple[int, bytes]:
        sock, status = await raw_ws.connect(server.port)
        assert status == 101
        await sock.send_text(upload_start(1000))
        mask = b"\x01\x02\x03\x04"
        await sock.send_raw(struct.pack("!BBQ", 0x82, 0x80 | 127, 100 * 1024 * 1024) + mask + bytes(65536))
        while True:
            opcode, payload = await sock.read_message()
            if opcode in (0x8, -1):
                sock.abort()
                return opcode, payload

    opcode, payload = asyncio.run(undeclared())
    assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == 1009, "1009: message too big, from its header"
    assert good_session(server).done is not None and server.idle()


def test_garbage_on_the_socket_closes_only_that_session(start_server, raw_ws):
    server = start_server(max_sessions=16)
    start = json.dumps({"type": "start"})

    async def run():
        async with aiohttp.ClientSession() as http:
            bystander = asyncio.ensure_future(
                stream_session(server.ws_url, demo_pcm16(1.5), realtime=True, frames="raw", http=http))
            results = {
                "not json": await exchange(server, "{not json"),
                "not an object": await exchange(server, "[1, 2]"),
                "audio first": await exchange(server, b"\x00\x01" * 50),
                "huge text": await exchange(server, json.dumps({"type": "start", "pad": "x" * 5000})),
                "bad field": await exchange(server, json.dumps({"type": "start", "sample_rate": "fast"})),
                "odd audio": await exchange(server, start, b"\x00\x01\x02"),
                "long audio": await exchange(server, start, bytes(2 * 16000 + 2)),
                "unknown type": await exchange(server, start, json.dumps({"type": "dance"})),
                "second start": await exchange(server, start, start),
                "reset early": await exchange(server, start, json.dumps({"type": "reset"})),
            }
            sock, status = await raw_ws.connect(server.port)
            await sock.send_raw(b"\x8f\x00garbage that is no WebSocket frame")
            frame = await sock.read_message()
            sock.abort()
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"\x16\x03\x01 not HTTP at all \x00\xff\r\n\r\n")
            await writer.drain()
            http_reply = await reader.read(200)
            writer.close()
            return results, frame, http_reply, await bystander

    results, frame, http_reply, bystander = asyncio.run(run())
    expected = {"not json": "bad_request", "not an object": "bad_request", "audio first": "bad_request",
                "huge text": "too_large", "bad field": "bad_request", "odd audio": "bad_request",
                "long audio": "too_large", "unknown type": "bad_request", "second start": "bad_request",
                "reset early": "bad_request"}
    for name, (error, code) in results.items():
        assert error.get("code") == expected[name] and error["message"] and code in (4400, 4413), (name, error)
    assert frame[0] == 0x8 and struct.unpack("!H", frame[1][:2])[0] == 1002, "1002: protocol error"
    assert http_reply.startswith(b"HTTP/1.") and b" 400 " in http_reply.split(b"\r\n")[0]
    assert bystander.done is not None and [f.index for f in bystander.frames] == list(range(38)), \
        "a session running beside all that got every frame"
    assert server.idle()


def test_access_token_and_origin(start_server, raw_ws):
    server = start_server(token="s3cret-token")
    pcm = demo_pcm16(0.2)

    async def run():
        missing = await stream_session(server.ws_url, pcm)
        wrong = await stream_session(server.ws_url, pcm, token="guess")
        right = await stream_session(server.ws_url, pcm, token="s3cret-token")
        statuses = []
        for origin in ("http://evil.example", f"http://127.0.0.1:{server.port}"):
            sock, status = await raw_ws.connect(server.port, {"Origin": origin})
            sock.abort()
            statuses.append(status)
        return missing, wrong, right, *statuses

    missing, wrong, right, foreign, own = asyncio.run(run())
    for refused in (missing, wrong):
        assert refused.ready is None and refused.close_code == 4401
        assert refused.error["code"] == "unauthorized" and "token" in refused.error["message"]
    assert right.done is not None and len(right.frames) == 5
    assert foreign == 403 and own == 101


def test_a_silent_client_is_dropped_after_the_start_timeout(start_server):
    server = start_server(start_timeout_s=0.5)

    async def silent():
        async with aiohttp.ClientSession() as http, http.ws_connect(server.ws_url) as ws:
            reply = await ws.receive(timeout=10)
            await ws.receive(timeout=10)
            return json.loads(reply.data), ws.close_code

    error, code = asyncio.run(silent())
    assert error["code"] == "timeout" and code == 4408 and server.idle()


def test_only_the_page_files_are_reachable(start_server):
    server = start_server()

    async def get(path: str) -> tuple[int, dict, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        return int(lines[0].split()[1]), headers, body

    async def run():
        page = {p: await get(p) for p in ("/", "/app.js", "/pcm-worklet.js", "/style.css", "/sample.png")}
        probes = ["/../engine/cli.py", "/%2e%2e/%2e%2e/etc/passwd", "/static/index.html", "/index.html",
                  "/engine/serve/app.py", "//etc/passwd", "/sample.png/../../../pyproject.toml", "/app.js%00",
                  "/.git/config", "/..%2f..%2fpyproject.toml", "/session/../app.js/../../README.md"]
        return page, {p: await get(p) for p in probes}

    page, probes = asyncio.run(run())
    for path, (status, headers, body) in page.items():
        assert status == 200 and body, path
        assert "default-src 'self'" in headers["Content-Security-Policy"] and headers["X-Frame-Options"] == "DENY"
    assert page["/sample.png"][2] == PORTRAIT.read_bytes()
    for path, (status, _, body) in probes.items():
        assert status in (400, 404) and b"[project]" not in body and b"root:" not in body, path


async def raw_request(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """Send one GET with exactly ``headers`` (Host included); the status and headers of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), "Connection: close"]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    status, *rest = head.decode("latin-1").strip().split("\r\n")
    return int(status.split()[1]), dict(line.split(": ", 1) for line in rest)


def upgrade(host: str, origin: str) -> dict[str, str]:
    return {"Host": host, "Origin": origin, "Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}


def test_a_rebound_dns_name_gets_nothing_on_a_loopback_bind(start_server):
    server = start_server()
    opened = start_server(allowed_hosts=("avatar.example",))
    port, other = server.port, opened.port

    async def run():
        return {
            "rebound page": await raw_request(port, "/", {"Host": f"rebind.example:{port}"}),
            "rebound socket": await raw_request(port, "/session", upgrade(f"rebind.example:{port}",
                                                                          f"http://rebind.example:{port}")),
            "lookalike": await raw_request(port, "/", {"Host": f"127.0.0.1.nip.io:{port}"}),
            "localhost": await raw_request(port, "/", {"Host": f"localhost:{port}"}),
            "ipv6": await raw_request(port, "/", {"Host": f"[::1]:{port}"}),
            "loopback socket": await raw_request(port, "/session", upgrade(f"127.0.0.1:{port}",
                                                                           f"http://127.0.0.1:{port}")),
            "allowed name": await raw_request(other, "/session", upgrade(f"avatar.example:{other}",
                                                                         f"http://avatar.example:{other}")),
        }

    got = {name: status for name, (status, _) in asyncio.run(run()).items()}
    assert got == {"rebound page": 403, "rebound socket": 403, "lookalike": 403, "localhost": 200, "ipv6": 200,
                   "loopback socket": 101, "allowed name": 101}


@pytest.mark.parametrize("bind, allowed, host, origin, websocket, refused", [
    ("127.0.0.1", (), "localhost:8000", None, False, None),
    ("127.0.0.1", (), "[::1]:8000", "http://[::1]:8000", True, None),
    ("127.0.0.1", (), "rebind.example:8000", None, False, UNKNOWN_HOST),
    ("127.0.0.1", (), "rebind.example:8000", "http://rebind.example:8000", True, UNKNOWN_HOST),
    ("127.0.0.1", (), None, None, False, UNKNOWN_HOST),
    ("127.0.0.1", ("avatar.example",), "avatar.example", "http://avatar.example", True, None),
    ("127.0.0.1", (), "127.0.0.1:8000", "http://evil.example", True, CROSS_ORIGIN),
    ("127.0.0.1", (), "127.0.0.1:8000", "http://evil.example", False, None),
    ("127.0.0.1", (), "127.0.0.1:8000", "http://[bad", True, CROSS_ORIGIN),
    ("0.0.0.0", (), "anything.example", None, False, None),
    ("0.0.0.0", ("avatar.example",), "anything.example", None, False, UNKNOWN_HOST),
])
def test_one_host_and_origin_rule_for_both_servers(bind, allowed, host, origin, websocket, refused):
    """:func:`refusal` is the rule aiohttp's server and Ray Serve's replicas both apply to every request."""
    config = ServeConfig(host=bind, allowed_hosts=allowed, token="t")
    assert refusal(config, host, origin, websocket=websocket) == refused


def test_error_answers_carry_the_pages_security_headers(start_server):
    server = start_server()

    async def run():
        host = {"Host": f"127.0.0.1:{server.port}"}
        return [await raw_request(server.port, "/nowhere", host),
                await raw_request(server.port, "/session", host),
                await raw_request(server.port, "/", {"Host": "elsewhere.example"})]

    answers = asyncio.run(run())
    assert [status for status, _ in answers] == [404, 400, 403]
    for _, headers in answers:
        assert "default-src 'self'" in headers["Content-Security-Policy"] and headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Cache-Control"] == "no-store"


def test_hostile_numbers_and_nesting_are_protocol_errors(start_server):
    server = start_server()
    huge = '{"type": "start", "portrait": "upload", "portrait_bytes": 1' + "0" * 400 + "}"
    deep = "[" * 2000 + "]" * 2000
    deep_object = '{"":' * 800 + "1" + "}" * 800
    results = {name: asyncio.run(exchange(server, text)) for name, text in
               (("huge", huge), ("deep", deep), ("deep object", deep_object))}
    assert results["huge"][0]["code"] == "too_large" and results["huge"][1] == 4413
    for name in ("deep", "deep object"):
        assert results[name][0]["code"] == "bad_request" and results[name][1] == 4400, results[name]


MALFORMED_REQUESTS = {
    "not http": b"GARBAGE\r\n\r\n",
    "tls hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40) + b"\r\n\r\n",
    "binary line": b"\x00\xff\xfe GET\r\n\r\n",
    "bad version": b"GET / HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
    "bad length": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: nope\r\n\r\n",
    "bad header": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nNo Colon Here\r\n\r\n",
    "long line": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "smuggling": b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
}


def test_malformed_http_gets_a_400_with_the_security_headers_and_one_log_line(start_server, capfd):
    """aiohttp answers these itself, before the application: the answer still carries the page's headers, and
    the server logs one line per request, never a traceback."""
    server = start_server()

    async def send(raw: bytes) -> tuple[int, dict[str, str]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(raw)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.close()
        status, *rest = head.decode("latin-1").strip().split("\r\n")
        return int(status.split()[1]), dict(line.split(": ", 1) for line in rest)

    capfd.readouterr()
    answers = {name: asyncio.run(send(raw)) for name, raw in MALFORMED_REQUESTS.items()}
    err = capfd.readouterr().err
    for name, (status, headers) in answers.items():
        assert status == 400, name
        assert {k: headers.get(k) for k in SECURITY_HEADERS} == SECURITY_HEADERS, name
    lines = err.splitlines()
    assert "Traceback" not in err and all(line.startswith("emote serve: ") for line in lines), err
    assert len(lines) <= len(MALFORMED_REQUESTS), err
    assert asyncio.run(raw_request(server.port, "/", {"Host": f"127.0.0.1:{server.port}"}))[0] == 200


async def stalled_upload(http: aiohttp.ClientSession, url: str) -> tuple[aiohttp.ClientWebSocketResponse, dict]:
    """A connection that announces a portrait upload and never sends it; its socket and the error the server
    answered at once (``{}`` when the server waits for the upload)."""
    ws = await http.ws_connect(url)
    await ws.send_str(upload_start(4096))
    try:
        reply = await ws.receive(timeout=1.0)
    except asyncio.TimeoutError:
        return ws, {}
    return ws, json.loads(reply.data) if reply.type == aiohttp.WSMsgType.TEXT else {}


def from_address(address: str) -> aiohttp.ClientSession:
    """An HTTP client whose connections come from ``address`` (any of 127.0.0.0/8 reaches a loopback server)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


def test_announced_uploads_that_never_come_hold_no_session_slot(start_server):
    server = start_server(max_sessions=2, start_timeout_s=30.0)
    pcm = demo_pcm16(0.2)

    async def run():
        async with aiohttp.ClientSession() as http, from_address("127.0.0.2") as other:
            stalled = [await stalled_upload(http, server.ws_url) for _ in range(4)]
            held = (server.hub.active, server.hub.uploads.count)
            sample = await stream_session(server.ws_url, pcm, frames="raw", http=http)
            upload = await stream_session(server.ws_url, pcm, frames="raw", portrait=PORTRAIT.read_bytes(), http=other)
            refused = await stream_session(server.ws_url, pcm, frames="raw", portrait=PORTRAIT.read_bytes(), http=http)
            codes = []
            for ws, _ in stalled:
                await ws.close()
                codes.append(ws.close_code)
            return [error for _, error in stalled], codes, held, sample, upload, refused

    errors, codes, held, sample, upload, refused = asyncio.run(run())
    assert errors[:2] == [{}, {}], "two uploads from one address may wait"
    for error in errors[2:]:
        assert error["code"] == "too_many_uploads" and "already has 2 portrait uploads" in error["message"]
    assert codes[2:] == [4409, 4409]
    assert held == (0, 2), "waiting uploads hold no session slot"
    assert sample.done is not None and upload.done is not None, "real clients are served meanwhile"
    assert refused.close_code == 4409 and refused.error["code"] == "too_many_uploads"
    assert server.idle() and server.hub.uploads.count == 0


def test_pending_uploads_are_bounded_in_all(start_server):
    server = start_server(max_pending_uploads=2, start_timeout_s=30.0)

    async def run():
        clients = [from_address(f"127.0.0.{k}") for k in (2, 3, 4)]
        try:
            stalled = [await stalled_upload(http, server.ws_url) for http in clients]
            for ws, _ in stalled:
                await ws.close()
            return [error for _, error in stalled], stalled[-1][0].close_code
        finally:
            await asyncio.gather(*(http.close() for http in clients))

    errors, code = asyncio.run(run())
    assert errors[:2] == [{}, {}]
    assert errors[2]["code"] == "busy" and "waiting for 2 portrait uploads" in errors[2]["message"] and code == 4503
    assert server.idle() and server.hub.uploads.count == 0


@pytest.mark.parametrize("address, key", [
    ("203.0.113.7", "203.0.113.7"), ("::ffff:203.0.113.7", "203.0.113.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"), ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
    (None, "unknown"), ("not-an-ip", "not-an-ip"),
])
def test_pending_uploads_are_counted_per_address_and_ipv6_network(address, key):
    assert client_key(address) == key


def test_text_that_breaks_encoders_is_a_protocol_error(start_server):
    server = start_server(token="t0ken")
    cases = {
        "lone surrogate token": '{"type": "start", "token": "\\ud800"}',
        "long non-ASCII type": json.dumps({"type": "é" * 300}, ensure_ascii=False),
        "long non-ASCII field": json.dumps({"type": "start", "token": "t0ken", "frames": "ü" * 200},
                                          ensure_ascii=False),
    }
    for name, text in cases.items():
        error, code = asyncio.run(exchange(server, text))
        assert error.get("code") == "bad_request" and code == 4400, (name, error, code)
    assert server.idle()

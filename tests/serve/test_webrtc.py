"""WebRTC on ``emote serve --webrtc``: the signalling rules, and the page in Debian's Chromium with a fake
microphone playing speech: the avatar's video decodes in the page and its voice plays beside it.

The Chromium test prints the receiver's ``getStats()`` figures and asserts them, and the server's own record
of what it handed the encoders: frame ``i`` at RTP-clock pts ``i * 90000 / fps``, audio contiguous from
sample 0. The screenshot goes to the test's temporary folder, and to ``$EMOTE_WEBRTC_SCREENSHOT`` when set.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import aiohttp
import numpy as np
import pytest

pytest.importorskip("aiortc", reason="aiortc is not installed (pip install -e '.[webrtc]')")

from engine.serve.app import WEBRTC_KEY  # noqa: E402
from engine.stream.runner import LagPolicy  # noqa: E402

from serve.test_browser import chromium, chromium_page, fake_microphone  # noqa: E402

FPS = 25
SECONDS = 3.0
SYNC_SAMPLES = 5
"""The gap between the two tracks' estimated playout times is printed, not asserted: on a 2-core CPU shared with
other work the tiny model runs below real time (13-17 fps) and hands frames over a clip at a time, and this
receiver figure swung between -1.2 s and +0.5 s from run to run. The sync that is asserted is the sender's:
the timestamps each track hands its encoder."""
OFFER = {"type": "offer", "sdp": "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"}


def post(url: str, body: object, headers: dict | None = None) -> tuple[int, dict]:
    async def run() -> tuple[int, dict]:
        async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=headers or {}) as response:
            text = await response.text()
            return response.status, json.loads(text) if response.content_type == "application/json" else {"text": text}
    return asyncio.run(run())


def test_the_offer_is_refused_as_the_socket_would_be(start_server):
    server = start_server(webrtc=True, token="s3cret", max_sessions=1)
    url = f"{server.url}webrtc/offer"
    status, body = post(url, {**OFFER, "token": "wrong"})
    assert (status, body["error"]) == (401, "unauthorized")
    status, body = post(url, {**OFFER, "token": "s3cret"}, {"Origin": "http://evil.example"})
    assert (status, body["error"]) == (403, "forbidden")
    status, body = post(url, {"token": "s3cret", "type": "answer", "sdp": "v=0"})
    assert (status, body["error"]) == (400, "bad_request")
    status, body = post(url, ["not", "an", "object"])
    assert (status, body["error"]) == (400, "bad_request")
    status, body = post(url, {**OFFER, "token": "s3cret"})
    assert (status, body["error"]) == (400, "bad_request") and "offer" in body["message"]
    assert server.idle(), "a refused offer holds no session slot"


def test_without_webrtc_there_is_no_offer_endpoint(start_server):
    server = start_server()
    status, _ = post(f"{server.url}webrtc/offer", OFFER)
    assert status == 404


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (make test installs it)")
def test_webrtc_in_headless_chromium_with_a_fake_microphone(start_server, tmp_path):
    server = start_server(webrtc=True, policy=LagPolicy("skip", max_lag_s=1.0))
    wav = tmp_path / "microphone.wav"
    fake_microphone(wav)

    async def drive() -> tuple[dict, dict, bytes, object]:
        async with chromium_page(tmp_path, wav) as page:
            await page.open(server.url)
            await page.wait_for("document.readyState === 'complete' && !!window.emote", 30)
            await page.json("(document.getElementById('transport').value = 'webrtc')")
            await page.json("document.getElementById('start').click()", gesture=True)
            decoded = f"s && s.rtc && s.rtc.framesDecoded >= {round(SECONDS * FPS)} && s.rtc.audioPlayoutMs"
            ready = f"s && (s.failed || ({decoded} && s.rtc.videoPlayoutMs)) ? s : null"
            state = await page.wait_for(f"(() => {{ const s = window.emote.state(); return {ready}; }})()", 120)
            assert not state["failed"], state["status"]
            offsets = []
            for _ in range(SYNC_SAMPLES):
                await asyncio.sleep(0.5)
                state = await page.json("window.emote.state()")
                offsets.append(state["rtc"]["audioPlayoutMs"] - state["rtc"]["videoPlayoutMs"])
            state["offsets"] = offsets
            figures = await page.json("Object.fromEntries(['decoded', 'jitter', 'sync', 'codec', 'fps', 'idle']"
                                      ".map((k) => [k, document.getElementById('fig-' + k).textContent]))")
            png = await page.screenshot()
            sessions = list(server.app[WEBRTC_KEY])
            await page.json("document.getElementById('stop').click()", gesture=True)
            return state, figures, png, sessions[0].sent if sessions else None

    state, figures, png, sent = asyncio.run(drive())
    (tmp_path / "webrtc.png").write_bytes(png)
    if os.environ.get("EMOTE_WEBRTC_SCREENSHOT"):
        Path(os.environ["EMOTE_WEBRTC_SCREENSHOT"]).write_bytes(png)
    rtc = state["rtc"]
    offset_ms = float(np.median(state["offsets"]))
    print(f"\nchromium WebRTC: {rtc['framesDecoded']} frames decoded ({rtc['framesDropped']} dropped) of "
          f"{rtc['framesReceived']} received, {rtc['videoCodec']} {rtc['frameWidth']} px; jitter buffer video "
          f"{rtc['videoJitterBufferS'] * 1000:.0f} ms, audio {rtc['audioJitterBufferS'] * 1000:.0f} ms; "
          f"playout audio - video {offset_ms:.0f} ms (median of {[round(o) for o in state['offsets']]}); "
          f"{rtc['audioSamplesReceived']} audio samples received; "
          f"page figures {figures}")
    assert rtc["framesDecoded"] >= SECONDS * FPS and rtc["frameWidth"] == server.hub.size
    assert state["videoWidth"] == server.hub.size, "the video element shows the avatar's frames"
    assert rtc["audioSamplesReceived"] > 0, "the driving audio arrives as a track"
    assert 0 <= rtc["videoJitterBufferS"] < 1.0 and 0 <= rtc["audioJitterBufferS"] < 1.0
    assert np.isfinite(state["offsets"]).all(), "both tracks report a playout time on the sender's clock"
    assert figures["decoded"].isdigit() and figures["sync"].endswith(" ms") and figures["codec"].startswith("video/")
    assert sent is not None and len(sent.frame_pts) >= rtc["framesDecoded"]
    assert sent.frame_pts == [round(i * 90000 / FPS) for i in range(len(sent.frame_pts))], \
        "frame i leaves with pts i / fps on the 90 kHz clock, no gap"
    assert sent.audio_samples == 320 * sent.audio_blocks, "audio leaves contiguous from sample 0, 20 ms a block"
    assert abs(sent.audio_samples / 16000 - len(sent.frame_pts) / FPS) < 0.5, "audio never runs far from video"
    assert png.startswith(b"\x89PNG")

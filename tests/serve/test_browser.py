"""The page in real browsers, headless, with a fake microphone: frames must arrive while the audio still
plays, be drawn in step with the delayed playback, and the figures must show.

- Chromium (Debian's ``chromium``, installed by ``make test``), driven over the Chrome DevTools
  Protocol; its fake microphone plays a WAV file (``--use-file-for-fake-audio-capture``).
- Firefox (Debian's ``firefox-esr``, with ``pulseaudio`` for an audio device; not installed by
  ``make test``), driven over WebDriver BiDi; its fake microphone plays a tone.

Each is skipped, with the reason, when its browser is absent. The Chromium screenshot goes to the
test's temporary folder, and also to ``$EMOTE_SERVE_SCREENSHOT`` when set
(``EMOTE_SERVE_SCREENSHOT=docs/serve.png EMOTE_TEST_SERVE_MODEL=talking64`` refreshes the README's picture).
"""

from __future__ import annotations

import abc
import asyncio
import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from support import SR, demo_pcm16, write_wav

from engine.stream.runner import LagPolicy

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                  "--autoplay-policy=no-user-gesture-required", "--remote-debugging-port=0",
                  "--window-size=1000,760"]
FIREFOX_PREFS = {
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.autoplay.default": 0,
    "browser.shell.checkDefaultBrowser": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "app.update.disabledForTesting": True,
    "network.captive-portal-service.enabled": False,
}
FIREFOX_SECONDS = 5.0


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def firefox() -> str | None:
    return shutil.which("firefox-esr") or shutil.which("firefox")


def fake_microphone(path: Path) -> float:
    """The demo speech twice with a short pause, as a 16-bit mono WAV; returns its duration in seconds."""
    speech = demo_pcm16()
    pcm = np.concatenate([speech, np.zeros(SR // 4, "<i2"), speech])
    write_wav(path, pcm)
    return pcm.size / SR


class Page(abc.ABC):
    """One browser tab behind a remote protocol: evaluate JavaScript, take a screenshot."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: object) -> dict:
        """Send a command and wait for its result (events arriving meanwhile are dropped)."""
        ident = next(self._ids)
        await self.ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads((await self.ws.receive(timeout=30)).data)
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']} {message.get('message', '')}")
                return message["result"]

    @abc.abstractmethod
    async def open(self, url: str) -> None:
        """Load ``url`` in a 1000x760 viewport."""

    @abc.abstractmethod
    async def json(self, expression: str, gesture: bool = False) -> object:
        """The value of ``expression`` in the page, through JSON (promises awaited)."""

    @abc.abstractmethod
    async def screenshot(self) -> bytes:
        """The viewport as PNG."""

    async def wait_for(self, expression: str, timeout: float, interval: float = 0.2) -> object:
        """Poll ``expression`` until it is truthy; returns its value (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.json(expression)
            if value:
                return value
            await asyncio.sleep(interval)
        raise AssertionError(f"timed out after {timeout} s waiting for {expression}")


class DevToolsPage(Page):
    """Chrome DevTools Protocol, on one page target's WebSocket."""

    async def open(self, url: str) -> None:
        await self.call("Emulation.setDeviceMetricsOverride", width=1000, height=760, deviceScaleFactor=1,
                        mobile=False)
        await self.call("Page.navigate", url=url)

    async def json(self, expression: str, gesture: bool = False) -> object:
        result = await self.call("Runtime.evaluate", expression=f"JSON.stringify({expression})", returnByValue=True,
                                 awaitPromise=True, userGesture=gesture)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        value = result["result"].get("value")
        return None if value is None else json.loads(value)

    async def screenshot(self) -> bytes:
        return base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"])


class BidiPage(Page):
    """WebDriver BiDi, on the browser's session WebSocket (first top-level browsing context)."""

    context = ""

    async def open(self, url: str) -> None:
        await self.call("session.new", capabilities={})
        self.context = (await self.call("browsingContext.getTree"))["contexts"][0]["context"]
        await self.call("browsingContext.setViewport", context=self.context, viewport={"width": 1000, "height": 760})
        await self.call("browsingContext.navigate", context=self.context, url=url, wait="complete")

    async def json(self, expression: str, gesture: bool = False) -> object:
        result = await self.call("script.evaluate", expression=f"JSON.stringify({expression})",
                                 target={"context": self.context}, awaitPromise=True, userActivation=gesture)
        if result["type"] != "success":
            raise RuntimeError(f"{expression}: {result}")
        value = result["result"].get("value")
        return None if value is None else json.loads(value)

    async def screenshot(self) -> bytes:
        return base64.b64decode((await self.call("browsingContext.captureScreenshot", context=self.context))["data"])


async def run_page(page: Page, url: str, seconds: float) -> tuple[dict, dict, dict, bytes]:
    """Open the page, start a session, let ``seconds`` of microphone audio go out, stop, read the figures."""
    await page.open(url)
    await page.wait_for("document.readyState === 'complete' && !!window.emote", 30)
    await page.json("document.getElementById('start').click()", gesture=True)
    state = await page.wait_for("(() => { const s = window.emote.state(); "
                                f"return s && (s.failed || s.audioSentS >= {seconds}) ? s : null; }})()", 120)
    assert not state["failed"], state["status"]
    await page.json("document.getElementById('stop').click()", gesture=True)
    final = await page.wait_for("(() => { const s = window.emote.state(); "
                                "return s.finished || s.failed ? s : null; })()", 120)
    await asyncio.sleep(0.5)
    figures = await page.json("Object.fromEntries(['ttff', 'p50', 'p95', 'fps', 'skipped', 'frames', 'delay']"
                              ".map((k) => [k, document.getElementById('fig-' + k).textContent]))")
    return state, figures, final, await page.screenshot()


def check_session(state: dict, figures: dict, final: dict, seconds: float) -> None:
    assert state["frames"] > 0 and state["audioSentAtFirstFrameS"] < seconds, \
        "frames arrived while the microphone's audio was still playing"
    assert state["shown"] > 0 and state["delayS"] > 0, "frames were drawn in step with the delayed playback"
    assert final["finished"] and not final["failed"], final["status"]
    assert final["frames"] >= round(0.9 * seconds * 25), "about every frame of the audio came back"
    for name in ("ttff", "p50", "p95"):
        assert re.fullmatch(r"\d+ ms", figures[name]), (name, figures[name])
    assert re.fullmatch(r"\d+(\.\d)?", figures["fps"]) and figures["skipped"].isdigit()


def report(browser: str, state: dict, final: dict, seconds: float) -> None:
    print(f"\n{browser}: first frame after {state['audioSentAtFirstFrameS']:.2f} s of {seconds:.2f} s of audio; "
          f"TTFF {final['ttffS'] * 1000:.0f} ms, latency p50 {final['latencyP50S'] * 1000:.0f} ms "
          f"p95 {final['latencyP95S'] * 1000:.0f} ms, {final['frames']} frames ({final['skipped']} skipped), "
          f"playback delay {final['delayS'] * 1000:.0f} ms")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for_text(path: Path, pattern: str, process: subprocess.Popen, timeout: float = 60) -> re.Match:
    """Poll ``path`` until ``pattern`` matches its text (the browser writes where it listens there)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, path.read_text(errors="replace")) if path.exists() else None
        if match:
            return match
        if process.poll() is not None:
            raise RuntimeError(f"the browser exited with code {process.returncode}")
        time.sleep(0.1)
    raise RuntimeError(f"the browser did not write {pattern!r} to {path}")


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (make test installs it)")
def test_the_page_in_headless_chromium_with_a_fake_microphone(start_server, tmp_path):
    server = start_server(policy=LagPolicy("skip", max_lag_s=1.0))
    wav = tmp_path / "microphone.wav"
    seconds = fake_microphone(wav)
    profile = tmp_path / "profile"
    profile.mkdir()
    process = subprocess.Popen([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                f"--use-file-for-fake-audio-capture={wav}%noloop", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def drive() -> tuple[dict, dict, dict, bytes]:
        port = int(wait_for_text(profile / "DevToolsActivePort", r"^(\d+)\n", process).group(1))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
                target = next(t for t in await response.json() if t["type"] == "page")
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                return await run_page(DevToolsPage(ws), server.url, seconds)

    try:
        state, figures, final, png = asyncio.run(drive())
    finally:
        stop(process)
    (tmp_path / "serve.png").write_bytes(png)
    if os.environ.get("EMOTE_SERVE_SCREENSHOT"):
        Path(os.environ["EMOTE_SERVE_SCREENSHOT"]).write_bytes(png)
    report("chromium", state, final, seconds)
    check_session(state, figures, final, seconds)
    assert png.startswith(b"\x89PNG")


@pytest.mark.skipif(firefox() is None or shutil.which("pulseaudio") is None,
                    reason="firefox-esr and pulseaudio are not installed (apt-get install firefox-esr pulseaudio)")
def test_the_page_in_headless_firefox_with_a_fake_microphone(start_server, tmp_path):
    server = start_server(policy=LagPolicy("skip", max_lag_s=1.0))
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(tmp_path)}
    sound = subprocess.Popen(["pulseaudio", "--daemonize=no", "-n", "--exit-idle-time=-1", "--log-target=stderr",
                              "--load=module-null-sink sink_name=null", "--load=module-native-protocol-unix"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "user.js").write_text("".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n"
                                             for k, v in FIREFOX_PREFS.items()))
    log = tmp_path / "firefox.log"
    with log.open("w") as sink:
        browser = subprocess.Popen([firefox(), "--headless", "--no-remote", "--profile", str(profile),
                                    "--remote-debugging-port", "0", "about:blank"], env=env, stdout=sink, stderr=sink)

    async def drive() -> tuple[dict, dict, dict, bytes]:
        address = wait_for_text(log, r"WebDriver BiDi listening on (ws://127\.0\.0\.1:\d+)", browser).group(1)
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{address}/session", max_msg_size=0) as ws:
            return await run_page(BidiPage(ws), server.url, FIREFOX_SECONDS)

    try:
        state, figures, final, png = asyncio.run(drive())
    finally:
        stop(browser)
        stop(sound)
    (tmp_path / "serve-firefox.png").write_bytes(png)
    report("firefox", state, final, FIREFOX_SECONDS)
    check_session(state, figures, final, FIREFOX_SECONDS)

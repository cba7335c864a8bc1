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
import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import AsyncIterator

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


def as_json(expression: str) -> str:
    """JavaScript that evaluates ``expression``, awaits it if it is a promise, and gives its value as JSON text."""
    return f"Promise.resolve({expression}).then((value) => JSON.stringify(value))"


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
        result = await self.call("Runtime.evaluate", expression=as_json(expression), returnByValue=True,
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
        result = await self.call("script.evaluate", expression=as_json(expression),
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


@contextlib.asynccontextmanager
async def chromium_page(tmp_path: Path, microphone: Path, loop: bool = True) -> AsyncIterator[DevToolsPage]:
    """Debian's Chromium, headless, its fake microphone playing the WAV file ``microphone`` (over and over, or
    once and then silence), driven over DevTools on its first page; the browser is stopped on leaving."""
    profile = tmp_path / "profile"
    profile.mkdir()
    process = subprocess.Popen([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                f"--use-file-for-fake-audio-capture={microphone}{'' if loop else '%noloop'}",
                                "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port = int(wait_for_text(profile / "DevToolsActivePort", r"^(\d+)\n", process).group(1))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
                target = next(t for t in await response.json() if t["type"] == "page")
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield DevToolsPage(ws)
    finally:
        stop(process)


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (make test installs it)")
def test_the_page_in_headless_chromium_with_a_fake_microphone(start_server, tmp_path):
    server = start_server(policy=LagPolicy("skip", max_lag_s=1.0))
    wav = tmp_path / "microphone.wav"
    seconds = fake_microphone(wav)

    async def drive() -> tuple[dict, dict, dict, bytes]:
        async with chromium_page(tmp_path, wav, loop=False) as page:
            return await run_page(page, server.url, seconds)

    state, figures, final, png = asyncio.run(drive())
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


LEAD_SILENCE_S = 3.0
SPEECH_FRAMES = 8
FRAMES_AFTER_CUT = 12
MUTE_AND_INTERRUPT = """new Promise((resolve) => {
  client.stream.getAudioTracks().forEach((track) => { track.enabled = false; });
  const timer = setInterval(() => {
    const s = window.emote.state();
    if (s.withheldBlocks > 0 || s.failed) {
      clearInterval(timer);
      document.getElementById('interrupt').click();
      resolve(s);
    }
  }, 5);
})"""
"""The microphone falls silent (its track disabled: zeros from then on); as soon as the page withholds a block as
silence, the Interrupt button is pressed, while the speech already sent is still being turned into frames."""


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (make test installs it)")
def test_the_pages_always_on_box_and_interrupt_button_in_headless_chromium(start_server, tmp_path):
    server = start_server()
    wav = tmp_path / "microphone.wav"
    write_wav(wav, np.concatenate([np.zeros(round(LEAD_SILENCE_S * SR), "<i2"), demo_pcm16(), demo_pcm16()]))

    async def drive() -> tuple[dict, dict, dict, dict, str]:
        async with chromium_page(tmp_path, wav, loop=False) as page:
            await page.open(server.url)
            await page.wait_for("document.readyState === 'complete' && !!window.emote", 30)
            await page.json("document.getElementById('always-on').click()", gesture=True)
            await page.json("document.getElementById('start').click()", gesture=True)
            speaking = await page.wait_for("(() => { const s = window.emote.state(); return s && (s.failed || "
                                           f"s.frames - s.idle >= {SPEECH_FRAMES}) ? s : null; }})()", 120)
            assert not speaking["failed"], speaking["status"]
            pressed = await page.json(MUTE_AND_INTERRUPT, gesture=True)
            after = await page.wait_for("(() => { const s = window.emote.state(); return s.failed || (s.interrupted "
                                        "&& s.recentFrames.some((f) => f[0] >= s.interrupted.frame + "
                                        f"{FRAMES_AFTER_CUT})) ? s : null; }})()", 120)
            assert not after["failed"], after["status"]
            # The figure is drawn at the next animation frame after a frame is counted: read both once they agree.
            idle_figure = await page.wait_for("(() => { const f = {shown: document.getElementById('fig-idle')"
                                              ".textContent, counted: window.emote.state().idle}; "
                                              "return f.shown === String(f.counted) ? f : null; })()", 10)
            await page.json("document.getElementById('stop').click()", gesture=True)
            final = await page.wait_for("(() => { const s = window.emote.state(); "
                                        "return s.finished || s.failed ? s : null; })()", 120)
            return speaking, pressed, after, final, idle_figure

    speaking, pressed, after, final, idle_figure = asyncio.run(drive())
    cut = after["interrupted"]
    log = after["recentFrames"]
    print(f"\nchromium always-on: {speaking['framesBeforeSpeech']} frames before any speech was sent, "
          f"{speaking['frames'] - speaking['idle']} speech frames when the microphone fell silent; interrupt at "
          f"frame {cut['frame']} dropped {cut['speech_s']:.2f} s of speech; {final['idle']} idle frames in all")
    assert speaking["ready"]["always_on"] is True, "the box asks the server for an always-on session"
    assert speaking["framesBeforeSpeech"] >= 4 and speaking["idleBeforeSpeech"] == speaking["framesBeforeSpeech"], \
        "frames come while the page sends no speech, every one of them idle"
    assert speaking["speechSentS"] > 0 and pressed["withheldBlocks"] > 0
    assert max(f[0] for f in pressed["recentFrames"]) < cut["frame"], "the cut is after every frame already shown"
    assert cut["pts"] == cut["frame"] / 25 and cut["speech_s"] > 0, "speech sent but not yet shown was dropped"
    indices = [f[0] for f in log]
    assert indices == list(range(indices[0], indices[0] + len(indices))), "one frame per index across the cut"
    assert any(not idle for index, _, idle in log if index < cut["frame"]), "speech frames came before the cut"
    resumed = [f for f in log if f[0] >= cut["frame"]]
    assert len(resumed) > FRAMES_AFTER_CUT and all(idle and pts == index / 25 for index, pts, idle in resumed), \
        "from the interrupt's frame on, every frame is idle, at its own time"
    assert idle_figure["shown"] == str(idle_figure["counted"]), "the page shows the idle frames it counted"
    assert idle_figure["counted"] >= max(after["idle"], speaking["idleBeforeSpeech"] + len(resumed))
    assert final["finished"] and not final["failed"], final["status"]

"""``emote stream --always-on``: a source that pauses gets idle frames in the pause, the MP4's sound keeps the
pause (so it stays as long as the video), and the end-of-run table counts the idle frames.

The pause is real time (the source is a pipe written by a thread), so the test asserts counts and
durations of the output, never how long anything took.
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from support import demo_pcm16

from engine.cli import main
from engine.media import load_audio, read_video_info

ROOT = Path(__file__).resolve().parents[2]
PORTRAIT = ROOT / "engine" / "assets" / "demo" / "portrait.png"
PAUSE_S = 1.5
SPEECH_S = 0.5


class PipeStdin:
    """Stands in for ``sys.stdin``: ``buffer`` reads a pipe that ``writer`` fills with ``chunks``, the first
    once the reader has started (the model is loaded by then), then one every ``pause_s``."""

    def __init__(self, chunks: list[bytes], pause_s: float):
        read, write = os.pipe()
        self._pipe = io.open(read, "rb", buffering=0)
        self._write = write
        self._reading = threading.Event()
        self.writer = threading.Thread(target=self._feed, args=(chunks, pause_s), daemon=True)

    @property
    def buffer(self) -> PipeStdin:
        return self

    def read(self, size: int) -> bytes:
        self._reading.set()
        return self._pipe.read(size)

    def close(self) -> None:
        self._pipe.close()

    def _feed(self, chunks: list[bytes], pause_s: float) -> None:
        self._reading.wait(60)
        with io.open(self._write, "wb", buffering=0) as out:
            for k, chunk in enumerate(chunks):
                if k:
                    time.sleep(pause_s)
                out.write(chunk)


def run_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
               *flags: str) -> tuple[str, dict]:
    half_second = demo_pcm16(SPEECH_S).tobytes()
    stdin = PipeStdin([half_second, half_second], PAUSE_S)
    monkeypatch.setattr("sys.stdin", stdin)
    stdin.writer.start()
    out = tmp_path / f"out{len(flags)}.mp4"
    code = main(["stream", "--stdin-pcm", "16000", "--image", str(PORTRAIT), "--out", str(out), "--model", "tiny",
                 "--steps", "1", "--quiet", *flags])
    stdin.writer.join(10)
    stdin.close()
    assert code == 0, capsys.readouterr().err
    return capsys.readouterr().out, {**read_video_info(out), "pcm": load_audio(out)}


def test_always_on_fills_the_pause_with_idle_frames_and_keeps_the_sound_in_step(tmp_path, monkeypatch, capsys):
    table, info = run_stream(tmp_path, monkeypatch, capsys, "--always-on")
    print(table)
    idle = re.search(r"\| idle frames \(from silence\) \| (\d+), 1 steps per clip \|", table)
    assert idle, table
    silence_frames = int((PAUSE_S - SPEECH_S) * 25)  # the first half second of speech plays during the pause
    assert int(idle.group(1)) >= 8, "at least one whole clip (8 frames) of the pause was made from silence"
    assert info["frames"] >= 2 * SPEECH_S * 25 + silence_frames - 2, "the pause is in the video"
    assert info["audio_duration"] == pytest.approx(info["duration"], abs=0.1), \
        "the sound carries the pause: it lasts as long as the video"
    pcm = info["pcm"]
    loud = float(np.abs(pcm[:round(SPEECH_S * 16000)]).max())
    pause = pcm[round((SPEECH_S + 0.25) * 16000):round((PAUSE_S - 0.1) * 16000)]
    assert loud > 0.05 and float(np.abs(pause).max()) < 0.01 * loud, "the pause is silent where the video idles"


def test_without_always_on_the_pause_is_not_in_the_video(tmp_path, monkeypatch, capsys):
    table, info = run_stream(tmp_path, monkeypatch, capsys)
    assert "idle frames" not in table
    assert info["frames"] <= 26 + 2, "one second of speech, one second of video: the pause left no frames"
    assert info["audio_duration"] == pytest.approx(1.0, abs=0.1)


def test_idle_steps_needs_a_number_in_range(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["stream", "--stdin-pcm", "16000", "--image", "p.png", "--out", "o.mp4", "--always-on",
              "--idle-steps", "0"])
    assert exit_.value.code == 2 and "--idle-steps" in capsys.readouterr().err

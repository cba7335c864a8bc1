"""Audio sources: file blocks and pacing, microphone through a stand-in stream, PCM on a pipe, errors."""

from __future__ import annotations

import builtins
import io
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from support import tone, write_wav

from engine.media import load_audio
from engine.stream.sources import (
    PORTAUDIO_MISSING,
    FileSource,
    MicrophoneSource,
    SourceError,
    StdinPcmSource,
    StreamingResampler,
    list_input_devices,
    select_input_device,
)

try:
    import sounddevice as sd
except OSError:  # the PortAudio library is missing: sounddevice cannot load
    sd = None

needs_portaudio = pytest.mark.skipif(sd is None, reason="the PortAudio library is not installed")
SR = 16000


def one_shot(pcm: np.ndarray, rate: int) -> np.ndarray:
    """The whole signal resampled to 16 kHz in one PyAV call (the oracle for block-wise conversion)."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SR)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[None], dtype=np.float32), format="flt", layout="mono")
    frame.sample_rate = rate
    frames = resampler.resample(frame) + resampler.resample(None)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames])


def assert_continuous_sine(out: np.ndarray, seconds: float, freq: float = 440.0, amp: float = 0.5) -> None:
    """``out`` (16 kHz) is the sine, without clicks: close to the ideal away from the edges, smooth everywhere."""
    assert abs(out.size - round(SR * seconds)) <= 2
    ideal = amp * np.sin(2 * np.pi * freq * np.arange(out.size) / SR)
    assert np.abs(out - ideal)[64:-64].max() < 2e-3
    max_step = 2 * np.pi * freq * amp / SR
    assert np.abs(np.diff(out[64:-64])).max() < max_step * 1.05


# --------------------------------------------------------------------------------------------- file

class FakeClock:
    """A monotonic clock that only ``sleep`` and the test move."""

    def __init__(self, start: float = 100.0):
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def speech_wav(tmp_path: Path) -> Path:
    return write_wav(tmp_path / "speech.wav", tone(1.01, 220.0, rate=SR), SR)


def test_file_source_blocks_cover_the_file(speech_wav: Path):
    whole = load_audio(speech_wav)
    for block_ms, block in ((20.0, 320), (10.0, 160), (33.0, 528)):
        blocks = list(FileSource(speech_wav, block_ms=block_ms).blocks())
        assert all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
        assert [b.size for b in blocks[:-1]] == [block] * (len(blocks) - 1)
        assert 0 < blocks[-1].size <= block
        np.testing.assert_array_equal(np.concatenate(blocks), whole)


def test_file_source_unpaced_never_sleeps(speech_wav: Path):
    clock = FakeClock()
    source = FileSource(speech_wav, realtime=False, clock=clock, sleep=clock.sleep)
    assert sum(b.size for b in source.blocks()) == round(1.01 * SR)
    assert clock.sleeps == []


def test_file_source_paces_to_absolute_deadlines(speech_wav: Path):
    clock = FakeClock()
    source = FileSource(speech_wav, block_ms=20.0, realtime=True, clock=clock, sleep=clock.sleep)
    released = []
    for k, _ in enumerate(source.blocks()):
        released.append(clock.now)
        clock.now += 0.003  # the consumer's own work between blocks
        if k == 10:
            clock.now += 0.1  # a stall of five blocks
    start = released[0]
    deadlines = start + 0.02 * np.arange(len(released))
    assert len(released) == 51
    np.testing.assert_allclose(released[:11], deadlines[:11], atol=1e-9)
    # after the stall the overdue blocks 11-15 go out without waiting (only the consumer's 3 ms apart),
    # then the pace resumes on the original schedule: no drift
    assert released[11] == pytest.approx(start + 0.303)
    np.testing.assert_allclose(np.diff(released[11:16]), 0.003, atol=1e-9)
    np.testing.assert_allclose(released[16:], deadlines[16:], atol=1e-9)


def test_file_source_close_stops_pacing(speech_wav: Path):
    clock = FakeClock()
    source = FileSource(speech_wav, realtime=True, clock=clock, sleep=clock.sleep)
    got = []
    for block in source.blocks():
        got.append(block)
        if len(got) == 3:
            source.close()
    assert len(got) == 3


def test_file_source_bad_file_is_a_one_line_source_error(tmp_path: Path):
    bad = tmp_path / "noise.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(SourceError) as err:
        FileSource(bad)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)


# --------------------------------------------------------------------------------------- resampler

@pytest.mark.parametrize("rate", [44100, 48000, 8000, 22050])
def test_streaming_resampler_matches_one_shot_in_any_blocks(rate: int):
    pcm = tone(0.7, rate=rate)
    rng = np.random.default_rng(rate)
    cuts = np.cumsum(rng.integers(1, 900, size=2000))
    cuts = cuts[cuts < pcm.size]
    resampler = StreamingResampler(rate)
    out = np.concatenate([resampler.process(b) for b in np.split(pcm, cuts)] + [resampler.flush()])
    np.testing.assert_allclose(out, one_shot(pcm, rate), atol=1e-6)
    assert_continuous_sine(out, 0.7)


# ------------------------------------------------------------------------------------- microphone

FAKE_DEVICES = [
    {"name": "HDA Intel PCH: ALC3246 Analog (hw:0,0)", "index": 0, "hostapi": 0, "max_input_channels": 2,
     "max_output_channels": 2, "default_samplerate": 48000.0},
    {"name": "HDA Intel PCH: HDMI 0 (hw:0,3)", "index": 1, "hostapi": 0, "max_input_channels": 0,
     "max_output_channels": 8, "default_samplerate": 44100.0},
    {"name": "USB Audio Device: Mic (hw:2,0)", "index": 2, "hostapi": 0, "max_input_channels": 1,
     "max_output_channels": 0, "default_samplerate": 44100.0},
]


@pytest.fixture
def fake_devices(monkeypatch):
    """sounddevice sees three devices (two inputs, the first being the default input)."""

    def query_devices(device=None, kind=None):
        if kind == "input":
            return dict(FAKE_DEVICES[0])
        if device is not None:
            return dict(FAKE_DEVICES[device])
        return [dict(d) for d in FAKE_DEVICES]

    monkeypatch.setattr(sd, "query_devices", query_devices)


def stand_in(rates: set[int], seconds: float = 1.0, freq: float = 440.0, live: bool = False, in_thread: bool = True):
    """A stand-in for sounddevice.InputStream: same keywords and callback protocol, playing a sine.

    It refuses rates outside ``rates`` with PortAudioError, as PortAudio does; after ``start()`` it
    calls ``callback(indata [blocksize, channels], frames, time, status)`` with one reused buffer per
    block (PortAudio reuses it too), then ``finished_callback()``. ``live``: play until closed.
    """

    class StandInStream:
        opened: list[StandInStream] = []

        def __init__(self, device=None, samplerate=None, channels=None, dtype=None, blocksize=None,
                     callback=None, finished_callback=None):
            if samplerate not in rates:
                raise sd.PortAudioError("Error opening InputStream: Invalid sample rate [PaErrorCode -9997]")
            assert dtype == "float32" and channels == 1 and blocksize > 0
            self.kwargs = dict(device=device, samplerate=samplerate, channels=channels, blocksize=blocksize)
            self.callback, self.finished_callback = callback, finished_callback
            self.closed = threading.Event()
            self.thread: threading.Thread | None = None
            StandInStream.opened.append(self)

        def _play(self) -> None:
            rate, block = self.kwargs["samplerate"], self.kwargs["blocksize"]
            pcm = tone(seconds, freq, rate=rate)
            buffer = np.zeros((block, 1), np.float32)
            k = 0
            while not self.closed.is_set() and (live or k * block < pcm.size):
                chunk = pcm[k * block:(k + 1) * block] if not live else tone(block / rate, freq, rate=rate)
                buffer[:] = 0
                buffer[:chunk.size, 0] = chunk
                self.callback(buffer, block, None, sd.CallbackFlags())
                buffer[:] = np.nan  # a callback that kept a view instead of a copy now holds garbage
                k += 1
                if live:
                    time.sleep(0.002)
            self.finished_callback()

        def start(self) -> None:
            if in_thread:
                self.thread = threading.Thread(target=self._play, daemon=True)
                self.thread.start()
            else:
                self._play()

        def close(self) -> None:
            self.closed.set()
            if self.thread is not None and self.thread is not threading.current_thread():
                self.thread.join(timeout=5)

    return StandInStream


@needs_portaudio
@pytest.mark.parametrize("device_rate", [44100, 48000])
def test_microphone_resamples_to_16k_continuously(fake_devices, device_rate: int):
    factory = stand_in({device_rate})
    name = "usb" if device_rate == 44100 else None
    with MicrophoneSource(device=name, block_ms=20.0, stream_factory=factory) as source:
        assert source.rate == device_rate
        out = np.concatenate(list(source.blocks()))
    stream = factory.opened[-1]
    assert stream.kwargs["blocksize"] == device_rate // 50
    assert stream.closed.is_set() and source.dropped_blocks == 0
    played = tone(1.0, rate=device_rate)
    np.testing.assert_allclose(out, one_shot(played, device_rate), atol=1e-6)
    assert_continuous_sine(out, 1.0)


@needs_portaudio
def test_microphone_opens_at_16k_when_the_device_accepts_it(fake_devices):
    factory = stand_in({16000, 48000})
    with MicrophoneSource(stream_factory=factory) as source:
        assert source.rate == 16000
        out = np.concatenate(list(source.blocks()))
    np.testing.assert_array_equal(out, tone(1.0, rate=SR))


@needs_portaudio
def test_microphone_device_by_index_or_name(fake_devices):
    factory = stand_in({48000, 44100})
    for device, index in ((None, 0), (2, 2), ("2", 2), ("usb audio", 2), ("ALC3246", 0),
                          ("hda intel pch: alc3246 analog (hw:0,0)", 0)):
        source = MicrophoneSource(device=device, stream_factory=factory)
        assert source.device["index"] == index
        assert factory.opened[-1].kwargs["device"] == index
        source.close()
    assert [d["index"] for d in list_input_devices()] == [0, 2]
    assert [d["default"] for d in list_input_devices()] == [True, False]


@needs_portaudio
def test_microphone_unknown_device_lists_the_inputs(fake_devices):
    for device in ("bluetooth", 1, 7):
        with pytest.raises(SourceError) as err:
            MicrophoneSource(device=device, stream_factory=stand_in({48000}))
        message = str(err.value)
        assert "\n" not in message
        assert "USB Audio Device: Mic" in message and "ALC3246" in message and "HDMI" not in message


def test_ambiguous_device_name_is_refused():
    devices = [{"index": 0, "name": "USB Mic A", "default": True}, {"index": 3, "name": "USB Mic B", "default": False}]
    with pytest.raises(SourceError, match="ambiguous"):
        select_input_device("usb mic", devices)
    assert select_input_device("mic b", devices)["index"] == 3


@needs_portaudio
def test_microphone_refused_by_the_device(fake_devices):
    with pytest.raises(SourceError, match=r"^cannot open audio input device 2 .*Invalid sample rate"):
        MicrophoneSource(device=2, stream_factory=stand_in({96000}))


@needs_portaudio
def test_microphone_overflow_drops_blocks_without_blocking(fake_devices):
    factory = stand_in({48000}, seconds=0.24, in_thread=False)  # 12 blocks delivered before any is read
    with MicrophoneSource(block_ms=20.0, stream_factory=factory, queue_s=0.1) as source:
        out = np.concatenate(list(source.blocks()))
    assert source.dropped_blocks == 12 - 5
    assert abs(out.size - 5 * 320) <= 2


@needs_portaudio
def test_microphone_close_ends_a_live_stream(fake_devices):
    factory = stand_in({48000}, live=True)
    source = MicrophoneSource(stream_factory=factory)
    got = 0
    for block in source.blocks():
        got += block.size
        if got >= 3 * 320:
            source.close()
    assert source.closed and factory.opened[-1].closed.is_set()


@needs_portaudio
def test_no_input_device_is_a_clear_error():
    """This machine has no sound card: the real sounddevice path must say so in one line."""
    if list_input_devices():
        pytest.skip("this machine has an audio input device")
    with pytest.raises(SourceError) as err:
        MicrophoneSource()
    assert str(err.value).startswith("no audio input device available (") and "\n" not in str(err.value)
    with pytest.raises(SourceError, match="^no audio input device available"):
        MicrophoneSource(device="usb")


def test_missing_portaudio_is_a_clear_error(monkeypatch):
    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(builtins, "__import__", failing_import)
    for attempt in (MicrophoneSource, list_input_devices):
        with pytest.raises(SourceError) as err:
            attempt()
        assert str(err.value) == PORTAUDIO_MISSING


# ------------------------------------------------------------------------------------------ stdin

def pcm16(pcm: np.ndarray) -> bytes:
    return (np.clip(pcm, -1, 1) * 32767).round().astype("<i2").tobytes()


class TrickleStream(io.RawIOBase):
    """A pipe that hands out at most ``most`` bytes per read (odd sizes split samples across reads)."""

    def __init__(self, data: bytes, most: int):
        self.data, self.most, self.pos = data, most, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        n = self.most if size < 0 else min(size, self.most)
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk


@pytest.mark.parametrize("rate", [8000, 44100])
def test_stdin_pcm_is_resampled_to_16k(rate: int):
    played = tone(0.5, rate=rate)
    source = StdinPcmSource(rate, stream=io.BytesIO(pcm16(played) + b"\x7f"), block_ms=20.0)
    blocks = list(source.blocks())
    assert all(b.dtype == np.float32 for b in blocks)
    out = np.concatenate(blocks)
    assert_continuous_sine(out, 0.5)
    int16 = np.frombuffer(pcm16(played), "<i2").astype(np.float32) / 32768
    np.testing.assert_allclose(out, one_shot(int16, rate), atol=1e-6)


def test_stdin_pcm_at_16k_is_exact_with_short_reads_and_an_odd_tail():
    data = pcm16(tone(0.3, rate=SR))
    out = np.concatenate(list(StdinPcmSource(SR, stream=TrickleStream(data + b"\x01", most=77)).blocks()))
    np.testing.assert_array_equal(out, np.frombuffer(data, "<i2").astype(np.float32) / 32768)


def test_stdin_pcm_rejects_a_bad_rate():
    for rate in (0, -8000, 44100.5):
        with pytest.raises(SourceError, match="positive integer"):
            StdinPcmSource(rate, stream=io.BytesIO(b""))

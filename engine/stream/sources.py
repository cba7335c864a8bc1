"""Audio sources: where the session's PCM comes from (a file, a microphone, raw PCM on a pipe).

Every source yields float32 mono blocks at 16 kHz (``SAMPLE_RATE``), in whatever block sizes it has
them; the session is indifferent to block sizes. Sources at other rates go through a
:class:`StreamingResampler`, which keeps its filter state between blocks, so the converted stream is
the same as converting the whole recording at once (no clicks at block boundaries).
"""

from __future__ import annotations

import abc
import math
import queue
import sys
import threading
import time
from pathlib import Path
from types import ModuleType, TracebackType
from typing import BinaryIO, Callable, Iterator

import av
import numpy as np

from engine.media import MediaError, PathLike, load_audio
from engine.timebase import SAMPLE_RATE

PORTAUDIO_MISSING = "PortAudio library not found: install it with `apt-get install libportaudio2`"


class SourceError(RuntimeError):
    """An audio source that cannot be opened or read; the message is one line."""


class StreamingResampler:
    """Convert a mono float32 stream from ``in_rate`` to ``out_rate`` Hz block by block.

    PyAV's resampler (libswresample) keeps its filter history between calls, so feeding a signal in
    blocks of any size gives the same samples as feeding it whole. The filter holds back a few
    output samples until more input or :meth:`flush`.
    """

    def __init__(self, in_rate: int, out_rate: int = SAMPLE_RATE):
        """Rates in Hz, positive integers."""
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate, self.out_rate = int(in_rate), int(out_rate)
        self._resampler = (None if self.in_rate == self.out_rate else
                           av.AudioResampler(format="flt", layout="mono", rate=self.out_rate))

    def process(self, block: np.ndarray) -> np.ndarray:
        """float32 [n] at ``in_rate`` -> float32 [m] at ``out_rate`` (m may be 0 for tiny blocks)."""
        block = np.ascontiguousarray(block, dtype=np.float32).reshape(-1)
        if self._resampler is None or block.size == 0:
            return block
        frame = av.AudioFrame.from_ndarray(block[None], format="flt", layout="mono")
        frame.sample_rate = self.in_rate
        return self._collect(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        """The samples still held in the filter, float32 [m]; call once, at the end of the stream."""
        if self._resampler is None:
            return np.zeros(0, np.float32)
        return self._collect(self._resampler.resample(None))

    @staticmethod
    def _collect(frames: list[av.AudioFrame]) -> np.ndarray:
        parts = [f.to_ndarray().reshape(-1) for f in frames]
        if not parts:
            return np.zeros(0, np.float32)
        return (np.concatenate(parts) if len(parts) > 1 else parts[0]).astype(np.float32, copy=False)


def _block_samples(block_ms: float, rate: float) -> int:
    """Samples in a block of ``block_ms`` milliseconds at ``rate`` Hz (at least 1)."""
    if not block_ms > 0:
        raise ValueError(f"block_ms must be positive, got {block_ms}")
    return max(1, round(rate * block_ms / 1000.0))


class AudioSource(abc.ABC):
    """A stream of float32 mono PCM blocks at 16 kHz; iterate :meth:`blocks`, then :meth:`close`."""

    sample_rate: int = SAMPLE_RATE

    def __init__(self) -> None:
        self._closed = threading.Event()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed.is_set()

    @abc.abstractmethod
    def blocks(self) -> Iterator[np.ndarray]:
        """Yield float32 [n] blocks at 16 kHz (n >= 1) until the audio ends or the source is closed."""

    def close(self) -> None:
        """Stop the source: :meth:`blocks` ends soon after (it may be called from another thread)."""
        self._closed.set()

    def __enter__(self) -> AudioSource:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class FileSource(AudioSource):
    """An audio file (any format :func:`engine.media.load_audio` reads), in blocks of ``block_ms``.

    Unpaced (``realtime=False``) it yields as fast as it is read, the offline path. Paced, block ``k``
    is released at ``start + k * block duration`` on a monotonic clock, ``start`` being the first
    request for a block; each wait is to that absolute deadline, so a slow consumer never makes the
    stream drift (late blocks go out at once, and the pace resumes on schedule).
    """

    def __init__(self, path: PathLike, block_ms: float = 20.0, realtime: bool = False, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        """``clock`` (seconds) and ``sleep`` (seconds) drive the pacing; tests pass fakes."""
        super().__init__()
        self.path = Path(path)
        self.block = _block_samples(block_ms, SAMPLE_RATE)
        self.realtime = realtime
        self._clock, self._sleep = clock, sleep
        try:
            self.pcm = load_audio(self.path, SAMPLE_RATE)
        except MediaError as exc:
            raise SourceError(str(exc)) from None

    @property
    def duration(self) -> float:
        """Length of the audio in seconds."""
        return self.pcm.shape[0] / SAMPLE_RATE

    def blocks(self) -> Iterator[np.ndarray]:
        start: float | None = None
        for first in range(0, self.pcm.shape[0], self.block):
            if self.closed:
                return
            if self.realtime:
                now = self._clock()
                if start is None:
                    start = now
                wait = start + first / SAMPLE_RATE - now
                if wait > 0:
                    self._sleep(wait)
                if self.closed:
                    return
            yield self.pcm[first:first + self.block]


def _import_sounddevice() -> ModuleType:
    """The ``sounddevice`` module, or a SourceError saying what to install."""
    try:
        import sounddevice
    except OSError:
        raise SourceError(PORTAUDIO_MISSING) from None
    except ImportError:
        raise SourceError("the sounddevice package is not installed: "
                          "install it with `pip install sounddevice`") from None
    return sounddevice


def list_input_devices() -> list[dict]:
    """Audio input devices PortAudio knows.

    Returns a list of dicts: ``index`` (PortAudio device index), ``name``, ``channels`` (max input
    channels), ``default_samplerate`` (Hz), ``default`` (True for the system's default input).
    """
    sd = _import_sounddevice()
    try:
        devices = list(sd.query_devices())
    except sd.PortAudioError as exc:
        raise SourceError(f"no audio input device available ({exc})") from None
    try:
        default = sd.query_devices(kind="input")["index"]
    except (sd.PortAudioError, ValueError):
        default = None
    inputs = []
    for position, info in enumerate(devices):
        index = info.get("index", position)
        if info["max_input_channels"] > 0:
            inputs.append({"index": index, "name": info["name"], "channels": int(info["max_input_channels"]),
                           "default_samplerate": float(info["default_samplerate"]), "default": index == default})
    return inputs


def _describe(devices: list[dict]) -> str:
    return ", ".join(f"{d['index']}: {d['name']!r}" for d in devices)


def select_input_device(device: int | str | None, devices: list[dict]) -> dict:
    """Pick one of ``devices`` (from :func:`list_input_devices`).

    ``device`` is None (the default input), an index (int, or a string of digits), or a name: an exact
    case-insensitive match, else the one device whose name contains it (case-insensitive).
    """
    if not devices:
        raise SourceError("no audio input device available (PortAudio lists none)")
    if device is None:
        for d in devices:
            if d["default"]:
                return d
        raise SourceError(f"no default audio input device; choose one with --input-device ({_describe(devices)})")
    if isinstance(device, int) or (isinstance(device, str) and device.strip().isdigit()):
        index = int(device)
        for d in devices:
            if d["index"] == index:
                return d
        raise SourceError(f"no audio input device with index {index} (available: {_describe(devices)})")
    wanted = device.strip().lower()
    exact = [d for d in devices if d["name"].lower() == wanted]
    matches = exact or [d for d in devices if wanted in d["name"].lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise SourceError(f"no audio input device matches {device!r} (available: {_describe(devices)})")
    raise SourceError(f"audio input device {device!r} is ambiguous: it matches {_describe(matches)}")


class MicrophoneSource(AudioSource):
    """Live audio from an input device through sounddevice (PortAudio).

    The stream is opened at 16 kHz when the device accepts it, else at the device's default rate and
    converted with a :class:`StreamingResampler`. The audio callback copies each block (mono: the
    channels averaged) into a bounded queue holding ``queue_s`` seconds and never blocks: when the
    consumer falls that far behind, the newest block is dropped and counted in ``dropped_blocks``.

    ``stream_factory`` replaces ``sounddevice.InputStream`` (tests pass a stand-in). It is called with
    the same keywords (``device``, ``samplerate``, ``channels``, ``dtype``, ``blocksize``,
    ``callback``, ``finished_callback``), must raise ``sounddevice.PortAudioError`` for a rate the
    device refuses, must call ``callback(indata [frames, channels] float32, frames, time, status)``
    after ``start()``, and ``finished_callback()`` when it stops by itself; ``close()`` stops it.
    """

    def __init__(self, device: int | str | None = None, block_ms: float = 20.0,
                 stream_factory: Callable[..., object] | None = None, queue_s: float = 2.0):
        """``device``: index, name (substring) or None for the default input; ``block_ms`` per callback."""
        super().__init__()
        sd = _import_sounddevice()
        self.device = select_input_device(device, list_input_devices())
        self.dropped_blocks = 0
        self._finished = threading.Event()
        self._queue: queue.Queue[np.ndarray] = queue.Queue(maxsize=max(1, math.ceil(queue_s * 1000.0 / block_ms)))
        factory = stream_factory or sd.InputStream
        rates = [SAMPLE_RATE]
        if round(self.device["default_samplerate"]) != SAMPLE_RATE:
            rates.append(round(self.device["default_samplerate"]))
        error: Exception | None = None
        for rate in rates:
            try:
                self._stream = factory(device=self.device["index"], samplerate=rate, channels=1, dtype="float32",
                                       blocksize=_block_samples(block_ms, rate), callback=self._callback,
                                       finished_callback=self._finished.set)
            except sd.PortAudioError as exc:
                error = exc
                continue
            self.rate = rate
            break
        else:
            raise SourceError(f"cannot open audio input device {self.device['index']} {self.device['name']!r} "
                              f"({' '.join(str(error).split())})")
        self._resampler = StreamingResampler(self.rate, SAMPLE_RATE)
        self._started = False

    def _callback(self, indata: np.ndarray, frames: int, time_info: object, status: object) -> None:
        """PortAudio's thread: copy the block, queue it, never wait."""
        block = indata[:, 0].copy() if indata.shape[1] == 1 else indata.mean(axis=1, dtype=np.float32)
        try:
            self._queue.put_nowait(block)
        except queue.Full:
            self.dropped_blocks += 1

    def blocks(self) -> Iterator[np.ndarray]:
        if self._started:
            raise SourceError("a microphone stream can be iterated only once")
        self._started = True
        if self.closed:
            return
        try:
            self._stream.start()
            while True:
                try:
                    block = self._queue.get(timeout=0.05)
                except queue.Empty:
                    if self.closed or self._finished.is_set():
                        break
                    continue
                out = self._resampler.process(block)
                if out.size:
                    yield out
            tail = self._resampler.flush()
            if tail.size:
                yield tail
        finally:
            self.close()

    def close(self) -> None:
        """Stop and close the input stream; the blocks already queued are still yielded."""
        if self.closed:
            return
        super().close()
        self._stream.close()


class StdinPcmSource(AudioSource):
    """Raw signed 16-bit little-endian mono PCM at ``rate`` Hz from a binary stream (stdin by default).

    Reads ``block_ms`` at a time, converts to 16 kHz with a :class:`StreamingResampler`, and ends at
    end of file (an odd trailing byte, half a sample, is dropped). The stream is not closed.
    """

    def __init__(self, rate: int, stream: BinaryIO | None = None, block_ms: float = 20.0):
        """``rate``: the PCM's sample rate in Hz (a positive integer)."""
        super().__init__()
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise SourceError(f"PCM sample rate must be a positive integer in Hz, got {rate!r}")
        self.rate = int(rate)
        self.stream = stream if stream is not None else sys.stdin.buffer
        self.read_bytes = 2 * _block_samples(block_ms, self.rate)
        self._resampler = StreamingResampler(self.rate, SAMPLE_RATE)

    def blocks(self) -> Iterator[np.ndarray]:
        carry = b""
        while not self.closed:
            try:
                data = self.stream.read(self.read_bytes)
            except OSError as exc:
                raise SourceError(f"reading PCM from the input stream failed ({exc})") from None
            if not data:
                break
            data = carry + data
            usable = len(data) - len(data) % 2
            carry = data[usable:]
            if usable:
                pcm = np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
                out = self._resampler.process(pcm)
                if out.size:
                    yield out
        tail = self._resampler.flush()
        if tail.size:
            yield tail

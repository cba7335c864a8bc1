"""Speech with phoneme timing from espeak-ng, called through its C library (``libespeak-ng.so.1``).

The command line cannot give phoneme times for its own voices (``--pho`` needs MBROLA), but the library
reports a phoneme event, with its sample position in the synthesised audio, for every phoneme it speaks
(``espeakINITIALIZE_PHONEME_EVENTS``). One synchronous call returns both, so the timing is exact by
construction. espeak-ng writes 22.05 kHz; :func:`resample` brings it to 16 kHz with a zero-phase
windowed-sinc filter (no delay, so phoneme times stay aligned with the audio).

Synthesis is deterministic: the same text, voice, rate and pitch give the same samples (each utterance
is spoken by a freshly loaded engine in a forked process, since the library carries state between
utterances). Linux only (``os.fork``).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import threading
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np

from engine.timebase import SAMPLE_RATE

"""Sample rate of the returned PCM (what the audio encoders read)."""

_LIBRARY = "libespeak-ng.so.1"
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_EVENT_MSG_TERMINATED = 6
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE, _PARAM_WORDGAP = 1, 2, 3, 4, 7


class SpeechError(RuntimeError):
    """espeak-ng is missing or refused the request; the message is one line."""


class _Event(ctypes.Structure):
    """``espeak_EVENT`` of speak_lib.h (x86-64 and aarch64 layouts are the same)."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Phoneme:
    """One spoken phoneme: espeak-ng's mnemonic (``"aI"``, ``"m"``, ``"_:"`` for a pause), times in seconds."""

    symbol: str
    start: float
    end: float


@dataclass(frozen=True)
class Voice:
    """espeak-ng settings: ``name`` (e.g. ``"en-us+f3"``), ``rate`` words per minute, ``pitch`` 0-99,
    ``pitch_range`` 0-99 (intonation), ``word_gap`` extra pause between words in units of 10 ms."""

    name: str = "en-us"
    rate: int = 170
    pitch: int = 50
    pitch_range: int = 50
    word_gap: int = 0


@dataclass(frozen=True)
class Speech:
    """Synthesised speech: ``pcm`` float32 [samples] in [-1, 1] at ``sample_rate`` Hz, and its phonemes."""

    text: str
    voice: Voice
    pcm: np.ndarray
    phonemes: tuple[Phoneme, ...]
    sample_rate: int = SAMPLE_RATE

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.pcm.shape[0] / self.sample_rate


class _Espeak:
    """An initialised espeak-ng engine (the library keeps global state: one per process, one call at a time)."""

    def __init__(self) -> None:
        try:
            self.lib = ctypes.CDLL(_LIBRARY)
        except OSError as exc:
            raise SpeechError(f"espeak-ng's library is missing ({exc}); apt-get install espeak-ng") from None
        options = _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT
        self.native_rate = int(self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, options))
        if self.native_rate <= 0:
            raise SpeechError("espeak-ng failed to initialise (is espeak-ng-data installed?)")
        self.lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[str, int]] = []
        self._callback = _CALLBACK(self._on_audio)
        self.lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav: ctypes.POINTER(ctypes.c_short), count: int, events: ctypes.POINTER(_Event)) -> int:
        if count > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, (count,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == _EVENT_PHONEME:
                self._events.append((event.id.decode("ascii", "replace"), int(event.sample)))
            elif event.type == _EVENT_MSG_TERMINATED:
                self._events.append(("", int(event.sample)))
            i += 1
        return 0

    def synthesize(self, text: str, voice: Voice) -> tuple[np.ndarray, list[tuple[str, int]]]:
        """int16 [samples] at ``native_rate`` and (phoneme, start sample) pairs, ``""`` marking the end."""
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise SpeechError(f"espeak-ng has no voice {voice.name!r}")
            for parameter, value in ((_PARAM_RATE, voice.rate), (_PARAM_PITCH, voice.pitch),
                                     (_PARAM_RANGE, voice.pitch_range), (_PARAM_WORDGAP, voice.word_gap),
                                     (_PARAM_VOLUME, 100)):
                self.lib.espeak_SetParameter(parameter, int(value), 0)
            self._chunks, self._events = [], []
            data = text.encode("utf-8")
            status = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            self.lib.espeak_Synchronize()
            if status != 0:
                raise SpeechError(f"espeak-ng could not speak {text[:40]!r} (error {status})")
            pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            return pcm, list(self._events)


def _synthesize_fresh(text: str, voice: Voice) -> tuple[np.ndarray, list[tuple[str, int]], int]:
    """Synthesise in a forked child that loads espeak-ng afresh: the library keeps state from one
    utterance to the next (glottal flutter phase, the C library's ``rand()``), so only a fresh engine
    gives the same samples for the same request. Returns (int16 PCM, events, native sample rate)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        # The child has only this thread: objects that were garbage in the parent may own locks or condition
        # variables of threads that do not exist here (PyAV's filter-graph threads: freeing one blocks for ever),
        # so the child never collects; it leaves through os._exit.
        gc.disable()
        code = 0
        try:
            os.close(read_end)
            ctypes.CDLL(None).srand(1)
            engine = _Espeak()
            pcm, events = engine.synthesize(text, voice)
            header = {"rate": engine.native_rate, "events": events}
            payload = json.dumps(header).encode() + b"\n" + pcm.astype("<i2").tobytes()
        except BaseException as exc:
            message = str(exc).splitlines()[0] if str(exc) else repr(exc)
            payload, code = json.dumps({"error": message}).encode() + b"\n", 1
        with os.fdopen(write_end, "wb") as out:
            out.write(payload)
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as source:
        payload = source.read()
    _, status = os.waitpid(pid, 0)
    if not payload:
        raise SpeechError(f"espeak-ng child exited with status {status}")
    header, _, body = payload.partition(b"\n")
    meta = json.loads(header)
    if "error" in meta:
        raise SpeechError(meta["error"])
    events = [(phoneme, int(sample)) for phoneme, sample in meta["events"]]
    return np.frombuffer(body, "<i2").astype(np.int16), events, int(meta["rate"])


@lru_cache(maxsize=4)
def _resampling_kernels(source_rate: int, target_rate: int, half_width: int, beta: float) -> np.ndarray:
    """float64 [q, 2 span + 1]: the filter of each output phase. Output ``j`` sits at source position
    ``j p / q`` (``p / q`` = source / target rate in lowest terms); its fractional part repeats every
    ``q`` outputs, so ``q`` filters serve every output."""
    ratio = Fraction(source_rate, target_rate)
    cutoff = 0.5 * min(1.0, target_rate / source_rate) * 0.95
    span = int(np.ceil(half_width / min(1.0, target_rate / source_rate)))
    phases = (np.arange(ratio.denominator) * ratio.numerator % ratio.denominator) / ratio.denominator
    distance = phases[:, None] - np.arange(-span, span + 1)[None, :]
    window = np.i0(beta * np.sqrt(np.clip(1.0 - (distance / (span + 1)) ** 2, 0.0, 1.0))) / np.i0(beta)
    return 2 * cutoff * np.sinc(2 * cutoff * distance) * window


def resample(pcm: np.ndarray, source_rate: int, target_rate: int, half_width: int = 24,
             beta: float = 8.0) -> np.ndarray:
    """Band-limited resampling with a Kaiser-windowed sinc, centred on each output instant (zero phase).

    Args:
        pcm: float [samples] at ``source_rate`` Hz.
        half_width: filter half-length in source samples (at the lower of the two rates' Nyquist).
        beta: Kaiser window shape.
    Returns:
        float32 [round(samples * target_rate / source_rate)]; output sample ``j`` is the signal at time
        ``j / target_rate`` seconds, low-passed at 0.95 x the lower Nyquist frequency.
    """
    pcm = np.asarray(pcm, dtype=np.float64)
    ratio = Fraction(source_rate, target_rate)
    count = int(round(pcm.shape[0] * target_rate / source_rate))
    kernels = _resampling_kernels(source_rate, target_rate, half_width, beta)
    span = kernels.shape[1] // 2
    offsets = np.arange(-span, span + 1)
    padded = np.pad(pcm, (span + 1, span + 1))
    out = np.empty(count, dtype=np.float64)
    for start in range(0, count, 8192):
        index = np.arange(start, min(count, start + 8192))
        base = index * ratio.numerator // ratio.denominator
        taps = base[:, None] + offsets[None, :] + span + 1
        out[index] = (padded[taps] * kernels[index % ratio.denominator]).sum(axis=1)
    return out.astype(np.float32)


def synthesize(text: str, voice: Voice = Voice(), sample_rate: int = SAMPLE_RATE) -> Speech:
    """Speak ``text`` with espeak-ng; returns the audio at ``sample_rate`` Hz and each phoneme's times.

    A phoneme lasts from its event to the next one (the last to the end-of-message event). Raises
    :class:`SpeechError` when espeak-ng is missing or rejects the voice.
    """
    raw, events, rate = _synthesize_fresh(text, voice)
    pcm = resample(raw.astype(np.float32) / 32768.0, rate, sample_rate)
    phonemes = []
    for (symbol, sample), (_, next_sample) in zip(events, events[1:]):
        if symbol and next_sample > sample:
            phonemes.append(Phoneme(symbol, sample / rate, next_sample / rate))
    return Speech(text=text, voice=voice, pcm=np.clip(pcm, -1.0, 1.0), phonemes=tuple(phonemes),
                  sample_rate=sample_rate)

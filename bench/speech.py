"""The benchmark's speech: the shipped demo utterance repeated back to back, cut to the length asked for."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from engine.timebase import SAMPLE_RATE

DEMO_SPEECH = Path(__file__).resolve().parents[1] / "engine" / "assets" / "demo" / "speech.wav"


def read_wav(path: Path) -> np.ndarray:
    """A 16-bit mono 16 kHz WAV as float32 PCM in [-1, 1) (read with the standard library: no PyAV
    needed on a GPU machine)."""
    with wave.open(str(path), "rb") as f:
        if (f.getnchannels(), f.getsampwidth(), f.getframerate()) != (1, 2, SAMPLE_RATE):
            raise ValueError(f"{path}: expected 16-bit mono at {SAMPLE_RATE} Hz")
        data = f.readframes(f.getnframes())
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def speech_pcm(seconds: float, source: Path = DEMO_SPEECH) -> np.ndarray:
    """float32 mono PCM at 16 kHz, ``round(seconds * SAMPLE_RATE)`` samples: ``source`` repeated and cut."""
    if not seconds > 0:
        raise ValueError(f"speech length must be positive, got {seconds} s")
    utterance = read_wav(source)
    samples = round(seconds * SAMPLE_RATE)
    repeats = -(-samples // utterance.size)
    return np.tile(utterance, repeats)[:samples].astype(np.float32)


SESSION_OFFSET_S = 0.37
"""Session i's speech starts i * SESSION_OFFSET_S seconds into the demo utterance (no two sessions hear the same)."""


def session_speech(index: int, seconds: float) -> np.ndarray:
    """Session ``index``'s speech: float32 PCM at 16 kHz, ``seconds`` long, from its own offset."""
    offset = round(index * SESSION_OFFSET_S * SAMPLE_RATE)
    return speech_pcm(seconds + index * SESSION_OFFSET_S)[offset:offset + round(seconds * SAMPLE_RATE)]


def write_wav(path: Path, pcm: np.ndarray) -> Path:
    """Write float32 PCM in [-1, 1] as a 16-bit mono WAV at 16 kHz; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes((np.clip(pcm, -1, 1) * 32767).round().astype("<i2").tobytes())
    return path

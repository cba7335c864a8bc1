"""The engine's one time base: the audio sample rate, the video frame rate, and frame <-> sample conversion.

Audio is mono PCM at :data:`SAMPLE_RATE` samples per second; video runs at a model's ``fps`` frames per
second (any positive rate, 25 for the presets). Video frame ``i`` covers the audio samples
``[frame_start(i, fps), frame_start(i + 1, fps))``; a stream of ``n`` samples has
``frames_covering(n, fps)`` frames, of which ``frames_complete(n, fps)`` have all their audio. The
tolerances of 1e-9 keep an exact boundary exact where the float product misses it by a rounding error.
"""

from __future__ import annotations

import math

SAMPLE_RATE = 16000
"""Samples per second of the engine's audio: the audio encoders (wav2vec2, whisper) were trained on 16 kHz."""

DEFAULT_FPS = 25.0
"""Video frames per second of the presets and of models that do not say otherwise."""


def check_fps(fps: float) -> float:
    """``fps`` as a float if it is a finite positive frame rate (frames per second), else ValueError."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number of frames per second, got {fps!r}")
    return float(fps)


def frame_start(frame: int, fps: float, sample_rate: int = SAMPLE_RATE) -> int:
    """The first audio sample of video frame ``frame`` (from 0): ``round(frame * sample_rate / fps)``."""
    return round(frame * sample_rate / fps)


def frames_covering(samples: int, fps: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Video frames that ``samples`` samples of audio reach into: ``ceil(seconds * fps)``."""
    return math.ceil(samples * fps / sample_rate - 1e-9)


def frames_complete(samples: int, fps: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Video frames whose whole audio lies within the first ``samples`` samples: ``floor(seconds * fps)``."""
    return math.floor(samples * fps / sample_rate + 1e-9)


def samples_per_frame(fps: float, sample_rate: int = SAMPLE_RATE) -> int:
    """The most audio samples one video frame covers: ``ceil(sample_rate / fps)``."""
    return math.ceil(sample_rate / fps - 1e-9)

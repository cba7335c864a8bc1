"""Mouth shape from phoneme timing: the ground truth the synthetic faces are drawn with.

Each espeak-ng phoneme gets a target mouth shape (a viseme): ``opening`` in [0, 1] (0 = lips together,
1 = wide open) and ``width`` (1 = the rest width; rounded vowels < 1, spread vowels > 1). Targets sit at
the middle of each phoneme; between two middles the shape moves linearly, and a Gaussian of
``COARTICULATION_S`` smooths the path (neighbouring sounds blend, as real lips do). Pauses close the
mouth. Sampling the path at the centre of each video frame gives the per-frame truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.synthetic.speech import Phoneme

COARTICULATION_S = 0.025
"""Standard deviation (seconds) of the Gaussian that blends neighbouring visemes."""

_RATE = 1000.0
"""Samples per second of the internal mouth path."""


@dataclass(frozen=True)
class Viseme:
    """Target mouth shape of one phoneme: ``opening`` in [0, 1], ``width`` relative to rest (about 0.7-1.15)."""

    opening: float
    width: float


CLOSED = Viseme(0.0, 1.0)

_VOWEL_OPEN = Viseme(0.95, 1.0)
_VOWEL_MID = Viseme(0.6, 1.0)
_VOWEL_CLOSE = Viseme(0.35, 1.1)
_ROUNDED_MID = Viseme(0.55, 0.78)
_ROUNDED_CLOSE = Viseme(0.35, 0.72)

# espeak-ng's English mnemonics (phsource/ph_english), by the leading characters that decide the shape.
_EXACT = {
    "a": _VOWEL_OPEN, "a#": _VOWEL_OPEN, "A:": _VOWEL_OPEN, "A@": _VOWEL_OPEN, "aa": _VOWEL_OPEN,
    "aI": _VOWEL_OPEN, "aI@": _VOWEL_OPEN, "aI3": _VOWEL_OPEN, "aU": _VOWEL_OPEN, "aU@": _VOWEL_OPEN,
    "V": Viseme(0.8, 1.0),
    "E": _VOWEL_MID, "e": _VOWEL_MID, "e@": _VOWEL_MID, "eI": Viseme(0.55, 1.08), "@": Viseme(0.45, 1.0),
    "@2": Viseme(0.45, 1.0), "@5": Viseme(0.45, 1.0), "@L": Viseme(0.45, 1.0), "3": _VOWEL_MID, "3:": _VOWEL_MID,
    "i": _VOWEL_CLOSE, "i:": Viseme(0.3, 1.15), "I": _VOWEL_CLOSE, "i@": _VOWEL_CLOSE, "i@3": _VOWEL_CLOSE,
    "I2": _VOWEL_CLOSE, "I#": _VOWEL_CLOSE,
    "0": Viseme(0.75, 0.85), "O:": _ROUNDED_MID, "O@": _ROUNDED_MID, "o@": _ROUNDED_MID, "OI": _ROUNDED_MID,
    "oU": _ROUNDED_MID, "O": _ROUNDED_MID,
    "u:": _ROUNDED_CLOSE, "U": _ROUNDED_CLOSE, "U@": _ROUNDED_CLOSE, "u": _ROUNDED_CLOSE,
    "p": CLOSED, "b": CLOSED, "m": CLOSED,
    "f": Viseme(0.1, 1.0), "v": Viseme(0.1, 1.0),
    "w": Viseme(0.15, 0.7), "r": Viseme(0.25, 0.85), "S": Viseme(0.2, 0.85), "Z": Viseme(0.2, 0.85),
    "tS": Viseme(0.2, 0.85), "dZ": Viseme(0.2, 0.85),
    "h": Viseme(0.4, 1.0), "T": Viseme(0.25, 1.0), "D": Viseme(0.25, 1.0),
}
_CONSONANT = Viseme(0.22, 1.0)
"""Tongue and throat consonants (t d n l s z k g N j ...): jaw nearly closed, lips apart."""

_VOWEL_LETTERS = set("aAeEiIoOuUV03@")


def viseme(symbol: str) -> Viseme:
    """The target mouth shape of an espeak-ng phoneme mnemonic; pauses (``_``...) close the mouth."""
    if not symbol or symbol.startswith("_"):
        return CLOSED
    clean = symbol.strip("'%,=!;")
    for length in (3, 2, 1):
        if clean[:length] in _EXACT:
            return _EXACT[clean[:length]]
    if clean[:1] in _VOWEL_LETTERS:
        return _VOWEL_MID
    return _CONSONANT


@dataclass(frozen=True)
class MouthTrack:
    """Mouth shape per video frame: ``opening`` and ``width`` float32 [frames], frame ``i`` at its centre
    time ``(i + 0.5) / fps`` seconds."""

    opening: np.ndarray
    width: np.ndarray
    fps: float


def mouth_path(phonemes: tuple[Phoneme, ...] | list[Phoneme], duration: float,
               coarticulation: float = COARTICULATION_S) -> tuple[np.ndarray, np.ndarray]:
    """The continuous mouth path at 1 kHz: (opening, width), float64 [ceil(duration * 1000) + 1] each.

    Keys: rest (closed) at 0 s and at ``duration``, each phoneme's viseme at its middle (a pause's
    closed shape at both ends of the pause, so long pauses stay closed).
    """
    n = int(np.ceil(duration * _RATE)) + 1
    times, openings, widths = [0.0], [0.0], [1.0]
    for p in phonemes:
        shape = viseme(p.symbol)
        keys = (p.start, p.end) if p.symbol.startswith("_") else ((p.start + p.end) / 2,)
        for t in keys:
            if t > times[-1]:
                times.append(t)
                openings.append(shape.opening)
                widths.append(shape.width)
    times.append(max(duration, times[-1] + 1e-3))
    openings.append(0.0)
    widths.append(1.0)
    grid = np.arange(n) / _RATE
    opening = np.interp(grid, times, openings)
    width = np.interp(grid, times, widths)
    if coarticulation > 0:
        sigma = coarticulation * _RATE
        radius = int(np.ceil(3 * sigma))
        kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        kernel /= kernel.sum()
        opening = np.convolve(np.pad(opening, radius, mode="edge"), kernel, mode="valid")
        width = np.convolve(np.pad(width, radius, mode="edge"), kernel, mode="valid")
    return opening, width


def mouth_track(phonemes: tuple[Phoneme, ...] | list[Phoneme], duration: float, frames: int,
                fps: float) -> MouthTrack:
    """Per-frame mouth shape of speech lasting ``duration`` seconds, for ``frames`` video frames at ``fps``;
    frames past the end of the speech are closed."""
    opening, width = mouth_path(phonemes, duration)
    centres = np.round((np.arange(frames) + 0.5) / fps * _RATE).astype(np.int64)
    inside = centres < opening.shape[0]
    index = np.minimum(centres, opening.shape[0] - 1)
    return MouthTrack(opening=np.where(inside, opening[index], 0.0).astype(np.float32),
                      width=np.where(inside, width[index], 1.0).astype(np.float32), fps=fps)

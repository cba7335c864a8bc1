"""Deterministic synthetic talking clips: a drawn face whose mouth follows espeak-ng speech.

``make_clip(seed, split)`` draws everything from the seed: an identity, a voice (accent, variant, rate,
pitch), a text, silences around the speech, a noise floor, blinks and (for half the clips) head roll
made of two sinusoids, so its rotation speed is known exactly. The two splits use disjoint random
streams: ``"heldout"`` clips have texts, identities and voices settings the ``"train"`` clips never saw.

Frame ``i`` shows the face at time ``(i + 0.5) / fps`` and covers audio samples
``[round(i * sr / fps), round((i + 1) * sr / fps))``, the same frame grid the engine's streaming audio
features use; a clip has ``ceil(samples * fps / sr)`` frames.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from engine.synthetic.face_drawing import Identity, Pose, render
from engine.synthetic.speech import Phoneme, Voice, synthesize
from engine.synthetic.textures import Texture, random_color
from engine.synthetic.texts import utterance
from engine.synthetic.visemes import mouth_track
from engine.timebase import SAMPLE_RATE, frames_covering

SPLITS = {"train": 0, "heldout": 1}
TEXTURED_SHARE = 0.5
"""The share of training clips drawn with textures and free colours (:func:`textured`)."""
VOICE_BASES = ("en", "en-us", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc", "en-gb-x-gbclan",
               "en-gb-x-gbcwmd")
VOICE_VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+f1", "+f2", "+f3", "+f4", "+f5",
                  "+klatt", "+klatt2", "+klatt4", "+Andy", "+linda", "+michel", "+max", "+iven", "+edward")
BLINK_HALF_S = 0.09
"""Half the duration of a blink (seconds): lids close linearly, then open."""


@dataclass(frozen=True)
class HeadMotion:
    """Head roll as a sum of sinusoids: ``roll(t) = sum a_k sin(2 pi f_k t + p_k)`` radians (none: still)."""

    amplitudes: tuple[float, ...] = ()
    frequencies: tuple[float, ...] = ()
    phases: tuple[float, ...] = ()

    def roll(self, t: np.ndarray) -> np.ndarray:
        """Roll angle (radians) at times ``t`` (seconds), float64 shaped like ``t``."""
        out = np.zeros_like(np.asarray(t, np.float64))
        for a, f, p in zip(self.amplitudes, self.frequencies, self.phases):
            out += a * np.sin(2 * np.pi * f * t + p)
        return out

    def speed(self, t: np.ndarray) -> np.ndarray:
        """Rotation speed ``|d roll / dt|`` (radians per second) at times ``t``."""
        out = np.zeros_like(np.asarray(t, np.float64))
        for a, f, p in zip(self.amplitudes, self.frequencies, self.phases):
            out += a * 2 * np.pi * f * np.cos(2 * np.pi * f * t + p)
        return np.abs(out)


@dataclass(frozen=True)
class ClipRecipe:
    """What one clip is made of (all drawn from its seed). ``text`` has ``sentences`` sentences; silences in
    seconds; ``gain`` is the speech's peak amplitude; ``noise`` the standard deviation of the added white
    noise; blinks at ``blinks`` (s)."""

    seed: int
    split: str
    identity: Identity
    voice: Voice
    text: str
    sentences: int
    lead_silence: float
    tail_silence: float
    gain: float
    noise: float
    head: HeadMotion
    blinks: tuple[float, ...]


@dataclass
class TalkingClip:
    """One rendered clip.

    Attributes:
        frames: uint8 [F, H, W, 3] RGB.
        audio: float32 [samples] mono at ``sample_rate`` (16 kHz).
        opening, width: float32 [F] ground-truth mouth shape (opening in [0, 1]; width 1 = rest).
        eyes_open: float32 [F] in [0, 1].
        roll: float32 [F] head roll (radians); head_speed: float32 [F] its rotation speed (rad/s).
        face_boxes: float32 [F, 4] face box (x0, y0, x1, y1) in pixels.
        mouth_box: float32 [4] where the mouth can be with the head upright, in pixels.
        reference: uint8 [H, W, 3] the same person at rest (mouth closed, eyes open, head upright).
        phonemes: the speech's phonemes, times in seconds from the start of ``audio``.
    """

    recipe: ClipRecipe
    frames: np.ndarray
    audio: np.ndarray
    opening: np.ndarray
    width: np.ndarray
    eyes_open: np.ndarray
    roll: np.ndarray
    head_speed: np.ndarray
    face_boxes: np.ndarray
    mouth_box: np.ndarray
    reference: np.ndarray
    phonemes: tuple[Phoneme, ...] = field(default=())
    fps: float = 25.0
    sample_rate: int = SAMPLE_RATE

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def clip_rng(seed: int, split: str) -> np.random.Generator:
    """The random stream of clip ``seed`` in ``split`` (disjoint between splits)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS[split], 0x7A1C]))


def textured(identity: Identity, seed: int, split: str) -> Identity:
    """Clip ``seed``'s identity with a :class:`~engine.synthetic.textures.Texture` and colours from the whole
    range (hair, background, shirt; the skin tinted toward any hue) for a share :data:`TEXTURED_SHARE` of the
    training clips; held-out clips stay flat, as they were. Drawn from a stream of its own, so the rest of
    the recipe (voice, text, motion) is the same with or without it."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLITS[split], 0x7E47]))
    if split != "train" or rng.uniform() >= TEXTURED_SHARE:
        return identity
    tint = float(rng.uniform(0.0, 0.35))
    skin = tuple(float(a * (1 - tint) + b * tint) for a, b in zip(identity.skin, random_color(rng)))
    return dataclasses.replace(identity, skin=skin, hair=random_color(rng), background=random_color(rng),
                               background_bottom=random_color(rng), shirt=random_color(rng),
                               texture=Texture.sample(rng))


def recipe(seed: int, split: str = "train", head_motion: bool | None = None,
           sentences: int | None = None) -> ClipRecipe:
    """Draw clip ``seed``'s recipe. ``head_motion`` forces a still (False) or moving (True) head;
    None: moving with probability 1/2. ``sentences``: None draws 1 or 2."""
    rng = clip_rng(seed, split)
    identity = textured(Identity.sample(rng), seed, split)
    voice = Voice(name=VOICE_BASES[rng.integers(len(VOICE_BASES))] + VOICE_VARIANTS[rng.integers(len(VOICE_VARIANTS))],
                  rate=int(rng.integers(130, 211)), pitch=int(rng.integers(25, 76)),
                  pitch_range=int(rng.integers(30, 81)), word_gap=int(rng.integers(0, 3)))
    drawn_count = int(rng.integers(1, 3))
    count = drawn_count if sentences is None else sentences
    text = utterance(rng, count)
    drawn_moving = bool(rng.uniform() < 0.5)
    moving = drawn_moving if head_motion is None else head_motion
    amplitudes, frequencies, phases = rng.uniform(0.03, 0.12, 2), rng.uniform(0.2, 1.0, 2), rng.uniform(0, 2 * np.pi, 2)
    head = HeadMotion(tuple(amplitudes.tolist()), tuple(frequencies.tolist()), tuple(phases.tolist())) if moving \
        else HeadMotion()
    blinks = tuple(np.cumsum(rng.uniform(1.2, 4.5, 8)).tolist())
    return ClipRecipe(seed=seed, split=split, identity=identity, voice=voice, text=text, sentences=count,
                      lead_silence=float(rng.uniform(0.1, 0.5)), tail_silence=float(rng.uniform(0.1, 0.4)),
                      gain=float(rng.uniform(0.3, 0.9)), noise=float(10 ** rng.uniform(-4.0, -2.5)),
                      head=head, blinks=blinks)


def eyes_open_at(t: np.ndarray, blinks: tuple[float, ...]) -> np.ndarray:
    """Lid opening in [0, 1] at times ``t``: 0 at each blink time, back to 1 within ``BLINK_HALF_S``."""
    out = np.ones_like(np.asarray(t, np.float64))
    for b in blinks:
        out = np.minimum(out, np.clip(np.abs(t - b) / BLINK_HALF_S, 0.0, 1.0))
    return out


def render_clip(rec: ClipRecipe, size: int = 64, fps: float = 25.0) -> TalkingClip:
    """Speak and draw a recipe."""
    speech = synthesize(rec.text, rec.voice)
    peak = float(np.abs(speech.pcm).max()) or 1.0
    noise_rng = np.random.default_rng(np.random.SeedSequence([rec.seed, SPLITS[rec.split], 0x401E]))
    lead = np.zeros(int(round(rec.lead_silence * SAMPLE_RATE)), np.float32)
    tail = np.zeros(int(round(rec.tail_silence * SAMPLE_RATE)), np.float32)
    audio = np.concatenate([lead, speech.pcm * (rec.gain / peak), tail])
    audio = np.clip(audio + noise_rng.normal(0, rec.noise, audio.shape[0]), -1, 1).astype(np.float32)
    offset = lead.shape[0] / SAMPLE_RATE
    phonemes = tuple(Phoneme(p.symbol, p.start + offset, p.end + offset) for p in speech.phonemes)
    frames = frames_covering(audio.shape[0], fps)
    track = mouth_track(phonemes, offset + speech.duration, frames, fps)
    times = (np.arange(frames) + 0.5) / fps
    roll = rec.head.roll(times)
    speed = rec.head.speed(times)
    eyes = eyes_open_at(times, rec.blinks)
    images = np.stack([render(rec.identity, Pose(float(roll[i]), float(track.opening[i]), float(track.width[i]),
                                                 float(eyes[i])), size) for i in range(frames)])
    boxes = np.array([rec.identity.face_box(float(r)) for r in roll], dtype=np.float32) * size
    return TalkingClip(recipe=rec, frames=images, audio=audio, opening=track.opening, width=track.width,
                       eyes_open=eyes.astype(np.float32), roll=roll.astype(np.float32),
                       head_speed=speed.astype(np.float32), face_boxes=boxes,
                       mouth_box=np.asarray(rec.identity.mouth_box(), np.float32) * size,
                       reference=render(rec.identity, Pose(), size), phonemes=phonemes, fps=fps)


def make_clip(seed: int, split: str = "train", size: int = 64, fps: float = 25.0, head_motion: bool | None = None,
              sentences: int | None = None) -> TalkingClip:
    """Clip ``seed`` of ``split``, rendered at ``size`` x ``size`` pixels and ``fps`` frames per second."""
    return render_clip(recipe(seed, split, head_motion, sentences), size, fps)

"""Small pieces shared by the tests (importable as ``support``: pytest puts tests/ on the path).

Test audio (:func:`speech`, :func:`tone`, :func:`demo_pcm16`, :func:`write_wav`), tiny models
(:func:`tiny_random_model`, :func:`hallo_tiny`, :func:`randomize_`), portraits (:func:`random_portrait`) and the
layout manifests of the compatibility fixtures (:func:`read_manifest`).
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import torch

from engine.config import ModelConfig, preset
from engine.models.checkpoint import random_model
from engine.models.model import EmoteModel
from engine.timebase import SAMPLE_RATE

COMPAT = Path(__file__).resolve().parent / "fixtures" / "compat"
SR = SAMPLE_RATE
"""The engine's sample rate (Hz), the rate of every test signal below unless one says otherwise."""
DEMO_SPEECH = Path(__file__).resolve().parents[1] / "engine" / "assets" / "demo" / "speech.wav"
"""The shipped demo utterance: 16-bit mono WAV at :data:`SR`, about 3.1 s."""


def speech(seconds: float, hz: float = 180.0, syllable_hz: float = 3.0, noise: float = 0.0,
           seed: int = 1) -> np.ndarray:
    """A voiced-looking test signal, float32 [round(seconds x SR)] in [-0.7, 0.7]: a tone of ``hz`` whose
    amplitude swells and fades ``syllable_hz`` times a second, plus Gaussian noise of std ``noise``
    (drawn from ``seed``)."""
    t = np.arange(round(seconds * SR)) / SR
    pcm = 0.3 * np.sin(2 * np.pi * hz * t) * (1 + np.sin(2 * np.pi * syllable_hz * t))
    if noise:
        pcm = pcm + noise * np.random.RandomState(seed).randn(t.size)
    return pcm.astype(np.float32)


def tone(seconds: float, hz: float = 440.0, amplitude: float = 0.5, rate: int = SR) -> np.ndarray:
    """A steady sine of ``hz``, float32 [round(seconds x rate)] at ``rate`` Hz."""
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def demo_pcm16(seconds: float | None = None) -> np.ndarray:
    """The demo utterance's own 16-bit samples (int16 [samples] at :data:`SR`), optionally only the first
    ``seconds``."""
    with wave.open(str(DEMO_SPEECH), "rb") as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate()) == (1, 2, SR)
        pcm = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
    return pcm if seconds is None else pcm[:round(seconds * SR)]


def write_wav(path: Path, pcm: np.ndarray, rate: int = SR) -> Path:
    """Write mono ``pcm`` as a 16-bit WAV at ``rate`` Hz: int16 samples as they are, floats in [-1, 1]
    (clipped) scaled to 16 bits. Returns ``path``."""
    if pcm.dtype != np.int16:
        pcm = np.clip(pcm, -1, 1) * 32767
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.astype("<i2").tobytes())
    return path


def tiny_random_model(seed: int = 0) -> EmoteModel:
    """The tiny preset with weights drawn from ``seed`` (eval mode, CPU, float32)."""
    return random_model(preset("tiny"), seed=seed)


def random_portrait(size: int = 128, face: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A portrait stand-in: uniform random RGB uint8 [size, size, 3] (seed 0) and a float32 [size, size] face
    mask, 1 over rows ``face[0]:face[1]`` and columns ``face[2]:face[3]`` (default: the middle quarter
    of the rows and 3/8 of the columns), 0 elsewhere."""
    y0, y1, x0, x1 = face if face is not None else (size // 4, size * 3 // 4, size * 5 // 16, size * 11 // 16)
    image = (np.random.RandomState(0).rand(size, size, 3) * 255).astype(np.uint8)
    mask = np.zeros((size, size), np.float32)
    mask[y0:y1, x0:x1] = 1
    return image, mask


def read_manifest(relative: str) -> dict[str, tuple[int, ...]]:
    """``key -> shape`` of a layout manifest (``key<TAB>[shape]<TAB>dtype`` lines, ``#`` comments)."""
    out = {}
    for line in (COMPAT / relative).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape, _ = line.split("\t")
        out[key] = tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())
    return out


def randomize_(module: torch.nn.Module, std: float = 0.05, seed: int = 0,
               only_zero: bool = False) -> torch.nn.Module:
    """Fill every parameter (``only_zero``: every all-zero one, such as biases and zero-initialised
    projections) with N(0, std) noise drawn from ``seed``, so that paths a fresh model switches off (motion
    modules, face locator) take part in parity tests. In place; returns ``module``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not only_zero or not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


def hallo_tiny() -> ModelConfig:
    """The tiny preset with Hallo's optional pieces on: audio modules with region masks, face-embedding
    tokens (16-d embedding), ReferenceNet cross-attention with norm1 motion features, skipped plain-block
    motion modules, a three-plane face locator, no speed layers."""
    cfg = preset("tiny")
    cfg.speed.enabled = False
    cfg.face_locator.conditioning_channels = 3
    cfg.audio_modules.enabled = True
    cfg.audio_modules.cross_attention_dim = cfg.audio.projection.output_dim
    cfg.image_proj.enabled = True
    cfg.image_proj.embedding_dim = 16
    cfg.reference_net.cross_attention = True
    cfg.reference_net.motion_source = "norm1"
    cfg.temporal.skip_plain_blocks = True
    return cfg


def random_hallo(std: float) -> EmoteModel:
    """A :func:`hallo_tiny` model with random weights: its backbone, ReferenceNet and image projection drawn at
    ``std`` (seeds 0, 1, 2), the ReferenceNet's default context made from them."""
    model = random_model(hallo_tiny(), seed=0)
    for i, name in enumerate(("backbone", "reference_net", "image_proj")):
        randomize_(getattr(model, name), std=std, seed=i)
    model.sync_default_context()
    return model

"""Offline generation: a photo and an audio file in, an MP4 (and optionally PNG frames) out.

This is the streaming session fed by the whole file at once (no clock): the same code path, so a
file and a live source give the same frames for the same audio.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from engine.backends import make_backend
from engine.config import PRESETS
from engine.faces import FaceBox, prepare_portrait
from engine.media import MediaError, PngSequenceWriter, VideoWriter, load_audio, load_image
from engine.models.checkpoint import load_model, random_model, resolve_config
from engine.models.model import EmoteModel
from engine.stream.session import GenerationOptions, Session

SAMPLE_RATE = 16000
SILENCE_PEAK = 1e-4


@dataclass
class GenerateRequest:
    """One offline generation job.

    Attributes:
        image, audio: input files (any common image format; any audio PyAV reads).
        out: the MP4 to write (H.264 + AAC); ``png_dir`` optionally also gets the frames as PNG.
        model: a preset name (seeded random weights) or a model directory.
        size: output side in pixels (None: the model's resolution). fps: None: the model's.
        face_box: face box in the photo's pixels, instead of the detector. on_missing_face: "center"
            (a centred box, with a warning) or "error".
    """

    image: Path
    audio: Path
    out: Path
    model: str = "tiny"
    size: int | None = None
    fps: float | None = None
    face_box: FaceBox | None = None
    on_missing_face: str = "center"
    png_dir: Path | None = None
    device: str = "cpu"
    backend: str = "torch"
    options: GenerationOptions = field(default_factory=GenerationOptions)


@dataclass
class GenerateResult:
    """What was written and how long it took (seconds of wall clock, seconds of media)."""

    out: Path
    frames: int
    media_seconds: float
    wall_seconds: float
    face_detected: bool


def open_model(source: str, fps: float | None = None, seed: int = 0) -> EmoteModel:
    """A preset with seeded random weights, or a model directory's weights; ``fps`` overrides the frame rate."""
    cfg = resolve_config(source)
    if Path(source).is_dir():
        model = load_model(Path(source))
    else:
        model = random_model(cfg, seed=seed)
    if fps is not None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        model.config.fps = fps
        model.config.audio.fps = fps
    return model


def is_untrained_preset(source: str) -> bool:
    """True when ``source`` names a preset (random weights), not a directory of trained weights."""
    return source in PRESETS and not Path(source).is_dir()


def check_audio(pcm: np.ndarray, path: Path) -> None:
    """Refuse audio that cannot drive a face: empty or silent."""
    if pcm.size == 0:
        raise MediaError(f"{path}: the audio is empty")
    if float(np.abs(pcm).max()) < SILENCE_PEAK:
        raise MediaError(f"{path}: the audio is silent (peak below {SILENCE_PEAK:g})")


def generate(request: GenerateRequest, progress: bool = True) -> GenerateResult:
    """Run one job; nothing is left at ``request.out`` unless it completes."""
    started = time.perf_counter()
    image = load_image(request.image)
    pcm = load_audio(request.audio, SAMPLE_RATE)
    check_audio(pcm, request.audio)
    model = open_model(request.model, request.fps)
    cfg = model.config
    size = request.size or cfg.resolution
    portrait = prepare_portrait(image, size, face_box=request.face_box, on_missing=request.on_missing_face)
    if not portrait.detected and request.face_box is None:
        print(f"warning: no face found in {request.image}; using a centred box (pass --face-box x0,y0,x1,y1)",
              file=sys.stderr)
    dtype = torch.float16 if request.device.startswith("cuda") else torch.float32
    backend = make_backend(request.backend, model, request.device, dtype)
    session = Session(backend, cfg, portrait.image, portrait.mask, request.options)
    session.push_audio(pcm)
    session.end()
    total = session.audio.total_frames
    sinks = [VideoWriter(request.out, cfg.fps, size=(size, size), sample_rate=SAMPLE_RATE, audio=pcm)]
    if request.png_dir is not None:
        sinks.append(PngSequenceWriter(request.png_dir))
    try:
        with tqdm(total=total, unit="frame", desc="generating", disable=not progress, dynamic_ncols=True) as bar:
            for frame in session.frames():
                for sink in sinks:
                    sink.write_frame(frame.image)
                bar.update(1)
        for sink in sinks:
            sink.close()
    except BaseException:
        for sink in sinks:
            sink.abort()
        raise
    return GenerateResult(out=Path(request.out), frames=total, media_seconds=pcm.size / SAMPLE_RATE,
                          wall_seconds=time.perf_counter() - started, face_detected=portrait.detected)

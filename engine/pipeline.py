"""Jobs: a portrait plus an audio source in, an MP4 (and optionally PNG frames) out.

``generate`` (offline) and ``stream`` (live) are the same path: a :class:`LiveSession` fed by an
audio source, the offline one unpaced, so a file and a microphone give the same frames for the
same audio.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from engine import DEFAULT_MODEL
from engine.backends import make_backend
from engine.config import PRESETS, ModelConfig
from engine.face_embedding import load_face_embedding
from engine.faces import FaceBox, prepare_portrait
from engine.importers.provenance import FACE_EMBEDDING, REGION_MASKS
from engine.media import MIN_PORTRAIT_SIDE, MediaError, check_outputs, load_image
from engine.models.checkpoint import load_model, model_directory, random_model, resolve_config
from engine.models.model import EmoteModel
from engine.options import GenerationOptions
from engine.region_masks import load_mask, portrait_region_masks
from engine.stream.runner import LagPolicy, LiveSession, run_stream
from engine.stream.session import Frame, Session
from engine.stream.sinks import FrameSink, Mp4Sink, PngSink
from engine.stream.sources import AudioSource, FileSource
from engine.stream.stats import StreamStats
from engine.timebase import check_fps

SILENCE_PEAK = 1e-4
OFFLINE_BLOCK_MS = 1000.0


@dataclass(kw_only=True)
class StreamRequest:
    """A portrait and where its video goes; the audio comes from a source.

    Attributes:
        image: the portrait (any common image format).
        out: the MP4 to write (H.264 + AAC); ``png_dir`` optionally also gets the frames as PNG.
        model: a shipped model's name, a model directory, or a preset name (seeded random weights).
        size: output side in pixels (None: the model's resolution). fps: None: the model's.
        face_box: face box in the photo's pixels, instead of the detector. on_missing_face: "center"
            (a centred box, with a warning) or "error".
        face_embedding: Hallo's models only: a ``.npy`` of the face's embedding (insightface's 512-d
            ``embedding``); None: a zero embedding (:mod:`engine.face_embedding`).
        face_mask, lip_mask: Hallo's models only, both or neither: face and lip region masks over the
            photo (PNG or ``.npy``, the photo's size, as Hallo's ``get_mask`` draws them); None: made
            from the face box (:mod:`engine.region_masks`).
        region_weights: Hallo's models only: its pose / face / lip weights (``--pose_weight``,
            ``--face_weight``, ``--lip_weight``; dimensionless), each None for the model's own (Hallo's
            default: 1): :func:`with_region_weights`.
        threads: on the CPU, the intra-op threads of the backend's compute thread (None: torch's count, i.e.
            ``OMP_NUM_THREADS`` or every core).
        policy: what to do when generation falls behind real time.
        always_on: frames at the stream's fps whether or not the source delivers audio (silence between its
            blocks becomes idle motion, and the MP4's sound carries that silence, so it stays in step).
    """

    image: Path
    out: Path
    model: str = DEFAULT_MODEL
    size: int | None = None
    fps: float | None = None
    face_box: FaceBox | None = None
    on_missing_face: str = "center"
    face_embedding: Path | None = None
    face_mask: Path | None = None
    lip_mask: Path | None = None
    region_weights: tuple[float | None, float | None, float | None] = (None, None, None)
    png_dir: Path | None = None
    device: str = "cpu"
    backend: str = "torch"
    threads: int | None = None
    options: GenerationOptions = field(default_factory=GenerationOptions)
    policy: LagPolicy = field(default_factory=LagPolicy)
    always_on: bool = False


@dataclass(kw_only=True)
class GenerateRequest(StreamRequest):
    """An offline job: the audio is a file."""

    audio: Path


@dataclass
class GenerateResult:
    """What was written and how long it took (seconds of wall clock, seconds of media)."""

    out: Path
    frames: int
    media_seconds: float
    wall_seconds: float
    face_detected: bool


def with_region_weights(cfg: ModelConfig, weights: tuple[float | None, float | None, float | None]) -> ModelConfig:
    """``cfg`` with Hallo's pose / face / lip weights replaced where ``weights`` gives one (None keeps the
    model's). They multiply the full / face / lip branches of every audio module; only models with
    ``audio_modules`` (Hallo's) have them."""
    if all(w is None for w in weights):
        return cfg
    if not cfg.audio_modules.enabled:
        raise ValueError(f"pose / face / lip weights apply to Hallo's audio modules; model {cfg.name!r} has none")
    chosen = tuple(float(mine if mine is not None else own)
                   for mine, own in zip(weights, cfg.audio_modules.region_weights, strict=True))
    if not all(math.isfinite(w) for w in chosen):
        raise ValueError(f"pose / face / lip weights must be finite, got {chosen}")
    return replace(cfg, audio_modules=replace(cfg.audio_modules, region_weights=chosen))


def open_model(source: str, fps: float | None = None, seed: int = 0,
               region_weights: tuple[float | None, float | None, float | None] = (None, None, None)) -> EmoteModel:
    """A preset with seeded random weights, or a model directory's weights; ``fps`` overrides the frame rate,
    ``region_weights`` Hallo's pose / face / lip weights (:func:`with_region_weights`)."""
    cfg = with_region_weights(resolve_config(source), region_weights)
    if fps is not None:
        cfg = replace(cfg, fps=check_fps(fps))
    directory = model_directory(source)
    return load_model(directory, config=cfg) if directory is not None else random_model(cfg, seed=seed)


def is_untrained_preset(source: str) -> bool:
    """True when ``source`` names a preset (random weights), not a directory of trained weights."""
    return source in PRESETS and model_directory(source) is None


def check_audio(pcm: np.ndarray, path: Path) -> None:
    """Refuse audio that cannot drive a face: empty or silent."""
    if pcm.size == 0:
        raise MediaError(f"{path}: the audio is empty")
    if float(np.abs(pcm).max()) < SILENCE_PEAK:
        raise MediaError(f"{path}: the audio is silent (peak below {SILENCE_PEAK:g})")


def open_session(request: StreamRequest) -> tuple[Session, bool]:
    """Model, portrait and backend for ``request``, the backend prepared for the session's steady-state shapes
    (:meth:`~engine.backends.base.Backend.prepare`); returns the session and whether a face was detected."""
    image = load_image(request.image, min_side=MIN_PORTRAIT_SIDE)
    model = open_model(request.model, request.fps, region_weights=request.region_weights)
    size = model.config.resolution if request.size is None else request.size
    portrait = prepare_portrait(image, size, face_box=request.face_box, on_missing=request.on_missing_face)
    if not portrait.detected and request.face_box is None:
        print(f"warning: no face found in {request.image}; using a centred box (pass --face-box x0,y0,x1,y1)",
              file=sys.stderr)
    region_masks = None
    if request.face_mask is not None or request.lip_mask is not None:
        if request.face_mask is None or request.lip_mask is None:
            raise ValueError("region masks: give both the face mask and the lip mask, or neither")
        region_masks = portrait_region_masks(load_mask(request.face_mask), load_mask(request.lip_mask),
                                             image.shape[:2], portrait.crop_box, size)
    embedding = None
    if request.face_embedding is not None:
        embedding = load_face_embedding(request.face_embedding, model.config.image_proj.embedding_dim)
    dtype = torch.float16 if request.device.startswith("cuda") else torch.float32
    backend = make_backend(request.backend, model, request.device, dtype, threads=request.threads,
                           generation=request.options.with_model_defaults(model.config.sampling))
    session = Session(backend, model.config, portrait.image, portrait.mask, request.options,
                      region_masks=region_masks, face_embedding=embedding)
    backend.prepare(session.size, len(session.denoiser.model.branches))
    return session, portrait.detected


def supplied_inputs(request: StreamRequest) -> tuple[str, ...]:
    """Names of the inputs of an imported system's pipeline that ``request`` supplies (so they run on no
    fallback): ``"face embedding"``, ``"region masks"``, for :func:`engine.importers.provenance.fallback_note`."""
    names = []
    if request.face_embedding is not None:
        names.append(FACE_EMBEDDING)
    if request.face_mask is not None and request.lip_mask is not None:
        names.append(REGION_MASKS)
    return tuple(names)


def reproduction_note(config: ModelConfig, options: GenerationOptions, offline: bool) -> str | None:
    """One line saying what a run of an imported model reproduces of its system's own pipeline and what it
    approximates (``emote generate``: ``offline``; ``emote stream``: not); None for models of our own.

    ``options`` as the user gave them (unset ones are the model's defaults).
    """
    rep = config.reproduce
    if not rep.system:
        return None
    if not options.reproduce:
        return (f"note: {rep.system} import with --no-reproduce: audio windows, reference bank, motion frames and "
                f"clips are the engine's own, not its pipeline's")
    chosen = options.with_model_defaults(config.sampling)
    single_cfg = chosen.cfg_audio == chosen.cfg_ref != 1.0
    same = ["DDIM with zero-SNR v-prediction", "single-scale CFG (zero face features unconditional)"
            if single_cfg else None]
    approx = ["its fp16 numerics (fp32 on the CPU)", "its uncropped portrait (here cut around the face)",
              "the inputs the fallbacks name"]
    if rep.whole_audio:
        if offline and chosen.schedule == "clip":
            same.append("audio features of the whole waveform" + ("" if rep.context_frames else
                                                                  " padded to whole clips"))
        else:
            approx.append("audio features per clip from a window (left context + look-ahead), not the whole audio; "
                          "the last clip ends with the audio")
    if rep.alternating_reference:
        if single_cfg:
            same.append("its reference reader (bank rows alternating zero / face embedding; torch backends)")
        else:
            approx.append("one reference bank for every frame (its reader alternates under single-scale CFG only)")
    if rep.motion_roundtrip:
        same.append("motion frames through VAE decode + encode")
    if rep.context_frames:
        if offline and chosen.schedule == "clip":
            same.append(f"whole video in {rep.context_frames}-frame context windows overlapping by "
                        f"{rep.context_overlap}, predictions averaged")
        elif chosen.schedule == "clip":
            window, held = chosen.clip_frames or rep.context_frames, rep.context_overlap
            approx.append(f"its {window}-frame context windows overlapping by {held} as a causal chain (a window's "
                          f"first {held} frames' predictions averaged with the previous window's; no wrap-round or "
                          f"rotation), {held} frames held back for the next window: +{held * 1000 / config.fps:.0f} ms "
                          f"latency")
        else:
            approx.append(f"clips one after another, not its {rep.context_frames}-frame context windows "
                          f"(overlap {rep.context_overlap}) over the whole video")
    if rep.whisper_chunk_frames:
        if offline and chosen.schedule == "clip":
            same.append("its frame count (up to two frames past the audio)")
        else:
            approx.append("the frame count (the audio's, not its chunker's)")
    if rep.noise_clamp:
        same.append(f"initial noise clamped to +-{rep.noise_clamp:g}")
    return (f"note: {rep.system} import reproduces its pipeline's " + ", ".join(x for x in same if x)
            + "; approximates " + ", ".join(approx))


def check_request_outputs(request: StreamRequest, audio: Path | None = None) -> None:
    """Refuse ``request``'s outputs before anything is read or written (:func:`engine.media.check_outputs`).

    The inputs they may not replace: the photo, ``audio`` (the audio file, if any), the face embedding
    and masks, and the model directory with its files.
    """
    inputs = [path for path in (request.image, audio, request.face_embedding, request.face_mask, request.lip_mask)
              if path is not None]
    directory = model_directory(request.model)
    if directory is not None:
        inputs += [directory, *directory.iterdir()]
    check_outputs([request.out], [request.png_dir] if request.png_dir is not None else [], inputs)


def _sinks(request: StreamRequest, session: Session) -> list[FrameSink]:
    sinks: list[FrameSink] = [Mp4Sink(request.out, session.fps, (session.size, session.size))]
    if request.png_dir is not None:
        try:
            sinks.append(PngSink(request.png_dir))
        except BaseException:
            sinks[0].abort()
            raise
    return sinks


def stream(request: StreamRequest, source: AudioSource, live_status: bool = True) -> StreamStats:
    """Run ``source`` through a live session into the request's sinks; prints a status line while it runs."""
    check_request_outputs(request, source.path if isinstance(source, FileSource) else None)
    session, _ = open_session(request)
    live = LiveSession(session, request.policy, always_on=request.always_on, keep_audio=request.always_on)
    last_print = [0.0]

    def status(frame: Frame, running: LiveSession) -> None:
        now = time.monotonic()
        if live_status and now - last_print[0] >= 0.5:
            last_print[0] = now
            print("\r" + running.stats.status_line(), end="", file=sys.stderr, flush=True)

    stats = run_stream(source, live, _sinks(request, session), on_frame=status)
    if live_status:
        print(file=sys.stderr)
    return stats


def generate(request: GenerateRequest, progress: bool = True) -> GenerateResult:
    """Run one offline job (the stream path, unpaced, the session told the audio is whole: an imported model
    reproduces its system's whole-audio front end); nothing is left at ``request.out`` unless it completes."""
    started = time.perf_counter()
    check_request_outputs(request, request.audio)
    source = FileSource(request.audio, block_ms=OFFLINE_BLOCK_MS)
    check_audio(source.pcm, request.audio)
    request = replace(request, options=replace(request.options, offline=True))
    session, detected = open_session(request)
    total = session.audio.frame_count(source.pcm.size)
    written = [0]

    def advance(frame: Frame, live: LiveSession) -> None:
        written[0] += 1
        bar.update(1)

    with tqdm(total=total, unit="frame", desc="generating", disable=not progress, dynamic_ncols=True) as bar:
        run_stream(source, LiveSession(session, request.policy), _sinks(request, session), on_frame=advance)
    return GenerateResult(out=Path(request.out), frames=written[0], media_seconds=source.duration,
                          wall_seconds=time.perf_counter() - started, face_detected=detected)

"""The two recipes the benchmark compares, built on the engine's own networks.

- :class:`HalloRecipe`: the published recipe as Hallo's inference code runs it (its ``scripts/inference.py``
  and ``FaceAnimatePipeline``), run by the engine's own offline path: a :class:`Session` with
  ``offline=True`` on the model in Hallo's form (an imported Hallo model as imported; another model with
  the ``reproduce`` section an import writes). So the reference is the code that reproduces Hallo's
  pipeline on imported checkpoints, one implementation of its guidance batch and clip loop: the whole
  audio encoded first, padded to whole clips; per clip of ``F`` frames 40 DDIM steps of the backbone on
  one doubled batch, conditional and unconditional (no reference bank, zero audio, zero face features,
  Hallo's alternating reference reader where the model has its face-embedding input), guidance 3.5 on
  the model output; the last ``n`` frames through VAE decode + encode and the ReferenceNet as the next
  clip's motion frames (the reference image's for the first); frames past the audio dropped. Eager
  PyTorch, fp32 on the CPU, fp16 on a GPU.
  Where this differs from Hallo's code in cost it is in the reference's favour, but for one VAE decode of
  the ``n`` motion frames per clip (Hallo takes them from its decoded video): Hallo recomputes the
  reference image's bank and the face locator on every frame's mask at every clip (here once per
  session), runs its ReferenceNet on ``2 (1 + n)`` images per clip (here ``n`` per face-embedding
  context), decodes one frame at a time (here a clip at once), and computes the unconditional half's
  self-attention twice (our attention masks the bank instead, one pass, same output).
- the engine: :class:`engine.stream.session.Session` behind the streaming runtime
  (:class:`engine.stream.runner.LiveSession`), few steps, no guidance, the reference bank computed once
  per session, decode overlapping the next clip's denoising.

Each configuration is a :class:`RecipeSpec`; :func:`stream_reference` and :func:`stream_engine` run one
stream of either and return a :class:`StreamResult`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from engine.backends import BACKENDS, make_backend
from engine.backends.base import Backend
from engine.config import ModelConfig, VAEConfig
from engine.importers.hallo import REPRODUCTION as HALLO_REPRODUCTION
from engine.stream.runner import LagPolicy, LiveSession, run_stream
from engine.stream.session import Frame, GenerationOptions, Session
from engine.stream.sources import FileSource
from engine.stream.stats import StreamStats

HALLO_STEPS = 40
HALLO_GUIDANCE = 3.5
TAESD_WIDTH = 64
"""Channels of every TAESD block at SD scale (diffusers' AutoencoderTiny defaults)."""
SD_VAE_WIDTH = 128
"""Channels of the SD VAE's first block, the yardstick for scaling TAESD down to a preset's VAE."""

BACKEND_PREFERENCE = {
    "cuda": ("tensorrt", "torch-cuda-graphs", "torch"),
    "cpu": ("torch",),
}
"""Engine backends by expected speed on each device kind, fastest first; the first one this checkout
has and that builds is used (``--backend`` names any other, e.g. onnxruntime)."""


@dataclass(frozen=True)
class RecipeSpec:
    """One benchmarked configuration.

    Attributes:
        name: short id used in the results (``reference``, ``engine-4step-kl``, ...).
        recipe: ``"reference"`` (:class:`HalloRecipe`) or ``"engine"``.
        steps: sampler steps per clip.
        guidance: guidance scale (1: one branch, no CFG).
        vae: ``"kl"`` (the preset's SD VAE) or ``"tiny"`` (a TAESD-structured decoder).
        sampler: the engine sampler's name.
    """

    name: str
    recipe: str
    steps: int
    guidance: float
    vae: str
    sampler: str = "ddim"

    @property
    def label(self) -> str:
        """A human name for tables and plots."""
        decoder = "SD VAE" if self.vae == "kl" else "tiny decoder"
        if self.recipe == "reference":
            return f"reference (Hallo: {self.steps} DDIM steps, CFG {self.guidance:g}, {decoder})"
        step_word = "step" if self.steps == 1 else "steps"
        return f"engine {self.steps} {step_word}, {decoder}"


def reference_spec() -> RecipeSpec:
    """The Hallo recipe's configuration."""
    return RecipeSpec("reference", "reference", HALLO_STEPS, HALLO_GUIDANCE, "kl")


def engine_specs(steps: tuple[int, ...] = (4, 2, 1), decoders: tuple[str, ...] = ("kl", "tiny")) -> list[RecipeSpec]:
    """The engine's fastest configurations: each step count with each decoder, no guidance."""
    return [RecipeSpec(f"engine-{s}step-{vae}", "engine", s, 1.0, vae) for vae in decoders for s in steps]


def tiny_decoder_vae(config: ModelConfig) -> VAEConfig:
    """A TAESD-structured AutoencoderTiny for ``config``'s scale.

    At SD scale (the preset's VAE starts at 128 channels) this is TAESD itself: 64 channels per block,
    (1, 3, 3, 3) encoder and (3, 3, 3, 1) decoder blocks. Smaller presets scale the width by the same
    ratio as their own VAE (at least 8 channels). Latents keep the preset's channel count.
    """
    first = config.vae.config.get("block_out_channels", [SD_VAE_WIDTH])[0]
    width = max(8, round(TAESD_WIDTH * first / SD_VAE_WIDTH))
    channels = config.vae.config.get("latent_channels", config.unet.in_channels)
    return VAEConfig(kind="tiny", scaling_factor=1.0, config=dict(
        in_channels=3, out_channels=3, latent_channels=channels,
        encoder_block_out_channels=[width] * 4, decoder_block_out_channels=[width] * 4,
        num_encoder_blocks=[1, 3, 3, 3], num_decoder_blocks=[3, 3, 3, 1]))


def config_for(base: ModelConfig, spec: RecipeSpec) -> ModelConfig:
    """``base`` with the decoder ``spec`` asks for."""
    if spec.vae == "kl":
        return base
    if spec.vae == "tiny":
        return dataclasses.replace(base, vae=tiny_decoder_vae(base))
    raise ValueError(f"unknown decoder {spec.vae!r}; use 'kl' or 'tiny'")


def engine_backend(name: str, model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> tuple[Backend, str]:
    """The engine backend ``name`` (``"auto"``: the fastest this checkout has, :data:`BACKEND_PREFERENCE`)
    over ``model``; returns it and a one-line note of the choice (what was tried and failed)."""
    candidates = BACKEND_PREFERENCE[device.type] if name == "auto" else (name,)
    available = [c for c in candidates if c in BACKENDS]
    if not available:
        raise ValueError(f"no backend among {', '.join(candidates)} exists here (available: {', '.join(BACKENDS)})")
    failures = []
    for candidate in available:
        try:
            backend = make_backend(candidate, model, str(device), dtype)
        except Exception as exc:  # a backend that cannot run here (missing package, no engine plan)
            failures.append(f"{candidate}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            continue
        note = candidate if not failures else f"{candidate} (skipped {'; '.join(failures)})"
        return backend, note
    raise RuntimeError(f"no engine backend could be built: {'; '.join(failures)}")


def hallo_form(config: ModelConfig) -> ModelConfig:
    """``config`` as Hallo's pipeline runs it: an imported Hallo model's own (its ``reproduce`` section), any
    other model with Hallo's (``engine.importers.hallo.REPRODUCTION``) and the reference image as the first clip's
    motion frames, as Hallo starts."""
    if config.reproduce.system == "hallo":
        return config
    return dataclasses.replace(config, motion_init="reference", reproduce=HALLO_REPRODUCTION)


class HalloRecipe:
    """Hallo's inference recipe (module docstring): the engine's offline session of the model in Hallo's form
    (:func:`hallo_form`), through any :class:`Backend`.

    Args:
        backend: runs the networks.
        config: the model's configuration (clip and motion-frame counts, fps, noise schedule).
        image: the portrait, uint8 ``[H, W, 3]``; face_mask: float ``[H, W]`` in {0, 1}.
        steps: DDIM steps (Hallo: 40); guidance: CFG scale on the model output (Hallo: 3.5).
        seed: the session's noise seed (each clip's noise is drawn from it and the clip's first frame).
        head_speed: rad/s for our model's speed layers (Hallo has none; both recipes feed the same).
        face_embedding: ``[E]`` the face's embedding, for a model with Hallo's image projection (None: a zero
            embedding, and no alternating reader).
    """

    def __init__(self, backend: Backend, config: ModelConfig, image: np.ndarray, face_mask: np.ndarray,
                 steps: int = HALLO_STEPS, guidance: float = HALLO_GUIDANCE, seed: int = 0, head_speed: float = 0.0,
                 face_embedding: np.ndarray | None = None):
        self.config = hallo_form(config)
        self.steps, self.guidance, self.fps = steps, guidance, self.config.fps
        options = GenerationOptions(steps=steps, sampler="ddim", cfg_audio=guidance, cfg_ref=guidance, seed=seed,
                                    head_speed=head_speed, motion_anchor=0.0, offline=True)
        self.session = Session(backend, self.config, image, face_mask, options, face_embedding=face_embedding)
        self.denoiser = self.session.denoiser

    def generate(self, pcm: np.ndarray, clips_out: list[int] | None = None) -> Iterator[Frame]:
        """Frames of the whole utterance ``pcm`` (float32 mono, 16 kHz), clip after clip.

        The audio is padded with silence to whole clips, encoded at once, and every clip is generated
        in full; frames past the audio's end are dropped. ``clips_out`` (when given) gets one entry
        per finished clip: its frame count.
        """
        session = self.session
        session.reset()
        session.push_audio(pcm)
        session.end()
        for clip in session.ready_clips():
            for done, latents in session.step(clip):
                frames = session.decode(done, latents)
                if clips_out is not None:
                    clips_out.append(len(frames))
                yield from frames


@dataclass
class StreamResult:
    """One stream's measures.

    Attributes:
        summary: :meth:`StreamStats.summary` of the run.
        latencies_s: audio-to-frame latency of every frame, seconds, in frame order.
        clips: clips generated.
        frames: frames out.
        generation_s: seconds from the moment all the audio was in to the last frame out (a run with
            an unpaced source, or the reference's compute after its paced audio ended).
    """

    summary: dict
    latencies_s: list[float]
    clips: int
    frames: int
    generation_s: float

    @property
    def offline_fps(self) -> float:
        """Frames per second of generation once the audio is in."""
        return self.frames / self.generation_s if self.generation_s > 0 else float("nan")


def _last_block_time(stats: StreamStats) -> float:
    """Clock time at which the stream's last audio sample entered."""
    return stats.audio_arrival(stats.samples_in)


def stream_reference(recipe: HalloRecipe, wav: Path, paced: bool, block_ms: float = 20.0) -> StreamResult:
    """Feed ``wav`` (paced in real time or not) to the reference recipe, which needs the whole utterance
    before it starts (its first-frame floor: the utterance's length); frames count as out when their clip
    is decoded (Hallo itself writes the video only at the very end: this is in its favour)."""
    source = FileSource(wav, block_ms=block_ms, realtime=paced)
    stats = StreamStats(recipe.fps, ttff_floor_s=source.duration)
    blocks = []
    for block in source.blocks():
        stats.audio_in(block.size)
        blocks.append(block)
    audio_in = _last_block_time(stats)
    clips: list[int] = []
    last = audio_in
    for frame in recipe.generate(np.concatenate(blocks), clips_out=clips):
        stats.frame_out(frame.index)
        last = time.perf_counter()
    latencies = stats.latencies()
    return StreamResult(stats.summary(), [latencies[i] for i in sorted(latencies)], len(clips),
                        stats.frames_out, last - audio_in)


def stream_engine(session: Session, wav: Path, paced: bool, block_ms: float = 20.0) -> StreamResult:
    """Feed ``wav`` (paced in real time or not) through the engine's streaming runtime, no sinks; lag
    policy "grow" (every frame generated, none skipped)."""
    live = LiveSession(session, LagPolicy("grow"))
    stats = run_stream(FileSource(wav, block_ms=block_ms, realtime=paced), live, [])
    summary = stats.summary()
    latencies = stats.latencies()
    out_times = summary["generation_wall_s"] or 0.0
    first_in = stats.audio_arrival(1)
    generation = (first_in + out_times) - _last_block_time(stats) if first_in is not None else float("nan")
    clips = summary["stages"].get("denoise", {}).get("clips", 0)
    return StreamResult(summary, [latencies[i] for i in sorted(latencies)], clips, stats.frames_out, generation)


def engine_options(spec: RecipeSpec, first_clip_frames: int | None, seed: int = 0) -> GenerationOptions:
    """The engine's generation options for ``spec``."""
    return GenerationOptions(steps=spec.steps, sampler=spec.sampler, cfg_audio=spec.guidance, cfg_ref=spec.guidance,
                             seed=seed, first_clip_frames=first_clip_frames)

"""The two recipes the benchmark compares, built on the engine's own networks.

- :class:`HalloRecipe`: the published recipe exactly as Hallo's inference code runs it (its
  ``scripts/inference.py`` and ``FaceAnimatePipeline``): the whole audio is encoded first; then per clip
  of ``F`` frames the reference image and the last ``n`` generated frames (the reference image repeated
  for the first clip) are VAE-encoded, the ReferenceNet runs once on those ``1 + n`` latents repeated
  for both guidance branches (``2 (1 + n)`` images), the face locator runs on the mask repeated for every
  frame, and 40 DDIM steps run the backbone on one doubled batch, conditional and unconditional (no
  reference bank, zero audio, zero face features), with guidance 3.5 on the model output; then the VAE
  decodes the clip one frame at a time. The guidance batch is the engine's own
  (:class:`engine.sampling.clip_denoiser.GuidedBackbone`), the one imported models run with. Eager
  PyTorch, fp32 on the CPU, fp16 on a GPU.
  Where our modules differ from Hallo's code it is in the reference's favour: Hallo computes the
  unconditional half's self-attention twice (with the bank, then again without it, keeping the
  second); our attention masks the bank instead, one pass, same output.
- the engine: :class:`engine.stream.session.Session` behind the streaming runtime
  (:class:`engine.stream.runner.LiveSession`), few steps, no guidance, the reference bank computed once
  per session, decode overlapping the next clip's denoising.

Each configuration is a :class:`RecipeSpec`; :func:`stream_reference` and :func:`stream_engine` run one
stream of either and return a :class:`StreamResult`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from engine.backends import BACKENDS, make_backend
from engine.backends.base import Backend
from engine.config import ModelConfig, VAEConfig
from engine.sampling.clip_denoiser import ClipConditions, ClipDenoiser
from engine.sampling.guidance import GuidanceScales
from engine.sampling.samplers import make_sampler
from engine.sampling.schedules import NoiseSchedule
from engine.stream.runner import LagPolicy, LiveSession, run_stream
from engine.stream.session import Frame, GenerationOptions, Session, to_image_tensor, to_uint8_frames
from engine.stream.sources import SAMPLE_RATE, FileSource
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


class HalloRecipe:
    """Hallo's inference recipe (module docstring) on our networks, through any :class:`Backend`.

    Args:
        backend: runs the networks.
        config: the model's configuration (clip and motion-frame counts, fps, noise schedule).
        image: the portrait, uint8 ``[H, W, 3]``; face_mask: float ``[H, W]`` in {0, 1}.
        steps: DDIM steps (Hallo: 40); guidance: CFG scale on the model output (Hallo: 3.5).
        seed: seeds the one noise generator the whole video draws from, clip after clip.
        head_speed: rad/s for our model's speed layers (Hallo has none; both recipes feed the same).
    """

    def __init__(self, backend: Backend, config: ModelConfig, image: np.ndarray, face_mask: np.ndarray,
                 steps: int = HALLO_STEPS, guidance: float = HALLO_GUIDANCE, seed: int = 0, head_speed: float = 0.0):
        self.backend, self.config = backend, config
        self.steps, self.guidance, self.seed, self.head_speed = steps, guidance, seed, head_speed
        self.clip_frames, self.motion_frames, self.fps = config.clip_frames, config.motion_frames, config.fps
        self.denoiser = ClipDenoiser(backend, make_sampler("ddim", NoiseSchedule.from_dict(config.scheduler)), steps,
                                     GuidanceScales(reference=guidance, audio=guidance))
        device, dtype = backend.device, backend.dtype
        self.size = image.shape[0]
        self.reference_pixels = to_image_tensor(image, device, dtype)
        self.mask = torch.from_numpy(np.ascontiguousarray(face_mask, dtype=np.float32))[None, None].to(device, dtype)

    def frame_count(self, samples: int) -> int:
        """Video frames of ``samples`` samples of audio: ceil(duration x fps)."""
        return math.ceil(samples * self.fps / SAMPLE_RATE - 1e-9)

    def generate(self, pcm: np.ndarray, clips_out: list[int] | None = None) -> Iterator[Frame]:
        """Frames of the whole utterance ``pcm`` (float32 mono, 16 kHz), clip after clip.

        The audio is padded with silence to whole clips, encoded at once, and every clip is generated
        in full; frames past the audio's end are dropped. ``clips_out`` (when given) gets one entry
        per finished clip: its frame count.
        """
        total = self.frame_count(pcm.size)
        clips = -(-total // self.clip_frames)
        padded = np.zeros(round(clips * self.clip_frames * SAMPLE_RATE / self.fps), np.float32)
        padded[:min(pcm.size, padded.size)] = pcm[:padded.size]
        tokens = self.backend.audio_tokens(torch.from_numpy(padded), clips * self.clip_frames)
        generator = torch.Generator("cpu").manual_seed(self.seed)
        motion = self.reference_pixels.expand(self.motion_frames, -1, -1, -1)
        for k in range(clips):
            start = k * self.clip_frames
            images = self.clip(tokens[start:start + self.clip_frames].to(self.backend.dtype), motion, generator)
            motion = images[-self.motion_frames:]
            frames = to_uint8_frames(images)
            kept = min(self.clip_frames, total - start)
            if clips_out is not None:
                clips_out.append(kept)
            for i in range(kept):
                yield Frame(start + i, (start + i) / self.fps, frames[i])

    def clip(self, audio_tokens: torch.Tensor, motion_pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One clip: audio tokens ``[F, T, D]``, the previous clip's last ``n`` frames ``[n, 3, H, W]``
        in [-1, 1] -> the clip's frames ``[F, 3, H, W]`` in [-1, 1]."""
        backend, frames, n = self.backend, self.clip_frames, self.motion_frames
        device = backend.device
        latents = backend.vae_encode(torch.cat([self.reference_pixels, motion_pixels.to(backend.dtype)]))
        bank = backend.reference(latents.repeat(2, 1, 1, 1))
        cond = ClipConditions(
            audio_tokens=audio_tokens[None],
            reference_bank=[t.view(2, 1 + n, *t.shape[1:])[:1, 0] for t in bank.tokens],
            motion_features=[f.view(2, 1 + n, *f.shape[1:])[:1, 1:] for f in bank.features],
            face_features=backend.face_features(self.mask.expand(frames, -1, -1, -1))[None],
            speed_tokens=backend.speed_tokens(torch.full((1, frames), float(self.head_speed), device=device)))
        h = self.size // self.config.latent_downscale
        noise = torch.randn(1, self.config.unet.in_channels, frames, h, h, generator=generator).to(device)
        clean = self.denoiser(noise, cond, generator=generator)
        per_frame = clean[0].transpose(0, 1)
        return torch.cat([backend.vae_decode(per_frame[i:i + 1]) for i in range(frames)])


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

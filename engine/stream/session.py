"""A generation session: push audio in (any block size), pull frames out, clip by clip.

This is the one generation path. ``emote generate`` pushes a whole file and ends the stream; a
live source pushes blocks as they arrive. Everything a frame depends on (clip cut, audio window,
noise, motion frames) is a function of the audio and the options alone, so both give the same frames.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from engine.backends.base import Backend
from engine.config import ModelConfig, ReproductionConfig
from engine.models.audio import echomimic_frame_count
from engine.models.reference_net import ReferenceBank
from engine.options import GenerationOptions
from engine.sampling.clip_denoiser import (HALLO_BRANCHES, AlternatingReference, ClipConditions, ClipDenoiser,
                                           OverlapPredictions)
from engine.sampling.guidance import GuidanceScales
from engine.sampling.samplers import make_sampler
from engine.sampling.schedules import NoiseSchedule
from engine.stream.audio_features import StreamingAudioFeatures
from engine.stream.chunk_planner import ChunkPlanner, Clip
from engine.stream.hallo_conditions import hallo_conditions
from engine.stream.idle import SpeechSpans
from engine.stream.rolling import RollingWindow


@dataclass
class Frame:
    """One output frame: ``index`` from 0, presentation time ``pts`` in seconds, RGB ``image`` uint8 [H, W, 3].

    ``skipped``: generation fell behind and this frame repeats the last one (the "skip" lag policy).
    ``idle``: an always-on session made it from silence (its clip had no speech).
    """

    index: int
    pts: float
    image: np.ndarray
    skipped: bool = False
    idle: bool = False


@dataclass
class HeldFrames:
    """The last frames of a streamed context window, held back until the next window, which overlaps them,
    has added its predictions (:meth:`Session.denoise_window`).

    ``clip``: their frames; ``noise``: their starting noise ``[1, C, k, h, w]``; ``audio_tokens``: the tokens
    their window read ``[1, k, T, D]``; ``latents``: their clean latents as that window left them (what is
    shown when no window follows); ``predictions``: per step, the sums of the windows' guided outputs so far;
    ``steps``: the sampler steps of the windows that made them.
    """

    clip: Clip
    noise: torch.Tensor
    audio_tokens: torch.Tensor
    latents: torch.Tensor
    predictions: OverlapPredictions
    steps: int


def to_image_tensor(image: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> ``[1, 3, H, W]`` in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    return t.to(device=device, dtype=dtype)


def to_uint8_frames(images: torch.Tensor) -> np.ndarray:
    """``[N, 3, H, W]`` in [-1, 1] -> uint8 ``[N, H, W, 3]``."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def clip_seed(seed: int, start_frame: int) -> int:
    """The noise seed of the clip starting at ``start_frame``: fixed by (seed, frame), not by arrival."""
    return int(np.random.SeedSequence([seed, start_frame]).generate_state(1, dtype=np.uint64)[0] >> 1)


class Session:
    """One portrait, a stream of audio, frames out.

    The reference bank, face-locator features, speed tokens and Hallo's inputs (face-embedding tokens,
    region masks: :mod:`engine.stream.hallo_conditions`) are computed once, at construction;
    :meth:`reset` starts a new utterance without recomputing them.

    Always-on sessions (:class:`~engine.stream.runner.LiveSession` with ``always_on``) push silence as well as
    speech (``push_audio(pcm, speech=False)``): a clip with no speech is idle and runs ``idle_steps``.
    :meth:`interrupt` cuts the stream at a frame (a barge-in) and goes on from there with the motion frames of
    the frames before it, which :meth:`keep_for_rewind` keeps.

    ``region_masks`` (``[3, h, w]`` full / face / lip, or Hallo's per-level masks: :func:`hallo_conditions`;
    Hallo's models only; None: made from ``face_mask``) and ``face_embedding`` (``[E]``, Hallo's models only;
    None: a zero embedding) are the portrait's precomputed inputs.
    """

    def __init__(self, backend: Backend, config: ModelConfig, image: np.ndarray, face_mask: np.ndarray,
                 options: GenerationOptions, region_masks: np.ndarray | list[np.ndarray] | None = None,
                 face_embedding: np.ndarray | None = None):
        options = options.with_model_defaults(config.sampling)
        self.backend, self.config, self.options = backend, config, options
        size = image.shape[0]
        multiple = config.latent_downscale * 2 ** (len(config.unet.block_out_channels) - 1)
        if image.shape[:2] != (size, size) or size % multiple:
            raise ValueError(f"portrait must be square with a side that is a multiple of {multiple}, "
                             f"got {image.shape[1]}x{image.shape[0]}")
        self.size = size
        self.fps = config.fps
        self.motion_frames = config.motion_frames
        window = config.audio.window
        self.rolling = options.schedule == "rolling"
        self.reproduction = config.reproduce if options.reproduce else ReproductionConfig()
        self.whole_audio = self.reproduction.whole_audio and options.offline and not self.rolling
        self.windows = self.reproduction.context_frames if self.whole_audio else 0
        self.stream_window = 0
        self.held_frames = 0
        if self.reproduction.context_frames and not self.whole_audio and not self.rolling:
            self.stream_window = options.clip_frames or self.reproduction.context_frames
            self.held_frames = self.reproduction.context_overlap
            if self.stream_window <= self.held_frames:
                raise ValueError(f"context windows of {self.stream_window} frames cannot overlap by "
                                 f"{self.held_frames}")
        if self.rolling:
            self.planner = ChunkPlanner(options.group_frames, lookahead=window)
        elif self.stream_window:
            self.planner = ChunkPlanner(self.stream_window - self.held_frames,
                                        options.first_clip_frames or self.stream_window, lookahead=window)
        else:
            self.planner = ChunkPlanner(options.clip_frames or config.clip_frames, options.first_clip_frames,
                                        lookahead=window)
        self.audio = StreamingAudioFeatures(backend, config.fps, lookahead=window,
                                            left_context=round(options.audio_context_s * config.fps))
        sampler = make_sampler(options.sampler, NoiseSchedule.from_dict(config.scheduler))
        self.denoiser = ClipDenoiser(backend, sampler, options.steps, GuidanceScales.of(options))
        self.window = RollingWindow(self.denoiser.model, sampler, options.steps)
        device, dtype = backend.device, backend.dtype
        self.hallo = hallo_conditions(backend, config, face_mask, size // config.latent_downscale, region_masks,
                                      face_embedding)
        self.alternating = (self.reproduction.alternating_reference and self.hallo.image_tokens is not None
                            and self.denoiser.model.branches == HALLO_BRANCHES and backend.per_frame_reference_bank)
        self.contexts = ([self.hallo.uncond_image_tokens, self.hallo.image_tokens] if self.alternating
                         else [self.hallo.image_tokens])
        self.reference_latent = backend.vae_encode(to_image_tensor(image, device, dtype))
        banks = [self._reference(self.reference_latent, context) for context in self.contexts]
        self.reference_tokens = banks[-1].tokens
        self.reference_features = banks[-1].features
        self.alternating_banks = [bank.tokens for bank in banks]
        self._context_features = [bank.features for bank in banks]
        mask = torch.from_numpy(np.ascontiguousarray(face_mask, dtype=np.float32))[None, None]
        self.face = backend.face_features(mask.to(device=device, dtype=dtype))[:, None]
        self._speed_cache: dict[int, torch.Tensor | None] = {}
        self.rewind_frames = 0
        self.defer_motion = False
        self.reset()

    def reset(self) -> None:
        """Start a new utterance: audio, clip cut and motion frames start over; the reference stays."""
        self.audio.reset()
        self.planner.reset()
        self.window.reset()
        self.speech = SpeechSpans()
        self._whole_taken = False
        self._held: HeldFrames | None = None
        self._history: list[tuple[Clip, torch.Tensor]] = []
        self._motion_pending: list[torch.Tensor] = []
        self.anchored = 0
        init = self.config.motion_init
        if init not in ("zeros", "reference"):
            raise ValueError(f"motion_init must be 'zeros' or 'reference', not {init!r}")
        n = self.motion_frames
        self._motions = [[f.expand(n, *f.shape[1:]) if init == "reference"
                         else torch.zeros_like(f).expand(n, *f.shape[1:]) for f in features]
                        for features in self._context_features]
        self._initial_motions = self._motions

    def keep_for_rewind(self, frames: int) -> None:
        """Keep what :meth:`interrupt` needs to cut up to ``frames`` frames behind the newest clip taken in: the
        clean latents of those frames and of the motion frames before them, and their audio context."""
        self.rewind_frames = frames

    def push_audio(self, pcm: np.ndarray, speech: bool = True) -> None:
        """Append 16 kHz mono float32 PCM (any block size, including empty): speech, or silence an always-on
        session's clock released (``speech=False``)."""
        start = self.audio.samples
        self.audio.push(pcm)
        if speech:
            self.speech.add(start, self.audio.samples)

    def idle(self, clip: Clip) -> bool:
        """True when no speech falls in ``clip``'s frames or its look-ahead."""
        frame_sample = self.audio.frame_sample
        return not self.speech.count(frame_sample(clip.start), frame_sample(clip.end + self.planner.lookahead))

    def interrupt(self, frame: int) -> int:
        """Cut the stream at ``frame`` (a barge-in): the audio from it on is dropped, the next clip starts there,
        a rolling window is emptied, and the motion frames are those of the frames before ``frame`` again.

        ``frame`` must be at most :meth:`keep_for_rewind`'s frames behind the newest clip taken in. Returns the
        speech samples dropped.
        """
        reach = max(0, frame - self.motion_frames)
        if frame > 0 and (not self._history or self._history[0][0].start > reach):
            raise RuntimeError(f"cannot go back to frame {frame}: the frames before it were not kept "
                               f"(keep_for_rewind({self.rewind_frames}))")
        cut = self.audio.frame_sample(frame)
        dropped = self.speech.drop_from(cut)
        self.audio.truncate(cut)
        self.planner.restart(frame)
        self.window.reset()
        self._held = None
        self._history = [self._head(clip, latents, frame) for clip, latents in self._history if clip.start < frame]
        self._motions = self._initial_motions
        self._motion_pending = []
        for clip, latents in self._history:
            if clip.end > reach:
                self._advance_motion(latents[0].transpose(0, 1))
        return dropped

    @staticmethod
    def _head(clip: Clip, latents: torch.Tensor, frame: int) -> tuple[Clip, torch.Tensor]:
        """The part of a kept clip before ``frame``."""
        if clip.end <= frame:
            return clip, latents
        return dataclasses.replace(clip, end=frame), latents[:, :, :frame - clip.start]

    def _keep(self, clip: Clip, latents: torch.Tensor) -> None:
        """Keep a clean clip's latents for :meth:`interrupt` while a rewind can reach it."""
        if not self.rewind_frames:
            return
        self._history.append((clip, latents))
        oldest = clip.end - self.rewind_frames - self.motion_frames
        while self._history[0][0].end <= oldest:
            self._history.pop(0)

    def end(self) -> None:
        """Mark the end of the audio: the remaining frames can be produced."""
        self.audio.end()

    def _speed_tokens(self, frames: int) -> torch.Tensor | None:
        if frames not in self._speed_cache:
            speed = torch.full((1, frames), float(self.options.head_speed), device=self.backend.device)
            self._speed_cache[frames] = self.backend.speed_tokens(speed)
        return self._speed_cache[frames]

    def conditions(self, clip: Clip) -> ClipConditions:
        """The backbone's inputs for ``clip`` besides the latents (consumes nothing)."""
        if self.whole_audio:
            tokens = self.audio.whole_tokens(self._video_frames())[clip.start:clip.end]
        else:
            tokens = self.audio.tokens(clip)
        return self._conditions(tokens[None].to(self.backend.dtype), clip.frames)

    def _conditions(self, audio_tokens: torch.Tensor, frames: int) -> ClipConditions:
        self.advance_motion()
        alternating = None
        if self.alternating:
            alternating = AlternatingReference(
                banks=(self.alternating_banks[0], self.alternating_banks[1]),
                motion=([m[None] for m in self._motions[0]], [m[None] for m in self._motions[1]]))
        return ClipConditions(audio_tokens=audio_tokens, reference_bank=self.reference_tokens,
                              motion_features=[m[None] for m in self._motions[-1]], face_features=self.face,
                              speed_tokens=self._speed_tokens(frames), image_tokens=self.hallo.image_tokens,
                              uncond_image_tokens=self.hallo.uncond_image_tokens,
                              region_masks=self.hallo.region_masks, alternating=alternating)

    def _reference(self, latents: torch.Tensor, context: torch.Tensor | None) -> ReferenceBank:
        """The ReferenceNet on ``latents`` reading ``context`` (face-embedding tokens; None: the model's default)."""
        if context is None:
            return self.backend.reference(latents)
        return self.backend.reference(latents, context=context)

    def _video_frames(self) -> int:
        """With whole-audio features, the frames generated: EchoMimic's chunker's count
        (``whisper_chunk_frames``), the audio's frames with context windows, else the audio's frames rounded
        up to whole clips (the first clip, then ``clip_frames`` each), as Hallo pads its audio."""
        total = self.audio.total_frames
        if self.reproduction.whisper_chunk_frames:
            return echomimic_frame_count(self.audio.samples, self.fps)
        if self.windows:
            return total
        first, size = self.planner.first_clip_frames, self.planner.clip_frames
        return first if total <= first else first + -(-(total - first) // size) * size

    def noise(self, clip: Clip) -> tuple[torch.Tensor, torch.Generator]:
        """The clip's starting noise ``[1, C, F, h, w]`` and the generator it came from (seeded by clip start, or
        with ``noise = "session"`` the same for every clip), clamped as the reproduced pipeline clamps it
        (``reproduce.noise_clamp``)."""
        h = self.size // self.config.latent_downscale
        start = 0 if self.options.noise == "session" else clip.start
        generator = torch.Generator("cpu").manual_seed(clip_seed(self.options.seed, start))
        noise = torch.randn(1, self.config.unet.in_channels, clip.frames, h, h, generator=generator)
        if self.reproduction.noise_clamp > 0:
            noise = noise.clamp(-self.reproduction.noise_clamp, self.reproduction.noise_clamp)
        return noise.to(self.backend.device), generator

    def denoise(self, clip: Clip, steps: int | None = None) -> torch.Tensor:
        """Clean latents ``[1, C, F, h, w]`` of ``clip`` through all steps; advances the motion frames.

        ``steps`` overrides the session's steps for this clip (when generation falls behind).
        """
        cond = self.conditions(clip)
        noise, generator = self.noise(clip)
        if self.windows:
            latents = self.denoiser.windowed(noise, cond, self.windows, self.reproduction.context_overlap,
                                             generator=generator, steps=steps)
        else:
            latents = self.denoiser(noise, cond, generator=generator, steps=steps)
        self._advance_motion(latents[0].transpose(0, 1))
        self._keep(clip, latents)
        self._release(clip.end)
        return latents

    def _release(self, frame: int) -> None:
        """Drop the audio (and speech marks) only clips from ``frame`` on need, a rewind's reach kept."""
        frame = max(0, frame - self.rewind_frames)
        self.audio.release_before(frame)
        self.speech.forget_before(self.audio.frame_sample(frame))

    def step(self, clip: Clip, steps: int | None = None) -> list[tuple[Clip, torch.Tensor]]:
        """Take in a released clip; return the clips finished by it, with their clean latents.

        Clip schedule: the clip itself, denoised through all steps (an idle clip: at most ``idle_steps``).
        Rolling schedule: the clip enters the window as noise, one backbone call advances the window, and the
        oldest group leaves when clean. A returned clip says whether it was idle.
        """
        if self.idle(clip):
            clip = dataclasses.replace(clip, idle=True)
            if not self.rolling:
                steps = min(steps or self.options.steps, self.options.idle_steps)
        if self.stream_window:
            return self.denoise_window(clip, steps)
        if not self.rolling:
            return [(clip, self.denoise(clip, steps))]
        tokens = self.audio.tokens(clip)[None].to(self.backend.dtype)
        noise, generator = self.noise(clip)
        self.window.enter(clip, noise, tokens)
        self._release(clip.end)
        return self._advance_window(generator)

    def denoise_window(self, clip: Clip, steps: int | None = None) -> list[tuple[Clip, torch.Tensor]]:
        """Streamed context windows (the causal form of EchoMimic's): denoise the frames held back from the
        previous window together with ``clip``'s as one window, averaging the held frames' guided output
        with the earlier windows' at each step (:meth:`ClipDenoiser.overlapping`); return the frames no
        later window will hold, with their clean latents, and hold the last ``held_frames`` back.

        Held frames made with another step count (an idle clip, the "fewer steps" lag policy) are returned
        as they are and the window starts with ``clip``.
        """
        steps = steps or self.options.steps
        finished = []
        held = self._held
        if held is not None and held.steps != steps:
            finished.append(self._finish_held())
            held = None
        cond = self.conditions(clip)
        noise, generator = self.noise(clip)
        earlier = None
        start = clip.start
        if held is not None:
            tokens = torch.cat([held.audio_tokens, cond.audio_tokens], dim=1)
            cond = self._conditions(tokens, tokens.shape[1])
            noise = torch.cat([held.noise, noise], dim=2)
            earlier, start = held.predictions, held.clip.start
        latents, predictions = self.denoiser.overlapping(noise, cond, earlier, generator=generator, steps=steps)
        self._advance_motion(latents[0].transpose(0, 1))
        out = max(0, clip.end - start - self.held_frames)
        if out:
            done = dataclasses.replace(clip, start=start, end=start + out)
            finished.append((done, latents[:, :, :out]))
            self._keep(done, latents[:, :, :out])
        self._held = HeldFrames(dataclasses.replace(clip, start=start + out), noise[:, :, out:],
                                cond.audio_tokens[:, out:], latents[:, :, out:],
                                predictions.tail(clip.end - start - out), steps)
        self._release(clip.end)
        return finished

    def _finish_held(self) -> tuple[Clip, torch.Tensor]:
        """The held frames as their window left them (no window follows them); nothing is held after."""
        held, self._held = self._held, None
        self._keep(held.clip, held.latents)
        return held.clip, held.latents

    def flush(self) -> list[tuple[Clip, torch.Tensor]]:
        """After the last clip: the frames streamed context windows held back, and what the rolling window
        still holds (nothing more for clip schedule)."""
        finished = [self._finish_held()] if self._held is not None else []
        while self.window.groups:
            seed = clip_seed(self.options.seed, self.window.groups[-1].clip.end + self.window.frames)
            finished += self._advance_window(torch.Generator("cpu").manual_seed(seed))
        return finished

    def _advance_window(self, generator: torch.Generator) -> list[tuple[Clip, torch.Tensor]]:
        cond = self._conditions(self.window.audio_tokens(), self.window.frames)
        finished = self.window.advance(cond, generator=generator)
        for clip, latents in finished:
            self._advance_motion(latents[0].transpose(0, 1))
            self._keep(clip, latents)
        return finished

    def skip(self, clip: Clip) -> list[tuple[Clip, torch.Tensor]]:
        """Give up on ``clip`` (too late): its audio is released, the motion frames stay as they were. Returns
        the frames a streamed context window held back for it, now finished as they are (they come before
        ``clip``)."""
        self._release(clip.end)
        return [self._finish_held()] if self._held is not None else []

    def needed_samples(self, clip: Clip) -> int:
        """Samples that must be in before ``clip`` can run: its frames plus the look-ahead (or all, at the end)."""
        needed = self.audio.frame_sample(clip.end + self.planner.lookahead)
        return min(needed, self.audio.samples) if self.audio.ended else needed

    def _advance_motion(self, clip_latents: torch.Tensor) -> None:
        """Take a finished clip's latents ``[F, C, h, w]`` in for the next clip's motion frames: at once, or with
        :attr:`defer_motion` at the next clip's conditions (or :meth:`advance_motion`)."""
        if self.motion_frames == 0:
            return
        self._motion_pending.append(clip_latents[-self.motion_frames:])
        if not self.defer_motion:
            self.advance_motion()

    def advance_motion(self) -> None:
        """Motion frames for the next clip: the last n frames so far, through the ReferenceNet (none when n = 0),
        their features pulled ``motion_anchor`` of the way toward the reference image's (``anchored`` counts
        the updates so pulled since the last :meth:`reset`). Runs the updates taken in and not run yet.

        The streaming runtime defers them on a serial backend (``defer_motion``), so that a clip's frames go out
        before the ReferenceNet pass that only the next clip needs."""
        pending, self._motion_pending = self._motion_pending, []
        for latents in pending:
            self._motion_update(latents.to(self.backend.dtype))

    def _motion_update(self, latents: torch.Tensor) -> None:
        n = self.motion_frames
        if self.reproduction.motion_roundtrip:
            latents = self.backend.vae_encode(self.backend.vae_decode(latents))
        anchor = self.options.motion_anchor
        motion = []
        for context, old, reference in zip(self.contexts, self._motions, self._context_features):
            newest = self._reference(latents, context).features
            if anchor > 0:
                newest = [torch.lerp(new, ref.expand_as(new), anchor) for new, ref in zip(newest, reference)]
            motion.append([torch.cat([o, new])[-n:] for o, new in zip(old, newest)])
        if anchor > 0:
            self.anchored += 1
        self._motions = motion

    def decode(self, clip: Clip, latents: torch.Tensor) -> list[Frame]:
        """VAE-decode a clip's latents into frames with their presentation times."""
        images = to_uint8_frames(self.backend.vae_decode(latents[0].transpose(0, 1)))
        if self.whole_audio and not self.windows:
            images = images[:max(0, self.audio.total_frames - clip.start)]
        return [Frame(clip.start + i, (clip.start + i) / self.fps, img, idle=clip.idle) for i, img in enumerate(images)]

    def ready_clips(self) -> list[Clip]:
        """Clips whose audio (plus look-ahead) is in, in order; each is returned once. With whole-audio
        features: none before the end of the audio, then full-length clips up to the padded length (the
        frames past the audio are dropped in :meth:`decode`), or with context windows the whole video as
        one clip."""
        if self.whole_audio:
            if not self.audio.ended:
                return []
            if self.windows:
                if self._whole_taken:
                    return []
                self._whole_taken = True
                return [Clip(0, 0, self._video_frames())]
            return self.planner.ready(0, self._video_frames())
        return self.planner.ready(self.audio.frames_available, self.audio.total_frames)

    def frames(self) -> Iterator[Frame]:
        """Generate every clip that is ready now and yield its frames in order (all of them once ended)."""
        for clip in self.ready_clips():
            for done, latents in self.step(clip):
                yield from self.decode(done, latents)
        if self.audio.ended:
            for done, latents in self.flush():
                yield from self.decode(done, latents)

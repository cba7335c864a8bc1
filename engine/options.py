"""What the user chooses per generation run (:class:`GenerationOptions`), below every layer that reads it.

The options are plain values checked on construction; the model's ``config.json`` supplies the defaults it
was made for (:class:`engine.config.SamplingDefaults`), the engine the rest (:data:`ENGINE_DEFAULTS`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from engine.config import SamplingDefaults

SAMPLER_NAMES = ("ddim", "lcm", "euler")
"""The samplers a run may name (:data:`engine.sampling.samplers.SAMPLERS` builds them)."""
SCHEDULES = ("clip", "rolling")
"""How a clip goes through the steps (:attr:`GenerationOptions.schedule`)."""
NOISE_MODES = ("clip", "session")
"""Where each clip's starting noise comes from (:attr:`GenerationOptions.noise`)."""


@dataclass
class GenerationOptions:
    """What the user chooses per run (the model's config supplies the rest).

    Attributes:
        steps: sampler steps per clip (1-50).
        sampler: "ddim", "lcm" or "euler".
        cfg_audio, cfg_ref: guidance scales (1 = off; both 1 -> one backbone batch per step).
            For these four, ``motion_anchor`` and ``noise``, None means the model's own default (its config's
            ``sampling``), else ``ENGINE_DEFAULTS``; :meth:`with_model_defaults` fills them, and a Session
            does that itself.
        seed: noise seed; with the same inputs the same seed gives the same frames.
        head_speed: constant head rotation speed in rad/s for the speed layers.
        clip_frames / first_clip_frames: clip sizes (None: the model's ``clip_frames``; first = clip).
        audio_context_s: left audio context of each clip's audio-encoder window, seconds.
        schedule: "clip" (each clip denoised through all steps) or "rolling" (groups of
            ``group_frames`` at staggered noise levels, one backbone call per group: :mod:`engine.stream.rolling`).
        idle_steps: sampler steps of an idle clip (always-on sessions: a clip with no speech in its audio, the
            look-ahead included; 1-50, at most ``steps``). This bounds what silence costs: per second of idle
            video, ``fps / clip_frames`` clips of ``idle_steps`` steps. Clip schedule only (a rolling window's
            depth is fixed).
        motion_anchor: the drift guard, 0-1: each time the motion frames advance, their ReferenceNet
            features move this share of the way back to the reference image's (0: off; None: the model's
            default, else off). The model reads its own last frames as motion frames, so without it small
            errors feed back and the face drifts away from the reference over a long stream; see
            :meth:`engine.stream.session.Session._advance_motion`.
        noise: "clip" (each clip's noise drawn from a seed of its own, fixed by its first frame) or "session"
            (every clip of the stream starts from the same noise, and its sampler's re-noising draws the same
            too). Clips denoised from independent noise differ in what the noise decides (overall shading, fine
            texture), and that shows as a jump at every clip seam; from one noise they agree, and only what the
            audio and motion frames change moves (None: the model's default, else "clip").
        reproduce: follow the imported system's own pipeline where the model's config says how (its
            ``reproduce`` section: Hallo's reference reader and motion-frame round trip, EchoMimic's noise
            clamp; offline also whole-audio features, Hallo's whole clips, EchoMimic's frame count and context
            windows, streamed clip by clip their causal form, ``clip_frames`` the window size); False: the
            engine's own form of those steps.
        offline: the whole audio is pushed before any frame is wanted (``emote generate``): a session that
            reproduces a system's whole-audio front end waits for the end of the audio.
    """

    steps: int | None = None
    sampler: str | None = None
    cfg_audio: float | None = None
    cfg_ref: float | None = None
    seed: int = 0
    head_speed: float = 0.0
    clip_frames: int | None = None
    first_clip_frames: int | None = None
    audio_context_s: float = 1.0
    schedule: str = "clip"
    group_frames: int = 2
    motion_anchor: float | None = None
    noise: str | None = None
    idle_steps: int = 1
    reproduce: bool = True
    offline: bool = False

    def __post_init__(self) -> None:
        if self.steps is not None and not 1 <= self.steps <= 50:
            raise ValueError(f"steps must be between 1 and 50, got {self.steps}")
        if not 1 <= self.idle_steps <= 50:
            raise ValueError(f"idle_steps must be between 1 and 50, got {self.idle_steps}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be 'clip' or 'rolling', not {self.schedule!r}")
        if self.sampler is not None and self.sampler not in SAMPLER_NAMES:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLER_NAMES)}")
        for name in ("clip_frames", "first_clip_frames"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.group_frames < 1:
            raise ValueError(f"group_frames must be >= 1, got {self.group_frames}")
        if self.audio_context_s < 0:
            raise ValueError(f"audio_context_s must be >= 0, got {self.audio_context_s}")
        if self.motion_anchor is not None and not 0.0 <= self.motion_anchor <= 1.0:
            raise ValueError(f"motion_anchor must be between 0 and 1, got {self.motion_anchor}")
        if self.noise is not None and self.noise not in NOISE_MODES:
            raise ValueError(f"noise must be 'clip' or 'session', not {self.noise!r}")

    def with_model_defaults(self, defaults: SamplingDefaults) -> GenerationOptions:
        """A copy whose unset ``steps``, ``sampler``, ``cfg_audio``, ``cfg_ref``, ``motion_anchor`` and ``noise``
        are the model's ``defaults`` (a distilled student: 4 LCM steps, no guidance), else ``ENGINE_DEFAULTS``."""
        chosen = {}
        for name, fallback in ENGINE_DEFAULTS.items():
            value = getattr(self, name)
            if value is None:
                value = getattr(defaults, name)
            chosen[name] = fallback if value is None else value
        return dataclasses.replace(self, **chosen)


ENGINE_DEFAULTS = {"steps": 4, "sampler": "ddim", "cfg_audio": 1.0, "cfg_ref": 1.0, "motion_anchor": 0.0,
                   "noise": "clip"}
"""What :class:`GenerationOptions` falls back to where neither the user nor the model says."""

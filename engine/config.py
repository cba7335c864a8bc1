"""Model configuration: the presets (``tiny``, ``sd15``) and the ``config.json`` of a model directory.

A model directory holds ``config.json`` (a serialised :class:`ModelConfig`) and one safetensors
file per component. A ``config.json`` may also name a preset and override some of its fields::

    {"preset": "tiny", "unet": {"block_out_channels": [32, 64, 64]}}

A config is validated as a whole when it is read (pydantic, strict JSON types, finite numbers, each field's
range, and the rules between fields: :func:`validate_config`): any mismatch is one :class:`ConfigError` line
naming every bad field, and the file when read from one.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from pydantic import Field, TypeAdapter, ValidationError

from engine.limits import CLIP_FRAMES_LIMITS, FPS_LIMITS, GUIDANCE_LIMITS, SIDE_LIMITS, STEPS_LIMITS
from engine.timebase import DEFAULT_FPS, SAMPLE_RATE, check_fps

Count = Annotated[int, Field(ge=1)]
"""A positive whole number: a width, a count of channels, heads, layers or tokens."""
Widths = Annotated[tuple[Count, ...], Field(min_length=1)]
"""One or more positive widths, one per block."""
PositiveFloat = Annotated[float, Field(gt=0)]
DownBlock = Literal["CrossAttnDownBlock2D", "DownBlock2D"]
UpBlock = Literal["UpBlock2D", "CrossAttnUpBlock2D"]

SD15_BLOCKS = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
SD15_UP_BLOCKS = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")


ENCODER_KINDS = ("wav2vec2", "whisper")


@dataclass
class ProjectionConfig:
    """Sizes of the audio projection (:class:`engine.models.audio.AudioProjection`, wav2vec2 only); Hallo's
    by default.

    tokens: audio tokens per video frame; intermediate_dim: width of the two hidden layers;
    output_dim: token width (the backbone's cross-attention dim).
    """

    tokens: int = 32
    intermediate_dim: int = 512
    output_dim: int = 768

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"projection.{f.name} must be a positive integer, got {value!r}")


@dataclass
class AudioConfig:
    """Everything needed to build an audio encoder (:class:`engine.models.audio.AudioEncoder`) but the frame
    rate, which is the model's (:attr:`ModelConfig.fps`); JSON round-trips via to_dict/from_dict.

    kind: "wav2vec2" or "whisper".
    encoder: keyword arguments of the transformers config (``Wav2Vec2Config`` / ``WhisperConfig``);
        empty means that class's defaults (wav2vec2-base / whisper-tiny shapes).
    window: m; frame f sees audio of frames f-m .. f+m (wav2vec2) or whisper steps c-2m .. c+2m+1.
    layers: indices of the kept hidden states, ``None`` for all. wav2vec2: into the transformer layer
        outputs (0 = first layer). whisper: into the levels (0 = after conv + positional embedding,
        k = after block k).
    normalize: wav2vec2 only; zero-mean unit-variance input as ``Wav2Vec2FeatureExtractor`` does.
    projection: wav2vec2: :class:`ProjectionConfig` (``None`` means Hallo's sizes). whisper: must be
        ``None`` (tokens go straight to the backbone).
    sample_rate: PCM sample rate in Hz; both encoders need :data:`engine.timebase.SAMPLE_RATE`.
    """

    kind: str = "wav2vec2"
    encoder: dict[str, Any] = field(default_factory=dict)
    window: int = 2
    layers: list[int] | None = None
    normalize: bool = True
    projection: ProjectionConfig | None = None
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        if self.kind not in ENCODER_KINDS:
            raise ValueError(f"audio encoder kind must be one of {ENCODER_KINDS}, got {self.kind!r}")
        if not isinstance(self.window, int) or self.window < 0:
            raise ValueError(f"window must be a non-negative integer, got {self.window!r}")
        if self.sample_rate != SAMPLE_RATE:
            raise ValueError(f"sample_rate must be {SAMPLE_RATE} (both encoders are {SAMPLE_RATE // 1000} kHz models), "
                             f"got {self.sample_rate}")
        if self.layers is not None:
            self.layers = list(self.layers)
            if not self.layers or len(set(self.layers)) != len(self.layers) or min(self.layers) < 0:
                raise ValueError(f"layers must be distinct non-negative indices or None, got {self.layers!r}")
        if isinstance(self.projection, Mapping):
            unknown = sorted(set(self.projection) - {f.name for f in dataclasses.fields(ProjectionConfig)})
            if unknown:
                raise ValueError(f"unknown audio projection keys: {', '.join(map(repr, unknown))}")
            self.projection = ProjectionConfig(**self.projection)
        if self.kind == "wav2vec2" and self.projection is None:
            self.projection = ProjectionConfig()
        if self.kind == "whisper" and self.projection is not None:
            raise ValueError("whisper audio tokens go straight to the backbone: projection must be None")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (the projection as a nested dict or None)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AudioConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown audio config keys: {', '.join(map(repr, unknown))}")
        return cls(**data)


BetaSchedule = Literal["linear", "scaled_linear"]
PredictionType = Literal["epsilon", "v_prediction", "sample"]
TimestepSpacing = Literal["leading", "trailing", "linspace"]

BETA_SCHEDULES = ("linear", "scaled_linear")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


@dataclass(frozen=True, kw_only=True)
class NoiseScheduleConfig:
    """The settings of a discrete noise schedule and the model's prediction type (diffusers DDIMScheduler names);
    :class:`engine.sampling.schedules.NoiseSchedule` adds its tables.

    Attributes:
        beta_start, beta_end: first and last beta of the training schedule.
        beta_schedule: "linear" (betas linear in t) or "scaled_linear" (sqrt(beta) linear in t, SD).
        num_train_timesteps: T, the number of training timesteps.
        rescale_betas_zero_snr: rescale so that alpha_bar_{T-1} = 0 (arXiv 2305.08891, Algorithm 1).
        prediction_type: what the model outputs, "epsilon", "v_prediction" or "sample" (x0).
        timestep_spacing: how inference timesteps are picked (see ``engine.sampling.schedules.spaced_timesteps``).
        steps_offset: added to "leading" timesteps.
        set_alpha_to_one: the alpha_bar after the last step is 1 (else alpha_bar_0).
    """

    beta_start: float
    beta_end: float
    beta_schedule: BetaSchedule
    num_train_timesteps: int = 1000
    rescale_betas_zero_snr: bool = False
    prediction_type: PredictionType = "epsilon"
    timestep_spacing: TimestepSpacing = "leading"
    steps_offset: int = 0
    set_alpha_to_one: bool = True

    def __post_init__(self) -> None:
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {self.timestep_spacing!r}")
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")

    @classmethod
    def sd(cls) -> NoiseScheduleConfig:
        """Stable Diffusion 1.5 (its scheduler_config.json): scaled_linear 0.00085-0.012, epsilon,
        leading spacing, steps_offset 1, set_alpha_to_one false."""
        return cls(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            prediction_type="epsilon",
            timestep_spacing="leading",
            steps_offset=1,
            set_alpha_to_one=False,
        )

    @classmethod
    def hallo(cls) -> NoiseScheduleConfig:
        """What Hallo and EchoMimic (audio-driven) run: linear 0.00085-0.012, v_prediction,
        zero-terminal-SNR rescale, trailing spacing, steps_offset 1 (the schedulers their inference
        scripts build)."""
        return cls(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="linear",
            rescale_betas_zero_snr=True,
            prediction_type="v_prediction",
            timestep_spacing="trailing",
            steps_offset=1,
            set_alpha_to_one=True,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the settings."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoiseScheduleConfig:
        """Inverse of `to_dict`; unknown keys are an error, missing ones take the defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown noise schedule settings: {', '.join(map(repr, unknown))}")
        return cls(**data)


@dataclass
class UNetConfig:
    """The 2D structure shared by the ReferenceNet and the backbone (diffusers' names and meanings).

    ``num_attention_heads`` is the number of heads (SD1.5's ``attention_head_dim: 8`` is, in
    diffusers, really a head count). ``cross_attention_dim`` is the width of the audio tokens
    the backbone's ``attn2`` reads; ``cross_attention_scale`` multiplies that attention's output.
    """

    in_channels: Count = 4
    out_channels: Count = 4
    block_out_channels: Widths = (320, 640, 1280, 1280)
    down_block_types: tuple[DownBlock, ...] = SD15_BLOCKS
    up_block_types: tuple[UpBlock, ...] = SD15_UP_BLOCKS
    layers_per_block: Count = 2
    num_attention_heads: Count = 8
    cross_attention_dim: Count = 768
    cross_attention_scale: float = 1.0
    norm_num_groups: Count = 32
    norm_eps: PositiveFloat = 1e-5
    use_linear_projection: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0

    @classmethod
    def from_diffusers(cls, config: dict[str, Any]) -> "UNetConfig":
        """Read a diffusers ``UNet2DConditionModel`` ``config.json`` (SD1.5 layout)."""
        heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
        if not isinstance(heads, int):
            raise ValueError(f"per-block head counts are not supported: {heads!r}")
        return cls(
            in_channels=config.get("in_channels", 4), out_channels=config.get("out_channels", 4),
            block_out_channels=tuple(config["block_out_channels"]),
            down_block_types=tuple(config["down_block_types"]), up_block_types=tuple(config["up_block_types"]),
            layers_per_block=config.get("layers_per_block", 2), num_attention_heads=heads,
            cross_attention_dim=config.get("cross_attention_dim", 768),
            norm_num_groups=config.get("norm_num_groups", 32), norm_eps=config.get("norm_eps", 1e-5),
            use_linear_projection=config.get("use_linear_projection", False),
            flip_sin_to_cos=config.get("flip_sin_to_cos", True), freq_shift=config.get("freq_shift", 0))


@dataclass
class TemporalConfig:
    """Motion modules: heads, the length of the position table, and where they sit.

    ``resolutions`` are downsampling factors (1 = the first block's resolution, 8 = the last);
    ``mid_block`` adds one in the mid block. AnimateDiff v2 / Hallo / EchoMimic: 8 heads,
    32 positions, (1, 2, 4, 8), mid block on. ``skip_plain_blocks``: the motion modules of down and
    up blocks without spatial attention (SD1.5: ``down_blocks.3``, ``up_blocks.0``, the 8x8 level) are
    built, so their weights load, but not run. Hallo's inference takes that path (its checkpointed
    branch) and was trained on it. ``norm_num_groups``: groups of the modules' GroupNorm; None uses the
    UNet's (AnimateDiff's modules always use 32, which equals SD1.5's).
    """

    num_attention_heads: Count = 8
    max_frames: Count = 32
    resolutions: tuple[Count, ...] = (1, 2, 4, 8)
    mid_block: bool = True
    skip_plain_blocks: bool = False
    norm_num_groups: Count | None = None


@dataclass
class SpeedConfig:
    """EMO's speed layers: head rotation speed per frame -> tokens for the temporal cross-attention.

    A speed ``w`` (radians per second) is encoded against ``len(centers)`` buckets as
    ``tanh((w - c_d) / r_d * 3)``, windowed over frames ``f-m .. f+m``, and mapped by an MLP to
    ``tokens`` tokens of width ``dim``.
    """

    enabled: bool = True
    centers: Annotated[tuple[float, ...], Field(min_length=1)] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
    radii: tuple[PositiveFloat, ...] = (0.125, 0.125, 0.125, 0.125, 0.25, 0.25, 0.5, 1.0)
    window: Annotated[int, Field(ge=0)] = 2
    hidden_dim: Count = 256
    tokens: Count = 2
    dim: Count = 256


@dataclass
class FaceLocatorConfig:
    """Conv encoder of the face-region mask (pixel resolution, ``conditioning_channels`` planes).

    ``target``: ``"conv_in"`` adds its features after the backbone's ``conv_in`` (EchoMimic,
    Hallo: output width = first block width); ``"latent"`` adds them to the noisy latent (EMO:
    output width = latent channels).
    """

    conditioning_channels: Count = 1
    block_out_channels: Widths = (16, 32, 64, 128)
    target: Literal["conv_in", "latent"] = "conv_in"


@dataclass
class ReferenceNetConfig:
    """How the ReferenceNet is built and what it hands to the backbone's motion modules.

    ``cross_attention``: keep ``attn2`` (Hallo; SD1.5 loads as is) or drop it (EchoMimic).
    ``context_tokens``: how many zero tokens ``attn2`` reads when no context is given (with
    ``image_proj`` on it reads the image projection of a zero face embedding instead).
    ``motion_source``: what a motion frame contributes to the motion module at each location:
    ``"hidden"`` (EMO): the ReferenceNet's hidden state at that location; ``"norm1"`` (Hallo): the
    ``norm1`` output (the reference-bank tokens) of the spatial transformer block just before it,
    as a ``[C, h, w]`` map (locations without a transformer block fall back to the hidden state).
    """

    cross_attention: bool = True
    context_tokens: Count = 1
    motion_source: Literal["hidden", "norm1"] = "hidden"


@dataclass
class ImageProjConfig:
    """Hallo's image projection: a face embedding -> ``tokens`` context tokens for every ``attn2``.

    When enabled, the spatial cross-attention of the backbone and of the ReferenceNet reads these
    tokens (width ``unet.cross_attention_dim``) instead of audio tokens; the audio then goes
    through ``audio_modules``. ``embedding_dim``: the face-recognition embedding width (512,
    insightface). Without an embedding the tokens of a zero embedding are used, as Hallo does when
    it finds no face.
    """

    enabled: bool = False
    embedding_dim: Count = 512
    tokens: Count = 4


@dataclass
class AudioModulesConfig:
    """Hallo's separate audio transformers, one after each spatial transformer of the backbone.

    Each one: GroupNorm, 1x1 ``proj_in`` to an inner width (Hallo's: the block's input channels),
    self-attention, three cross-attentions to the frame's audio tokens weighted by the full / face /
    lip region masks and passed through 1x1 ``zero_conv_*``, feed-forward, 1x1 ``proj_out``, residual.
    ``cross_attention_dim``: audio-token width. ``region_weights``: Hallo's pose / face / lip weights
    (multiply the full / face / lip branches).
    """

    enabled: bool = False
    cross_attention_dim: Count = 768
    region_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass
class ReproductionConfig:
    """How offline generation of an imported model reproduces that system's own pipeline (all off: our models).

    ``system``: the pipeline reproduced (``"hallo"``, ``"echomimic_v1"``), "" for none.
    ``whole_audio``: the audio features come from the whole waveform at once (offline only). Without
    context windows the audio is zero-padded to a whole number of clips, every clip is full length and
    the frames past the audio are dropped (Hallo); with them the whole video is one clip (EchoMimic).
    ``motion_roundtrip``: the motion frames are VAE-decoded (clamped to [-1, 1]) and encoded again before
    the ReferenceNet reads them, as Hallo takes them from its decoded video.
    ``alternating_reference``: Hallo's reference reader under single-scale CFG: the ReferenceNet runs on
    ``[reference, motion frames]`` once per branch with the image-projection context cycling zero
    embedding, face embedding row by row, and each frame of the conditional branch reads the bank row of
    its own parity (:class:`engine.sampling.clip_denoiser.AlternatingReference`; torch backends only: their
    backbone takes a bank row per frame).
    ``context_frames`` / ``context_overlap``: EchoMimic's sliding context windows over the whole video
    (0: clips as planned): :meth:`engine.sampling.clip_denoiser.ClipDenoiser.windowed`; a stream (clip
    schedule) runs their causal form: :meth:`engine.stream.session.Session.denoise_window`.
    ``whisper_chunk_frames``: the video has as many frames as EchoMimic's audio chunker gives
    (:func:`engine.models.audio.echomimic_frame_count`), not ``ceil(seconds x fps)``.
    ``noise_clamp``: the initial noise is clamped to ``[-noise_clamp, noise_clamp]`` (EchoMimic: 1.5; 0: not).
    """

    system: str = ""
    whole_audio: bool = False
    motion_roundtrip: bool = False
    alternating_reference: bool = False
    context_frames: int = 0
    context_overlap: int = 0
    whisper_chunk_frames: bool = False
    noise_clamp: float = 0.0


@dataclass
class SamplingDefaults:
    """Generation defaults a model comes with (None: the command line's own default).

    ``cfg_audio`` / ``cfg_ref``: guidance scales (:class:`engine.sampling.guidance.GuidanceScales`);
    a single-scale CFG of ``s`` (Hallo, EchoMimic) is ``cfg_audio = cfg_ref = s``.
    ``motion_anchor``: the drift guard's strength, 0-1 (``GenerationOptions.motion_anchor``): set where it
    was measured to help the model's long streams. ``noise``: ``"clip"`` or ``"session"``
    (``GenerationOptions.noise``): ``"session"`` where it was measured to hide the clip seams.
    """

    steps: Annotated[int, Field(ge=STEPS_LIMITS[0], le=STEPS_LIMITS[1])] | None = None
    sampler: Literal["ddim", "lcm", "euler"] | None = None
    cfg_audio: Annotated[float, Field(ge=GUIDANCE_LIMITS[0], le=GUIDANCE_LIMITS[1])] | None = None
    cfg_ref: Annotated[float, Field(ge=GUIDANCE_LIMITS[0], le=GUIDANCE_LIMITS[1])] | None = None
    motion_anchor: Annotated[float, Field(ge=0, le=1)] | None = None
    noise: Literal["clip", "session"] | None = None


@dataclass
class VAEConfig:
    """A diffusers VAE: ``kind`` ``"kl"`` (AutoencoderKL) or ``"tiny"`` (AutoencoderTiny, TAESD).

    ``config`` holds the diffusers constructor arguments; ``scaling_factor`` maps latents to the
    diffusion model's scale (SD: 0.18215; TAESD: 1.0).
    """

    kind: Literal["kl", "tiny", "pixel"] = "kl"
    config: dict[str, Any] = field(default_factory=dict)
    scaling_factor: PositiveFloat = 0.18215


@dataclass
class ModelConfig:
    """Everything needed to build the networks of one model, plus its generation defaults.

    ``fps``: video frames per second, the one frame rate of the model (the audio encoder's too).
    ``motion_init``: what stands for the motion frames before any frame exists (the first clip):
    ``"zeros"`` (EMO) or ``"reference"`` (the reference image's own ReferenceNet features).
    ``scheduler``: the training noise schedule (:class:`NoiseScheduleConfig` fields).
    ``image_proj`` / ``audio_modules``: Hallo's face-embedding tokens and separate audio transformers
    (off in our presets). ``sampling``: steps and guidance the model's weights expect. ``reproduce``: what
    offline generation does as an imported system's own pipeline does.
    """

    name: str = "custom"
    resolution: Annotated[int, Field(ge=SIDE_LIMITS[0], le=SIDE_LIMITS[1])] = 512
    latent_downscale: Count = 8
    fps: Annotated[float, Field(ge=FPS_LIMITS[0], le=FPS_LIMITS[1])] = DEFAULT_FPS
    clip_frames: Annotated[int, Field(ge=CLIP_FRAMES_LIMITS[0], le=CLIP_FRAMES_LIMITS[1])] = 12
    motion_frames: Annotated[int, Field(ge=0)] = 4
    motion_init: Literal["zeros", "reference"] = "zeros"
    unet: UNetConfig = field(default_factory=UNetConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    face_locator: FaceLocatorConfig = field(default_factory=FaceLocatorConfig)
    reference_net: ReferenceNetConfig = field(default_factory=ReferenceNetConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    scheduler: dict[str, Any] = field(default_factory=dict)
    image_proj: ImageProjConfig = field(default_factory=ImageProjConfig)
    audio_modules: AudioModulesConfig = field(default_factory=AudioModulesConfig)
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)
    reproduce: ReproductionConfig = field(default_factory=ReproductionConfig)

    def __post_init__(self) -> None:
        self.fps = check_fps(self.fps)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict, as ``config.json`` holds it."""
        out = dataclasses.asdict(self)
        out["audio"] = self.audio.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build from a dict; ``"preset": name`` starts from that preset and applies the rest on top.

        The merged config is validated first (:func:`validate_config`); ConfigError if it does not fit.
        Files written before the frame rate was stored once also hold it as ``audio.fps``: it is read as
        ``fps`` (and must equal it where both are given).
        """
        if not isinstance(data, dict):
            raise ConfigError(f"a model config must be a JSON object, got {_json_type(data)}")
        data = _without_audio_fps(data)
        if "preset" in data and not isinstance(data["preset"], str):
            raise ConfigError(f"preset: must be a preset's name, got {_json_type(data['preset'])}")
        base = preset(data.pop("preset")).to_dict() if "preset" in data else {}
        merged = _deep_merge(base, data)
        validate_config(merged)
        unknown = set(merged) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in merged:
                continue
            value = merged[f.name]
            if f.name == "audio":
                value = AudioConfig.from_dict(value)
            elif isinstance(value, dict) and f.name != "scheduler":
                value = _dataclass_from_dict(_SECTIONS[f.name], value)
            kwargs[f.name] = value
        return cls(**kwargs)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "ModelConfig":
        """Read and validate a ``config.json``; every error is one line that starts with the file's name."""
        try:
            data = json.loads(Path(path).read_text(), parse_constant=_refuse_constant, parse_float=_finite_float)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({' '.join(str(exc).split())})") from None
        except (ConfigError, RecursionError) as exc:
            raise ConfigError(f"{path}: {exc if isinstance(exc, ConfigError) else 'nested too deeply'}") from None
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None


class ConfigError(ValueError):
    """A model config that does not fit :class:`ModelConfig`; the message is one line naming the bad fields."""


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
             int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _refuse_constant(name: str) -> float:
    raise ConfigError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ConfigError(f"{text} is out of range for a number")
    return value


def _without_audio_fps(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config dict whose ``audio.fps`` (the earlier second copy of the frame rate) is moved to ``fps``."""
    data = dict(data)
    audio = data.get("audio")
    if not isinstance(audio, dict) or "fps" not in audio:
        return data
    audio = dict(audio)
    fps = audio.pop("fps")
    if "fps" in data and data["fps"] != fps:
        raise ConfigError(f"audio.fps ({fps!r}) differs from fps ({data['fps']!r}); one frame rate drives both")
    data["audio"], data["fps"] = audio, fps
    return data


def validate_config(data: dict[str, Any]) -> None:
    """Check a (merged) config dict against :class:`ModelConfig`'s fields, types and ranges, its ``scheduler``
    against :class:`NoiseScheduleConfig`'s when one is given, then the rules between fields (:func:`_mismatches`);
    ConfigError listing every problem as ``field.path: reason``.

    Unknown fields are left to :meth:`ModelConfig.from_dict`, which names them.
    """
    try:
        text = json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"not a JSON config ({exc})") from None
    problems: list[str] = []
    config = None
    for prefix, adapter, value in (("", _MODEL_CONFIG, text),
                                   ("scheduler.", _NOISE_SCHEDULE, json.dumps(data.get("scheduler", {})))):
        if prefix and (not isinstance(data.get("scheduler"), dict) or not data["scheduler"]):
            continue  # none given (the default), or not an object: the model config's own check names it
        try:
            validated = adapter.validate_json(value, strict=True)
        except ValidationError as exc:
            problems += [f"{prefix}{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg'].lower()}"
                         f" (got {_shown(e['input'])})" for e in exc.errors()]
        else:
            config = validated if not prefix else config
    if not problems and config is not None:
        problems = _mismatches(config)
    if problems:
        raise ConfigError("; ".join(problems))


def _shown(value: object) -> str:
    """A bad value as an error message shows it: a short number or string itself, else its JSON type."""
    if isinstance(value, (int, float, str)) and not isinstance(value, bool) and len(repr(value)) <= 24:
        return repr(value)
    return _json_type(value)


def _mismatches(config: ModelConfig) -> list[str]:
    """The rules between fields that each field's own range cannot say, as ``field: reason`` lines (none when the
    config is consistent); each names the field to change.

    - ``resolution``: the VAE divides the side by ``latent_downscale`` and the UNet halves the latents once per
      block after the first, so the side must be a multiple of ``latent_downscale * 2 ** (blocks - 1)``.
    - ``unet``: one down and one up block type per block width; GroupNorm's groups and the attention heads
      must divide every block width (also the motion modules' heads and groups).
    - ``clip_frames``: a clip's frames plus the motion frames go through the motion modules together, and
      their position table has ``temporal.max_frames`` rows.
    - ``speed``: one radius per bucket centre.
    """
    problems = []
    unet = config.unet
    blocks = len(unet.block_out_channels)
    multiple = config.latent_downscale * 2 ** (blocks - 1)
    if config.resolution % multiple:
        problems.append(f"resolution: must be a multiple of {multiple} (latent_downscale {config.latent_downscale} "
                        f"x 2^{blocks - 1} for {blocks} UNet blocks), got {config.resolution}")
    for name in ("down_block_types", "up_block_types"):
        if len(getattr(unet, name)) != blocks:
            problems.append(f"unet.{name}: must have one entry per unet.block_out_channels ({blocks}), "
                            f"got {len(getattr(unet, name))}")
    widths = ", ".join(map(str, unet.block_out_channels))
    groups = config.temporal.norm_num_groups or unet.norm_num_groups
    for name, divisor in (("unet.norm_num_groups", unet.norm_num_groups),
                          ("unet.num_attention_heads", unet.num_attention_heads),
                          ("temporal.num_attention_heads", config.temporal.num_attention_heads),
                          ("temporal.norm_num_groups", groups)):
        if any(width % divisor for width in unet.block_out_channels):
            problems.append(f"{name}: must divide every UNet block width ({widths}), got {divisor}")
    if config.clip_frames + config.motion_frames > config.temporal.max_frames:
        problems.append(f"clip_frames + motion_frames: at most temporal.max_frames ({config.temporal.max_frames}) "
                        f"frames go through the motion modules, got {config.clip_frames} + {config.motion_frames}")
    if len(config.speed.radii) != len(config.speed.centers):
        problems.append(f"speed.radii: must have one radius per speed.centers entry ({len(config.speed.centers)}), "
                        f"got {len(config.speed.radii)}")
    return problems


_SECTIONS = {"unet": UNetConfig, "temporal": TemporalConfig, "speed": SpeedConfig,
             "face_locator": FaceLocatorConfig, "reference_net": ReferenceNetConfig, "vae": VAEConfig,
             "image_proj": ImageProjConfig, "audio_modules": AudioModulesConfig, "sampling": SamplingDefaults,
             "reproduce": ReproductionConfig}


_MODEL_CONFIG = TypeAdapter(ModelConfig)
_NOISE_SCHEDULE = TypeAdapter(NoiseScheduleConfig)


def _dataclass_from_dict(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) and k != "config" else v for k, v in data.items()})


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("config", "encoder"):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _sd15() -> ModelConfig:
    return ModelConfig(
        name="sd15", resolution=512, clip_frames=12, motion_frames=4,
        unet=UNetConfig(), temporal=TemporalConfig(), speed=SpeedConfig(),
        face_locator=FaceLocatorConfig(conditioning_channels=1, block_out_channels=(16, 32, 64, 128)),
        reference_net=ReferenceNetConfig(cross_attention=True),
        audio=AudioConfig(kind="wav2vec2", window=2, projection=ProjectionConfig(32, 512, 768)),
        vae=VAEConfig(kind="kl", scaling_factor=0.18215, config=dict(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512],
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
            layers_per_block=2, norm_num_groups=32, sample_size=512)),
        scheduler=NoiseScheduleConfig.hallo().to_dict())


def _tiny() -> ModelConfig:
    return ModelConfig(
        name="tiny", resolution=128, clip_frames=8, motion_frames=4,
        unet=UNetConfig(block_out_channels=(32, 64, 64),
                        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                        layers_per_block=1, num_attention_heads=4, cross_attention_dim=64, norm_num_groups=8),
        temporal=TemporalConfig(num_attention_heads=4, max_frames=24, resolutions=(1, 2, 4), mid_block=True),
        speed=SpeedConfig(hidden_dim=32, tokens=2, dim=32),
        face_locator=FaceLocatorConfig(conditioning_channels=1, block_out_channels=(8, 16, 32, 32)),
        reference_net=ReferenceNetConfig(cross_attention=False),
        audio=AudioConfig(kind="wav2vec2", window=2, projection=ProjectionConfig(4, 64, 64), encoder=dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            conv_dim=[32] * 7, conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2],
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)),
        vae=VAEConfig(kind="kl", scaling_factor=1.0, config=dict(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[16, 32, 32, 32],
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
            layers_per_block=1, norm_num_groups=8, sample_size=128)),
        scheduler=NoiseScheduleConfig.hallo().to_dict())


PRESETS = {"tiny": _tiny, "sd15": _sd15}


def preset(name: str) -> ModelConfig:
    """The named preset's config (a fresh copy)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()

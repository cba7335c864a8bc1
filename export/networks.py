"""One description per exported network: names, dynamic axes, sample input, TensorRT profiles.

Each :class:`Network` wraps one component of an :class:`EmoteModel` in a module that takes and
returns plain positional tensors (lists such as the reference bank become one graph input per
entry), and declares every input and output once, as a :class:`TensorSpec` whose dimensions are
either fixed integers or named dynamic axes (``"batch"``, ``"frames"``, ...). Export, the ONNX
Runtime and TensorRT backends and the plan builder all read these declarations, so the names, the
dynamic axes and the optimisation profiles cannot drift apart.

The profiles are derived from :class:`StreamShapes`, the shapes a generation session really feeds
(see ``engine/stream/session.py``): clips of ``clip_frames`` frames (the first may be shorter, the
last of an utterance any length from 1), ``motion_frames`` motion frames through the ReferenceNet,
1 to 3 guidance branches in the backbone's batch, and one portrait size. The steady-state shapes
get static profiles (min = opt = max: a dynamic profile costs ~13% on SD1.5), and one dynamic
profile per network covers the rest (first and last clips).

Networks:
    audio        16 kHz PCM window -> per-frame audio tokens (wav2vec2 + projection), or log-mel
                 windows -> whisper level states (the frame gather runs outside the graph).
    reference    ReferenceNet at timestep 0: latents -> reference bank tokens + motion features.
    backbone     one denoising step with every condition as an explicit input.
    vae_decoder  scaled latents -> images in [-1, 1].
    vae_encoder  images -> scaled latents (the reference image).
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from engine.config import ModelConfig
from engine.models.audio import WHISPER_POSITIONS, AudioEncoder, frame_windows, whisper_frame_tokens, whisper_steps
from engine.models.backbone_inputs import (GRAPH_DTYPES, BackboneInputs, BackboneLayout, graph_dims, reference_shapes,
                                           with_graph_defaults)
from engine.models.model import EmoteModel
from engine.models.reference_net import ReferenceBank
from engine.options import GenerationOptions
from engine.sampling.guidance import GuidanceScales, branches_needed
from engine.timebase import frames_covering, samples_per_frame

Dim = int | str
Shape = tuple[int, ...]

NETWORK_NAMES = ("audio", "reference", "backbone", "vae_decoder", "vae_encoder")
PRECISIONS = ("fp32", "fp16")
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
EXPORT_BATCH = 2
"""Example size of every dynamic axis at export: never 1 (exporters fix a size-1 example dim)."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output.

    Attributes:
        name: the ONNX / TensorRT tensor name.
        dims: fixed sizes (int) or names of dynamic axes (str), in order.
        dtype: ``"float"`` (the graph's precision: float32 or float16), ``"float32"`` (always
            float32, e.g. timesteps) or ``"bool"``.
    """

    name: str
    dims: tuple[Dim, ...]
    dtype: str = "float"

    def shape(self, dims: dict[str, int]) -> Shape:
        """Concrete shape with the dynamic axes taken from ``dims``."""
        return tuple(d if isinstance(d, int) else dims[d] for d in self.dims)

    def torch_dtype(self, precision: str) -> torch.dtype:
        """The tensor's dtype in a graph of ``precision``."""
        if self.dtype == "bool":
            return torch.bool
        if self.dtype == "float32":
            return torch.float32
        return TORCH_DTYPES[precision]


@dataclass(frozen=True)
class Profile:
    """One TensorRT optimisation profile: per input name, the (min, opt, max) shapes.

    ``name`` says which feed it is for (``"b2-f12"``: 2 guidance branches, 12 frames; ``"dynamic"``).
    """

    name: str
    shapes: dict[str, tuple[Shape, Shape, Shape]]

    @property
    def static(self) -> bool:
        """Whether min = opt = max for every input (a per-bucket static engine)."""
        return all(lo == opt == hi for lo, opt, hi in self.shapes.values())

    def covers(self, feed: dict[str, Shape]) -> bool:
        """Whether every input shape of ``feed`` lies within [min, max] of this profile."""
        for name, (lo, _, hi) in self.shapes.items():
            shape = feed.get(name)
            if shape is None or len(shape) != len(lo):
                return False
            if any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
                return False
        return True

    def matches(self, feed: dict[str, Shape]) -> bool:
        """Whether ``feed`` is exactly this profile's opt shapes (the static bucket it was tuned for)."""
        return all(tuple(feed.get(name, ())) == opt for name, (_, opt, _) in self.shapes.items())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (lists), used in cache keys and metadata."""
        return {"name": self.name, "shapes": {k: [list(s) for s in v] for k, v in sorted(self.shapes.items())}}


def select_profile(profiles: list[Profile], feed: dict[str, Shape]) -> int:
    """Index of the profile to run ``feed`` with: its static bucket if there is one, else the first covering.

    Raises:
        ValueError: when no profile covers the feed (the plan was built for other shapes).
    """
    for i, profile in enumerate(profiles):
        if profile.static and profile.matches(feed):
            return i
    for i, profile in enumerate(profiles):
        if profile.covers(feed):
            return i
    shapes = ", ".join(f"{k} {list(v)}" for k, v in feed.items())
    ranges = "; ".join(f"{p.name}: " + ", ".join(f"{k} {list(lo)}..{list(hi)}" for k, (lo, _, hi) in p.shapes.items())
                       for p in profiles)
    raise ValueError(f"no optimisation profile covers the shapes {shapes} (profiles: {ranges}); "
                     "rebuild the engines for these shapes")


@dataclass(frozen=True)
class StreamShapes:
    """The shapes one generation session feeds the networks, for one model and one portrait size.

    Attributes:
        size: portrait side in pixels; ``latent`` = size / latent_downscale.
        frame_buckets: frame counts the backbone and the VAE decoder see in the steady state (static
            profiles): the first clip's and the others' for the clip schedule; the group's and the
            full window's for the rolling schedule.
        max_frames: most frames of one backbone call (the dynamic profiles cover 1..max_frames: the
            last clip of an utterance may be any length).
        motion_frames: n, the previous clip's frames read through the ReferenceNet.
        batches: guidance branch counts served (1: no CFG; 2 or 3 branches batched).
        audio_frames: most frames one audio-encoder call covers (left context + clip + 2 x look-ahead).
        samples_per_frame: the most audio samples of one frame (:func:`engine.timebase.samples_per_frame`).
    """

    size: int
    latent: int
    frame_buckets: tuple[int, ...]
    max_frames: int
    motion_frames: int
    batches: tuple[int, ...] = (1, 2, 3)
    audio_frames: int = 37
    samples_per_frame: int = 640

    @classmethod
    def for_model(cls, cfg: ModelConfig, size: int | None = None, clip_frames: int | None = None,
                  first_clip_frames: int | None = None, batches: tuple[int, ...] = (1, 2, 3),
                  audio_context_s: float = 1.0, rolling: tuple[int, int] | None = None) -> "StreamShapes":
        """The shapes a :class:`~engine.stream.session.Session` with these options feeds.

        Defaults follow the session's: ``size`` the model's resolution, clips of the model's
        ``clip_frames``, a first clip as long as the others, 1 s of left audio context.
        ``rolling`` = (steps, group_frames) for the rolling schedule (window of steps x group frames).
        """
        size = size or cfg.resolution
        multiple = cfg.latent_downscale * 2 ** (len(cfg.unet.block_out_channels) - 1)
        if size % multiple:
            raise ValueError(f"size must be a multiple of {multiple}, got {size}")
        if not batches or min(batches) < 1:
            raise ValueError(f"batches must be positive branch counts, got {batches}")
        if rolling is not None:
            steps, group = rolling
            buckets, clip = {group, steps * group}, group
        else:
            clip = clip_frames or cfg.clip_frames
            buckets = {first_clip_frames or clip, clip}
        context = round(audio_context_s * cfg.fps)
        return cls(size=size, latent=size // cfg.latent_downscale, frame_buckets=tuple(sorted(buckets)),
                   max_frames=max(buckets), motion_frames=cfg.motion_frames, batches=tuple(sorted(set(batches))),
                   audio_frames=context + max(clip, first_clip_frames or 0) + 2 * cfg.audio.window,
                   samples_per_frame=samples_per_frame(cfg.fps))

    @classmethod
    def for_options(cls, cfg: ModelConfig, options: GenerationOptions, size: int | None = None) -> "StreamShapes":
        """The shapes of a session run with ``options``:
        its clip sizes, audio context, schedule, and the guidance branch count of its scales (unset options:
        the model's sampling defaults, as the session takes them)."""
        options = options.with_model_defaults(cfg.sampling)
        branches = len(branches_needed(GuidanceScales(reference=options.cfg_ref, audio=options.cfg_audio)))
        rolling = (options.steps, options.group_frames) if options.schedule == "rolling" else None
        return cls.for_model(cfg, size=size, clip_frames=options.clip_frames,
                             first_clip_frames=options.first_clip_frames, batches=(branches,),
                             audio_context_s=options.audio_context_s, rolling=rolling)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        out = asdict(self)
        out["batches"] = list(self.batches)
        out["frame_buckets"] = list(self.frame_buckets)
        return out


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes and bytes), hex."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{list(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


class Network(ABC):
    """Description of one exported network of ``model`` at the shapes of ``shapes``.

    Subclasses declare :attr:`name`, the model attribute holding its weights (:attr:`component`),
    the graph's inputs and outputs, the exportable module, the dimension points of its profiles and
    how to make a sample input.
    """

    name: ClassVar[str]
    component: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]] = PRECISIONS

    def __init__(self, model: EmoteModel, shapes: StreamShapes):
        self.model, self.shapes, self.config = model, shapes, model.config
        self._digest: str | None = None

    @property
    @abstractmethod
    def inputs(self) -> list[TensorSpec]:
        """Graph inputs, in the exported module's positional order."""

    @property
    @abstractmethod
    def outputs(self) -> list[TensorSpec]:
        """Graph outputs, in order."""

    @abstractmethod
    def module(self) -> nn.Module:
        """A module whose ``forward`` takes the inputs positionally and returns the outputs (a tuple)."""

    @abstractmethod
    def dim_points(self) -> list[tuple[str, dict[str, int], dict[str, int], dict[str, int]]]:
        """Profiles as ``(name, min dims, opt dims, max dims)`` over the dynamic axes."""

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    @property
    def axes(self) -> list[str]:
        """Names of the dynamic axes, in first-appearance order."""
        seen: dict[str, None] = {}
        for spec in self.inputs + self.outputs:
            for d in spec.dims:
                if isinstance(d, str):
                    seen.setdefault(d)
        return list(seen)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``{tensor name: {axis index: axis name}}`` for the exporter."""
        return {s.name: {i: d for i, d in enumerate(s.dims) if isinstance(d, str)}
                for s in self.inputs + self.outputs if any(isinstance(d, str) for d in s.dims)}

    def graph_precision(self, precision: str) -> str:
        """The precision of the graph actually built for a requested ``precision``."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        return precision if precision in self.precisions else self.precisions[0]

    def signature(self) -> dict[str, list[Dim]]:
        """Every input and output name with its dims: what a graph of this network looks like."""
        return {s.name: list(s.dims) for s in self.inputs + self.outputs}

    def weights_digest(self) -> str:
        """SHA-256 of this network's weights (computed once per instance)."""
        if self._digest is None:
            self._digest = weights_digest(getattr(self.model, self.component))
        return self._digest

    def export_dims(self) -> dict[str, int]:
        """Example sizes of the dynamic axes used at export (never 1)."""
        return {axis: EXPORT_BATCH for axis in self.axes}

    def dims_of(self, feed: dict[str, Shape]) -> dict[str, int]:
        """Dynamic axis sizes read from input shapes; a clear error when a fixed dim or rank is wrong."""
        dims: dict[str, int] = {}
        for spec in self.inputs:
            if spec.name not in feed:
                raise ValueError(f"{self.name}: input {spec.name!r} is missing")
            shape = tuple(feed[spec.name])
            if len(shape) != len(spec.dims) or any(
                    (isinstance(d, int) and d != s) or (isinstance(d, str) and dims.setdefault(d, s) != s)
                    for d, s in zip(spec.dims, shape)):
                raise ValueError(f"{self.name}: input {spec.name} has shape {list(shape)}, "
                                 f"the graph takes {list(spec.dims)} (dims so far {dims})")
        return dims

    def input_shapes(self, dims: dict[str, int]) -> dict[str, Shape]:
        return {s.name: s.shape(dims) for s in self.inputs}

    def output_shapes(self, dims: dict[str, int]) -> dict[str, Shape]:
        return {s.name: s.shape(dims) for s in self.outputs}

    def profiles(self) -> list[Profile]:
        """TensorRT optimisation profiles, static buckets first, derived from :attr:`shapes`."""
        return [Profile(name, {s.name: (s.shape(lo), s.shape(opt), s.shape(hi)) for s in self.inputs})
                for name, lo, opt, hi in self.dim_points()]

    def sample_input(self, dims: dict[str, int] | None = None, precision: str = "fp32", seed: int = 0,
                     device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """Random inputs in the ranges the network sees, at ``dims`` (default: :meth:`export_dims`)."""
        dims = dims or self.export_dims()
        generator = torch.Generator().manual_seed(seed)
        out = []
        for spec in self.inputs:
            shape = spec.shape(dims)
            value = self._sample_value(spec, shape, generator)
            out.append(value.to(device=device, dtype=spec.torch_dtype(precision)))
        return tuple(out)

    def _sample_value(self, spec: TensorSpec, shape: Shape, generator: torch.Generator) -> torch.Tensor:
        if spec.dtype == "bool":
            return torch.arange(math.prod(shape)).reshape(shape) % 2 == 0
        return torch.randn(shape, generator=generator)

    def cast(self, tensors: dict[str, torch.Tensor], precision: str) -> dict[str, torch.Tensor]:
        """Inputs by name -> contiguous tensors in the graph's dtypes (shapes checked by :meth:`dims_of`)."""
        self.dims_of({k: tuple(v.shape) for k, v in tensors.items()})
        dtypes = {s.name: s.torch_dtype(self.graph_precision(precision)) for s in self.inputs}
        return {name: tensors[name].to(dtypes[name]).contiguous() for name in self.input_names}

    def describe(self) -> str:
        """One line per input/output: name, dims, dtype."""
        lines = [f"{self.name} ({self.component})"]
        lines += [f"  in  {s.name} {list(s.dims)} {s.dtype}" for s in self.inputs]
        lines += [f"  out {s.name} {list(s.dims)} {s.dtype}" for s in self.outputs]
        return "\n".join(lines)


def linear_resample_matrix(source: int, target: int) -> torch.Tensor:
    """``[source, target]`` weights of linear interpolation with aligned corners.

    ``x @ W`` equals ``F.interpolate(x, size=target, mode="linear", align_corners=True)`` for
    ``x`` of length ``source`` on its last axis; the exported audio graph takes this matrix as an
    input so that the output frame count can change from call to call.
    """
    scale = (source - 1) / (target - 1) if target > 1 else 0.0
    position = torch.arange(target, dtype=torch.float64) * scale
    low = position.floor().long().clamp(max=source - 1)
    high = (low + 1).clamp(max=source - 1)
    frac = position - low
    weights = torch.zeros(source, target, dtype=torch.float64)
    columns = torch.arange(target)
    weights.index_put_((low, columns), 1 - frac, accumulate=True)
    weights.index_put_((high, columns), frac, accumulate=True)
    return weights.float()


@dataclass
class AudioFeed:
    """Inputs of one audio graph call plus what turns its outputs into tokens.

    Attributes:
        inputs: tensors by graph input name.
        frames: video frames asked for.
        steps: whisper only: 50 Hz steps that hold audio.
    """

    inputs: dict[str, torch.Tensor]
    frames: int
    steps: int = 0


class _Wav2Vec2Graph(nn.Module):
    """``pcm`` ``[samples]``, ``resample`` ``[conv_frames, frames]`` -> audio tokens ``[frames, T, D]``."""

    def __init__(self, encoder: AudioEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, pcm: torch.Tensor, resample: torch.Tensor) -> torch.Tensor:
        conv = self.encoder.feature_extractor(pcm[None])
        levels = self.encoder.wav2vec2_levels(torch.matmul(conv, resample))
        return self.encoder.audioproj(frame_windows(levels, self.encoder.config.window))


class _WhisperGraph(nn.Module):
    """``mel`` ``[windows, n_mels, 3000]`` -> level states ``[windows, 1500, levels, d_model]``."""

    def __init__(self, encoder: AudioEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.encoder.whisper_mel_levels(mel)


class AudioNetwork(Network):
    """Audio encoder (+ projection): always float32, as the torch backend runs it.

    wav2vec2: inputs ``pcm`` ``[samples]`` (normalised and padded by :meth:`prepare`) and
    ``resample`` ``[conv_frames, frames]`` (linear interpolation of the 50 Hz conv features to the
    frame rate); output ``audio_tokens`` ``[frames, T, D]``.
    whisper: input ``mel`` ``[windows, n_mels, 3000]``; output ``levels``
    ``[windows, 1500, levels, d_model]``; :meth:`finish` gathers each frame's tokens.
    """

    name = "audio"
    component = "audio_encoder"
    precisions = ("fp32",)

    def __init__(self, model: EmoteModel, shapes: StreamShapes):
        super().__init__(model, shapes)
        self.encoder: AudioEncoder = model.audio_encoder
        self.kind = self.encoder.config.kind

    @property
    def inputs(self) -> list[TensorSpec]:
        if self.kind == "wav2vec2":
            return [TensorSpec("pcm", ("samples",), "float32"),
                    TensorSpec("resample", ("conv_frames", "frames"), "float32")]
        return [TensorSpec("mel", ("windows", self.encoder.encoder_config.num_mel_bins, 2 * WHISPER_POSITIONS),
                           "float32")]

    @property
    def outputs(self) -> list[TensorSpec]:
        if self.kind == "wav2vec2":
            return [TensorSpec("audio_tokens", ("frames", self.encoder.output_tokens, self.encoder.output_dim),
                               "float32")]
        levels = self.encoder.level_count
        return [TensorSpec("levels", ("windows", WHISPER_POSITIONS, levels, self.encoder.encoder_config.d_model),
                           "float32")]

    def module(self) -> nn.Module:
        return _Wav2Vec2Graph(self.encoder) if self.kind == "wav2vec2" else _WhisperGraph(self.encoder)

    def _wav2vec2_dims(self, frames: int, samples: int) -> dict[str, int]:
        return {"frames": frames, "samples": samples, "conv_frames": self.encoder.conv_frames(samples)}

    def dim_points(self) -> list[tuple[str, dict[str, int], dict[str, int], dict[str, int]]]:
        s = self.shapes
        if self.kind == "wav2vec2":
            lo = self._wav2vec2_dims(1, self.encoder.min_samples)
            hi = self._wav2vec2_dims(s.audio_frames, s.audio_frames * s.samples_per_frame)
            return [("dynamic", lo, hi, hi)]
        windows = math.ceil(s.audio_frames * s.samples_per_frame / (2 * WHISPER_POSITIONS * 160))
        return [("dynamic", {"windows": 1}, {"windows": 1}, {"windows": windows})]

    def export_dims(self) -> dict[str, int]:
        if self.kind == "wav2vec2":
            return self._wav2vec2_dims(2 * EXPORT_BATCH + 1, (2 * EXPORT_BATCH + 1) * self.shapes.samples_per_frame)
        return {"windows": EXPORT_BATCH}

    def sample_input(self, dims: dict[str, int] | None = None, precision: str = "fp32", seed: int = 0,
                     device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """Prepared inputs of random speech-like noise covering ``dims["frames"]`` frames (wav2vec2)."""
        dims = dims or self.export_dims()
        generator = torch.Generator().manual_seed(seed)
        if self.kind == "wav2vec2":
            pcm = 0.1 * torch.randn(dims["samples"], generator=generator)
            frames = max(dims["frames"], frames_covering(dims["samples"], self.config.fps))
            feed = self.prepare(pcm, frames)
            return tuple(feed.inputs[name].to(device) for name in self.input_names)
        pcm = 0.1 * torch.randn(dims["windows"] * 2 * WHISPER_POSITIONS * 160, generator=generator)
        return (self.encoder.whisper_mel(pcm).to(device),)

    def prepare(self, pcm: torch.Tensor, num_frames: int) -> AudioFeed:
        """PCM ``[samples]`` (16 kHz) covering ``num_frames`` frames -> the graph's inputs (float32, CPU or
        the encoder's device), with the same checks and pre-processing as the torch encoder."""
        if self.kind == "wav2vec2":
            x = self.encoder.wav2vec2_input(pcm.float(), num_frames).float()
            conv = self.encoder.conv_frames(x.numel())
            return AudioFeed({"pcm": x, "resample": linear_resample_matrix(conv, num_frames).to(x.device)}, num_frames)
        if num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}")
        pcm = self.encoder._check_pcm(pcm, None)
        return AudioFeed({"mel": self.encoder.whisper_mel(pcm)}, num_frames, whisper_steps(pcm.numel()))

    def finish(self, outputs: dict[str, torch.Tensor], feed: AudioFeed) -> torch.Tensor:
        """Graph outputs -> audio tokens ``[frames, T, D]``."""
        if self.kind == "wav2vec2":
            return outputs["audio_tokens"]
        levels = outputs["levels"].flatten(0, 1)[: feed.steps][:, self.encoder.level_index]
        return whisper_frame_tokens(levels, feed.frames, self.encoder.fps, self.encoder.config.window)


class _ReferenceGraph(nn.Module):
    """``latents`` ``[N, C, h, w]`` (and, with a face-embedding context, ``context`` ``[N, T_i, D]``) ->
    (bank tokens ``[N, L_i, C_i]``..., motion features ``[N, C_j, h_j, w_j]``...)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, latents: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        bank = self.net(latents, context=context)
        return (*bank.tokens, *bank.features)


class ReferenceNetwork(Network):
    """ReferenceNet at timestep 0: ``latents`` ``[images, C, h, w]`` -> ``reference_bank_i`` ``[images, L_i, C_i]``
    (one per transformer block) and ``features_j`` ``[images, C_j, h_j, w_j]`` (one per motion-module location).

    ``images`` is 1 for the reference image and up to n for the motion frames of a clip. A model with
    ``image_proj`` (Hallo) also takes ``context`` ``[images, T_i, D]``: the face-embedding tokens its
    ``attn2`` reads (:meth:`feed` fills the zero embedding's when none is given).
    """

    name = "reference"
    component = "reference_net"

    def __init__(self, model: EmoteModel, shapes: StreamShapes):
        super().__init__(model, shapes)
        self.bank, self.features = reference_shapes(self.config, shapes.latent)
        self.context = hasattr(model.reference_net, "default_context")

    @property
    def inputs(self) -> list[TensorSpec]:
        latent = self.shapes.latent
        specs = [TensorSpec("latents", ("images", self.config.unet.in_channels, latent, latent))]
        if self.context:
            tokens = self.model.reference_net.default_context
            specs.append(TensorSpec("context", ("images", *tokens.shape)))
        return specs

    def feed(self, latents: torch.Tensor, context: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The arguments of :meth:`engine.backends.base.Backend.reference` -> graph inputs by name.

        ``context`` ``[1 or images, T_i, D]`` is expanded to every image; None gives the model's default.
        """
        named = {"latents": latents}
        if self.context:
            tokens = context if context is not None else self.model.reference_net.default_context[None]
            named["context"] = tokens.to(latents.device).expand(latents.shape[0], *tokens.shape[1:])
        elif context is not None:
            raise ValueError("this ReferenceNet reads no face-embedding context")
        return named

    @property
    def outputs(self) -> list[TensorSpec]:
        return ([TensorSpec(f"reference_bank_{i}", ("images", *s)) for i, s in enumerate(self.bank)]
                + [TensorSpec(f"features_{j}", ("images", *s)) for j, s in enumerate(self.features)])

    def module(self) -> nn.Module:
        return _ReferenceGraph(self.model.reference_net)

    def bank_of(self, outputs: dict[str, torch.Tensor]) -> ReferenceBank:
        """Graph outputs by name -> the :class:`ReferenceBank` the backend returns."""
        return ReferenceBank(tokens=[outputs[f"reference_bank_{i}"] for i in range(len(self.bank))],
                             features=[outputs[f"features_{j}"] for j in range(len(self.features))])

    def dim_points(self) -> list[tuple[str, dict[str, int], dict[str, int], dict[str, int]]]:
        n = self.shapes.motion_frames
        return [(f"i{n}", {"images": n}, {"images": n}, {"images": n}),
                ("dynamic", {"images": 1}, {"images": 1}, {"images": n})]


class _BackboneGraph(nn.Module):
    """The backbone on positional tensors: the flat form of its inputs in ``layout``."""

    def __init__(self, backbone: nn.Module, layout: BackboneLayout):
        super().__init__()
        self.backbone, self.layout = backbone, layout

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.backbone(**self.layout.unflatten(inputs).kwargs())


class BackboneNetwork(Network):
    """One denoising step; every condition is an explicit graph input.

    Inputs: the flat form (:class:`~engine.models.backbone_inputs.BackboneLayout`) of the inputs the model
    takes, with the dims of :func:`~engine.models.backbone_inputs.graph_dims`: ``sample``
    ``[batch, C, frames, h, w]``, ``timestep`` ``[batch, frames]`` float32 (per frame), ``audio_tokens``
    ``[batch, frames, T, D]``, ``reference_bank_i`` ``[batch, L_i, C_i]`` per transformer block,
    ``motion_features_j`` ``[batch, n, C_j, h_j, w_j]`` per motion-module location whose module runs,
    ``face_features`` ``[batch, 1, C', h, w]`` (one mask for the clip), ``speed_tokens``
    ``[batch, frames, S, D_s]`` (only with speed layers), Hallo's ``image_tokens`` ``[batch, T_i, D]`` and
    ``region_masks_l`` ``[batch, 3, h_l * w_l]`` (only for models that have them), ``reference_keep``
    ``[batch]`` bool.
    Output: ``model_output`` ``[batch, C_out, frames, h, w]``. ``batch`` is the guidance branch count.
    """

    name = "backbone"
    component = "backbone"

    def __init__(self, model: EmoteModel, shapes: StreamShapes):
        super().__init__(model, shapes)
        self.dims = graph_dims(model, shapes.latent, shapes.motion_frames)
        self.layout = BackboneLayout.of(self.dims)

    def weights_digest(self) -> str:
        """SHA-256 of the backbone's weights and, for Hallo's models, of its pose / face / lip weights:
        the graph holds them as constants, so a graph built with others is stale."""
        digest = super().weights_digest()
        if not self.config.audio_modules.enabled:
            return digest
        weights = ",".join(repr(float(w)) for w in self.config.audio_modules.region_weights)
        return hashlib.sha256(f"{digest}|region_weights={weights}".encode()).hexdigest()

    @property
    def inputs(self) -> list[TensorSpec]:
        specs = []
        for slot in self.layout.slots:
            dims = self.dims[slot.name]
            entries = [dims] if slot.length is None else [dims[i] for i in slot.held]
            specs += [TensorSpec(name, tuple(d), GRAPH_DTYPES[slot.name]) for name, d in zip(slot.names(), entries)]
        return specs

    @property
    def outputs(self) -> list[TensorSpec]:
        lat = self.shapes.latent
        return [TensorSpec("model_output", ("batch", self.config.unet.out_channels, "frames", lat, lat))]

    def module(self) -> nn.Module:
        return _BackboneGraph(self.model.backbone, self.layout)

    def feed(self, inputs: BackboneInputs) -> dict[str, torch.Tensor]:
        """A backbone call -> graph inputs by name.

        A clip-wide timestep (``[]`` or ``[B]``) is expanded per frame; a per-frame face feature map
        (``[B, F, ...]``) is refused (the graph takes one map per clip). Inputs the graph takes but the call
        left None are filled as the torch backbone reads them
        (:func:`~engine.models.backbone_inputs.with_graph_defaults`); an input the graph does not take is refused.
        """
        if inputs.face_features.shape[1] != 1:
            raise ValueError(f"the exported backbone takes one face map per clip ([B, 1, C, h, w]), "
                             f"got {list(inputs.face_features.shape)}")
        held = {slot.name for slot in self.layout.slots}
        extra = [name for name, value in inputs.kwargs().items() if value is not None and name not in held]
        if extra:
            raise ValueError(f"this backbone takes no {', '.join(extra)}")
        return self.layout.named(with_graph_defaults(inputs, self.layout, self.model))

    def export_dims(self) -> dict[str, int]:
        return {"batch": EXPORT_BATCH, "frames": EXPORT_BATCH + 1}

    def dim_points(self) -> list[tuple[str, dict[str, int], dict[str, int], dict[str, int]]]:
        s = self.shapes
        points = [(f"b{b}-f{f}", {"batch": b, "frames": f}, {"batch": b, "frames": f}, {"batch": b, "frames": f})
                  for b in s.batches for f in s.frame_buckets]
        most = max(s.batches)
        points.append(("dynamic", {"batch": 1, "frames": 1}, {"batch": most, "frames": s.max_frames},
                       {"batch": most, "frames": s.max_frames}))
        return points

    def _sample_value(self, spec: TensorSpec, shape: Shape, generator: torch.Generator) -> torch.Tensor:
        if spec.name == "timestep":
            return torch.randint(0, 1000, shape, generator=generator).float()
        if spec.name.startswith("region_masks_"):
            return torch.rand(shape, generator=generator)
        return super()._sample_value(spec, shape, generator)


class _DecoderGraph(nn.Module):
    """Scaled latents ``[N, C, h, w]`` -> images ``[N, 3, H, W]`` in [-1, 1]."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents)


class _EncoderGraph(nn.Module):
    """Images ``[N, 3, H, W]`` in [-1, 1] -> scaled latents ``[N, C, h, w]`` (the posterior mean)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images)


class VAEDecoderNetwork(Network):
    """Scaled latents ``[frames, C, h, w]`` -> images ``[frames, 3, H, W]`` in [-1, 1] (one clip at a time)."""

    name = "vae_decoder"
    component = "vae"

    @property
    def inputs(self) -> list[TensorSpec]:
        lat = self.shapes.latent
        return [TensorSpec("latents", ("frames", self.config.unet.in_channels, lat, lat))]

    @property
    def outputs(self) -> list[TensorSpec]:
        size = self.shapes.size
        return [TensorSpec("images", ("frames", 3, size, size))]

    def module(self) -> nn.Module:
        return _DecoderGraph(self.model.vae)

    def dim_points(self) -> list[tuple[str, dict[str, int], dict[str, int], dict[str, int]]]:
        s = self.shapes
        points = [(f"f{f}", {"frames": f}, {"frames": f}, {"frames": f}) for f in s.frame_buckets]
        points.append(("dynamic", {"frames": 1}, {"frames": s.max_frames}, {"frames": s.max_frames}))
        return points


class VAEEncoderNetwork(Network):
    """Images ``[images, 3, H, W]`` in [-1, 1] -> scaled latents ``[images, C, h, w]`` (the reference image)."""

    name = "vae_encoder"
    component = "vae"

    @property
    def inputs(self) -> list[TensorSpec]:
        size = self.shapes.size
        return [TensorSpec("images", ("images", 3, size, size))]

    @property
    def outputs(self) -> list[TensorSpec]:
        lat = self.shapes.latent
        return [TensorSpec("latents", ("images", self.config.unet.in_channels, lat, lat))]

    def module(self) -> nn.Module:
        return _EncoderGraph(self.model.vae)

    def dim_points(self) -> list[tuple[str, dict[str, int], dict[str, int], dict[str, int]]]:
        return [("i1", {"images": 1}, {"images": 1}, {"images": 1})]

    def _sample_value(self, spec: TensorSpec, shape: Shape, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(shape, generator=generator) * 2 - 1


NETWORKS: dict[str, Callable[[EmoteModel, StreamShapes], Network]] = {
    "audio": AudioNetwork, "reference": ReferenceNetwork, "backbone": BackboneNetwork,
    "vae_decoder": VAEDecoderNetwork, "vae_encoder": VAEEncoderNetwork,
}


def make_network(name: str, model: EmoteModel, shapes: StreamShapes) -> Network:
    """The description of network ``name`` (one of :data:`NETWORK_NAMES`)."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; known: {', '.join(NETWORK_NAMES)}")
    return NETWORKS[name](model, shapes)

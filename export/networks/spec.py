"""The spec machinery every exported network is declared with: names, dynamic axes, sample input, TensorRT profiles.

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
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from engine.config import ModelConfig
from engine.models.model import EmoteModel
from engine.options import GenerationOptions
from engine.sampling.guidance import GuidanceScales, branches_needed
from engine.timebase import samples_per_frame

Dim = int | str
Shape = tuple[int, ...]

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

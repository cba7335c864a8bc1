"""A backbone call's inputs as one typed object, and their flat form for graphs.

:class:`BackboneConditions` holds what a clip's producer computes (audio tokens, reference bank, motion
features, face features, speed tokens, Hallo's image tokens and region masks); :class:`BackboneInputs` adds
what one step adds: the noisy latents, the timesteps and which rows keep the reference. Every backend, the
batch scheduler, the CUDA-graph capture, export and the bench recorder move a call as one
:class:`BackboneInputs`, and :class:`BackboneLayout` is its only flat form: one tensor per graph input,
a list input (reference bank, motion features, region masks) one tensor per entry named ``name_i``.

A new input is a field here (with its graph dims in :func:`graph_dims` and, when None is allowed, its graph
default in :func:`with_graph_defaults`), a keyword of :meth:`engine.models.backbone.Backbone.forward`, and
the value its producer sets on the clip's conditions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from engine.config import ModelConfig
from engine.models.reference_net import ReferenceNet

if TYPE_CHECKING:
    from torch import nn

    from engine.models.model import EmoteModel

Dim = int | str
Dims = tuple[Dim, ...]


def _input(*, many: bool = False, dtype: str = "float", guidance: str | None = None, per_frame: bool = False,
           **kwargs: Any) -> Any:
    """A field of the inputs: ``many``: a list (one graph tensor per entry); ``dtype``: ``"float"`` (the graph's
    precision), ``"float32"`` or ``"bool"``; ``guidance``: the condition a guidance branch without it zeroes
    (``"audio"`` or ``"reference"``; None: the same in every branch); ``per_frame``: one entry per frame on axis 1
    (size 1 there: the same for every frame)."""
    return field(metadata={"many": many, "dtype": dtype, "guidance": guidance, "per_frame": per_frame}, **kwargs)


@dataclass(kw_only=True)
class BackboneConditions:
    """What the backbone reads besides the step's latents and timesteps (``B`` clips, ``F`` frames).

    Attributes (in the order of the flat form, after the step's ``sample`` and ``timestep``):
        audio_tokens: ``[B, F, T, D]``.
        face_features: ``[B, 1 or F, C', h, w]`` face-locator output (``1``: one mask for the clip).
        speed_tokens: ``[B, F, S, D_s]``, or None without speed layers.
        reference_keep: ``[B]`` bool, False drops the reference for that row; None keeps it everywhere.
        reference_bank: per transformer block ``[B, L, C]`` (per frame with Hallo's reader: ``[B * F, L, C]``).
        motion_features: per motion-module location ``[B, n, C, h, w]`` (None entries: modules that do not run).
        image_tokens: Hallo only: ``[B, T_i, D]`` face-embedding tokens, or None (a zero embedding's).
        region_masks: Hallo only: per resolution level ``[B, 3, h_l * w_l]``, or None (weight 1 everywhere).
    """

    audio_tokens: torch.Tensor = _input(guidance="audio", per_frame=True)
    face_features: torch.Tensor = _input(guidance="reference", per_frame=True)
    speed_tokens: torch.Tensor | None = _input(per_frame=True)
    reference_keep: torch.Tensor | None = _input(dtype="bool", default=None)
    reference_bank: list[torch.Tensor] = _input(many=True)
    motion_features: list[torch.Tensor] = _input(many=True)
    image_tokens: torch.Tensor | None = _input(default=None)
    region_masks: list[torch.Tensor] | None = _input(many=True, default=None)

    def condition_fields(self) -> dict[str, Any]:
        """The :class:`BackboneConditions` fields of this object by name (those of a subclass left out)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(BackboneConditions)}


@dataclass(kw_only=True)
class BackboneInputs(BackboneConditions):
    """One backbone call: :class:`BackboneConditions` plus ``sample`` ``[B, C, F, h, w]`` (noisy latents) and
    ``timestep`` ``[]``, ``[B]`` or ``[B, F]`` (float32)."""

    sample: torch.Tensor = _input()
    timestep: torch.Tensor = _input(dtype="float32")

    @classmethod
    def at(cls, sample: torch.Tensor, timestep: torch.Tensor, conditions: BackboneConditions) -> BackboneInputs:
        """The call on ``sample`` at ``timestep`` with ``conditions``."""
        return cls(sample=sample, timestep=timestep, **conditions.condition_fields())

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`engine.models.backbone.Backbone.forward`."""
        return {name: getattr(self, name) for name in FIELDS}

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> BackboneInputs:
        """``fn`` applied to every tensor (list entries included; None stays None)."""
        def apply(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return fn(value)
            if isinstance(value, list):
                return [apply(v) for v in value]
            return value
        return BackboneInputs(**{name: apply(value) for name, value in self.kwargs().items()})

    def signature(self) -> tuple:
        """What two calls must share to be stacked into one: per input, its shapes and dtypes (None kept apart)."""
        def of(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return tuple(value.shape), value.dtype
            if isinstance(value, list):
                return tuple(of(v) for v in value)
            return value
        return tuple((name, of(value)) for name, value in self.kwargs().items())

    @classmethod
    def cat(cls, calls: Sequence[BackboneInputs]) -> BackboneInputs:
        """Calls of one :meth:`signature` stacked along the batch (list inputs entry by entry)."""
        def join(values: list[Any]) -> Any:
            if values[0] is None:
                return None
            if isinstance(values[0], torch.Tensor):
                return torch.cat(values)
            return [join(list(parts)) for parts in zip(*values)]
        return cls(**{name: join([getattr(c, name) for c in calls]) for name in FIELDS})


def _flat_order() -> tuple[dataclasses.Field, ...]:
    """The step's own inputs first, then the conditions, each in declaration order."""
    own = [f for f in dataclasses.fields(BackboneInputs) if f.name not in CONDITION_FIELDS]
    return (*own, *dataclasses.fields(BackboneConditions))


CONDITION_FIELDS = tuple(f.name for f in dataclasses.fields(BackboneConditions))
FLAT_ORDER = _flat_order()
"""The inputs in the order of their flat form."""
FIELDS = tuple(f.name for f in FLAT_ORDER)
GRAPH_DTYPES = {f.name: f.metadata["dtype"] for f in FLAT_ORDER}
"""Per input its graph dtype: ``"float"`` (the graph's precision), ``"float32"`` or ``"bool"``."""
GUIDANCE = {f.name: f.metadata["guidance"] for f in FLAT_ORDER if f.metadata["guidance"]}
"""The inputs a guidance branch zeroes when it drops their condition (``"audio"`` or ``"reference"``)."""
PER_FRAME = tuple(f.name for f in dataclasses.fields(BackboneConditions) if f.metadata["per_frame"])
"""The conditions with one entry per frame on axis 1 (a window of frames gathers them)."""


@dataclass(frozen=True)
class Slot:
    """One input of a flat form: ``name``; for a list input its ``length`` and the entries ``held`` as tensors
    (the others are None when unflattened); ``length`` None for a single tensor."""

    name: str
    length: int | None = None
    held: tuple[int, ...] = ()

    def names(self) -> list[str]:
        """Its flat names: ``name``, or ``name_i`` per held entry."""
        return [self.name] if self.length is None else [f"{self.name}_{i}" for i in self.held]


@dataclass(frozen=True)
class BackboneLayout:
    """The flat form of calls of one structure: which inputs are present, in :data:`FLAT_ORDER`, and which entries
    of each list. Hashable, so it can key a cache or a recorded call."""

    slots: tuple[Slot, ...]

    @classmethod
    def of(cls, inputs: BackboneInputs | dict[str, Dims | list[Dims | None] | None]) -> BackboneLayout:
        """The layout holding every tensor of ``inputs`` (inputs and list entries that are None left out), or that
        of a graph whose inputs have these dims (:func:`graph_dims`)."""
        values = inputs.kwargs() if isinstance(inputs, BackboneInputs) else inputs
        slots = []
        for name in FIELDS:
            value = values.get(name)
            if isinstance(value, list):
                slots.append(Slot(name, len(value), tuple(i for i, v in enumerate(value) if v is not None)))
            elif value is not None:
                slots.append(Slot(name))
        return cls(tuple(slots))

    def names(self) -> list[str]:
        """The flat names, in order."""
        return [name for slot in self.slots for name in slot.names()]

    def flatten(self, inputs: BackboneInputs) -> list[torch.Tensor]:
        """The tensors of ``inputs`` in :meth:`names` order. Raises ValueError when one is missing."""
        out = []
        for slot in self.slots:
            value = getattr(inputs, slot.name)
            if slot.length is None:
                value = [value]
            elif value is None or len(value) != slot.length:
                raise ValueError(f"{slot.name}: expected {slot.length} tensors, got "
                                 f"{'None' if value is None else len(value)}")
            entries = value if slot.length is None else [value[i] for i in slot.held]
            if any(v is None for v in entries):
                raise ValueError(f"the backbone call has no {slot.name} (required here)")
            out += entries
        return out

    def named(self, inputs: BackboneInputs) -> dict[str, torch.Tensor]:
        """:meth:`flatten` by flat name."""
        return dict(zip(self.names(), self.flatten(inputs)))

    def unflatten(self, tensors: Sequence[torch.Tensor]) -> BackboneInputs:
        """The inverse of :meth:`flatten` (inputs not in the layout are None)."""
        values: dict[str, Any] = {name: None for name in FIELDS}
        rest = list(tensors)
        for slot in self.slots:
            if slot.length is None:
                values[slot.name] = rest.pop(0)
            else:
                entries: list[Any] = [None] * slot.length
                for i in slot.held:
                    entries[i] = rest.pop(0)
                values[slot.name] = entries
        if rest:
            raise ValueError(f"{len(rest)} tensors more than the layout holds")
        return BackboneInputs(**values)


def reference_shapes(cfg: ModelConfig, latent: int) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Per-image shapes of the ReferenceNet outputs at a latent side of ``latent``.

    Computed on the meta device (no memory, no arithmetic). Returns the bank token shapes
    ``[(L_i, C_i)]`` per transformer block and the feature shapes ``[(C_j, h_j, w_j)]`` per
    motion-module location.
    """
    with torch.device("meta"):
        net = ReferenceNet(cfg)
        bank = net(torch.empty(1, cfg.unet.in_channels, latent, latent))
    return [tuple(t.shape[1:]) for t in bank.tokens], [tuple(f.shape[1:]) for f in bank.features]


def mask_positions(cfg: ModelConfig, latent: int) -> list[int]:
    """Positions ``h_l * w_l`` per resolution level of a ``latent`` x ``latent`` latent: sides halved per
    level, rounded up (:func:`engine.models.hallo_audio.region_mask_levels`)."""
    sides = [latent]
    for _ in cfg.unet.block_out_channels[1:]:
        sides.append(-(-sides[-1] // 2))
    return [side * side for side in sides]


def running_motion_locations(backbone: nn.Module) -> list[int]:
    """Motion-module locations whose module runs (Hallo's ``skip_plain_blocks`` skips some): their
    features are graph inputs; the others' would be dropped from a traced graph."""
    blocks = [*backbone.down_blocks, backbone.mid_block, *backbone.up_blocks]
    return sorted(j for block in blocks if hasattr(block, "motion_modules") and block.run_motion_modules
                  for j in block.motion_indices)


def graph_dims(model: EmoteModel, latent: int, motion_frames: int) -> dict[str, Dims | list[Dims | None] | None]:
    """Per input of ``model``'s backbone graph at a ``latent`` x ``latent`` latent its dims: fixed sizes and the
    dynamic axes ``"batch"`` (guidance branches) and ``"frames"``; a list input per entry (None: an entry that
    is not a graph input); None: an input this model does not take.

    The graph takes one face map per clip, one timestep per frame and every motion-module location that runs.
    """
    cfg = model.config
    bank, features = reference_shapes(cfg, latent)
    used = running_motion_locations(model.backbone)
    audio = model.audio_encoder
    face_channels = cfg.unet.block_out_channels[0] if cfg.face_locator.target == "conv_in" else cfg.unet.in_channels
    speed = hasattr(model, "speed_encoder")
    return {
        "sample": ("batch", cfg.unet.in_channels, "frames", latent, latent),
        "timestep": ("batch", "frames"),
        "audio_tokens": ("batch", "frames", audio.output_tokens, audio.output_dim),
        "reference_bank": [("batch", *shape) for shape in bank],
        "motion_features": [("batch", motion_frames, *shape) if j in used else None
                            for j, shape in enumerate(features)],
        "face_features": ("batch", 1, face_channels, latent, latent),
        "speed_tokens": ("batch", "frames", cfg.speed.tokens, cfg.speed.dim) if speed else None,
        "image_tokens": (("batch", cfg.image_proj.tokens, cfg.unet.cross_attention_dim) if cfg.image_proj.enabled
                         else None),
        "region_masks": ([("batch", 3, n) for n in mask_positions(cfg, latent)] if cfg.audio_modules.enabled
                         else None),
        "reference_keep": ("batch",),
    }


def with_graph_defaults(inputs: BackboneInputs, layout: BackboneLayout, model: EmoteModel) -> BackboneInputs:
    """``inputs`` with every input ``layout`` holds but the call left None filled as the torch backbone reads
    None, and expanded to the call's batch: a per-frame timestep, the reference kept in every row, the zero
    embedding's image tokens, region masks of ones."""
    sample = inputs.sample
    b, frames = sample.shape[0], sample.shape[2]
    present = {slot.name: slot for slot in layout.slots}
    t = torch.as_tensor(inputs.timestep, device=sample.device)
    keep = inputs.reference_keep
    keep = torch.ones(b, dtype=torch.bool, device=sample.device) if keep is None else keep
    values: dict[str, Any] = {"timestep": t.reshape(-1, 1).expand(b, frames) if t.dim() < 2 else t,
                              "reference_keep": torch.as_tensor(keep, device=sample.device).reshape(b)}
    if "image_tokens" in present:
        tokens = inputs.image_tokens
        tokens = tokens if tokens is not None else model.backbone.default_image_tokens[None]
        values["image_tokens"] = tokens.to(sample.device).expand(b, *tokens.shape[1:])
    if "region_masks" in present:
        masks = inputs.region_masks
        if masks is None:
            masks = [torch.ones(1, 3, n, device=sample.device) for n in mask_positions(model.config, sample.shape[-1])]
        values["region_masks"] = [m.to(sample.device).expand(b, *m.shape[1:]) for m in masks]
    return dataclasses.replace(inputs, **values)

"""The backbone network: one denoising step with every condition as an explicit graph input. The network
itself: :mod:`engine.models.backbone`; its inputs and their flat form: :mod:`engine.models.backbone_inputs`."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from engine.models.backbone_inputs import GRAPH_DTYPES, BackboneInputs, BackboneLayout, graph_dims, with_graph_defaults
from engine.models.model import EmoteModel
from export.networks.spec import EXPORT_BATCH, Network, Shape, StreamShapes, TensorSpec


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

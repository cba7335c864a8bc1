"""The reference network: ReferenceNet at timestep 0, latents -> reference bank tokens + motion features. The
network itself: :mod:`engine.models.reference_net`."""

from __future__ import annotations

import torch
from torch import nn

from engine.models.backbone_inputs import reference_shapes
from engine.models.model import EmoteModel
from engine.models.reference_net import ReferenceBank
from export.networks.spec import Network, StreamShapes, TensorSpec


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

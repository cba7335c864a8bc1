"""The backends that run exported networks (ONNX Runtime graphs, TensorRT plans): one set of network methods over
a single run method.

A graph backend describes each network at a portrait size with :class:`export.networks.spec.Network` (names, dims,
how a call becomes named graph inputs and the outputs a result) and runs it by name with :meth:`run_graph`; the
audio encoder, the ReferenceNet, the backbone and the VAE are the same five methods for every such backend. The
networks run once per session (face locator, speed encoder, image projection) stay in torch.
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from engine.backends.base import Backend, TorchPerSessionNetworks
from engine.models.backbone_inputs import BackboneInputs
from engine.models.model import EmoteModel
from engine.models.reference_net import ReferenceBank
from engine.options import GenerationOptions
from export.networks import make_network
from export.networks.spec import Network, StreamShapes


class GraphBackend(TorchPerSessionNetworks, Backend):
    """Runs the exported networks of :attr:`model` through :meth:`run_graph`; outputs come back in
    :attr:`dtype` on :attr:`device`.

    Args:
        model: the networks (their weights are exported; the per-session networks run in float32 on ``device``).
        device: where inputs and outputs live.
        dtype: the outputs' dtype.
        options: the session's :class:`~engine.options.GenerationOptions`, whose clip sizes and guidance batch
            the networks' profiles follow (None: the model's defaults).

    Subclasses implement :meth:`run_graph`.
    """

    def __init__(self, model: EmoteModel, device: torch.device, dtype: torch.dtype,
                 options: GenerationOptions | None = None):
        self.model, self.device, self.dtype, self.options = model.eval(), device, dtype, options
        self.use_per_session_networks(model, torch.float32)
        self._networks: dict[tuple[str, int], Network] = {}

    def network(self, name: str, size: int) -> Network:
        """The description of network ``name`` at portrait side ``size`` (made once per name and size)."""
        if (name, size) not in self._networks:
            cfg = self.model.config
            shapes = (StreamShapes.for_options(cfg, self.options, size) if self.options is not None
                      else StreamShapes.for_model(cfg, size))
            self._networks[name, size] = make_network(name, self.model, shapes)
        return self._networks[name, size]

    @abstractmethod
    def run_graph(self, name: str, size: int, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Network ``name`` at portrait side ``size`` on its inputs by graph name (any dtype, any device) ->
        its outputs by graph name (on any device)."""

    def _size(self, latent: torch.Tensor) -> int:
        """Portrait side of latents ``[..., h, w]``."""
        return latent.shape[-1] * self.model.config.latent_downscale

    def _out(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, self.dtype)

    def audio_tokens(self, pcm: torch.Tensor, num_frames: int) -> torch.Tensor:
        size = self.model.config.resolution
        network = self.network("audio", size)
        feed = network.prepare(pcm.detach().float().cpu(), num_frames)
        return self._out(network.finish(self.run_graph("audio", size, feed.inputs), feed))

    def reference(self, latents: torch.Tensor, context: torch.Tensor | None = None) -> ReferenceBank:
        size = self._size(latents)
        network = self.network("reference", size)
        bank = network.bank_of(self.run_graph("reference", size, network.feed(latents, context)))
        return ReferenceBank(tokens=[self._out(t) for t in bank.tokens], features=[self._out(f) for f in bank.features])

    def backbone(self, inputs: BackboneInputs) -> torch.Tensor:
        size = self._size(inputs.sample)
        return self._out(self.run_graph("backbone", size, self.network("backbone", size).feed(inputs))["model_output"])

    def vae_encode(self, images: torch.Tensor) -> torch.Tensor:
        return self._out(self.run_graph("vae_encoder", images.shape[-1], {"images": images})["latents"])

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._out(self.run_graph("vae_decoder", self._size(latents), {"latents": latents})["images"])

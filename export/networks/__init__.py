"""One description per exported network, each in its own module beside the spec machinery (:mod:`.spec`).

Networks:
    audio        (:mod:`.audio`) 16 kHz PCM window -> per-frame audio tokens (wav2vec2 + projection), or
                 log-mel windows -> whisper level states (the frame gather runs outside the graph).
    reference    (:mod:`.reference`) ReferenceNet at timestep 0: latents -> reference bank tokens + motion
                 features.
    backbone     (:mod:`.backbone`) one denoising step with every condition as an explicit input.
    vae_decoder  (:mod:`.vae`) scaled latents -> images in [-1, 1].
    vae_encoder  (:mod:`.vae`) images -> scaled latents (the reference image).
"""

from __future__ import annotations

from typing import Callable

from engine.models.model import EmoteModel
from export.networks.audio import AudioNetwork
from export.networks.backbone import BackboneNetwork
from export.networks.reference import ReferenceNetwork
from export.networks.spec import Network, StreamShapes
from export.networks.vae import VAEDecoderNetwork, VAEEncoderNetwork

NETWORKS: dict[str, Callable[[EmoteModel, StreamShapes], Network]] = {
    "audio": AudioNetwork, "reference": ReferenceNetwork, "backbone": BackboneNetwork,
    "vae_decoder": VAEDecoderNetwork, "vae_encoder": VAEEncoderNetwork,
}


NETWORK_NAMES = tuple(NETWORKS)
"""The exported networks' names, in the order they are exported."""


def make_network(name: str, model: EmoteModel, shapes: StreamShapes) -> Network:
    """The description of network ``name`` (one of :data:`NETWORK_NAMES`)."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; known: {', '.join(NETWORK_NAMES)}")
    return NETWORKS[name](model, shapes)

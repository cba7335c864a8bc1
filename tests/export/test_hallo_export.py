"""ONNX export of a Hallo-shaped tiny model: the backbone's face tokens and region masks, the ReferenceNet's
face-token context, under ONNX Runtime against torch; presets export exactly the inputs they always had.

Tolerance as tests/export/test_onnx_export.py: fp32 graphs within 1e-4 of torch eager.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from support import random_hallo, tiny_random_model

from engine.backends import make_backend
from engine.backends.torch_eager import TorchEagerBackend
from engine.config import preset
from engine.models.backbone_inputs import BackboneInputs
from engine.models.checkpoint import random_model
from engine.models.hallo_audio import region_mask_levels
from engine.models.model import EmoteModel
from export.engine_cache import EngineCache
from export.networks import make_network
from export.networks.backbone import BackboneNetwork
from export.networks.spec import Network, StreamShapes, weights_digest
from export.onnx_export import GRAPH_FILE, cached_export

TOLERANCE = 1e-4
SIZE = 64


@pytest.fixture(scope="module")
def hallo() -> EmoteModel:
    return random_hallo(std=0.1)  # 0.1: every mask level moves the output > 1e-2


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> EngineCache:
    return EngineCache(tmp_path_factory.mktemp("hallo-cache"))


@pytest.fixture(scope="module")
def networks(hallo: EmoteModel, cache: EngineCache) -> dict[str, tuple[Network, ort.InferenceSession]]:
    shapes = StreamShapes.for_model(hallo.config, size=SIZE, clip_frames=2, batches=(1, 2))
    out = {}
    for name in ("backbone", "reference"):
        network = make_network(name, hallo, shapes)
        directory = cached_export(cache, network, "fp32")
        graph = onnx.load(str(directory / GRAPH_FILE), load_external_data=False)
        assert [i.name for i in graph.graph.input] == network.input_names
        out[name] = network, ort.InferenceSession(str(directory / GRAPH_FILE), providers=["CPUExecutionProvider"])
    return out


def run_ort(network: Network, session: ort.InferenceSession, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    feeds = network.cast(dict(zip(network.input_names, inputs)), "fp32")
    return session.run(network.output_names, {k: v.numpy() for k, v in feeds.items()})


def run_torch(network: Network, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    with torch.no_grad():
        out = network.module()(*inputs)
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def test_backbone_declares_hallo_inputs_and_only_the_motion_features_it_reads(networks, hallo):
    network, _ = networks["backbone"]
    names = network.input_names
    assert names[-4:] == ["image_tokens", "region_masks_0", "region_masks_1", "region_masks_2"]
    shapes = {s.name: s.dims for s in network.inputs}
    assert shapes["image_tokens"] == ("batch", 4, hallo.config.unet.cross_attention_dim)
    assert [shapes[f"region_masks_{level}"] for level in range(3)] == [("batch", 3, 64), ("batch", 3, 16),
                                                                      ("batch", 3, 4)]
    motion = [n for n in names if n.startswith("motion_features_")]
    assert 0 < len(motion) < hallo.backbone.num_motion_locations  # the skipped plain blocks' are left out
    assert networks["reference"][0].input_names == ["latents", "context"]


@pytest.mark.parametrize("name", ["backbone", "reference"])
def test_graphs_match_torch(networks, name):
    network, session = networks[name]
    for seed, dims in enumerate([network.export_dims(), {a: 1 for a in network.axes}]):
        inputs = network.sample_input(dims, seed=seed)
        worst = max(float(np.abs(a - b).max()) for a, b in zip(run_ort(network, session, inputs),
                                                               run_torch(network, inputs)))
        assert worst <= TOLERANCE, f"{name}: ONNX Runtime differs from torch by {worst:.2e}"


def test_face_tokens_and_every_mask_level_change_the_exported_backbone(networks):
    network, session = networks["backbone"]
    inputs = network.sample_input(seed=3)
    base = run_ort(network, session, inputs)[0]
    for name in ("image_tokens", "region_masks_0", "region_masks_1", "region_masks_2"):
        i = network.input_names.index(name)
        changed = list(inputs)
        changed[i] = inputs[i] + 0.5 * torch.randn(inputs[i].shape, generator=torch.Generator().manual_seed(i))
        assert np.abs(run_ort(network, session, tuple(changed))[0] - base).max() > 1e-4, name


def test_onnxruntime_backend_takes_the_hallo_inputs_like_torch(hallo, cache, networks):
    onnx_backend = make_backend("onnxruntime", hallo, "cpu", torch.float32, cache_dir=cache.root)
    eager = TorchEagerBackend(hallo)
    generator = torch.Generator().manual_seed(7)
    latents = torch.randn(hallo.config.motion_frames, 4, SIZE // 8, SIZE // 8, generator=generator)
    tokens = eager.image_tokens(torch.randn(1, hallo.config.image_proj.embedding_dim, generator=generator))
    torch.testing.assert_close(onnx_backend.image_tokens(torch.ones(1, 16)), eager.image_tokens(torch.ones(1, 16)))
    for context in (None, tokens):
        want, got = eager.reference(latents, context=context), onnx_backend.reference(latents, context=context)
        for a, b in zip(got.tokens + got.features, want.tokens + want.features):
            torch.testing.assert_close(a, b, atol=TOLERANCE, rtol=0)
    bank = eager.reference(latents[:1], context=tokens)
    motion = eager.reference(latents, context=tokens).motion_features(1)
    b, frames, lat = 2, 2, SIZE // 8
    call = dict(audio_tokens=torch.randn(b, frames, 4, hallo.config.audio_modules.cross_attention_dim,
                                         generator=generator),
                reference_bank=[t.expand(b, *t.shape[1:]) for t in bank.tokens],
                motion_features=[m.expand(b, *m.shape[1:]) for m in motion],
                face_features=torch.randn(b, 1, 32, lat, lat, generator=generator), speed_tokens=None,
                reference_keep=torch.tensor([True, False]), image_tokens=tokens.expand(b, -1, -1),
                region_masks=region_mask_levels(torch.rand(1, 3, lat, lat, generator=generator), 3))
    sample = torch.randn(b, 4, frames, lat, lat, generator=generator)
    timestep = torch.tensor([[900.0, 880.0], [900.0, 880.0]])
    for hallo_inputs in ({}, {"image_tokens": None, "region_masks": None}):
        args = {**call, **hallo_inputs}
        inputs = BackboneInputs(sample=sample, timestep=timestep, **args)
        torch.testing.assert_close(onnx_backend.backbone(inputs), eager.backbone(inputs), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", ["tiny", "sd15"])
def test_presets_export_the_inputs_they_always_had(name):
    model = EmoteModel.on_meta(preset(name))
    network = make_network("backbone", model, StreamShapes.for_model(model.config))
    assert isinstance(network, BackboneNetwork)
    speed = ["speed_tokens"] if model.config.speed.enabled else []
    want = (["sample", "timestep", "audio_tokens", "face_features"] + speed + ["reference_keep"]
            + [f"reference_bank_{i}" for i in range(len(network.dims["reference_bank"]))]
            + [f"motion_features_{j}" for j in range(len(network.dims["motion_features"]))])
    assert network.input_names == want
    assert make_network("reference", model, StreamShapes.for_model(model.config)).input_names == ["latents"]



def test_region_weights_are_part_of_the_backbone_graphs_key(hallo):
    """The graph holds Hallo's pose / face / lip weights as constants: other weights, another cached graph."""
    def network(model: EmoteModel) -> BackboneNetwork:
        return BackboneNetwork(model, StreamShapes.for_model(model.config, size=SIZE, clip_frames=2, batches=(1,)))

    cfg = dataclasses.replace(hallo.config, audio_modules=dataclasses.replace(
        hallo.config.audio_modules, region_weights=(1.0, 1.0, 2.0)))
    reweighted = random_model(cfg, seed=0)
    reweighted.load_state_dict(hallo.state_dict())
    assert weights_digest(hallo.backbone) == weights_digest(reweighted.backbone)
    assert network(hallo).weights_digest() != network(reweighted).weights_digest()
    plain = tiny_random_model()
    assert network(plain).weights_digest() == weights_digest(plain.backbone), "models without audio modules: as before"

"""Network descriptions: declared shapes match the modules, and the profiles cover what a session feeds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.backends.torch_eager import TorchEagerBackend
from engine.models.model import EmoteModel
from engine.options import GenerationOptions
from export.networks import NETWORK_NAMES, make_network
from export.networks.audio import linear_resample_matrix
from export.networks.backbone import BackboneNetwork
from export.networks.spec import Network, Profile, StreamShapes, select_profile

Feed = dict[str, tuple[int, ...]]


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_declared_outputs_match_the_module(tiny_model: EmoteModel, tiny_shapes: StreamShapes, name: str) -> None:
    network = make_network(name, tiny_model, tiny_shapes)
    dims = network.export_dims()
    assert min(dims.values()) >= 2, "an example size of 1 would be fixed by the exporter"
    with torch.no_grad():
        out = network.module()(*network.sample_input(dims))
    out = out if isinstance(out, tuple) else (out,)
    assert {s.name: tuple(t.shape) for s, t in zip(network.outputs, out)} == network.output_shapes(dims)
    assert len(out) == len(network.outputs)
    names = network.input_names + network.output_names
    assert len(set(names)) == len(names)


def test_backbone_inputs_are_explicit_per_layer(tiny_model: EmoteModel, tiny_shapes: StreamShapes) -> None:
    network = make_network("backbone", tiny_model, tiny_shapes)
    banks = [n for n in network.input_names if n.startswith("reference_bank_")]
    motions = [n for n in network.input_names if n.startswith("motion_features_")]
    assert len(banks) == tiny_model.backbone.num_bank_layers
    assert len(motions) == tiny_model.backbone.num_motion_locations
    assert {"audio_tokens", "timestep", "reference_keep", "face_features", "speed_tokens"} <= set(network.input_names)
    assert network.dynamic_axes()["sample"] == {0: "batch", 2: "frames"}


def test_profiles_are_static_buckets_then_one_dynamic(tiny_model: EmoteModel) -> None:
    shapes = StreamShapes.for_model(tiny_model.config, first_clip_frames=4, batches=(1, 3))
    profiles = make_network("backbone", tiny_model, shapes).profiles()
    assert [p.name for p in profiles] == ["b1-f4", "b1-f8", "b3-f4", "b3-f8", "dynamic"]
    assert all(p.static for p in profiles[:-1]) and not profiles[-1].static
    low, opt, high = profiles[-1].shapes["sample"]
    assert (low[0], low[2], opt[0], opt[2], high[0], high[2]) == (1, 1, 3, 8, 3, 8)
    for profile in profiles:
        for low, opt, high in profile.shapes.values():
            assert all(a <= b <= c for a, b, c in zip(low, opt, high))


def test_select_profile_prefers_the_static_bucket_and_refuses_uncovered_shapes() -> None:
    static = Profile("b2-f8", {"x": ((2, 8), (2, 8), (2, 8))})
    dynamic = Profile("dynamic", {"x": ((1, 1), (3, 8), (3, 8))})
    assert select_profile([dynamic, static], {"x": (2, 8)}) == 1
    assert select_profile([static, dynamic], {"x": (1, 5)}) == 1
    with pytest.raises(ValueError, match="no optimisation profile covers"):
        select_profile([static, dynamic], {"x": (4, 8)})


@pytest.mark.parametrize("source, target", [(9, 5), (5, 9), (7, 1), (1, 4), (50, 37)])
def test_linear_resample_matrix_is_interpolate(source: int, target: int) -> None:
    x = torch.randn(2, 3, source)
    expected = F.interpolate(x, size=target, mode="linear", align_corners=True)
    assert torch.allclose(x @ linear_resample_matrix(source, target), expected, atol=2e-5)


def test_stream_shapes_follow_the_options(tiny_model: EmoteModel) -> None:
    cfg = tiny_model.config
    shapes = StreamShapes.for_options(cfg, GenerationOptions(cfg_audio=2.5, cfg_ref=1.5, first_clip_frames=3))
    assert shapes.batches == (3,) and shapes.frame_buckets == (3, 8) and shapes.max_frames == 8
    rolling = StreamShapes.for_options(cfg, GenerationOptions(schedule="rolling", steps=4, group_frames=2))
    assert rolling.frame_buckets == (2, 8) and rolling.batches == (1,)
    with pytest.raises(ValueError, match="multiple of"):
        StreamShapes.for_model(cfg, size=100)


class RecordingBackend(TorchEagerBackend):
    """The eager backend, recording each call as the feed its exported graph would get."""

    def __init__(self, model: EmoteModel):
        super().__init__(model)
        self.feeds: dict[str, list[Feed]] = {name: [] for name in NETWORK_NAMES}
        self._networks: dict[tuple[str, int], Network] = {}

    def _network(self, name: str, size: int) -> Network:
        if (name, size) not in self._networks:
            self._networks[name, size] = make_network(name, self.model, StreamShapes.for_model(self.model.config, size))
        return self._networks[name, size]

    def _log(self, name: str, named: dict[str, torch.Tensor]) -> None:
        feed = {k: tuple(v.shape) for k, v in named.items()}
        if feed not in self.feeds[name]:
            self.feeds[name].append(feed)

    def audio_tokens(self, pcm, num_frames):
        feed = self._network("audio", self.model.config.resolution).prepare(pcm, num_frames)
        self._log("audio", feed.inputs)
        return super().audio_tokens(pcm, num_frames)

    def reference(self, latents):
        self._log("reference", {"latents": latents})
        return super().reference(latents)

    def backbone(self, inputs):
        network = self._network("backbone", inputs.sample.shape[-1] * self.model.config.latent_downscale)
        assert isinstance(network, BackboneNetwork)
        self._log("backbone", network.feed(inputs))
        return super().backbone(inputs)

    def vae_encode(self, images):
        self._log("vae_encoder", {"images": images})
        return super().vae_encode(images)

    def vae_decode(self, latents):
        self._log("vae_decoder", {"latents": latents})
        return super().vae_decode(latents)


RUNS = [
    # 3 guidance branches, a short first clip, a partial last clip (0.7 s = 18 frames = 3 + 8 + 7).
    dict(seconds=0.7, options=dict(cfg_ref=1.5, cfg_audio=2.5, first_clip_frames=3)),
    # rolling schedule: groups of 2 frames, a window of 2 steps x 2 frames.
    dict(seconds=0.5, options=dict(schedule="rolling", steps=2, group_frames=2)),
]


@pytest.mark.parametrize("run", RUNS, ids=["clips-cfg3", "rolling"])
def test_profiles_cover_what_a_real_session_feeds(tiny_model: EmoteModel, run_session, run: dict) -> None:
    backend = RecordingBackend(tiny_model)
    run_session(backend, tiny_model, run["seconds"], **run["options"])
    options = GenerationOptions(**{"steps": 1, **run["options"]})
    for_run = StreamShapes.for_options(tiny_model.config, options)
    defaults = StreamShapes.for_model(tiny_model.config)
    for name in NETWORK_NAMES:
        assert backend.feeds[name], f"the session never called {name}"
        for shapes in (for_run, defaults) if options.schedule == "clip" else (for_run,):
            profiles = make_network(name, tiny_model, shapes).profiles()
            for feed in backend.feeds[name]:
                assert any(p.covers(feed) for p in profiles), f"{name}: no profile covers {feed}"
    backbone = make_network("backbone", tiny_model, for_run)
    profiles = backbone.profiles()
    frames = sorted({feed["sample"][2] for feed in backend.feeds["backbone"]})
    assert len(frames) >= 2, f"the run should feed several clip lengths, fed {frames}"
    for feed in backend.feeds["backbone"]:
        if feed["sample"][2] in for_run.frame_buckets:
            assert profiles[select_profile(profiles, feed)].static, f"steady-state feed {feed['sample']} not static"

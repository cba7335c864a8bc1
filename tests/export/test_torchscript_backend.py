"""The torchscript backend: traced graphs against the eager modules, network by network and over whole sessions.

A traced, frozen graph computes the eager module's arithmetic (constants folded): per network within 1e-5 of eager;
a whole tiny session within the same uint8 tolerance as ONNX Runtime's fp32 graphs (tests/export/test_backends.py).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from support import random_hallo

from engine.backends import make_backend, torchscript_backend
from engine.backends.torch_eager import TorchEagerBackend
from engine.backends.torchscript_backend import TRACED_NETWORKS, TorchScriptBackend, static_dims
from engine.models.model import EmoteModel

MAX_LEVELS = 2
MEAN_LEVELS = 0.05


def _backbone_keys(backend: TorchScriptBackend) -> list[tuple]:
    return [key for key in backend.trace_seconds if key[0] == "backbone"]


@pytest.fixture(scope="module")
def hallo() -> EmoteModel:
    """Hallo's layout: audio modules with region masks, face-embedding tokens, norm1 motion features."""
    return random_hallo(std=0.1)


@pytest.mark.parametrize("layout", ["tiny", "hallo"])
def test_each_traced_network_matches_its_eager_module(layout: str, tiny_model: EmoteModel,
                                                      request: pytest.FixtureRequest) -> None:
    model = tiny_model if layout == "tiny" else request.getfixturevalue("hallo")
    backend = TorchScriptBackend(model)
    size = model.config.resolution
    for name in TRACED_NETWORKS:
        network = backend.network(name, size)
        for dims in static_dims(network):
            inputs = network.sample_input(dims, seed=3)
            graph = backend._graph(network, size, inputs)
            assert graph is not None, (name, dims)
            with torch.inference_mode():
                want, got = network.module()(*inputs), graph(*inputs)
            want = (want,) if isinstance(want, torch.Tensor) else want
            got = (got,) if isinstance(got, torch.Tensor) else got
            assert len(got) == len(want) == len(network.output_names)
            for w, g in zip(want, got):
                assert g.shape == w.shape and torch.allclose(g, w, atol=1e-5, rtol=1e-5), \
                    (name, dims, (g - w).abs().max().item())


def test_a_session_matches_torch_and_traces_only_the_steady_shapes(tiny_model: EmoteModel, run_session) -> None:
    """Two guidance branches (batch 2); 0.5 s makes a full clip and a short last one: the full clip's shape is
    traced, the short one runs eagerly. A second session on the same backend traces nothing new and gives the
    same frames, bit for bit."""
    want = run_session(TorchEagerBackend(tiny_model), tiny_model, 0.5, cfg_audio=2.0)
    backend = make_backend("torchscript", tiny_model, "cpu", torch.float32)
    got = run_session(backend, tiny_model, 0.5, cfg_audio=2.0)
    assert got.shape == want.shape == (13, 128, 128, 3)
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= MAX_LEVELS and diff.mean() <= MEAN_LEVELS, (diff.max(), diff.mean())

    traced = backend.inner.trace_seconds
    network = backend.inner.network("backbone", tiny_model.config.resolution)
    steady = [(d["batch"], d["frames"]) for d in static_dims(network)]
    shapes = [(key[2][0][0], key[2][0][2]) for key in _backbone_keys(backend.inner)]
    assert shapes and all(shape in steady for shape in shapes), (shapes, steady)
    assert {batch for batch, _ in shapes} == {2}
    assert {key[0] for key in traced} >= {"backbone", "reference"}

    before = dict(traced)
    again = run_session(backend, tiny_model, 0.5, cfg_audio=2.0)
    assert np.array_equal(again, got) and backend.inner.trace_seconds == before


def test_prepare_traces_ahead_for_one_batch(tiny_model: EmoteModel, run_session) -> None:
    backend = make_backend("torchscript", tiny_model, "cpu", torch.float32)
    backend.prepare(tiny_model.config.resolution, 1)
    prepared = dict(backend.inner.trace_seconds)
    assert {key[0] for key in prepared} == set(TRACED_NETWORKS)
    assert {key[2][0][0] for key in _backbone_keys(backend.inner)} == {1}
    run_session(backend, tiny_model, 0.5)
    assert backend.inner.trace_seconds == prepared


def test_clear_errors_off_the_cpu_and_float32(tiny_model: EmoteModel) -> None:
    with pytest.raises(ValueError, match="runs on the CPU, not cuda"):
        TorchScriptBackend(tiny_model, "cuda", torch.float32)
    with pytest.raises(ValueError, match="runs float32, not torch.bfloat16"):
        make_backend("torchscript", tiny_model, "cpu", torch.bfloat16)


def test_a_server_traces_its_sessions_shapes_before_the_first_session() -> None:
    """``emote serve --backend torchscript``: the hub traces at load, for its sessions' guidance batch; a session
    then makes no trace of its own."""
    from support import speech

    from engine.serve.hub import ServeConfig, SessionHub

    hub = SessionHub.load(ServeConfig(model="tiny", backend="torchscript", threads=1))
    try:
        inner = hub.backend.inner
        prepared = dict(inner.trace_seconds)
        assert {key[0] for key in prepared} == set(TRACED_NETWORKS)
        assert {key[2][0][0] for key in _backbone_keys(inner)} == {1}
        session_id = hub.reserve()
        live = hub.build(session_id, None)[0]
        live.push_audio(speech(0.48, 150))
        live.end()
        assert len(list(live)) == 12
        hub.release(session_id)
        assert inner.trace_seconds == prepared
    finally:
        hub.close()


def test_a_network_that_cannot_be_traced_runs_eagerly_with_a_warning(tiny_model: EmoteModel,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    backend = TorchScriptBackend(tiny_model)
    network = backend.network("backbone", tiny_model.config.resolution)
    dims = static_dims(network)[0]
    inputs = network.sample_input(dims, seed=1)

    def fail(*_: object) -> None:
        raise RuntimeError("expected double\nmore detail")

    monkeypatch.setattr(torchscript_backend, "trace_network", fail)
    with pytest.warns(UserWarning, match=r"backbone at .* could not be traced; it runs eagerly "
                                         r"\(RuntimeError: expected double\)"):
        got = backend.run_graph("backbone", tiny_model.config.resolution, dict(zip(network.input_names, inputs)))
    with torch.inference_mode():
        want = network.module()(*inputs)
    assert torch.equal(got["model_output"], want) and backend.trace_seconds == {}
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        backend.run_graph("backbone", tiny_model.config.resolution, dict(zip(network.input_names, inputs)))
    assert not again, "a failed trace is not tried again at every call"


def test_the_steady_shapes_follow_the_sessions_clip_sizes(tiny_model: EmoteModel) -> None:
    from engine.options import GenerationOptions

    size = tiny_model.config.resolution
    plain = make_backend("torchscript", tiny_model, "cpu", torch.float32)
    short = make_backend("torchscript", tiny_model, "cpu", torch.float32,
                         generation=GenerationOptions(first_clip_frames=3))
    frames = {b: {d["frames"] for d in static_dims(b.inner.network("backbone", size))} for b in (plain, short)}
    assert 3 in frames[short] and 3 not in frames[plain], frames

"""The graph backends' shared network methods, over one run method, and the per-session networks every backend
shares (the face locator's dtype per backend)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from engine.backends.graph import GraphBackend
from engine.backends.onnxruntime_backend import OnnxRuntimeBackend
from engine.backends.torch_eager import TorchEagerBackend
from engine.models.model import EmoteModel
from export.networks import NETWORK_NAMES
from tests.support import tiny_random_model


class ModuleGraphs(GraphBackend):
    """A graph backend whose graphs are the networks' own exportable modules, run in torch on their flat inputs."""

    name = "module-graphs"

    def __init__(self, model: EmoteModel):
        super().__init__(model, torch.device("cpu"), torch.float32)
        self.ran: Counter[str] = Counter()

    def run_graph(self, name: str, size: int, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        network = self.network(name, size)
        self.ran[name] += 1
        with torch.inference_mode():
            out = network.module()(*(network.cast(inputs, "fp32")[n] for n in network.input_names))
        return dict(zip(network.output_names, out if isinstance(out, tuple) else (out,), strict=True))


def test_one_run_method_serves_every_network(tiny_model: EmoteModel, run_session) -> None:
    backend = ModuleGraphs(tiny_model)
    got = run_session(backend, tiny_model, 0.5, cfg_ref=1.5)
    want = run_session(TorchEagerBackend(tiny_model), tiny_model, 0.5, cfg_ref=1.5)
    assert set(backend.ran) == set(NETWORK_NAMES)
    assert got.shape == want.shape
    assert np.abs(got.astype(np.int16) - want.astype(np.int16)).max() <= 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_face_locator_runs_in_the_eager_dtype_and_float32_for_graphs(dtype: torch.dtype) -> None:
    mask = (torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    reference = tiny_random_model().face_locator
    with torch.inference_mode():
        want = {"eager": reference.to(dtype)(mask.to(dtype)), "graph": reference.float()(mask).to(dtype)}
    backends = {"eager": TorchEagerBackend(tiny_random_model(), dtype=dtype),
                "graph": ModuleGraphs(tiny_random_model())}
    backends["graph"].dtype = dtype
    for kind, backend in backends.items():
        weights = {p.dtype for p in backend.face_locator.parameters()}
        assert weights == {dtype if kind == "eager" else torch.float32}, kind
        got = backend.face_features(mask)
        assert got.dtype == dtype and torch.equal(got, want[kind]), kind


def test_onnxruntime_is_a_graph_backend_with_a_float32_face_locator() -> None:
    pytest.importorskip("onnxruntime")
    backend = OnnxRuntimeBackend(tiny_random_model(), dtype=torch.float16)
    assert isinstance(backend, GraphBackend)
    assert {p.dtype for p in backend.face_locator.parameters()} == {torch.float32}
    assert backend.face_features(torch.ones(1, 1, 64, 64)).dtype == torch.float16

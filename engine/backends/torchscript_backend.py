"""TorchScript backend (CPU): each network traced once per steady-state shape and frozen.

The graphs are the exported networks' own modules (:class:`export.networks.spec.Network`, the flat form ONNX export
traces), so what runs is the torch model's arithmetic, frozen (weights become constants, folded where they meet) and
run by TorchScript's interpreter instead of Python. At talking64's sizes, where a backbone call is thousands of small
operators, a backbone call takes about a fifth less time than eager (docs/cpu-speed.md).
``torch.jit.optimize_for_inference`` (oneDNN layouts for the convolutions) is not applied: at these sizes its layout
conversions cost more than they save.

A network is traced at the shapes of its static profiles (:meth:`~export.networks.spec.Network.dim_points`: the
stream's steady state, e.g. the first clip's and the later clips' frame counts) on its first call at that shape, a
few seconds each for a backbone (:meth:`TorchScriptBackend.prepare` does it ahead, for a live session); any other shape
(an utterance's short last clip) and the networks not traced run the same modules eagerly, so no call waits for a
trace it would use once. The per-session networks (face locator, speed encoder, image projection) run in torch
(:class:`~engine.backends.graph.GraphBackend`).
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import torch

from engine.backends.graph import GraphBackend
from engine.models.model import EmoteModel
from engine.options import GenerationOptions
from export.networks.spec import Network

TRACED_NETWORKS = ("reference", "backbone")
"""The networks traced at their static shapes: where a clip's time goes (about 97 % of it for talking64). The audio
encoder's inputs vary with the audio and the VAE is one call a clip: both run eagerly."""


def static_dims(network: Network) -> list[dict[str, int]]:
    """The dynamic-axis sizes of ``network``'s static profiles (profiles whose least and most sizes agree)."""
    return [lo for _, lo, _, hi in network.dim_points() if lo == hi]


def trace_network(network: Network, inputs: tuple[torch.Tensor, ...]) -> torch.jit.ScriptModule:
    """``network``'s module traced on ``inputs`` (its graph inputs in order) and frozen, not yet run (TorchScript
    optimises a graph for what it sees on its first runs; a graph pass meant to change it comes before)."""
    with torch.no_grad(), warnings.catch_warnings():
        # Shape checks in the modules turn into constants: right for a graph made for one shape. torch deprecates
        # TorchScript for torch.compile, which here compiled for 93 s, recompiled per block and ran slower than
        # eager (docs/cpu-speed.md): the warning is no news to whoever runs this backend.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        return torch.jit.freeze(torch.jit.trace(network.module().eval(), inputs, check_trace=False))


class TorchScriptBackend(GraphBackend):
    """Runs the networks of ``model`` as traced, frozen TorchScript graphs on the CPU (float32).

    Args:
        model: the networks; its ReferenceNet, backbone and VAE are made float32 in place (as the eager backend does).
        device: ``cpu`` only.
        dtype: float32 only.
        options: the session's options, whose clip sizes decide the static shapes (None: the model's defaults).

    Attributes:
        trace_seconds: seconds spent tracing and optimising, per ``(network, size, shapes)`` graph made.
    """

    name = "torchscript"

    def __init__(self, model: EmoteModel, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 options: GenerationOptions | None = None):
        device = torch.device(device)
        if device.type != "cpu":
            raise ValueError(f"the torchscript backend runs on the CPU, not {device} (on CUDA: torch-cuda-graphs, "
                             f"onnxruntime or tensorrt)")
        if dtype != torch.float32:
            raise ValueError(f"the torchscript backend runs float32, not {dtype}")
        for name in ("reference_net", "backbone", "vae"):
            getattr(model, name).to(torch.float32)
        super().__init__(model, device, dtype, options)
        self._graphs: dict[tuple, Any] = {}
        self.trace_seconds: dict[tuple, float] = {}

    def _graph(self, network: Network, size: int, inputs: tuple[torch.Tensor, ...]) -> Any | None:
        """The traced graph of ``network`` for these inputs' shapes: made now on the first call at a static shape;
        None for a shape that is not static, or whose trace failed (a warning says so): run eagerly."""
        if network.name not in TRACED_NETWORKS:
            return None
        key = (network.name, size, tuple(tuple(t.shape) for t in inputs))
        if key in self._graphs:
            return self._graphs[key]
        dims = network.dims_of({name: t.shape for name, t in zip(network.input_names, inputs)})
        if not any(all(dims.get(axis) == value for axis, value in point.items()) for point in static_dims(network)):
            return None
        started = time.perf_counter()
        try:
            graph = trace_network(network, inputs)
            with torch.no_grad():
                graph(*inputs)
        except Exception as exc:  # noqa: BLE001 - a torch limitation on some module: eager is as right, only slower
            warnings.warn(f"torchscript: {network.name} at {dims} could not be traced; it runs eagerly "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})", stacklevel=2)
            graph = None
        self._graphs[key] = graph
        if graph is not None:
            self.trace_seconds[key] = time.perf_counter() - started
        return graph

    def run_graph(self, name: str, size: int, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        network = self.network(name, size)
        feeds = network.cast({k: v.to(self.device) for k, v in inputs.items()}, "fp32")
        ordered = tuple(feeds[k] for k in network.input_names)
        graph = self._graph(network, size, ordered)
        with torch.inference_mode():
            outputs = graph(*ordered) if graph is not None else network.module()(*ordered)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        return dict(zip(network.output_names, outputs))

    def prepare(self, size: int, batch: int | None = None) -> None:
        """Trace every traced network at each of its static shapes for portrait side ``size`` and ``batch`` rows (the
        guidance branches; None: every batch of the static shapes), on sample inputs, so that no session waits for a
        trace (:attr:`trace_seconds` says what it took)."""
        for name in TRACED_NETWORKS:
            network = self.network(name, size)
            for dims in static_dims(network):
                if batch is None or dims.get("batch", batch) == batch:
                    self._graph(network, size, network.sample_input(dims))

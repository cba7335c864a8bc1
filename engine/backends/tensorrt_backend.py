"""TensorRT backend: plans from the keyed engine cache, run on device buffers owned by torch.

Every network (audio, ReferenceNet, backbone, VAE decoder and encoder) runs as a TensorRT plan
built by :mod:`export.trt_build` (on first use when ``build=True``, else it must exist: ``make
engines``). Inputs and outputs are torch CUDA tensors whose addresses are bound to the execution
context (``set_tensor_address``) and run with ``execute_async_v3``: no host round trip.

Concurrency model (:class:`PlanDevice`): the plans of one backend share one activation buffer
(sized for the largest), one dedicated CUDA stream (never the legacy default stream) and one lock.
A run holds the lock from binding to launch, so the stream runner's backbone and decoder threads
and ``emote serve``'s sessions may share a backend: their runs are serialised, and ordered on the
GPU by the stream (the caller's stream waits for earlier runs, the dedicated stream for the
caller's inputs, the caller's stream for the outputs). Every TensorRT and CUDA call runs with the
backend's device selected, so ``cuda:1`` is ``cuda:1`` throughout.

Feeds that match a static profile (the steady-state clip) are replayed from a CUDA graph captured
around the engine's execution (thread-local capture mode). A capture counts only when
``execute_async_v3`` returned True, the capture ended cleanly and ``cudaGetLastError`` (cuda-python)
reports success; otherwise the error is cleared, the graph dropped and that profile runs eagerly.
The first and last clips run through the dynamic profile without a graph.

The face locator, the speed encoder and the image projection (once per session) run in torch
(:class:`~engine.backends.graph.GraphBackend`).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from engine.backends.graph import GraphBackend
from engine.models.model import EmoteModel
from engine.options import GenerationOptions
from export.engine_cache import EngineCache
from export.networks.spec import select_profile
from export.trt_build import BuildSettings, TensorRTUnavailable, cached_plan, cuda_device, import_tensorrt

PRECISION_OF = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def import_cudart() -> Any:
    """cuda-python's CUDA runtime module: ``cuda.bindings.runtime`` (cuda-python 12.6 and later, the only path in
    13, which removed ``cuda.cudart``), else ``cuda.cudart`` (earlier 12.x)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError as exc:
            raise TensorRTUnavailable(f"cuda-python is not installed ({exc}); install the GPU extras "
                                      "(pip install -e '.[gpu]')") from None
    return runtime


class PlanDevice:
    """What every plan of one TensorRT backend shares: the device, a dedicated stream, the activation buffer and
    the lock that serialises their use.

    Args:
        device: an indexed CUDA device.
        cudart: cuda-python's runtime module (:func:`import_cudart`), for ``cudaGetLastError``.
        cuda: the ``torch.cuda`` module (tests pass a recording stand-in).

    ``generation`` changes whenever the activation buffer is reallocated: contexts bound to an older
    buffer are re-bound and their CUDA graphs captured again.
    """

    def __init__(self, device: torch.device, cudart: Any, cuda: Any = torch.cuda):
        self.device, self.cudart, self.cuda = device, cudart, cuda
        self.lock = threading.RLock()
        with cuda.device(device):
            self.stream = cuda.Stream(device)
        self.buffer: torch.Tensor | None = None
        self.generation = 0

    def selected(self) -> Any:
        """A context manager making the device current (TensorRT works on the current device)."""
        return self.cuda.device(self.device)

    def reserve(self, nbytes: int) -> None:
        """Make the activation buffer at least ``nbytes`` long (allocated on the dedicated stream, so freeing the old
        one is ordered after the work that used it)."""
        if self.buffer is None or self.buffer.numel() < nbytes:
            with self.cuda.stream(self.stream):
                self.buffer = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=self.device)
            self.generation += 1

    @property
    def address(self) -> int:
        """Device address of the activation buffer."""
        assert self.buffer is not None
        return self.buffer.data_ptr()

    @property
    def nbytes(self) -> int:
        """Size of the activation buffer in bytes."""
        return 0 if self.buffer is None else self.buffer.numel()

    def join(self) -> None:
        """Order the caller's current stream after everything queued on the dedicated stream."""
        self.cuda.current_stream(self.device).wait_stream(self.stream)

    @contextmanager
    def launch(self) -> Iterator[int]:
        """Yields the dedicated stream's handle, ordered after the caller's queued work (its inputs); on leaving,
        the caller's stream is ordered after what was launched (its outputs)."""
        caller = self.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        try:
            yield self.stream.cuda_stream
        finally:
            caller.wait_stream(self.stream)

    def capture(self, enqueue: Callable[[int], bool]) -> Any | None:
        """A CUDA graph of what ``enqueue(stream_handle)`` launches on the dedicated stream, or None when the capture
        failed: ``enqueue`` returned False, ending the capture raised, or the runtime reports an error (cleared)."""
        graph = self.cuda.CUDAGraph()
        try:
            with self.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                launched = bool(enqueue(self.stream.cuda_stream))
        except RuntimeError:
            launched = False
        error = self.last_error()
        return graph if launched and error is None else None

    def replay(self, graph: Any) -> None:
        """Replay a captured graph on the dedicated stream."""
        with self.cuda.stream(self.stream):
            graph.replay()

    def last_error(self) -> str | None:
        """The CUDA runtime's last error (which this clears) by name, None for success."""
        error, = self.cudart.cudaGetLastError()
        if error == self.cudart.cudaError_t.cudaSuccess:
            return None
        return getattr(error, "name", str(error))


def torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    """TensorRT tensor dtype -> torch dtype."""
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
             trt.bool: torch.bool, trt.int32: torch.int32, trt.int64: torch.int64, trt.int8: torch.int8}
    return table[dtype]


class EnginePlan:
    """One deserialized plan with an execution context per profile, on its backend's :class:`PlanDevice`.

    Args:
        trt: the ``tensorrt`` module.
        runtime: a ``trt.Runtime``.
        data: the serialized plan (checked against its metadata by the cache).
        network: its :class:`export.networks.spec.Network` (names and profiles, in build order).
        gpu: the device, stream, activation buffer and lock shared with the backend's other plans.
        cuda_graphs: capture and replay static-profile executions.
    """

    def __init__(self, trt: Any, runtime: Any, data: bytes, network: Any, gpu: PlanDevice, cuda_graphs: bool = True):
        self.trt, self.network, self.gpu, self.cuda_graphs = trt, network, gpu, cuda_graphs
        self.device = gpu.device
        with gpu.lock, gpu.selected():
            self.engine = runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise RuntimeError(f"TensorRT could not deserialize the {network.name} plan")
            self.profiles = network.profiles()
            if self.engine.num_optimization_profiles != len(self.profiles):
                raise RuntimeError(f"the {network.name} plan has {self.engine.num_optimization_profiles} profiles, "
                                   f"the network declares {len(self.profiles)}: rebuild it")
            names = network.input_names + network.output_names
            self.dtypes = {name: torch_dtype(trt, self.engine.get_tensor_dtype(name)) for name in names}
            gpu.reserve(self.engine.device_memory_size_v2)
        self._contexts: dict[int, tuple[Any, int]] = {}
        self._graphs: dict[int, tuple[Any, dict[str, torch.Tensor], dict[str, torch.Tensor]]] = {}
        self._uncapturable: set[int] = set()

    def _fail(self, what: str) -> RuntimeError:
        return RuntimeError(f"TensorRT {what} failed for the {self.network.name} plan")

    def _context(self, index: int) -> Any:
        """The context of profile ``index``, bound to the shared activation buffer's current allocation."""
        entry = self._contexts.get(index)
        if entry is None:
            context = self.engine.create_execution_context(self.trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            if context is None:
                raise self._fail("create_execution_context")
            if not context.set_optimization_profile_async(index, self.gpu.stream.cuda_stream):
                raise self._fail(f"set_optimization_profile_async({index})")
            entry = (context, -1)
        context, generation = entry
        if generation != self.gpu.generation:
            context.set_device_memory(self.gpu.address, self.gpu.nbytes)
            self._graphs.pop(index, None)
            self._contexts[index] = (context, self.gpu.generation)
        return context

    def _bind(self, context: Any, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Set input shapes and addresses; allocate the outputs and set their addresses."""
        for name, tensor in inputs.items():
            if not context.set_input_shape(name, tuple(tensor.shape)):
                raise self._fail(f"set_input_shape({name}, {tuple(tensor.shape)})")
            if not context.set_tensor_address(name, tensor.data_ptr()):
                raise self._fail(f"set_tensor_address({name})")
        outputs = {}
        for name in self.network.output_names:
            shape = tuple(context.get_tensor_shape(name))
            if any(dim < 0 for dim in shape):
                raise self._fail(f"shape inference of {name} (got {shape})")
            outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            if not context.set_tensor_address(name, outputs[name].data_ptr()):
                raise self._fail(f"set_tensor_address({name})")
        return outputs

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named inputs (converted to the plan's dtypes on the device) -> named outputs on the device.

        Safe to call from several threads: runs of every plan of the backend are serialised by its lock.
        """
        with self.gpu.lock, self.gpu.selected():
            self.gpu.join()
            inputs = {name: inputs[name].to(self.device, self.dtypes[name]).contiguous()
                      for name in self.network.input_names}
            index = select_profile(self.profiles, {k: tuple(v.shape) for k, v in inputs.items()})
            context = self._context(index)
            if self.cuda_graphs and self.profiles[index].static and index not in self._uncapturable:
                return self._replay(index, context, inputs)
            outputs = self._bind(context, inputs)
            with self.gpu.launch() as stream:
                if not context.execute_async_v3(stream):
                    raise self._fail("execute_async_v3")
            return outputs

    def _replay(self, index: int, context: Any, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run a static-profile feed from its CUDA graph, captured on first use after one eager run (whose outputs
        that call returns). A failed capture is never replayed: that profile keeps running eagerly."""
        if index not in self._graphs:
            static_in = {k: v.clone() for k, v in inputs.items()}
            static_out = self._bind(context, static_in)
            with self.gpu.launch() as stream:
                if not context.execute_async_v3(stream):
                    raise self._fail("execute_async_v3")
                graph = self.gpu.capture(context.execute_async_v3)
            if graph is None:
                self._uncapturable.add(index)
                return static_out
            self._graphs[index] = (graph, static_in, static_out)
            return {name: tensor.clone() for name, tensor in static_out.items()}
        graph, static_in, static_out = self._graphs[index]
        for name, tensor in inputs.items():
            static_in[name].copy_(tensor)
        with self.gpu.launch():
            self.gpu.replay(graph)
        return {name: tensor.clone() for name, tensor in static_out.items()}


class TensorRTBackend(GraphBackend):
    """Runs every network of ``model`` as a TensorRT plan on a CUDA device.

    Args:
        model: the networks (weights are hashed for the plan keys and exported when building).
        device: a CUDA device.
        dtype: float16 (fp16 plans), bfloat16 (bf16 plans) or float32.
        cache_dir: the engine cache (default :func:`export.engine_cache.default_cache_dir`).
        build: export and build missing or stale plans (else refuse them with a clear message).
        cuda_graphs: replay static-profile executions from CUDA graphs.
        options: the session's :class:`~engine.options.GenerationOptions`, so that the
            profiles' static buckets are its clip sizes and guidance batch (default: the model's
            clip size, 1-3 branches).
    """

    name = "tensorrt"

    def __init__(self, model: EmoteModel, device: str | torch.device = "cuda", dtype: torch.dtype = torch.float16,
                 cache_dir: str | Path | None = None, build: bool = True, cuda_graphs: bool = True,
                 options: GenerationOptions | None = None):
        self.trt = import_tensorrt()
        if torch.device(device).type != "cuda":
            raise ValueError(f"the tensorrt backend runs on a CUDA device, not {device}")
        self.device = cuda_device(device)
        if dtype not in PRECISION_OF:
            raise ValueError(f"the tensorrt backend runs float16, bfloat16 or float32, not {dtype}")
        self.precision = PRECISION_OF[dtype]
        self.settings = BuildSettings(self.precision)
        self.cache = EngineCache(cache_dir)
        self.build, self.cuda_graphs = build, cuda_graphs
        self.gpu = PlanDevice(self.device, import_cudart())
        with self.gpu.selected():
            self.runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        super().__init__(model, self.device, dtype, options)
        self._plans: dict[tuple[str, int], EnginePlan] = {}

    def plan(self, name: str, size: int) -> EnginePlan:
        """The loaded plan of network ``name`` at portrait side ``size`` (built or found in the cache; loaded once,
        whichever thread asks first)."""
        key = (name, size)
        with self.gpu.lock:
            if key not in self._plans:
                network = self.network(name, size)
                plan_key = cached_plan(self.cache, network, self.settings, build=self.build, device=self.device)
                data = self.cache.read_verified(plan_key)
                self._plans[key] = EnginePlan(self.trt, self.runtime, data, network, self.gpu, self.cuda_graphs)
            return self._plans[key]

    def run_graph(self, name: str, size: int, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.plan(name, size).run(inputs)

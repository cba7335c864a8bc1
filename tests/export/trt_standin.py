"""A recording stand-in for the TensorRT, cuda-python and ``torch.cuda`` API surface the builder and backend use.

It is NOT TensorRT: TensorRT cannot be installed on the machines this project is developed on, so the
builder (:mod:`export.trt_build`) and the backend (:mod:`engine.backends.tensorrt_backend`) are tested
against this stand-in. It has exactly the names, signatures and return conventions the TensorRT 10.x
and 11.x Python API reference gives for the calls made (``Builder.create_network(flags) ->
INetworkDefinition``, ``IBuilderConfig.add_optimization_profile(profile) -> int`` (-1 when refused),
``IBuilderConfig.set_timing_cache(cache, ignore_mismatch) -> bool``, ``IBuilderConfig.get_timing_cache()
-> ITimingCache`` or None, ``Builder.build_serialized_network(network, config) -> IHostMemory`` or None,
``IExecutionContext.set_optimization_profile_async(index, stream) -> bool``, ``set_input_shape(name, shape)
-> bool``, ``set_tensor_address(name, ptr) -> bool``, ``execute_async_v3(stream) -> bool``,
``set_device_memory(ptr, size) -> None``; ``BuilderFlag.FP16``/``BF16`` exist on 10.x only), of
cuda-python's ``cudaGetLastError() -> (cudaError_t,)``, and of the ``torch.cuda`` calls (``device``,
``Stream``, ``current_stream``, ``stream``, ``CUDAGraph``, ``graph``). Every call is recorded in
``calls`` as ``(name, args)``; failures are switched on by attributes of :class:`Faults`.

"Device memory" is host memory: the stand-in engine computes ``y = 2 * x + 1`` (float32) through the
addresses bound with ``set_tensor_address``, so stale outputs show.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import types
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

Call = tuple[str, tuple[Any, ...]]


@dataclass
class Faults:
    """Which stand-in calls fail, and how (each as its API reports failure)."""

    add_profile: bool = False            # add_optimization_profile -> -1
    build: bool = False                  # build_serialized_network -> None
    no_timing_cache_after_build: bool = False  # get_timing_cache -> None
    set_profile: bool = False            # set_optimization_profile_async -> False
    set_input_shape: bool = False        # set_input_shape -> False
    execute_under_capture: bool = False  # execute_async_v3 -> False while the stream is captured (error left set)
    end_capture_raises: bool = False     # torch.cuda.graph's exit raises (capture invalidated)
    execute: bool = False                # execute_async_v3 -> False


@dataclass
class Recorder:
    """The shared state of one stand-in world: the call log, the faults, the device name, the CUDA error."""

    faults: Faults = field(default_factory=Faults)
    device_name: str = "gpu-a"
    calls: list[Call] = field(default_factory=list)
    last_error: int = 0
    capturing: dict[int, "StandInGraph"] = field(default_factory=dict)

    def record(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


# --- TensorRT -------------------------------------------------------------------------------------------


class StandInTimingCache:
    """``ITimingCache``: entries tagged with the device they were measured on."""

    def __init__(self, world: Recorder, device: str, entries: int):
        self.world, self.device, self.entries = world, device, entries

    def serialize(self) -> bytes:
        self.world.record("ITimingCache.serialize")
        return f"timing:{self.device}:{self.entries}".encode()


class StandInConfig:
    """``IBuilderConfig``."""

    def __init__(self, trt: Any, world: Recorder):
        self.trt, self.world = trt, world
        self.flags: list[Any] = []
        self.profiles: list[Any] = []
        self.timing_cache: StandInTimingCache | None = None
        self.builder_optimization_level = 3

    def set_flag(self, flag: Any) -> None:
        self.world.record("IBuilderConfig.set_flag", flag)
        self.flags.append(flag)

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self.world.record("IBuilderConfig.set_memory_pool_limit", pool, size)

    def add_optimization_profile(self, profile: Any) -> int:
        self.world.record("IBuilderConfig.add_optimization_profile", profile)
        if self.world.faults.add_profile:
            return -1
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> StandInTimingCache:
        self.world.record("IBuilderConfig.create_timing_cache", bytes(serialized_timing_cache))
        data = bytes(serialized_timing_cache)
        if not data:
            return StandInTimingCache(self.world, self.world.device_name, 0)
        _, device, entries = data.decode().split(":")
        return StandInTimingCache(self.world, device, int(entries))

    def set_timing_cache(self, cache: StandInTimingCache, ignore_mismatch: bool) -> bool:
        self.world.record("IBuilderConfig.set_timing_cache", cache.device, ignore_mismatch)
        if cache.device != self.world.device_name and not ignore_mismatch:
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> StandInTimingCache | None:
        self.world.record("IBuilderConfig.get_timing_cache")
        if self.world.faults.no_timing_cache_after_build:
            return None
        return self.timing_cache


class StandInProfile:
    """``IOptimizationProfile``."""

    def __init__(self, world: Recorder):
        self.world, self.shapes = world, {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 (TensorRT's names)
        self.world.record("IOptimizationProfile.set_shape", input, min, opt, max)
        self.shapes[input] = (min, opt, max)


class StandInBuilder:
    """``Builder``."""

    def __init__(self, trt: Any, logger: Any):
        self.trt, self.world = trt, trt.world

    def create_network(self, flags: int = 0) -> Any:
        self.world.record("Builder.create_network", flags)
        return types.SimpleNamespace(flags=flags)

    def create_builder_config(self) -> StandInConfig:
        self.world.record("Builder.create_builder_config")
        return StandInConfig(self.trt, self.world)

    def create_optimization_profile(self) -> StandInProfile:
        self.world.record("Builder.create_optimization_profile")
        return StandInProfile(self.world)

    def build_serialized_network(self, network: Any, config: StandInConfig) -> bytes | None:
        self.world.record("Builder.build_serialized_network", network.flags, list(config.flags))
        if self.world.faults.build:
            return None
        if config.timing_cache is not None:
            config.timing_cache.entries += 1
        return f"plan:{len(config.profiles)}".encode()


class StandInParser:
    """``OnnxParser``."""

    def __init__(self, network: Any, logger: Any):
        self.num_errors = 0

    def parse_from_file(self, model: str) -> bool:
        return True

    def get_error(self, index: int) -> str:
        return ""


class StandInContext:
    """``IExecutionContext`` of the ``y = 2 * x + 1`` stand-in engine (one input ``x``, one output ``y``, float32)."""

    def __init__(self, world: Recorder):
        self.world = world
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.memory: tuple[int, int] | None = None

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
        self.world.record("IExecutionContext.set_optimization_profile_async", profile_index, stream_handle)
        return not self.world.faults.set_profile

    def set_device_memory(self, memory: int, size: int) -> None:
        self.world.record("IExecutionContext.set_device_memory", memory, size)
        self.memory = (memory, size)

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.world.record("IExecutionContext.set_input_shape", name, tuple(shape))
        if self.world.faults.set_input_shape:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.world.record("IExecutionContext.set_tensor_address", name)
        self.addresses[name] = memory
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes.get("x", (-1,)) if name == "y" else self.shapes.get(name, (-1,))

    def _compute(self, x_address: int, y_address: int, count: int) -> None:
        x = np.ctypeslib.as_array((ctypes.c_float * count).from_address(x_address))
        y = np.ctypeslib.as_array((ctypes.c_float * count).from_address(y_address))
        y[:] = 2 * x + 1

    def execute_async_v3(self, stream_handle: int) -> bool:
        captured = self.world.capturing.get(stream_handle)
        self.world.record("IExecutionContext.execute_async_v3", stream_handle, captured is not None)
        if self.world.faults.execute:
            return False
        if captured is not None and self.world.faults.execute_under_capture:
            self.world.last_error = 901
            return False
        work = (self._compute, (self.addresses["x"], self.addresses["y"], int(np.prod(self.shapes["x"]))))
        if captured is not None:
            captured.work.append(work)
        else:
            work[0](*work[1])
        return True


class StandInEngine:
    """``ICudaEngine`` with ``profiles`` optimisation profiles."""

    def __init__(self, world: Recorder, profiles: int):
        self.world, self.num_optimization_profiles = world, profiles
        self.device_memory_size_v2 = 4096

    def get_tensor_dtype(self, name: str) -> Any:
        return "float32"

    def create_execution_context(self, strategy: Any) -> StandInContext:
        self.world.record("ICudaEngine.create_execution_context", strategy)
        return StandInContext(self.world)


class StandInRuntime:
    """``Runtime``."""

    def __init__(self, world: Recorder):
        self.world = world

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> StandInEngine | None:
        self.world.record("Runtime.deserialize_cuda_engine")
        text = bytes(serialized_engine).decode()
        return StandInEngine(self.world, int(text.split(":")[1])) if text.startswith("plan:") else None


def tensorrt(version: str, world: Recorder) -> types.ModuleType:
    """A stand-in ``tensorrt`` module of ``version`` (10.x keeps the FP16/BF16 builder flags, 11.x has none)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.world = world
    trt.Logger = type("Logger", (), {"WARNING": "WARNING", "__init__": lambda self, severity=None: None})
    trt.Builder = lambda logger: StandInBuilder(trt, logger)
    trt.OnnxParser = StandInParser
    trt.Runtime = lambda logger: StandInRuntime(world)
    flags = {"FP16": "BuilderFlag.FP16", "BF16": "BuilderFlag.BF16"} if version.startswith("10.") else {}
    trt.BuilderFlag = types.SimpleNamespace(TF32="BuilderFlag.TF32", **flags)
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 1})
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="MemoryPoolType.WORKSPACE")
    trt.ExecutionContextAllocationStrategy = types.SimpleNamespace(USER_MANAGED="USER_MANAGED", STATIC="STATIC")
    for name in ("float32", "float16", "bfloat16", "bool", "int32", "int64", "int8"):
        setattr(trt, name, name)
    return trt


# --- cuda-python -------------------------------------------------------------------------------------------


def cudart(world: Recorder) -> types.ModuleType:
    """A stand-in of cuda-python's runtime module (``cuda.bindings.runtime``): ``cudaGetLastError`` only."""
    module = types.ModuleType("cuda.bindings.runtime")
    module.cudaError_t = enum.IntEnum("cudaError_t", {"cudaSuccess": 0, "cudaErrorStreamCaptureInvalidated": 901})

    def cudaGetLastError() -> tuple[Any]:  # noqa: N802 (the CUDA name)
        error, world.last_error = world.last_error, 0
        world.record("cudaGetLastError", error)
        return (module.cudaError_t(error),)

    module.cudaGetLastError = cudaGetLastError
    return module


# --- torch.cuda --------------------------------------------------------------------------------------------


class StandInStream:
    """``torch.cuda.Stream``: a handle and recorded waits."""

    handles = iter(range(0x1000, 0x100000))

    def __init__(self, world: Recorder, device: Any = None):
        self.world, self.cuda_stream = world, next(StandInStream.handles)

    def wait_stream(self, stream: "StandInStream") -> None:
        self.world.record("Stream.wait_stream", self.cuda_stream, stream.cuda_stream)


class StandInGraph:
    """``torch.cuda.CUDAGraph``: replays the work the stand-in engine queued during capture."""

    def __init__(self, world: Recorder):
        self.world, self.work = world, []

    def replay(self) -> None:
        self.world.record("CUDAGraph.replay", len(self.work))
        for fn, args in self.work:
            fn(*args)


def torch_cuda(world: Recorder) -> types.SimpleNamespace:
    """A stand-in of the ``torch.cuda`` calls the backend makes."""
    caller = StandInStream(world)
    current = [caller]

    @contextlib.contextmanager
    def device(index: Any) -> Iterator[None]:
        world.record("cuda.device", str(index))
        yield

    @contextlib.contextmanager
    def stream(s: StandInStream) -> Iterator[None]:
        world.record("cuda.stream", s.cuda_stream)
        current.append(s)
        try:
            yield
        finally:
            current.pop()

    @contextlib.contextmanager
    def graph(cuda_graph: StandInGraph, stream: StandInStream, capture_error_mode: str = "global") -> Iterator[None]:
        world.record("cuda.graph", stream.cuda_stream, capture_error_mode)
        world.capturing[stream.cuda_stream] = cuda_graph
        try:
            yield
        finally:
            del world.capturing[stream.cuda_stream]
        if world.faults.end_capture_raises:
            world.last_error = 901
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

    return types.SimpleNamespace(device=device, stream=stream, graph=graph, caller=caller,
                                 Stream=lambda dev=None: StandInStream(world, dev),
                                 current_stream=lambda dev=None: current[-1],
                                 CUDAGraph=lambda: StandInGraph(world))

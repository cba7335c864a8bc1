"""The TensorRT builder and backend against a recording STAND-IN of TensorRT, cuda-python and torch.cuda.

TensorRT cannot be installed here, so these tests run the real :mod:`export.trt_build` and
:mod:`engine.backends.tensorrt_backend` code on ``tests/export/trt_standin.py``, which has the API's
names, signatures and return conventions (TensorRT 10.x and 11.x) but is not TensorRT: they check call
order, that every return value is checked, that a failed CUDA-graph capture is never replayed, that a
foreign timing cache is rebuilt rather than fatal, and that a built plan is never lost. What TensorRT
itself does with our graphs is tested by ``test_backends.py::test_tensorrt_clip_matches_torch`` where
TensorRT exists.
"""

from __future__ import annotations

import sys
import threading
import time
import types
from pathlib import Path

import pytest
import torch

from engine.backends.tensorrt_backend import EnginePlan, PlanDevice, import_cudart
from export.engine_cache import EngineCache
from export.networks.spec import Profile
from export.trt_build import (BuildSettings, TensorRTUnavailable, build_plan, import_tensorrt, plan_key,
                              timing_cache_path)
from tests.export import trt_standin
from tests.export.trt_standin import Faults, Recorder

VERSIONS = ("10.8.0", "11.1.0")


class StandInNetwork:
    """A network of one input ``x`` ``[1, n]`` and one output ``y``: a static 4-wide profile, then a dynamic one."""

    name = "standin"
    input_names = ["x"]
    output_names = ["y"]

    def profiles(self) -> list[Profile]:
        return [Profile("b1-f4", {"x": ((1, 4), (1, 4), (1, 4))}), Profile("dynamic", {"x": ((1, 1), (1, 4), (1, 8))})]


@pytest.fixture
def world() -> Recorder:
    return Recorder()


def use_tensorrt(monkeypatch: pytest.MonkeyPatch, version: str, world: Recorder) -> types.ModuleType:
    trt = trt_standin.tensorrt(version, world)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def build(tmp_path: Path, precision: str = "fp16", **settings) -> tuple[Path, Path, dict]:
    target, timings = tmp_path / "net.plan", tmp_path / "timing" / "gpu-a.cache"
    meta = build_plan(tmp_path / "model.onnx", StandInNetwork(), BuildSettings(precision, **settings), target, timings)
    return target, timings, meta


# --- builder ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_builder_call_order_and_precision_per_tensorrt_major(monkeypatch, world, tmp_path, version) -> None:
    use_tensorrt(monkeypatch, version, world)
    target, timings, meta = build(tmp_path, workspace_gib=2.0, optimization_level=4)
    names = world.names()
    assert names.index("IBuilderConfig.set_timing_cache") < names.index("Builder.build_serialized_network") \
        < names.index("IBuilderConfig.get_timing_cache") < names.index("ITimingCache.serialize")
    assert names.count("IBuilderConfig.add_optimization_profile") == 2
    flags = dict(world.calls)["Builder.build_serialized_network"]
    assert flags == (0, ["BuilderFlag.FP16"] if version.startswith("10.") else [])
    assert ("IBuilderConfig.set_memory_pool_limit", ("MemoryPoolType.WORKSPACE", 2 * 2**30)) in world.calls
    assert target.read_bytes() == b"plan:2"
    assert timings.read_bytes() == b"timing:gpu-a:1" and meta["timing_cache"] == str(timings)


def test_bf16_needs_tensorrt_10(monkeypatch, world, tmp_path) -> None:
    use_tensorrt(monkeypatch, "10.8.0", world)
    build(tmp_path, "bf16")
    assert dict(world.calls)["Builder.build_serialized_network"] == (0, ["BuilderFlag.BF16"])
    use_tensorrt(monkeypatch, "11.1.0", world)
    with pytest.raises(RuntimeError, match="bf16 plans need TensorRT 10"):
        build(tmp_path, "bf16")


@pytest.mark.parametrize("version, supported", [("8.6.1", False), ("10.0.1", False), ("10.1.0", True),
                                                ("11.4.0", True), ("12.0.0", False)])
def test_tensorrt_versions(monkeypatch, world, version, supported) -> None:
    use_tensorrt(monkeypatch, version, world)
    if supported:
        assert import_tensorrt().__version__ == version
    else:
        with pytest.raises(TensorRTUnavailable, match=f"TensorRT {version} is not supported") as info:
            import_tensorrt()
        assert "\n" not in str(info.value)


def test_a_foreign_timing_cache_is_replaced_not_fatal(monkeypatch, world, tmp_path) -> None:
    use_tensorrt(monkeypatch, "10.8.0", world)
    foreign = tmp_path / "timing" / "gpu-a.cache"
    foreign.parent.mkdir()
    foreign.write_bytes(b"timing:gpu-b:7")
    target, timings, _ = build(tmp_path)
    attached = [args for name, args in world.calls if name == "IBuilderConfig.set_timing_cache"]
    assert attached == [("gpu-b", False), ("gpu-a", False)]
    assert target.read_bytes() == b"plan:2" and timings.read_bytes() == b"timing:gpu-a:1"


def test_a_plan_is_never_lost_when_the_timing_cache_cannot_be_saved(monkeypatch, world, tmp_path) -> None:
    use_tensorrt(monkeypatch, "11.1.0", world)
    world.faults = Faults(no_timing_cache_after_build=True)
    cache = EngineCache(tmp_path / "cache")
    key = plan_key_for_standin()
    timings = tmp_path / "timing.cache"
    path = cache.get_or_build(key, lambda target: build_plan(tmp_path / "m.onnx", StandInNetwork(),
                                                             BuildSettings("fp16"), target, timings), checksum=True)
    assert cache.read_verified(key) == b"plan:2" and path.exists()
    assert cache.metadata(key)["timing_cache"] is None and not timings.exists()


def plan_key_for_standin():
    from export.engine_cache import CacheKey

    return CacheKey(kind="plan", network="standin", weights="w", precision="fp16", signature={},
                    versions={"tensorrt": "11.1.0"}, compute_capability="9.0")


@pytest.mark.parametrize("fault, message", [("add_profile", "refused optimisation profile b1-f4"),
                                            ("build", "failed to build standin")])
def test_builder_failures_are_one_line_errors(monkeypatch, world, tmp_path, fault, message) -> None:
    use_tensorrt(monkeypatch, "10.8.0", world)
    world.faults = Faults(**{fault: True})
    with pytest.raises(RuntimeError, match=message) as info:
        build(tmp_path)
    assert "\n" not in str(info.value) and not (tmp_path / "net.plan").exists()


def test_timing_caches_are_per_gpu_and_tensorrt_version(tmp_path) -> None:
    a = timing_cache_path(tmp_path, "NVIDIA H100 80GB HBM3", "9.0", "10.8.0")
    assert a == tmp_path / "timing" / "nvidia-h100-80gb-hbm3-sm90-trt10.8.0.cache"
    assert len({a, timing_cache_path(tmp_path, "NVIDIA A10", "8.6", "10.8.0"),
                timing_cache_path(tmp_path, "NVIDIA A40", "8.6", "10.8.0"),
                timing_cache_path(tmp_path, "NVIDIA H100 80GB HBM3", "9.0", "11.1.0")}) == 4


def test_builder_settings_are_in_the_plan_key(monkeypatch) -> None:
    from export import onnx_export

    monkeypatch.setattr(onnx_export, "onnx_key", lambda network, precision: plan_key_for_standin())
    network = types.SimpleNamespace(name="n", precisions=("fp32", "fp16"), weights_digest=lambda: "w",
                                    signature=lambda: {}, profiles=lambda: [])
    keys = {plan_key(network, settings, "10.8.0", "9.0").digest()
            for settings in (BuildSettings("fp16"), BuildSettings("fp16", 4.0), BuildSettings("fp16", 8.0),
                             BuildSettings("fp16", optimization_level=5))}
    assert len(keys) == 4
    with pytest.raises(ValueError, match="optimisation level is 0-5"):
        BuildSettings("fp16", optimization_level=6)


# --- backend ---------------------------------------------------------------------------------------------


def make_plan(world: Recorder, cuda_graphs: bool = True, gpu: PlanDevice | None = None) -> EnginePlan:
    trt = trt_standin.tensorrt("10.8.0", world)
    gpu = gpu or PlanDevice(torch.device("cpu"), trt_standin.cudart(world), cuda=trt_standin.torch_cuda(world))
    return EnginePlan(trt, trt.Runtime(None), b"plan:2", StandInNetwork(), gpu, cuda_graphs)


def feed(width: int, value: float) -> dict[str, torch.Tensor]:
    return {"x": torch.arange(width, dtype=torch.float32)[None] + value}


def test_backend_call_order_on_a_dedicated_stream(world) -> None:
    plan = make_plan(world, cuda_graphs=False)
    out = plan.run(feed(3, 1.0))["y"]
    assert torch.equal(out, 2 * feed(3, 1.0)["x"] + 1)
    dedicated = plan.gpu.stream.cuda_stream
    names = world.names()
    order = ["ICudaEngine.create_execution_context", "IExecutionContext.set_optimization_profile_async",
             "IExecutionContext.set_device_memory", "IExecutionContext.set_input_shape",
             "IExecutionContext.execute_async_v3"]
    assert [names.index(n) for n in order] == sorted(names.index(n) for n in order)
    calls = dict(world.calls)
    assert calls["ICudaEngine.create_execution_context"] == ("USER_MANAGED",)
    assert calls["IExecutionContext.set_optimization_profile_async"] == (1, dedicated)
    assert calls["IExecutionContext.execute_async_v3"] == (dedicated, False)
    assert calls["IExecutionContext.set_device_memory"] == (plan.gpu.address, 4096)
    caller = plan.gpu.cuda.caller.cuda_stream
    assert ("Stream.wait_stream", (dedicated, caller)) in world.calls    # inputs before the launch
    assert world.calls[-1] == ("Stream.wait_stream", (caller, dedicated))  # outputs after it
    assert "cuda.device" in names


def test_a_static_feed_is_captured_once_then_replayed(world) -> None:
    plan = make_plan(world)
    for value in (0.0, 5.0, 9.0):
        assert torch.equal(plan.run(feed(4, value))["y"], 2 * feed(4, value)["x"] + 1)
    assert world.names().count("cuda.graph") == 1 and world.names().count("CUDAGraph.replay") == 2
    assert ("cuda.graph", (plan.gpu.stream.cuda_stream, "thread_local")) in world.calls


@pytest.mark.parametrize("fault", ["execute_under_capture", "end_capture_raises"])
def test_a_failed_capture_is_never_replayed(world, fault) -> None:
    world.faults = Faults(**{fault: True})
    plan = make_plan(world)
    for value in (0.0, 5.0, 9.0):
        assert torch.equal(plan.run(feed(4, value))["y"], 2 * feed(4, value)["x"] + 1), value
    assert "CUDAGraph.replay" not in world.names()
    assert ("cudaGetLastError", (901,)) in world.calls and world.last_error == 0


@pytest.mark.parametrize("fault, message", [("set_profile", "set_optimization_profile_async"),
                                            ("set_input_shape", "set_input_shape"),
                                            ("execute", "execute_async_v3")])
def test_every_runtime_return_is_checked(world, fault, message) -> None:
    world.faults = Faults(**{fault: True})
    with pytest.raises(RuntimeError, match=f"TensorRT {message}.* failed for the standin plan"):
        make_plan(world, cuda_graphs=False).run(feed(3, 1.0))


def test_threads_sharing_a_backend_run_one_at_a_time(world) -> None:
    """Two plans on one PlanDevice, four threads: each gets its own input's answer, and no two runs overlap."""
    first = make_plan(world, cuda_graphs=False)
    second = make_plan(world, cuda_graphs=False, gpu=first.gpu)
    inside, most, errors = [0], [0], []
    execute = trt_standin.StandInContext.execute_async_v3

    def slow_execute(self, stream_handle: int) -> bool:
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.002)
        inside[0] -= 1
        return execute(self, stream_handle)

    def work(plan: EnginePlan, seed: int) -> None:
        for step in range(15):
            x = feed(3 + (seed + step) % 4, float(seed * 100 + step))
            if not torch.equal(plan.run(x)["y"], 2 * x["x"] + 1):
                errors.append((seed, step))

    trt_standin.StandInContext.execute_async_v3 = slow_execute
    try:
        threads = [threading.Thread(target=work, args=(plan, seed))
                   for seed, plan in enumerate((first, second, first, second))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        trt_standin.StandInContext.execute_async_v3 = execute
    assert errors == [] and most[0] == 1


# --- cuda-python import paths ------------------------------------------------------------------------------


def test_cudart_from_cuda_python_13_and_12(monkeypatch, world) -> None:
    runtime = trt_standin.cudart(world)
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = runtime
    monkeypatch.setitem(sys.modules, "cuda", types.ModuleType("cuda"))
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
    assert import_cudart() is runtime
    old = types.ModuleType("cuda")
    old.cudart = runtime
    monkeypatch.setitem(sys.modules, "cuda", old)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    assert import_cudart() is runtime
    monkeypatch.setitem(sys.modules, "cuda", None)
    with pytest.raises(TensorRTUnavailable, match="cuda-python is not installed"):
        import_cudart()

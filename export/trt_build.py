"""TensorRT plans from the exported ONNX graphs: builder configuration, profiles, timing cache.

``python -m export.trt_build --model tiny|DIR [--size N] [--precision fp16|bf16|fp32] [--out DIR]``
(what ``make engines`` runs) exports every network (cached), then builds one plan per network
with the optimisation profiles of :mod:`export.networks` (static per-bucket profiles first, one
dynamic profile for the first and last clips), sharing one timing cache file across builds.
Plans go into the keyed cache (:mod:`export.engine_cache`): the key holds the weights hash, the
network, the graph signature and profiles, the precision, the TensorRT version and the GPU's
compute capability, so a plan built for anything else is never loaded.

Precisions: ``fp16`` builds from the fp16 graph with the FP16 flag (inputs and outputs float16);
``bf16`` builds from the fp32 graph with the BF16 flag; ``fp32`` from the fp32 graph (TF32 allowed).
The audio network is always built in fp32.

TensorRT is imported lazily: without it every entry point raises :class:`TensorRTUnavailable`
with one line saying so (the command prints that line and exits 1).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from export.engine_cache import CacheKey, EngineCache, default_cache_dir
from export.networks import NETWORK_NAMES, Network, StreamShapes, make_network

PLAN_PRECISIONS = ("fp32", "fp16", "bf16")
TIMING_CACHE = "timing.cache"


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or a CUDA device for it) is not available here."""


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or :class:`TensorRTUnavailable` with a one-line reason."""
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTUnavailable(f"TensorRT is not installed ({exc}); install the GPU extras from NVIDIA's "
                                  "index (pip install tensorrt; see README, 'GPU extras')") from None
    return tensorrt


def compute_capability(device: torch.device | str | None = None) -> str:
    """``"major.minor"`` of the CUDA device (part of every plan key)."""
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT plans need a CUDA device, and none is available")
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}.{minor}"


def onnx_precision(precision: str) -> str:
    """The precision of the ONNX graph a plan of ``precision`` is built from."""
    if precision not in PLAN_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PLAN_PRECISIONS)}, got {precision!r}")
    return "fp16" if precision == "fp16" else "fp32"


def plan_precision(network: Network, precision: str) -> str:
    """The precision a network's plan is really built in: the audio network (fp32 only) stays fp32."""
    onnx_precision(precision)
    return precision if "fp16" in network.precisions else "fp32"


def plan_key(network: Network, precision: str, tensorrt_version: str, capability: str) -> CacheKey:
    """The cache key of ``network``'s plan: everything that makes a plan stale."""
    from export.onnx_export import onnx_key, toolchain

    built = plan_precision(network, precision)
    graph = onnx_key(network, onnx_precision(built))
    return CacheKey(kind="plan", network=network.name, weights=network.weights_digest(), precision=built,
                    signature=network.signature(), profiles=[p.to_dict() for p in network.profiles()],
                    versions={**toolchain(), "tensorrt": tensorrt_version, "onnx_graph": graph.digest()},
                    compute_capability=capability, size=graph.size)


def build_plan(onnx_path: Path, network: Network, precision: str, target: Path, timing_cache: Path,
               workspace_gib: float | None = None, optimization_level: int = 3) -> dict[str, Any]:
    """Build one serialized plan from ``onnx_path`` into ``target``; returns metadata to record.

    The timing cache file is read before and rewritten (atomically) after the build, so later
    builds (other networks, other sizes) reuse the kernel timings.
    """
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    graph = builder.create_network(flags)
    parser = trt.OnnxParser(graph, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    if workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    config.builder_optimization_level = optimization_level
    profiles = network.profiles()
    for profile in profiles:
        trt_profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profile.shapes.items():
            trt_profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(trt_profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(graph, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build {network.name} ({precision}); see the log above")
    target.write_bytes(memoryview(serialized))
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = timing_cache.with_name(f".{timing_cache.name}.tmp")
    tmp.write_bytes(memoryview(config.get_timing_cache().serialize()))
    os.replace(tmp, timing_cache)
    return {"tensorrt": trt.__version__, "profiles": [p.name for p in profiles], "onnx": str(onnx_path),
            "build_only_seconds": round(time.perf_counter() - start, 3)}


def cached_plan(cache: EngineCache, network: Network, precision: str, build: bool = True,
                workspace_gib: float | None = None) -> CacheKey:
    """The key of a fresh plan for ``network`` in ``cache``, exporting and building it when missing.

    With ``build=False`` nothing is exported or built: a missing plan is a :class:`FileNotFoundError`
    naming what the cache holds instead, a stale one a :class:`~export.engine_cache.StalePlanError`.
    """
    from export.onnx_export import GRAPH_FILE, cached_export

    trt = import_tensorrt()
    key = plan_key(network, precision, trt.__version__, compute_capability())
    if not build:
        entry = cache.status(key)
        if entry.state == "missing":
            raise FileNotFoundError(cache.explain_missing(key) + "\nbuild it with: make engines MODEL=... "
                                    f"SIZE={network.shapes.size} PRECISION={precision}")
        if entry.state == "stale":
            raise cache.refuse(entry)
        return key
    graph_dir = cached_export(cache, network, onnx_precision(key.precision))

    def make(target: Path) -> dict[str, Any]:
        return build_plan(graph_dir / GRAPH_FILE, network, key.precision, target, cache.root / TIMING_CACHE,
                          workspace_gib)

    cache.get_or_build(key, make, on_stale="rebuild", checksum=True)
    return key


def main(argv: list[str] | None = None) -> int:
    """``make engines``: one plan per network; one line per plan, or one line saying why not."""
    parser = argparse.ArgumentParser(prog="python -m export.trt_build", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a preset (tiny, sd15) or a model directory")
    parser.add_argument("--size", type=int, default=None, help="portrait side in pixels (default: the model's)")
    parser.add_argument("--precision", choices=PLAN_PRECISIONS, default="fp16")
    parser.add_argument("--out", type=Path, default=None, help=f"cache directory (default {default_cache_dir()})")
    parser.add_argument("--batches", default="1,2,3", help="guidance branch counts to serve (default 1,2,3)")
    parser.add_argument("--workspace-gib", type=float, default=None, help="builder workspace limit")
    args = parser.parse_args(argv)
    try:
        import_tensorrt()
        compute_capability()
    except TensorRTUnavailable as exc:
        print(f"make engines: {exc}", file=sys.stderr)
        return 1
    from tqdm import tqdm

    from export.onnx_export import open_model

    try:
        batches = tuple(int(b) for b in args.batches.split(","))
        model = open_model(args.model)
        shapes = StreamShapes.for_model(model.config, size=args.size, batches=batches)
        cache = EngineCache(args.out)
        rows = []
        for name in tqdm(NETWORK_NAMES, desc="engines", unit="plan", file=sys.stderr):
            network = make_network(name, model, shapes)
            key = cached_plan(cache, network, args.precision, workspace_gib=args.workspace_gib)
            meta = cache.metadata(key)
            rows.append(f"{name:12s} {key.precision}  {len(key.profiles)} profiles  "
                        f"{sum(meta['files'].values()) / 2**20:9.1f} MiB  {cache.path(key)}")
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"make engines: {exc}", file=sys.stderr)
        return 2
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

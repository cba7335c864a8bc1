"""TensorRT plans from the exported ONNX graphs: builder configuration, profiles, timing cache.

``python -m export.trt_build --model tiny|DIR [--size N] [--precision fp16|bf16|fp32] [--out DIR]``
(what ``make engines`` runs) exports every network (cached), then builds one plan per network
with the optimisation profiles of :mod:`export.networks.spec` (static per-bucket profiles first, one
dynamic profile for the first and last clips). Plans go into the keyed cache
(:mod:`export.engine_cache`): the key holds the weights hash, the network, the graph signature and
profiles, the precision, the builder's workspace limit and optimisation level, the TensorRT version
and the GPU's compute capability, so a plan built for anything else is never loaded.

TensorRT 10 (10.1 or later) and 11 are supported (:data:`TENSORRT_MAJORS`). Precisions: ``fp16`` builds from the
fp16 graph, on TensorRT 10 with the FP16 builder flag, on 11 strongly typed (11 removed the
precision flags: the graph's types are the plan's); ``bf16`` builds from the fp32 graph with the
BF16 flag, so on TensorRT 10 only (there is no bf16 graph to build strongly typed from);
``fp32`` from the fp32 graph. The audio network is always built in fp32.

Kernel timings are kept per GPU model, compute capability and TensorRT version
(``timing/<gpu>-sm<cc>-trt<version>.cache`` in the cache root): a file TensorRT refuses (another
device's, damaged) is replaced by a fresh one, and a timing cache that cannot be saved costs the
timings only, never the plan just built.

TensorRT is imported lazily: without it every entry point raises :class:`TensorRTUnavailable`
with one line saying so (the command prints that line and exits 1).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from export.engine_cache import CacheKey, EngineCache, default_cache_dir
from export.networks import NETWORK_NAMES, make_network
from export.networks.spec import Network, StreamShapes

PLAN_PRECISIONS = ("fp32", "fp16", "bf16")
TENSORRT_MAJORS = (10, 11)
TIMING_DIR = "timing"
LOG = logging.getLogger(__name__)


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or a CUDA device for it) is not available here."""


def import_tensorrt() -> Any:
    """The ``tensorrt`` module (a supported major version), or :class:`TensorRTUnavailable` with a one-line reason."""
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTUnavailable(f"TensorRT is not installed ({exc}); install the GPU extras from NVIDIA's "
                                  "index (pip install tensorrt; see README, 'Backends, ONNX and TensorRT "
                                  "engines')") from None
    tensorrt_major(tensorrt)
    return tensorrt


def tensorrt_major(trt: Any) -> int:
    """The major version of the ``tensorrt`` module; :class:`TensorRTUnavailable` unless it is 10.1 or later and
    at most :data:`TENSORRT_MAJORS`' last (10.1 brought the sized ``set_device_memory`` and
    ``device_memory_size_v2`` that 11 keeps)."""
    major, minor = (int(part) for part in str(trt.__version__).split(".")[:2])
    if (major, minor) < (10, 1) or major > TENSORRT_MAJORS[-1]:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} is not supported: this engine builds and runs plans "
                                  f"with TensorRT 10.1 or later, up to {TENSORRT_MAJORS[-1]}.x")
    return major


def cuda_device(device: torch.device | str | None = None) -> torch.device:
    """``device`` as an indexed CUDA device (``cuda`` alone means the current one)."""
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT plans need a CUDA device, and none is available")
    device = torch.device("cuda" if device is None else device)
    if device.type != "cuda":
        raise ValueError(f"TensorRT plans run on a CUDA device, not {device}")
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())


def compute_capability(device: torch.device | str | None = None) -> str:
    """``"major.minor"`` of the CUDA device (part of every plan key); ``None`` means the current device."""
    major, minor = torch.cuda.get_device_capability(cuda_device(device))
    return f"{major}.{minor}"


def timing_cache_path(root: Path, gpu_name: str, capability: str, tensorrt_version: str) -> Path:
    """The timing cache file for one GPU model (``torch.cuda.get_device_name``) and compute capability
    (``"major.minor"``) under this TensorRT version: GPUs never share one, as plans never do."""
    model = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower()
    return root / TIMING_DIR / f"{model}-sm{capability.replace('.', '')}-trt{tensorrt_version}.cache"


def onnx_precision(precision: str) -> str:
    """The precision of the ONNX graph a plan of ``precision`` is built from."""
    if precision not in PLAN_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PLAN_PRECISIONS)}, got {precision!r}")
    return "fp16" if precision == "fp16" else "fp32"


def plan_precision(network: Network, precision: str) -> str:
    """The precision a network's plan is really built in: the audio network (fp32 only) stays fp32."""
    onnx_precision(precision)
    return precision if "fp16" in network.precisions else "fp32"


@dataclass(frozen=True)
class BuildSettings:
    """How a plan is built, beyond its graph: every field changes the plan, so every field is in its key.

    Attributes:
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (asked for; see :func:`plan_precision`).
        workspace_gib: the builder's workspace pool limit in GiB (None: TensorRT's default, the device's memory).
        optimization_level: the builder optimisation level, 0-5 (TensorRT's default is 3).
    """

    precision: str = "fp16"
    workspace_gib: float | None = None
    optimization_level: int = 3

    def __post_init__(self) -> None:
        onnx_precision(self.precision)
        if not 0 <= self.optimization_level <= 5:
            raise ValueError(f"the builder optimisation level is 0-5, got {self.optimization_level}")
        if self.workspace_gib is not None and self.workspace_gib <= 0:
            raise ValueError(f"the workspace limit must be positive, got {self.workspace_gib} GiB")

    def key_fields(self) -> dict[str, str]:
        """The builder settings as plan-key entries."""
        workspace = "default" if self.workspace_gib is None else repr(float(self.workspace_gib))
        return {"workspace_gib": workspace, "builder_optimization_level": str(self.optimization_level)}


def plan_key(network: Network, settings: BuildSettings, tensorrt_version: str, capability: str) -> CacheKey:
    """The cache key of ``network``'s plan: everything that makes a plan stale."""
    from export.onnx_export import onnx_key, toolchain

    built = plan_precision(network, settings.precision)
    graph = onnx_key(network, onnx_precision(built))
    return CacheKey(kind="plan", network=network.name, weights=network.weights_digest(), precision=built,
                    signature=network.signature(), profiles=[p.to_dict() for p in network.profiles()],
                    versions={**toolchain(), "tensorrt": tensorrt_version, "onnx_graph": graph.digest(),
                              **settings.key_fields()},
                    compute_capability=capability, size=graph.size)


def network_flags(trt: Any, precision: str) -> int:
    """``create_network`` flags for a plan of ``precision``: none. TensorRT 10 builds weakly typed (precision from
    :func:`precision_flags`); every TensorRT 11 network is strongly typed, so the plan takes the graph's types,
    and a bf16 plan (built from the fp32 graph) cannot be made there."""
    if tensorrt_major(trt) >= 11 and precision == "bf16":
        raise RuntimeError("bf16 plans need TensorRT 10: TensorRT 11 builds in the graph's own types "
                           "and the exporter writes fp32 and fp16 graphs only; use PRECISION=fp16")
    return 0


def precision_flags(trt: Any, precision: str) -> list[Any]:
    """The builder flags that enable ``precision`` (TensorRT 10's weak typing; none on 11 or for fp32)."""
    if tensorrt_major(trt) >= 11 or precision == "fp32":
        return []
    return [trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.BF16]


def attach_timing_cache(config: Any, timing_cache: Path) -> Any:
    """Attach the timing cache read from ``timing_cache`` to ``config``; one TensorRT refuses is replaced by an
    empty one (logged). Returns the attached ``ITimingCache``."""
    data = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(data) if data else None
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        if data:
            LOG.warning("TensorRT refused the timing cache %s (another device's or damaged); starting a new one",
                        timing_cache)
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            raise RuntimeError("TensorRT could not attach an empty timing cache")
    return cache


def save_timing_cache(config: Any, timing_cache: Path) -> bool:
    """Write the config's timing cache to ``timing_cache`` atomically; False (logged) when it cannot be saved."""
    cache = config.get_timing_cache()
    if cache is None:
        LOG.warning("TensorRT returned no timing cache after the build; %s is left as it was", timing_cache)
        return False
    tmp = timing_cache.with_name(f".{timing_cache.name}.{os.getpid()}.tmp")
    try:
        serialized = cache.serialize()
        if serialized is None:
            raise RuntimeError("serialize() returned None")
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(memoryview(serialized))
        os.replace(tmp, timing_cache)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        LOG.warning("could not save the timing cache %s (%s); the plan is kept", timing_cache, exc)
        return False
    return True


def build_plan(onnx_path: Path, network: Network, settings: BuildSettings, target: Path,
               timing_cache: Path) -> dict[str, Any]:
    """Build one serialized plan from ``onnx_path`` into ``target`` on the current CUDA device; returns metadata
    to record.

    ``settings.precision`` is the plan's own (after :func:`plan_precision`). The timing cache file is read before
    and rewritten (atomically) after the build, so later builds (other networks, other sizes) reuse the timings;
    the plan is written first, and nothing after it can fail the build.
    """
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    graph = builder.create_network(network_flags(trt, settings.precision))
    parser = trt.OnnxParser(graph, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    for flag in precision_flags(trt, settings.precision):
        config.set_flag(flag)
    if settings.workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.workspace_gib * 2**30))
    config.builder_optimization_level = settings.optimization_level
    profiles = network.profiles()
    for number, profile in enumerate(profiles):
        trt_profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profile.shapes.items():
            trt_profile.set_shape(name, low, opt, high)
        index = config.add_optimization_profile(trt_profile)
        if index != number:
            raise RuntimeError(f"TensorRT refused optimisation profile {profile.name} of {network.name} "
                               f"(add_optimization_profile returned {index}, expected {number})")
    attach_timing_cache(config, timing_cache)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(graph, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build {network.name} ({settings.precision}); see the log above")
    target.write_bytes(memoryview(serialized))
    seconds = round(time.perf_counter() - start, 3)
    saved = save_timing_cache(config, timing_cache)
    return {"tensorrt": trt.__version__, "profiles": [p.name for p in profiles], "onnx": str(onnx_path),
            "build_only_seconds": seconds, "timing_cache": str(timing_cache) if saved else None}


def cached_plan(cache: EngineCache, network: Network, settings: BuildSettings, build: bool = True,
                device: torch.device | str | None = None) -> CacheKey:
    """The key of a fresh plan for ``network`` on ``device`` (None: the current CUDA device) in ``cache``,
    exporting and building it there when missing.

    With ``build=False`` nothing is exported or built: a missing plan is a :class:`FileNotFoundError`
    naming what the cache holds instead, a stale one a :class:`~export.engine_cache.StalePlanError`.
    """
    from export.onnx_export import GRAPH_FILE, cached_export

    trt = import_tensorrt()
    device = cuda_device(device)
    capability = compute_capability(device)
    key = plan_key(network, settings, trt.__version__, capability)
    if not build:
        entry = cache.status(key)
        if entry.state == "missing":
            raise FileNotFoundError(cache.explain_missing(key) + "\nbuild it with: make engines MODEL=... "
                                    f"SIZE={network.shapes.size} PRECISION={settings.precision}")
        if entry.state == "stale":
            raise cache.refuse(entry)
        return key
    network_flags(trt, key.precision)
    graph_dir = cached_export(cache, network, onnx_precision(key.precision))
    built = BuildSettings(key.precision, settings.workspace_gib, settings.optimization_level)
    timings = timing_cache_path(cache.root, torch.cuda.get_device_name(device), capability, trt.__version__)

    def make(target: Path) -> dict[str, Any]:
        with torch.cuda.device(device):
            return build_plan(graph_dir / GRAPH_FILE, network, built, target, timings)

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
    parser.add_argument("--optimization-level", type=int, default=3, help="builder optimisation level, 0-5")
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
        settings = BuildSettings(args.precision, args.workspace_gib, args.optimization_level)
        rows = []
        for name in tqdm(NETWORK_NAMES, desc="engines", unit="plan", file=sys.stderr):
            network = make_network(name, model, shapes)
            key = cached_plan(cache, network, settings)
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

"""ONNX Runtime backend: one inference session per exported network, exported on first use.

The graphs come from :mod:`export.onnx_export` through the keyed cache (:mod:`export.engine_cache`):
the first call of a network at a portrait size exports it (or finds it already exported for the
same weights, size, precision and exporter), later calls reuse the session. The CPU execution
provider runs here; on a CUDA device the CUDA execution provider (``onnxruntime-gpu``) runs with
IO binding on tensors owned by torch, on torch's current stream, so nothing goes through the host.

On the CPU, ONNX Runtime's graph optimisation (about 2 s for talking64's backbone, every time a process opens
it) is done once: the optimised graph is an artifact of the same cache (kind ``"ort"``), keyed by the exported
graph's key plus ONNX Runtime's version, the CPU's instruction-set flags (the optimised graph may use layouts
only this CPU runs) and the exported graph's metadata (a re-export makes a new one, which replaces the old),
and later sessions load it with optimisation off.

The face locator, the speed encoder and the image projection (once per session, microseconds) run in torch
(:class:`~engine.backends.graph.GraphBackend`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.backends.graph import GraphBackend
from engine.models.model import EmoteModel
from export.engine_cache import CacheKey, EngineCache, metadata_path
from export.networks.spec import Network
from export.onnx_export import GRAPH_FILE, cached_export, onnx_key

PRECISION_OF = {torch.float32: "fp32", torch.float16: "fp16"}
OPTIMIZED_GRAPH, OPTIMIZED_DATA = "graph.onnx", "graph.data"
NUMPY_OF = {torch.float32: np.float32, torch.float16: np.float16, torch.bool: np.bool_}


@functools.lru_cache(maxsize=1)
def cpu_digest() -> str:
    """A short digest of this CPU (architecture, name, instruction-set flags), read once per process."""
    flags = ""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        pass
    return hashlib.sha256(f"{platform.machine()} {platform.processor()} {flags}".encode()).hexdigest()[:10]


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a one-line error saying what to install."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeError(f"the onnxruntime backend needs ONNX Runtime: pip install onnxruntime (CPU) or "
                           f"onnxruntime-gpu (CUDA; never both in one environment) ({exc})") from None
    return onnxruntime


class OnnxRuntimeBackend(GraphBackend):
    """Runs the exported networks of ``model`` with ONNX Runtime.

    Args:
        model: the networks (their weights are exported; they are not moved or converted).
        device: ``cpu`` (CPU execution provider) or ``cuda[:i]`` (CUDA execution provider).
        dtype: float32 (fp32 graphs) or float16 (fp16 graphs; the audio graph stays float32).
        cache_dir: where graphs are exported (default: :func:`export.engine_cache.default_cache_dir`).
        on_stale: ``"rebuild"`` or ``"refuse"`` a cached graph whose metadata does not match.
        threads: intra-op threads (None: torch's, ``torch.get_num_threads()`` when the backend is made, so that
            ONNX Runtime follows ``OMP_NUM_THREADS`` and a replica's CPU share as torch does; ONNX Runtime's
            own default takes every core, beside torch's pool and every other session's).
    """

    name = "onnxruntime"

    def __init__(self, model: EmoteModel, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 cache_dir: str | Path | None = None, on_stale: str = "rebuild", threads: int | None = None):
        self.ort = import_onnxruntime()
        if dtype not in PRECISION_OF:
            raise ValueError(f"the onnxruntime backend runs float32 or float16, not {dtype}")
        self.device, self.dtype, self.precision = torch.device(device), dtype, PRECISION_OF[dtype]
        self.cuda = self.device.type == "cuda"
        if self.cuda and "CUDAExecutionProvider" not in self.ort.get_available_providers():
            raise RuntimeError("--device cuda with the onnxruntime backend needs the CUDA execution provider: "
                               "install onnxruntime-gpu instead of onnxruntime (available here: "
                               f"{', '.join(self.ort.get_available_providers())})")
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"the onnxruntime backend runs on cpu or cuda, not {self.device}")
        super().__init__(model, self.device, dtype)
        self.cache = EngineCache(cache_dir)
        self.on_stale, self.threads = on_stale, threads if threads is not None else torch.get_num_threads()
        self._sessions: dict[tuple[str, int], Any] = {}

    def session(self, name: str, size: int) -> Any:
        """The inference session of network ``name`` at ``size``, exporting the graph on first use."""
        key = (name, size)
        if key not in self._sessions:
            network = self.network(name, size)
            directory = cached_export(self.cache, network, self.precision, on_stale=self.on_stale)
            if self.cuda:
                options = self._options(self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
                index = self.device.index if self.device.index is not None else torch.cuda.current_device()
                cuda = {"device_id": index, "user_compute_stream": str(torch.cuda.current_stream(index).cuda_stream)}
                providers = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
                self._sessions[key] = self.ort.InferenceSession(str(directory / GRAPH_FILE), options,
                                                                providers=providers)
            else:
                self._sessions[key] = self._cpu_session(network, directory)
        return self._sessions[key]

    def _options(self, level: Any) -> Any:
        options = self.ort.SessionOptions()
        options.graph_optimization_level = level
        options.intra_op_num_threads = self.threads
        return options

    def optimized_key(self, network: Network, directory: Path) -> CacheKey:
        """The cache key of the optimised CPU graph of ``network``, exported at ``directory`` (see the module's
        notes)."""
        graph = hashlib.sha256(metadata_path(directory).read_bytes()).hexdigest()[:16]
        exported = onnx_key(network, self.precision)
        versions = {**exported.versions, "onnxruntime": self.ort.__version__, "cpu": cpu_digest(), "graph": graph}
        return dataclasses.replace(exported, kind="ort", versions=versions)

    def _cpu_session(self, network: Network, directory: Path) -> Any:
        """The CPU session of the graph at ``directory``: from its optimised graph in the cache when there is a good
        one, else optimised afresh (and saved in the cache when it can be written)."""
        levels, providers = self.ort.GraphOptimizationLevel, ["CPUExecutionProvider"]
        key = self.optimized_key(network, directory)
        built: list[Any] = []

        def optimise(target: Path) -> None:
            target.mkdir()
            options = self._options(levels.ORT_ENABLE_ALL)
            options.optimized_model_filepath = str(target / OPTIMIZED_GRAPH)
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name", OPTIMIZED_DATA)
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
            options.log_severity_level = 3  # not the warning that the saved graph is for this CPU: it is keyed so
            built.append(self.ort.InferenceSession(str(directory / GRAPH_FILE), options, providers=providers))

        try:
            saved = self.cache.get_or_build(key, optimise, supersede=True)
        except OSError:  # a cache that cannot be written: optimised in memory only
            return self.ort.InferenceSession(str(directory / GRAPH_FILE), self._options(levels.ORT_ENABLE_ALL),
                                             providers=providers)
        if built:
            return built[0]
        try:
            return self.ort.InferenceSession(str(saved / OPTIMIZED_GRAPH), self._options(levels.ORT_DISABLE_ALL),
                                             providers=providers)
        except Exception:  # noqa: BLE001 - a damaged saved graph: removed, and made again from the exported one
            self.cache.remove(saved)
            return self._cpu_session(network, directory)

    def run_graph(self, name: str, size: int, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        network = self.network(name, size)
        feeds = network.cast(inputs, self.precision)
        session = self.session(name, size)
        if self.cuda:
            return self._run_bound(session, network, feeds)
        outputs = session.run(network.output_names, {k: v.detach().cpu().numpy() for k, v in feeds.items()})
        return {k: torch.from_numpy(v) for k, v in zip(network.output_names, outputs)}

    def _run_bound(self, session: Any, network: Network, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """CUDA: bind torch-owned device buffers as inputs and outputs (no host copies)."""
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        binding = session.io_binding()
        for name, tensor in feeds.items():
            tensor = tensor.to(self.device)
            feeds[name] = tensor
            binding.bind_input(name, "cuda", index, NUMPY_OF[tensor.dtype], tuple(tensor.shape), tensor.data_ptr())
        dims = network.dims_of({k: tuple(v.shape) for k, v in feeds.items()})
        precision = network.graph_precision(self.precision)
        outputs = {}
        for spec in network.outputs:
            out = torch.empty(spec.shape(dims), dtype=spec.torch_dtype(precision), device=self.device)
            binding.bind_output(spec.name, "cuda", index, NUMPY_OF[out.dtype], tuple(out.shape), out.data_ptr())
            outputs[spec.name] = out
        session.run_with_iobinding(binding)
        return outputs

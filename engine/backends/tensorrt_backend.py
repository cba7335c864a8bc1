"""TensorRT backend: plans from the keyed engine cache, run on device buffers owned by torch.

Every network (audio, ReferenceNet, backbone, VAE decoder and encoder) runs as a TensorRT plan
built by :mod:`export.trt_build` (on first use when ``build=True``, else it must exist: ``make
engines``). Inputs and outputs are torch CUDA tensors whose addresses are bound to the execution
context (``set_tensor_address``) and run with ``execute_async_v3`` on torch's current stream: no
host round trip. All plans share one activation buffer (:class:`ActivationArena`, sized for the
largest), since they run one at a time on one stream. Feeds that match a static profile (the
steady-state clip) are replayed from a CUDA graph captured around the engine's execution; the
first and last clips run through the dynamic profile without a graph.

The face locator, the speed encoder and the image projection (once per session) run in torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine.backends.base import Backend, TorchPerSessionNetworks
from engine.models.model import EmoteModel
from engine.models.reference_net import ReferenceBank
from export.engine_cache import EngineCache
from export.networks import StreamShapes, make_network, select_profile
from export.trt_build import cached_plan, compute_capability, import_tensorrt

PRECISION_OF = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


class ActivationArena:
    """One device buffer for the activations of every engine, grown to the largest engine's need.

    ``generation`` changes whenever the buffer is reallocated: contexts bound to an older buffer
    must be re-bound and their CUDA graphs captured again.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.buffer: torch.Tensor | None = None
        self.generation = 0

    def reserve(self, nbytes: int) -> None:
        """Make the buffer at least ``nbytes`` long."""
        if self.buffer is None or self.buffer.numel() < nbytes:
            self.buffer = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=self.device)
            self.generation += 1

    @property
    def address(self) -> int:
        assert self.buffer is not None
        return self.buffer.data_ptr()

    @property
    def nbytes(self) -> int:
        return 0 if self.buffer is None else self.buffer.numel()


def torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    """TensorRT tensor dtype -> torch dtype."""
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bool: torch.bool, trt.int32: torch.int32,
             trt.int8: torch.int8}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if hasattr(trt, "int64"):
        table[trt.int64] = torch.int64
    return table[dtype]


class EnginePlan:
    """One deserialized plan with an execution context per profile, bound to the shared arena.

    Args:
        trt: the ``tensorrt`` module.
        runtime: a ``trt.Runtime``.
        data: the serialized plan (checked against its metadata by the cache).
        network: its :class:`export.networks.Network` (names and profiles, in build order).
        arena: the shared activation buffer.
        device: the CUDA device.
        cuda_graphs: capture and replay static-profile executions.
    """

    def __init__(self, trt: Any, runtime: Any, data: bytes, network: Any, arena: ActivationArena,
                 device: torch.device, cuda_graphs: bool = True):
        self.trt, self.network, self.arena, self.device, self.cuda_graphs = trt, network, arena, device, cuda_graphs
        self.engine = runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize the {network.name} plan")
        self.profiles = network.profiles()
        if self.engine.num_optimization_profiles != len(self.profiles):
            raise RuntimeError(f"the {network.name} plan has {self.engine.num_optimization_profiles} profiles, "
                               f"the network declares {len(self.profiles)}: rebuild it")
        names = network.input_names + network.output_names
        self.dtypes = {name: torch_dtype(trt, self.engine.get_tensor_dtype(name)) for name in names}
        memory = getattr(self.engine, "device_memory_size_v2", None)
        arena.reserve(memory if memory is not None else self.engine.device_memory_size)
        self._contexts: dict[int, tuple[Any, int]] = {}
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], dict[str, torch.Tensor]]] = {}
        self._uncapturable: set[int] = set()

    def _context(self, index: int, stream: torch.cuda.Stream) -> Any:
        """The context of profile ``index``, bound to the arena's current buffer."""
        entry = self._contexts.get(index)
        if entry is None:
            strategy = getattr(self.trt, "ExecutionContextAllocationStrategy", None)
            context = (self.engine.create_execution_context(strategy.USER_MANAGED) if strategy is not None
                       else self.engine.create_execution_context_without_device_memory())
            context.set_optimization_profile_async(index, stream.cuda_stream)
            entry = (context, -1)
        context, generation = entry
        if generation != self.arena.generation:
            if hasattr(context, "set_device_memory"):
                context.set_device_memory(self.arena.address, self.arena.nbytes)
            else:
                context.device_memory = self.arena.address
            self._graphs.pop(index, None)
            self._contexts[index] = (context, self.arena.generation)
        return context

    def _bind(self, context: Any, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Set input shapes and addresses; allocate the outputs and set their addresses."""
        for name, tensor in inputs.items():
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.network.output_names:
            shape = tuple(context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            context.set_tensor_address(name, outputs[name].data_ptr())
        return outputs

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named inputs (converted to the plan's dtypes on the device) -> named outputs on the device."""
        inputs = {name: inputs[name].to(self.device, self.dtypes[name]).contiguous()
                  for name in self.network.input_names}
        index = select_profile(self.profiles, {k: tuple(v.shape) for k, v in inputs.items()})
        stream = torch.cuda.current_stream(self.device)
        context = self._context(index, stream)
        if self.cuda_graphs and self.profiles[index].static and index not in self._uncapturable:
            return self._replay(index, context, inputs, stream)
        outputs = self._bind(context, inputs)
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution of {self.network.name} failed")
        return outputs

    def _replay(self, index: int, context: Any, inputs: dict[str, torch.Tensor],
                stream: torch.cuda.Stream) -> dict[str, torch.Tensor]:
        """Run a static-profile feed from its CUDA graph (captured on first use; a plan TensorRT cannot
        run under capture keeps running eagerly, its first output coming from the pre-capture run)."""
        if index not in self._graphs:
            static_in = {k: v.clone() for k, v in inputs.items()}
            static_out = self._bind(context, static_in)
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution of {self.network.name} failed")
            capture = torch.cuda.Stream(self.device)
            capture.wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, stream=capture):
                    context.execute_async_v3(capture.cuda_stream)
            except RuntimeError:
                self._uncapturable.add(index)
                stream.wait_stream(capture)
                return static_out
            stream.wait_stream(capture)
            self._graphs[index] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[index]
        for name, tensor in inputs.items():
            static_in[name].copy_(tensor)
        graph.replay()
        return {name: tensor.clone() for name, tensor in static_out.items()}


class TensorRTBackend(TorchPerSessionNetworks, Backend):
    """Runs every network of ``model`` as a TensorRT plan on a CUDA device.

    Args:
        model: the networks (weights are hashed for the plan keys and exported when building).
        device: a CUDA device.
        dtype: float16 (fp16 plans), bfloat16 (bf16 plans) or float32.
        cache_dir: the engine cache (default :func:`export.engine_cache.default_cache_dir`).
        build: export and build missing or stale plans (else refuse them with a clear message).
        cuda_graphs: replay static-profile executions from CUDA graphs.
        options: the session's :class:`~engine.stream.session.GenerationOptions`, so that the
            profiles' static buckets are its clip sizes and guidance batch (default: the model's
            clip size, 1-3 branches).
    """

    name = "tensorrt"

    def __init__(self, model: EmoteModel, device: str | torch.device = "cuda", dtype: torch.dtype = torch.float16,
                 cache_dir: str | Path | None = None, build: bool = True, cuda_graphs: bool = True,
                 options: Any = None):
        self.trt = import_tensorrt()
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"the tensorrt backend runs on a CUDA device, not {self.device}")
        compute_capability(self.device)
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if dtype not in PRECISION_OF:
            raise ValueError(f"the tensorrt backend runs float16, bfloat16 or float32, not {dtype}")
        self.dtype, self.precision = dtype, PRECISION_OF[dtype]
        self.model = model.eval()
        self.cache = EngineCache(cache_dir)
        self.build, self.cuda_graphs, self.options = build, cuda_graphs, options
        self.runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        self.arena = ActivationArena(self.device)
        self.face_locator = model.face_locator.to(self.device, torch.float32)
        self.speed_encoder = model.speed_encoder.to(self.device) if hasattr(model, "speed_encoder") else None
        self._plans: dict[tuple[str, int], EnginePlan] = {}

    def plan(self, name: str, size: int) -> EnginePlan:
        """The loaded plan of network ``name`` at portrait side ``size`` (built or found in the cache)."""
        key = (name, size)
        if key not in self._plans:
            cfg = self.model.config
            shapes = (StreamShapes.for_options(cfg, self.options, size) if self.options is not None
                      else StreamShapes.for_model(cfg, size))
            network = make_network(name, self.model, shapes)
            plan_key = cached_plan(self.cache, network, self.precision, build=self.build)
            data = self.cache.read_verified(plan_key)
            self._plans[key] = EnginePlan(self.trt, self.runtime, data, network, self.arena, self.device,
                                          self.cuda_graphs)
        return self._plans[key]

    def _size(self, spatial: int) -> int:
        return spatial * self.model.config.latent_downscale

    def audio_tokens(self, pcm: torch.Tensor, num_frames: int) -> torch.Tensor:
        plan = self.plan("audio", self.model.config.resolution)
        feed = plan.network.prepare(pcm.detach().float().cpu(), num_frames)
        outputs = plan.run(feed.inputs)
        return plan.network.finish(outputs, feed).to(self.device, self.dtype)

    def reference(self, latents: torch.Tensor, context: torch.Tensor | None = None) -> ReferenceBank:
        plan = self.plan("reference", self._size(latents.shape[-1]))
        bank = plan.network.bank_of(plan.run(plan.network.feed(latents, context)))
        return ReferenceBank(tokens=[t.to(self.dtype) for t in bank.tokens],
                             features=[f.to(self.dtype) for f in bank.features])

    def backbone(self, sample: torch.Tensor, timestep: torch.Tensor, audio_tokens: torch.Tensor,
                 reference_bank: list[torch.Tensor], motion_features: list[torch.Tensor], face_features: torch.Tensor,
                 speed_tokens: torch.Tensor | None, reference_keep: torch.Tensor,
                 image_tokens: torch.Tensor | None = None,
                 region_masks: list[torch.Tensor] | None = None) -> torch.Tensor:
        plan = self.plan("backbone", self._size(sample.shape[-1]))
        named = plan.network.feed(sample, timestep, audio_tokens, reference_bank, motion_features, face_features,
                                  speed_tokens, reference_keep, image_tokens, region_masks)
        return plan.run(named)["model_output"].to(self.dtype)

    def vae_encode(self, images: torch.Tensor) -> torch.Tensor:
        plan = self.plan("vae_encoder", images.shape[-1])
        return plan.run({"images": images})["latents"].to(self.dtype)

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        plan = self.plan("vae_decoder", self._size(latents.shape[-1]))
        return plan.run({"latents": latents})["images"].to(self.dtype)

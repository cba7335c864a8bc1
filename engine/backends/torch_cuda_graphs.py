"""PyTorch with CUDA graphs: the eager modules (and their Triton kernels) captured once per static shape.

The backbone, the ReferenceNet and the VAE decoder, the calls repeated every step or clip, are
captured into a CUDA graph the first time they see a given set of input shapes and dtypes, and
replayed after that: the launch overhead of a few thousand small kernels per backbone step goes
away. Inputs are copied into the graph's static buffers, outputs cloned out of it. All graphs
share one memory pool; that is safe because calls run one at a time (a lock: the stream runner's
backbone and decoder threads and ``emote serve``'s sessions may share the backend), each ordered on
the GPU after the previous one (its stream waits for the last caller's), and every output is cloned
before the next replay. Captures use the thread-local mode, so other threads' CUDA calls cannot
invalidate them. At most ``max_graphs`` graphs are kept, the least recently used evicted first. The custom
kernels run as Triton on CUDA (``EMOTE_KERNELS=auto``, :mod:`emote_kernels.dispatch`), so this is the
"torch + Triton + CUDA graphs" path.

The audio encoder (float64 normalisation, variable lengths), the VAE encoder, face locator and
speed encoder (once per session) run eagerly.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from typing import Callable, Generic, TypeVar

import torch

from engine.backends.torch_eager import TorchEagerBackend
from engine.models.backbone_inputs import BackboneInputs, BackboneLayout
from engine.models.model import EmoteModel
from engine.models.reference_net import ReferenceBank

Key = tuple[str, tuple[tuple[tuple[int, ...], torch.dtype, bool], ...]]
V = TypeVar("V")


class LeastRecentlyUsed(Generic[V]):
    """At most ``limit`` values by key; adding one more evicts the one used longest ago."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"keep at least one graph, not {limit}")
        self.limit = limit
        self._items: OrderedDict[Key, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Key) -> V | None:
        """The value of ``key`` (now the most recently used), or None."""
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: Key, value: V) -> None:
        """Keep ``value`` under ``key``, evicting the least recently used beyond ``limit``."""
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)


class _Captured:
    """One captured call: the graph, its static inputs and its outputs."""

    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: list[torch.Tensor], outputs: tuple[torch.Tensor, ...]):
        self.graph, self.inputs, self.outputs = graph, inputs, outputs


class TorchCudaGraphsBackend(TorchEagerBackend):
    """:class:`TorchEagerBackend` with per-shape CUDA graph capture and replay (CUDA only).

    Args:
        model: the networks (moved to ``device`` and ``dtype`` like the eager backend).
        device: a CUDA device.
        dtype: the networks' dtype (float16 or bfloat16 for speed).
        warmup: eager runs on a side stream before capture (lazy initialisation, Triton compilation).
        max_graphs: graphs kept (one per network and input shape set); the least recently used is evicted.

    Attributes:
        captured: how many graphs have been captured so far (evicted ones included).
    """

    name = "torch-cuda-graphs"

    def __init__(self, model: EmoteModel, device: str | torch.device = "cuda", dtype: torch.dtype = torch.float16,
                 warmup: int = 2, max_graphs: int = 16):
        if torch.device(device).type != "cuda" or not torch.cuda.is_available():
            raise RuntimeError("the torch-cuda-graphs backend needs a CUDA device "
                               f"(asked for {device}; CUDA available: {torch.cuda.is_available()})")
        super().__init__(model, device, dtype)
        self.warmup = warmup
        self.pool = torch.cuda.graph_pool_handle()
        self._graphs: LeastRecentlyUsed[_Captured] = LeastRecentlyUsed(max_graphs)
        self._lock = threading.Lock()
        self._last_stream: torch.cuda.Stream | None = None
        self.captured = 0

    def _run(self, name: str, fn: Callable[..., tuple[torch.Tensor, ...]],
             tensors: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """``fn(*tensors)`` through the graph captured for these shapes (captured now if new)."""
        tensors = [t.to(self.device) for t in tensors]
        key: Key = (name, tuple((tuple(t.shape), t.dtype, t.is_contiguous()) for t in tensors))
        with self._lock:
            stream = torch.cuda.current_stream(self.device)
            if self._last_stream is not None and self._last_stream != stream:
                stream.wait_stream(self._last_stream)
            self._last_stream = stream
            captured = self._graphs.get(key)
            if captured is None:
                captured = self._capture(fn, tensors)
                self._graphs.put(key, captured)
                self.captured += 1
            for static, tensor in zip(captured.inputs, tensors):
                static.copy_(tensor)
            captured.graph.replay()
            return tuple(out.clone() for out in captured.outputs)

    def _capture(self, fn: Callable[..., tuple[torch.Tensor, ...]], tensors: list[torch.Tensor]) -> _Captured:
        static = [t.clone() for t in tensors]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(self.warmup):
                fn(*static)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            outputs = fn(*static)
        return _Captured(graph, static, outputs)

    def reference(self, latents: torch.Tensor, context: torch.Tensor | None = None) -> ReferenceBank:
        tensors = [latents.to(self.dtype)]
        if context is not None:
            tensors.append(context.to(self.dtype).expand(latents.shape[0], *context.shape[1:]))

        def fn(x: torch.Tensor, *tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
            bank = self.model.reference_net(x, context=tokens[0] if tokens else None)
            return (*bank.tokens, *bank.features)

        outputs = self._run("reference", fn, tensors)
        count = self.model.reference_net.num_bank_layers
        return ReferenceBank(tokens=list(outputs[:count]), features=list(outputs[count:]))

    def backbone(self, inputs: BackboneInputs) -> torch.Tensor:
        """The eager backbone through a graph per input structure and shape set (its flat form:
        :class:`~engine.models.backbone_inputs.BackboneLayout`)."""
        inputs = dataclasses.replace(
            inputs, sample=inputs.sample.to(self.dtype), timestep=torch.as_tensor(inputs.timestep, device=self.device),
            reference_keep=None if inputs.reference_keep is None else inputs.reference_keep.to(self.device))
        layout = BackboneLayout.of(inputs)

        def fn(*flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return (self.model.backbone(**layout.unflatten(flat).kwargs()),)

        return self._run("backbone:" + ",".join(layout.names()), fn, layout.flatten(inputs))[0]

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._run("vae_decoder", lambda x: (self.model.vae.decode(x),), [latents.to(self.dtype)])[0]

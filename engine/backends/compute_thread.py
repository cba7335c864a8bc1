"""One thread per CPU backend on which every network call runs, with a set number of intra-op threads.

Callers on any thread (the stream's denoise and decode stages, a server's batch scheduler, the thread that
set the session up) hand each call to that thread and wait for its result, so the networks of a backend never
run on two threads at once and torch's OpenMP worker team exists once per backend instead of once per calling
thread. Why that matters, and what it changed, is in docs/cpu-threads.md.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import torch

from engine.backends.base import Backend
from engine.models.backbone_inputs import BackboneInputs
from engine.models.reference_net import ReferenceBank

T = TypeVar("T")


def _own_thread_count(threads: int) -> None:
    """Give the calling thread ``threads`` intra-op threads for good.

    torch keeps one process-wide count besides each thread's own: ``torch.set_num_threads`` sets both, and a
    thread takes the process-wide one when it first asks for its own. Asking first fixes this thread's count
    before the caller puts the process-wide one back.
    """
    torch.get_num_threads()
    torch.set_num_threads(threads)


class ComputeThread:
    """A single worker thread that runs the callables handed to it, one at a time, in the order given.

    ``threads``: torch's intra-op threads on that thread (set there once, when it starts). A call made from the
    worker thread itself runs inline, so a network call may make another.
    """

    def __init__(self, threads: int, name: str = "emote-compute"):
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        self.threads = threads
        caller = torch.get_num_threads()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=_own_thread_count,
                                            initargs=(threads,))
        self._ident = self._executor.submit(threading.get_ident).result()
        torch.set_num_threads(caller)  # the count later threads start from: the caller's again

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the worker thread; returns its result or raises its exception."""
        if threading.get_ident() == self._ident:
            return fn(*args, **kwargs)
        return self._executor.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        """Let the worker thread end once the calls already handed over are done."""
        self._executor.shutdown(wait=False)


class ComputeThreadBackend(Backend):
    """A backend made by ``make`` on one :class:`ComputeThread`, each of its network calls run there too; any
    other attribute is the inner backend's. Made there, the inner backend's set-up work (moving the model,
    ONNX Runtime's sessions) also stays off the calling thread."""

    serial = True

    def __init__(self, make: Callable[[], Backend], threads: int):
        self.compute = ComputeThread(threads)
        self.inner = self.compute.run(make)
        self.name, self.device, self.dtype = self.inner.name, self.inner.device, self.inner.dtype
        self.per_frame_reference_bank = self.inner.per_frame_reference_bank

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self.compute.run(fn, *args, **kwargs)

    def prepare(self, size: int, batch: int | None = None) -> None:
        self.compute.run(self.inner.prepare, size, batch)

    def audio_tokens(self, pcm: torch.Tensor, num_frames: int) -> torch.Tensor:
        return self.compute.run(self.inner.audio_tokens, pcm, num_frames)

    def reference(self, latents: torch.Tensor, context: torch.Tensor | None = None) -> ReferenceBank:
        return self.compute.run(self.inner.reference, latents, context)

    def backbone(self, inputs: BackboneInputs) -> torch.Tensor:
        return self.compute.run(self.inner.backbone, inputs)

    def image_tokens(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.compute.run(self.inner.image_tokens, embedding)

    def face_features(self, mask: torch.Tensor) -> torch.Tensor:
        return self.compute.run(self.inner.face_features, mask)

    def speed_tokens(self, speed: torch.Tensor) -> torch.Tensor | None:
        return self.compute.run(self.inner.speed_tokens, speed)

    def vae_encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.compute.run(self.inner.vae_encode, images)

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.compute.run(self.inner.vae_decode, latents)

"""One thread per CPU backend on which every network call runs, with a set number of intra-op threads.

Callers on any thread (the stream's denoise and decode stages, a server's batch scheduler, the thread that
set the session up) hand each call to that thread and wait for its result, so the networks of a backend never
run on two threads at once and torch's OpenMP worker team exists once per backend instead of once per calling
thread. Why that matters, and what it changed, is in docs/cpu-threads.md.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from engine.backends.base import Backend
from engine.models.backbone_inputs import BackboneInputs
from engine.models.reference_net import ReferenceBank

T = TypeVar("T")


COMPUTE_THREAD_NAME = "emote-compute"
"""A compute thread's name, in Python (with a ``_0`` suffix) and as the system shows it."""
PR_SET_NAME = 15
"""Linux's ``prctl`` option that names the calling thread (at most 15 bytes) as the system shows it."""


def _start_compute_thread(name: str, threads: int) -> None:
    """Set-up of the compute thread, on it: ``name`` as its system name (``top -H``, ``/proc/PID/task/TID/comm``;
    Linux only) and its intra-op thread count."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    _own_thread_count(threads)


def _own_thread_count(threads: int) -> None:
    """Give the calling thread ``threads`` intra-op threads for good.

    torch keeps one process-wide count besides each thread's own: ``torch.set_num_threads`` sets both, and a
    thread takes the process-wide one when it first asks for its own. Asking first fixes this thread's count
    before the caller puts the process-wide one back.
    """
    torch.get_num_threads()
    torch.set_num_threads(threads)


def yield_to_compute_threads(niceness: int, name: str = COMPUTE_THREAD_NAME) -> int:
    """Raise by ``niceness`` (0-19) the niceness of every thread of this process except the compute threads
    (those whose system name is ``name``: a :class:`ComputeThread` and the OpenMP workers it started, which take
    their creator's name); returns how many threads were lowered.

    On Linux niceness belongs to each thread and a new thread takes its creator's, so threads started later by
    a lowered thread (the event loop's executors, stage threads, frame encoders) are lowered too, while the
    compute team keeps the cores whenever it has work. An unprivileged process may raise niceness but never
    lower it again: call it once, from an entry point, after the compute thread has started. Elsewhere (no
    per-thread niceness or no ``/proc``) it does nothing and returns 0.
    """
    if not 0 <= niceness <= 19:
        raise ValueError(f"niceness must be 0-19, not {niceness}")
    tasks = Path("/proc/self/task")
    if not niceness or not sys.platform.startswith("linux") or not tasks.is_dir():
        return 0
    lowered = 0
    for task in tasks.iterdir():
        try:
            if (task / "comm").read_text().strip() == name:
                continue
            thread = int(task.name)
            os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + niceness))
        except (OSError, ValueError):
            continue  # a thread that ended meanwhile
        lowered += 1
    return lowered


class ComputeThread:
    """A single worker thread that runs the callables handed to it, one at a time, in the order given.

    ``threads``: torch's intra-op threads on that thread (set there once, when it starts); ``name``: the thread's
    name, in Python and as the system shows it. A call made from the worker thread itself runs inline, so a
    network call may make another.
    """

    def __init__(self, threads: int, name: str = COMPUTE_THREAD_NAME):
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        self.threads = threads
        caller = torch.get_num_threads()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=_start_compute_thread,
                                            initargs=(name, threads))
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

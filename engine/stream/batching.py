"""Session batching: the live sessions of one model share backbone calls.

Each session runs its own :class:`~engine.stream.session.Session` in its own thread on a
:class:`SlotBackend`, which passes every network straight to the shared backend except the backbone: those
calls go to the :class:`BatchScheduler`. The scheduler forms one batch per tick from the requests pending
then (a tick closes when every attached session has one pending, or ``gather_s`` after the first), groups
them by input signature (no padding along frames), and runs each group at a fixed batch of ``slots``
request-sized blocks, a session's block always at its own slot index, so that a session's frames do not
depend on who shares the call. The reasons and the measurements: docs/decisions.md.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.backends.base import Backend
from engine.models.backbone_inputs import BackboneInputs
from engine.models.reference_net import ReferenceBank

@dataclass
class _Request:
    slot: int
    inputs: BackboneInputs
    done: threading.Event = field(default_factory=threading.Event)
    output: torch.Tensor | None = None
    error: BaseException | None = None


class BatchScheduler:
    """Owns the shared backend's backbone: one thread batching the backbone calls of up to ``slots`` sessions.

    Args:
        backend: the shared backend (every session's other networks run on it directly).
        slots: sessions at most, and the fixed batch (in request blocks) of every backbone call.
        gather_s: seconds a tick waits, after its first request, for the other attached sessions.

    Attributes:
        occupancy: backbone calls made, by the number of real (not filler) requests in them.
    """

    def __init__(self, backend: Backend, slots: int = 4, gather_s: float = 0.005):
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        if gather_s < 0:
            raise ValueError(f"gather_s must be >= 0, got {gather_s}")
        self.backend, self.slots, self.gather_s = backend, slots, gather_s
        self.occupancy: Counter[int] = Counter()
        self._attached: set[int] = set()
        self._pending: dict[int, _Request] = {}
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="emote-batch", daemon=True)
        self._thread.start()

    def attach(self, slot: int | None = None) -> SlotBackend:
        """A backend for one more session, holding ``slot`` (None: the lowest free one) until
        :meth:`SlotBackend.detach`. Raises RuntimeError when no slot (or not that one) is free."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the batch scheduler is closed")
            free = [s for s in range(self.slots) if s not in self._attached]
            if slot is None and free:
                slot = free[0]
            if slot not in free:
                raise RuntimeError(f"all {self.slots} slots are in use" if slot is None
                                   else f"slot {slot} is in use or not one of the {self.slots}")
            self._attached.add(slot)
        return SlotBackend(self, slot)

    def detach(self, slot: int) -> None:
        """Free ``slot`` (its session is done); a tick no longer waits for it."""
        with self._cond:
            self._attached.discard(slot)
            self._cond.notify_all()

    def submit(self, slot: int, inputs: BackboneInputs) -> torch.Tensor:
        """Run one backbone call of the session in ``slot`` in the next batch; blocks until its output is in.

        Returns the output for this request's rows (``[b, C_out, F, h, w]``, b = the request's batch).
        """
        request = _Request(slot, inputs)
        with self._cond:
            if self._closed:
                raise RuntimeError("the batch scheduler is closed")
            if slot not in self._attached:
                raise RuntimeError(f"slot {slot} is not attached")
            if slot in self._pending:
                raise RuntimeError(f"slot {slot} already has a backbone call pending")
            self._pending[slot] = request
            self._cond.notify_all()
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.output

    def close(self) -> None:
        """Stop the thread; calls still pending fail with RuntimeError."""
        with self._cond:
            self._closed = True
            pending, self._pending = list(self._pending.values()), {}
            self._cond.notify_all()
        for request in pending:
            request.error = RuntimeError("the batch scheduler was closed")
            request.done.set()
        self._thread.join()

    def _gather(self) -> list[_Request]:
        """The requests of the next tick (empty once closed)."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            deadline = time.monotonic() + self.gather_s
            while not self._closed and not self._attached <= self._pending.keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._closed:
                return []
            requests, self._pending = list(self._pending.values()), {}
            return requests

    def _loop(self) -> None:
        while requests := self._gather():
            groups: dict[Any, list[_Request]] = {}
            for request in requests:
                groups.setdefault(request.inputs.signature(), []).append(request)
            for group in groups.values():
                self._run(group)

    def _run(self, group: list[_Request]) -> None:
        """One backbone call at the fixed batch for ``group`` (requests of one signature, distinct slots)."""
        try:
            by_slot = {r.slot: r for r in group}
            blocks = [by_slot.get(s, group[0]).inputs for s in range(self.slots)]
            output = self.backend.backbone(BackboneInputs.cat(blocks))
            size = group[0].inputs.sample.shape[0]
            for request in group:
                request.output = output[request.slot * size:(request.slot + 1) * size].clone()
            self.occupancy[len(group)] += 1
        except BaseException as exc:  # handed to every waiting session, which re-raises it
            for request in group:
                request.error = exc
        for request in group:
            request.done.set()


class SlotBackend(Backend):
    """One session's view of the shared backend: the backbone through the scheduler, the rest direct."""

    def __init__(self, scheduler: BatchScheduler, slot: int):
        self.scheduler, self.slot = scheduler, slot
        self.inner = scheduler.backend
        self.name, self.device, self.dtype = f"batched-{self.inner.name}", self.inner.device, self.inner.dtype

    def detach(self) -> None:
        """Give the slot back (the session is over)."""
        self.scheduler.detach(self.slot)

    def backbone(self, inputs: BackboneInputs) -> torch.Tensor:
        return self.scheduler.submit(self.slot, inputs)

    def audio_tokens(self, pcm: torch.Tensor, num_frames: int) -> torch.Tensor:
        return self.inner.audio_tokens(pcm, num_frames)

    def reference(self, latents: torch.Tensor, context: torch.Tensor | None = None) -> ReferenceBank:
        return self.inner.reference(latents) if context is None else self.inner.reference(latents, context=context)

    def image_tokens(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.inner.image_tokens(embedding)

    def face_features(self, mask: torch.Tensor) -> torch.Tensor:
        return self.inner.face_features(mask)

    def speed_tokens(self, speed: torch.Tensor) -> torch.Tensor | None:
        return self.inner.speed_tokens(speed)

    def vae_encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner.vae_encode(images)

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.inner.vae_decode(latents)

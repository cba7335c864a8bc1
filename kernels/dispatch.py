"""Choice between the Triton kernels and their plain PyTorch references.

The environment variable ``EMOTE_KERNELS`` selects the backend:

- ``auto`` (default): Triton when a CUDA device is present and ``triton`` imports; PyTorch otherwise.
- ``triton``: always Triton. Without a CUDA device this needs ``TRITON_INTERPRET=1`` (Triton's
  CPU interpreter, used by the tests); otherwise a :class:`RuntimeError` says so.
- ``torch``: always the PyTorch references.

The choice is made once per process and logged once on the ``emote.kernels`` logger. :func:`forced`
overrides it for the calling thread (or asyncio task) only, e.g. while the ONNX exporter traces the
PyTorch references: other threads (the other sessions of a server) keep the process's choice.
Kernels are JIT-decorated at their first launch (:func:`triton_jit`), so kernel modules import
without triton. Triton fixes interpret-or-compile when it is first imported (anything may import
it: ``torch._dynamo`` does), so ``TRITON_INTERPRET`` must be set before that; a launch in the other
mode raises a clear error (:func:`check_triton_mode`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
from typing import Callable, Iterator, Literal

import torch

ENV_VAR = "EMOTE_KERNELS"
MODES = ("auto", "triton", "torch")

Backend = Literal["triton", "torch"]

logger = logging.getLogger("emote.kernels")


def triton_import_error() -> str | None:
    """Return why ``triton`` cannot be imported, or ``None`` when it imports."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None


def interpreter_enabled() -> bool:
    """Whether Triton's CPU interpreter is switched on (``TRITON_INTERPRET`` set to a true value)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def requested_mode() -> str:
    """The mode named by ``EMOTE_KERNELS`` (``auto`` when unset); a :class:`ValueError` for others."""
    mode = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not one of {', '.join(MODES)}")
    return mode


def select_backend(mode: str | None = None) -> tuple[Backend, str]:
    """Resolve a mode to a backend without caching or logging.

    Args:
        mode: ``auto``, ``triton`` or ``torch``; ``None`` reads ``EMOTE_KERNELS``.

    Returns:
        The backend and a one-line reason for the choice.

    Raises:
        ValueError: for an unknown mode.
        RuntimeError: when ``triton`` is forced but cannot run here.
    """
    mode = requested_mode() if mode is None else mode.strip().lower()
    if mode not in MODES:
        raise ValueError(f"kernel mode {mode!r} is not one of {', '.join(MODES)}")
    if mode == "torch":
        return "torch", f"{ENV_VAR}=torch"
    cuda = torch.cuda.is_available()
    if mode == "auto":
        if not cuda:
            return "torch", f"{ENV_VAR}=auto and no CUDA device"
        error = triton_import_error()
        if error is not None:
            return "torch", f"{ENV_VAR}=auto and triton does not import ({error})"
        return "triton", f"{ENV_VAR}=auto with CUDA and triton"
    if not cuda and not interpreter_enabled():
        raise RuntimeError(
            f"{ENV_VAR}=triton needs a CUDA device, and none is available; "
            "set TRITON_INTERPRET=1 to run the kernels on the CPU with Triton's interpreter, "
            f"or {ENV_VAR}=torch (or auto) for the PyTorch references"
        )
    error = triton_import_error()
    if error is not None:
        raise RuntimeError(f"{ENV_VAR}=triton but triton does not import: {error}")
    where = "CUDA" if cuda else "CPU interpreter (TRITON_INTERPRET=1)"
    return "triton", f"{ENV_VAR}=triton, on {where}"


_override: contextvars.ContextVar[Backend | None] = contextvars.ContextVar("emote_kernels_forced", default=None)
"""The backend :func:`forced` chose for the current thread or task (None: the process's)."""


def active_backend() -> Backend:
    """The backend for the calling thread: a :func:`forced` one inside that block, else the process's."""
    override = _override.get()
    return process_backend() if override is None else override


@functools.lru_cache(maxsize=1)
def process_backend() -> Backend:
    """The process-wide backend, resolved from the environment on first call and logged once."""
    backend, reason = select_backend()
    logger.info("kernels: %s (%s)", backend, reason)
    return backend


def reset_backend() -> None:
    """Forget the cached choice so that the next :func:`active_backend` reads the environment again."""
    process_backend.cache_clear()


@contextlib.contextmanager
def forced(mode: str | None) -> Iterator[Backend]:
    """Inside, for the calling thread (or asyncio task) only: the kernels run in ``mode`` (``auto``,
    ``triton`` or ``torch``; None: the process's choice); yields the backend chosen. Nothing global
    changes: not ``EMOTE_KERNELS``, not the process's choice, not what other threads run."""
    if mode is None:
        yield active_backend()
        return
    backend, _ = select_backend(mode)
    token = _override.set(backend)
    try:
        yield backend
    finally:
        _override.reset(token)


def use_triton(tensor: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """Whether an op on ``tensor`` (and the ``others`` it reads: weights, keys, ...) should run its Triton kernel.

    True when the backend is Triton and the tensor is on CUDA, or on the CPU with the interpreter on, and
    autograd does not need the op: the kernels have no backward, so while grad mode is on and any of the
    tensors requires grad (training) the op runs its PyTorch reference.
    """
    if active_backend() != "triton":
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (tensor, *others)):
        return False
    return tensor.is_cuda or (tensor.device.type == "cpu" and interpreter_enabled())


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s ``input_precision`` for inputs of ``dtype``: exact fp32 products for fp32 (the reference's
    accuracy), else the tensor cores' (for fp16/bf16 operands the setting is moot)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def check_triton_mode(interpret: bool) -> None:
    """Raise unless triton's own library was decorated in the mode asked for.

    ``triton.language`` decorates its library functions (``tl.max``, ``tl.sigmoid``, ...) for the
    interpreter or the compiler when it is first imported, following ``TRITON_INTERPRET`` at that
    moment; kernels run in the other mode fail deep inside Triton. Turning the interpreter on must
    therefore happen before anything imports triton (for tests: the top-level conftest.py).
    """
    from triton.language import standard

    library_interpreted = type(standard.max).__name__ == "InterpretedFunction"
    if library_interpreted != interpret:
        raise RuntimeError(
            f"TRITON_INTERPRET is {'on' if interpret else 'off'} now but was "
            f"{'on' if library_interpreted else 'off'} when triton was first imported; "
            "set it before anything imports triton (in tests: at the top of the first conftest.py)"
        )


@functools.lru_cache(maxsize=None)
def _jit(fn: Callable, interpret: bool) -> Callable:
    import triton

    check_triton_mode(interpret)
    return triton.jit(fn)


def triton_jit(fn: Callable) -> Callable:
    """``triton.jit(fn)``, made at the first launch and kept per interpreter setting.

    Deferring the decoration keeps kernel modules importable without triton, and checks first that
    the interpreter setting now is the one triton was imported with (:func:`check_triton_mode`).
    """
    return _jit(fn, interpreter_enabled())

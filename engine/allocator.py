"""glibc's allocator settings for a long-running process, and giving freed memory back.

Both are process-wide: :func:`tune_allocator` is called once by an entry point at its start (the ``emote`` command,
each Ray Serve replica), never from library code; :func:`trim_allocator` by the server after a session's memory
was freed. Elsewhere than glibc both do nothing.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library is another."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


@functools.cache
def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or None where the C library is another."""
    try:
        return ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
"""glibc's ``mallopt`` parameter numbers (``malloc.h``)."""
TRIM_THRESHOLD_BYTES = 8 * 1024 * 1024
"""Free memory at the top of an allocator arena beyond this goes back to the system as it is freed (held fixed:
:func:`tune_allocator`). Large enough that one diffusion step's tensors, freed and allocated again at every
step, stay mapped: at glibc's starting value (128 KiB) the compute thread gave its top back after every large
free and faulted the pages in again: 4,200-6,600 page faults per frame of talking64."""
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
"""Allocations from this size up get pages of their own, unmapped when freed (the ceiling glibc's own
adjustment reaches on 64-bit, held fixed)."""


def tune_allocator() -> bool:
    """Hold glibc's trim and mmap thresholds fixed for the life of the process; True when both were set.

    By default glibc moves both thresholds as blocks are freed (the trim threshold up to 64 MiB, the mmap
    threshold up to 32 MiB). Two costs of that, both measured on 2 cores: a server's thread arenas kept up to
    64 MiB of freed memory each at their top, which :func:`trim_allocator` cannot return (1,000 connect and
    disconnect cycles of the tiny model: 26-33 MiB more resident memory; held fixed: about 3 MiB); and until
    the thresholds had risen, tensors of a few hundred KiB were mapped and unmapped at every step (300-600
    page faults per frame of talking64, and 16-50 with the thresholds held). A 128 KiB mmap threshold made a
    tiny ``emote generate`` 1.5x slower; 32 MiB keeps large tensors in the arenas.
    """
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD,
                                                                                  TRIM_THRESHOLD_BYTES))


def trim_allocator() -> None:
    """Return the C allocator's free pages to the system (glibc's ``malloc_trim(0)``; nothing elsewhere).

    A session's tensors are freed by its own threads, into glibc arenas of those threads, which keep the
    pages: without this a server's resident memory grew about 0.25 MB a session until the arenas were all
    in use (784 -> 838 MB after 200 sessions, about 1.15 GB after 1,200), none of it reachable memory.
    Called once a session's memory has been freed (trimming while something still holds the session returns
    nothing of it); it takes milliseconds.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)

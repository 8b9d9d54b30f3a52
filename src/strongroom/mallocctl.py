"""glibc's malloc controls (mallopt, malloc_trim), for the agent's and the vault server's memory
settings: called through the process's own symbols, and nothing at all where the C library is
not glibc (musl, macOS), whose allocators do not keep per-thread arenas this way."""

from __future__ import annotations

import ctypes

# mallopt's options, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def malloc_call(function: str, *args: int) -> None:
    """Calls one of glibc's malloc functions; harmless when not glibc."""
    try:
        # The process's own symbols: libc's, without a library search (which runs ldconfig).
        getattr(ctypes.CDLL(None), function)(*args)
    except (OSError, AttributeError):
        pass

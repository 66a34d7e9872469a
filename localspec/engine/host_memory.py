"""Host memory for the prompt cache's KV copies: page-locked where the models run on a GPU.

A GPU's copy engine reads page-locked ("pinned") host memory directly; ordinary memory goes through the driver's
staging buffers at a fraction of that speed, and restoring a copy is the largest part of an editor's jump outside
the passes. ggml offers such memory for a GPU device (the device's host buffer type). Where it does not (no GPU
device, a backend without one) or where allocating fails, a buffer is ordinary memory. Page-locked memory cannot
be swapped out: the prompt cache's own budget (engine.prompt_cache_mb) bounds how much of it is taken.

Allocating page-locked memory costs many times what a copy into it does (docs/BENCHMARKS.md, the twenty-ninth
lease). So a freed page-locked buffer is kept for the next copy of about its size
(`BufferPool`): where the cache is full and each new copy replaces an old one, a copy then allocates nothing.
Up to KEPT_FREE such free buffers are held beyond the cache's budget.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
import weakref
from collections.abc import Callable

import numpy as np

from localspec.config import PROMPT_CACHE_AUTO_MB

GGML_BACKEND_DEVICE_TYPE_GPU = 1  # enum ggml_backend_dev_type
MIB = 1024 * 1024

# A free buffer serves a copy of at least 1 / REUSE_SLACK of its size; buffers are allocated in steps of 1 /
# CAPACITY_STEPS of their size's power of two, so that copies of windows a few percent apart fit each other's.
REUSE_SLACK = 1.25
CAPACITY_STEPS = 16
KEPT_FREE = 2  # free buffers kept for the next copies (each is about one copy's size); older ones are freed


def capacity(size: int) -> int:
    """The bytes to allocate for a buffer of `size`: rounded up to a step (at most 1 / CAPACITY_STEPS more)."""
    step = max(1, (1 << (size.bit_length() - 1)) // CAPACITY_STEPS)
    return -(-size // step) * step


class BufferPool:
    """Buffers of some costly kind of memory, kept when freed for a later request of about their size.

    `allocate(n)` returns a handle and the address of n bytes, or None; `release(handle)` frees them. Buffers are
    handed out as numpy arrays; when the last array over one is gone, the buffer comes back here."""

    def __init__(
        self, allocate: Callable[[int], tuple[int, int] | None], release: Callable[[int], None]
    ) -> None:
        self._allocate, self._release = allocate, release
        self._lock = threading.Lock()
        self._free: list[tuple[int, int, int]] = []  # (capacity, handle, address), oldest first
        self.in_use = 0  # bytes of the buffers handed out
        self.allocations = 0

    def take(self, size: int) -> np.ndarray | None:
        """An uninitialized uint8 array of `size` bytes, or None where the memory cannot be had."""
        with self._lock:
            fitting = [entry for entry in self._free if size <= entry[0] <= size * REUSE_SLACK]
            entry = min(fitting, default=None)
            if entry is not None:
                self._free.remove(entry)
        if entry is None:
            allocating = capacity(size)
            allocated = self._allocate(allocating)
            if allocated is None:
                return None
            self.allocations += 1
            entry = (allocating, *allocated)
        held, _, address = entry
        with self._lock:
            self.in_use += held
        raw = (ctypes.c_uint8 * size).from_address(address)
        weakref.finalize(raw, self._give_back, entry)  # when the last array over it is gone
        return np.frombuffer(memoryview(raw).cast("B"), dtype=np.uint8)

    def _give_back(self, entry: tuple[int, int, int]) -> None:
        with self._lock:
            self.in_use -= entry[0]
            self._free.append(entry)
            surplus, self._free = self._free[:-KEPT_FREE], self._free[-KEPT_FREE:]
        for _, handle, _ in surplus:
            self._release(handle)

    @property
    def free_bytes(self) -> int:
        with self._lock:
            return sum(entry[0] for entry in self._free)


@functools.cache
def _pinned_pool() -> BufferPool | None:
    """The pool of the first GPU device's host buffers, or None where there is none."""
    allocator = pinned_allocator()
    return BufferPool(*allocator) if allocator is not None else None


@functools.cache
def pinned_allocator() -> tuple[Callable[[int], tuple[int, int] | None], Callable[[int], None]] | None:
    """Allocate and release functions of the first GPU device's host buffers (ggml's), or None where there is
    none (see `BufferPool`)."""
    try:
        import llama_cpp.llama_cpp as bindings
        from llama_cpp._ctypes_extensions import load_shared_library

        lib = load_shared_library("ggml", bindings._base_path)
        lib.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
        lib.ggml_backend_dev_by_type.restype = ctypes.c_void_p
        lib.ggml_backend_dev_host_buffer_type.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_dev_host_buffer_type.restype = ctypes.c_void_p
        lib.ggml_backend_buft_alloc_buffer.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.ggml_backend_buft_alloc_buffer.restype = ctypes.c_void_p
        lib.ggml_backend_buffer_get_base.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_buffer_get_base.restype = ctypes.c_void_p
        lib.ggml_backend_buffer_free.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_buffer_free.restype = None
    except (ImportError, OSError, AttributeError, RuntimeError):  # (another build of the bindings)
        return None
    device = lib.ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_GPU)
    buffer_type = lib.ggml_backend_dev_host_buffer_type(device) if device else None
    if not buffer_type:
        return None

    def allocate(size: int) -> tuple[int, int] | None:
        buffer = lib.ggml_backend_buft_alloc_buffer(buffer_type, size)
        base = lib.ggml_backend_buffer_get_base(buffer) if buffer else None
        if buffer and base:
            return buffer, base
        if buffer:
            lib.ggml_backend_buffer_free(buffer)
        return None

    return allocate, lib.ggml_backend_buffer_free


def host_buffer(size: int, pinned: bool) -> np.ndarray:
    """An uninitialized uint8 array of `size` bytes; page-locked when `pinned` and possible (see the module)."""
    pool = _pinned_pool() if pinned and size > 0 else None
    buffer = pool.take(size) if pool is not None else None
    return buffer if buffer is not None else np.empty(size, dtype=np.uint8)


def pinned_allocations() -> int:
    """Page-locked buffers allocated so far (the rest of the copies took a freed one)."""
    pool = _pinned_pool()
    return pool.allocations if pool is not None else 0


def pinned_bytes() -> int:
    """Bytes of page-locked memory the prompt cache's copies hold now, and kept free for the next copies (as ggml
    allocated it: its CUDA host buffer type falls back to ordinary memory where the driver refuses to lock more)."""
    pool = _pinned_pool()
    return pool.in_use + pool.free_bytes if pool is not None else 0


def prompt_cache_bytes(setting_mb: int | None) -> int:
    """The prompt cache's budget: `setting_mb` MiB, or for None ("auto") a quarter of this machine's memory within
    PROMPT_CACHE_AUTO_MB (the low end where the memory cannot be read)."""
    if setting_mb is not None:
        return setting_mb * MIB
    low, high = PROMPT_CACHE_AUTO_MB
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        total = 0
    return max(low * MIB, min(high * MIB, total // 4))

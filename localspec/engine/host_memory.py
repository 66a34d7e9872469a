"""Host memory for the prompt cache's KV copies: page-locked where the models run on a GPU.

A GPU's copy engine reads page-locked ("pinned") host memory directly; ordinary memory goes through the driver's
staging buffers at a fraction of that speed, and restoring a copy is the largest part of an editor's jump outside
the passes. ggml offers such memory for a GPU device (the device's host buffer type). Where it does not (no GPU
device, a backend without one) or where allocating fails, a buffer is ordinary memory. Page-locked memory cannot
be swapped out: the prompt cache's own budget (engine.prompt_cache_mb) bounds how much of it is taken.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
import weakref
from typing import Any

import numpy as np

from localspec.config import PROMPT_CACHE_AUTO_MB

GGML_BACKEND_DEVICE_TYPE_GPU = 1  # enum ggml_backend_dev_type
MIB = 1024 * 1024

_lock = threading.Lock()
_pinned_bytes = 0


@functools.cache
def _pinned_buffer_type() -> tuple[Any, int] | None:
    """ggml's library and the host buffer type of the first GPU device, or None."""
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
    return (lib, buffer_type) if buffer_type else None


def host_buffer(size: int, pinned: bool) -> np.ndarray:
    """An uninitialized uint8 array of `size` bytes; page-locked when `pinned` and possible (see the module)."""
    found = _pinned_buffer_type() if pinned and size > 0 else None
    if found is not None:
        lib, buffer_type = found
        buffer: int | None = lib.ggml_backend_buft_alloc_buffer(buffer_type, size)
        base = lib.ggml_backend_buffer_get_base(buffer) if buffer else None
        if buffer and base:
            global _pinned_bytes
            with _lock:
                _pinned_bytes += size
            raw = (ctypes.c_uint8 * size).from_address(base)
            weakref.finalize(raw, _free, lib, buffer, size)  # when the last array over it is gone
            return np.frombuffer(memoryview(raw).cast("B"), dtype=np.uint8)
        if buffer:
            lib.ggml_backend_buffer_free(buffer)
    return np.empty(size, dtype=np.uint8)


def _free(lib: Any, buffer: int, size: int) -> None:
    lib.ggml_backend_buffer_free(buffer)
    global _pinned_bytes
    with _lock:
        _pinned_bytes -= size


def pinned_bytes() -> int:
    """Bytes of page-locked memory the prompt cache holds now (as ggml allocated it: its CUDA host buffer type
    falls back to ordinary memory where the driver refuses to lock more)."""
    return _pinned_bytes


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

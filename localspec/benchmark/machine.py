"""Which machine a benchmark ran on, kept with its results: a ratio between two results compares only where both
ran on the same kind of card."""

from __future__ import annotations

import os
import platform
from typing import Any


def machine_info() -> dict[str, Any]:
    """Host name, processor, cores, the NVIDIA GPUs' names (an empty list without a driver), what keys the CUDA
    backend's captured graphs (localspec's engine sets it as it loads unless it is set: `build_flags.CUDA_GRAPH_KEY`),
    the graph lookups they are kept for (likewise: `build_flags.CUDA_GRAPH_KEEP_CALLS`), whether a one-token pass's
    CPU attention may split its context (likewise: `build_flags.CPU_FA_SPLIT_KV`) and the KV padding asked for
    (`build_flags.KV_PAD_ENV`, None: upstream's)."""
    from localspec.build_flags import KV_PAD_ENV, cpu_fa_split_kv, cuda_graph_keep_calls, cuda_graph_key
    from localspec.models.hardware import gpu_devices

    return {
        "machine": platform.node(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "gpus": list(gpu_devices()),
        "cuda_graph_key": cuda_graph_key(),
        "cuda_graph_keep_calls": cuda_graph_keep_calls(),
        "cpu_fa_split_kv": cpu_fa_split_kv(),
        "kv_pad": os.environ.get(KV_PAD_ENV),
    }

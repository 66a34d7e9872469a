"""Which machine a benchmark ran on, kept with its results: a ratio between two results compares only where both
ran on the same kind of card."""

from __future__ import annotations

import os
import platform
from typing import Any


def machine_info() -> dict[str, Any]:
    """Host name, processor, cores and the NVIDIA GPUs' names (an empty list without a driver)."""
    from localspec.models.hardware import gpu_devices

    return {
        "machine": platform.node(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "gpus": list(gpu_devices()),
    }

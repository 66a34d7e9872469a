"""How much memory this machine has for models: NVIDIA GPU memory (through NVIDIA's own NVML bindings) and RAM.

`LOCALSPEC_GPU_MEMORY` and `LOCALSPEC_RAM_MEMORY` replace what is probed ("none", "TOTAL" or "TOTAL,FREE" in
GB), to ask what would fit elsewhere or to test the fit rule with a known figure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from localspec.errors import ConfigError

GPU_ENV = "LOCALSPEC_GPU_MEMORY"
RAM_ENV = "LOCALSPEC_RAM_MEMORY"


@dataclass(frozen=True)
class Memory:
    """Bytes in all, bytes free now, and where the figures came from."""

    total: int
    free: int
    source: str
    devices: tuple[str, ...] = ()
    # False for a GPU the installed llama.cpp cannot use (a build without its backend).
    usable: bool = True


def _override(name: str, value: str) -> Memory | None:
    if value.strip().lower() in ("none", "0", ""):
        return None
    try:
        figures = [float(part) for part in value.split(",")]
    except ValueError:
        figures = []
    if len(figures) not in (1, 2) or any(f <= 0 for f in figures) or figures[-1] > figures[0]:
        raise ConfigError(
            f'{name}={value!r} is not a memory size: use "none", "TOTAL" or "TOTAL,FREE" in GB '
            f'(e.g. "24" or "24,20"), or unset it to probe this machine.'
        )
    total, free = int(figures[0] * 1e9), int(figures[-1] * 1e9)
    return Memory(total=total, free=free, source=f"env {name}")


def _nvidia_memory() -> Memory | None:
    """All NVIDIA GPUs added up (llama.cpp splits layers across them), or None without a driver."""
    import pynvml  # nvidia-ml-py

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # no driver or no GPU
        return None
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        if not handles:
            return None
        infos = [pynvml.nvmlDeviceGetMemoryInfo(h) for h in handles]
        names = tuple(str(pynvml.nvmlDeviceGetName(h)) for h in handles)
        return Memory(
            total=sum(int(m.total) for m in infos),
            free=sum(int(m.free) for m in infos),
            source="NVIDIA driver (NVML)",
            devices=names,
        )
    except pynvml.NVMLError:
        return None
    finally:
        pynvml.nvmlShutdown()


def gpu_memory() -> Memory | None:
    """The GPU memory models can be offloaded to; None when there is no NVIDIA GPU."""
    if (value := os.environ.get(GPU_ENV)) is not None:
        return _override(GPU_ENV, value)
    found = _nvidia_memory()
    if found is not None:
        import llama_cpp

        if not llama_cpp.llama_supports_gpu_offload():
            return replace(found, usable=False)
    return found


def gpu_devices() -> tuple[str, ...]:
    """The NVIDIA GPUs' names as their driver gives them; () without a driver.
    What the machine has, whatever `LOCALSPEC_GPU_MEMORY` says; () too where nvidia-ml-py is not installed (a
    benchmark's results only name the card, and a machine prepared before `bench/gpu/` carried it lacks it)."""
    try:
        found = _nvidia_memory()
    except ImportError:
        return ()
    return found.devices if found is not None else ()


def _meminfo(path: Path = Path("/proc/meminfo")) -> Memory | None:
    """Linux: MemTotal and MemAvailable (what can be allocated without swapping), in kB."""
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    fields = {}
    for line in lines:
        key, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            fields[key] = int(rest.split()[0]) * 1024
    if "MemTotal" not in fields or "MemAvailable" not in fields:
        return None
    return Memory(total=fields["MemTotal"], free=fields["MemAvailable"], source=str(path))


def ram_memory() -> Memory | None:
    """RAM in all and available now; None where neither /proc/meminfo nor sysconf tells."""
    if (value := os.environ.get(RAM_ENV)) is not None:
        return _override(RAM_ENV, value)
    if found := _meminfo():
        return found
    try:  # macOS and other Unixes: the total only, so "available" is the total
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return Memory(total=total, free=total, source="sysconf (total only)")

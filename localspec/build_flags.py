"""Print the CMAKE_ARGS that build llama-cpp-python safely for this machine.

Run it BEFORE installing (it imports nothing from localspec):
    CMAKE_ARGS="$(python3 localspec/build_flags.py)" pip install -e .

Why: llama.cpp's default build uses -march=native, which enables every instruction set the CPU advertises
through cpuid, including AMX. Many VMs advertise AMX but the kernel does not permit it, and the first decode
then dies with SIGILL. On x86-64 Linux we name the extensions the kernel reports in /proc/cpuinfo instead.
With an NVIDIA GPU and toolkit (nvcc) present, the CUDA backend is added (LOCALSPEC_CUDA=0/1 overrides). Every build
carries localspec's changes to llama.cpp's sources: `llama_patches/apply.cmake`, which CMake runs as the build
configures ggml, lets the CUDA backend keep a captured graph per pass size (CUDA_GRAPH_KEY) through pauses between
requests (CUDA_GRAPH_KEEP_ENV), pads the KV length a pass attends over where asked (KV_PAD_ENV) and keeps the CPU's
one-token attention in the order a verify pass sums in (CPU_FA_SPLIT_KV_ENV).
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
from pathlib import Path

LLAMA_PATCHES = Path(__file__).resolve().parent / "llama_patches" / "apply.cmake"
# Read once by a build carrying those changes. localspec's engine sets "shape" as it loads (a captured CUDA graph per
# pass size: a speculative step's passes of other sizes no longer cost the one-token passes after them their graph;
# docs/BENCHMARKS.md, fifty-third lease) unless the environment names one; "node" is upstream's behaviour.
CUDA_GRAPH_KEY_ENV, CUDA_GRAPH_KEY = "GGML_CUDA_GRAPH_KEY", "shape"
# Read once by such a build: cached CUDA graphs are aged by this many graph lookups (a few a pass) instead of
# upstream's 10 s, so that a pause between requests no longer drops every pass size's graph (docs/BENCHMARKS.md,
# fifty-fifth lease). localspec's engine sets it as it loads unless the environment names a number.
CUDA_GRAPH_KEEP_ENV, CUDA_GRAPH_KEEP_CALLS = "GGML_CUDA_GRAPH_KEEP_CALLS", "100000"
# Read once by such a build: a power of two of KV cells to pad the length a pass attends over to (upstream: 256),
# so that passes at other context lengths keep one shape and their captured CUDA graphs. Not set by localspec: an
# editor's jumps gained little, and a big target's one-token passes would read the padding's KV (docs/BENCHMARKS.md).
KV_PAD_ENV = "LLAMA_KV_PAD"
# Read once by such a build: "0" computes a one-token pass's CPU attention as a pass of several tokens computes each
# of its rows (upstream splits a long context across threads and sums in another order), so that a verify pass's
# rows are one-token passes' bit for bit wherever the matrix kernels agree too (passes of 2-3 tokens with the
# default pair: docs/BENCHMARKS.md, session 74). localspec's engine sets it as it loads unless the environment
# names a value.
CPU_FA_SPLIT_KV_ENV, CPU_FA_SPLIT_KV = "GGML_CPU_FA_SPLIT_KV", "0"


def cuda_graph_key() -> str:
    """The graph key this process's models run with: the environment's, else the one the engine sets."""
    return os.environ.get(CUDA_GRAPH_KEY_ENV, CUDA_GRAPH_KEY)


def cuda_graph_keep_calls() -> str:
    """The graph lookups this process's captured CUDA graphs are kept for: the environment's, else the engine's."""
    return os.environ.get(CUDA_GRAPH_KEEP_ENV, CUDA_GRAPH_KEEP_CALLS)


def cpu_fa_split_kv() -> str:
    """Whether this process's one-token passes may split their CPU attention: the environment's, else the engine's."""
    return os.environ.get(CPU_FA_SPLIT_KV_ENV, CPU_FA_SPLIT_KV)


# /proc/cpuinfo flag -> llama.cpp CMake option
X86_OPTIONS = {
    "avx": "GGML_AVX",
    "avx2": "GGML_AVX2",
    "fma": "GGML_FMA",
    "f16c": "GGML_F16C",
    "avx512f": "GGML_AVX512",
    "avx512_vnni": "GGML_AVX512_VNNI",
    "avx512_bf16": "GGML_AVX512_BF16",
    "avx_vnni": "GGML_AVX_VNNI",
}


def _has_nvidia_gpu() -> bool:
    # The CUDA compiler alone is not enough: a CUDA build on a machine without a GPU cannot load libcuda.
    forced = os.environ.get("LOCALSPEC_CUDA")
    if forced is not None:
        return forced not in ("0", "", "false", "no")
    return shutil.which("nvcc") is not None and Path("/dev/nvidia0").exists()


def cmake_args(
    cpuinfo: str | None = None, machine: str | None = None, has_gpu: bool | None = None
) -> list[str]:
    machine = (machine or platform.machine()).lower()
    args: list[str] = []
    if machine in ("x86_64", "amd64"):
        if cpuinfo is None:
            path = Path("/proc/cpuinfo")
            cpuinfo = path.read_text() if path.exists() else ""
        flags_line = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
        flags = set(flags_line.partition(":")[2].split())
        if flags:
            args.append("-DGGML_NATIVE=OFF")
            args += [f"-D{option}=ON" for flag, option in X86_OPTIONS.items() if flag in flags]
    if has_gpu if has_gpu is not None else _has_nvidia_gpu():
        args.append("-DGGML_CUDA=ON")
    args.append(f"-DCMAKE_PROJECT_ggml_INCLUDE={LLAMA_PATCHES}")
    return args


if __name__ == "__main__":
    print(" ".join(shlex.quote(arg) for arg in cmake_args()))

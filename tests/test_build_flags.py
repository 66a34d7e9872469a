"""localspec/build_flags.py: the CMAKE_ARGS that keep llama.cpp off instructions the kernel does not permit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from localspec.build_flags import cmake_args

AMX_VM = "processor: 0\nflags\t\t: fpu sse avx avx2 fma f16c avx512f avx512_vnni amx_tile amx_int8 amx_bf16\n"


def test_x86_builds_name_extensions_instead_of_march_native() -> None:
    args = cmake_args(cpuinfo=AMX_VM, machine="x86_64", has_gpu=False)
    assert args[0] == "-DGGML_NATIVE=OFF"
    assert {"-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON"} <= set(args)
    assert not any("AMX" in arg for arg in args)
    assert "-DGGML_AVX512_BF16=ON" not in args  # not reported by this CPU


def test_other_architectures_keep_the_native_build_and_a_gpu_adds_cuda() -> None:
    assert cmake_args(cpuinfo="", machine="aarch64", has_gpu=False) == []
    assert cmake_args(cpuinfo="", machine="arm64", has_gpu=True) == ["-DGGML_CUDA=ON"]


def test_the_script_runs_before_localspec_is_installed(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parent.parent / "localspec" / "build_flags.py"
    # From an unrelated folder, with no access to the package: it must only need the standard library.
    result = subprocess.run(
        [sys.executable, "-I", str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.endswith("\n")

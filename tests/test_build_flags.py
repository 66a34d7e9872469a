"""localspec/build_flags.py: the CMAKE_ARGS that keep llama.cpp off instructions the kernel does not permit."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from localspec.build_flags import LLAMA_PATCHES, cmake_args

AMX_VM = "processor: 0\nflags\t\t: fpu sse avx avx2 fma f16c avx512f avx512_vnni amx_tile amx_int8 amx_bf16\n"


def test_x86_builds_name_extensions_instead_of_march_native() -> None:
    args = cmake_args(cpuinfo=AMX_VM, machine="x86_64", has_gpu=False)
    assert args[0] == "-DGGML_NATIVE=OFF"
    assert args[-1] == f"-DCMAKE_PROJECT_ggml_INCLUDE={LLAMA_PATCHES}"  # localspec's changes, on every build
    assert {"-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON"} <= set(args)
    assert not any("AMX" in arg for arg in args)
    assert "-DGGML_AVX512_BF16=ON" not in args  # not reported by this CPU


def test_other_architectures_keep_the_native_build_and_a_gpu_adds_cuda() -> None:
    assert cmake_args(cpuinfo="", machine="aarch64", has_gpu=False) == [
        f"-DCMAKE_PROJECT_ggml_INCLUDE={LLAMA_PATCHES}"
    ]
    assert cmake_args(cpuinfo="", machine="arm64", has_gpu=True) == [
        "-DGGML_CUDA=ON",
        f"-DCMAKE_PROJECT_ggml_INCLUDE={LLAMA_PATCHES}",
    ]
    assert LLAMA_PATCHES.is_file()


def _run_patches(ggml: Path) -> str:
    """The patch script as CMake runs it at ggml's project(), with `ggml` as ggml's source folder."""
    cmake = shutil.which("cmake")
    assert cmake, "cmake builds llama.cpp (.ci/build-llama-server): it must be on PATH"
    result = subprocess.run(
        [cmake, "-P", str(LLAMA_PATCHES)], cwd=ggml, capture_output=True, text=True, check=True
    )
    return " ".join((result.stdout + result.stderr).split())  # (CMake wraps a warning's lines)


# Each change: the file it rewrites (from llama.cpp's folder), the start of the code it replaces and the text that
# reads the switch in the new code.
CHANGES = {
    "CUDA graph key": (
        "ggml/src/ggml-cuda/ggml-cuda.cu",
        "static const void * ggml_cuda_graph_get_key(",
        'getenv("GGML_CUDA_GRAPH_KEY")',
    ),
    "KV padding": ("src/llama-kv-cache.cpp", "    const uint32_t n_pad_cur = ", 'getenv("LLAMA_KV_PAD")'),
    "CUDA graph keep": (
        "ggml/src/ggml-cuda/common.cuh",
        "    ggml_cuda_graph * cuda_graph(",
        'getenv("GGML_CUDA_GRAPH_KEEP_CALLS")',
    ),
    "CPU attention split": (
        "ggml/src/ggml-cpu/ops.cpp",
        "    const bool use_split_kv_path = ",
        'getenv("GGML_CPU_FA_SPLIT_KV")',
    ),
}


def test_the_patches_rewrite_the_vendored_sources_once_and_nothing_else(
    tmp_path: Path, llama_cpp_tools: Path
) -> None:
    import llama_cpp

    # The sdist .ci/build-llama-server downloaded: its sources as shipped (the build patched its unpacked copy).
    name = f"llama_cpp_python-{llama_cpp.__version__}"
    sdist = llama_cpp_tools.parent / "src" / f"{name}.tar.gz"
    assert sdist.is_file(), f"no llama-cpp-python sdist at {sdist}"
    originals = {}
    with tarfile.open(sdist) as archive:
        for path, _, _ in CHANGES.values():
            member = archive.extractfile(f"{name}/vendor/llama.cpp/{path}")
            assert member is not None, f"{path} is not in {sdist}"
            originals[path] = member.read().decode()
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_text(originals[path])

    printed = _run_patches(tmp_path / "ggml")
    patched = {}
    for name, (path, start, switch) in CHANGES.items():
        assert f"{name} patched" in printed
        patched[path] = (tmp_path / path).read_text()
        assert switch in patched[path]
        # Only the code at `start` changed (up to its function's or line's end): the rest is the vendored file.
        before, _, after = originals[path].partition(start)
        rest = after.partition("\n}\n" if start.endswith("(") else "\n")[2]
        assert patched[path].startswith(before) and patched[path].endswith(rest)
    assert "return cgraph->nodes[0];" not in patched[CHANGES["CUDA graph key"][0]]
    # Without the switch, graphs age as upstream's do: 10 s unused, swept every 5 s.
    assert "keep_calls > 0 ? keep_calls : (int64_t) 10'000'000" in patched[CHANGES["CUDA graph keep"][0]]

    printed = _run_patches(tmp_path / "ggml")
    assert all(f"{name} already patched" in printed for name in CHANGES)
    assert all((tmp_path / path).read_text() == text for path, text in patched.items())


def test_the_patches_leave_sources_they_do_not_recognise_as_they_are(tmp_path: Path) -> None:
    cuda = tmp_path / "ggml" / "src" / "ggml-cuda" / "ggml-cuda.cu"
    cuda.parent.mkdir(parents=True)
    cuda.write_text("static const void * ggml_cuda_graph_get_key(ggml_cgraph * g) { return g->nodes[1]; }\n")
    printed = _run_patches(tmp_path / "ggml")  # (and no llama-kv-cache.cpp at all)
    assert "CUDA graph key: the code to change was not found as expected" in printed
    assert "KV padding: the code to change was not found as expected" in printed
    assert "CUDA graph keep: the code to change was not found as expected" in printed
    assert "CPU attention split: the code to change was not found as expected" in printed
    assert "nodes[1]" in cuda.read_text()
    assert not (tmp_path / "src" / "llama-kv-cache.cpp").exists()


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

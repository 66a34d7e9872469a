#!/usr/bin/env bash
# pack-build.sh : after setup.sh's build, the CUDA build's libraries and llama-server, xz-compressed, into $OUT in
# 15 MiB parts (`cat` them into .gpu/build.tar.xz here: setup.sh then unpacks it instead of building). At most 44 MiB:
# the setup call carries it beside .gpu/llama.tar.xz, .gpu/whl and the tree, 64 MiB in all.
set -uo pipefail
while [[ ! -s /tmp/w/build.done ]]; do sleep 5; done
[[ $(cat /tmp/w/build.done) == 0 ]] || { tail -30 /tmp/w/build.log; exit 1; }
B=$(echo /tmp/w/llama_cpp_python-*/vendor/llama.cpp/build/bin)
du -sh "$B"; ls "$B" | head -30
source "$(dirname "$0")/llama-build.sh"
pack_build "$B" "$(basename /tmp/w/llama_cpp_python-*)" > /tmp/build.tar.xz
size=$(stat -c %s /tmp/build.tar.xz); echo "packed: $size bytes"
if (( size <= 44 * 1024 * 1024 )); then split -b 15M /tmp/build.tar.xz "$OUT/build.tar.xz."; ls -la "$OUT"; else echo "too big to bring back"; fi

#!/usr/bin/env bash
# First call on a fresh GPU machine: wheels + llama_cpp into /tmp/site, one CUDA build in the background.
set -euo pipefail
# (idempotent: the chunk batch begins with the setup again, in case the machine was given back before the batch;
# done only once it reached its end, so a setup cut short is redone)
[[ -f /tmp/w/setup.done ]] && { echo "setup already done on this machine"; exit 0; }
repo=$PWD
source bench/gpu/llama-build.sh
mkdir -p /tmp/w /tmp/m /tmp/site
tar -xJf .gpu/llama.tar.xz -C /tmp/w
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
src=$(echo /tmp/w/llama_cpp_python-*)
cp -r "$src/llama_cpp" /tmp/site/
cd "$src/vendor/llama.cpp"
packed=$repo/.gpu/build.tar.xz  # a build of these sources (pack-build.sh, or one made here): unpacked in seconds
unpacked=0
if [[ -f $packed && $(tar -xJOf "$packed" ./built-from 2>/dev/null) == "$(basename "$src")" ]]; then
    mkdir -p build/bin && tar -xJf "$packed" -C build/bin
    # (a build made elsewhere may link CUDA libraries of another version than this machine's)
    if missing=$(LD_LIBRARY_PATH=build/bin ldd build/bin/libggml-cuda.so build/bin/llama-server | grep "not found"); then
        echo "the packed build needs what this machine lacks: building"; echo "$missing" | sort -u; rm -rf build
    elif ! LLAMA_CPP_LIB_PATH=$PWD/build/bin LD_LIBRARY_PATH=$PWD/build/bin PYTHONPATH=/tmp/site \
        python3 "$repo/bench/gpu/check_build.py"; then
        echo "the packed build does not decode on this GPU: building"; rm -rf build
    else
        echo 0 > /tmp/w/build.done && echo "build unpacked" && unpacked=1
    fi
elif [[ -f $packed ]]; then
    echo "$packed was not built from $(basename "$src"): building"
fi
if (( ! unpacked )) && [[ ! -f /tmp/w/build.log ]]; then  # (a build started by a setup cut short runs on)
    setsid nohup sh -c "cmake -B build $LLAMA_CMAKE_FLAGS > /tmp/w/build.log 2>&1 \
      && cmake --build build -j16 --target llama llama-server llama-bench >> /tmp/w/build.log 2>&1; echo \$? > /tmp/w/build.done" \
      > /dev/null 2>&1 < /dev/null &
fi
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
python3 --version; nproc
touch /tmp/w/setup.done
echo setup-started

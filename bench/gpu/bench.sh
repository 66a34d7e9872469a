#!/usr/bin/env bash
# bench.sh NAME [bench flags] : one `localspec bench` of the tree SRC (default main). An argument `@LS` stands for
# the llama-server this machine's build made (`--against-llama-server @LS`): a glob written in the call would be
# expanded before the build has made it.
set -uo pipefail
source "$(dirname "$0")/env.sh"
name=$1; shift
args=()
for arg in "$@"; do [[ $arg == @LS ]] && arg=$LS; args+=("$arg"); done
pkg=$(pkg_for "${SRC:-main}")
mkdir -p /tmp/r/$name
(cd /tmp && PYTHONPATH=$pkg:/tmp/site python3 -m localspec bench --target $T --draft $D --scaled-dir /tmp/scaled \
    "${args[@]}" --out /tmp/r/$name) 2>&1 | tee $OUT/$name.log | grep -v "^\s*$" | tail -60
f=$(ls /tmp/r/$name/*.json | head -1)
cp "$f" $OUT/$name.json

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
# Results straight into $OUT: what a run stopped by the call's time limit wrote so far still comes back.
(cd /tmp && PYTHONPATH=$pkg:/tmp/site python3 -m localspec bench --target $T --draft $D --scaled-dir /tmp/scaled \
    "${args[@]}" --out $OUT/$name) 2>&1 | tee $OUT/$name.log | grep -v "^\s*$" | tail -60
pack_run "$name"

#!/usr/bin/env bash
# bench.sh NAME [bench flags] : one `localspec bench` of the tree SRC (default main).
set -uo pipefail
source "$(dirname "$0")/env.sh"
name=$1; shift
pkg=$(pkg_for "${SRC:-main}")
mkdir -p /tmp/r/$name
(cd /tmp && PYTHONPATH=$pkg:/tmp/site python3 -m localspec bench --target $T --draft $D --scaled-dir /tmp/scaled \
    "$@" --out /tmp/r/$name) 2>&1 | tee $OUT/$name.log | grep -v "^\s*$" | tail -60
f=$(ls /tmp/r/$name/*.json | head -1)
cp "$f" $OUT/$name.json

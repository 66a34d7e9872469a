#!/usr/bin/env bash
# editor.sh NAME [bench-editor flags] : `localspec bench-editor` on difflib.py and argparse.py (SRC=tree name).
set -uo pipefail
source "$(dirname "$0")/env.sh"
name=$1; shift
pkg=$(pkg_for "${SRC:-main}")
mkdir -p /tmp/src
lib=$(python3 -c 'import difflib, os; print(os.path.dirname(difflib.__file__))')
cp $lib/difflib.py $lib/argparse.py /tmp/src/
cd /tmp && PYTHONPATH=$pkg:/tmp/site LOCALSPEC_HOME=/tmp/lsh-$name python3 -m localspec bench-editor /tmp/src --target $T \
    --draft $D --files 2 --against-llama-server $LS "$@" --out $OUT/$name.json 2>&1 | tee $OUT/$name.log | tail -40
gzip -f $OUT/$name.json  # (written into $OUT as it goes: a run stopped part-way keeps what it measured)
keep_server_log "$OUT/$name-llama-server.log" "$OUT/$name.log"  # (two files a run: a call brings back 8)

#!/usr/bin/env bash
# arms.sh SCALE MODES ARM... : one `localspec bench` per arm, one after the other (EXTRA: more bench flags for all).
# An arm may carry its own bench flags after a colon, commas for spaces: main:--draft-max=24. GGML_CUDA_GRAPH_KEY,
# GGML_CUDA_GRAPH_KEEP_CALLS and LLAMA_KV_PAD (localspec's changes to the sources, llama-build.sh) name the runs.
set -uo pipefail
source "$(dirname "$0")/env.sh"
scale=$1 modes=$2; shift 2
for spec in "$@"; do
    arm=${spec%%:*} flags=
    [[ $spec == *:* ]] && flags=${spec#*:} && flags=${flags//,/ }
    tree=$(tree_for "$arm"); pkg=$(pkg_for "$arm")
    name=gpu-x$scale-$arm$(echo "$flags" | tr -dc 'a-z0-9')${GGML_CUDA_GRAPH_KEY:+-key$GGML_CUDA_GRAPH_KEY}${GGML_CUDA_GRAPH_KEEP_CALLS:+-keep$GGML_CUDA_GRAPH_KEEP_CALLS}${LLAMA_KV_PAD:+-pad$LLAMA_KV_PAD}-$(date +%H%M%S)
    echo "== $spec (x$scale) $(date +%T)"
    (cd /tmp && PYTHONPATH=$pkg:/tmp/site python3 -m localspec bench --target $T --draft $D --scale-layers $scale \
        --scaled-dir /tmp/scaled --prompts ${PROMPTS:-humaneval=20,fim=10,code-edit=10} \
        --modes $modes ${EXTRA:-} $flags --out $OUT/$name) 2>&1 | tee $OUT/$name.log | grep -v "^\s*$" | tail -40
    pack_run "$name"
    PYTHONPATH=$tree:/tmp/site python3 $tree/bench/render_table.py $OUT/$name.json.gz | head -30
done

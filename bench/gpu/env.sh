# Sourced by the run scripts: waits for the CUDA build, then points Python at it.
# A machine left idle for 30 s is given back and the next call gets a fresh one, without the build or the models:
# stop at once rather than wait for a build that is not running.
[[ -d /tmp/w && -f /tmp/models/target.gguf ]] || { echo "fresh machine (idle release?): run setup.sh and the chunk calls again"; exit 3; }
while [[ ! -s /tmp/w/build.done ]]; do sleep 5; done
[[ $(cat /tmp/w/build.done) == 0 ]] || { tail -30 /tmp/w/build.log; exit 1; }
# Only now: before the build has made build/bin the glob matches nothing and stays a literal `*` path, which is
# how the first run after the build's wait failed to load libllama in the twenty-eighth and thirtieth leases.
B=$(echo /tmp/w/llama_cpp_python-*/vendor/llama.cpp/build/bin)
[[ -f $B/libllama.so ]] || { echo "no libllama.so in $B after the build"; ls "$B" | head; exit 1; }
export LLAMA_CPP_LIB_PATH=$B LD_LIBRARY_PATH=$B${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} PYTHONUNBUFFERED=1
export LS=$B/llama-server T=/tmp/models/target.gguf D=/tmp/models/draft.gguf
export NCCL_NVLS_ENABLE=0
tree_for() {  # main = the working tree; any other arm = .gpu/exp-ARM
    if [[ $1 == main ]]; then echo "$PWD"; else echo "$PWD/.gpu/exp-$1"; fi
}
pkg_for() {  # an importable copy of an arm's tree: models/, tui/, lsp/ install as localspec.models etc.
    local src d=/tmp/pkg-$1 f
    src=$(tree_for "$1")
    rm -rf "$d" && mkdir -p "$d" && cp -r "$src/localspec" "$d/"
    for f in models tui lsp; do
        if [[ -d $src/$f ]]; then cp -r "$src/$f" "$d/localspec/$f"; else cp -r "$PWD/$f" "$d/localspec/$f"; fi
    done
    echo "$d"
}
keep_server_log() {  # LOG OUT_LOG: llama-server's log's tail appended to a run's log, the log itself removed
    [[ -f $1 ]] || return 0
    { echo "== llama-server.log (tail)"; tail -40 "$1"; } >> "$2" && rm "$1"
}
pack_run() {  # $OUT/NAME/ (a bench run's results) -> $OUT/NAME.json.gz, llama-server's log's tail into $OUT/NAME.log
    # A call brings back at most 8 files: two a run; the plot stays behind. A run stopped part-way keeps what it wrote.
    local dir=$OUT/$1 f
    [[ -d $dir ]] || return 0
    keep_server_log "$dir/llama-server.log" "$OUT/$1.log"
    f=$(ls "$dir"/*.json 2>/dev/null | head -1)
    [[ -n $f ]] && gzip -c "$f" > "$OUT/$1.json.gz"
    rm -r "$dir"
}

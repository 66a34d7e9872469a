#!/usr/bin/env bash
# After the last chunk: the two models in /tmp/models, checked; reports the build's state.
set -euo pipefail
mkdir -p /tmp/models
cat /tmp/m/t?? > /tmp/models/target.gguf
cat /tmp/m/d?? > /tmp/models/draft.gguf
sha256sum /tmp/models/*.gguf
ls /tmp/m | wc -l
if [[ ! -d /tmp/w ]]; then  # the setup ran on a machine given back before the chunks came (README)
    echo "no setup on this machine: run setup.sh now (in the same batch as the first run)"; exit 4
fi
cat /tmp/w/build.done 2>/dev/null || { echo "build running"; tail -3 /tmp/w/build.log; }

"""How long an editor request waits for the engine when it arrives while a less urgent request runs.

The language server warms a file's windows with prefills (`max_tokens: 0`) after every open and every edit, and a
chat may be reading a long prompt; a request that arrives meanwhile is what a user typing in the editor sends.
This starts a daemon (`localspec serve` in a temporary home), times the other request alone once (the prefill of a
128-line window of `difflib.py`, or with `--during chat` a chat message holding 160 lines of it), then `--tries`
times: starts it anew (another window), waits a random 10-90% of its time alone (seeded: a GPU reads a window in
tens of milliseconds, a CPU in seconds), sends a one-line infill of another file, and reads how long that request
waited for the engine (`queued` in its record), and last times another window alone. Prints the waits and the
request's whole time (ms), and the chunk size the engine reads such prompts in (`engine.prompt_chunks`):

    python bench/prefill_wait.py TARGET.gguf DRAFT.gguf [--during prefill|chat] [--tries 12] [--threads 2]
"""

from __future__ import annotations

import argparse
import difflib
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

from localspec.benchmark.daemon_process import DaemonProcess


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", type=Path)
    parser.add_argument("draft", type=Path)
    parser.add_argument("--tries", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--during", choices=("prefill", "chat"), default="prefill")
    args = parser.parse_args()

    lines = Path(difflib.__file__).read_text().splitlines(keepends=True)
    rng = random.Random(args.seed)
    serve = ["--target", str(args.target), "--draft", str(args.draft), "--n-ctx", "4096"]
    with tempfile.TemporaryDirectory() as folder:
        daemon = DaemonProcess(Path(folder) / "home", [*serve, "--threads", str(args.threads)], timeout=600)
        try:
            http, background = daemon.client(timeout=600), daemon.client(timeout=600)
            waits, totals = [], []

            def other(i: int) -> tuple[str, dict[str, object]]:
                if args.during == "prefill":
                    window = "".join(lines[100 + i * 64 : 228 + i * 64])
                    return "/v1/infill", {"prefix": window, "max_tokens": 0, "filename": "difflib.py"}
                code = "".join(lines[100 + i * 64 : 260 + i * 64])
                message = {"role": "user", "content": f"Explain this code:\n{code}"}
                return "/v1/chat/completions", {"messages": [message], "max_tokens": 16}

            # (The daemon times its passes once loaded, before its first request.)
            http.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}).raise_for_status()
            path, body = other(args.tries)  # (a window the tries do not use)
            started = time.perf_counter()
            background.post(path, json=body).raise_for_status()
            alone = time.perf_counter() - started
            for i in range(args.tries):
                path, body = other(i)
                warm = threading.Thread(target=background.post, args=(path,), kwargs={"json": body})
                warm.start()
                time.sleep(rng.uniform(0.1, 0.9) * alone)  # the user types meanwhile
                request = {
                    "prefix": "".join(lines[1000 + i * 10 : 1010 + i * 10]) + "        ",
                    "suffix": "\n",
                    "max_tokens": 4,
                    "single_line": True,
                    "filename": "other.py",
                    "speculative": "none",
                }
                started = time.perf_counter()
                http.post("/v1/infill", json=request).raise_for_status()
                totals.append(time.perf_counter() - started)
                record = [r for r in daemon.stats()["recent"] if r["kind"] == "infill"][-1]
                waits.append(record["time"]["queued"])
                warm.join()
            path, body = other(args.tries + 1)  # alone again, in the chunks the tries taught (on a GPU)
            started = time.perf_counter()
            background.post(path, json=body).raise_for_status()
            alone_after = time.perf_counter() - started
            engine = daemon.stats()["engine"]
            stopped = engine.get("gave_way")
            http.close()
            background.close()
        finally:
            daemon.close()
    print(
        f"the other request alone: {alone * 1000:.0f} ms, after the tries {alone_after * 1000:.0f} ms "
        f"(chunks of {engine.get('prompt_chunk')} tokens)"
    )
    print(f"waits for the engine (ms): {[round(w * 1000) for w in waits]}")
    print(
        f"wait p50 {statistics.median(waits) * 1000:.0f} ms, request p50 {statistics.median(totals) * 1000:.0f} ms; "
        f"prefill passes stopped for a request: {stopped}"
    )


if __name__ == "__main__":
    main()

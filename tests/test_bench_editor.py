"""`localspec bench-editor` end to end on the tiny models (real LSP client, language server, daemon and, when built,
llama-server), and its place picker and percentiles on plain data."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import TinyModels
from rich.console import Console
from waiting import wait_until

from localspec.benchmark.editor import (
    BenchOptions,
    _place_stream,
    against_text,
    replay_llama_server,
    warm_up_estimate,
)
from localspec.benchmark.editor_places import PlacePicker, choose_files, find_sources, is_place
from localspec.benchmark.editor_report import SCENARIOS, Sample, percentile, print_report
from localspec.benchmark.infill_server import InfillClient, server_modes
from localspec.benchmark.runner import LlamaServer
from localspec.errors import InvalidRequestError
from localspec.models.hardware import gpu_devices


def _write_project(root: Path, files: int = 3, functions: int = 30) -> Path:
    """Fill `root` (made if missing) with Python modules of functions with indented bodies (over 200 lines
    each), plus files the picker skips; returns it."""
    root.mkdir(exist_ok=True)
    for index in range(files):
        body = []
        for number in range(functions + index):
            body += [
                f"def function_{index}_{number}(values):",
                "    total = 0",
                "    for value in values:",
                f"        total += value * {number}",
                "    return total",
                "",
                "",
            ]
        (root / f"module_{index}.py").write_text("\n".join(body))
    for skipped in (root / ".hidden", root / "node_modules"):
        skipped.mkdir()
        (skipped / "big.py").write_text("    x = 1\n" * 500)
    (root / "notes.txt").write_text("not source\n" * 500)
    return root


def _bench_editor(home: Path, out: Path, *args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALSPEC_")}
    env["LOCALSPEC_HOME"] = str(home)
    completed = subprocess.run(
        [sys.executable, "-m", "localspec", "bench-editor", "--threads", "1", "--n-ctx", "2048",
         "--max-tokens", "16", "--jumps", "2", "--files", "2", "--out", str(out), *args],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return dict(json.loads(out.read_text()))


def _check_localspec(result: dict[str, Any]) -> None:
    samples = result["samples"]
    for line_mode in ("single", "multi"):
        mine = [s for s in samples if s["line_mode"] == line_mode]
        assert {s["scenario"] for s in mine} == set(SCENARIOS), line_mode
        assert all(s["seconds"] > 0 and not s["failed"] for s in mine)
        assert set(result["meta"]["warm_up_seconds"]) == {"single", "multi"}
        windows = result["meta"]["warm_up_windows"][line_mode]  # the default cache holds every window
        assert windows["warmed"] > 0 and windows["waiting"] == 0
        prices = result["meta"]["daemon_prices"][line_mode]  # what the daemon's chooser planned with
        cache = result["meta"]["daemon_prompt_cache"][line_mode]  # the warm-up's copies, then the jumps'
        assert cache["start"]["entries"] > 0 and cache["end"]["saves"] >= cache["start"]["saves"]
        assert prices["start"].startswith("target pass 1: ") and prices["end"].startswith("target pass 1: ")
    # Typing along types what was suggested; typing against types something else.
    for sample in samples:
        if sample["scenario"] == "typing-along":
            assert sample["typed"] and "\n" not in sample["typed"]
    # The language server's own time sits between the editor's and the daemon's record of the generation.
    jumps = [Sample(**{k: s[k] for k in ("line_mode", "scenario", "file", "line", "column", "typed", "seconds",
                                         "text", "server_seconds", "daemon")})
             for s in samples if s["scenario"].startswith("jump")]  # fmt: skip
    timed = [(s, s.own_record()) for s in jumps if s.own_record() is not None]
    assert timed
    for sample, record in timed:
        assert sample.server_seconds is not None
        assert float(record["seconds"]) - 0.001 <= sample.server_seconds <= sample.seconds
    rows = {(row["line_mode"], row["scenario"]): row for row in result["summary"]}
    assert set(rows) == {(mode, scenario) for mode in ("single", "multi") for scenario in SCENARIOS}
    assert all(row["localspec_p50_ms"] > 0 for row in rows.values())
    assert all(rows[mode, "jump-in-file"]["lsp_transport_p50_ms"] > 0 for mode in ("single", "multi"))
    # Jumps within a warmed file evaluate only the cursor's line and the suffix anew: most of the prompt is cached.
    for mode in ("single", "multi"):
        prompts = [
            r["prompt_tokens"] for s in jumps if s.line_mode == mode and (r := s.own_record()) is not None
        ]
        new = rows[mode, "jump-in-file"]["new_prompt_tokens_p50"]
        assert 0 < new < sorted(prompts)[len(prompts) // 2] / 2


def test_bench_editor_measures_every_scenario_through_the_language_server(
    tiny_models, tmp_path: Path
) -> None:
    project = _write_project(tmp_path / "project")
    result = _bench_editor(
        tmp_path / "home",
        tmp_path / "editor.json",
        str(project),
        "--target", str(tiny_models.target), "--draft", str(tiny_models.draft_similar),
    )  # fmt: skip
    _check_localspec(result)
    assert result["meta"]["complete"] is True
    assert result["meta"]["gpus"] == list(gpu_devices())  # which card it ran on ([] without a driver)
    opened = [Path(f["path"]).name for f in result["meta"]["files"]]
    assert opened == ["module_2.py", "module_1.py"]  # the two longest, longest first
    assert all(not s["llama_server"] for s in result["samples"])


def test_a_cost_scaled_target_serves_the_same_suggestions_and_is_recorded(
    tiny_models, tmp_path: Path
) -> None:
    # The regime users run (a 7B-14B target) without downloading one: a deeper copy whose added layers add zero.
    project = _write_project(tmp_path / "project", files=1)
    models = ("--target", str(tiny_models.target), "--draft", str(tiny_models.draft_similar))
    options = (str(project), "--files", "1", "--line-modes", "single", *models)
    plain = _bench_editor(tmp_path / "home", tmp_path / "plain.json", *options)
    scaled = _bench_editor(
        tmp_path / "home2",
        tmp_path / "scaled.json",
        *options,
        "--scale-layers", "2", "--scaled-dir", str(tmp_path / "scaled"),
    )  # fmt: skip
    assert plain["meta"]["cost_scaled"] is None
    assert scaled["meta"]["cost_scaled"] == {
        "source": str(tiny_models.target),
        "layers": 2,
        "ffn": 1,
        "label": "cost-scaled (x2 layers)",
    }
    assert Path(scaled["meta"]["target"]).parent == tmp_path / "scaled"
    assert scaled["meta"]["daemon_args"][1] == scaled["meta"]["target"]  # the daemon served the copy
    assert [s["text"] for s in scaled["samples"]] == [s["text"] for s in plain["samples"]]
    assert any(s["text"] for s in plain["samples"])
    # The report's tables name the target as results do: a cost-scaled copy as such.
    label = f"cost-scaled (x2 layers) {tiny_models.target.name}"
    assert plain["meta"]["options"]["target_label"] == tiny_models.target.name
    assert scaled["meta"]["options"]["target_label"] == label
    console = Console(record=True, width=200)
    print_report(scaled["summary"], [], scaled["meta"], console, label)
    assert f"editor latency, {label}, single-line suggestions" in console.export_text()


def test_bench_editor_replays_the_same_requests_through_llama_server(
    tiny_models, llama_cpp_tools: Path, tmp_path: Path
) -> None:
    project = _write_project(tmp_path / "project", files=2)
    result = _bench_editor(
        tmp_path / "home",
        tmp_path / "editor.json",
        str(project),
        "--target", str(tiny_models.target), "--draft", str(tiny_models.draft_similar),
        "--against-llama-server", str(llama_cpp_tools / "llama-server"),
    )  # fmt: skip
    _check_localspec(result)
    for sample in result["samples"]:
        assert set(sample["llama_server"]) == {"plain", "cache-reuse"}
        assert all(answer["seconds"] > 0 for answer in sample["llama_server"].values())
        # The same work: llama-server generates as many tokens as localspec's daemon did for that request.
        generated = [entry["tokens"] for entry in sample["daemon"] if entry["tokens"]]
        if generated:
            assert all(answer["n_predict"] == generated[-1] for answer in sample["llama_server"].values())
    assert "--cache-reuse 256" in result["meta"]["llama_server_commands"]["cache-reuse"]
    for row in result["summary"]:
        for mode in ("plain", "cache-reuse"):
            assert row["llama_server"][mode]["p50_ms"] > 0
            assert 0 <= row["llama_server"][mode]["agrees"] <= row["samples"]


def test_the_llama_server_replay_checkpoints_after_each_line_mode(
    tiny_models, llama_cpp_tools: Path, tmp_path: Path
) -> None:
    # A long replay (minutes a request on a CPU) that stops later keeps every line mode it finished: the results
    # are written after each one, not only after a whole server mode.
    project = _write_project(tmp_path / "project", files=1)
    path = project / "module_0.py"
    text = path.read_text()
    files = [(path, text)]
    offset = text.index("    total = 0")
    samples = [
        Sample(mode, "jump-in-file", path.name, 1, 4, "", 0.1, "", document=text, offset=offset)
        for mode in ("single", "multi")
    ]
    options = BenchOptions(sources=[project], target=tiny_models.target, draft=None, max_tokens=4)
    server = LlamaServer(
        llama_cpp_tools / "llama-server", tiny_models.target, server_modes(["plain"], None)[0], 2048, 1, "0",
        tmp_path / "llama-server.log",
    )  # fmt: skip
    client = InfillClient(server, options.max_tokens)
    warm: dict[str, float] = {}
    seen: list[tuple[list[str], list[str]]] = []

    def checkpoint() -> None:  # what a results file written now would hold
        seen.append((sorted(warm), [s.line_mode for s in samples if "plain" in s.llama_server]))

    try:
        replay_llama_server(
            client, "plain", samples, files, project, options, lambda _: None, warm, checkpoint
        )
    finally:
        client.close()
        server.close()
    assert seen == [(["single"], ["single"]), (["multi", "single"], ["single", "multi"])]


def test_llama_server_keys_its_cuda_graphs_as_upstream_whatever_the_bench_runs_with(
    tiny_models, llama_cpp_tools: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The comparison is with the llama.cpp llama-cpp-python vendors: a build with localspec's changes
    # (localspec/llama_patches) must run llama-server with upstream's graph key, graph ageing, KV padding and CPU
    # attention even where the bench asks for others.
    monkeypatch.setenv("GGML_CUDA_GRAPH_KEY", "shape")
    monkeypatch.setenv("LLAMA_KV_PAD", "4096")
    monkeypatch.setenv("GGML_CUDA_GRAPH_KEEP_CALLS", "100000")
    monkeypatch.setenv("GGML_CPU_FA_SPLIT_KV", "0")
    server = LlamaServer(
        llama_cpp_tools / "llama-server", tiny_models.target, server_modes(["plain"], None)[0], 512, 1, "0",
        tmp_path / "llama-server.log",
    )  # fmt: skip
    try:
        environ = Path(f"/proc/{server.process.pid}/environ").read_bytes().split(b"\0")
    finally:
        server.close()
    assert b"GGML_CUDA_GRAPH_KEY=node" in environ
    assert b"GGML_CUDA_GRAPH_KEY=shape" not in environ
    kept_out = (b"LLAMA_KV_PAD=", b"GGML_CUDA_GRAPH_KEEP_CALLS=", b"GGML_CPU_FA_SPLIT_KV=")
    assert not any(entry.startswith(kept_out) for entry in environ)


def test_a_run_that_fails_midway_keeps_what_it_measured(tiny_models, tmp_path: Path) -> None:
    # llama-server dies at start here, after localspec was measured: the results so far are in the JSON.
    project = _write_project(tmp_path / "project", files=2)
    broken = tmp_path / "llama-server"
    broken.write_text("#!/bin/sh\necho 'cannot start' >&2\nexit 3\n")
    broken.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALSPEC_")}
    env["LOCALSPEC_HOME"] = str(tmp_path / "home")
    out = tmp_path / "editor.json"
    completed = subprocess.run(
        [sys.executable, "-m", "localspec", "bench-editor", str(project), "--threads", "1", "--n-ctx", "2048",
         "--max-tokens", "8", "--jumps", "1", "--files", "2", "--line-modes", "single", "--out", str(out),
         "--target", str(tiny_models.target), "--against-llama-server", str(broken)],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert completed.returncode != 0
    result = json.loads(out.read_text())
    assert result["meta"]["complete"] is False
    assert {s["scenario"] for s in result["samples"]} >= {"jump-in-file"}
    assert all(not s["llama_server"] for s in result["samples"])
    assert result["summary"][0]["localspec_p50_ms"] > 0


# ---- plain data --------------------------------------------------------------------------------------------------


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 90) == 3.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 90) == pytest.approx(4.6)
    assert percentile([1.0, 2.0, 3.0], 100) == 3.0
    assert percentile([1.0, 2.0, 3.0], 0) == 1.0


def test_the_warm_up_is_estimated_from_its_pace_once_enough_is_seen() -> None:
    # 60 pages, 6 warmed in 72 s: 12 s a page, 720 s in all.
    assert warm_up_estimate(72.0, 60, 54) == 720.0
    assert warm_up_estimate(72.0, 60, 58) is None  # too few pages to tell
    assert warm_up_estimate(30.0, 60, 50) is None  # too soon to tell


def test_places_are_indented_code_lines_only() -> None:
    lines = ["    first = 1", "def f():", "    x = 1", "", "    ", "    )", "    }),", "\treturn y", "y = 2"]
    assert [i for i in range(len(lines)) if is_place(lines, i)] == [2, 7]


def test_place_picker_keeps_its_distance_never_repeats_and_follows_the_seed() -> None:
    lines = ["def f():"] + ["    x = 1"] * 299
    picker = PlacePicker(lines, random.Random(7), gap=40)
    places = list(iter(picker.next, None))
    assert len(places) == len(set(places)) > 10
    assert all(abs(a - b) >= 40 for a, b in itertools.pairwise(places))
    assert all(is_place(lines, p) for p in places)
    again = PlacePicker(lines, random.Random(7), gap=40)
    assert [again.next() for _ in range(5)] == places[:5]


def test_typing_against_differs_from_the_suggestion_start() -> None:
    assert against_text("return total", "total") == "retu"
    assert against_text("return total", "return") == "x = "
    assert against_text("ok", "x = 1") == "q = "


def test_files_are_chosen_by_length_skipping_hidden_and_vendored_folders(tmp_path: Path) -> None:
    _write_project(tmp_path)
    found = find_sources([tmp_path])
    assert sorted(p.name for p in found) == ["module_0.py", "module_1.py", "module_2.py"]
    chosen = choose_files(found, 2, 200)
    assert [p.name for p, _ in chosen] == ["module_2.py", "module_1.py"]
    with pytest.raises(InvalidRequestError, match="--min-lines"):
        choose_files(found, 2, 10_000)
    with pytest.raises(InvalidRequestError, match="no such file"):
        find_sources([tmp_path / "missing"])


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` (Linux /proc)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_bench_editor(tiny_models: TinyModels, tmp_path: Path) -> tuple[subprocess.Popen[str], set[int]]:
    """`localspec bench-editor` on a small project, once its language server is warm (daemon and server both
    running), and the processes it started."""
    project = _write_project(tmp_path / "project", files=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALSPEC_")}
    # (TMPDIR: the benchmark's own temporary folder, which a kill -9 leaves behind, goes under tmp_path too)
    env.update(LOCALSPEC_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1", TMPDIR=str(tmp_path))
    process = subprocess.Popen(
        [sys.executable, "-m", "localspec", "bench-editor", str(project), "--threads", "1", "--n-ctx", "2048",
         "--jumps", "50", "--files", "2", "--out", str(tmp_path / "editor.json"),
         "--target", str(tiny_models.target), "--draft", str(tiny_models.draft_similar)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        # As in a terminal: a shell without job control starts background jobs with Ctrl-C ignored, and children
        # inherit that (a test run launched with `&` would otherwise see the signal ignored).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        assert process.stdout is not None
        seen = []
        for line in process.stdout:  # until the language server is warm: daemon and server both run
            seen.append(line)
            if "warm after" in line:
                break
        assert any("warm after" in line for line in seen), "".join(seen)
        children = _descendants(process.pid)
        assert len(children) >= 2  # `localspec serve` and `localspec lsp`
    except BaseException:
        process.kill()
        raise
    return process, children


def test_ctrl_c_stops_the_language_server_and_the_daemon(tiny_models, tmp_path: Path) -> None:
    process, children = _start_bench_editor(tiny_models, tmp_path)
    try:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=120)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, output
    assert not [pid for pid in children if _alive(pid)]
    assert not (tmp_path / "editor.json").exists()


def test_a_benchmark_killed_outright_takes_its_daemon_and_language_server_with_it(
    tiny_models, tmp_path: Path
) -> None:
    # kill -9 (a CI job's timeout, an out-of-memory kill) runs no cleanup in the benchmark: its daemon must still
    # not go on holding the models' memory.
    process, children = _start_bench_editor(tiny_models, tmp_path)
    process.kill()
    process.communicate(timeout=60)
    try:
        wait_until(lambda: not [pid for pid in children if _alive(pid)], timeout=60)
    finally:
        _kill_left(children)


def test_a_benchmark_killed_outright_takes_its_llama_server_with_it(
    tiny_models, llama_cpp_tools: Path, tmp_path: Path
) -> None:
    # The benchmarks' llama-server, started as `localspec bench` and `bench-editor` start it, in a process then
    # killed with SIGKILL.
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from localspec.benchmark.runner import LlamaServer, ServerMode\n"
        "server = LlamaServer(Path(sys.argv[1]), Path(sys.argv[2]), ServerMode('none', []), 512, 1, '0',\n"
        "                     Path(sys.argv[3]))\n"
        "print(server.process.pid, flush=True)\n"
        "time.sleep(3600)  # until killed\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(llama_cpp_tools / "llama-server"), str(tiny_models.target),
         str(tmp_path / "llama-server.log")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        server = int(process.stdout.readline())  # printed once it answers /health
        assert _alive(server)
    finally:
        process.kill()
        process.communicate(timeout=60)
    try:
        wait_until(lambda: not _alive(server), timeout=60)
    finally:
        _kill_left({server})


def _kill_left(pids: set[int]) -> None:
    """SIGKILL whichever of these processes still runs (a failed test must not leave them behind)."""
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_jumps_between_files_alternate_until_a_file_has_no_place_left() -> None:
    short = ["def f():"] + ["    x = 1" if i % 40 == 0 else "" for i in range(100)]  # three places
    long = ["def g():"] + ["    y = 2"] * 400
    rng = random.Random(1)
    pickers = {Path("short.py"): PlacePicker(short, rng), Path("long.py"): PlacePicker(long, rng)}
    jumps = list(_place_stream(pickers, [Path("short.py"), Path("long.py")]))
    files = [path.name for path, _ in jumps]
    assert all(a != b for a, b in itertools.pairwise(files))  # every jump changes file
    assert files == ["short.py", "long.py"] * 3


def test_llama_server_modes_are_checked_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="choose from plain, cache-reuse, draft"):
        server_modes(["plain", "fast"], tmp_path / "draft.gguf")
    with pytest.raises(InvalidRequestError, match="needs a draft model"):
        server_modes(["draft"], None)
    reuse = server_modes(["cache-reuse", "draft"], tmp_path / "draft.gguf")
    assert [mode.name for mode in reuse] == ["cache-reuse", "draft"]
    assert reuse[1].args[:2] == ["--cache-reuse", "256"] and "-md" in reuse[1].args


def test_the_benchmark_daemon_runs_with_the_config_given_and_a_bad_one_fails_before_anything_starts(
    tiny_models, tmp_path: Path
) -> None:
    # The benchmark's daemon has a home of its own (the user's config.toml does not reach it); --daemon-config
    # gives it one, to measure an engine setting.
    import httpx

    from localspec.benchmark.daemon_process import DaemonProcess

    config = tmp_path / "config.toml"
    config.write_text('[speculative]\nmode = "ngram"\n')
    serve = ["--target", str(tiny_models.target), "--threads", "1", "--n-ctx", "512", "--no-watch"]
    daemon = DaemonProcess(tmp_path / "home", serve, timeout=300, config=config)
    try:
        listed = httpx.get(f"{daemon.url}/v1/models", headers=_auth(tmp_path / "home"), timeout=30).json()
        assert listed["data"][0]["meta"]["mode"] == "ngram"
    finally:
        daemon.close()
    config.write_text('[speculative]\nmode = "fastest"\n')
    completed = subprocess.run(
        [sys.executable, "-m", "localspec", "bench-editor", str(_write_project(tmp_path / "project")),
         "--target", str(tiny_models.target), "--daemon-config", str(config), "--out", str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "LOCALSPEC_HOME": str(tmp_path / "h2")},
    )  # fmt: skip
    assert completed.returncode != 0 and "speculative.mode" in completed.stderr + completed.stdout
    assert not (tmp_path / "out.json").exists() and not (tmp_path / "h2" / "state" / "daemon.json").exists()


def test_model_files_the_benchmark_cannot_use_are_reported_plainly(tmp_path: Path) -> None:
    project = _write_project(tmp_path / "project")
    env = {**os.environ, "LOCALSPEC_HOME": str(tmp_path / "home")}

    def bench(target: Path) -> str:
        completed = subprocess.run(
            [sys.executable, "-m", "localspec", "bench-editor", str(project), "--target", str(target),
             "--draft", "none", "--out", str(tmp_path / "out.json")],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert completed.returncode == 1
        return completed.stdout + completed.stderr

    missing = bench(tmp_path / "gone.gguf")  # checked before anything starts
    assert "The target model file" in missing and "does not exist" in missing
    assert "starting localspec serve" not in missing
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(
        b"GGUF" + bytes(64)
    )  # a GGUF header and nothing llama.cpp can load: the daemon says so
    said = bench(broken)
    assert "localspec serve could not load its models:" in said and "broken.gguf" in said
    assert "'status'" not in said  # its message, not the health answer it came in
    assert not (tmp_path / "out.json").exists()


def _auth(home: Path) -> dict[str, str]:
    return {"Authorization": f"Bearer {(home / 'config' / 'token').read_text().strip()}"}

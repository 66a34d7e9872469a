"""The remote backend against a real llama-server (built from the vendored llama.cpp) on 127.0.0.1.

The daemon runs with `--backend remote` and serves its clients as with the local engine: the same greedy
output, streaming, infill through llama-server's /infill, cancellation that reaches the remote, editor requests
pre-empting chat, llama-server's own speculative stats (with a draft model), and layers spread over two
`rpc-server` workers. The vLLM / generic OpenAI code paths run against llama-server's OpenAI endpoints.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import RunningDaemon, TinyModels, start_daemon, stop_daemon
from llama_server import Served, start_llama_server, start_rpc_server
from waiting import wait_until

from localspec.engine import Engine, EngineSettings, GenerationRequest, GenerationResult
from localspec.engine.end_rules import EndCutter
from localspec.remote.vllm_metrics import speculative_counters

PROMPT = "import os\n"  # the tiny target continues it for more than 48 tokens
CHAT = [{"role": "user", "content": "Tell me everything."}]


def _remote_args(server: Served, *extra: str) -> list[str]:
    return ["--backend", "remote", "--remote-url", server.url, "--remote-timeout", "20", *extra]


def _local_greedy(model: Path, prompt: str | list[int], max_tokens: int) -> GenerationResult:
    """What localspec's own engine generates, the target alone and greedily."""
    engine = Engine(EngineSettings(target_path=model, n_ctx=1024, threads=1, slots=1, mode="none"))
    try:
        return engine.complete(GenerationRequest(prompt=prompt, max_tokens=max_tokens))
    finally:
        engine.close()


def _readable(text: str) -> str:
    """The text with invalid UTF-8 replaced alike. The tiny models write random bytes, and llama-server writes one
    U+FFFD per invalid sequence (none for a character cut off at the end) where localspec writes one per byte:
    the same tokens, spelt differently."""
    return re.sub("\ufffd+", "\ufffd", text).removesuffix("\ufffd")


def _post(daemon: RunningDaemon, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{daemon.url}{path}", json=body, headers=daemon.headers, timeout=60)


def _stats(daemon: RunningDaemon) -> dict[str, Any]:
    return httpx.get(f"{daemon.url}/v1/stats", headers=daemon.headers, timeout=10).json()


@pytest.fixture(scope="module")
def plain_server(
    llama_cpp_tools: Path, tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    server = start_llama_server(llama_cpp_tools, tiny_models.target, tmp_path_factory.mktemp("llama-server"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def remote_daemon(plain_server: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    running = start_daemon(tmp_path_factory.mktemp("remote") / "home", _remote_args(plain_server))
    yield running
    stop_daemon(running.process)


def test_health_stats_and_metrics_name_the_remote_backend(
    remote_daemon: RunningDaemon, plain_server: Served
) -> None:
    health = httpx.get(f"{remote_daemon.url}/health", timeout=10).json()
    assert health["status"] == "ok"
    assert health["backend"] == {
        "name": "remote",
        "kind": "llama-server",
        "url": plain_server.url,
        "model": health["models"]["target"],
    }
    assert health["models"]["target"]  # the name llama-server lists at /v1/models
    assert _stats(remote_daemon)["backend"]["kind"] == "llama-server"
    metrics = httpx.get(f"{remote_daemon.url}/metrics", headers=remote_daemon.headers, timeout=10).text
    assert 'localspec_backend_info{backend="remote",kind="llama-server"} 1' in metrics


def test_a_remote_completion_equals_the_local_engine_greedily(
    remote_daemon: RunningDaemon, tiny_models: TinyModels
) -> None:
    body = _post(remote_daemon, "/v1/completions", {"prompt": PROMPT, "max_tokens": 48}).json()
    local = _local_greedy(tiny_models.target, PROMPT, 48)
    assert _readable(body["choices"][0]["text"]) == _readable(local.text)
    assert body["choices"][0]["finish_reason"] == local.finish_reason == "length"
    assert body["usage"]["completion_tokens"] == local.stats.tokens == 48
    # llama-server without a draft model reports no drafts: a known zero. What it never reports is null.
    speculative = body["speculative"]
    assert speculative["drafted"] == 0 and speculative["accepted"] == 0
    assert speculative["draft_sources"] is None
    assert speculative["tokens_per_second"] > 0


def test_a_streamed_chat_is_rendered_by_the_remote_and_equals_the_local_engine(
    remote_daemon: RunningDaemon, tiny_models: TinyModels
) -> None:
    pieces, last = [], {}
    with httpx.stream(
        "POST",
        f"{remote_daemon.url}/v1/chat/completions",
        json={"messages": CHAT, "max_tokens": 32, "stream": True},
        headers=remote_daemon.headers,
        timeout=60,
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                pieces.append(chunk["choices"][0]["delta"].get("content") or "")
                if chunk["choices"][0]["finish_reason"] is None:
                    assert chunk["speculative_step"]["drafted"] is None  # per chunk: not known
                last = chunk
    engine = Engine(
        EngineSettings(target_path=tiny_models.target, n_ctx=1024, threads=1, slots=1, mode="none")
    )
    try:
        prompt = engine.chat_prompt(CHAT)
    finally:
        engine.close()
    local = _local_greedy(tiny_models.target, prompt, 32)
    assert _readable("".join(pieces)) == _readable(local.text) and local.text
    assert last["choices"][0]["finish_reason"] == local.finish_reason
    assert last["speculative"]["drafted"] == 0


def test_infill_goes_through_llama_servers_infill_endpoint(remote_daemon: RunningDaemon) -> None:
    body = {"prefix": "def add(a, b):\n    return ", "suffix": "\n\nprint(add(1, 2))\n"}
    whole = _post(remote_daemon, "/v1/infill", {**body, "max_tokens": 1})
    assert whole.status_code == 200, whole.text
    data = whole.json()
    assert data["finish_reason"] == "length" and data["usage"]["completion_tokens"] == 1
    assert data["usage"]["prompt_tokens"] > 0 and data["speculative"]["drafted"] == 0
    # A stop rule that ends the suggestion early closes the remote's stream before it reported its stats.
    cut = _post(remote_daemon, "/v1/infill", {**body, "max_tokens": 12}).json()
    assert cut["finish_reason"] == "stop" and cut["content"]
    assert cut["speculative"]["drafted"] is None and cut["usage"]["prompt_tokens"] is None
    recent = _stats(remote_daemon)["recent"][-1]
    assert recent["kind"] == "infill" and recent["drafted"] is None


def test_the_remote_kind_openai_uses_fim_tokens_and_reports_unknown_not_zero(
    plain_server: Served, tiny_models: TinyModels, tmp_path: Path
) -> None:
    """The vLLM / generic path: infill as a FIM prompt through /v1/completions, no speculative stats."""
    daemon = start_daemon(tmp_path / "home", _remote_args(plain_server, "--remote-kind", "openai"))
    try:
        prefix, suffix = "def add(a, b):\n    return ", "\n"
        data = _post(daemon, "/v1/infill", {"prefix": prefix, "suffix": suffix, "max_tokens": 12}).json()
        fim_prompt = f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"
        stopper = EndCutter(single_line=False, suffix=suffix)  # the infill's block end rule
        stopper.feed(_local_greedy(tiny_models.target, fim_prompt, 12).text)
        stopper.flush()
        assert _readable(data["content"]) == _readable(stopper.final_text)
        speculative = data["speculative"]
        assert speculative["drafted"] is None and speculative["accepted"] is None
        assert speculative["acceptance"] is None and speculative["mean_accepted_length"] is None
        chat = _post(daemon, "/v1/chat/completions", {"messages": CHAT, "max_tokens": 8}).json()
        assert chat["usage"]["completion_tokens"] > 0 and chat["speculative"]["drafted"] is None
        engine_stats = _stats(daemon)["engine"]
        assert engine_stats["drafted"] is None and engine_stats["requests"] == 2
        metrics = httpx.get(f"{daemon.url}/metrics", headers=daemon.headers, timeout=10).text
        assert "localspec_drafted_tokens_total" not in metrics  # unknown: left out, not 0
        assert f"localspec_generated_tokens_total {engine_stats['tokens']}" in metrics
    finally:
        stop_daemon(daemon.process)


def test_the_remote_kind_vllm_runs_on_openai_endpoints(
    plain_server: Served, tiny_models: TinyModels, tmp_path: Path
) -> None:
    daemon = start_daemon(tmp_path / "home", _remote_args(plain_server, "--remote-kind", "vllm"))
    try:
        body = _post(daemon, "/v1/completions", {"prompt": PROMPT, "max_tokens": 24}).json()
        assert _readable(body["choices"][0]["text"]) == _readable(
            _local_greedy(tiny_models.target, PROMPT, 24).text
        )
        assert body["speculative"]["drafted"] is None
        # llama-server's /metrics is off: vLLM's counters are unknown, never 0.
        assert _stats(daemon)["engine"]["drafted"] is None
    finally:
        stop_daemon(daemon.process)


VLLM_METRICS = """\
# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts_total counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="Qwen/Qwen2.5-Coder-32B-Instruct"} 40.0
# HELP vllm:spec_decode_num_draft_tokens_total Number of draft tokens.
# TYPE vllm:spec_decode_num_draft_tokens_total counter
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="Qwen/Qwen2.5-Coder-32B-Instruct"} 200.0
vllm:spec_decode_num_draft_tokens_total{engine="1",model_name="Qwen/Qwen2.5-Coder-32B-Instruct"} 100.0
# HELP vllm:spec_decode_num_accepted_tokens_total Number of accepted tokens.
# TYPE vllm:spec_decode_num_accepted_tokens_total counter
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="Qwen/Qwen2.5-Coder-32B-Instruct"} 150.0
vllm:spec_decode_num_accepted_tokens_total{engine="1",model_name="Qwen/Qwen2.5-Coder-32B-Instruct"} 30.0
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="Qwen/Qwen2.5-Coder-32B-Instruct"} 500.0
"""


def test_vllm_speculative_counters_are_summed_over_engines() -> None:
    assert speculative_counters(VLLM_METRICS) == (300, 180)
    without = "\n".join(line for line in VLLM_METRICS.splitlines() if "spec_decode" not in line) + "\n"
    assert speculative_counters(without) is None  # no speculation configured: unknown


# ---- speculation on the remote ----


def test_llama_servers_draft_model_stats_come_through(
    llama_cpp_tools: Path, tiny_models: TinyModels, tmp_path: Path
) -> None:
    server = start_llama_server(
        llama_cpp_tools,
        tiny_models.target,
        tmp_path,
        "-md",
        str(tiny_models.draft_same),
        "--spec-type",
        "draft-simple",
        "-tb",
        "1",
    )
    daemon = None
    try:
        daemon = start_daemon(tmp_path / "home", _remote_args(server))
        body = _post(daemon, "/v1/completions", {"prompt": PROMPT, "max_tokens": 48}).json()
        speculative = body["speculative"]
        assert speculative["drafted"] > 0
        assert 0 < speculative["accepted"] <= speculative["drafted"]
        assert speculative["acceptance"] == round(speculative["accepted"] / speculative["drafted"], 4)
        # The identical draft lets a pass settle several tokens.
        assert speculative["mean_accepted_length"] > 1.0
        engine = _stats(daemon)["engine"]
        assert engine["drafted"] == speculative["drafted"] and engine["accepted"] == speculative["accepted"]
    finally:
        if daemon is not None:
            stop_daemon(daemon.process)
        server.stop()


def test_layers_spread_over_two_rpc_workers_give_the_same_output(
    llama_cpp_tools: Path, tiny_models: TinyModels, tmp_path: Path
) -> None:
    workers = [start_rpc_server(llama_cpp_tools, tmp_path) for _ in range(2)]
    server = None
    daemon = None
    try:
        rpc = ",".join(worker.url for worker in workers)
        server = start_llama_server(llama_cpp_tools, tiny_models.target, tmp_path, "--rpc", rpc, "-ngl", "99")
        daemon = start_daemon(tmp_path / "home", _remote_args(server))
        body = _post(daemon, "/v1/completions", {"prompt": PROMPT, "max_tokens": 24}).json()
        assert _readable(body["choices"][0]["text"]) == _readable(
            _local_greedy(tiny_models.target, PROMPT, 24).text
        )
        # Both workers serve llama-server: each holds a connection open for as long as it runs (-ngl 99 puts
        # the layers there).
        for worker in workers:
            log = worker.log.read_text(errors="replace")
            assert log.count("Accepted client connection") > log.count("Client connection closed"), log
    finally:
        if daemon is not None:
            stop_daemon(daemon.process)
        if server is not None:
            server.stop()
        for worker in workers:
            worker.stop()


# ---- cancellation and pre-emption reach the remote ----


@pytest.fixture(scope="module")
def endless_server(
    llama_cpp_tools: Path, endless_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    server = start_llama_server(
        llama_cpp_tools, endless_pair[0], tmp_path_factory.mktemp("endless-server"), "--metrics", n_ctx=32768
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def endless_remote(
    endless_server: Served, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningDaemon]:
    running = start_daemon(tmp_path_factory.mktemp("endless-remote") / "home", _remote_args(endless_server))
    yield running
    stop_daemon(running.process)


def _remote_metric(server: Served, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f"llamacpp:{name} "):
            return float(line.split()[-1])
    raise AssertionError(f"llama-server reports no llamacpp:{name}")


def _chats(daemon: RunningDaemon) -> list[dict[str, Any]]:
    return [r for r in _stats(daemon)["recent"] if r["kind"] == "chat"]


def test_closing_a_stream_aborts_the_remote_request(
    endless_remote: RunningDaemon, endless_server: Served
) -> None:
    # The tiny model writes thousands of tokens a second: a long answer leaves the hang-up seconds to reach the
    # remote however busy the machine is (with 6,000 a loaded CI machine once saw the whole answer written).
    long = 30_000
    predicted_before = _remote_metric(endless_server, "tokens_predicted_total")
    chats_before = _chats(endless_remote)
    with httpx.stream(
        "POST",
        f"{endless_remote.url}/v1/chat/completions",
        json={"messages": CHAT, "max_tokens": long, "stream": True},
        headers=endless_remote.headers,
        timeout=30,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break  # one chunk, then hang up
    wait_until(lambda: len(_chats(endless_remote)) > len(chats_before))
    assert _chats(endless_remote)[-1]["finish_reason"] == "cancelled"
    # The remote stopped too: nothing is processing, and far fewer than `long` tokens were generated.
    wait_until(lambda: _remote_metric(endless_server, "requests_processing") == 0)
    assert _remote_metric(endless_server, "tokens_predicted_total") - predicted_before < long / 2


def test_an_editor_infill_preempts_a_remote_chat(endless_remote: RunningDaemon) -> None:
    preemptions_before = _stats(endless_remote)["preemptions"]
    first_chunk, out = threading.Event(), dict[str, Any]()

    def chat() -> None:
        pieces = []
        with httpx.stream(
            "POST",
            f"{endless_remote.url}/v1/chat/completions",
            json={"messages": CHAT, "max_tokens": 3000, "stream": True},
            headers=endless_remote.headers,
            timeout=60,
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunk = json.loads(line[6:])
                    pieces.append(chunk["choices"][0]["delta"].get("content") or "")
                    out["finish_reason"] = chunk["choices"][0]["finish_reason"]
                    first_chunk.set()
        out["text"] = "".join(pieces)

    thread = threading.Thread(target=chat)
    thread.start()
    assert first_chunk.wait(30)
    infill = _post(endless_remote, "/v1/infill", {"prefix": "x = ", "suffix": "\n", "max_tokens": 8})
    thread.join(60)
    assert infill.status_code == 200 and infill.json()["usage"]["completion_tokens"] == 8
    assert out["finish_reason"] == "length"
    stats = _stats(endless_remote)
    assert stats["preemptions"] > preemptions_before
    assert [r["kind"] for r in stats["recent"]][-2:] == ["infill", "chat"]


def test_the_remote_api_key_is_sent_and_never_shown(
    llama_cpp_tools: Path, tiny_models: TinyModels, tmp_path: Path
) -> None:
    key = "sk-remote-secret-4815162342"
    server = start_llama_server(llama_cpp_tools, tiny_models.target, tmp_path, "--api-key", key)
    key_file = tmp_path / "remote.key"
    key_file.write_text(key + "\n")
    home = tmp_path / "home"
    daemon = None
    try:
        daemon = start_daemon(home, _remote_args(server, "--remote-api-key-file", str(key_file)))
        body = _post(daemon, "/v1/completions", {"prompt": PROMPT, "max_tokens": 4})
        assert body.status_code == 200, body.text
        shown = [
            httpx.get(f"{daemon.url}/health", timeout=10).text,
            json.dumps(_stats(daemon)),
            httpx.get(f"{daemon.url}/metrics", headers=daemon.headers, timeout=10).text,
        ]
        stop_daemon(daemon.process)
        daemon = None
        logs = [p.read_text(errors="replace") for p in home.rglob("*.log")]
        assert logs and not any(key in text for text in shown + logs)
    finally:
        if daemon is not None:
            stop_daemon(daemon.process)
        server.stop()


def test_a_wrong_remote_api_key_is_a_clear_error(
    llama_cpp_tools: Path, tiny_models: TinyModels, tmp_path: Path
) -> None:
    server = start_llama_server(llama_cpp_tools, tiny_models.target, tmp_path, "--api-key", "right-key")
    key_file = tmp_path / "remote.key"
    key_file.write_text("wrong-key")
    try:
        with pytest.raises(RuntimeError) as failed:
            start_daemon(tmp_path / "home", _remote_args(server, "--remote-api-key-file", str(key_file)), 30)
        assert "HTTP 401" in str(failed.value) and "engine.remote_api_key_file" in str(failed.value)
        assert "wrong-key" not in str(failed.value)
    finally:
        server.stop()


def test_config_show_and_status_name_the_backend(
    remote_daemon: RunningDaemon, plain_server: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    monkeypatch.setenv("LOCALSPEC_HOME", str(remote_daemon.home))
    status = subprocess.run(
        [sys.executable, "-m", "localspec", "status"], capture_output=True, text=True, timeout=60, check=True
    )
    assert f"backend: remote llama-server at {plain_server.url}" in status.stdout
    assert "acceptance: 0%" in status.stdout or "acceptance: unknown" in status.stdout
    monkeypatch.setenv("LOCALSPEC_ENGINE_BACKEND", "remote")
    monkeypatch.setenv("LOCALSPEC_ENGINE_REMOTE_URL", plain_server.url)
    shown = subprocess.run(
        [sys.executable, "-m", "localspec", "config", "show"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "engine.backend" in shown.stdout and '"remote"' in shown.stdout
    assert "env LOCALSPEC_ENGINE_BACKEND" in shown.stdout

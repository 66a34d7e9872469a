"""Scheduling on a real daemon: client disconnects cancel generations; editor infill pre-empts a chat reply. (One
test drives the scheduler in-process, to read its stats at moments a client cannot choose.)

These need generations long enough to interrupt. The shared tiny models reach an end-of-generation token
within ~200 tokens, so this module writes "endless" variants: the same random weights with the output rows of
the special (control) tokens zeroed. Their logit is then 0 while the best of ~260 random logits is well above
0, so greedy decoding never ends early and runs to max_tokens.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import RunningDaemon, TinyModels, start_daemon, stop_daemon

CHAT = [{"role": "user", "content": "Tell me everything."}]
LONG = 1500  # tokens; ~0.2-2 s of decoding for these tiny models, depending on how busy the CPU is


@pytest.fixture(scope="module")
def endless(
    endless_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningDaemon]:
    folder = tmp_path_factory.mktemp("endless")
    target, draft = endless_pair
    # Outputs are compared across runs, so every run must draft alike: without the history of earlier outputs
    # (a later run would copy an earlier one), since these random models have exact ties that differently
    # batched passes may break the other way deep into a 1500-token output.
    config = folder / "home" / "config" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("[speculative]\nhistory_tokens = 0\n", encoding="utf-8")
    running = start_daemon(
        folder / "home", ["--target", str(target), "--draft", str(draft), "--n-ctx", "2048", "--threads", "1"]
    )
    yield running
    stop_daemon(running.process)


def _recent(daemon: RunningDaemon) -> list[dict[str, Any]]:
    stats = httpx.get(f"{daemon.url}/v1/stats", headers=daemon.headers, timeout=10).json()
    return stats["recent"]


def _wait_for_request(daemon: RunningDaemon, kind: str, count: int, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        finished = [r for r in _recent(daemon) if r["kind"] == kind]
        if len(finished) >= count:
            return finished[count - 1]
        time.sleep(0.02)
    raise AssertionError(f"no finished {kind} request #{count} in /v1/stats")


def _chat_body(**extra: Any) -> dict[str, Any]:
    return {"messages": CHAT, "max_tokens": LONG, **extra}


def test_endless_model_runs_to_max_tokens(endless: RunningDaemon) -> None:
    body = {"prompt": "x", "max_tokens": 200}
    data = httpx.post(f"{endless.url}/v1/completions", json=body, headers=endless.headers, timeout=60).json()
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 200


def test_closing_a_stream_cancels_the_generation(endless: RunningDaemon) -> None:
    before = len([r for r in _recent(endless) if r["kind"] == "chat"])
    with httpx.stream(
        "POST",
        f"{endless.url}/v1/chat/completions",
        json=_chat_body(stream=True, slot="gone"),
        headers=endless.headers,
        timeout=30,
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                break  # one chunk, then hang up
    record = _wait_for_request(endless, "chat", before + 1)
    assert record["finish_reason"] == "cancelled"
    assert 0 < record["tokens"] < LONG // 2, record


def test_a_non_streaming_client_that_disconnects_cancels_too(endless: RunningDaemon) -> None:
    before = len([r for r in _recent(endless) if r["kind"] == "completion"])
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{endless.url}/v1/completions",
            json={"prompt": "y", "max_tokens": 2000, "slot": "gone2"},
            headers=endless.headers,
            timeout=httpx.Timeout(0.05, connect=5),
        )
    record = _wait_for_request(endless, "completion", before + 1)
    assert record["finish_reason"] == "cancelled"
    assert record["tokens"] < 2000


def _stream_chat(daemon: RunningDaemon, first_chunk: threading.Event, out: dict[str, Any]) -> None:
    pieces = []
    with httpx.stream(
        "POST",
        f"{daemon.url}/v1/chat/completions",
        json=_chat_body(stream=True, speculative="none"),
        headers=daemon.headers,
        timeout=60,
    ) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            pieces.append(chunk["choices"][0]["delta"].get("content") or "")
            out["finish_reason"] = chunk["choices"][0]["finish_reason"]
            first_chunk.set()
    out["text"] = "".join(pieces)


def test_infill_preempts_a_running_chat_and_both_finish_correctly(endless: RunningDaemon) -> None:
    # The target alone, greedy: pre-emption must not change a single token. (A speculative mode's plans depend on
    # timing, and two runs may differ at near-ties of these random models.)
    infill_body = {
        "prefix": "def f(x):\n    return ",
        "suffix": "\n",
        "max_tokens": 24,
        "speculative": "none",
    }
    # Each alone first: the reference outputs.
    chat_alone = httpx.post(
        f"{endless.url}/v1/chat/completions",
        json=_chat_body(speculative="none"),
        headers=endless.headers,
        timeout=60,
    ).json()
    infill_alone = httpx.post(
        f"{endless.url}/v1/infill", json=infill_body, headers=endless.headers, timeout=60
    )
    preemptions_before = httpx.get(f"{endless.url}/v1/stats", headers=endless.headers, timeout=10).json()[
        "preemptions"
    ]

    first_chunk, chat_out = threading.Event(), dict[str, Any]()
    chat_thread = threading.Thread(target=_stream_chat, args=(endless, first_chunk, chat_out))
    chat_thread.start()
    assert first_chunk.wait(30)
    infill = httpx.post(f"{endless.url}/v1/infill", json=infill_body, headers=endless.headers, timeout=60)
    chat_thread.join(60)

    assert infill.json()["content"] == infill_alone.json()["content"]
    assert chat_out["text"] == chat_alone["choices"][0]["message"]["content"]
    assert chat_out["finish_reason"] == "length"
    stats = httpx.get(f"{endless.url}/v1/stats", headers=endless.headers, timeout=10).json()
    assert stats["preemptions"] > preemptions_before
    order = [r["kind"] for r in stats["recent"]][-2:]
    assert order == ["infill", "chat"], "the infill should finish while the chat was still generating"
    # Each record says where its seconds went: the engine's phases fit in its total, and waiting for the engine,
    # the prompt cache and the generation fit in the seconds from arrival to the end.
    for record in stats["recent"][-2:]:
        split = record["time"]
        phases = split["prompt"] + split["plan"] + split["draft"] + split["verify"] + split["sample"]
        assert 0 < phases <= split["total"] + 0.001, record
        assert split["cache_save"] <= split["cache"], record
        assert split["queued"] + split["cache"] + split["total"] <= record["seconds"] + 0.001, record


def test_an_infill_between_two_chat_turns_does_not_evict_the_chat_cache(daemon: RunningDaemon) -> None:
    first = httpx.post(
        f"{daemon.url}/v1/chat/completions",
        json={"messages": CHAT, "max_tokens": 8},
        headers=daemon.headers,
        timeout=30,
    ).json()
    for prefix in ("import os\n", "def g():\n    ", "x = "):
        infill = {"prefix": prefix * 20, "suffix": "\n", "max_tokens": 8}
        assert httpx.post(
            f"{daemon.url}/v1/infill", json=infill, headers=daemon.headers, timeout=30
        ).is_success
    follow_up = [*CHAT, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "more"}]
    second = httpx.post(
        f"{daemon.url}/v1/chat/completions",
        json={"messages": follow_up, "max_tokens": 8},
        headers=daemon.headers,
        timeout=30,
    ).json()
    # The follow-up starts with the first turn's prompt, still cached in the chat's own slot.
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= first["usage"]["prompt_tokens"] - 1


@pytest.mark.parametrize("kind", ["prefill", "completion"])
def test_an_infill_stops_a_less_urgent_prompt_pass_part_way_and_both_finish_correctly(
    endless_pair: tuple[Path, Path], tmp_path: Path, kind: str
) -> None:
    target, draft = endless_pair
    # A context long enough for a prompt of ~7,000 tokens: ~50 chunks, an infill comes during one's pass.
    daemon = start_daemon(
        tmp_path / "home",
        ["--target", str(target), "--draft", str(draft), "--n-ctx", "8192", "--threads", "1"],
    )
    try:
        _infill_stops_a_prompt_pass(daemon, kind)
    finally:
        stop_daemon(daemon.process)


def _long_request(daemon: RunningDaemon, kind: str, text: str, out: dict[str, Any]) -> None:
    """A prefill (an editor's warm-up) or a completion (as a chat) of `text`, answered into `out`."""
    if kind == "prefill":
        path, body = "/v1/infill", {"prefix": text, "max_tokens": 0, "filename": "warm.py"}
    else:
        path, body = "/v1/completions", {"prompt": text, "max_tokens": 4, "speculative": "none"}
    out.update(httpx.post(f"{daemon.url}{path}", json=body, headers=daemon.headers, timeout=60).json())


def _infill_stops_a_prompt_pass(daemon: RunningDaemon, kind: str) -> None:
    infill_body = {"prefix": "def g(x):\n    return ", "suffix": "\n", "max_tokens": 8, "speculative": "none"}
    alone = httpx.post(f"{daemon.url}/v1/infill", json=infill_body, headers=daemon.headers, timeout=60).json()

    def stats() -> dict[str, Any]:
        return dict(httpx.get(f"{daemon.url}/v1/stats", headers=daemon.headers, timeout=10).json())

    # An infill that comes while the other request's prompt pass runs stops that pass (on a CPU) instead of waiting
    # for it. It may come between two passes instead, where nothing needs stopping: a few tries make that unlikely.
    for attempt in range(5):
        gave_way = stats()["engine"]["gave_way"]
        text = f"# attempt {attempt}\n" + "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(240))
        out: dict[str, Any] = {}
        other = threading.Thread(target=_long_request, args=(daemon, kind, text, out))
        other.start()
        deadline = time.monotonic() + 20
        while stats()["active"] == 0 and other.is_alive() and time.monotonic() < deadline:
            pass  # (until the other request runs)
        answer = httpx.post(f"{daemon.url}/v1/infill", json=infill_body, headers=daemon.headers, timeout=60)
        other.join(60)
        assert answer.json()["content"] == alone["content"]
        if kind == "prefill":
            assert (out["content"], out["finish_reason"], out["prompt_cache"]["kept"]) == ("", "length", True)
        else:  # the same text as the same request alone
            again: dict[str, Any] = {}
            _long_request(daemon, kind, text, again)
            assert out["choices"][0]["text"] == again["choices"][0]["text"]
        kinds = [r["kind"] for r in stats()["recent"]]
        last_infill = len(kinds) - 1 - kinds[::-1].index("infill")
        if stats()["engine"]["gave_way"] > gave_way:
            assert kinds[last_infill + 1] == kind  # (the infill finished first)
            return
    raise AssertionError(f"no infill stopped a {kind}'s prompt pass in five tries")


def test_a_request_stays_queued_or_running_in_the_stats_until_it_is_counted(tiny_models: TinyModels) -> None:
    # The stats are read on the event loop while the worker thread moves a job along. A job that left the queue
    # (as it was admitted) or the running set (as it ended) before it was counted let a load test see the daemon
    # quiet with a request unanswered. Snapshots are taken on the worker at both moments: as the job is admitted
    # (in its `prepare`) and as it ends (the scheduler asks the engine for its stats before counting the job).
    from localspec.daemon.scheduler import Job, Scheduler
    from localspec.engine.engine import Engine, EngineSettings
    from localspec.engine.types import GenerationRequest

    scheduler = Scheduler()
    seen: list[dict[str, Any]] = []

    class Watched:
        """The real engine, noting the scheduler's stats whenever the scheduler asks for the engine's."""

        def __init__(self, engine: Engine) -> None:
            self.engine = engine

        def __getattr__(self, name: str) -> Any:
            return getattr(self.engine, name)

        def stats(self) -> dict[str, Any]:
            seen.append(scheduler.snapshot())
            return self.engine.stats()

    def prepare(backend: Any) -> GenerationRequest:
        seen.append(scheduler.snapshot())
        return GenerationRequest(prompt="def add(a, b):", max_tokens=4)

    async def one() -> tuple[str, Any]:
        loop = asyncio.get_running_loop()
        job = scheduler.submit(Job(kind="completion", slot="s", prepare=prepare, loop=loop))
        while (event := await job.events.get())[0] == "steps":
            pass
        return event

    scheduler.install(Watched(Engine(EngineSettings(target_path=tiny_models.target, n_ctx=512, threads=1))))
    try:
        kind, result = asyncio.run(one())
    finally:
        scheduler.stop()
    assert kind == "done" and len(result.token_ids) == 4
    during = [s for s in seen if s["received"] == 1 and not s["requests"]]
    assert len(during) >= 2, seen  # admitted, and ended but not yet counted
    for snapshot in seen:
        unanswered = snapshot["received"] - sum(snapshot["requests"].values()) - snapshot["errors"]
        assert snapshot["queue_length"] + snapshot["active"] >= unanswered, snapshot

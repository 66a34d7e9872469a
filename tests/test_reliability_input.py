"""Bad input against a real daemon: schema-driven fuzzing (schemathesis) and hand-picked nasty bodies.

The promise: whatever a client sends, the daemon answers 2xx or a 4xx whose JSON body says what was wrong,
never a 5xx, and keeps serving. The OpenAPI document that drives the fuzzer is the one the daemon serves.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from conftest import RunningDaemon, TinyModels, start_daemon, stop_daemon, tiny_serve_args
from hypothesis import HealthCheck, given, settings

from localspec.daemon.openapi import openapi_document

POSTS = ["/v1/completions", "/v1/chat/completions", "/v1/infill"]
GETS = ["/health", "/v1/models", "/v1/stats", "/metrics", "/openapi.json"]


@pytest.fixture(scope="module")
def shared(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    # A small context bounds every generation the fuzzer asks for (max_tokens up to 131072 is valid input).
    running = start_daemon(
        tmp_path_factory.mktemp("input") / "home",
        tiny_serve_args(tiny_models, n_ctx=512),
    )
    yield running
    stop_daemon(running.process)


def _assert_answered(response: Any, what: object) -> None:
    """2xx, or a 4xx with an OpenAI-shaped error message."""
    assert response.status_code < 500, (what, response.status_code, response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and len(error["message"]) > 10, (what, error)


def _healthy(daemon: RunningDaemon) -> None:
    response = httpx.post(
        f"{daemon.url}/v1/completions",
        json={"prompt": "still there?", "max_tokens": 4},
        headers=daemon.headers,
        timeout=30,
    )
    assert response.status_code == 200, response.text


def test_the_served_openapi_document_covers_every_route(shared: RunningDaemon) -> None:
    served = httpx.get(f"{shared.url}/openapi.json", headers=shared.headers, timeout=10)
    assert served.status_code == 200
    document = served.json()
    assert document == json.loads(json.dumps(openapi_document()))
    assert set(document["paths"]) == set(POSTS) | set(GETS) - {"/openapi.json"}
    assert document["paths"]["/v1/infill"]["post"]["requestBody"]["content"]["application/json"]
    # It is no secret, but it is behind the token like every route but /health.
    assert httpx.get(f"{shared.url}/openapi.json", timeout=10).status_code == 401


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode))
@pytest.mark.parametrize("path", POSTS)
def test_schema_fuzzing_never_gets_a_server_error(shared: RunningDaemon, path: str, mode: Any) -> None:
    document = httpx.get(f"{shared.url}/openapi.json", headers=shared.headers).json()
    # Without the security scheme negative mode mangles bodies only, not the token, so every case reaches
    # the route (requests without a good token are refused before parsing: see test_reliability_security).
    document.pop("security")
    operation = schemathesis.openapi.from_dict(document)[path]["POST"]

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        response = case.call(base_url=shared.url, headers=shared.headers, timeout=60)
        assert response.status_code != 401
        _assert_answered(response, case.body)
        if mode == schemathesis.GenerationMode.NEGATIVE and response.status_code == 200:
            # Negative cases may still be valid (e.g. only unknown fields were added): then an answer came.
            assert response.content

    check()
    _healthy(shared)


def test_get_routes_answer_without_errors(shared: RunningDaemon) -> None:
    for path in GETS:
        _assert_answered(httpx.get(f"{shared.url}{path}", headers=shared.headers, timeout=10), path)
        with_query = httpx.get(f"{shared.url}{path}?x=%ff%00&stream=1", headers=shared.headers, timeout=10)
        _assert_answered(with_query, path)


def _post(daemon: RunningDaemon, path: str, content: bytes) -> httpx.Response:
    return httpx.post(
        f"{daemon.url}{path}",
        content=content,
        headers={**daemon.headers, "Content-Type": "application/json"},
        timeout=60,
    )


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


# (name, path, raw body, expected status, a fragment of the error message)
NASTY: list[tuple[str, str, bytes, int, str]] = [
    ("invalid UTF-8", "/v1/completions", b'{"prompt": "\xff\xfe"}', 400, "not valid JSON"),
    ("overlong UTF-8", "/v1/completions", b'{"prompt": "\xc0\xaf"}', 400, "not valid JSON"),
    ("lone surrogate", "/v1/completions", b'{"prompt": "\\ud800 x", "max_tokens": 4}', 400, "Unicode"),
    (
        "lone surrogate in chat",
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "\\udfff"}], "max_tokens": 4}',
        400,
        "Unicode",
    ),
    ("lone surrogate in infill", "/v1/infill", b'{"prefix": "a", "suffix": "\\udc00"}', 400, "Unicode"),
    ("lone surrogate in stop", "/v1/completions", b'{"prompt": "x", "stop": ["\\ud800"]}', 400, "Unicode"),
    (
        "deeply nested",
        "/v1/completions",
        b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        400,
        "nested",
    ),
    ("empty body", "/v1/completions", b"", 400, "not valid JSON"),
    ("not an object", "/v1/infill", b'"prefix"', 400, "JSON object"),
    ("NaN", "/v1/completions", b'{"prompt": "x", "temperature": NaN}', 400, "temperature"),
    ("Infinity", "/v1/completions", b'{"prompt": "x", "top_p": Infinity}', 400, "top_p"),
    ("negative max_tokens", "/v1/completions", _json({"prompt": "x", "max_tokens": -1}), 400, "max_tokens"),
    ("zero max_tokens", "/v1/chat/completions", _json({"messages": [], "max_tokens": 0}), 400, "max_tokens"),
    ("huge max_tokens", "/v1/completions", _json({"prompt": "x", "max_tokens": 10**12}), 400, "max_tokens"),
    ("64-bit max_tokens", "/v1/infill", _json({"prefix": "x", "max_tokens": 2**64}), 400, "max_tokens"),
    ("float max_tokens", "/v1/completions", _json({"prompt": "x", "max_tokens": 2.5}), 400, "max_tokens"),
    ("huge prompt", "/v1/completions", _json({"prompt": "word " * 200_000}), 400, "context holds"),
    ("huge token list", "/v1/completions", _json({"prompt": [5] * 100_000}), 400, "context holds"),
    ("token id out of range", "/v1/completions", _json({"prompt": [2**70]}), 400, "token ids"),
    ("negative token id", "/v1/completions", _json({"prompt": [-1]}), 400, "token ids"),
    ("body over 16 MiB", "/v1/completions", b'{"prompt": "' + b"a" * (17 << 20) + b'"}', 413, "too large"),
    ("prompt of wrong type", "/v1/completions", _json({"prompt": 5}), 400, "prompt"),
    ("messages of wrong type", "/v1/chat/completions", _json({"messages": "hi"}), 400, "messages"),
    ("stream of wrong type", "/v1/completions", _json({"prompt": "x", "stream": "sometimes"}), 400, "stream"),
    ("stop of wrong type", "/v1/completions", _json({"prompt": "x", "stop": 5}), 400, "stop"),
    ("extra of wrong type", "/v1/infill", _json({"prefix": "x", "extra": {"a": 1}}), 400, "extra"),
    ("filename too long", "/v1/infill", _json({"prefix": "x", "filename": "f" * 5000}), 400, "filename"),
    ("slot with a path", "/v1/infill", _json({"prefix": "x", "slot": "../../../etc/passwd"}), 400, "slot"),
]


@pytest.mark.parametrize(("name", "path", "body", "status", "fragment"), NASTY, ids=[n[0] for n in NASTY])
def test_nasty_bodies_get_a_4xx_that_says_why(
    shared: RunningDaemon, name: str, path: str, body: bytes, status: int, fragment: str
) -> None:
    response = _post(shared, path, body)
    assert response.status_code == status, response.text[:300]
    assert fragment in response.json()["error"]["message"]


# Odd but valid: answered normally (unknown fields are ignored so stock OpenAI clients work).
ODD_BUT_FINE: list[tuple[str, str, dict[str, Any]]] = [
    ("unknown fields", "/v1/completions", {"prompt": "x", "max_tokens": 4, "user": "u", "frobnicate": [1]}),
    ("huge seed", "/v1/completions", {"prompt": "x", "max_tokens": 4, "seed": 2**70}),
    ("negative seed", "/v1/completions", {"prompt": "x", "max_tokens": 4, "seed": -5}),
    ("NUL characters", "/v1/completions", {"prompt": "\x00\x00", "max_tokens": 4}),
    ("special-token text", "/v1/completions", {"prompt": "<|fim_prefix|><|endoftext|>", "max_tokens": 4}),
    (
        "a model name that is a path",
        "/v1/completions",
        {"prompt": "x", "max_tokens": 4, "model": "/etc/passwd"},
    ),
    ("huge infill around the cursor", "/v1/infill", {"prefix": "w " * 200_000, "suffix": "s " * 100_000}),
    (
        "huge extra files",
        "/v1/infill",
        {"prefix": "a", "extra": [{"filename": "f", "text": "w " * 100_000}] * 3},
    ),
    ("a very long stop string", "/v1/completions", {"prompt": "x", "max_tokens": 4, "stop": ["a" * 100_000]}),
    ("an empty chat message", "/v1/chat/completions", {"messages": [{"role": "user", "content": None}]}),
]


@pytest.mark.parametrize(("name", "path", "body"), ODD_BUT_FINE, ids=[n[0] for n in ODD_BUT_FINE])
def test_odd_but_valid_bodies_are_answered(
    shared: RunningDaemon, name: str, path: str, body: dict[str, Any]
) -> None:
    response = _post(shared, path, _json({"max_tokens": 4, **body}))
    assert response.status_code == 200, response.text[:300]
    assert response.json()["usage"]["completion_tokens"] <= 4


def test_a_model_field_naming_a_file_reads_nothing(shared: RunningDaemon) -> None:
    """The `model` field is informational: it never selects or opens a file (the daemon serves one model)."""
    for model in ("../../../../etc/shadow", "/etc/passwd", "C:\\Windows\\win.ini", "~/.ssh/id_rsa"):
        response = _post(shared, "/v1/completions", _json({"prompt": "x", "max_tokens": 2, "model": model}))
        assert response.status_code == 200
        assert response.json()["model"] == "tiny-target"
        assert "root:" not in response.text

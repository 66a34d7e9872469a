"""Security guarantees beyond tests/test_daemon_security.py: odd tokens and headers, the token file's mode under
any umask, remote binding, and path traversal through model names.

Real processes and raw sockets throughout: the guard must hold for what an attacker can actually send, not
just for what httpx sends.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import RunningDaemon, TinyModels, stop_daemon

PROTECTED = ["/v1/models", "/v1/stats", "/metrics", "/openapi.json", "/v1/completions"]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALSPEC_")}
    return env | {"LOCALSPEC_HOME": str(home), **extra}


def _cli(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localspec", *args],
        env=env or _env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _raw(daemon: RunningDaemon, request: bytes) -> bytes:
    """Send bytes as they are (no client fixes up headers) and return the whole answer."""
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# ---- tokens ----


@pytest.mark.parametrize(
    "authorization",
    [
        "",
        "Bearer",
        "Basic {token}",
        "Token {token}",
        "Bearer {token}x",
        "Bearer x{token}",
        "Bearer {prefix}",
        "Bearer {upper}",
        "{token}",
    ],
)
def test_anything_but_the_exact_token_is_refused(daemon: RunningDaemon, authorization: str) -> None:
    value = authorization.format(token=daemon.token, prefix=daemon.token[:-1], upper=daemon.token.upper())
    for path in PROTECTED:
        response = httpx.request(
            "POST" if path == "/v1/completions" else "GET",
            f"{daemon.url}{path}",
            json={"prompt": "x", "max_tokens": 1},
            headers={"Authorization": value} if value else {},
            timeout=10,
        )
        assert response.status_code == 401, (path, value)
        assert daemon.token not in response.text


def test_a_token_in_the_query_string_or_a_cookie_is_not_accepted(daemon: RunningDaemon) -> None:
    for name in ("token", "access_token", "api_key"):
        response = httpx.get(f"{daemon.url}/v1/models", params={name: daemon.token}, timeout=10)
        assert response.status_code == 401
    cookie = httpx.get(f"{daemon.url}/v1/models", headers={"Cookie": f"token={daemon.token}"}, timeout=10)
    assert cookie.status_code == 401


def test_raw_requests_without_a_host_or_with_a_foreign_one_are_refused(daemon: RunningDaemon) -> None:
    auth = f"Authorization: Bearer {daemon.token}\r\n".encode()
    no_host = _raw(daemon, b"GET /v1/models HTTP/1.0\r\n" + auth + b"\r\n")
    assert no_host.startswith(b"HTTP/1.1 403") or no_host.startswith(b"HTTP/1.0 403"), no_host[:100]
    for host in (b"evil.example", b"localhost.evil.example", b"127.0.0.2", b"[::2]", b"localhost."):
        answer = _raw(
            daemon,
            b"GET /v1/models HTTP/1.1\r\nHost: " + host + b"\r\n" + auth + b"Connection: close\r\n\r\n",
        )
        assert answer.split(b"\r\n", 1)[0].endswith(b"403 Forbidden"), (host, answer[:100])
        assert b"bad_host" in answer
    ok = _raw(daemon, b"GET /v1/models HTTP/1.1\r\nHost: [::1]\r\n" + auth + b"Connection: close\r\n\r\n")
    assert ok.split(b"\r\n", 1)[0].endswith(b"200 OK"), ok[:200]


@pytest.mark.parametrize(
    "origin", ["null", "file://", "http://localhost:3000", "http://127.0.0.1", "chrome-extension://abc"]
)
def test_every_browser_origin_is_refused_even_with_the_token(daemon: RunningDaemon, origin: str) -> None:
    for path in ("/v1/completions", "/health"):
        response = httpx.post(
            f"{daemon.url}{path}",
            json={"prompt": "x", "max_tokens": 1},
            headers={**daemon.headers, "Origin": origin},
            timeout=10,
        )
        assert response.status_code in (403, 405), (path, origin)
        if response.status_code == 403:
            assert response.json()["error"]["code"] == "origin_not_allowed"
    # No generation ran for any of them.
    stats = httpx.get(f"{daemon.url}/v1/stats", headers=daemon.headers, timeout=10).json()
    assert stats["requests"] == {}


# ---- the token file ----


def test_the_token_file_is_0600_under_a_permissive_umask(tiny_models: TinyModels, tmp_path: Path) -> None:
    home = tmp_path / "home"
    script = (
        "import os, sys; os.umask(0); sys.argv = ['localspec'] + sys.argv[1:];"
        "from localspec.cli import main; sys.exit(main())"
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            script,
            "serve",
            "--port",
            "0",
            "--threads",
            "1",
            "--target",
            str(tiny_models.target),
        ],
        env=_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        token_file = home / "config" / "token"
        deadline = time.monotonic() + 30
        while not (home / "state" / "daemon.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert len(token_file.read_text().strip()) >= 32
    finally:
        stop_daemon(process)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o666])
def test_refuses_to_start_when_others_can_read_the_token(
    tiny_models: TinyModels, tmp_path: Path, mode: int
) -> None:
    home = tmp_path / "home"
    (home / "config").mkdir(parents=True)
    token_file = home / "config" / "token"
    token_file.write_text("a-token-that-is-long-enough-1234567890\n")
    token_file.chmod(mode)
    result = _cli(home, "serve", "--port", "0", "--target", str(tiny_models.target))
    assert result.returncode == 1
    assert f"chmod 600 {token_file}" in result.stderr
    assert not (home / "state" / "daemon.json").exists()
    assert stat.S_IMODE(token_file.stat().st_mode) == mode  # reported, not silently "fixed"


def test_refuses_to_start_with_an_empty_token_file(tiny_models: TinyModels, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "config").mkdir(parents=True)
    token_file = home / "config" / "token"
    token_file.write_text("\n")
    token_file.chmod(0o600)
    result = _cli(home, "serve", "--port", "0", "--target", str(tiny_models.target))
    assert result.returncode == 1 and "no usable token" in result.stderr


# ---- binding other interfaces ----


def test_allow_remote_binds_every_interface_with_a_warning_and_still_needs_the_token(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "localspec", "serve", "--host", "0.0.0.0", "--port", "0"),
            *("--allow-remote", "--threads", "1", "--target", str(tiny_models.target)),
        ],
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        discovery = home / "state" / "daemon.json"
        while not discovery.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        info = json.loads(discovery.read_text())
        assert info["host"] == "0.0.0.0"
        url = info["url"]
        assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 401
        token = (home / "config" / "token").read_text().strip()
        assert httpx.get(
            f"{url}/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=10
        ).is_success
        assert "WARNING" in (home / "log" / "daemon.log").read_text()
    finally:
        stop_daemon(process)
    assert process.stdout is not None
    output = process.stdout.read().decode()
    assert "WARNING: listening on 0.0.0.0, reachable from other machines" in output


def test_a_non_loopback_host_from_the_config_file_also_needs_the_flag(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    (home / "config").mkdir(parents=True)
    (home / "config" / "config.toml").write_text('[server]\nhost = "0.0.0.0"\nport = 0\n')
    result = _cli(home, "serve", "--target", str(tiny_models.target))
    assert result.returncode == 1 and "--allow-remote" in result.stderr
    env_host = _cli(
        home, "serve", "--target", str(tiny_models.target), env=_env(home, LOCALSPEC_SERVER_HOST="::")
    )
    assert env_host.returncode == 1 and "--allow-remote" in env_host.stderr


# ---- path traversal through model names ----


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "/etc/passwd", "..", "models/../../x", "~root/.ssh/id_rsa"]
)
def test_models_pull_and_rm_refuse_names_that_are_paths(tmp_path: Path, name: str) -> None:
    home = tmp_path / "home"
    for command in ("pull", "rm", "verify"):
        result = _cli(home, "models", command, name)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert "localspec:" in result.stderr and "Traceback" not in result.stderr
    created = [p for p in tmp_path.rglob("*") if p.is_file() and "log" not in p.parts]
    assert all(home in p.parents for p in created), created


def test_a_catalog_whose_file_names_a_path_is_refused_and_touches_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    victim = tmp_path / "victim.gguf"
    victim.write_bytes(b"GGUF precious")
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        '[models.evil]\nfile = "../../victim.gguf"\nsources = [{ kind = "url", url = "http://127.0.0.1:9/x" }]\n'
    )
    env = _env(home, LOCALSPEC_CATALOG=str(catalog), LOCALSPEC_MODELS_DIR=str(tmp_path / "home" / "models"))
    for command in ("pull", "rm", "verify", "list"):
        args = ["models", command] + ([] if command == "list" else ["evil"])
        result = _cli(home, *args, env=env)
        assert result.returncode == 1, (command, result.stdout)
        assert "plain file name" in result.stderr
    assert victim.read_bytes() == b"GGUF precious"

"""The daemon's guards against other users, drive-by web pages and DNS rebinding, on a real server."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import RunningDaemon, TinyModels, start_daemon, stop_daemon


def test_token_file_is_private(daemon: RunningDaemon) -> None:
    token_file = daemon.home / "config" / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert len(daemon.token) >= 32


def test_health_needs_no_token_but_everything_else_does(daemon: RunningDaemon) -> None:
    assert httpx.get(f"{daemon.url}/health", timeout=10).json()["status"] == "ok"
    for method, path in [
        ("GET", "/v1/models"),
        ("GET", "/v1/stats"),
        ("GET", "/metrics"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/infill"),
    ]:
        missing = httpx.request(method, f"{daemon.url}{path}", json={"prompt": "x"}, timeout=10)
        assert missing.status_code == 401, path
        assert missing.json()["error"]["code"] == "invalid_token"
        wrong = httpx.request(
            method,
            f"{daemon.url}{path}",
            json={"prompt": "x"},
            timeout=10,
            headers={"Authorization": "Bearer " + "x" * 43},
        )
        assert wrong.status_code == 401, path
    ok = httpx.get(f"{daemon.url}/v1/models", headers=daemon.headers, timeout=10)
    assert ok.status_code == 200


def test_foreign_host_header_is_refused(daemon: RunningDaemon) -> None:
    # DNS rebinding: a page on evil.example resolves its name to 127.0.0.1 and sends Host: evil.example.
    for host in ("evil.example", "evil.example:8717", "127.0.0.1.evil.example"):
        response = httpx.get(f"{daemon.url}/v1/models", headers={**daemon.headers, "Host": host}, timeout=10)
        assert response.status_code == 403, host
        assert response.json()["error"]["code"] == "bad_host"
    for host in ("localhost", f"127.0.0.1:{daemon.url.rsplit(':', 1)[1]}"):
        response = httpx.get(f"{daemon.url}/v1/models", headers={**daemon.headers, "Host": host}, timeout=10)
        assert response.status_code == 200, host


def test_browser_origin_is_refused_and_no_cors_headers_by_default(daemon: RunningDaemon) -> None:
    page = {"Origin": "https://some-page.example"}
    response = httpx.get(f"{daemon.url}/v1/models", headers={**daemon.headers, **page}, timeout=10)
    assert response.status_code == 403
    assert "allow_origins" in response.json()["error"]["message"]
    # Even /health: a page must not learn that a daemon runs here.
    assert httpx.get(f"{daemon.url}/health", headers=page, timeout=10).status_code == 403
    preflight = httpx.options(
        f"{daemon.url}/v1/completions",
        headers={**page, "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert preflight.status_code == 403
    plain = httpx.get(f"{daemon.url}/v1/models", headers=daemon.headers, timeout=10)
    assert not any(h.lower().startswith("access-control-") for h in plain.headers)


def test_allowed_origin_gets_cors(tiny_models: TinyModels, tmp_path: Path) -> None:
    origin = "http://localhost:5173"
    running = start_daemon(
        tmp_path / "home", ["--target", str(tiny_models.target), "--threads", "1", "--allow-origin", origin]
    )
    try:
        preflight = httpx.options(
            f"{running.url}/v1/completions",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
            timeout=10,
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin
        response = httpx.get(
            f"{running.url}/v1/models", headers={**running.headers, "Origin": origin}, timeout=10
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == origin
        other = httpx.get(
            f"{running.url}/v1/models",
            headers={**running.headers, "Origin": "https://evil.example"},
            timeout=10,
        )
        assert other.status_code == 403
    finally:
        stop_daemon(running.process)


def _serve(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALSPEC_")} | {
        "LOCALSPEC_HOME": str(home)
    }
    return subprocess.run(
        [sys.executable, "-m", "localspec", "serve", "--port", "0", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_refuses_to_start_with_a_token_file_others_can_read(tiny_models: TinyModels, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "config").mkdir(parents=True)
    token_file = home / "config" / "token"
    token_file.write_text("a-token-that-is-long-enough-1234567890\n")
    token_file.chmod(0o644)
    result = _serve(home, "--target", str(tiny_models.target))
    assert result.returncode == 1
    assert "chmod 600" in result.stderr
    assert not (home / "state" / "daemon.json").exists()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1"])
def test_non_loopback_host_needs_allow_remote(tiny_models: TinyModels, tmp_path: Path, host: str) -> None:
    result = _serve(tmp_path / "home", "--host", host, "--target", str(tiny_models.target))
    assert result.returncode == 1
    assert "--allow-remote" in result.stderr
